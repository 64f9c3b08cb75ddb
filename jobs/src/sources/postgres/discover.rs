//! What a PostgreSQL connection says about its tables (`carga discover`): schemas, tables and
//! views, their columns with the Arrow type Carga writes, primary keys and row estimates.

use sqlx::{Connection, PgConnection, Row};

use crate::error::Result;
use crate::secrets::ConnectionSecret;
use crate::sources::listing::{ColumnInfo, TableInfo, discovery_failed};

/// Lists the tables of the connection's database, optionally of one schema.
pub(crate) async fn discover(
    secret: &ConnectionSecret,
    schema: Option<&str>,
) -> Result<Vec<TableInfo>> {
    let failed = discovery_failed(secret);
    let mut conn = PgConnection::connect(&secret.database_url("postgres", 5432)?)
        .await
        .map_err(&failed)?;
    list_tables(&mut conn, schema).await.map_err(failed)
}

const PG_TABLES: &str = "
SELECT n.nspname::text AS schema, c.relname::text AS name,
       CASE WHEN c.relkind IN ('v', 'm') THEN 'view' ELSE 'table' END AS kind,
       CASE WHEN c.reltuples >= 0 THEN c.reltuples::int8 END AS estimated_rows,
       format('%I.%I', n.nspname, c.relname) AS qualified
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
  AND ($1::text IS NULL OR n.nspname = $1)
  AND NOT c.relispartition
ORDER BY 1, 2";

const PG_PRIMARY_KEY: &str = "
SELECT a.attname::text AS name
FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = $1::regclass AND i.indisprimary
ORDER BY array_position(i.indkey, a.attnum)";

async fn list_tables(
    conn: &mut PgConnection,
    schema: Option<&str>,
) -> sqlx::Result<Vec<TableInfo>> {
    let tables = sqlx::query(PG_TABLES)
        .bind(schema)
        .fetch_all(&mut *conn)
        .await?;
    let mut out = Vec::with_capacity(tables.len());
    for table in tables {
        let qualified: String = table.get("qualified");
        let columns = super::table_columns(&mut *conn, &qualified).await?;
        let primary_key = sqlx::query_scalar(PG_PRIMARY_KEY)
            .bind(&qualified)
            .fetch_all(&mut *conn)
            .await?;
        out.push(TableInfo {
            schema: table.get("schema"),
            name: table.get("name"),
            kind: table.get("kind"),
            estimated_rows: table.get("estimated_rows"),
            primary_key,
            columns: columns
                .iter()
                .map(|c| ColumnInfo {
                    name: c.name.clone(),
                    declared: c.declared.clone(),
                    arrow: super::types::plan_column(c, "text")
                        .map(|p| p.data_type.to_string())
                        .unwrap_or_else(|e| e),
                })
                .collect(),
        });
    }
    Ok(out)
}
