//! The embedded mode's queue, in the catalog's SQLite file (tables in
//! `migrations/sqlite/0002_queue.sql`): one process schedules, serves the API and runs the jobs,
//! and what it held survives a restart.
//!
//! It behaves as the Redis queue does for what the rest of Carga sees: a scheduled time is
//! enqueued once (an idempotency row names the winning job), a worker takes one job at a time
//! atomically, heartbeats mark live workers and a job held by a worker that stopped beating (a
//! process killed mid-run) goes back to the queue, a job that gives up lands in the dead set.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sqlx::SqlitePool;
use tokio::sync::Notify;

use super::{QueueError, QueueSettings, QueueStats, Result, Settlement, TakenJob, WorkerInfo};
use crate::job::ExtractionJob;

#[derive(Clone)]
pub struct SqliteQueue {
    pool: SqlitePool,
    settings: QueueSettings,
    /// Wakes waiting workers when a job is pushed in this process.
    pushed: Arc<Notify>,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl SqliteQueue {
    /// The queue in `pool` (the catalog's file, migrated).
    pub fn new(pool: SqlitePool, settings: QueueSettings) -> Self {
        Self {
            pool,
            settings,
            pushed: Arc::new(Notify::new()),
        }
    }

    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    pub async fn enqueue(&self, jobs: &[ExtractionJob]) -> Result<Vec<bool>> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM queue_idempotency WHERE expires_at < $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let mut won = Vec::with_capacity(jobs.len());
        for job in jobs {
            if let Some(key) = job.idempotency_key() {
                let claimed = sqlx::query(
                    "INSERT INTO queue_idempotency (key, run_id, expires_at) VALUES ($1, $2, $3)
                     ON CONFLICT (key) DO NOTHING",
                )
                .bind(&key)
                .bind(&job.run_id)
                .bind(now + millis(self.settings.idempotency_ttl))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if claimed == 0 {
                    won.push(false);
                    continue;
                }
            }
            let body = serde_json::to_string(job).expect("a job serializes");
            let pushed = sqlx::query(
                "INSERT INTO queue_jobs (run_id, job, state, run_at, enqueued_at)
                 VALUES ($1, $2, 'queued', $3, $3) ON CONFLICT (run_id) DO NOTHING",
            )
            .bind(&job.run_id)
            .bind(body)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            won.push(pushed == 1);
        }
        tx.commit().await?;
        self.pushed.notify_waiters();
        Ok(won)
    }

    /// Takes the oldest due job for `worker`, with how many times it has been taken (this time
    /// included). `None` when nothing is due.
    pub async fn take(&self, worker: &str) -> Result<Option<TakenJob>> {
        self.heartbeat(worker).await?;
        let taken: Option<(String, String, i64)> = sqlx::query_as(
            "UPDATE queue_jobs SET state = 'running', worker = $1, taken = taken + 1
             WHERE run_id = (SELECT run_id FROM queue_jobs WHERE state = 'queued' AND run_at <= $2
                             ORDER BY run_at, enqueued_at LIMIT 1)
             RETURNING run_id, job, taken",
        )
        .bind(worker)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        let Some((run_id, body, taken)) = taken else {
            return Ok(None);
        };
        let job = serde_json::from_str(&body).map_err(|e| QueueError::BadJob {
            run_id,
            message: e.to_string(),
        })?;
        Ok(Some(TakenJob {
            job,
            takes: usize::try_from(taken).unwrap_or(usize::MAX),
        }))
    }

    /// Records how a job `worker` took ended; a job another worker holds now is left alone.
    pub async fn settle(&self, worker: &str, run_id: &str, settlement: &Settlement) -> Result<()> {
        match settlement {
            Settlement::Done => {
                sqlx::query("DELETE FROM queue_jobs WHERE run_id = $1 AND (worker = $2 OR state <> 'running')")
                    .bind(run_id)
                    .bind(worker)
                    .execute(&self.pool)
                    .await?;
            }
            Settlement::Dead(reason) => {
                sqlx::query(
                    "UPDATE queue_jobs SET state = 'dead', worker = NULL, error = $2
                     WHERE run_id = $1 AND (worker = $3 OR state <> 'running')",
                )
                .bind(run_id)
                .bind(reason)
                .bind(worker)
                .execute(&self.pool)
                .await?;
            }
            Settlement::Later { delay, reason, job } => {
                let body = job
                    .as_ref()
                    .map(|j| serde_json::to_string(j).expect("a job serializes"));
                sqlx::query(
                    "UPDATE queue_jobs SET state = 'queued', worker = NULL, run_at = $2, error = $3,
                         job = COALESCE($5, job)
                     WHERE run_id = $1 AND (worker = $4 OR state <> 'running')",
                )
                .bind(run_id)
                .bind(now_ms() + millis(*delay))
                .bind(reason)
                .bind(worker)
                .bind(body)
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }

    pub async fn contains(&self, run_id: &str) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM queue_jobs WHERE run_id = $1")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    /// Waits until a job is pushed in this process or `at_most` passes.
    pub async fn wait_for_push(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.pushed.notified()).await;
    }

    /// A worker seen since this time (ms) is alive: it missed fewer heartbeats than allowed.
    fn alive_after(&self, now: i64) -> i64 {
        let missed = i64::try_from(self.settings.missed_heartbeats.max(1)).unwrap_or(i64::MAX);
        now.saturating_sub(millis(self.settings.heartbeat).saturating_mul(missed))
    }

    /// Marks `worker` alive now.
    pub async fn heartbeat(&self, worker: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO queue_workers (name, last_seen) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET last_seen = EXCLUDED.last_seen",
        )
        .bind(worker)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A worker leaving cleanly: its row goes (it holds no job any more).
    pub async fn deregister(&self, worker: &str) -> Result<()> {
        sqlx::query("DELETE FROM queue_workers WHERE name = $1")
            .bind(worker)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Puts back the jobs held by workers whose heartbeat is older than the missed-heartbeat
    /// allowance (a process killed mid-run), and forgets workers gone for a day. Returns the run
    /// ids handed back. (`worker`, the caller, is alive: it just beat.)
    pub async fn recover_orphans(&self, worker: &str) -> Result<Vec<String>> {
        let _ = worker;
        let now = now_ms();
        let alive_after = self.alive_after(now);
        let orphans: Vec<(String,)> = sqlx::query_as(
            "UPDATE queue_jobs SET state = 'queued', worker = NULL, run_at = $2
             WHERE state = 'running'
               AND (worker IS NULL OR worker NOT IN
                    (SELECT name FROM queue_workers WHERE last_seen >= $1))
             RETURNING run_id",
        )
        .bind(alive_after)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        sqlx::query("DELETE FROM queue_workers WHERE last_seen < $1")
            .bind(now - 86_400_000)
            .execute(&self.pool)
            .await?;
        if !orphans.is_empty() {
            self.pushed.notify_waiters();
        }
        Ok(orphans.into_iter().map(|(id,)| id).collect())
    }

    pub async fn stats(&self) -> Result<QueueStats> {
        let now = now_ms();
        let (queued, scheduled, running, dead): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT
                 COALESCE(SUM(state = 'queued' AND run_at <= $1), 0),
                 COALESCE(SUM(state = 'queued' AND run_at > $1), 0),
                 COALESCE(SUM(state = 'running'), 0),
                 COALESCE(SUM(state = 'dead'), 0)
             FROM queue_jobs",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        let workers: i64 =
            sqlx::query_scalar("SELECT count(*) FROM queue_workers WHERE last_seen >= $1")
                .bind(self.alive_after(now))
                .fetch_one(&self.pool)
                .await?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(QueueStats {
            queued: count(queued),
            scheduled: count(scheduled),
            running: count(running),
            dead: count(dead),
            workers: count(workers),
        })
    }

    pub async fn dead_jobs(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT run_id FROM queue_jobs WHERE state = 'dead' ORDER BY enqueued_at",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn is_dead(&self, run_id: &str) -> Result<bool> {
        let dead: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM queue_jobs WHERE run_id = $1 AND state = 'dead'")
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(dead.is_some())
    }

    pub async fn workers(&self, alive_within: Duration) -> Result<Vec<WorkerInfo>> {
        let now = now_ms();
        let seen: Vec<(String, i64)> =
            sqlx::query_as("SELECT name, last_seen FROM queue_workers ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        let held: Vec<(String, String)> = sqlx::query_as(
            "SELECT worker, run_id FROM queue_jobs WHERE state = 'running' AND worker IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(seen
            .into_iter()
            .map(|(name, last_seen)| WorkerInfo {
                alive: now - last_seen <= millis(alive_within),
                last_seen: chrono::DateTime::from_timestamp_millis(last_seen).unwrap_or_default(),
                running: held
                    .iter()
                    .filter(|(worker, _)| *worker == name)
                    .map(|(_, run_id)| run_id.clone())
                    .collect(),
                name,
            })
            .collect())
    }

    pub async fn remove_queued(&self, run_id: &str) -> Result<bool> {
        let removed = sqlx::query("DELETE FROM queue_jobs WHERE run_id = $1 AND state = 'queued'")
            .bind(run_id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(removed == 1)
    }

    pub async fn request_cancel(&self, run_id: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO queue_cancels (run_id, expires_at) VALUES ($1, $2)
             ON CONFLICT (run_id) DO UPDATE SET expires_at = EXCLUDED.expires_at",
        )
        .bind(run_id)
        .bind(now_ms() + 86_400_000)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn is_cancelled(&self, run_id: &str) -> Result<bool> {
        let cancelled: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM queue_cancels WHERE run_id = $1 AND expires_at >= $2",
        )
        .bind(run_id)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        Ok(cancelled.is_some())
    }

    pub async fn forget(&self, run_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM queue_jobs WHERE run_id = $1 AND state <> 'running'")
            .bind(run_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn last_fired(&self) -> Result<HashMap<String, i64>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT dataset_id, fired_at FROM scheduler_fired")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }

    pub async fn record_fired(&self, fired: &[(&str, i64)]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for (dataset, at) in fired {
            sqlx::query(
                "INSERT INTO scheduler_fired (dataset_id, fired_at) VALUES ($1, $2)
                 ON CONFLICT (dataset_id) DO UPDATE SET fired_at = EXCLUDED.fired_at",
            )
            .bind(*dataset)
            .bind(*at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn add_counters(&self, group: &str, adds: &[(String, f64)]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for (field, by) in adds {
            sqlx::query(
                "INSERT INTO metric_counters (grp, field, value) VALUES ($1, $2, $3)
                 ON CONFLICT (grp, field) DO UPDATE SET value = value + EXCLUDED.value",
            )
            .bind(group)
            .bind(field)
            .bind(*by)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn counters(&self, group: &str) -> Result<HashMap<String, f64>> {
        let rows: Vec<(String, f64)> =
            sqlx::query_as("SELECT field, value FROM metric_counters WHERE grp = $1")
                .bind(group)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }

    pub async fn try_lock(&self, key: &str, token: &str, ttl: Duration) -> Result<bool> {
        let now = now_ms();
        let taken = sqlx::query(
            "INSERT INTO dataset_locks (key, token, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token, expires_at = EXCLUDED.expires_at
             WHERE dataset_locks.expires_at < $4",
        )
        .bind(key)
        .bind(token)
        .bind(now + millis(ttl))
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(taken == 1)
    }

    pub async fn renew_lock(&self, key: &str, token: &str, ttl: Duration) -> Result<bool> {
        let renewed =
            sqlx::query("UPDATE dataset_locks SET expires_at = $3 WHERE key = $1 AND token = $2")
                .bind(key)
                .bind(token)
                .bind(now_ms() + millis(ttl))
                .execute(&self.pool)
                .await?
                .rows_affected();
        Ok(renewed == 1)
    }

    pub async fn release_lock(&self, key: &str, token: &str) -> Result<()> {
        sqlx::query("DELETE FROM dataset_locks WHERE key = $1 AND token = $2")
            .bind(key)
            .bind(token)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
