//! Partitioned reads of MySQL and MariaDB: the table is cut into key ranges at the quantiles of
//! a sample of its partition column, and each chunk reads its range in its own connection.
//!
//! Consistency limit: MySQL cannot hand one transaction's snapshot to another connection (there is
//! no `pg_export_snapshot`), so each chunk reads its range in its own consistent snapshot, taken
//! when the chunk starts. A row written while the chunks run is read by the chunks that start
//! after it commits; a row whose partition key changes meanwhile can be read twice or not at
//! all. Partition on a key that does not change (an auto-increment id), or read the table in
//! one pass when an instant-consistent copy matters.

use carga_config::{DatasetSpec, PartitionSpec};
use futures::TryStreamExt;
use sqlx::{AssertSqlSafe, Connection, MySqlConnection};

use super::table_columns;
use super::types::{MyColumn, quote_ident, typed_variable};
use crate::error::{JobError, Result};
use crate::secrets::ConnectionSecret;
use crate::sources::Chunk;

/// Values sampled to place the range bounds.
const SAMPLE_ROWS: f64 = 200_000.0;

/// Cuts the dataset's table into at most `count` ranges of its partition column.
pub(crate) async fn plan_chunks(
    spec: &DatasetSpec,
    partitions: &PartitionSpec,
    secret: &ConnectionSecret,
) -> Result<Vec<Chunk>> {
    let table = spec.source.table().to_owned();
    let context = format!("table {table} (planning {} chunks)", partitions.count);
    let db_error = |e: sqlx::Error| JobError::Database {
        context: context.clone(),
        message: secret.redact(&e.to_string()),
    };
    let mut conn = MySqlConnection::connect(&secret.database_url("mysql", 3306)?)
        .await
        .map_err(db_error)?;
    // Bounds as text in UTC, as the chunks' readers compare them.
    sqlx::raw_sql("SET time_zone = '+00:00'")
        .execute(&mut conn)
        .await
        .map_err(db_error)?;
    let (schema, name) = match table.split_once('.') {
        Some((schema, name)) => (schema.to_owned(), name.to_owned()),
        None => {
            let current: Option<String> = sqlx::query_scalar("SELECT DATABASE()")
                .fetch_one(&mut conn)
                .await
                .map_err(db_error)?;
            (current.unwrap_or_default(), table.clone())
        }
    };
    let columns = table_columns(&mut conn, &schema, &name)
        .await
        .map_err(db_error)?;
    if !columns.iter().any(|c| c.name == partitions.column) {
        return Err(JobError::bad_input(
            format!("table {schema}.{name}"),
            format!(
                "partition column '{}' is not in the table",
                partitions.column
            ),
        ));
    }
    let estimated: Option<u64> = sqlx::query_scalar(
        "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
    )
    .bind(&schema)
    .bind(&name)
    .fetch_optional(&mut conn)
    .await
    .map_err(db_error)?
    .flatten();
    let column = quote_ident(&partitions.column);
    let sample = match estimated.map(|n| n as f64) {
        Some(rows) if rows > SAMPLE_ROWS * 2.0 => {
            format!(" AND RAND() < {:.6}", SAMPLE_ROWS / rows)
        }
        _ => String::new(),
    };
    let query = format!(
        "SELECT CAST({column} AS CHAR) FROM {}.{} WHERE {column} IS NOT NULL{sample} ORDER BY {column}",
        quote_ident(&schema),
        quote_ident(&name)
    );
    let mut values: Vec<String> = Vec::new();
    {
        let mut rows = sqlx::raw_sql(AssertSqlSafe(query)).fetch(&mut conn);
        while let Some(row) = rows.try_next().await.map_err(db_error)? {
            values.push(text_at(&row));
        }
    }
    let _ = conn.close().await;
    let count = partitions.count as usize;
    let cuts: Vec<String> = (1..count)
        .filter_map(|i| values.get(i * values.len() / count).cloned())
        .collect();
    let chunks = Chunk::ranges(&partitions.column, "", cuts);
    tracing::info!(table = %format!("{schema}.{name}"), chunks = chunks.len(), column = %partitions.column, sampled = values.len(), "partitioned read planned");
    Ok(chunks)
}

fn text_at(row: &sqlx::mysql::MySqlRow) -> String {
    use sqlx::Row;
    row.try_get::<String, _>(0)
        .or_else(|_| {
            row.try_get::<Vec<u8>, _>(0)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        })
        .unwrap_or_default()
}

/// The chunk's range as a condition on user variables `@carga_lo` and `@carga_hi` (which the
/// reader sets to the bounds, so no value is spliced into SQL), cast to the column's type; the
/// first chunk also takes null keys.
pub(super) fn chunk_predicate(chunk: &Chunk, columns: &[MyColumn]) -> Result<String, String> {
    let column = columns
        .iter()
        .find(|c| c.name == chunk.column)
        .ok_or_else(|| format!("partition column '{}' is not in the table", chunk.column))?;
    let name = quote_ident(&column.name);
    let mut parts = Vec::new();
    if chunk.lower.is_some() {
        parts.push(format!("{name} >= {}", typed_variable(column, "@carga_lo")));
    }
    if chunk.upper.is_some() {
        parts.push(format!("{name} < {}", typed_variable(column, "@carga_hi")));
    }
    Ok(match (parts.is_empty(), chunk.lower.is_none()) {
        (true, _) => "TRUE".into(),
        (false, true) => format!("({} OR {name} IS NULL)", parts.join(" AND ")),
        (false, false) => format!("({})", parts.join(" AND ")),
    })
}
