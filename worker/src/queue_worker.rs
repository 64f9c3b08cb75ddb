//! What a worker does with one job it took (`carga worker` on Redis, `carga serve` on SQLite;
//! `take_loop` takes the jobs): resolve the dataset, take its lock, run one attempt, record the
//! end in the catalog, announce it, and say where the job goes next:
//!
//! - done (committed, or failed for good with its history recorded);
//! - dead (a validation failure, or the last attempt failed);
//! - back in the queue: a transient failure waits out its backoff there as a delayed job with its
//!   attempt number raised, so no worker slot sleeps through it; a busy dataset or an unreachable
//!   catalog comes back shortly.
//!
//! A job taken again after its run committed (its worker was killed, or the queue lost its end)
//! finds its manifest by run id and is done without running again.

use std::time::{Duration, Instant};

use carga_jobs::retry::Backoff;
use carga_jobs::{Engine, RunFailure, RunOutcome};
use carga_scheduler::catalog::{Catalog, RunProgress, RunResult};
use carga_scheduler::metrics::{Counter, Metrics};
use carga_scheduler::queue::Settlement;
use carga_scheduler::{ExtractionJob, JobQueue};
use tracing::Instrument;

use crate::lock::DatasetLock;
use carga_scheduler::catalog::OutboxMessage;
use carga_scheduler::notify::Notification;

/// Times a job may go back to the queue without an attempt (busy dataset, unreachable catalog)
/// before it is dead, as apalis-redis does.
const MAX_PUT_BACKS: usize = 25;
/// When a job put back without an attempt is due again.
const PUT_BACK_DELAY: Duration = Duration::from_secs(1);

/// How failed attempts are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// Backoff before attempt `next` (2, 3, ...): doubles each time, capped, stretched by up to
    /// as much again at random so jobs failing together do not retry together.
    pub fn backoff(&self, next: u32) -> Duration {
        Backoff::new(self.first_backoff, self.max_backoff).pause(next.saturating_sub(1))
    }
}

pub struct WorkerSettings {
    pub name: String,
    pub concurrency: usize,
    pub retry: RetryPolicy,
    pub lock_ttl: Duration,
    /// How long a job waits for another run of its dataset before going back to the queue.
    pub lock_wait: Duration,
    /// Written on every heartbeat round (`carga health`).
    pub liveness: crate::health::Liveness,
    /// How often a running job's progress is written to the catalog.
    pub progress_every: Duration,
}

/// What every job handler shares.
pub struct Shared {
    pub engine: Engine,
    pub catalog: Catalog,
    pub queue: JobQueue,
    pub metrics: Metrics,
    pub settings: WorkerSettings,
    /// Set when the worker stops taking jobs (SIGTERM).
    pub stopping: tokio::sync::watch::Sender<bool>,
}

/// One job taken for the `takes`-th time: where it goes next.
pub(crate) async fn handle_job(
    job: &ExtractionJob,
    shared: &Shared,
    takes: usize,
    slot: crate::chunk_job::Slot,
) -> Settlement {
    let span = tracing::info_span!("job", run_id = %job.run_id, dataset = %job.dataset_id);
    async {
        let handled = match &job.chunk {
            Some(order) => crate::chunk_job::handle_chunk(job, order, shared, takes).await,
            None => handle_in_span(job, shared, takes, slot).await,
        };
        match handled {
            Ok(settlement) => settlement,
            // The catalog or the queue failed under us: nothing was decided, so the job comes
            // back (and is dead only after many put-backs without an attempt).
            Err(fault) => put_back(job, takes, format!("catalog or queue unreachable: {fault}")),
        }
    }
    .instrument(span)
    .await
}

type Fault = Box<dyn std::error::Error + Send + Sync>;

/// Back to the queue without an attempt made.
fn put_back(job: &ExtractionJob, takes: usize, reason: String) -> Settlement {
    let put_backs = takes.saturating_sub(job.attempt as usize);
    if put_backs >= MAX_PUT_BACKS {
        tracing::error!(takes, %reason, "job put back too often; it is dead");
        return Settlement::Dead(format!("put back {put_backs} times; last: {reason}"));
    }
    tracing::info!(%reason, "the job goes back to the queue");
    Settlement::Later {
        delay: PUT_BACK_DELAY,
        reason,
        job: None,
    }
}

async fn handle_in_span(
    job: &ExtractionJob,
    shared: &Shared,
    takes: usize,
    slot: crate::chunk_job::Slot,
) -> Result<Settlement, Fault> {
    tracing::info!(takes, attempt = job.attempt, "job taken");
    if shared.queue.is_cancelled(&job.run_id).await? {
        // Killed from the dashboard after a worker had already fetched it.
        shared
            .catalog
            .run_killed(&job.run_id, "an operator")
            .await?;
        tracing::warn!("job was killed before it started");
        return Ok(Settlement::Done);
    }
    let record = shared.catalog.dataset(&job.dataset_id).await?;
    let spec = match record {
        Some(record) if record.is_runnable() => record.spec,
        other => {
            let reason = match other {
                None => "the dataset is no longer configured",
                Some(r) if !r.enabled => "the dataset is disabled",
                Some(_) => "the dataset has changes waiting for approval",
            };
            shared
                .catalog
                .run_started(job, &shared.settings.name, job.attempt as i32)
                .await?;
            finish_failed(shared, job, "failed", reason).await?;
            return Ok(Settlement::Dead(format!(
                "dataset '{}': {reason}",
                job.dataset_id
            )));
        }
    };
    let lock = DatasetLock::acquire(
        &shared.queue,
        &job.dataset_id,
        &shared.settings.name,
        shared.settings.lock_ttl,
        shared.settings.lock_wait,
    )
    .await?;
    let Some(lock) = lock else {
        return Ok(put_back(
            job,
            takes,
            format!(
                "dataset '{}' is being extracted by another run",
                job.dataset_id
            ),
        ));
    };
    // A partitioned table may have its chunks read by the queue's workers meanwhile.
    let dispatch = std::sync::Arc::new(crate::chunk_job::QueueDispatch::new(
        shared.queue.clone(),
        job,
        slot.clone(),
    ));
    let ended = tokio::select! {
        ended = attempt(shared, job, &spec, dispatch.clone()) => ended,
        () = stopping_while_coordinating(shared, &slot) => {
            // Its chunks wait for workers, and this one takes no more: the run goes back to
            // the queue for another worker to coordinate, its chunk jobs withdrawn (nothing was
            // committed, so nothing is visible and the watermark did not move).
            dispatch.withdraw_sent().await;
            tracing::warn!("worker stopping while the run coordinates its chunks: the run goes back to the queue");
            Ok(put_back(job, takes, "its worker stopped while the run waited for its chunks".into()))
        }
        () = cancelled(shared, &job.run_id) => {
            // Dropping the run stops it: nothing was committed, so nothing becomes visible, and
            // the watermark does not move (its uploaded parts stay unreferenced). A run
            // spread over workers takes its chunk jobs back.
            dispatch.withdraw_sent().await;
            shared.catalog.run_killed(&job.run_id, "an operator").await?;
            tracing::warn!("job killed by an operator; its uncommitted output is discarded");
            Ok(Settlement::Done)
        }
    };
    lock.release().await;
    ended
}

/// Resolves once the worker is stopping while this job is a run that only waits for its chunks
/// (it gave its slot back): the chunks would wait for a worker that takes no more jobs.
async fn stopping_while_coordinating(shared: &Shared, slot: &crate::chunk_job::Slot) {
    let mut stopping = shared.stopping.subscribe();
    if stopping.wait_for(|stopping| *stopping).await.is_err() {
        return std::future::pending().await;
    }
    loop {
        if slot.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Resolves when an operator asks to kill the job (checked every second).
pub(crate) async fn cancelled(shared: &Shared, run_id: &str) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if shared.queue.is_cancelled(run_id).await.unwrap_or(false) {
            return;
        }
    }
}

/// One attempt of the job: every table not committed yet (by this run id) runs once.
async fn attempt(
    shared: &Shared,
    job: &ExtractionJob,
    spec: &carga_config::DatasetSpec,
    dispatch: std::sync::Arc<crate::chunk_job::QueueDispatch>,
) -> Result<Settlement, Fault> {
    let policy = &shared.settings.retry;
    let attempt = job.attempt.max(1);
    let started = Instant::now();
    shared
        .catalog
        .run_started(job, &shared.settings.name, attempt as i32)
        .await?;
    shared.metrics.add(Counter::JobsStarted, 1).await;
    let mut outcomes: Vec<RunOutcome> = Vec::new();
    let mut failure: Option<RunFailure> = None;
    for table in spec.per_table() {
        match shared.engine.committed(&table, &job.run_id).await {
            Ok(Some(done)) => {
                tracing::info!(dataset = %table.id, "already committed by this run; not run again");
                outcomes.push(done);
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                failure = Some(RunFailure {
                    error: e,
                    report_url: None,
                });
                break;
            }
        }
        match run_reporting_progress(shared, &table, &job.run_id, dispatch.clone()).await {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let took = started.elapsed();
    let Some(failure) = failure else {
        if let Some(marker) = std::env::var_os(crate::drill::HOLD_AFTER_COMMIT) {
            crate::drill::hold_after_commit(&marker, &job.run_id).await;
        }
        // A catalog that cannot record the end puts the job back: its next take finds the
        // commit made and records the end and the messages then.
        finish_succeeded(shared, job, attempt, &outcomes, took).await?;
        return Ok(Settlement::Done);
    };
    let message = failure.to_string();
    let validation = failure.error.is_validation();
    if validation || attempt >= policy.max_attempts {
        let state = if validation { "failed" } else { "dead" };
        shared
            .metrics
            .observe_run_duration(took.as_secs_f64())
            .await;
        finish_failed(shared, job, state, &message).await?;
        return Ok(Settlement::Dead(message));
    }
    let wait = policy.backoff(attempt + 1);
    let next_at = chrono::Utc::now()
        + chrono::Duration::from_std(wait).unwrap_or_else(|_| chrono::Duration::seconds(60));
    tracing::warn!(attempt, error = %message, retry_at = %next_at, "attempt failed; the job waits in the queue for the next one");
    shared.metrics.add(Counter::JobsRetried, 1).await;
    shared
        .catalog
        .run_retrying(
            &job.run_id,
            attempt as i32,
            policy.max_attempts as i32,
            next_at,
            &message,
        )
        .await?;
    Ok(Settlement::Later {
        delay: wait,
        reason: message,
        job: Some(Box::new(job.next_attempt())),
    })
}

/// Runs one table, writing its progress to the catalog every `progress_every` while it reads
/// (the dashboard's rows so far, rows/s, percentage and end time).
async fn run_reporting_progress(
    shared: &Shared,
    table: &carga_config::DatasetSpec,
    run_id: &str,
    dispatch: std::sync::Arc<dyn carga_jobs::ChunkDispatch>,
) -> Result<RunOutcome, RunFailure> {
    let every = shared.settings.progress_every;
    shared
        .engine
        .run_watched(
            table,
            run_id,
            Some(dispatch),
            every,
            |snapshot, elapsed| async move {
                let update = RunProgress::new(&snapshot, elapsed);
                // Progress is for people watching; a catalog hiccup must not fail the run.
                if let Err(e) = shared.catalog.run_progress(run_id, &update).await {
                    tracing::debug!(error = %e, "progress not written");
                }
            },
        )
        .await
}

async fn finish_succeeded(
    shared: &Shared,
    job: &ExtractionJob,
    attempt: u32,
    outcomes: &[RunOutcome],
    took: Duration,
) -> Result<(), Fault> {
    let rows: u64 = outcomes.iter().map(|o| o.manifest.rows).sum();
    let bytes: u64 = outcomes.iter().map(|o| o.manifest.bytes).sum();
    let watermark = |pick: fn(&carga_jobs::manifest::WatermarkRange) -> Option<String>| {
        let values: Vec<String> = outcomes
            .iter()
            .filter_map(|o| o.manifest.watermark.as_ref().and_then(pick))
            .collect();
        (!values.is_empty()).then(|| values.join("; "))
    };
    let result = RunResult {
        state: "succeeded",
        rows_written: Some(rows as i64),
        bytes_written: Some(bytes as i64),
        manifest_url: Some(join_urls(outcomes.iter().map(|o| o.manifest_url.as_str()))),
        report_url: Some(join_urls(outcomes.iter().map(|o| o.report_url.as_str()))),
        watermark_before: watermark(|w| w.from.as_ref().map(watermark_text)),
        watermark_after: watermark(|w| w.to.as_ref().map(watermark_text)),
        error: None,
    };
    // The run's end and every message about it commit together (the outbox): a crash after
    // the data's commit loses no message, and a retry that finds the commit records them once.
    let messages = success_messages(job, outcomes, &result, rows);
    shared
        .catalog
        .run_finished_with(&job.run_id, attempt as i32, &result, &messages)
        .await
        .inspect_err(|e| {
            tracing::error!(error = %e, "run committed but its end and messages were not recorded yet");
        })?;
    shared.metrics.add(Counter::JobsSucceeded, 1).await;
    shared.metrics.add(Counter::RowsWritten, rows).await;
    if let Some(first) = outcomes.first() {
        let source = first.manifest.source.format.clone();
        shared
            .metrics
            .add_source_run(&source, rows, took.as_secs_f64())
            .await;
    }
    shared.metrics.add(Counter::BytesWritten, bytes).await;
    shared
        .metrics
        .observe_run_duration(took.as_secs_f64())
        .await;
    tracing::info!(rows, bytes, attempt, "job succeeded");
    Ok(())
}

async fn finish_failed(
    shared: &Shared,
    job: &ExtractionJob,
    state: &'static str,
    reason: &str,
) -> Result<(), Fault> {
    let attempt = job.attempt.max(1);
    let result = RunResult {
        state,
        error: Some(reason.to_owned()),
        ..RunResult::default()
    };
    let event = if state == "failed" {
        "validation_failed"
    } else {
        "extraction_failed"
    };
    let note = Notification {
        event,
        dataset_id: job.dataset_id.clone(),
        run_id: job.run_id.clone(),
        at: chrono::Utc::now(),
        rows: None,
        manifest: None,
        reason: Some(reason.to_owned()),
        upload_id: None,
        report: None,
    };
    let message = note.message(format!("{}:{event}", job.run_id), true);
    shared
        .catalog
        .run_finished_with(&job.run_id, attempt as i32, &result, &[message])
        .await
        .inspect_err(|e| tracing::error!(error = %e, "run's end and message not recorded yet"))?;
    shared.metrics.add(Counter::JobsFailed, 1).await;
    shared.metrics.add(Counter::JobsDead, 1).await;
    tracing::error!(attempt, state, error = %reason, "job failed");
    Ok(())
}

/// What a committed run announces: `dataset_ready` per table for the transformation engine,
/// the seed's `upload_success` (RabbitMQ only) and `run_succeeded` (RabbitMQ and webhooks).
fn success_messages(
    job: &ExtractionJob,
    outcomes: &[RunOutcome],
    result: &RunResult,
    rows: u64,
) -> Vec<OutboxMessage> {
    let mut messages: Vec<OutboxMessage> = outcomes
        .iter()
        .map(|outcome| OutboxMessage {
            dedupe_key: format!(
                "{}:dataset_ready:{}:{}",
                job.run_id, outcome.manifest.dataset, outcome.manifest.sequence
            ),
            event: None,
            routing_key: "transform.dataset_ready".into(),
            dataset_id: outcome.manifest.dataset.clone(),
            run_id: Some(job.run_id.clone()),
            payload: serde_json::json!({
                "event": "dataset_ready",
                "dataset_id": outcome.manifest.dataset,
                "run_id": job.run_id,
                "mode": outcome.manifest.mode,
                "sequence": outcome.manifest.sequence,
                "rows": outcome.manifest.rows,
                "manifest": outcome.manifest_url,
                "files": outcome.manifest.files.iter().map(|f| &f.path).collect::<Vec<_>>(),
            }),
        })
        .collect();
    let note = |event| Notification {
        event,
        dataset_id: job.dataset_id.clone(),
        run_id: job.run_id.clone(),
        at: chrono::Utc::now(),
        rows: Some(rows),
        manifest: result.manifest_url.clone(),
        reason: None,
        upload_id: None,
        report: result.report_url.clone(),
    };
    for (event, webhook) in [("upload_success", false), ("run_succeeded", true)] {
        messages.push(note(event).message(format!("{}:{event}", job.run_id), webhook));
    }
    messages
}

fn watermark_text(w: &carga_jobs::delta::Watermark) -> String {
    serde_json::to_string(&w.values).unwrap_or_default()
}

fn join_urls<'a>(urls: impl Iterator<Item = &'a str>) -> String {
    urls.collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 5,
            first_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(10),
        };
        let within = |d: Duration, secs: f64| {
            let s = d.as_secs_f64();
            s >= secs - 1e-9 && s <= secs * 2.0 + 1e-9
        };
        assert!(within(policy.backoff(2), 2.0));
        assert!(within(policy.backoff(3), 4.0));
        assert!(within(policy.backoff(4), 8.0));
        assert!(within(policy.backoff(5), 10.0));
        assert!(within(policy.backoff(40), 10.0));
    }
}
