//! The per-run validation report (the seed design's ValidationManager checks): header problems,
//! per-column type coherence, empty rows, duplicate keys, timestamp coverage, rejected rows.
//! Written as JSON beside the run's manifest, on success and on failure.

use std::collections::{BTreeMap, HashSet};
use std::hash::Hasher;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::Schema;
use arrow::row::{RowConverter, SortField};
use serde::{Deserialize, Serialize};

use crate::error::{JobError, Result};
use crate::typing::describe;

/// Rejected rows listed individually in the report; beyond this only counts grow.
pub const MAX_LISTED_REJECTS: usize = 100;

/// What a source reader saw while parsing, before rows became Arrow batches.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReadStats {
    pub header_problems: Vec<String>,
    /// Data rows (records) read from the source, rejected and empty ones included.
    pub rows_read: u64,
    pub empty_rows: u64,
    pub rejected_rows: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    pub rejected_samples: Vec<RejectedRow>,
    /// Cells that did not parse as their column's type, per column.
    pub type_mismatches: BTreeMap<String, u64>,
    /// Lines with nothing on them between records (CSV): not rows, but counted.
    #[serde(default)]
    pub blank_lines: u64,
    /// What the reader did that an operator should know (cells written as null, left out).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The statement a database source ran (its cursor and pushed filters included).
    #[serde(default)]
    pub source_query: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RejectedRow {
    /// Line (CSV), row (Excel) or record number (JSON), 1-based as an editor shows it.
    pub row: u64,
    pub reason: String,
}

impl ReadStats {
    /// Adds another reader's counts (a chunk of a partitioned read).
    pub fn absorb(&mut self, other: ReadStats) {
        self.header_problems.extend(other.header_problems);
        self.rows_read += other.rows_read;
        self.empty_rows += other.empty_rows;
        self.rejected_rows += other.rejected_rows;
        for (reason, n) in other.rejected_by_reason {
            *self.rejected_by_reason.entry(reason).or_default() += n;
        }
        let room = MAX_LISTED_REJECTS.saturating_sub(self.rejected_samples.len());
        self.rejected_samples
            .extend(other.rejected_samples.into_iter().take(room));
        for (column, n) in other.type_mismatches {
            *self.type_mismatches.entry(column).or_default() += n;
        }
        self.blank_lines += other.blank_lines;
        self.warnings.extend(other.warnings);
        if self.source_query.is_none() {
            self.source_query = other.source_query;
        }
    }

    /// Records a rejected row. `kind` groups reasons in the report (e.g. "ragged row").
    pub fn reject(&mut self, row: u64, kind: &str, reason: String) {
        self.rejected_rows += 1;
        *self.rejected_by_reason.entry(kind.to_owned()).or_default() += 1;
        // The list holds the first rejected rows of the source, in its order, however the reader
        // met them (a cell's type is checked a batch after its row's field count): so a file read
        // in parallel chunks lists the same rows as one read in a single pass.
        let at = self.rejected_samples.partition_point(|r| r.row <= row);
        if at < MAX_LISTED_REJECTS {
            self.rejected_samples
                .insert(at, RejectedRow { row, reason });
            self.rejected_samples.truncate(MAX_LISTED_REJECTS);
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ColumnReport {
    pub name: String,
    pub data_type: String,
    pub nulls: u64,
    pub type_mismatches: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DuplicateKeys {
    pub key: Vec<String>,
    pub duplicate_rows: u64,
    /// Rows whose key was checked; less than all rows when `complete` is false.
    pub checked_rows: u64,
    /// False when the input had more than `MAX_TRACKED_KEYS` distinct keys and checking stopped.
    pub complete: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TimestampCoverage {
    pub column: String,
    pub rows_without_timestamp: u64,
    /// Informational, as the seed design asks: not a reason to reject.
    pub every_row_has_timestamp: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Passed,
    Failed,
}

/// The report's layout: 2 added the version, the time, blank lines, warnings and partial counts
/// of failed runs.
pub const REPORT_VERSION: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ValidationReport {
    #[serde(default = "first_report_version")]
    pub format_version: u32,
    /// When the report was written.
    #[serde(default)]
    pub generated_at: Option<chrono::DateTime<chrono::Utc>>,
    pub dataset: String,
    pub run_id: String,
    pub source: String,
    pub status: RunStatus,
    pub error: Option<String>,
    pub header_problems: Vec<String>,
    pub rows_read: u64,
    /// Rows that passed validation (before the delta filter).
    pub rows_valid: u64,
    pub rows_written: u64,
    pub empty_rows: u64,
    /// Lines with nothing on them (CSV): skipped, not rows.
    #[serde(default)]
    pub blank_lines: u64,
    /// The statement a database source ran (its cursor and a transform's pushed filters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_query: Option<String>,
    pub rejected_rows: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    pub rejected_samples: Vec<RejectedRow>,
    pub columns: Vec<ColumnReport>,
    pub duplicate_keys: Option<DuplicateKeys>,
    pub timestamp: Option<TimestampCoverage>,
    pub schema_changes: Vec<String>,
    /// What the run did that an operator should know about but that did not fail it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

fn first_report_version() -> u32 {
    1
}

/// Accumulates the batch-level checks as valid rows stream past.
pub struct BatchChecks {
    column_names: Vec<String>,
    column_types: Vec<String>,
    nulls: Vec<u64>,
    rows: u64,
    key: Option<KeyCheck>,
    timestamp: Option<(usize, String, u64)>,
}

/// Distinct keys remembered for duplicate detection; past this the check stops (and says so),
/// so memory stays bounded (~40 MB) however large the input is.
pub const MAX_TRACKED_KEYS: usize = 2_000_000;

/// Duplicate detection keeps one 64-bit hash per distinct key, never the rows.
struct KeyCheck {
    names: Vec<String>,
    indices: Vec<usize>,
    sort_fields: Vec<SortField>,
    converter: RowConverter,
    seen: HashSet<u64>,
    seed: KeySeed,
    duplicates: u64,
    checked_rows: u64,
    complete: bool,
    limit: usize,
}

/// The keys of the hash that stands for a key in duplicate detection: random per run, and the
/// same in every chunk of the run, so hashes from chunks read by other workers can be merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySeed(pub u64, pub u64);

impl KeySeed {
    pub fn random() -> Self {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 16];
        // A seed only spreads keys; should the system generator fail, a fixed one still counts right.
        let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
        let half = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        Self(half(&bytes[..8]), half(&bytes[8..]))
    }

    fn hasher(&self) -> siphasher::sip::SipHasher13 {
        siphasher::sip::SipHasher13::new_with_keys(self.0, self.1)
    }
}

/// What `BatchChecks` counted, in transit from a chunk read by another worker to the run's
/// coordinator (`BatchChecks::export`, `absorb_state`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ChecksState {
    pub rows: u64,
    pub nulls: Vec<u64>,
    pub timestamp_missing: Option<u64>,
    pub key: Option<KeyState>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KeyState {
    pub duplicates: u64,
    pub checked_rows: u64,
    pub complete: bool,
    /// The distinct keys' hashes (little-endian u64s, base64), when other chunks may hold the
    /// same keys; `None` when the chunks' key ranges cannot overlap.
    pub hashes: Option<String>,
}

impl BatchChecks {
    pub fn new(schema: &Schema, key: &[String], timestamp_column: Option<&str>) -> Result<Self> {
        let index_of = |name: &str| {
            schema.index_of(name).map_err(|_| {
                JobError::bad_input(
                    "dataset spec",
                    format!(
                        "column '{name}' named in the spec is not in the source (columns: {})",
                        column_list(schema)
                    ),
                )
            })
        };
        let key = if key.is_empty() {
            None
        } else {
            let indices = key
                .iter()
                .map(|k| index_of(k))
                .collect::<Result<Vec<_>>>()?;
            let fields = indices
                .iter()
                .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                .collect();
            let sort_fields: Vec<SortField> = fields;
            let converter = RowConverter::new(sort_fields.clone())
                .map_err(|e| JobError::arrow("key columns cannot be compared", e))?;
            Some(KeyCheck {
                names: key.to_vec(),
                indices,
                sort_fields,
                converter,
                seen: HashSet::new(),
                seed: KeySeed::random(),
                duplicates: 0,
                checked_rows: 0,
                complete: true,
                limit: MAX_TRACKED_KEYS,
            })
        };
        let timestamp = match timestamp_column {
            Some(name) => Some((index_of(name)?, name.to_owned(), 0)),
            None => None,
        };
        Ok(Self {
            column_names: schema.fields().iter().map(|f| f.name().clone()).collect(),
            column_types: schema
                .fields()
                .iter()
                .map(|f| describe(f.data_type()))
                .collect(),
            nulls: vec![0; schema.fields().len()],
            rows: 0,
            key,
            timestamp,
        })
    }

    pub fn observe(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        for (i, column) in batch.columns().iter().enumerate() {
            self.nulls[i] += column.null_count() as u64;
        }
        if let Some((index, _, missing)) = &mut self.timestamp {
            *missing += batch.column(*index).null_count() as u64;
        }
        if let Some(key) = self.key.as_mut().filter(|k| k.complete) {
            let columns: Vec<_> = key
                .indices
                .iter()
                .map(|&i| batch.column(i).clone())
                .collect();
            let rows = key
                .converter
                .convert_columns(&columns)
                .map_err(|e| JobError::arrow("comparing key values", e))?;
            for row in rows.iter() {
                if key.seen.len() >= key.limit {
                    key.complete = false;
                    key.seen = HashSet::new();
                    break;
                }
                let mut h = key.seed.hasher();
                h.write(row.as_ref());
                if !key.seen.insert(h.finish()) {
                    key.duplicates += 1;
                }
                key.checked_rows += 1;
            }
        }
        Ok(())
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Empty checks of the same shape whose key hashes can be merged back with `absorb`
    /// (one per chunk of a partitioned read, so a retried chunk's attempts never double count).
    pub fn sibling(&self) -> Result<Self> {
        let key = match &self.key {
            Some(key) => Some(KeyCheck {
                names: key.names.clone(),
                indices: key.indices.clone(),
                sort_fields: key.sort_fields.clone(),
                converter: RowConverter::new(key.sort_fields.clone())
                    .map_err(|e| JobError::arrow("key columns cannot be compared", e))?,
                seen: HashSet::new(),
                seed: key.seed,
                duplicates: 0,
                checked_rows: 0,
                complete: true,
                limit: key.limit,
            }),
            None => None,
        };
        Ok(Self {
            column_names: self.column_names.clone(),
            column_types: self.column_types.clone(),
            nulls: vec![0; self.nulls.len()],
            rows: 0,
            key,
            timestamp: self
                .timestamp
                .as_ref()
                .map(|(index, name, _)| (*index, name.clone(), 0)),
        })
    }

    /// Adds a sibling's counts; a key seen by both counts as a duplicate.
    pub fn absorb(&mut self, other: BatchChecks) {
        self.rows += other.rows;
        for (mine, theirs) in self.nulls.iter_mut().zip(other.nulls) {
            *mine += theirs;
        }
        if let (Some((_, _, mine)), Some((_, _, theirs))) = (&mut self.timestamp, other.timestamp) {
            *mine += theirs;
        }
        if let (Some(mine), Some(theirs)) = (&mut self.key, other.key) {
            mine.duplicates += theirs.duplicates;
            mine.checked_rows += theirs.checked_rows;
            if !(mine.complete && theirs.complete) {
                mine.complete = false;
                mine.seen = HashSet::new();
                return;
            }
            for hash in theirs.seen {
                if !mine.seen.insert(hash) {
                    mine.duplicates += 1;
                }
            }
            if mine.seen.len() > mine.limit {
                mine.complete = false;
                mine.seen = HashSet::new();
            }
        }
    }

    /// Uses `seed` for key hashes (every chunk of a run must use the run's seed).
    pub fn with_key_seed(mut self, seed: KeySeed) -> Self {
        if let Some(key) = self.key.as_mut() {
            key.seed = seed;
        }
        self
    }

    /// The seed of this run's key hashes.
    pub fn key_seed(&self) -> Option<KeySeed> {
        self.key.as_ref().map(|k| k.seed)
    }

    /// Adds a sibling whose keys cannot be among this one's (a chunk whose key range is its
    /// own): only the counts are added, no hash is compared or kept.
    pub fn absorb_disjoint(&mut self, mut other: BatchChecks) {
        if let Some(key) = other.key.as_mut() {
            key.seen = HashSet::new();
        }
        let complete = other.key.as_ref().is_none_or(|k| k.complete);
        if let Some(mine) = self.key.as_mut() {
            // The hashes this side kept are of no use either: nothing will be compared to them.
            mine.seen = HashSet::new();
            mine.complete &= complete;
        }
        self.absorb(other);
    }

    /// What these checks counted, for a coordinator in another process; `with_hashes` ships the
    /// distinct keys' hashes (when other chunks may hold the same keys).
    pub fn export(&self, with_hashes: bool) -> ChecksState {
        use base64::Engine;
        ChecksState {
            rows: self.rows,
            nulls: self.nulls.clone(),
            timestamp_missing: self.timestamp.as_ref().map(|(_, _, missing)| *missing),
            key: self.key.as_ref().map(|key| KeyState {
                duplicates: key.duplicates,
                checked_rows: key.checked_rows,
                complete: key.complete,
                hashes: (with_hashes && key.complete).then(|| {
                    let bytes: Vec<u8> = key.seen.iter().flat_map(|h| h.to_le_bytes()).collect();
                    base64::engine::general_purpose::STANDARD.encode(bytes)
                }),
            }),
        }
    }

    /// Adds what `export` gave on another worker, as `absorb` (hashes shipped) or
    /// `absorb_disjoint` (no hashes) does with a sibling.
    pub fn absorb_state(&mut self, state: ChecksState) -> Result<()> {
        use base64::Engine;
        let mut other = self.sibling()?;
        if state.nulls.len() != other.nulls.len() {
            return Err(JobError::Internal(format!(
                "a chunk's checks cover {} columns, the run's {}",
                state.nulls.len(),
                other.nulls.len()
            )));
        }
        other.rows = state.rows;
        other.nulls = state.nulls;
        if let (Some((_, _, missing)), Some(theirs)) =
            (&mut other.timestamp, state.timestamp_missing)
        {
            *missing = theirs;
        }
        let mut disjoint = true;
        if let (Some(key), Some(theirs)) = (other.key.as_mut(), state.key) {
            key.duplicates = theirs.duplicates;
            key.checked_rows = theirs.checked_rows;
            key.complete = theirs.complete;
            if let Some(hashes) = theirs.hashes {
                disjoint = false;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(hashes)
                    .map_err(|e| JobError::Internal(format!("a chunk's key hashes: {e}")))?;
                key.seen = bytes
                    .chunks_exact(8)
                    .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect();
            }
        }
        if disjoint {
            self.absorb_disjoint(other);
        } else {
            self.absorb(other);
        }
        Ok(())
    }

    /// Builds the report from these checks and the reader's statistics.
    pub fn into_report(
        self,
        dataset: &str,
        run_id: &str,
        source: &str,
        stats: ReadStats,
        rows_written: u64,
    ) -> ValidationReport {
        let columns = self
            .column_names
            .iter()
            .zip(&self.column_types)
            .zip(&self.nulls)
            .map(|((name, data_type), &nulls)| ColumnReport {
                name: name.clone(),
                data_type: data_type.clone(),
                nulls,
                type_mismatches: stats.type_mismatches.get(name).copied().unwrap_or(0),
            })
            .collect();
        ValidationReport {
            format_version: REPORT_VERSION,
            generated_at: Some(chrono::Utc::now()),
            dataset: dataset.to_owned(),
            run_id: run_id.to_owned(),
            source: source.to_owned(),
            status: RunStatus::Passed,
            error: None,
            header_problems: stats.header_problems,
            rows_read: stats.rows_read,
            rows_valid: self.rows,
            rows_written,
            empty_rows: stats.empty_rows,
            blank_lines: stats.blank_lines,
            source_query: stats.source_query,
            rejected_rows: stats.rejected_rows,
            rejected_by_reason: stats.rejected_by_reason,
            rejected_samples: stats.rejected_samples,
            columns,
            duplicate_keys: self.key.map(|k| DuplicateKeys {
                key: k.names,
                duplicate_rows: k.duplicates,
                checked_rows: k.checked_rows,
                complete: k.complete,
            }),
            timestamp: self
                .timestamp
                .map(|(_, column, missing)| TimestampCoverage {
                    column,
                    rows_without_timestamp: missing,
                    every_row_has_timestamp: missing == 0,
                }),
            schema_changes: Vec::new(),
            warnings: stats.warnings,
        }
    }
}

impl ValidationReport {
    /// A report for a run that failed before its checks finished: what had been read until then
    /// (`progress`) and the error.
    pub fn failed_early(
        dataset: &str,
        run_id: &str,
        source: &str,
        error: String,
        progress: &ReadProgress,
    ) -> Self {
        let (rows_read, rejected_rows) = progress.counts();
        Self {
            format_version: REPORT_VERSION,
            generated_at: Some(chrono::Utc::now()),
            dataset: dataset.to_owned(),
            run_id: run_id.to_owned(),
            source: source.to_owned(),
            status: RunStatus::Failed,
            error: Some(error),
            header_problems: Vec::new(),
            rows_read,
            rows_valid: rows_read.saturating_sub(rejected_rows),
            rows_written: 0,
            empty_rows: 0,
            blank_lines: 0,
            source_query: None,
            rejected_rows,
            rejected_by_reason: BTreeMap::new(),
            rejected_samples: Vec::new(),
            columns: Vec::new(),
            duplicate_keys: None,
            timestamp: None,
            schema_changes: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// Rows a reader has read and rejected so far, shared with the run while it streams: what a
/// failed run's report says it got through, and what live progress shows (with how much of the
/// source that is, where its size is known).
#[derive(Debug, Default)]
pub struct ReadProgress {
    /// Rows in batches handed to the pipeline.
    sent: AtomicU64,
    /// The reader's own totals, as of its last rejected row.
    read: AtomicU64,
    rejected: AtomicU64,
    /// Bytes of a file consumed by its parser, and the file's size (0: unknown).
    bytes_read: AtomicU64,
    total_bytes: AtomicU64,
    /// The source's own estimate of its rows (0: unknown): PostgreSQL's `reltuples`, MongoDB's
    /// `estimatedDocumentCount`.
    expected_rows: AtomicU64,
}

/// Live progress at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProgressSnapshot {
    pub rows_read: u64,
    pub rows_rejected: u64,
    pub bytes_read: u64,
    /// How far through the source, 0 to 1, where its size is known.
    pub fraction: Option<f64>,
}

impl ProgressSnapshot {
    /// Rows read per second over `elapsed`.
    pub fn rows_per_second(&self, elapsed: std::time::Duration) -> f64 {
        let seconds = elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.rows_read as f64 / seconds
        } else {
            0.0
        }
    }

    /// Time left at the pace so far, where the fraction is known and has started to move.
    pub fn eta(&self, elapsed: std::time::Duration) -> Option<std::time::Duration> {
        let fraction = self.fraction.filter(|f| *f > 0.001)?;
        Some(elapsed.mul_f64((1.0 - fraction) / fraction))
    }
}

impl ReadProgress {
    pub fn sent(&self, rows: u64) {
        self.sent.fetch_add(rows, Ordering::Relaxed);
    }

    /// The reader's totals so far (they only grow).
    pub fn reported(&self, rows_read: u64, rows_rejected: u64) {
        self.read.fetch_max(rows_read, Ordering::Relaxed);
        self.rejected.fetch_max(rows_rejected, Ordering::Relaxed);
    }

    /// Bytes of the file consumed by the parser.
    pub fn consumed(&self, bytes: u64) {
        self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The file's size, when the store knows it.
    pub fn expect_bytes(&self, total: u64) {
        self.total_bytes.store(total, Ordering::Relaxed);
    }

    /// The source's estimate of its rows.
    pub fn expect_rows(&self, rows: u64) {
        self.expected_rows.store(rows, Ordering::Relaxed);
    }

    /// Starts over (the source is read again from the start).
    pub fn restart(&self) {
        self.sent.store(0, Ordering::Relaxed);
        self.read.store(0, Ordering::Relaxed);
        self.rejected.store(0, Ordering::Relaxed);
        self.bytes_read.store(0, Ordering::Relaxed);
    }

    /// (rows read, rows rejected) as far as is known.
    pub fn counts(&self) -> (u64, u64) {
        let rejected = self.rejected.load(Ordering::Relaxed);
        let read = self
            .read
            .load(Ordering::Relaxed)
            .max(self.sent.load(Ordering::Relaxed) + rejected);
        (read, rejected)
    }

    /// Where the read stands: bytes of a sized file, else rows against the source's estimate
    /// (capped below 1: an estimate can be low, and only the end of the read says "done").
    pub fn snapshot(&self) -> ProgressSnapshot {
        let (rows_read, rows_rejected) = self.counts();
        let bytes_read = self.bytes_read.load(Ordering::Relaxed);
        let total_bytes = self.total_bytes.load(Ordering::Relaxed);
        let expected_rows = self.expected_rows.load(Ordering::Relaxed);
        let fraction = if total_bytes > 0 {
            Some(bytes_read as f64 / total_bytes as f64)
        } else if expected_rows > 0 {
            Some(rows_read as f64 / expected_rows as f64)
        } else {
            None
        };
        ProgressSnapshot {
            rows_read,
            rows_rejected,
            bytes_read,
            fraction: fraction.map(|f| f.clamp(0.0, 0.99)),
        }
    }
}

pub fn column_list(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};
    use std::sync::Arc;

    #[test]
    fn counts_duplicate_keys_nulls_and_missing_timestamps() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("ts", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 2, 3])),
                Arc::new(StringArray::from(vec![Some("a"), None, Some("c"), None])),
            ],
        )
        .unwrap();
        let mut checks = BatchChecks::new(&schema, &["id".into()], Some("ts")).unwrap();
        checks.observe(&batch).unwrap();
        checks.observe(&batch.slice(0, 1)).unwrap();
        let report = checks.into_report("d", "r", "s", ReadStats::default(), 5);
        assert_eq!(report.rows_valid, 5);
        assert_eq!(report.duplicate_keys.unwrap().duplicate_rows, 2);
        let ts = report.timestamp.unwrap();
        assert_eq!(ts.rows_without_timestamp, 2);
        assert!(!ts.every_row_has_timestamp);
        assert_eq!(report.columns[1].nulls, 2);
    }

    /// Chunks checked by other workers (same seed) and folded in through their JSON state find
    /// a key that two chunks share; chunks of disjoint key ranges add counts only.
    #[test]
    fn checks_from_other_workers_fold_in_and_find_keys_two_chunks_share() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("ts", DataType::Utf8, true),
        ]));
        let batch = |ids: Vec<i64>, ts: Vec<Option<&str>>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(ids)),
                    Arc::new(StringArray::from(ts)),
                ],
            )
            .unwrap()
        };
        let coordinator = BatchChecks::new(&schema, &["id".into()], Some("ts")).unwrap();
        let seed = coordinator.key_seed().unwrap();
        let worker = |b: RecordBatch| {
            // Another process: its own checks, with the run's seed.
            let mut checks = BatchChecks::new(&schema, &["id".into()], Some("ts"))
                .unwrap()
                .with_key_seed(seed);
            checks.observe(&b).unwrap();
            checks
        };
        let left = worker(batch(vec![1, 2, 2], vec![Some("a"), None, Some("b")]));
        let right = worker(batch(vec![3, 2], vec![None, Some("c")]));
        let through_json = |c: &BatchChecks, hashes: bool| -> ChecksState {
            serde_json::from_str(&serde_json::to_string(&c.export(hashes)).unwrap()).unwrap()
        };

        let mut shared = coordinator.sibling().unwrap();
        shared.absorb_state(through_json(&left, true)).unwrap();
        shared.absorb_state(through_json(&right, true)).unwrap();
        let report = shared.into_report("d", "r", "s", ReadStats::default(), 5);
        let keys = report.duplicate_keys.unwrap();
        assert_eq!(
            (keys.duplicate_rows, keys.checked_rows, keys.complete),
            (2, 5, true),
            "2 twice in the left chunk, and once more in the right one"
        );
        assert_eq!(report.timestamp.unwrap().rows_without_timestamp, 2);
        assert_eq!(report.columns[1].nulls, 2);

        let mut disjoint = coordinator.sibling().unwrap();
        disjoint.absorb_state(through_json(&left, false)).unwrap();
        disjoint.absorb_state(through_json(&right, false)).unwrap();
        let keys = disjoint
            .into_report("d", "r", "s", ReadStats::default(), 5)
            .duplicate_keys
            .unwrap();
        assert_eq!(
            (keys.duplicate_rows, keys.checked_rows, keys.complete),
            (1, 5, true),
            "without hashes only each chunk's own duplicates count"
        );

        let other_shape = BatchChecks::new(
            &Schema::new(vec![Field::new("id", DataType::Int64, true)]),
            &[],
            None,
        )
        .unwrap();
        assert!(
            other_shape
                .sibling()
                .unwrap()
                .absorb_state(through_json(&left, true))
                .is_err()
        );
    }

    #[test]
    fn duplicate_check_stops_at_its_memory_bound_and_says_so() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from((0..100).collect::<Vec<i64>>()))],
        )
        .unwrap();
        let mut checks = BatchChecks::new(&schema, &["id".into()], None).unwrap();
        checks.key.as_mut().unwrap().limit = 40;
        checks.observe(&batch).unwrap();
        checks.observe(&batch).unwrap();
        let keys = checks
            .into_report("d", "r", "s", ReadStats::default(), 200)
            .duplicate_keys
            .unwrap();
        assert!(!keys.complete);
        assert_eq!((keys.checked_rows, keys.duplicate_rows), (40, 0));
    }

    #[test]
    fn unknown_key_column_names_the_columns_that_exist() {
        let schema = Schema::new(vec![Field::new("id", DataType::Int64, true)]);
        let err = BatchChecks::new(&schema, &["nope".into()], None)
            .err()
            .unwrap();
        assert!(err.to_string().contains("'nope'") && err.to_string().contains("id"));
    }

    #[test]
    fn reject_list_is_capped_but_counts_are_not() {
        let mut stats = ReadStats::default();
        for row in 0..(MAX_LISTED_REJECTS as u64 + 50) {
            stats.reject(row, "ragged row", format!("row {row}"));
        }
        assert_eq!(stats.rejected_rows, MAX_LISTED_REJECTS as u64 + 50);
        assert_eq!(stats.rejected_samples.len(), MAX_LISTED_REJECTS);
        assert_eq!(
            stats.rejected_by_reason["ragged row"],
            MAX_LISTED_REJECTS as u64 + 50
        );
    }
}
