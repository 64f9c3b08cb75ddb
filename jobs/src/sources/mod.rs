//! File sources. Each runs on a blocking thread, parses the file as a stream and sends Arrow record
//! batches through a small bounded channel, so memory holds a couple of batches, never the file.

mod columnar;
mod csv;
mod excel;
mod json;
mod json_records;
pub mod mongodb;
pub mod mssql;
pub mod mysql;
pub mod postgres;
pub mod rest;
mod table;
mod text_input;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use carga_config::{DatasetSpec, MalformedRowPolicy, SourceFormat, SourceSpec};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::access::{AccessPolicy, NetworkPolicy};
use crate::delta::Watermark;
use crate::error::{JobError, Result};
use crate::secrets::ConnectionSecret;
use crate::storage::SourceObject;
use crate::validation::{ReadProgress, ReadStats};

/// Batches in flight between the reader thread and the pipeline: enough to overlap parse and write.
const CHANNEL_BATCHES: usize = 2;

/// Column types decided before reading: the spec's explicit types win over previous runs' types,
/// which win over inference (so a column keeps its type from run to run).
#[derive(Debug, Clone, Default)]
pub struct TypeHints {
    pub explicit: BTreeMap<String, DataType>,
    pub previous: Option<SchemaRef>,
    /// Inferred columns widened after a value the sample did not foresee (the run reads the
    /// file again with these).
    pub widened: BTreeMap<String, DataType>,
}

impl TypeHints {
    pub fn for_column(&self, name: &str) -> Option<DataType> {
        self.explicit
            .get(name)
            .or_else(|| self.widened.get(name))
            .cloned()
            .or_else(|| self.previous_type(name))
    }

    fn previous_type(&self, name: &str) -> Option<DataType> {
        self.previous
            .as_ref()
            .and_then(|s| s.field_with_name(name).ok())
            .map(|f| f.data_type().clone())
    }

    /// Whether the column's type came from inference (or an earlier widening), so a value that
    /// does not fit may widen it; a declared type or one pinned by committed runs may not.
    pub fn may_widen(&self, name: &str) -> bool {
        !self.explicit.contains_key(name) && self.previous_type(name).is_none()
    }
}

/// What a reader thread needs besides its options.
pub(crate) struct ReadContext {
    pub location: String,
    pub batch_rows: usize,
    pub policy: MalformedRowPolicy,
    pub hints: TypeHints,
    /// Which addresses an HTTP source may reach.
    pub network: NetworkPolicy,
    /// What has been read so far, for a failed run's report.
    pub progress: Arc<ReadProgress>,
    /// The dataset's key columns: a message about a row names its key when it has one.
    pub key: Vec<String>,
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

    /// Sends a batch from a blocking reader thread; `false` means the pipeline has stopped
    /// listening (it failed) and reading can end.
    pub fn send(&self, batch: RecordBatch) -> bool {
        self.progress.sent(batch.num_rows() as u64);
        self.batch_tx.blocking_send(Ok(batch)).is_ok()
    }

    /// `send` for readers that run as async tasks (databases).
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
        match self.policy {
            MalformedRowPolicy::Fail => {
                self.progress
                    .reported(stats.rows_read, stats.rejected_rows + 1);
                Err(self.bad_input(format!(
                    "{reason} (set on_malformed_row: skip to leave such rows out and count them)"
                )))
            }
            MalformedRowPolicy::Skip => {
                stats.reject(row, kind, reason);
                self.progress.reported(stats.rows_read, stats.rejected_rows);
                Ok(())
            }
        }
    }

    pub fn bad_input(&self, message: impl Into<String>) -> JobError {
        JobError::bad_input(self.location.clone(), message)
    }
}

/// A running source: its schema, and the batches as they are parsed (or as a SQL transform
/// made them of the parsed ones).
pub struct SourceReader {
    pub schema: SchemaRef,
    batches: Batches,
    task: JoinHandle<Result<ReadStats>>,
    /// What is read, for the message if the reader stops unexpectedly.
    location: String,
}

enum Batches {
    /// Straight from the reader.
    Source(mpsc::Receiver<Result<RecordBatch>>),
    /// The output of a DataFusion plan over them (`query::transform`).
    Plan(datafusion::physical_plan::SendableRecordBatchStream),
    /// Handed over (to a plan) and not replaced yet.
    Taken,
}

impl SourceReader {
    pub async fn next_batch(&mut self) -> Option<Result<RecordBatch>> {
        use futures::StreamExt;
        match &mut self.batches {
            Batches::Source(batches) => batches.recv().await,
            Batches::Plan(stream) => stream
                .next()
                .await
                .map(|batch| batch.map_err(|e| crate::query::query_error("transform", e))),
            Batches::Taken => None,
        }
    }

    /// The source's batches as a stream, for a plan to read from (`set_plan_output` then says
    /// what this reader yields).
    pub(crate) fn take_batches(
        &mut self,
    ) -> futures::stream::BoxStream<'static, Result<RecordBatch>> {
        use futures::StreamExt;
        match std::mem::replace(&mut self.batches, Batches::Taken) {
            Batches::Source(receiver) => futures::stream::unfold(receiver, |mut receiver| async {
                receiver.recv().await.map(|batch| (batch, receiver))
            })
            .boxed(),
            Batches::Plan(stream) => stream
                .map(|batch| batch.map_err(|e| crate::query::query_error("transform", e)))
                .boxed(),
            Batches::Taken => futures::stream::empty().boxed(),
        }
    }

    pub(crate) fn set_plan_output(
        &mut self,
        stream: datafusion::physical_plan::SendableRecordBatchStream,
    ) {
        self.schema = stream.schema();
        self.batches = Batches::Plan(stream);
    }

    /// Waits for the reader thread and returns what it counted, or the error that stopped it.
    pub async fn finish(self) -> Result<ReadStats> {
        drop(self.batches);
        join(self.task, &self.location).await
    }
}

/// File formats parse on a blocking thread.
fn read_file(object: &SourceObject, source: &SourceSpec, ctx: ReadContext) -> Result<ReadStats> {
    match source.format {
        SourceFormat::Csv => csv::read(object, &source.csv, ctx),
        SourceFormat::Json => json::read(object, &source.json, ctx),
        SourceFormat::Excel => excel::read(object, &source.excel, ctx),
        SourceFormat::Parquet => columnar::read(object, columnar::Columnar::Parquet, ctx),
        SourceFormat::Arrow => columnar::read(object, columnar::Columnar::ArrowIpc, ctx),
        SourceFormat::Avro => columnar::read(object, columnar::Columnar::Avro, ctx),
        SourceFormat::Postgres
        | SourceFormat::Mysql
        | SourceFormat::Mssql
        | SourceFormat::Mongodb
        | SourceFormat::Rest => Err(ctx.bad_input("a database or an API is not a file")),
    }
}

/// The reader's result. A reader that panicked is a bug in Carga, not bad input: an internal
/// error naming what it read (the process goes on; the run commits nothing).
async fn join(task: JoinHandle<Result<ReadStats>>, location: &str) -> Result<ReadStats> {
    match task.await {
        Ok(result) => result,
        Err(e) => {
            let why = if e.is_panic() {
                let panic = e.into_panic();
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                format!("the reader of {location} panicked ({message}); nothing was committed")
            } else {
                format!("the reader of {location} was stopped before it finished")
            };
            tracing::error!(%why, "source reader ended abnormally");
            Err(JobError::Internal(why))
        }
    }
}

/// The spec's columns (all when it lists none), in table order; a name the table lacks is an error
/// that lists the table's columns.
pub(crate) fn select_columns<'a, C>(
    wanted: &[String],
    columns: &'a [C],
    name: impl Fn(&C) -> &str,
) -> Result<Vec<&'a C>, String> {
    if let Some(missing) = wanted
        .iter()
        .find(|w| !columns.iter().any(|c| name(c) == *w))
    {
        let names: Vec<&str> = columns.iter().map(&name).collect();
        return Err(format!(
            "column '{missing}' is not in the table (columns: {})",
            names.join(", ")
        ));
    }
    Ok(columns
        .iter()
        .filter(|c| wanted.is_empty() || wanted.iter().any(|w| w == name(c)))
        .collect())
}

/// What a source needs besides the spec: credentials for databases, and the watermark a delta
/// run starts from (databases filter on the server; files are filtered by the pipeline).
#[derive(Default, Clone)]
pub struct SourceAccess {
    pub secret: Option<ConnectionSecret>,
    pub floor: Option<Watermark>,
    /// Seconds to re-read behind the watermark (see `delta::effective_lookback`).
    pub lookback: Option<u64>,
    /// One key range of a partitioned read (PostgreSQL).
    pub chunk: Option<postgres::partition::Chunk>,
    /// Where the reader reports what it has read so far.
    pub progress: Arc<ReadProgress>,
    /// A condition in the database's SQL the source adds to its query (a transform's filters).
    pub pushed_filter: Option<String>,
    /// Announce the schema and stop (a database source describes itself without reading).
    pub schema_only: bool,
}

/// Opens the dataset's source and starts reading it. Returns once the schema is known.
pub async fn open(
    spec: &DatasetSpec,
    policy: &AccessPolicy,
    batch_rows: usize,
    hints: TypeHints,
    access: SourceAccess,
) -> Result<SourceReader> {
    let (schema_tx, schema_rx) = oneshot::channel();
    let (batch_tx, batches) = mpsc::channel(CHANNEL_BATCHES);
    let mut ctx = ReadContext {
        location: String::new(),
        batch_rows,
        policy: spec.on_malformed_row,
        hints,
        network: policy.network,
        progress: access.progress.clone(),
        key: spec.key.clone(),
        schema_tx: Some(schema_tx),
        batch_tx,
        runtime: tokio::runtime::Handle::current(),
    };
    let location = spec.source.describe();
    let task = if spec.source.format.is_database() {
        let connection = spec.connection_id.clone().unwrap_or_default();
        ctx.location = format!(
            "table {} (connection '{connection}')",
            spec.source.table.as_deref().unwrap_or_default()
        );
        if let Some(chunk) = &access.chunk {
            ctx.location = format!("{}, chunk {}", ctx.location, chunk.index);
        }
        let mut access = access;
        let secret = access.secret.take().ok_or_else(|| {
            JobError::Secret(format!("no credentials for connection '{connection}'"))
        })?;
        let spec = spec.clone();
        match spec.source.format {
            SourceFormat::Postgres => tokio::spawn(postgres::read(spec, secret, access, ctx)),
            SourceFormat::Mysql => tokio::spawn(mysql::read(spec, secret, access, ctx)),
            SourceFormat::Mssql => tokio::spawn(mssql::read(
                spec,
                secret,
                access.floor,
                access.lookback,
                ctx,
            )),
            SourceFormat::Mongodb => tokio::spawn(mongodb::read(
                spec,
                secret,
                access.floor,
                access.lookback,
                ctx,
            )),
            SourceFormat::Csv
            | SourceFormat::Json
            | SourceFormat::Excel
            | SourceFormat::Parquet
            | SourceFormat::Arrow
            | SourceFormat::Avro
            | SourceFormat::Rest => {
                unreachable!("is_database() lists the database formats")
            }
        }
    } else if spec.source.format == SourceFormat::Rest {
        ctx.location = spec.source.location.clone();
        tokio::spawn(rest::read(
            spec.clone(),
            access.secret,
            access.floor,
            access.lookback,
            ctx,
        ))
    } else {
        let object = SourceObject::resolve(&spec.source.location, policy)?;
        ctx.location = object.display.clone();
        let source = spec.source.clone();
        tokio::task::spawn_blocking(move || read_file(&object, &source, ctx))
    };
    match schema_rx.await {
        Ok(schema) => Ok(SourceReader {
            schema,
            batches: Batches::Source(batches),
            task,
            location,
        }),
        // The reader ended before it knew the schema: its result says why.
        Err(_) => match join(task, &location).await {
            Err(e) => Err(e),
            Ok(_) => Err(JobError::bad_input(
                spec.source.location.clone(),
                "source ended without a schema",
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reader_that_panics_is_an_internal_error_not_bad_input() {
        let task = tokio::task::spawn_blocking(|| -> Result<ReadStats> {
            panic!("index out of bounds");
        });
        let err = join(task, "/data/ventas.csv").await.unwrap_err();
        assert!(matches!(err, JobError::Internal(_)), "{err:?}");
        assert!(!err.is_validation());
        let message = err.to_string();
        assert!(
            message.contains("/data/ventas.csv") && message.contains("index out of bounds"),
            "{message}"
        );
    }
}
