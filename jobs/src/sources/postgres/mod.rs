//! PostgreSQL source: one read-only REPEATABLE READ transaction (a consistent snapshot), the
//! table's columns from the catalog, then `COPY (SELECT ...) TO STDOUT (FORMAT binary)` decoded
//! straight into Arrow batches. Delta runs push the cursor predicate down as a row comparison
//! `(ts, key) > (watermark)`, so only new rows leave the server.

mod copy_binary;
pub(crate) mod discover;
pub mod partition;
pub mod types;

use std::sync::Arc;

use arrow::datatypes::{Field, Schema};
use carga_config::{DatasetSpec, PostgresOptions, PostgresSource};
use futures::TryStreamExt;
use sqlx::{Connection, Executor, PgConnection, Row};

use super::{Capabilities, PartitionHold, Partitions, Source, SourceAccess, SourceOutput};
use crate::delta::Watermark;
use crate::error::{JobError, Result};
use crate::query::SqlDialect;
use crate::secrets::ConnectionSecret;
use crate::validation::ReadStats;
use copy_binary::CopyDecoder;
use types::{ColumnPlan, PgColumn, plan_column, quote_ident};

const COLUMNS_SQL: &str = "
SELECT a.attname::text AS name,
       format_type(a.atttypid, a.atttypmod) AS declared,
       coalesce(b.typname, t.typname)::text AS base,
       coalesce(b.typcategory, t.typcategory)::text AS category,
       CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END AS typmod
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type b ON t.typtype = 'd' AND b.oid = t.typbasetype
WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum";

/// One table (or one chunk of it) of a PostgreSQL database.
pub struct PostgresTable {
    spec: DatasetSpec,
    config: PostgresSource,
}

impl PostgresTable {
    pub fn new(spec: &DatasetSpec, config: PostgresSource) -> Self {
        Self {
            spec: spec.clone(),
            config,
        }
    }
}

#[async_trait::async_trait]
impl Source for PostgresTable {
    fn describe(&self) -> String {
        super::describe_table(&self.spec)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            filter_dialect: Some(SqlDialect::Postgres),
            cursor_pushdown: true,
        }
    }

    async fn partitions(&self, access: &SourceAccess) -> Result<Option<Partitions>> {
        let Some(partitioning) = &self.config.partitions else {
            return Ok(None);
        };
        let secret = access.require_secret(self.spec.connection_id.as_deref())?;
        let (holder, chunks) = partition::plan_chunks(&self.spec, partitioning, &secret).await?;
        Ok(Some(Partitions::planned(
            partitioning,
            chunks,
            Box::new(holder),
        )))
    }

    async fn read(
        self: Arc<Self>,
        output: SourceOutput,
        access: SourceAccess,
    ) -> Result<ReadStats> {
        let secret = access.require_secret(self.spec.connection_id.as_deref())?;
        read(&self.spec, &self.config.postgres, secret, access, output).await
    }
}

#[async_trait::async_trait]
impl PartitionHold for partition::SnapshotHolder {
    async fn release(self: Box<Self>) {
        (*self).release().await;
    }
}

async fn read(
    spec: &DatasetSpec,
    options: &PostgresOptions,
    secret: ConnectionSecret,
    access: SourceAccess,
    mut ctx: SourceOutput,
) -> Result<ReadStats> {
    let floor = access.floor;
    let lookback = access.lookback;
    let chunk = access.chunk;
    let table = spec.source.table().to_owned();
    let url = secret.database_url("postgres", 5432)?;
    let location = ctx.location.clone();
    let db_error = |what: &str, e: sqlx::Error| JobError::Database {
        context: format!("{location} ({what})"),
        message: secret.redact(&e.to_string()),
    };
    let mut conn = PgConnection::connect(&url)
        .await
        .map_err(|e| db_error("connecting", e))?;
    // One snapshot for the catalog read and the COPY; intervals print as ISO 8601 durations.
    // A chunk of a partitioned read imports the coordinator's snapshot (first thing in its
    // transaction). The chunks are the read's parallelism: a chunk's query takes no parallel
    // workers, which would scan the whole table on extra cores for each range instead of the
    // range through the key's index.
    let import = match &chunk {
        Some(chunk) => format!(
            " SET TRANSACTION SNAPSHOT {}; SET LOCAL max_parallel_workers_per_gather = 0;",
            quote_literal(&chunk.snapshot).map_err(|m| ctx.bad_input(m))?
        ),
        None => String::new(),
    };
    conn.execute(sqlx::AssertSqlSafe(format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;{import} SET LOCAL intervalstyle = 'iso_8601'"
    )))
    .await
    .map_err(|e| db_error("starting a snapshot", e))?;
    let qualified: String = sqlx::query_scalar("SELECT $1::regclass::text")
        .bind(&table)
        .fetch_one(&mut conn)
        .await
        .map_err(|e| db_error("finding the table", e))?;
    let columns = table_columns(&mut conn, &table)
        .await
        .map_err(|e| db_error("reading the table's columns", e))?;
    // A whole-table read shows its progress against the planner's row estimate.
    if floor.is_none() && access.pushed_filter.is_none() && !access.schema_only {
        let estimate: Option<i64> = sqlx::query_scalar(
            "SELECT CASE WHEN reltuples > 0 THEN reltuples::int8 END FROM pg_class WHERE oid = $1::regclass",
        )
        .bind(&qualified)
        .fetch_one(&mut conn)
        .await
        .map_err(|e| db_error("reading the table's row estimate", e))?;
        if let Some(rows) = estimate {
            ctx.expect_rows(rows as u64);
        }
    }
    let plans = select_columns(spec, &columns)
        .map_err(|m| ctx.bad_input(m))?
        .iter()
        .map(|c| plan_column(c, &options.unconstrained_numeric).map_err(|m| ctx.bad_input(m)))
        .collect::<Result<Vec<ColumnPlan>>>()?;
    for note in plans.iter().filter_map(|p| p.note.as_ref()) {
        tracing::info!(table = %qualified, "{note}");
    }
    let schema = std::sync::Arc::new(Schema::new(
        plans
            .iter()
            .map(|p| Field::new(&p.name, p.data_type.clone(), true))
            .collect::<Vec<_>>(),
    ));
    let predicate = match &floor {
        Some(watermark) => {
            cursor_predicate(watermark, lookback, &columns).map_err(|m| ctx.bad_input(m))?
        }
        None => String::new(),
    };
    let predicate = match &chunk {
        Some(chunk) => {
            let range =
                partition::chunk_predicate(chunk, &columns).map_err(|m| ctx.bad_input(m))?;
            if predicate.is_empty() {
                format!(" WHERE {range}")
            } else {
                format!("{predicate} AND {range}")
            }
        }
        None => predicate,
    };
    // A transform's filters, in PostgreSQL's SQL (see `query::transform`).
    let predicate = match &access.pushed_filter {
        Some(filter) if predicate.is_empty() => format!(" WHERE {filter}"),
        Some(filter) => format!("{predicate} AND {filter}"),
        None => predicate,
    };
    let select_list = plans
        .iter()
        .map(|p| p.select.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let copy = format!(
        "COPY (SELECT {select_list} FROM {qualified}{predicate}) TO STDOUT (FORMAT binary)"
    );
    ctx.announce_schema(schema.clone());
    let mut stats = ReadStats {
        source_query: Some(copy.clone()),
        ..ReadStats::default()
    };
    if access.schema_only {
        return Ok(stats);
    }

    let mut decoder = CopyDecoder::new(schema, &plans);
    let mut stream = conn
        .copy_out_raw(&copy)
        .await
        .map_err(|e| db_error("starting COPY", e))?;
    while let Some(chunk) = stream
        .try_next()
        .await
        .map_err(|e| db_error("reading COPY", e))?
    {
        decoder.feed(&chunk).map_err(|m| ctx.bad_input(m))?;
        if decoder.buffered_rows() >= ctx.batch_rows {
            stats.rows_read += decoder.buffered_rows() as u64;
            let batch = decoder.take_batch().map_err(|m| ctx.bad_input(m))?;
            if !ctx.send_async(batch).await {
                return Ok(stats);
            }
        }
    }
    drop(stream);
    decoder.finish().map_err(|m| ctx.bad_input(m))?;
    if decoder.buffered_rows() > 0 {
        stats.rows_read += decoder.buffered_rows() as u64;
        let batch = decoder.take_batch().map_err(|m| ctx.bad_input(m))?;
        ctx.send_async(batch).await;
    }
    conn.execute("COMMIT")
        .await
        .map_err(|e| db_error("ending the snapshot", e))?;
    Ok(stats)
}

/// The columns of a table (any name `regclass` accepts), in table order.
pub(crate) async fn table_columns(
    conn: &mut PgConnection,
    table: &str,
) -> sqlx::Result<Vec<PgColumn>> {
    Ok(sqlx::query(COLUMNS_SQL)
        .bind(table)
        .fetch_all(conn)
        .await?
        .into_iter()
        .map(|row| PgColumn {
            name: row.get("name"),
            declared: row.get("declared"),
            base: row.get("base"),
            category: row.get("category"),
            typmod: row.get("typmod"),
        })
        .collect())
}

/// The spec's columns (all when it lists none), in table order; unknown names are an error.
fn select_columns<'a>(
    spec: &DatasetSpec,
    columns: &'a [PgColumn],
) -> Result<Vec<&'a PgColumn>, String> {
    if columns.is_empty() {
        return Err("table has no columns".into());
    }
    super::select_columns(spec.source.columns(), columns, |c| c.name.as_str())
}

/// ` WHERE (ts, key) > ('…'::type, '…'::type)` from the stored watermark, with values as literals
/// of the columns' declared types (COPY takes no bind parameters). With a lookback window, the
/// timestamp alone, moved back by the window: the pipeline then drops the rows already delivered.
fn cursor_predicate(
    watermark: &Watermark,
    lookback: Option<u64>,
    columns: &[PgColumn],
) -> Result<String, String> {
    let mut names = Vec::new();
    let mut values = Vec::new();
    for column_name in &watermark.columns {
        let column = columns
            .iter()
            .find(|c| &c.name == column_name)
            .ok_or_else(|| format!("delta cursor column '{column_name}' is not in the table"))?;
        let value = watermark
            .values
            .get(column_name)
            .ok_or_else(|| format!("stored watermark has no value for '{column_name}'"))?;
        names.push(quote_ident(column_name));
        values.push(format!("{}::{}", quote_literal(value)?, column.declared));
        if let Some(seconds) = lookback {
            return Ok(format!(
                " WHERE {} > {} - interval '{seconds} seconds'",
                names[0], values[0]
            ));
        }
    }
    Ok(format!(
        " WHERE ({}) > ({})",
        names.join(", "),
        values.join(", ")
    ))
}

fn quote_literal(value: &str) -> Result<String, String> {
    if value.contains('\0') {
        return Err("a watermark value contains a NUL byte".into());
    }
    Ok(format!("'{}'", value.replace('\'', "''")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_predicate_compares_the_tuple_with_typed_literals() {
        let columns = vec![
            PgColumn {
                name: "ts".into(),
                declared: "timestamp without time zone".into(),
                base: "timestamp".into(),
                category: "D".into(),
                typmod: -1,
            },
            PgColumn {
                name: "id".into(),
                declared: "bigint".into(),
                base: "int8".into(),
                category: "N".into(),
                typmod: -1,
            },
        ];
        let watermark = Watermark {
            columns: vec!["ts".into(), "id".into()],
            lookback_seconds: None,
            values: [
                ("ts".to_string(), "2026-01-01T10:00:00.000001".to_string()),
                ("id".to_string(), "7".to_string()),
            ]
            .into(),
            ..Watermark::default()
        };
        assert_eq!(
            cursor_predicate(&watermark, None, &columns).unwrap(),
            " WHERE (\"ts\", \"id\") > ('2026-01-01T10:00:00.000001'::timestamp without time zone, '7'::bigint)"
        );
        assert_eq!(
            cursor_predicate(&watermark, Some(600), &columns).unwrap(),
            " WHERE \"ts\" > '2026-01-01T10:00:00.000001'::timestamp without time zone - interval '600 seconds'"
        );
        assert_eq!(quote_literal("o'clock").unwrap(), "'o''clock'");
    }
}
