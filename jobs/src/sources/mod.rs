//! File sources. Each runs on a blocking thread, parses the file as a stream and sends Arrow record
//! batches through a small bounded channel, so memory holds a couple of batches, never the file.

mod csv;
mod excel;
mod json;
mod json_records;
mod table;

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use carga_config::{DatasetSpec, FileFormat, MalformedRowPolicy, S3Settings};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::{JobError, Result};
use crate::storage::SourceObject;
use crate::validation::ReadStats;

/// Batches in flight between the reader thread and the pipeline: enough to overlap parse and write.
const CHANNEL_BATCHES: usize = 2;

/// Column types decided before reading: the spec's explicit types win over previous runs' types,
/// which win over inference (so a column keeps its type from run to run).
#[derive(Debug, Clone, Default)]
pub struct TypeHints {
    pub explicit: BTreeMap<String, DataType>,
    pub previous: Option<SchemaRef>,
}

impl TypeHints {
    pub fn for_column(&self, name: &str) -> Option<DataType> {
        self.explicit.get(name).cloned().or_else(|| {
            self.previous
                .as_ref()
                .and_then(|s| s.field_with_name(name).ok())
                .map(|f| f.data_type().clone())
        })
    }
}

/// What a reader thread needs besides its options.
pub(crate) struct ReadContext {
    pub location: String,
    pub batch_rows: usize,
    pub policy: MalformedRowPolicy,
    pub hints: TypeHints,
    schema_tx: Option<oneshot::Sender<SchemaRef>>,
    batch_tx: mpsc::Sender<Result<RecordBatch>>,
    pub runtime: tokio::runtime::Handle,
}

impl ReadContext {
    /// Announces the schema; must happen before the first batch.
    pub fn announce_schema(&mut self, schema: SchemaRef) {
        if let Some(tx) = self.schema_tx.take() {
            let _ = tx.send(schema);
        }
    }

    /// Sends a batch; `false` means the pipeline has stopped listening (it failed) and reading can end.
    pub fn send(&self, batch: RecordBatch) -> bool {
        self.batch_tx.blocking_send(Ok(batch)).is_ok()
    }

    /// Applies the malformed-row policy to a row that cannot be used: fail the run, or count it.
    pub fn reject(
        &self,
        stats: &mut ReadStats,
        row: u64,
        kind: &str,
        reason: String,
    ) -> Result<()> {
        match self.policy {
            MalformedRowPolicy::Fail => Err(self.bad_input(format!(
                "{reason} (set on_malformed_row: skip to leave such rows out and count them)"
            ))),
            MalformedRowPolicy::Skip => {
                stats.reject(row, kind, reason);
                Ok(())
            }
        }
    }

    pub fn bad_input(&self, message: impl Into<String>) -> JobError {
        JobError::bad_input(self.location.clone(), message)
    }
}

/// A running source: its schema, and the batches as they are parsed.
pub struct SourceReader {
    pub schema: SchemaRef,
    batches: mpsc::Receiver<Result<RecordBatch>>,
    task: JoinHandle<Result<ReadStats>>,
}

impl SourceReader {
    pub async fn next_batch(&mut self) -> Option<Result<RecordBatch>> {
        self.batches.recv().await
    }

    /// Waits for the reader thread and returns what it counted, or the error that stopped it.
    pub async fn finish(self) -> Result<ReadStats> {
        drop(self.batches);
        join(self.task).await
    }
}

async fn join(task: JoinHandle<Result<ReadStats>>) -> Result<ReadStats> {
    match task.await {
        Ok(result) => result,
        Err(e) => Err(JobError::bad_input(
            "source reader",
            format!("reader thread stopped unexpectedly: {e}"),
        )),
    }
}

/// Opens the dataset's source and starts reading it. Returns once the schema is known.
pub async fn open(
    spec: &DatasetSpec,
    s3: &S3Settings,
    batch_rows: usize,
    hints: TypeHints,
) -> Result<SourceReader> {
    let object = SourceObject::resolve(&spec.source.location, s3)?;
    let (schema_tx, schema_rx) = oneshot::channel();
    let (batch_tx, batches) = mpsc::channel(CHANNEL_BATCHES);
    let ctx = ReadContext {
        location: object.display.clone(),
        batch_rows,
        policy: spec.on_malformed_row,
        hints,
        schema_tx: Some(schema_tx),
        batch_tx,
        runtime: tokio::runtime::Handle::current(),
    };
    let source = spec.source.clone();
    let task = tokio::task::spawn_blocking(move || match source.format {
        FileFormat::Csv => csv::read(&object, &source.csv, ctx),
        FileFormat::Json => json::read(&object, &source.json, ctx),
        FileFormat::Excel => excel::read(&object, &source.excel, ctx),
    });
    match schema_rx.await {
        Ok(schema) => Ok(SourceReader {
            schema,
            batches,
            task,
        }),
        // The reader ended before it knew the schema: its result says why.
        Err(_) => match join(task).await {
            Err(e) => Err(e),
            Ok(_) => Err(JobError::bad_input(
                spec.source.location.clone(),
                "source ended without a schema",
            )),
        },
    }
}
