//! The scheduler daemon: reads the catalog's scheduled datasets, works out which cron times are
//! due, and enqueues one job per (dataset, time).
//!
//! - Changes in the catalog (added, changed, disabled datasets) are picked up on every refresh,
//!   without a restart.
//! - Several replicas may run: each pushes with the time's idempotency key, so a time is enqueued
//!   once, and only the replica whose push won records the queued run.
//! - Each dataset's last fired time is kept with the queue (Redis, or the embedded SQLite file). After an outage the fire times missed are
//!   collapsed into one run (the latest), not replayed one by one.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use crate::catalog::{Catalog, CatalogError};
use crate::job::{ExtractionJob, RunReason};
use crate::metrics::{Counter, Metrics};
use crate::queue::{JobQueue, QueueError};
use crate::schedule::CronSchedule;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// How often the catalog is re-read for new, changed and disabled datasets.
    pub refresh: Duration,
    /// The longest sleep between checks.
    pub max_sleep: Duration,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(10),
            max_sleep: Duration::from_secs(1),
        }
    }
}

struct Planned {
    version: i64,
    schedule: CronSchedule,
    /// Where a dataset never fired yet starts counting: its last change (or approval).
    since: DateTime<Utc>,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TickReport {
    /// Jobs this replica enqueued.
    pub enqueued: Vec<ExtractionJob>,
    /// Due times another replica had already enqueued.
    pub already_enqueued: usize,
}

pub struct Scheduler {
    catalog: Catalog,
    queue: JobQueue,
    metrics: Metrics,
    settings: SchedulerSettings,
    plans: HashMap<String, Planned>,
    refreshed_at: Option<std::time::Instant>,
}

impl Scheduler {
    pub fn new(catalog: Catalog, queue: JobQueue, settings: SchedulerSettings) -> Self {
        let metrics = Metrics::new(queue.clone());
        Self {
            catalog,
            queue,
            metrics,
            settings,
            plans: HashMap::new(),
            refreshed_at: None,
        }
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let now = Utc::now();
            if let Err(e) = self.tick(now).await {
                tracing::error!(error = %e, "scheduler pass failed; retrying");
            }
            let sleep = self.sleep_after(Utc::now());
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(sleep) => {}
            }
        }
        tracing::info!("scheduler stopped");
    }

    /// Re-reads the catalog if due, then enqueues what is due at `now`.
    pub async fn tick(&mut self, now: DateTime<Utc>) -> Result<TickReport, SchedulerError> {
        if self
            .refreshed_at
            .is_none_or(|at| at.elapsed() >= self.settings.refresh)
        {
            self.refresh().await?;
        }
        let fired = self.queue.last_fired().await?;
        let mut due = Vec::new();
        for (dataset, plan) in &self.plans {
            let after = fired
                .get(dataset)
                .and_then(|epoch| Utc.timestamp_opt(*epoch, 0).single())
                .unwrap_or(plan.since);
            if let Some((fire, missed)) = plan.schedule.latest_due(after, now) {
                if missed > 1 {
                    tracing::warn!(dataset, missed, %fire, "missed fire times caught up with one run");
                }
                let mut job = ExtractionJob::new(dataset, RunReason::Schedule);
                job.scheduled_for = Some(fire);
                due.push(job);
            }
        }
        if due.is_empty() {
            return Ok(TickReport::default());
        }
        let won = self.queue.enqueue(&due).await?;
        let fired_now: Vec<(&str, i64)> = due
            .iter()
            .map(|job| {
                let fire = job.scheduled_for.expect("scheduled jobs carry their time");
                (job.dataset_id.as_str(), fire.timestamp())
            })
            .collect();
        self.queue.record_fired(&fired_now).await?;
        let (enqueued, lost): (Vec<_>, Vec<_>) =
            due.into_iter().zip(won).partition(|(_, won)| *won);
        let enqueued: Vec<ExtractionJob> = enqueued.into_iter().map(|(job, _)| job).collect();
        self.catalog.insert_queued_runs(&enqueued).await?;
        self.metrics
            .add(Counter::JobsEnqueued, enqueued.len() as u64)
            .await;
        for job in &enqueued {
            tracing::info!(dataset = %job.dataset_id, run_id = %job.run_id,
                scheduled_for = ?job.scheduled_for, "enqueued");
        }
        Ok(TickReport {
            enqueued,
            already_enqueued: lost.len(),
        })
    }

    /// Loads the scheduled datasets; a bad cron is logged and that dataset skipped.
    async fn refresh(&mut self) -> Result<(), SchedulerError> {
        let records = self.catalog.scheduled_datasets().await?;
        let mut plans = HashMap::with_capacity(records.len());
        for record in records {
            if let Some(existing) = self.plans.remove(&record.dataset_id)
                && existing.version == record.version
            {
                plans.insert(record.dataset_id, existing);
                continue;
            }
            let cron = record.spec.cron.as_deref().unwrap_or_default();
            match CronSchedule::parse(cron, record.spec.time_zone.as_deref()) {
                Ok(schedule) => {
                    plans.insert(
                        record.dataset_id,
                        Planned {
                            version: record.version,
                            schedule,
                            since: record.updated_at,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(dataset = %record.dataset_id, error = %e, "dataset not scheduled")
                }
            }
        }
        self.plans = plans;
        self.refreshed_at = Some(std::time::Instant::now());
        Ok(())
    }

    /// Sleeps until the earliest next fire time, but never past the refresh or `max_sleep`.
    fn sleep_after(&self, now: DateTime<Utc>) -> Duration {
        let next = self
            .plans
            .values()
            .filter_map(|p| p.schedule.next_after(now))
            .min();
        let until_fire = next
            .and_then(|t| (t - now).to_std().ok())
            .unwrap_or(self.settings.max_sleep);
        // Wake a hair after the fire time so `now` is past it.
        (until_fire + Duration::from_millis(5)).min(self.settings.max_sleep)
    }

    /// Number of datasets being scheduled.
    pub fn scheduled(&self) -> usize {
        self.plans.len()
    }

    /// Forces the next pass to re-read the catalog.
    pub fn invalidate(&mut self) {
        self.refreshed_at = None;
    }
}
