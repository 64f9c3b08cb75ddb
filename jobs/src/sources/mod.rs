//! Sources: where a run's rows come from. Each format is a [`Source`] in its own module, built
//! from its config struct (`carga_config::SourceSpec`'s variant) by the [`SourceRegistry`],
//! which also holds sources an embedding program registers. A source announces its schema and
//! streams Arrow record batches into a [`SourceOutput`] (a small bounded channel, so memory
//! holds a couple of batches, never the file or the table); what it can do beyond that (filters
//! pushed into its query, the delta cursor evaluated on the server, partitions read in
//! parallel) it says in [`Capabilities`] and [`Source::partitions`].

mod cell_columns;
mod columnar;
mod csv;
mod excel;
mod in_order;
mod json;
pub mod listing;
pub mod mongodb;
pub mod mssql;
pub mod mysql;
mod output;
pub mod postgres;
#[cfg(test)]
mod read_harness;
mod registry;
pub mod rest;
pub(crate) mod scan;
mod spares;
mod table;
mod text_input;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use carga_config::DatasetSpec;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::access::AccessPolicy;
use crate::delta::Watermark;
use crate::error::{JobError, Result};
use crate::query::SqlDialect;
use crate::secrets::ConnectionSecret;
use crate::storage::SourceObject;
use crate::validation::{ReadProgress, ReadStats};

pub use listing::{ColumnInfo, TableInfo};
pub use output::SourceOutput;
pub use postgres::partition::Chunk;
pub use registry::{SourceFactory, SourceRegistry, TableDiscovery};

/// A source of rows for one dataset (one table of a multi-table spec).
#[async_trait::async_trait]
pub trait Source: Send + Sync + 'static {
    /// How messages and reports name it: a file's location, `table public.orders (connection 'pg')`.
    fn describe(&self) -> String;

    /// What the source can do beyond streaming every row.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// The key ranges a large table is read in, each by its own reader (`access.chunk`) and
    /// retried alone; `None` reads it in one pass. Called once per run, before any read.
    async fn partitions(&self, _access: &SourceAccess) -> Result<Option<Partitions>> {
        Ok(None)
    }

    /// Reads the source: announces the schema on `output`, then sends its batches, applying
    /// the malformed-row policy through `output.reject`. With `access.schema_only` it may stop
    /// after the schema (the database sources do); any source stops at its next send once the
    /// reader is dropped. A delta run's `access.floor` may be used to read less (the run's
    /// cursor still filters every row, so reading more is never wrong).
    async fn read(self: Arc<Self>, output: SourceOutput, access: SourceAccess)
    -> Result<ReadStats>;
}

/// What a source can do beyond streaming every row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Conditions in this SQL dialect can be added to the source's query: a transform's plain
    /// filters run in the database (`SourceAccess::pushed_filter`).
    pub filter_dialect: Option<SqlDialect>,
    /// The source reads only rows at or after `SourceAccess::floor` (minus the lookback).
    pub cursor_pushdown: bool,
}

/// A partitioned read's plan: the chunks, how many run at once, how often each is tried, and
/// what must stay alive while they run (PostgreSQL's exported snapshot).
pub struct Partitions {
    pub chunks: Vec<Chunk>,
    /// Chunks read at the same time.
    pub parallel: usize,
    /// Attempts per chunk before the run gives up.
    pub attempts: u32,
    /// The chunks may be read by other workers (as chunk jobs on the queue) while the run that
    /// planned them coordinates; without a queue they are read in this process.
    pub across_workers: bool,
    pub hold: Box<dyn PartitionHold>,
}

impl Partitions {
    /// The plan of `chunks` as the spec's `partitions` asks: all chunks at once unless
    /// `parallel` says fewer.
    pub(crate) fn planned(
        spec: &carga_config::PartitionSpec,
        chunks: Vec<Chunk>,
        hold: Box<dyn PartitionHold>,
    ) -> Self {
        Self {
            parallel: spec.parallel.map_or(chunks.len(), |p| p as usize).max(1),
            attempts: spec.attempts,
            across_workers: spec.across_workers,
            chunks,
            hold,
        }
    }
}

/// Kept alive while a partitioned read runs, released after the last chunk.
#[async_trait::async_trait]
pub trait PartitionHold: Send {
    async fn release(self: Box<Self>);
}

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

/// A running source: its schema, and the batches as they are parsed (or the plan a SQL
/// transform made of them).
pub struct SourceReader {
    pub schema: SchemaRef,
    batches: Batches,
    end: ReaderEnd,
}

/// The reader's task, which says how the read ended once its batches are consumed.
pub(crate) struct ReaderEnd {
    task: JoinHandle<Result<ReadStats>>,
    /// What is read, for the message if the reader stops unexpectedly.
    location: String,
}

impl ReaderEnd {
    /// Waits for the reader and returns what it counted, or the error that stopped it.
    pub(crate) async fn finish(self) -> Result<ReadStats> {
        join(self.task, &self.location).await
    }
}

enum Batches {
    /// Straight from the reader.
    Source(mpsc::Receiver<Result<RecordBatch>>),
    /// A DataFusion plan over them (`query::transform`), not started yet.
    Plan {
        plan: Arc<dyn ExecutionPlan>,
        task: Arc<TaskContext>,
    },
    /// The plan, started by `next_batch`.
    Running(datafusion::physical_plan::SendableRecordBatchStream),
    /// Handed over (to a plan) and not replaced yet.
    Taken,
}

impl SourceReader {
    /// The next batch, for a caller that looks at a few (a preview); a run executes the reader
    /// as part of its plan (`into_plan`).
    pub async fn next_batch(&mut self) -> Option<Result<RecordBatch>> {
        use futures::StreamExt;
        if let Batches::Plan { plan, task } = &self.batches {
            match datafusion::physical_plan::execute_stream(plan.clone(), task.clone()) {
                Ok(stream) => self.batches = Batches::Running(stream),
                Err(e) => {
                    self.batches = Batches::Taken;
                    return Some(Err(crate::query::plan_error(e)));
                }
            }
        }
        match &mut self.batches {
            Batches::Source(batches) => batches.recv().await,
            Batches::Running(stream) => stream
                .next()
                .await
                .map(|batch| batch.map_err(crate::query::plan_error)),
            Batches::Plan { .. } | Batches::Taken => None,
        }
    }

    /// The source's batches as a stream, for a plan to read from (`set_plan` then says what
    /// this reader yields).
    pub(crate) fn take_batches(
        &mut self,
    ) -> futures::stream::BoxStream<'static, Result<RecordBatch>> {
        use futures::StreamExt;
        match std::mem::replace(&mut self.batches, Batches::Taken) {
            Batches::Source(receiver) => receiver_stream(receiver),
            Batches::Plan { plan, task } => {
                match datafusion::physical_plan::execute_stream(plan, task) {
                    Ok(stream) => stream.map(|b| b.map_err(crate::query::plan_error)).boxed(),
                    Err(e) => {
                        futures::stream::once(async move { Err(crate::query::plan_error(e)) })
                            .boxed()
                    }
                }
            }
            Batches::Running(stream) => stream.map(|b| b.map_err(crate::query::plan_error)).boxed(),
            Batches::Taken => futures::stream::empty().boxed(),
        }
    }

    /// From now on the reader yields what `plan` makes of its batches.
    pub(crate) fn set_plan(&mut self, plan: Arc<dyn ExecutionPlan>, task: Arc<TaskContext>) {
        self.schema = plan.schema();
        self.batches = Batches::Plan { plan, task };
    }

    /// The reader as the leaf of a run plan (one partition): the transform's plan, or a scan of
    /// the source's batches; and its end, to learn how the read finished.
    pub(crate) fn into_plan(
        mut self,
    ) -> Result<(Arc<dyn ExecutionPlan>, Arc<TaskContext>, ReaderEnd)> {
        use datafusion::physical_plan::ExecutionPlanProperties;
        let (plan, task) = match std::mem::replace(&mut self.batches, Batches::Taken) {
            Batches::Plan { plan, task } if plan.output_partitioning().partition_count() == 1 => {
                (plan, task)
            }
            Batches::Plan { plan, task } => {
                let plan: Arc<dyn ExecutionPlan> = Arc::new(
                    datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec::new(
                        plan,
                    ),
                );
                (plan, task)
            }
            other => {
                self.batches = other;
                let batches = self.take_batches();
                (
                    scan::scan(self.schema.clone(), batches)?,
                    Arc::new(TaskContext::default()),
                )
            }
        };
        Ok((plan, task, self.end))
    }

    /// Waits for the reader thread and returns what it counted, or the error that stopped it.
    pub async fn finish(self) -> Result<ReadStats> {
        drop(self.batches);
        self.end.finish().await
    }
}

fn receiver_stream(
    receiver: mpsc::Receiver<Result<RecordBatch>>,
) -> futures::stream::BoxStream<'static, Result<RecordBatch>> {
    use futures::StreamExt;
    futures::stream::unfold(receiver, |mut receiver| async {
        receiver.recv().await.map(|batch| (batch, receiver))
    })
    .boxed()
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

impl SourceAccess {
    /// The connection's credentials, which a database source cannot read without.
    pub fn require_secret(&self, connection: Option<&str>) -> Result<ConnectionSecret> {
        self.secret.clone().ok_or_else(|| {
            JobError::Secret(format!(
                "no credentials for connection '{}'",
                connection.unwrap_or_default()
            ))
        })
    }
}

/// How a database source is named: its table and connection.
pub(crate) fn describe_table(spec: &DatasetSpec) -> String {
    format!(
        "table {} (connection '{}')",
        spec.source.table(),
        spec.connection_id.as_deref().unwrap_or_default()
    )
}

/// How a read is cut: rows per batch, and threads that may parse a file at once.
#[derive(Debug, Clone, Copy)]
pub struct ReadShape {
    pub batch_rows: usize,
    pub parse_threads: usize,
}

impl ReadShape {
    /// A run's shape, from its settings.
    pub fn of(settings: &carga_config::Settings) -> Self {
        Self {
            batch_rows: settings.batch_rows,
            parse_threads: settings.parse_threads(),
        }
    }

    /// A read of the first `rows` rows only (a preview, a schema probe): one thread.
    pub fn first_rows(rows: usize) -> Self {
        Self {
            batch_rows: rows.max(1),
            parse_threads: 1,
        }
    }
}

/// `open`, then the spec's transform over the reader when it has one: what a run, or a chunk
/// of it, reads.
pub(crate) async fn open_transformed(
    source: &Arc<dyn Source>,
    spec: &DatasetSpec,
    shape: ReadShape,
    hints: TypeHints,
    access: SourceAccess,
    query_memory_mib: usize,
) -> Result<SourceReader> {
    let reader = open(source, spec, shape, hints, access).await?;
    crate::query::transform::apply_if_any(spec, reader, query_memory_mib).await
}

/// Starts reading `source` for `spec`'s run and returns once the schema is known.
pub async fn open(
    source: &Arc<dyn Source>,
    spec: &DatasetSpec,
    shape: ReadShape,
    hints: TypeHints,
    access: SourceAccess,
) -> Result<SourceReader> {
    let (schema_tx, schema_rx) = oneshot::channel();
    let (batch_tx, batches) = mpsc::channel(CHANNEL_BATCHES);
    let mut location = source.describe();
    if let Some(chunk) = &access.chunk {
        location = format!("{location}, chunk {}", chunk.index);
    }
    let output = SourceOutput {
        location: location.clone(),
        batch_rows: shape.batch_rows,
        parse_threads: shape.parse_threads.max(1),
        policy: spec.on_malformed_row,
        hints,
        progress: access.progress.clone(),
        key: spec.key.clone(),
        schema_tx: Some(schema_tx),
        batch_tx,
        runtime: tokio::runtime::Handle::current(),
    };
    let task = tokio::spawn(source.clone().read(output, access));
    match schema_rx.await {
        Ok(schema) => Ok(SourceReader {
            schema,
            batches: Batches::Source(batches),
            end: ReaderEnd { task, location },
        }),
        // The reader ended before it knew the schema: its result says why.
        Err(_) => match join(task, &location).await {
            Err(e) => Err(e),
            Ok(_) => Err(JobError::bad_input(
                location,
                "source ended without a schema",
            )),
        },
    }
}

/// What tells file sources apart: where the file is and how it parses.
pub(crate) trait FileFormat: Send + Sync + 'static {
    fn location(&self) -> &str;
    /// Parses the resolved file (on a blocking thread).
    fn parse(&self, object: &SourceObject, output: SourceOutput) -> Result<ReadStats>;
}

/// A file source of any format: its location resolved under the access policy (data roots,
/// network policy), then parsed on a blocking thread; a parser that panics is an internal error.
pub(crate) struct FileSource<F> {
    format: Arc<F>,
    policy: AccessPolicy,
}

impl<F: FileFormat> FileSource<F> {
    pub(crate) fn new(format: F, policy: AccessPolicy) -> Self {
        Self {
            format: Arc::new(format),
            policy,
        }
    }
}

#[async_trait::async_trait]
impl<F: FileFormat> Source for FileSource<F> {
    fn describe(&self) -> String {
        self.format.location().to_owned()
    }

    async fn read(
        self: Arc<Self>,
        mut output: SourceOutput,
        _access: SourceAccess,
    ) -> Result<ReadStats> {
        let object = SourceObject::resolve(self.format.location(), &self.policy)?;
        output.location.clone_from(&object.display);
        let display = object.display.clone();
        let format = self.format.clone();
        join(
            tokio::task::spawn_blocking(move || format.parse(&object, output)),
            &display,
        )
        .await
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
