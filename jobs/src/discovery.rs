//! Schema discovery for a database connection: schemas, tables and views, their columns with the
//! Arrow type Carga would write, and primary keys: the seed design's "discovery de esquemas y
//! selección de tablas", and what a user needs to write a dataset spec (table, key, cursor).

use sqlx::{Connection, MySqlConnection, PgConnection, Row};

use crate::error::{JobError, Result};
use crate::secrets::ConnectionSecret;
use crate::sources::{mysql, postgres};
use carga_config::SourceFormat;

pub use crate::sources::listing::{ColumnInfo, TableInfo};

/// Lists the tables of a connection, optionally of one schema (PostgreSQL) or database (MySQL).
pub async fn discover(
    format: SourceFormat,
    secret: &ConnectionSecret,
    schema: Option<&str>,
) -> Result<Vec<TableInfo>> {
    let failed = |e: sqlx::Error| JobError::Database {
        context: "discovering tables".into(),
        message: secret.redact(&e.to_string()),
    };
    match format {
        SourceFormat::Postgres => {
            let mut conn = PgConnection::connect(&secret.database_url("postgres", 5432)?)
                .await
                .map_err(failed)?;
            discover_postgres(&mut conn, schema).await.map_err(failed)
        }
        SourceFormat::Mysql => {
            let mut conn = MySqlConnection::connect(&secret.database_url("mysql", 3306)?)
                .await
                .map_err(failed)?;
            discover_mysql(&mut conn, schema).await.map_err(failed)
        }
        SourceFormat::Mssql => crate::sources::mssql::discover(secret, schema).await,
        SourceFormat::Mongodb => crate::sources::mongodb::discover(secret, schema).await,
        other => Err(JobError::bad_input(
            "discover",
            format!("{other:?} is not a database format"),
        )),
    }
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

async fn discover_postgres(
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
        let columns = postgres::table_columns(&mut *conn, &qualified).await?;
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
                    arrow: postgres::types::plan_column(c, "text")
                        .map(|p| p.data_type.to_string())
                        .unwrap_or_else(|e| e),
                })
                .collect(),
        });
    }
    Ok(out)
}

const MY_TABLES: &str = "
SELECT TABLE_SCHEMA AS table_schema, TABLE_NAME AS table_name,
       CASE WHEN TABLE_TYPE = 'VIEW' THEN 'view' ELSE 'table' END AS kind,
       CAST(TABLE_ROWS AS SIGNED) AS estimated_rows
FROM information_schema.TABLES
WHERE TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')
  AND (? IS NULL OR TABLE_SCHEMA = ?)
ORDER BY 1, 2";

const MY_PRIMARY_KEY: &str = "
SELECT COLUMN_NAME AS name FROM information_schema.KEY_COLUMN_USAGE
WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY'
ORDER BY ORDINAL_POSITION";

async fn discover_mysql(
    conn: &mut MySqlConnection,
    schema: Option<&str>,
) -> sqlx::Result<Vec<TableInfo>> {
    let tables = sqlx::query(MY_TABLES)
        .bind(schema)
        .bind(schema)
        .fetch_all(&mut *conn)
        .await?;
    let mut out = Vec::with_capacity(tables.len());
    for table in tables {
        let schema_name = mysql::text(&table, "table_schema");
        let name = mysql::text(&table, "table_name");
        let columns = mysql::table_columns(&mut *conn, &schema_name, &name).await?;
        let primary_key = sqlx::query(MY_PRIMARY_KEY)
            .bind(&schema_name)
            .bind(&name)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| mysql::text(row, "name"))
            .collect();
        out.push(TableInfo {
            kind: mysql::text(&table, "kind"),
            estimated_rows: table.try_get("estimated_rows").ok(),
            schema: schema_name,
            name,
            primary_key,
            columns: columns
                .iter()
                .map(|c| ColumnInfo {
                    name: c.name.clone(),
                    declared: c.column_type.clone(),
                    arrow: mysql::types::plan_column(c).data_type.to_string(),
                })
                .collect(),
        });
    }
    Ok(out)
}
