//! Partitioned extraction. The source cuts the table into key ranges (`Source::partitions`;
//! PostgreSQL inside one exported snapshot, see `sources::postgres::partition`); each chunk streams its range into its own parts
//! (`part-cNNNN-MMMMM.parquet`) with its own checks and cursor, so a failed chunk is retried
//! alone: its parts are removed and its counts dropped before the next attempt. The run goes on
//! to the report and the commit only when every chunk has written all its rows; if one gives up,
//! the others stop and every part of the run is removed.

pub mod order;
pub(crate) mod spread;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use carga_config::{DatasetSpec, Settings};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::delta::Watermark;
use crate::destination::{Destination, RunTarget};
use crate::error::{JobError, Result};
use crate::pipeline::{AfterBatch, Extracted, Streamed, new_cursor, stream};
use crate::retry::{Backoff, Retryable};
use crate::schema_drift::SchemaPlan;
use crate::sink::PartFile;
use crate::sources::{self, Chunk, Partitions, Source, SourceAccess, SourceReader, TypeHints};
use crate::validation::{BatchChecks, ReadStats};

/// Failures to inject into chunks of partitioned reads (chunk index -> attempts that fail after
/// writing their first batch), for tests and recovery drills.
pub(crate) type ChunkFaults = Arc<std::sync::Mutex<BTreeMap<usize, u32>>>;

/// What a partitioned read takes from the engine.
pub(crate) struct ChunkRun<'a> {
    pub settings: &'a Settings,
    pub destination: &'a Arc<dyn Destination>,
    pub faults: &'a ChunkFaults,
}

/// Pause before a chunk's second attempt; doubles for each further one, up to the second const.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(250);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

#[allow(clippy::too_many_arguments)]
pub(crate) async fn extract(
    engine: ChunkRun<'_>,
    spec: &DatasetSpec,
    source: &Arc<dyn Source>,
    partitions: Partitions,
    hints: TypeHints,
    access: SourceAccess,
    previous_schema: Option<&Schema>,
    target: &RunTarget,
    delivered: &[RecordBatch],
) -> Result<Extracted> {
    let Partitions {
        chunks,
        parallel,
        attempts,
        hold,
        ..
    } = partitions;
    // What the chunks need (PostgreSQL's exported snapshot) lives until the last one ends.
    let result = extract_chunks(
        engine,
        spec,
        source,
        hints,
        access,
        previous_schema,
        target,
        (&chunks, parallel, attempts),
        delivered,
    )
    .await;
    hold.release().await;
    result
}

/// What every chunk task shares.
struct Shared {
    spec: DatasetSpec,
    source: Arc<dyn Source>,
    hints: TypeHints,
    floor: Option<Watermark>,
    plan: Arc<SchemaPlan>,
    checks_template: BatchChecks,
    destination: Arc<dyn Destination>,
    settings: Settings,
    /// The previous run's lookback window, which every chunk's cursor must recognise.
    delivered: Vec<RecordBatch>,
    /// What every chunk's reader is given besides its range.
    access: SourceAccess,
    target: RunTarget,
    attempts: u32,
    faults: ChunkFaults,
    /// Set when a chunk gives up: the others stop at their next batch.
    cancelled: AtomicBool,
}

struct ChunkOutput {
    index: usize,
    checks: BatchChecks,
    cursor: Option<crate::delta::DeltaFilter>,
    rows: u64,
    stats: ReadStats,
    files: Vec<PartFile>,
}

/// Runs the plan's chunks (`Partitions` without its hold): at most `parallel` at once, each
/// tried up to `attempts` times.
#[allow(clippy::too_many_arguments)]
async fn extract_chunks(
    engine: ChunkRun<'_>,
    spec: &DatasetSpec,
    source: &Arc<dyn Source>,
    hints: TypeHints,
    access: SourceAccess,
    previous_schema: Option<&Schema>,
    target: &RunTarget,
    (chunks, parallel, attempts): (&[Chunk], usize, u32),
    delivered: &[RecordBatch],
) -> Result<Extracted> {
    if chunks.is_empty() {
        return Err(JobError::Internal(format!(
            "{} planned no partitions",
            source.describe()
        )));
    }
    let settings = engine.settings.clone();
    // The first chunk's reader tells the schema all chunks share (same columns, same snapshot).
    let first_reader = sources::open_transformed(
        source,
        spec,
        sources::ReadShape::of(&settings),
        hints.clone(),
        chunk_access(&access, &chunks[0]),
        settings.query_memory_mib,
    )
    .await?;
    let plan = Arc::new(SchemaPlan::new(
        &spec.id,
        &first_reader.schema,
        previous_schema,
        spec.new_columns,
        spec.missing_columns,
    )?);
    let shared = Arc::new(Shared {
        spec: spec.clone(),
        source: source.clone(),
        hints,
        floor: access.floor.clone(),
        checks_template: BatchChecks::new(
            &plan.output,
            &spec.key,
            spec.timestamp_column.as_deref(),
        )?,
        plan: plan.clone(),
        destination: engine.destination.clone(),
        settings,
        delivered: delivered.to_vec(),
        access,
        target: target.clone(),
        attempts,
        faults: engine.faults.clone(),
        cancelled: AtomicBool::new(false),
    });
    let permits = Arc::new(Semaphore::new(parallel));
    let mut tasks = JoinSet::new();
    let mut first_reader = Some(first_reader);
    for chunk in chunks.iter().cloned() {
        let reader = if chunk.index == 0 {
            first_reader.take()
        } else {
            None
        };
        tasks.spawn(run_chunk(shared.clone(), permits.clone(), chunk, reader));
    }

    let mut outputs = Vec::new();
    let mut failure: Option<JobError> = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.unwrap_or_else(|e| {
            Err(JobError::Internal(format!(
                "{}: a chunk task stopped unexpectedly: {e}",
                shared.source.describe()
            )))
        });
        match result {
            Ok(output) => outputs.push(output),
            Err(e) => {
                shared.cancelled.store(true, Ordering::SeqCst);
                // The first real failure explains the run; siblings only report being stopped.
                let replace = match &failure {
                    None => true,
                    Some(current) => is_cancellation(current) && !is_cancellation(&e),
                };
                if replace {
                    failure = Some(e);
                }
            }
        }
    }
    if let Some(error) = failure {
        for output in &outputs {
            shared.destination.discard(&output.files).await;
        }
        return Err(error);
    }

    outputs.sort_by_key(|o| o.index);
    let mut checks = shared.checks_template.sibling()?;
    let mut cursor = new_cursor(spec, &plan, shared.floor.as_ref(), delivered)?;
    let mut stats = ReadStats::default();
    let mut rows = 0;
    let mut files = Vec::new();
    // Ranges of a column of the key cannot share a key: their hashes need not be compared.
    let disjoint = spec.key.contains(&chunks[0].column);
    for output in outputs {
        if disjoint {
            checks.absorb_disjoint(output.checks);
        } else {
            checks.absorb(output.checks);
        }
        if let (Some(cursor), Some(theirs)) = (cursor.as_mut(), output.cursor) {
            cursor.absorb(theirs)?;
        }
        stats.absorb(output.stats);
        rows += output.rows;
        files.extend(output.files);
    }
    Extracted {
        plan,
        checks,
        cursor,
        rows,
        stats,
        files,
    }
    .checked(spec, shared.destination.as_ref(), shared.floor.is_some())
    .await
}

/// How a chunk's reader reaches the table: the run's access (credentials, watermark, pushed
/// filters, progress), and its range.
fn chunk_access(template: &SourceAccess, chunk: &Chunk) -> SourceAccess {
    SourceAccess {
        chunk: Some(chunk.clone()),
        ..template.clone()
    }
}

/// Runs one chunk to completion, retrying transient failures with a growing pause.
async fn run_chunk(
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    chunk: Chunk,
    reader: Option<SourceReader>,
) -> Result<ChunkOutput> {
    let _permit = permits
        .acquire_owned()
        .await
        .map_err(|_| cancelled(chunk.index))?;
    // The reader opened for planning serves the first attempt; a retry opens its own.
    let reader = std::sync::Mutex::new(reader);
    let backoff = Backoff::new(FIRST_RETRY_DELAY, MAX_RETRY_DELAY).attempts(shared.attempts);
    let (shared, chunk, reader) = (&shared, &chunk, &reader);
    let attempt = || async move {
        if shared.cancelled.load(Ordering::SeqCst) {
            return Err(cancelled(chunk.index));
        }
        let reader = reader.lock().unwrap_or_else(|e| e.into_inner()).take();
        attempt_chunk(shared, chunk, reader).await
    };
    attempt
        .retry(backoff.builder())
        .when(is_transient)
        .notify(|e, pause| {
            tracing::warn!(chunk = chunk.index, error = %e, pause_ms = pause.as_millis() as u64, "chunk failed; its parts were removed, retrying");
        })
        .await
}

async fn attempt_chunk(
    shared: &Arc<Shared>,
    chunk: &Chunk,
    reader: Option<SourceReader>,
) -> Result<ChunkOutput> {
    let reader = match reader {
        Some(reader) => reader,
        None => {
            let access = chunk_access(&shared.access, chunk);
            sources::open_transformed(
                &shared.source,
                &shared.spec,
                sources::ReadShape::of(&shared.settings),
                shared.hints.clone(),
                access,
                shared.settings.query_memory_mib,
            )
            .await?
        }
    };
    let checks = shared.checks_template.sibling()?;
    let cursor = new_cursor(
        &shared.spec,
        &shared.plan,
        shared.floor.as_ref(),
        &shared.delivered,
    )?;
    let sink = shared.destination.parts(
        &shared.target,
        shared.plan.output.clone(),
        &format!("part-c{:04}-", chunk.index),
        false,
    )?;
    let watcher = shared.clone();
    let index = chunk.index;
    let after_batch: AfterBatch = Box::new(move || {
        if watcher.cancelled.load(Ordering::SeqCst) {
            return Err(cancelled(index));
        }
        let mut faults = watcher.faults.lock().expect("fault table");
        if let Some(left) = faults.get_mut(&index).filter(|n| **n > 0) {
            *left -= 1;
            return Err(JobError::Database {
                context: format!("chunk {index}"),
                message: "injected fault".into(),
            });
        }
        Ok(())
    });
    let Streamed {
        rows,
        stats,
        checks,
        cursor,
        files,
    } = stream(
        reader,
        &shared.plan,
        checks,
        cursor,
        sink,
        Some(after_batch),
    )
    .await?;
    Ok(ChunkOutput {
        index: chunk.index,
        checks,
        cursor,
        rows,
        stats,
        files,
    })
}

/// Failures worth another attempt: the connection, the store, the disk. Bad data fails again.
fn is_transient(error: &JobError) -> bool {
    matches!(
        error,
        JobError::Database { .. }
            | JobError::Store { .. }
            | JobError::Io { .. }
            | JobError::Parquet { .. }
    ) && !is_cancellation(error)
}

const CANCELLED: &str = "stopped because another chunk failed";

fn cancelled(index: usize) -> JobError {
    JobError::Refused {
        dataset: format!("chunk {index}"),
        message: CANCELLED.into(),
    }
}

fn is_cancellation(error: &JobError) -> bool {
    matches!(error, JobError::Refused { message, .. } if message == CANCELLED)
}
