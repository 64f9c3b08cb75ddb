//! What a MySQL or MariaDB connection says about its tables (`carga discover`): tables and
//! views, their columns with the Arrow type Carga writes, primary keys and row estimates.

use sqlx::{Connection, MySqlConnection, Row};

use crate::error::Result;
use crate::secrets::ConnectionSecret;
use crate::sources::listing::{ColumnInfo, TableInfo, discovery_failed};

/// Lists the tables of the connection's server, optionally of one database.
pub(crate) async fn discover(
    secret: &ConnectionSecret,
    schema: Option<&str>,
) -> Result<Vec<TableInfo>> {
    let failed = discovery_failed(secret);
    let mut conn = MySqlConnection::connect(&secret.database_url("mysql", 3306)?)
        .await
        .map_err(&failed)?;
    list_tables(&mut conn, schema).await.map_err(failed)
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

async fn list_tables(
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
        let schema_name = super::text(&table, "table_schema");
        let name = super::text(&table, "table_name");
        let columns = super::table_columns(&mut *conn, &schema_name, &name).await?;
        let primary_key = sqlx::query(MY_PRIMARY_KEY)
            .bind(&schema_name)
            .bind(&name)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| super::text(row, "name"))
            .collect();
        out.push(TableInfo {
            kind: super::text(&table, "kind"),
            estimated_rows: table.try_get("estimated_rows").ok(),
            schema: schema_name,
            name,
            primary_key,
            columns: columns
                .iter()
                .map(|c| ColumnInfo {
                    name: c.name.clone(),
                    declared: c.column_type.clone(),
                    arrow: super::types::plan_column(c).data_type.to_string(),
                })
                .collect(),
        });
    }
    Ok(out)
}
