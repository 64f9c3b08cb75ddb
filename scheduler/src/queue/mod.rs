//! The job queue and the state workers and schedulers share besides the catalog: the dead set,
//! workers' heartbeats, cancel requests, per-dataset locks, the scheduler's last fired times and
//! the metrics counters.
//!
//! - `redis`: production, on apalis-redis; any number of schedulers, API replicas and workers.
//! - `sqlite`: the embedded mode (`carga serve`), the same tables in the catalog's SQLite file,
//!   for one process that schedules, serves the API and runs the jobs.

pub mod redis;
pub mod sqlite;

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use crate::job::ExtractionJob;
pub use redis::RedisQueue;
pub use sqlite::SqliteQueue;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("queue: {0}")]
    Apalis(#[from] apalis_redis::Error),
    #[error("queue database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("queued job '{run_id}' does not parse: {message}")]
    BadJob { run_id: String, message: String },
}

pub type Result<T> = std::result::Result<T, QueueError>;

/// Queue settings shared by schedulers (push side) and workers (take side).
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub redis_url: String,
    /// Queue name; every key of the queue starts with it.
    pub name: String,
    /// A worker that misses this many heartbeats is dead and its jobs go back to the queue.
    pub heartbeat: Duration,
    pub missed_heartbeats: usize,
    /// How long a scheduled time's idempotency key is kept.
    pub idempotency_ttl: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            redis_url: "redis://127.0.0.1:6379".into(),
            name: "carga:extractions".into(),
            heartbeat: Duration::from_secs(10),
            missed_heartbeats: 3,
            idempotency_ttl: Duration::from_secs(14 * 24 * 3600),
        }
    }
}

/// Counts operators watch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct QueueStats {
    /// Waiting to be taken now.
    pub queued: u64,
    /// Waiting for their time (delayed or retry).
    pub scheduled: u64,
    /// Held by a worker.
    pub running: u64,
    pub dead: u64,
    pub workers: u64,
}

/// How a taken job ended, as the worker reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// Finished (committed, or failed for good with its history recorded): the job is removed.
    Done,
    /// Gave up: kept in the dead set with the reason.
    Dead(String),
    /// Back in the queue, due after `delay`: the dataset was busy, the catalog unreachable, or an
    /// attempt failed and the next one waits out its backoff there (not in a worker's slot).
    /// `job` replaces the queued body (the next attempt's number).
    Later {
        delay: Duration,
        reason: String,
        job: Option<Box<ExtractionJob>>,
    },
}

/// A job as a worker takes it: the job and how many times it has been taken (this time included).
#[derive(Debug, Clone, PartialEq)]
pub struct TakenJob {
    pub job: ExtractionJob,
    pub takes: usize,
}

/// A worker as the queue sees it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerInfo {
    pub name: String,
    pub alive: bool,
    pub last_seen: chrono::DateTime<chrono::Utc>,
    /// Run ids of the jobs it holds.
    pub running: Vec<String>,
}

/// The queue in use; every operation is the same whichever holds it.
#[derive(Clone)]
pub enum JobQueue {
    Redis(RedisQueue),
    Embedded(SqliteQueue),
}

macro_rules! on_queue {
    ($queue:expr, |$q:ident| $body:expr) => {
        match $queue {
            JobQueue::Redis($q) => $body,
            JobQueue::Embedded($q) => $body,
        }
    };
}

impl JobQueue {
    /// The production queue on Redis.
    pub async fn connect(settings: &QueueSettings) -> Result<Self> {
        Ok(Self::Redis(RedisQueue::connect(settings).await?))
    }

    /// Takes the oldest due job for `worker` (registering it as alive). `None` when nothing is due.
    pub async fn take(&self, worker: &str) -> Result<Option<TakenJob>> {
        on_queue!(self, |q| q.take(worker).await)
    }

    /// Records how a job `worker` took ended.
    pub async fn settle(&self, worker: &str, run_id: &str, settlement: &Settlement) -> Result<()> {
        on_queue!(self, |q| q.settle(worker, run_id, settlement).await)
    }

    /// Marks `worker` alive now (registering it again if the queue forgot it).
    pub async fn heartbeat(&self, worker: &str) -> Result<()> {
        on_queue!(self, |q| q.heartbeat(worker).await)
    }

    /// Puts back the jobs of workers (other than `worker`) whose heartbeats stopped; each job is
    /// handed back once. Returns their run ids.
    pub async fn recover_orphans(&self, worker: &str) -> Result<Vec<String>> {
        on_queue!(self, |q| q.recover_orphans(worker).await)
    }

    /// A worker leaving cleanly, holding no job.
    pub async fn deregister(&self, worker: &str) -> Result<()> {
        on_queue!(self, |q| q.deregister(worker).await)
    }

    /// Waits until work may be there: a push in this process (embedded) or `at_most`.
    pub async fn wait_for_work(&self, at_most: Duration) {
        match self {
            JobQueue::Redis(_) => tokio::time::sleep(at_most).await,
            JobQueue::Embedded(q) => q.wait_for_push(at_most).await,
        }
    }

    /// The queue's settings (heartbeats, name).
    pub fn settings(&self) -> &QueueSettings {
        on_queue!(self, |q| q.settings())
    }

    /// Whether the queue still holds the job (queued, delayed, running or dead).
    pub async fn contains(&self, run_id: &str) -> Result<bool> {
        on_queue!(self, |q| q.contains(run_id).await)
    }

    /// Pushes jobs and returns, for each, whether this call enqueued it (false: the same
    /// scheduled time was already enqueued, by another replica or an earlier pass).
    pub async fn enqueue(&self, jobs: &[ExtractionJob]) -> Result<Vec<bool>> {
        on_queue!(self, |q| q.enqueue(jobs).await)
    }

    pub async fn stats(&self) -> Result<QueueStats> {
        on_queue!(self, |q| q.stats().await)
    }

    /// Ids of the jobs in the dead set.
    pub async fn dead_jobs(&self) -> Result<Vec<String>> {
        on_queue!(self, |q| q.dead_jobs().await)
    }

    pub async fn is_dead(&self, run_id: &str) -> Result<bool> {
        on_queue!(self, |q| q.is_dead(run_id).await)
    }

    /// Workers with their last heartbeat (alive if within `alive_within`) and the jobs they hold.
    pub async fn workers(&self, alive_within: Duration) -> Result<Vec<WorkerInfo>> {
        on_queue!(self, |q| q.workers(alive_within).await)
    }

    /// Takes a job out of the queue if no worker has fetched it yet. True when it was removed.
    pub async fn remove_queued(&self, run_id: &str) -> Result<bool> {
        on_queue!(self, |q| q.remove_queued(run_id).await)
    }

    /// Asks the worker holding (or about to take) a job to stop it; kept a day.
    pub async fn request_cancel(&self, run_id: &str) -> Result<()> {
        on_queue!(self, |q| q.request_cancel(run_id).await)
    }

    pub async fn is_cancelled(&self, run_id: &str) -> Result<bool> {
        on_queue!(self, |q| q.is_cancelled(run_id).await)
    }

    /// Drops what the queue still holds of a finished job (dead-set entry, data).
    pub async fn forget(&self, run_id: &str) -> Result<()> {
        on_queue!(self, |q| q.forget(run_id).await)
    }

    pub async fn ping(&self) -> Result<()> {
        on_queue!(self, |q| q.ping().await)
    }

    /// Each dataset's last fired cron time (Unix seconds), as the schedulers recorded it.
    pub async fn last_fired(&self) -> Result<HashMap<String, i64>> {
        on_queue!(self, |q| q.last_fired().await)
    }

    pub async fn record_fired(&self, fired: &[(&str, i64)]) -> Result<()> {
        on_queue!(self, |q| q.record_fired(fired).await)
    }

    /// Adds to counters of a group (`field` → amount).
    pub async fn add_counters(&self, group: &str, adds: &[(String, f64)]) -> Result<()> {
        on_queue!(self, |q| q.add_counters(group, adds).await)
    }

    pub async fn counters(&self, group: &str) -> Result<HashMap<String, f64>> {
        on_queue!(self, |q| q.counters(group).await)
    }

    /// Takes `key` for `token` for `ttl` if nobody holds it. True when taken.
    pub async fn try_lock(&self, key: &str, token: &str, ttl: Duration) -> Result<bool> {
        on_queue!(self, |q| q.try_lock(key, token, ttl).await)
    }

    /// Extends a held lock. False when `token` no longer holds it.
    pub async fn renew_lock(&self, key: &str, token: &str, ttl: Duration) -> Result<bool> {
        on_queue!(self, |q| q.renew_lock(key, token, ttl).await)
    }

    /// Releases a lock if `token` still holds it.
    pub async fn release_lock(&self, key: &str, token: &str) -> Result<()> {
        on_queue!(self, |q| q.release_lock(key, token).await)
    }
}
