//! MySQL and MariaDB source: one `REPEATABLE READ` transaction `WITH CONSISTENT SNAPSHOT`, the
//! table's columns from `information_schema`, then one streamed `SELECT` over the text protocol
//! whose values are cast exactly into Arrow. Delta runs bind the watermark into user variables
//! (no value is ever spliced into SQL) and compare `(ts, key) > (...)` on the server.

pub(crate) mod discover;
pub(crate) mod partition;
pub mod types;

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryBuilder, RecordBatch, StringArray, StringBuilder};
use arrow::datatypes::{Field, Schema, SchemaRef};
use carga_config::DatasetSpec;
use futures::TryStreamExt;
use sqlx::mysql::MySql;
use sqlx::{AssertSqlSafe, Connection, Decode, Executor, MySqlConnection, Row, ValueRef};

use super::{Capabilities, PartitionHold, Partitions, Source, SourceAccess, SourceOutput};
use crate::delta::Watermark;
use crate::error::{JobError, Result};
use crate::query::SqlDialect;
use crate::secrets::ConnectionSecret;
use crate::typing::{CastFailure, cast_exact, describe};
use crate::validation::ReadStats;
use types::{ColumnPlan, MyColumn, plan_column, quote_ident, typed_variable};

const COLUMNS_SQL: &str = "
SELECT COLUMN_NAME AS name, LOWER(DATA_TYPE) AS data_type, COLUMN_TYPE AS column_type,
       NUMERIC_PRECISION AS numeric_precision, NUMERIC_SCALE AS numeric_scale
FROM information_schema.COLUMNS
WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?
ORDER BY ORDINAL_POSITION";

/// One table of a MySQL or MariaDB database.
pub struct MysqlTable {
    spec: DatasetSpec,
}

impl MysqlTable {
    pub fn new(spec: &DatasetSpec) -> Self {
        Self { spec: spec.clone() }
    }
}

#[async_trait::async_trait]
impl Source for MysqlTable {
    fn describe(&self) -> String {
        super::describe_table(&self.spec)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            filter_dialect: Some(SqlDialect::Mysql),
            cursor_pushdown: true,
        }
    }

    async fn partitions(&self, access: &SourceAccess) -> Result<Option<Partitions>> {
        let Some(partitioning) = (match &self.spec.source {
            carga_config::SourceSpec::Mysql(table) => table.partitions.as_ref(),
            _ => None,
        }) else {
            return Ok(None);
        };
        let secret = access.require_secret(self.spec.connection_id.as_deref())?;
        let chunks = partition::plan_chunks(&self.spec, partitioning, &secret).await?;
        Ok(Some(Partitions::planned(
            partitioning,
            chunks,
            Box::new(NoHold),
        )))
    }

    async fn read(
        self: Arc<Self>,
        output: SourceOutput,
        access: SourceAccess,
    ) -> Result<ReadStats> {
        let secret = access.require_secret(self.spec.connection_id.as_deref())?;
        read(&self.spec, secret, access, output).await
    }
}

/// MySQL's chunks share no snapshot: nothing to hold while they run.
struct NoHold;

#[async_trait::async_trait]
impl PartitionHold for NoHold {
    async fn release(self: Box<Self>) {}
}

async fn read(
    spec: &DatasetSpec,
    secret: ConnectionSecret,
    access: SourceAccess,
    mut ctx: SourceOutput,
) -> Result<ReadStats> {
    let floor: Option<Watermark> = access.floor;
    let lookback = access.lookback;
    let table = spec.source.table().to_owned();
    let url = secret.database_url("mysql", 3306)?;
    let location = ctx.location.clone();
    let db_error = |what: &str, e: sqlx::Error| JobError::Database {
        context: format!("{location} ({what})"),
        message: secret.redact(&e.to_string()),
    };
    let mut conn = MySqlConnection::connect(&url)
        .await
        .map_err(|e| db_error("connecting", e))?;
    for statement in [
        "SET time_zone = '+00:00'",
        "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
    ] {
        conn.execute(statement)
            .await
            .map_err(|e| db_error("starting a snapshot", e))?;
    }
    let (schema_name, table_name) = match table.split_once('.') {
        Some((schema, name)) => (schema.to_owned(), name.to_owned()),
        None => {
            let current: Option<String> = sqlx::query_scalar("SELECT DATABASE()")
                .fetch_one(&mut conn)
                .await
                .map_err(|e| db_error("finding the database", e))?;
            (current.unwrap_or_default(), table.clone())
        }
    };
    let columns = table_columns(&mut conn, &schema_name, &table_name)
        .await
        .map_err(|e| db_error("reading the table's columns", e))?;
    if columns.is_empty() {
        return Err(ctx.bad_input(format!(
            "table {schema_name}.{table_name} does not exist or has no columns"
        )));
    }
    let selected = select_columns(spec, &columns).map_err(|m| ctx.bad_input(m))?;
    let plans: Vec<ColumnPlan> = selected.iter().map(|c| plan_column(c)).collect();
    let schema: SchemaRef = Arc::new(Schema::new(
        plans
            .iter()
            .map(|p| Field::new(&p.name, p.data_type.clone(), true))
            .collect::<Vec<_>>(),
    ));

    let mut predicate = String::new();
    if let Some(watermark) = &floor {
        let mut names = Vec::new();
        let mut values = Vec::new();
        for (i, column_name) in watermark.columns.iter().enumerate() {
            let column = columns
                .iter()
                .find(|c| &c.name == column_name)
                .ok_or_else(|| {
                    ctx.bad_input(format!(
                        "delta cursor column '{column_name}' is not in the table"
                    ))
                })?;
            // As the other databases do: a watermark without the column's value is refused,
            // never compared as ''.
            let value = watermark.values.get(column_name).cloned().ok_or_else(|| {
                ctx.bad_input(format!("stored watermark has no value for '{column_name}'"))
            })?;
            let var = format!("@carga_v{i}");
            sqlx::query(AssertSqlSafe(format!("SET {var} = ?")))
                .bind(value)
                .execute(&mut conn)
                .await
                .map_err(|e| db_error("binding the watermark", e))?;
            names.push(quote_ident(column_name));
            values.push(typed_variable(column, &var));
        }
        predicate = match lookback {
            Some(seconds) => format!(
                " WHERE {} > {} - INTERVAL {seconds} SECOND",
                names[0], values[0]
            ),
            None => format!(" WHERE ({}) > ({})", names.join(", "), values.join(", ")),
        };
    }
    // A transform's filters, in MySQL's SQL (see `query::transform`), and a chunk's range.
    let mut conditions: Vec<String> = access.pushed_filter.iter().cloned().collect();
    if let Some(chunk) = &access.chunk {
        for (var, bound) in [("@carga_lo", &chunk.lower), ("@carga_hi", &chunk.upper)] {
            if let Some(bound) = bound {
                sqlx::query(AssertSqlSafe(format!("SET {var} = ?")))
                    .bind(bound)
                    .execute(&mut conn)
                    .await
                    .map_err(|e| db_error("binding the chunk's bounds", e))?;
            }
        }
        conditions.push(partition::chunk_predicate(chunk, &columns).map_err(|m| ctx.bad_input(m))?);
    }
    for condition in conditions {
        predicate = if predicate.is_empty() {
            format!(" WHERE {condition}")
        } else {
            format!("{predicate} AND {condition}")
        };
    }
    let select_list = plans
        .iter()
        .map(|p| p.select.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let query = format!(
        "SELECT {select_list} FROM {}.{}{predicate}",
        quote_ident(&schema_name),
        quote_ident(&table_name)
    );
    ctx.announce_schema(schema.clone());
    let mut stats = ReadStats {
        source_query: Some(query.clone()),
        ..ReadStats::default()
    };
    if access.schema_only {
        return Ok(stats);
    }

    let mut batch = TextBatch::new(schema.clone(), &plans);
    // Casting a full batch runs on a blocking thread while the next rows arrive: the text
    // protocol's rows come one at a time, so the reading task is the stream's pace.
    let mut casting: Option<tokio::task::JoinHandle<Result<RecordBatch, String>>> = None;
    {
        let mut rows = sqlx::raw_sql(AssertSqlSafe(query)).fetch(&mut conn);
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(|e| db_error("reading rows", e))?
        {
            stats.rows_read += 1;
            batch
                .push(&row, stats.rows_read)
                .map_err(|m| ctx.bad_input(m))?;
            if batch.rows >= ctx.batch_rows {
                let texts = batch.take_texts(stats.rows_read);
                if let Some(previous) =
                    casting.replace(tokio::task::spawn_blocking(move || texts.cast()))
                    && !send_cast(&ctx, previous).await?
                {
                    return Ok(stats);
                }
            }
        }
    }
    if let Some(previous) = casting.take()
        && !send_cast(&ctx, previous).await?
    {
        return Ok(stats);
    }
    if batch.rows > 0 {
        let ready = batch
            .take_texts(stats.rows_read)
            .cast()
            .map_err(|m| ctx.bad_input(m))?;
        ctx.send_async(ready).await;
    }
    conn.execute("COMMIT")
        .await
        .map_err(|e| db_error("ending the snapshot", e))?;
    Ok(stats)
}

/// The columns of `schema.table`, in table order.
pub(crate) async fn table_columns(
    conn: &mut MySqlConnection,
    schema: &str,
    table: &str,
) -> sqlx::Result<Vec<MyColumn>> {
    Ok(sqlx::query(COLUMNS_SQL)
        .bind(schema)
        .bind(table)
        .fetch_all(conn)
        .await?
        .into_iter()
        .map(|row| MyColumn {
            name: text(&row, "name"),
            data_type: text(&row, "data_type"),
            column_type: text(&row, "column_type"),
            precision: row
                .try_get::<Option<u64>, _>("numeric_precision")
                .ok()
                .flatten(),
            scale: row
                .try_get::<Option<u64>, _>("numeric_scale")
                .ok()
                .flatten(),
        })
        .collect())
}

pub(crate) fn text(row: &sqlx::mysql::MySqlRow, column: &str) -> String {
    // information_schema columns may come back as binary strings on some servers.
    row.try_get::<String, _>(column)
        .or_else(|_| {
            row.try_get::<Vec<u8>, _>(column)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        })
        .unwrap_or_default()
}

fn select_columns<'a>(
    spec: &DatasetSpec,
    columns: &'a [MyColumn],
) -> Result<Vec<&'a MyColumn>, String> {
    super::select_columns(spec.source.columns(), columns, |c| c.name.as_str())
}

enum Builder {
    Text(StringBuilder),
    Binary(BinaryBuilder),
}

/// Rows as text (or bytes) until a batch is full, then cast exactly to the column types.
struct TextBatch {
    schema: SchemaRef,
    builders: Vec<Builder>,
    rows: usize,
}

impl TextBatch {
    fn new(schema: SchemaRef, plans: &[ColumnPlan]) -> Self {
        let builders = plans
            .iter()
            .map(|p| {
                if p.binary {
                    Builder::Binary(BinaryBuilder::new())
                } else {
                    Builder::Text(StringBuilder::new())
                }
            })
            .collect();
        Self {
            schema,
            builders,
            rows: 0,
        }
    }

    fn push(&mut self, row: &sqlx::mysql::MySqlRow, row_number: u64) -> Result<(), String> {
        for (i, builder) in self.builders.iter_mut().enumerate() {
            let name = self.schema.field(i).name();
            let raw = row
                .try_get_raw(i)
                .map_err(|e| format!("row {row_number}: column '{name}': {e}"))?;
            if raw.is_null() {
                match builder {
                    Builder::Text(b) => b.append_null(),
                    Builder::Binary(b) => b.append_null(),
                }
                continue;
            }
            match builder {
                Builder::Text(b) => {
                    let value = <&str as Decode<MySql>>::decode(raw).map_err(|_| {
                        format!("row {row_number}: column '{name}' is not valid UTF-8")
                    })?;
                    b.append_value(value);
                }
                Builder::Binary(b) => {
                    let value = <&[u8] as Decode<MySql>>::decode(raw)
                        .map_err(|e| format!("row {row_number}: column '{name}': {e}"))?;
                    b.append_value(value);
                }
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// The rows pushed so far, as text, for [`BatchTexts::cast`]; `last_row` is the number of
    /// the last row pushed, to name a bad row in messages.
    fn take_texts(&mut self, last_row: u64) -> BatchTexts {
        let columns = self
            .builders
            .iter_mut()
            .map(|builder| match builder {
                Builder::Binary(b) => Arc::new(b.finish()) as ArrayRef,
                Builder::Text(b) => Arc::new(b.finish()) as ArrayRef,
            })
            .collect();
        let first_row = last_row + 1 - self.rows as u64;
        self.rows = 0;
        BatchTexts {
            schema: self.schema.clone(),
            columns,
            first_row,
        }
    }
}

/// A batch's rows as the server sent them (text, or bytes for binary columns).
struct BatchTexts {
    schema: SchemaRef,
    columns: Vec<ArrayRef>,
    /// The number of the batch's first row, to name a bad row in messages.
    first_row: u64,
}

impl BatchTexts {
    /// Casts the text columns exactly to the schema's types.
    fn cast(self) -> Result<RecordBatch, String> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (column, field) in self.columns.into_iter().zip(self.schema.fields()) {
            let Some(texts) = column.as_any().downcast_ref::<StringArray>() else {
                columns.push(column);
                continue;
            };
            let typed = cast_exact(texts, field.data_type()).map_err(|failure| match failure {
                CastFailure::Value(i) => format!(
                    "row {}: column '{}': '{}' is not a valid {}",
                    self.first_row + i as u64,
                    field.name(),
                    texts.value(i),
                    describe(field.data_type())
                ),
                CastFailure::Unsupported(e) => format!("column '{}': {e}", field.name()),
            })?;
            columns.push(typed);
        }
        RecordBatch::try_new(self.schema, columns).map_err(|e| e.to_string())
    }
}

/// Waits for a batch being cast and sends it; `false` when the run stopped listening.
async fn send_cast(
    ctx: &SourceOutput,
    casting: tokio::task::JoinHandle<Result<RecordBatch, String>>,
) -> Result<bool> {
    let batch = casting
        .await
        .map_err(|e| JobError::Internal(format!("casting a batch: {e}")))?
        .map_err(|m| ctx.bad_input(m))?;
    Ok(ctx.send_async(batch).await)
}
