//! `format: postgres`: a table (or several) of a PostgreSQL database.

use serde::{Deserialize, Serialize};

/// A PostgreSQL table, optionally read in parallel key ranges.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresSource {
    /// Schema-qualified (`public.orders`).
    #[serde(default)]
    pub table: Option<String>,
    /// Several tables pulled with the same settings, each as its own dataset (`per_table`).
    #[serde(default)]
    pub tables: Vec<String>,
    /// The columns to extract; all of them when empty.
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default)]
    pub postgres: PostgresOptions,
    /// Split a large table into key ranges read in parallel.
    #[serde(default)]
    pub partitions: Option<PartitionSpec>,
}

impl PostgresSource {
    pub(crate) const FIELDS: &'static [&'static str] =
        &["table", "tables", "columns", "postgres", "partitions"];

    pub(crate) fn validate(&self) -> Result<(), String> {
        self.partitions
            .as_ref()
            .map_or(Ok(()), PartitionSpec::validate)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresOptions {
    /// How `numeric` columns without a declared precision are written: `text` keeps every digit
    /// exactly as a string; `decimal(p,s)` makes them decimals, and a value that does not fit fails.
    pub unconstrained_numeric: String,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            unconstrained_numeric: "text".into(),
        }
    }
}

/// Partitioned extraction, like Spark JDBC's `partitionColumn`/`numPartitions`, but with the
/// range bounds taken from the data (quantiles of a sample), so skewed keys still split evenly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PartitionSpec {
    /// A column with an ordering (integer, numeric, date, timestamp, text); ideally indexed.
    pub column: String,
    /// How many key ranges (chunks) to cut the table into.
    pub count: u32,
    /// Chunks read at the same time; all of them when absent.
    #[serde(default)]
    pub parallel: Option<u32>,
    /// Attempts per chunk before the run fails (a failed attempt's parts are removed first).
    #[serde(default = "default_chunk_attempts")]
    pub attempts: u32,
    /// Chunks are jobs on the queue that any worker takes (the run that planned them holds the
    /// snapshot and commits once all are written); in a process without a queue (`carga run`)
    /// they are read in that process as usual.
    #[serde(default)]
    pub across_workers: bool,
}

impl PartitionSpec {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.count < 2 || self.count > 1024 {
            return Err("source.partitions.count must be between 2 and 1024".into());
        }
        if self.attempts == 0 || self.parallel == Some(0) {
            return Err("source.partitions.attempts and parallel must be at least 1".into());
        }
        Ok(())
    }
}

fn default_chunk_attempts() -> u32 {
    3
}
