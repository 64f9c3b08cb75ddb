//! SQL Server source (tiberius): one transaction at SNAPSHOT isolation when the database allows it
//! (REPEATABLE READ otherwise, with a warning), the table's columns from `INFORMATION_SCHEMA`, then
//! one streamed `SELECT` whose TDS values go straight into Arrow builders. Delta runs bind the
//! watermark as parameters and compare the cursor lexicographically (SQL Server has no row values).
//!
//! No SQL Server can run on the development machines: the type mapping and value decoding are
//! unit-tested; the end-to-end tests run when `CARGO_TEST_MSSQL_URL` is set.

pub mod types;

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use carga_config::DatasetSpec;
use futures::TryStreamExt;
use tiberius::{AuthMethod, Client, Config};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use super::{Source, SourceAccess, SourceOutput};
use crate::delta::Watermark;
use crate::error::{JobError, Result};
use crate::secrets::ConnectionSecret;
use crate::validation::ReadStats;
use types::{Builder, ColumnPlan, SqlColumn, plan_column, quote_ident};

const COLUMNS_SQL: &str = "
SELECT COLUMN_NAME, LOWER(DATA_TYPE), CAST(NUMERIC_PRECISION AS int), CAST(NUMERIC_SCALE AS int)
FROM INFORMATION_SCHEMA.COLUMNS
WHERE TABLE_SCHEMA = @P1 AND TABLE_NAME = @P2
ORDER BY ORDINAL_POSITION";

/// The tiberius configuration for a secret: an ADO.NET connection string in `url`, or the fields of
/// an RDS-style secret (`host`, `port`, `username`, `password`, `dbname`, optional
/// `trust_server_certificate`).
pub fn config_from(secret: &ConnectionSecret) -> Result<Config> {
    if let Some(ado) = secret.field("url") {
        return Config::from_ado_string(&ado).map_err(|e| {
            JobError::Secret(secret.redact(&format!("connection string is not valid: {e}")))
        });
    }
    let mut config = Config::new();
    config.host(
        secret
            .field("host")
            .ok_or_else(|| JobError::Secret("SQL Server secret has no `host`".into()))?,
    );
    if let Some(port) = secret.field("port") {
        config.port(
            port.parse()
                .map_err(|_| JobError::Secret("SQL Server secret has a bad `port`".into()))?,
        );
    }
    if let Some(database) = secret.field("dbname").or_else(|| secret.field("database")) {
        config.database(database);
    }
    config.authentication(AuthMethod::sql_server(
        secret.field("username").unwrap_or_default(),
        secret.field("password").unwrap_or_default(),
    ));
    if secret
        .field("trust_server_certificate")
        .is_some_and(|v| v == "true")
    {
        config.trust_cert();
    }
    Ok(config)
}

type SqlClient = Client<Compat<TcpStream>>;

async fn connect(config: Config) -> tiberius::Result<SqlClient> {
    let tcp = TcpStream::connect(config.get_addr()).await?;
    tcp.set_nodelay(true)?;
    Client::connect(config, tcp.compat_write()).await
}

/// "Test connection": logs in and asks the server's version.
pub(crate) async fn server_version(secret: &ConnectionSecret) -> Result<String> {
    let failed = |e: tiberius::error::Error| JobError::Database {
        context: format!("testing connection '{}'", secret.id()),
        message: secret.redact(&e.to_string()),
    };
    let mut client = connect(config_from(secret)?).await.map_err(failed)?;
    let row = client
        .simple_query("SELECT CAST(@@VERSION AS nvarchar(4000))")
        .await
        .map_err(failed)?
        .into_row()
        .await
        .map_err(failed)?;
    let version = row
        .as_ref()
        .and_then(|r| r.get::<&str, _>(0))
        .unwrap_or("SQL Server")
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    Ok(version)
}

/// The columns of `schema.table`, in table order.
async fn table_columns(
    client: &mut SqlClient,
    schema: &str,
    table: &str,
) -> tiberius::Result<Vec<SqlColumn>> {
    Ok(client
        .query(COLUMNS_SQL, &[&schema, &table])
        .await?
        .into_first_result()
        .await?
        .into_iter()
        .map(|row| SqlColumn {
            name: row.get::<&str, _>(0).unwrap_or_default().to_owned(),
            data_type: row.get::<&str, _>(1).unwrap_or_default().to_owned(),
            precision: row.get::<i32, _>(2).map(|p| p as u8),
            scale: row.get::<i32, _>(3).map(|s| s as i8),
        })
        .collect())
}

const TABLES_SQL: &str = "
SELECT t.TABLE_SCHEMA, t.TABLE_NAME, CASE WHEN t.TABLE_TYPE = 'VIEW' THEN 'view' ELSE 'table' END,
       (SELECT CAST(SUM(p.rows) AS bigint) FROM sys.partitions p
        WHERE p.object_id = OBJECT_ID(QUOTENAME(t.TABLE_SCHEMA) + '.' + QUOTENAME(t.TABLE_NAME))
          AND p.index_id IN (0, 1))
FROM INFORMATION_SCHEMA.TABLES t
WHERE (@P1 IS NULL OR t.TABLE_SCHEMA = @P1) AND t.TABLE_SCHEMA NOT IN ('sys', 'INFORMATION_SCHEMA')
ORDER BY 1, 2";

const PRIMARY_KEY_SQL: &str = "
SELECT k.COLUMN_NAME
FROM INFORMATION_SCHEMA.TABLE_CONSTRAINTS c
JOIN INFORMATION_SCHEMA.KEY_COLUMN_USAGE k
  ON k.CONSTRAINT_NAME = c.CONSTRAINT_NAME AND k.TABLE_SCHEMA = c.TABLE_SCHEMA AND k.TABLE_NAME = c.TABLE_NAME
WHERE c.CONSTRAINT_TYPE = 'PRIMARY KEY' AND c.TABLE_SCHEMA = @P1 AND c.TABLE_NAME = @P2
ORDER BY k.ORDINAL_POSITION";

/// Tables and views of the connection's database (optionally of one schema), with columns, the
/// Arrow type Carga writes for each, primary keys and row estimates.
pub(crate) async fn discover(
    secret: &ConnectionSecret,
    schema: Option<&str>,
) -> Result<Vec<super::listing::TableInfo>> {
    use super::listing::{ColumnInfo, TableInfo};
    let failed = |e: tiberius::error::Error| JobError::Database {
        context: "discovering tables".into(),
        message: secret.redact(&e.to_string()),
    };
    let mut client = connect(config_from(secret)?).await.map_err(failed)?;
    let tables: Vec<(String, String, String, Option<i64>)> = client
        .query(TABLES_SQL, &[&schema])
        .await
        .map_err(failed)?
        .into_first_result()
        .await
        .map_err(failed)?
        .into_iter()
        .map(|row| {
            (
                row.get::<&str, _>(0).unwrap_or_default().to_owned(),
                row.get::<&str, _>(1).unwrap_or_default().to_owned(),
                row.get::<&str, _>(2).unwrap_or_default().to_owned(),
                row.get::<i64, _>(3),
            )
        })
        .collect();
    let mut out = Vec::with_capacity(tables.len());
    for (schema_name, name, kind, estimated_rows) in tables {
        let columns = table_columns(&mut client, &schema_name, &name)
            .await
            .map_err(failed)?;
        let primary_key = client
            .query(PRIMARY_KEY_SQL, &[&schema_name.as_str(), &name.as_str()])
            .await
            .map_err(failed)?
            .into_first_result()
            .await
            .map_err(failed)?
            .into_iter()
            .map(|row| row.get::<&str, _>(0).unwrap_or_default().to_owned())
            .collect();
        out.push(TableInfo {
            columns: columns
                .iter()
                .map(|c| ColumnInfo {
                    name: c.name.clone(),
                    declared: c.data_type.clone(),
                    arrow: plan_column(c).data_type.to_string(),
                })
                .collect(),
            schema: schema_name,
            name,
            kind,
            estimated_rows,
            primary_key,
        });
    }
    Ok(out)
}

/// One table of a SQL Server database.
pub struct MssqlTable {
    spec: DatasetSpec,
}

impl MssqlTable {
    pub fn new(spec: &DatasetSpec) -> Self {
        Self { spec: spec.clone() }
    }
}

#[async_trait::async_trait]
impl Source for MssqlTable {
    fn describe(&self) -> String {
        super::describe_table(&self.spec)
    }

    fn capabilities(&self) -> super::Capabilities {
        super::Capabilities {
            filter_dialect: None,
            cursor_pushdown: true,
        }
    }

    async fn read(
        self: Arc<Self>,
        output: SourceOutput,
        access: SourceAccess,
    ) -> Result<ReadStats> {
        let secret = access.require_secret(self.spec.connection_id.as_deref())?;
        read(&self.spec, secret, access.floor, access.lookback, output).await
    }
}

async fn read(
    spec: &DatasetSpec,
    secret: ConnectionSecret,
    floor: Option<Watermark>,
    lookback: Option<u64>,
    mut ctx: SourceOutput,
) -> Result<ReadStats> {
    let table = spec.source.table().to_owned();
    let location = ctx.location.clone();
    let db_error = |what: &str, e: tiberius::error::Error| JobError::Database {
        context: format!("{location} ({what})"),
        message: secret.redact(&e.to_string()),
    };
    let mut client = connect(config_from(&secret)?)
        .await
        .map_err(|e| db_error("connecting", e))?;

    let snapshot_allowed: Option<u8> = client
        .simple_query("SELECT CAST(snapshot_isolation_state AS tinyint) FROM sys.databases WHERE name = DB_NAME()")
        .await
        .map_err(|e| db_error("checking snapshot isolation", e))?
        .into_row()
        .await
        .map_err(|e| db_error("checking snapshot isolation", e))?
        .and_then(|row| row.get::<u8, _>(0));
    let isolation = if snapshot_allowed == Some(1) {
        "SNAPSHOT"
    } else {
        tracing::warn!(table = %table, "database does not allow SNAPSHOT isolation; reading at REPEATABLE READ (rows read stay locked until the run ends)");
        "REPEATABLE READ"
    };
    client
        .simple_query(format!(
            "SET TRANSACTION ISOLATION LEVEL {isolation}; BEGIN TRANSACTION"
        ))
        .await
        .map_err(|e| db_error("starting a snapshot", e))?
        .into_results()
        .await
        .map_err(|e| db_error("starting a snapshot", e))?;

    let (schema_name, table_name) = table
        .split_once('.')
        .map_or(("dbo", table.as_str()), |(s, t)| (s, t));
    let columns = table_columns(&mut client, schema_name, table_name)
        .await
        .map_err(|e| db_error("reading the table's columns", e))?;
    if columns.is_empty() {
        return Err(ctx.bad_input(format!(
            "table {schema_name}.{table_name} does not exist or has no columns"
        )));
    }
    let plans: Vec<ColumnPlan> =
        super::select_columns(spec.source.columns(), &columns, |c| c.name.as_str())
            .map_err(|m| ctx.bad_input(m))?
            .into_iter()
            .map(plan_column)
            .collect();
    let schema: SchemaRef = Arc::new(Schema::new(
        plans
            .iter()
            .map(|p| Field::new(&p.name, p.data_type.clone(), true))
            .collect::<Vec<_>>(),
    ));

    let (predicate, values) = match &floor {
        Some(watermark) => {
            cursor_predicate(watermark, lookback, &columns).map_err(|m| ctx.bad_input(m))?
        }
        None => (String::new(), Vec::new()),
    };
    let select_list = plans
        .iter()
        .map(|p| p.select.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {select_list} FROM {}.{}{predicate}",
        quote_ident(schema_name),
        quote_ident(table_name)
    );
    ctx.announce_schema(schema.clone());

    let mut query = tiberius::Query::new(sql);
    for value in values {
        query.bind(value);
    }
    let mut builders: Vec<Builder> = plans
        .iter()
        .map(|p| Builder::for_type(&p.data_type))
        .collect();
    let mut buffered = 0usize;
    let mut stats = ReadStats::default();
    {
        let mut rows = query
            .query(&mut client)
            .await
            .map_err(|e| db_error("starting the SELECT", e))?
            .into_row_stream();
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(|e| db_error("reading rows", e))?
        {
            stats.rows_read += 1;
            for (i, value) in row.into_iter().enumerate() {
                builders[i].append(&value).map_err(|reason| {
                    ctx.bad_input(format!(
                        "row {}: column '{}': {reason}",
                        stats.rows_read, plans[i].name
                    ))
                })?;
            }
            buffered += 1;
            if buffered >= ctx.batch_rows {
                buffered = 0;
                if !ctx.send_async(take_batch(&schema, &mut builders)?).await {
                    return Ok(stats);
                }
            }
        }
    }
    if buffered > 0 {
        ctx.send_async(take_batch(&schema, &mut builders)?).await;
    }
    client
        .simple_query("COMMIT TRANSACTION")
        .await
        .map_err(|e| db_error("ending the snapshot", e))?
        .into_results()
        .await
        .map_err(|e| db_error("ending the snapshot", e))?;
    Ok(stats)
}

fn take_batch(schema: &SchemaRef, builders: &mut [Builder]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = builders.iter_mut().map(Builder::finish).collect();
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| JobError::arrow("SQL Server batch", e))
}

/// ` WHERE (c1 > @P1) OR (c1 = @P1 AND c2 > @P2) ...` with each parameter cast to its column's
/// type, and the values to bind in order. With a lookback, the timestamp alone, moved back.
fn cursor_predicate(
    watermark: &Watermark,
    lookback: Option<u64>,
    columns: &[SqlColumn],
) -> Result<(String, Vec<String>), String> {
    let mut typed = Vec::new();
    let mut values = Vec::new();
    for (i, name) in watermark.columns.iter().enumerate() {
        let column = columns
            .iter()
            .find(|c| &c.name == name)
            .ok_or_else(|| format!("delta cursor column '{name}' is not in the table"))?;
        let value = watermark
            .values
            .get(name)
            .ok_or_else(|| format!("stored watermark has no value for '{name}'"))?;
        values.push(value.clone());
        typed.push((
            quote_ident(name),
            format!("CAST(@P{} AS {})", i + 1, sql_type(column)),
        ));
    }
    if let Some(seconds) = lookback {
        let (column, value) = &typed[0];
        return Ok((
            format!(" WHERE {column} > DATEADD(second, -{seconds}, {value})"),
            values[..1].to_vec(),
        ));
    }
    let mut alternatives = Vec::new();
    for i in 0..typed.len() {
        let mut terms: Vec<String> = typed[..i]
            .iter()
            .map(|(c, v)| format!("{c} = {v}"))
            .collect();
        terms.push(format!("{} > {}", typed[i].0, typed[i].1));
        alternatives.push(format!("({})", terms.join(" AND ")));
    }
    Ok((format!(" WHERE {}", alternatives.join(" OR ")), values))
}

/// The SQL type a watermark parameter is cast to before comparing.
fn sql_type(column: &SqlColumn) -> String {
    match column.data_type.as_str() {
        "decimal" | "numeric" => format!(
            "decimal({}, {})",
            column.precision.unwrap_or(38),
            column.scale.unwrap_or(0)
        ),
        "datetime" | "smalldatetime" | "datetime2" => "datetime2(7)".into(),
        "char" | "varchar" | "text" => "varchar(max)".into(),
        "nchar" | "nvarchar" | "ntext" => "nvarchar(max)".into(),
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns() -> Vec<SqlColumn> {
        vec![
            SqlColumn {
                name: "ts".into(),
                data_type: "datetime2".into(),
                precision: None,
                scale: None,
            },
            SqlColumn {
                name: "id".into(),
                data_type: "bigint".into(),
                precision: None,
                scale: None,
            },
        ]
    }

    fn watermark() -> Watermark {
        Watermark {
            columns: vec!["ts".into(), "id".into()],
            values: [
                ("ts".to_string(), "2026-01-01T10:00:00.000001".to_string()),
                ("id".to_string(), "7".to_string()),
            ]
            .into(),
            ..Watermark::default()
        }
    }

    #[test]
    fn cursor_predicate_is_lexicographic_with_typed_parameters() {
        let (sql, values) = cursor_predicate(&watermark(), None, &columns()).unwrap();
        assert_eq!(
            sql,
            " WHERE ([ts] > CAST(@P1 AS datetime2(7))) OR ([ts] = CAST(@P1 AS datetime2(7)) AND [id] > CAST(@P2 AS bigint))"
        );
        assert_eq!(values, ["2026-01-01T10:00:00.000001", "7"]);
        let (sql, values) = cursor_predicate(&watermark(), Some(600), &columns()).unwrap();
        assert_eq!(
            sql,
            " WHERE [ts] > DATEADD(second, -600, CAST(@P1 AS datetime2(7)))"
        );
        assert_eq!(values.len(), 1);
    }

    #[test]
    fn secrets_become_configurations_without_echoing_passwords() {
        let secret = ConnectionSecret::new(
            "ms",
            serde_json::from_value(serde_json::json!({"host": "db.local", "port": 1444, "username": "sa", "password": "hunter2!", "dbname": "ventas"}))
                .unwrap(),
        );
        let config = config_from(&secret).unwrap();
        assert_eq!(config.get_addr(), "db.local:1444");
        let bad = ConnectionSecret::new(
            "ms",
            serde_json::from_value(serde_json::json!({"url": "server=;password=hunter2!;port=x"}))
                .unwrap(),
        );
        if let Err(e) = config_from(&bad) {
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }
}
