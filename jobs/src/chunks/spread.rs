//! A partitioned run spread over workers (`partitions.across_workers`). The run that took the
//! dataset's job becomes the coordinator: it plans the chunks (PostgreSQL: inside a snapshot it
//! exports and holds until the end), puts one chunk job per range on the queue, and waits.
//! Any worker takes a chunk job, reads its range into parts in the run's folder, and leaves a
//! note saying what it wrote and counted (`ChunkReport`), or why it gave up. A chunk job is
//! retried alone by the queue; a worker killed mid-chunk has its job handed to another by the
//! queue's heartbeats. The coordinator folds the notes into one report, cursor and manifest and
//! commits; when a chunk gives up, or its job leaves the queue without a note, it withdraws the
//! other jobs and removes every file of the run, so nothing of it becomes visible.
//!
//! Each take of a chunk job writes under its own file prefix, so a take that died, or one still
//! running on a worker the queue took for dead, never mixes its files with the take that
//! reported: the coordinator keeps only the files the notes list and sweeps the rest before
//! committing.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use carga_config::{DatasetSpec, Settings};

use super::order::{
    ChunkDispatch, ChunkGaveUp, ChunkOrder, ChunkReport, PlanNote, done_note, failed_note,
    from_note, plan_note, spec_digest, to_note,
};
use crate::destination::{Destination, RunTarget};
use crate::error::{JobError, Result};
use crate::manifest::Manifest;
use crate::pipeline::{Extracted, Streamed, new_cursor, stream};
use crate::run::RunStart;
use crate::schema_drift::SchemaPlan;
use crate::sources::{self, Partitions, Source, SourceAccess, TypeHints};
use crate::validation::{BatchChecks, KeySeed, ReadStats};

/// How often the coordinator looks for new notes, at first and at most.
const FIRST_POLL: Duration = Duration::from_millis(200);
const MAX_POLL: Duration = Duration::from_secs(2);
/// Every this many looks, the coordinator asks the queue whether the jobs still waiting for a
/// note are there.
const QUEUE_CHECK_EVERY: u32 = 5;
/// How long a run that gave up waits for its withdrawn chunk jobs to end before sweeping.
const WITHDRAWAL_WAIT: Duration = Duration::from_secs(60);

/// What the coordinator takes from the engine.
pub(crate) struct SpreadRun<'a> {
    pub settings: &'a Settings,
    pub destination: &'a Arc<dyn Destination>,
    pub dispatch: Arc<dyn ChunkDispatch>,
}

/// Coordinates the chunks of `partitions` on the queue's workers; releases the plan's hold
/// (the snapshot) when every chunk has ended, whichever way.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn extract(
    engine: SpreadRun<'_>,
    spec: &DatasetSpec,
    source: &Arc<dyn Source>,
    partitions: Partitions,
    hints: TypeHints,
    access: SourceAccess,
    previous: Option<&Manifest>,
    target: &RunTarget,
    delivered: &[arrow::array::RecordBatch],
) -> Result<Extracted> {
    let Partitions {
        chunks,
        attempts,
        hold,
        ..
    } = partitions;
    let result = coordinate(
        &engine,
        spec,
        source,
        (&chunks, attempts),
        hints,
        access,
        previous,
        target,
        delivered,
    )
    .await;
    hold.release().await;
    result
}

/// Withdraws the plan's jobs if the coordinator stops without settling them (an operator
/// killed the run, or its future was dropped): no worker goes on reading for a run that ended.
struct Outstanding {
    dispatch: Arc<dyn ChunkDispatch>,
    job_ids: Vec<String>,
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        if self.job_ids.is_empty() {
            return;
        }
        let (dispatch, ids) = (self.dispatch.clone(), std::mem::take(&mut self.job_ids));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { dispatch.withdraw(&ids).await });
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn coordinate(
    engine: &SpreadRun<'_>,
    spec: &DatasetSpec,
    source: &Arc<dyn Source>,
    (chunks, attempts): (&[sources::Chunk], u32),
    hints: TypeHints,
    access: SourceAccess,
    previous: Option<&Manifest>,
    target: &RunTarget,
    delivered: &[arrow::array::RecordBatch],
) -> Result<Extracted> {
    let destination = engine.destination.as_ref();
    let Some(first) = chunks.first() else {
        return Err(JobError::Internal(format!(
            "{} planned no partitions",
            source.describe()
        )));
    };
    // An earlier attempt of this run (its coordinator died) may have left chunk jobs and files.
    withdraw_earlier_plans(destination, engine.dispatch.as_ref(), target).await?;
    destination.sweep(target, &[]).await?;

    // The output schema every chunk must arrive at: the first range's, described only.
    let described = sources::open_transformed(
        source,
        spec,
        sources::ReadShape::first_rows(1),
        hints,
        SourceAccess {
            chunk: Some(first.clone()),
            schema_only: true,
            ..access.clone()
        },
        engine.settings.query_memory_mib,
    )
    .await?;
    let plan = Arc::new(SchemaPlan::new(
        &spec.id,
        &described.schema,
        previous.map(|m| &m.schema),
        spec.new_columns,
        spec.missing_columns,
    )?);
    drop(described);
    let checks_template =
        BatchChecks::new(&plan.output, &spec.key, spec.timestamp_column.as_deref())?;
    // Ranges of a column of the key cannot share a key: no hashes need to travel then.
    let disjoint = spec.key.contains(&first.column);
    let plan_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let (digest, schema) = (spec_digest(spec), schema_text(&plan));
    let key_seed = checks_template.key_seed().unwrap_or(KeySeed(0, 0));
    let orders: Vec<ChunkOrder> = chunks
        .iter()
        .map(|chunk| ChunkOrder {
            run_id: target.run_id.clone(),
            dataset: spec.id.clone(),
            spec_digest: digest.clone(),
            ingest_date: target.ingest_date.clone(),
            plan: plan_id.clone(),
            chunk: chunk.clone(),
            chunks: chunks.len(),
            attempts,
            previous_sequence: previous.map(|m| m.sequence),
            key_seed,
            ship_key_hashes: !disjoint,
            schema: schema.clone(),
        })
        .collect();
    let job_ids: Vec<String> = orders.iter().map(ChunkOrder::job_id).collect();
    destination
        .put_note(
            target,
            &plan_note(&plan_id),
            &to_note(&PlanNote {
                job_ids: job_ids.clone(),
            })?,
        )
        .await?;
    let mut outstanding = Outstanding {
        dispatch: engine.dispatch.clone(),
        job_ids: job_ids.clone(),
    };
    engine.dispatch.send(&orders).await?;
    tracing::info!(chunks = orders.len(), plan = %plan_id, "chunks sent to the queue; waiting for the workers");
    engine.dispatch.waiting();

    let reports = match gather(engine, target, &orders, &access).await {
        Ok(reports) => reports,
        Err(e) => {
            withdraw_and_wait(engine.dispatch.as_ref(), &job_ids).await;
            outstanding.job_ids.clear();
            if let Err(sweep) = destination.sweep(target, &[]).await {
                tracing::warn!(error = %sweep, "the run's files could not all be removed; they are unreferenced");
            }
            return Err(e);
        }
    };
    outstanding.job_ids.clear();

    let mut checks = checks_template.sibling()?;
    let mut cursor = new_cursor(spec, &plan, access.floor.as_ref(), delivered)?;
    let mut stats = ReadStats::default();
    let mut rows = 0;
    let mut files = Vec::new();
    for report in reports {
        checks.absorb_state(report.checks)?;
        if let (Some(cursor), Some(theirs)) = (cursor.as_mut(), report.cursor) {
            cursor.absorb_state(theirs)?;
        }
        stats.absorb(report.stats);
        rows += report.rows;
        files.extend(report.files);
    }
    // Files of takes that died, and the notes: nothing but the listed parts stays.
    match destination.sweep(target, &files).await {
        Ok(0) => {}
        Ok(removed) => tracing::info!(
            removed,
            "files of earlier takes and the run's notes removed"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "files not listed by the run could not all be removed; they are unreferenced")
        }
    }
    Extracted {
        plan,
        checks,
        cursor,
        rows,
        stats,
        files,
    }
    .checked(spec, destination, access.floor.is_some())
    .await
}

/// Waits for every chunk's note, in the plan's order. A chunk that gave up, or whose job left
/// the queue without a note, ends the wait with its error.
async fn gather(
    engine: &SpreadRun<'_>,
    target: &RunTarget,
    orders: &[ChunkOrder],
    access: &SourceAccess,
) -> Result<Vec<ChunkReport>> {
    let destination = engine.destination.as_ref();
    let Some(plan) = orders.first().map(|o| o.plan.clone()) else {
        return Ok(Vec::new());
    };
    let mut reports: BTreeMap<usize, ChunkReport> = BTreeMap::new();
    let mut pause = FIRST_POLL;
    let mut looks = 0u32;
    let (mut read, mut rejected) = (0, 0);
    loop {
        let names: HashSet<String> = destination
            .note_names(target, &format!("{plan}/"))
            .await?
            .into_iter()
            .collect();
        for order in orders {
            let index = order.chunk.index;
            if reports.contains_key(&index) {
                continue;
            }
            let failed = failed_note(&plan, index);
            if names.contains(&failed) {
                let gave_up: ChunkGaveUp =
                    from_note(&failed, &destination.read_note(target, &failed).await?)?;
                tracing::warn!(chunk = index, error = %gave_up.message, "a chunk gave up; the run stops");
                return Err(gave_up.into_error());
            }
            let done = done_note(&plan, index);
            if names.contains(&done) {
                let report: ChunkReport =
                    from_note(&done, &destination.read_note(target, &done).await?)?;
                if report.index != index {
                    return Err(JobError::Internal(format!(
                        "note {done} reports chunk {}",
                        report.index
                    )));
                }
                tracing::info!(chunk = index, rows = report.rows, worker = %report.worker, take = report.take, "chunk written");
                read += report.stats.rows_read;
                rejected += report.stats.rejected_rows;
                access.progress.sent(report.rows);
                access.progress.reported(read, rejected);
                reports.insert(index, report);
                pause = FIRST_POLL;
            }
        }
        if reports.len() == orders.len() {
            return Ok(reports.into_values().collect());
        }
        looks += 1;
        if looks.is_multiple_of(QUEUE_CHECK_EVERY) {
            let waiting: Vec<&ChunkOrder> = orders
                .iter()
                .filter(|o| !reports.contains_key(&o.chunk.index))
                .collect();
            let ids: Vec<String> = waiting.iter().map(|o| o.job_id()).collect();
            let gone = engine.dispatch.gone(&ids).await?;
            if !gone.is_empty() {
                // A job settles after its note is written: look at the notes once more.
                let names = destination.note_names(target, &format!("{plan}/")).await?;
                for order in waiting.iter().filter(|o| gone.contains(&o.job_id())) {
                    let index = order.chunk.index;
                    let noted = names.contains(&done_note(&plan, index))
                        || names.contains(&failed_note(&plan, index));
                    if !noted {
                        return Err(JobError::Masked {
                            message: format!(
                                "chunk {index}'s job {} left the queue without a result (removed by an operator, or the queue lost it)",
                                order.job_id()
                            ),
                            validation: false,
                        });
                    }
                }
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_POLL);
    }
}

/// Withdraws the jobs and waits (a while) until none is left on the queue: a chunk that was
/// writing stops, or finishes, before the run's folder is swept, so nothing it writes stays.
async fn withdraw_and_wait(dispatch: &dyn ChunkDispatch, job_ids: &[String]) {
    dispatch.withdraw(job_ids).await;
    let deadline = tokio::time::Instant::now() + WITHDRAWAL_WAIT;
    loop {
        match dispatch.gone(job_ids).await {
            Ok(gone) if gone.len() == job_ids.len() => return,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the queue cannot say whether the withdrawn chunk jobs ended");
                return;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                "withdrawn chunk jobs still running; what they write after the sweep stays unreferenced"
            );
            return;
        }
        tokio::time::sleep(FIRST_POLL).await;
    }
}

/// Withdraws the chunk jobs of earlier attempts of this run, named in their plans' notes.
async fn withdraw_earlier_plans(
    destination: &dyn Destination,
    dispatch: &dyn ChunkDispatch,
    target: &RunTarget,
) -> Result<()> {
    for name in destination.note_names(target, "").await? {
        if !name.ends_with("/plan") {
            continue;
        }
        let plan: PlanNote = from_note(&name, &destination.read_note(target, &name).await?)?;
        tracing::info!(note = %name, jobs = plan.job_ids.len(), "withdrawing the chunk jobs of an earlier attempt of this run");
        withdraw_and_wait(dispatch, &plan.job_ids).await;
    }
    Ok(())
}

/// The schema a chunk must arrive at, as text both sides compute alike.
fn schema_text(plan: &SchemaPlan) -> String {
    format!("{:?}", plan.output.fields())
}

/// What a worker reading a chunk takes from the engine.
pub(crate) struct ChunkReader<'a> {
    pub settings: &'a Settings,
    pub destination: &'a Arc<dyn Destination>,
    pub worker: &'a str,
    pub take: usize,
}

/// Reads one chunk of another worker's run into parts and leaves the note that reports them.
pub(crate) async fn read_chunk(
    engine: ChunkReader<'_>,
    spec: &DatasetSpec,
    order: &ChunkOrder,
    start: RunStart,
) -> Result<ChunkReport> {
    let RunStart {
        source,
        previous,
        hints,
        floor,
        delivered,
        access,
    } = start;
    let target = order.target();
    if spec_digest(spec) != order.spec_digest {
        return Err(JobError::Refused {
            dataset: spec.id.clone(),
            message: format!(
                "the dataset changed since run {} planned its chunks; chunk {} is not read",
                order.run_id, order.chunk.index
            ),
        });
    }
    if previous.as_ref().map(|m| m.sequence) != order.previous_sequence {
        return Err(JobError::Conflict {
            dataset: spec.id.clone(),
            message: format!(
                "the dataset committed since run {} planned its chunks; chunk {} is not read",
                order.run_id, order.chunk.index
            ),
        });
    }
    let reader = sources::open_transformed(
        &source,
        spec,
        sources::ReadShape::of(engine.settings),
        hints,
        SourceAccess {
            chunk: Some(order.chunk.clone()),
            ..access
        },
        engine.settings.query_memory_mib,
    )
    .await?;
    let plan = Arc::new(SchemaPlan::new(
        &spec.id,
        &reader.schema,
        previous.as_ref().map(|m| &m.schema),
        spec.new_columns,
        spec.missing_columns,
    )?);
    if schema_text(&plan) != order.schema {
        return Err(JobError::SchemaDrift {
            dataset: spec.id.clone(),
            message: format!(
                "chunk {} arrives at another schema than its run planned (a worker of another version, or the table changed): {}",
                order.chunk.index,
                crate::validation::column_list(&plan.output)
            ),
        });
    }
    let checks = BatchChecks::new(&plan.output, &spec.key, spec.timestamp_column.as_deref())?
        .with_key_seed(order.key_seed);
    let cursor = new_cursor(spec, &plan, floor.as_ref(), &delivered)?;
    let sink = engine.destination.parts(
        &target,
        plan.output.clone(),
        &order.part_prefix(engine.take),
        false,
    )?;
    let Streamed {
        rows,
        stats,
        checks,
        cursor,
        files,
    } = stream(reader, &plan, checks, cursor, sink, None).await?;
    let report = ChunkReport {
        index: order.chunk.index,
        rows,
        stats,
        checks: checks.export(order.ship_key_hashes),
        cursor: cursor.as_ref().map(crate::delta::DeltaFilter::export),
        files,
        worker: engine.worker.to_owned(),
        take: engine.take,
    };
    let written = match to_note(&report) {
        Ok(body) => {
            engine
                .destination
                .put_note(&target, &order.done_note(), &body)
                .await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = written {
        engine.destination.discard(&report.files).await;
        return Err(e);
    }
    tracing::info!(
        rows,
        files = report.files.len(),
        "chunk written and reported"
    );
    Ok(report)
}

/// Leaves the note that tells the coordinator a chunk gave up.
pub(crate) async fn report_gave_up(
    destination: &dyn Destination,
    order: &ChunkOrder,
    error: &JobError,
) {
    let note = ChunkGaveUp {
        index: order.chunk.index,
        message: error.to_string(),
        validation: error.is_validation(),
        attempts: order.attempts,
    };
    let written = match to_note(&note) {
        Ok(body) => {
            destination
                .put_note(&order.target(), &order.failed_note(), &body)
                .await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = written {
        tracing::warn!(error = %e, "the chunk's end could not be noted; its coordinator finds the job gone");
    }
}
