//! `carga worker`: takes extraction jobs from the queue and runs them.
//!
//! - On Redis, apalis-redis gives the take side: one job per fetch, a heartbeat per worker, and jobs held
//!   by a worker whose heartbeats stop are put back for another worker.
//! - Retries are ours: apalis-redis 1.0 reschedules every failure up to 25 times a second apart
//!   whatever the task's limit, so the handler retries transient failures itself with
//!   exponential backoff, and after the last attempt (or at once for a validation failure) ends
//!   the job with an `AbortError`, which apalis puts in its dead set.
//! - One extraction per dataset at a time (`lock`); SIGTERM stops taking jobs and lets the
//!   running ones finish.
//! - In the embedded mode the queue is the SQLite file and `embedded_worker` takes the jobs;
//!   what a job does once taken (`handle_job`) is the same.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::{AbortError, Attempt, BoxDynError, Data, WorkerBuilder, WorkerBuilderExt};
use carga_jobs::{Engine, RunFailure, RunOutcome};
use carga_scheduler::catalog::{Catalog, RunResult};
use carga_scheduler::metrics::{Counter, Metrics};
use carga_scheduler::queue::RedisQueue;
use carga_scheduler::{ExtractionJob, JobQueue};
use tracing::Instrument;

use crate::lock::DatasetLock;
use crate::notify::{Notification, Notifier};

/// How failed attempts are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// Backoff before attempt `next` (2, 3, ...): doubles each time, capped, with ±20% jitter so
    /// jobs failing together do not retry together.
    pub fn backoff(&self, next: u32) -> Duration {
        let doublings = next.saturating_sub(2).min(20);
        let base = self
            .first_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff);
        let jitter = 0.8 + rand::random::<f64>() * 0.4;
        base.mul_f64(jitter)
    }
}

pub struct WorkerSettings {
    pub name: String,
    pub concurrency: usize,
    pub retry: RetryPolicy,
    pub lock_ttl: Duration,
    /// How long a job waits for another run of its dataset before going back to the queue.
    pub lock_wait: Duration,
}

/// What every job handler shares.
pub struct Shared {
    pub engine: Engine,
    pub catalog: Catalog,
    pub queue: JobQueue,
    pub metrics: Metrics,
    pub notifier: Option<Notifier>,
    pub settings: WorkerSettings,
}

/// Runs the worker until `shutdown` resolves, then waits for the running jobs.
pub async fn run(
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    match shared.queue.clone() {
        JobQueue::Redis(queue) => run_on_redis(shared, queue, shutdown).await,
        JobQueue::Embedded(queue) => crate::embedded_worker::run(shared, queue, shutdown).await,
    }
}

async fn run_on_redis(
    shared: Arc<Shared>,
    queue: RedisQueue,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let worker = WorkerBuilder::new(shared.settings.name.clone())
        .backend(queue.storage())
        .data(shared.clone())
        .concurrency(shared.settings.concurrency)
        .build(handle);
    worker
        .run_until(async move {
            shutdown.await;
            Ok::<(), std::io::Error>(())
        })
        .await?;
    Ok(())
}

/// apalis' entry point for a job.
async fn handle(
    job: ExtractionJob,
    shared: Data<Arc<Shared>>,
    taken: Attempt,
) -> Result<(), BoxDynError> {
    handle_job(&job, &shared, taken.current()).await
}

/// One job: resolve the dataset, take its lock, run with retries, record and announce the end.
/// `Ok`: done; an `AbortError`: gave up (the dead set); another error: back to the queue.
pub(crate) async fn handle_job(
    job: &ExtractionJob,
    shared: &Shared,
    taken: usize,
) -> Result<(), BoxDynError> {
    let span = tracing::info_span!("job", run_id = %job.run_id, dataset = %job.dataset_id);
    handle_in_span(job, shared, taken).instrument(span).await
}

async fn handle_in_span(
    job: &ExtractionJob,
    shared: &Shared,
    taken: usize,
) -> Result<(), BoxDynError> {
    tracing::info!(taken, "job taken");
    if shared.queue.is_cancelled(&job.run_id).await? {
        // Killed from the dashboard after a worker had already fetched it.
        shared
            .catalog
            .run_killed(&job.run_id, "an operator")
            .await?;
        tracing::warn!("job was killed before it started");
        return Ok(());
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
                .run_started(job, &shared.settings.name, 0)
                .await?;
            finish_failed(shared, job, 0, "failed", reason).await;
            return Err(AbortError::new(format!("dataset '{}': {reason}", job.dataset_id)).into());
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
        // Back to the queue (apalis reschedules a plain error): another run still holds it.
        tracing::info!("another run of the dataset is in progress; the job goes back to the queue");
        return Err(format!(
            "dataset '{}' is being extracted by another run",
            job.dataset_id
        )
        .into());
    };
    let result = tokio::select! {
        result = run_with_retries(shared, job, &spec) => result,
        () = cancelled(shared, &job.run_id) => {
            // Dropping the run stops it: nothing was committed, so nothing becomes visible, and
            // the watermark does not move (its uploaded parts stay unreferenced).
            shared.catalog.run_killed(&job.run_id, "an operator").await?;
            tracing::warn!("job killed by an operator; its uncommitted output is discarded");
            Ok(())
        }
    };
    lock.release().await;
    result
}

/// Resolves when an operator asks to kill the job (checked every second).
async fn cancelled(shared: &Shared, run_id: &str) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if shared.queue.is_cancelled(run_id).await.unwrap_or(false) {
            return;
        }
    }
}

async fn run_with_retries(
    shared: &Shared,
    job: &ExtractionJob,
    spec: &carga_config::DatasetSpec,
) -> Result<(), BoxDynError> {
    let policy = &shared.settings.retry;
    let tables = spec.per_table();
    let mut committed: Vec<RunOutcome> = Vec::new();
    let started = Instant::now();
    let mut attempt = 1;
    loop {
        shared
            .catalog
            .run_started(job, &shared.settings.name, attempt as i32)
            .await?;
        shared.metrics.add(Counter::JobsStarted, 1).await;
        // Tables committed by an earlier attempt of this job are not run again.
        let mut failure: Option<RunFailure> = None;
        for table in &tables {
            if committed.iter().any(|o| o.manifest.dataset == table.id) {
                continue;
            }
            match shared.engine.run_as(table, &job.run_id).await {
                Ok(outcome) => committed.push(outcome),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let Some(failure) = failure else {
            finish_succeeded(shared, job, attempt, &committed, started.elapsed()).await;
            return Ok(());
        };
        let message = failure.to_string();
        let validation = failure.error.is_validation();
        if validation || attempt >= policy.max_attempts {
            let state = if validation { "failed" } else { "dead" };
            shared
                .metrics
                .observe_run_duration(started.elapsed().as_secs_f64())
                .await;
            finish_failed(shared, job, attempt, state, &message).await;
            return Err(AbortError::new(message).into());
        }
        let wait = policy.backoff(attempt + 1);
        tracing::warn!(attempt, error = %message, retry_in = ?wait, "attempt failed; retrying");
        shared.metrics.add(Counter::JobsRetried, 1).await;
        shared
            .catalog
            .run_retrying(&job.run_id, attempt as i32, &message)
            .await?;
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

async fn finish_succeeded(
    shared: &Shared,
    job: &ExtractionJob,
    attempt: u32,
    outcomes: &[RunOutcome],
    took: Duration,
) {
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
    if let Err(e) = shared
        .catalog
        .run_finished(&job.run_id, attempt as i32, &result)
        .await
    {
        tracing::error!(error = %e, "run committed but its history row was not updated");
    }
    shared.metrics.add(Counter::JobsSucceeded, 1).await;
    shared.metrics.add(Counter::RowsWritten, rows).await;
    if let Some(first) = outcomes.first() {
        let source = serde_json::to_value(first.manifest.source.format)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
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
    let Some(notifier) = &shared.notifier else {
        return;
    };
    for outcome in outcomes {
        let ready = serde_json::json!({
            "event": "dataset_ready",
            "dataset_id": outcome.manifest.dataset,
            "run_id": job.run_id,
            "mode": outcome.manifest.mode,
            "sequence": outcome.manifest.sequence,
            "rows": outcome.manifest.rows,
            "manifest": outcome.manifest_url,
            "files": outcome.manifest.files.iter().map(|f| &f.path).collect::<Vec<_>>(),
        });
        publish(notifier, "transform.dataset_ready", &ready).await;
    }
    let note = Notification {
        event: "upload_success",
        dataset_id: job.dataset_id.clone(),
        run_id: job.run_id.clone(),
        at: chrono::Utc::now(),
        rows: Some(rows),
        manifest: result.manifest_url.clone(),
        reason: None,
    };
    publish(notifier, "notification.upload_success", &note).await;
}

async fn finish_failed(
    shared: &Shared,
    job: &ExtractionJob,
    attempt: u32,
    state: &'static str,
    reason: &str,
) {
    let result = RunResult {
        state,
        error: Some(reason.to_owned()),
        ..RunResult::default()
    };
    if let Err(e) = shared
        .catalog
        .run_finished(&job.run_id, attempt as i32, &result)
        .await
    {
        tracing::error!(error = %e, "run history row not updated");
    }
    shared.metrics.add(Counter::JobsFailed, 1).await;
    shared.metrics.add(Counter::JobsDead, 1).await;
    tracing::error!(attempt, state, error = %reason, "job failed");
    let Some(notifier) = &shared.notifier else {
        return;
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
    };
    publish(notifier, &format!("notification.{event}"), &note).await;
}

async fn publish(notifier: &Notifier, routing_key: &str, body: &impl serde::Serialize) {
    if let Err(e) = notifier.publish(routing_key, body).await {
        tracing::error!(error = %e, routing_key, "message not published");
    }
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
            s >= secs * 0.8 - 1e-9 && s <= secs * 1.2 + 1e-9
        };
        assert!(within(policy.backoff(2), 2.0));
        assert!(within(policy.backoff(3), 4.0));
        assert!(within(policy.backoff(4), 8.0));
        assert!(within(policy.backoff(5), 10.0));
        assert!(within(policy.backoff(40), 10.0));
    }
}
