//! Partitioned reads: a coordinator transaction exports its snapshot and cuts the table into key
//! ranges at quantiles of a sample; each chunk then reads its range in its own connection, inside
//! the same snapshot, so the chunks together are one consistent copy of the table.

use carga_config::{DatasetSpec, PartitionSpec};
use sqlx::{Connection, Executor, PgConnection};

use super::types::{PgColumn, quote_ident};
use super::{quote_literal, table_columns};
use crate::error::{JobError, Result};
use crate::secrets::ConnectionSecret;

/// Rows sampled to place the range bounds: enough for even chunks, cheap on large tables.
const SAMPLE_ROWS: f64 = 200_000.0;

/// One key range of a partitioned read. `lower` is inclusive, `upper` exclusive; the first chunk
/// also takes the rows whose key is null.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Chunk {
    pub index: usize,
    /// PostgreSQL's exported snapshot the chunk imports (empty for MySQL and MariaDB, whose chunks
    /// each take their own).
    pub snapshot: String,
    pub column: String,
    pub lower: Option<String>,
    pub upper: Option<String>,
}

impl Chunk {
    /// The ranges between sorted cut points (equal cuts merge): below the first (with the null
    /// keys), between each two, and from the last on.
    pub(crate) fn ranges(column: &str, snapshot: &str, mut cuts: Vec<String>) -> Vec<Chunk> {
        cuts.dedup();
        let mut chunks = Vec::with_capacity(cuts.len() + 1);
        let mut lower = None;
        for upper in cuts.into_iter().map(Some).chain(std::iter::once(None)) {
            chunks.push(Chunk {
                index: chunks.len(),
                snapshot: snapshot.to_owned(),
                column: column.to_owned(),
                lower: lower.clone(),
                upper: upper.clone(),
            });
            lower = upper;
        }
        chunks
    }
}

/// The coordinator's open transaction: chunks can import its snapshot only while it lives.
pub struct SnapshotHolder {
    conn: PgConnection,
}

impl SnapshotHolder {
    pub async fn release(mut self) {
        let _ = self.conn.execute("COMMIT").await;
        let _ = self.conn.close().await;
    }
}

/// Exports a snapshot and cuts the dataset's table into at most `count` ranges of its partition
/// column, at the quantiles of a sample (equal bounds from skewed data merge into one range).
pub(crate) async fn plan_chunks(
    spec: &DatasetSpec,
    partitions: &PartitionSpec,
    secret: &ConnectionSecret,
) -> Result<(SnapshotHolder, Vec<Chunk>)> {
    let table = spec.source.table().to_owned();
    let context = format!("table {table} (planning {} chunks)", partitions.count);
    let db_error = |e: sqlx::Error| JobError::Database {
        context: context.clone(),
        message: secret.redact(&e.to_string()),
    };
    let mut conn = PgConnection::connect(&secret.database_url("postgres", 5432)?)
        .await
        .map_err(db_error)?;
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(db_error)?;
    let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut conn)
        .await
        .map_err(db_error)?;
    let qualified: String = sqlx::query_scalar("SELECT $1::regclass::text")
        .bind(&table)
        .fetch_one(&mut conn)
        .await
        .map_err(db_error)?;
    let columns = table_columns(&mut conn, &table).await.map_err(db_error)?;
    if !columns.iter().any(|c| c.name == partitions.column) {
        return Err(JobError::bad_input(
            format!("table {qualified}"),
            format!(
                "partition column '{}' is not in the table",
                partitions.column
            ),
        ));
    }
    let estimated: f64 =
        sqlx::query_scalar("SELECT reltuples::float8 FROM pg_class WHERE oid = $1::regclass")
            .bind(&qualified)
            .fetch_one(&mut conn)
            .await
            .map_err(db_error)?;
    let fractions: Vec<f64> = (1..partitions.count)
        .map(|i| f64::from(i) / f64::from(partitions.count))
        .collect();
    let column = quote_ident(&partitions.column);
    let quantiles = |sample: String| {
        format!(
            "SELECT (percentile_disc($1::float8[]) WITHIN GROUP (ORDER BY {column}))::text[] FROM {qualified}{sample} WHERE {column} IS NOT NULL"
        )
    };
    let mut bounds: Option<Vec<Option<String>>> = None;
    if estimated > SAMPLE_ROWS * 2.0 {
        let percent = (100.0 * SAMPLE_ROWS / estimated).clamp(0.01, 100.0);
        bounds = sqlx::query_scalar(sqlx::AssertSqlSafe(quantiles(format!(
            " TABLESAMPLE SYSTEM ({percent:.4})"
        ))))
        .bind(&fractions)
        .fetch_one(&mut conn)
        .await
        .map_err(db_error)?;
    }
    if bounds.is_none() {
        // Small or never analysed tables: the quantiles of the whole column.
        bounds = sqlx::query_scalar(sqlx::AssertSqlSafe(quantiles(String::new())))
            .bind(&fractions)
            .fetch_one(&mut conn)
            .await
            .map_err(db_error)?;
    }
    let cuts: Vec<String> = bounds.unwrap_or_default().into_iter().flatten().collect();
    let chunks = Chunk::ranges(&partitions.column, &snapshot, cuts);
    tracing::info!(table = %qualified, chunks = chunks.len(), column = %partitions.column, "partitioned read planned");
    Ok((SnapshotHolder { conn }, chunks))
}

/// `(col >= lower AND col < upper)` with literals of the column's declared type; the first chunk
/// also takes null keys.
pub(super) fn chunk_predicate(chunk: &Chunk, columns: &[PgColumn]) -> Result<String, String> {
    let column = columns
        .iter()
        .find(|c| c.name == chunk.column)
        .ok_or_else(|| format!("partition column '{}' is not in the table", chunk.column))?;
    let name = quote_ident(&column.name);
    let literal = |v: &str| quote_literal(v).map(|l| format!("{l}::{}", column.declared));
    let mut parts = Vec::new();
    if let Some(lower) = &chunk.lower {
        parts.push(format!("{name} >= {}", literal(lower)?));
    }
    if let Some(upper) = &chunk.upper {
        parts.push(format!("{name} < {}", literal(upper)?));
    }
    Ok(match (parts.is_empty(), chunk.lower.is_none()) {
        (true, _) => "TRUE".into(),
        (false, true) => format!("({} OR {name} IS NULL)", parts.join(" AND ")),
        (false, false) => format!("({})", parts.join(" AND ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_predicates_cover_the_key_space_once() {
        let columns = vec![PgColumn {
            name: "id".into(),
            declared: "bigint".into(),
            base: "int8".into(),
            category: "N".into(),
            typmod: -1,
        }];
        let chunk = |lower: Option<&str>, upper: Option<&str>| Chunk {
            index: 0,
            snapshot: "00000003-1".into(),
            column: "id".into(),
            lower: lower.map(str::to_owned),
            upper: upper.map(str::to_owned),
        };
        assert_eq!(
            chunk_predicate(&chunk(None, Some("10")), &columns).unwrap(),
            "(\"id\" < '10'::bigint OR \"id\" IS NULL)"
        );
        assert_eq!(
            chunk_predicate(&chunk(Some("10"), Some("20")), &columns).unwrap(),
            "(\"id\" >= '10'::bigint AND \"id\" < '20'::bigint)"
        );
        assert_eq!(
            chunk_predicate(&chunk(Some("20"), None), &columns).unwrap(),
            "(\"id\" >= '20'::bigint)"
        );
    }
}
