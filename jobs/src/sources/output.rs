//! What a source writes into: the schema once, then record batches through a small bounded
//! channel (so a slow destination slows the reader instead of filling memory), and rows it
//! could not use, through the dataset's malformed-row policy.

use std::io::{BufRead, Read};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use carga_config::MalformedRowPolicy;
use tokio::sync::{mpsc, oneshot};

use super::TypeHints;
use crate::error::{JobError, Result};
use crate::storage::SourceObject;
use crate::validation::{ReadProgress, ReadStats};

/// The reading side of a run, handed to [`super::Source::read`].
pub struct SourceOutput {
    /// How messages name what is read (a file's display path, a table and its connection).
    pub(crate) location: String,
    pub(crate) batch_rows: usize,
    /// Threads a file parser may use (CSV parses chunks of the file in parallel).
    pub(crate) parse_threads: usize,
    pub(crate) policy: MalformedRowPolicy,
    pub(crate) hints: TypeHints,
    /// What has been read so far, for a failed run's report.
    pub(crate) progress: Arc<ReadProgress>,
    /// The dataset's key columns: a message about a row names its key when it has one.
    pub(crate) key: Vec<String>,
    pub(crate) schema_tx: Option<oneshot::Sender<SchemaRef>>,
    pub(crate) batch_tx: mpsc::Sender<Result<RecordBatch>>,
    pub(crate) runtime: tokio::runtime::Handle,
}

/// A file's bytes as its parser consumes them, counted into the run's progress.
struct Counted {
    inner: Box<dyn BufRead + Send>,
    progress: Arc<ReadProgress>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.consumed(n as u64);
        Ok(n)
    }
}

impl BufRead for Counted {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        self.progress.consumed(amount as u64);
        self.inner.consume(amount);
    }
}

impl SourceOutput {
    /// A file source's bytes for a streaming parser (on the reader's blocking thread), counted
    /// into the run's progress against the file's size where the store knows it.
    pub(crate) fn open_counted(&self, object: &SourceObject) -> Result<Box<dyn BufRead + Send>> {
        let (inner, size) = object.open_sized_blocking(&self.runtime)?;
        if let Some(size) = size {
            self.progress.expect_bytes(size);
        }
        Ok(Box::new(Counted {
            inner,
            progress: self.progress.clone(),
        }))
    }

    /// Where the source tells how many rows it holds (a catalog's estimate): live progress shows
    /// a percentage and an end time against it.
    pub fn expect_rows(&self, rows: u64) {
        self.progress.expect_rows(rows);
    }

    /// Rows per batch the pipeline expects (a source may send fewer).
    pub fn batch_rows(&self) -> usize {
        self.batch_rows
    }

    /// Column types decided before reading (explicit, previous runs', widened).
    pub fn hints(&self) -> &TypeHints {
        &self.hints
    }

    /// How messages name what is read.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Announces the schema; must happen before the first batch.
    pub fn announce_schema(&mut self, schema: SchemaRef) {
        if let Some(tx) = self.schema_tx.take() {
            let _ = tx.send(schema);
        }
    }

    /// Sends a batch from a blocking reader thread; `false` means the pipeline has stopped
    /// listening (it failed) and reading can end.
    pub fn send(&self, batch: RecordBatch) -> bool {
        self.progress.sent(batch.num_rows() as u64);
        self.batch_tx.blocking_send(Ok(batch)).is_ok()
    }

    /// `send` for readers that run as async tasks (databases, APIs).
    pub async fn send_async(&self, batch: RecordBatch) -> bool {
        self.progress.sent(batch.num_rows() as u64);
        self.batch_tx.send(Ok(batch)).await.is_ok()
    }

    /// Applies the malformed-row policy to a row that cannot be used: fail the run, or count it.
    pub fn reject(
        &self,
        stats: &mut ReadStats,
        row: u64,
        kind: &str,
        reason: String,
    ) -> Result<()> {
        apply_policy(
            self.policy,
            &self.location,
            Some(&self.progress),
            (stats, row, kind, reason),
        )
    }

    /// What rows are checked and named by, for parsers that work on other threads than the one
    /// that sends (chunks of a file parsed in parallel).
    pub(crate) fn rules(&self) -> RowRules {
        RowRules {
            location: self.location.clone(),
            batch_rows: self.batch_rows,
            policy: self.policy,
            hints: self.hints.clone(),
            key: self.key.clone(),
            progress: Some(self.progress.clone()),
        }
    }

    /// Bad input named by what is read.
    pub fn bad_input(&self, message: impl Into<String>) -> JobError {
        JobError::bad_input(self.location.clone(), message)
    }
}

/// A run's rules for rows, without its channels: cloned into each thread that parses a part of
/// the source. Such a thread's counts are partial, so it leaves `progress` out; whoever adds the
/// parts up reports them.
#[derive(Clone)]
pub(crate) struct RowRules {
    pub location: String,
    pub batch_rows: usize,
    pub policy: MalformedRowPolicy,
    pub hints: TypeHints,
    pub key: Vec<String>,
    pub progress: Option<Arc<ReadProgress>>,
}

impl RowRules {
    /// [`SourceOutput::reject`] for this part of the read.
    pub fn reject(
        &self,
        stats: &mut ReadStats,
        row: u64,
        kind: &str,
        reason: String,
    ) -> Result<()> {
        apply_policy(
            self.policy,
            &self.location,
            self.progress.as_deref(),
            (stats, row, kind, reason),
        )
    }

    /// The same rules for a thread whose counts are partial.
    pub fn without_progress(&self) -> RowRules {
        RowRules {
            progress: None,
            ..self.clone()
        }
    }
}

fn apply_policy(
    policy: MalformedRowPolicy,
    location: &str,
    progress: Option<&ReadProgress>,
    (stats, row, kind, reason): (&mut ReadStats, u64, &str, String),
) -> Result<()> {
    match policy {
        MalformedRowPolicy::Fail => {
            if let Some(progress) = progress {
                progress.reported(stats.rows_read, stats.rejected_rows + 1);
            }
            Err(JobError::bad_input(
                location.to_owned(),
                format!(
                    "{reason} (set on_malformed_row: skip to leave such rows out and count them)"
                ),
            ))
        }
        MalformedRowPolicy::Skip => {
            stats.reject(row, kind, reason);
            if let Some(progress) = progress {
                progress.reported(stats.rows_read, stats.rejected_rows);
            }
            Ok(())
        }
    }
}
