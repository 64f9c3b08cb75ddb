//! The production queue on Redis, through apalis-redis: scheduled and on-demand runs go in here, workers take
//! them out with heartbeats, and jobs that give up land in apalis' dead set.
//!
//! Enqueueing goes through apalis-redis' own push script, with the idempotency key of a scheduled
//! time: two scheduler replicas pushing the same (dataset, time) leave one task. The key's owner
//! (the task id it names) tells each replica whether its push won, so only the winner records a
//! queued run.

use std::collections::HashMap;
use std::time::Duration;

use apalis::prelude::{TaskBuilder, TaskId};
use apalis_redis::{Config, ConnectionManager, RedisStorage};
use redis::AsyncCommands;

use super::{QueueSettings, QueueStats, Result, WorkerInfo};
use crate::job::ExtractionJob;

const RELEASE_LOCK: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#;
const RENEW_LOCK: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) else return 0 end"#;

#[derive(Clone)]
pub struct RedisQueue {
    conn: ConnectionManager,
    config: Config,
}

impl RedisQueue {
    pub async fn connect(settings: &QueueSettings) -> Result<Self> {
        let conn = apalis_redis::connect(settings.redis_url.as_str()).await?;
        let config = Config::default()
            .queue(&settings.name)
            // One job per fetch: a worker busy with a long extraction must not hoard waiting jobs.
            .batch_size(1)
            .heartbeat_interval(settings.heartbeat)
            .missed_heartbeats(settings.missed_heartbeats)
            .idempotency_ttl(Some(settings.idempotency_ttl))
            .emit_events(false);
        Ok(Self { conn, config })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The apalis backend a worker consumes.
    pub fn storage(&self) -> RedisStorage<ExtractionJob> {
        RedisStorage::new(self.conn.clone()).with_config(self.config.clone())
    }

    /// Pushes jobs and returns, for each, whether this call enqueued it (false: another replica
    /// already enqueued the same scheduled time).
    pub async fn enqueue(&self, jobs: &[ExtractionJob]) -> Result<Vec<bool>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let tasks: Vec<_> = jobs
            .iter()
            .map(|job| {
                let mut task = TaskBuilder::new(serde_json::to_vec(job).expect("job serializes"))
                    .task_id(TaskId::from_string(job.run_id.clone()));
                if let Some(key) = job.idempotency_key() {
                    task = task.idempotency_key(key);
                }
                task.build()
            })
            .collect();
        let mut conn = self.conn.clone();
        // Pushes in slices so a thousand due datasets do not become one huge script call.
        for chunk in tasks.chunks(500) {
            apalis_redis::queries::push_tasks(&mut conn, &self.config, chunk).await?;
        }
        let keyed: Vec<(usize, String)> = jobs
            .iter()
            .enumerate()
            .filter_map(|(i, job)| {
                job.idempotency_key()
                    .map(|key| (i, format!("{}:{key}", self.config.idempotency_key_set())))
            })
            .collect();
        let mut won = vec![true; jobs.len()];
        if !keyed.is_empty() {
            let keys: Vec<&str> = keyed.iter().map(|(_, k)| k.as_str()).collect();
            let owners: Vec<Option<String>> = conn.mget(&keys).await?;
            for ((index, _), owner) in keyed.iter().zip(owners) {
                won[*index] = owner.as_deref() == Some(jobs[*index].run_id.as_str());
            }
        }
        Ok(won)
    }

    pub async fn stats(&self) -> Result<QueueStats> {
        let mut conn = self.conn.clone();
        let workers: Vec<String> = conn.zrange(self.config.workers_set(), 0, -1).await?;
        // apalis-redis pushes every task through its scheduled set (at "now" when not delayed)
        // and moves due ones to the active list when a worker fetches: both count as queued.
        let now = chrono::Utc::now().timestamp();
        let mut pipe = redis::pipe();
        pipe.llen(self.config.active_jobs_list())
            .zcount(self.config.scheduled_jobs_set(), "-inf", now)
            .zcount(self.config.scheduled_jobs_set(), format!("({now}"), "+inf")
            .scard(self.config.dead_jobs_set());
        for worker in &workers {
            pipe.scard(format!("{}:{worker}", self.config.inflight_jobs_set()));
        }
        let counts: Vec<u64> = pipe.query_async(&mut conn).await?;
        Ok(QueueStats {
            queued: counts[0] + counts[1],
            scheduled: counts[2],
            dead: counts[3],
            running: counts[4..].iter().sum(),
            workers: workers.len() as u64,
        })
    }

    /// Ids of the jobs in the dead set.
    pub async fn dead_jobs(&self) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        Ok(conn.smembers(self.config.dead_jobs_set()).await?)
    }

    /// Whether a job with this id is in the dead set.
    pub async fn is_dead(&self, run_id: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        Ok(conn.sismember(self.config.dead_jobs_set(), run_id).await?)
    }

    /// Live workers (heartbeat within `missed_heartbeats` intervals) with their last heartbeat
    /// and the jobs they hold.
    pub async fn workers(&self, alive_within: Duration) -> Result<Vec<WorkerInfo>> {
        let mut conn = self.conn.clone();
        let seen: Vec<(String, f64)> = conn
            .zrange_withscores(self.config.workers_set(), 0, -1)
            .await?;
        let now = chrono::Utc::now().timestamp() as f64;
        let mut workers = Vec::with_capacity(seen.len());
        for (name, last) in seen {
            let running: Vec<String> = conn
                .smembers(format!("{}:{name}", self.config.inflight_jobs_set()))
                .await?;
            workers.push(WorkerInfo {
                alive: now - last <= alive_within.as_secs_f64(),
                last_seen: chrono::DateTime::from_timestamp(last as i64, 0).unwrap_or_default(),
                name,
                running,
            });
        }
        Ok(workers)
    }

    /// Takes a job out of the queue if no worker has fetched it yet. True when it was removed.
    pub async fn remove_queued(&self, run_id: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        let removed: i64 = redis::Script::new(
            r#"
            local scheduled = redis.call('zrem', KEYS[1], ARGV[1])
            local active = redis.call('lrem', KEYS[2], 0, ARGV[1])
            if scheduled + active == 0 then return 0 end
            redis.call('hdel', KEYS[3], ARGV[1])
            redis.call('del', KEYS[4] .. ':' .. ARGV[1])
            return 1
            "#,
        )
        .key(self.config.scheduled_jobs_set())
        .key(self.config.active_jobs_list())
        .key(self.config.job_data_hash())
        .key(self.config.job_meta_hash())
        .arg(run_id)
        .invoke_async(&mut conn)
        .await?;
        Ok(removed == 1)
    }

    /// Asks the worker holding (or about to take) a job to stop it; kept a day.
    pub async fn request_cancel(&self, run_id: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = conn.set_ex(self.cancel_key(run_id), 1, 86_400).await?;
        Ok(())
    }

    pub async fn is_cancelled(&self, run_id: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        Ok(conn.exists(self.cancel_key(run_id)).await?)
    }

    fn cancel_key(&self, run_id: &str) -> String {
        format!("{}:carga:cancel:{run_id}", self.config.queue.as_ref())
    }

    /// Drops what the queue still holds of a finished job (dead-set entry, data, metadata).
    pub async fn forget(&self, run_id: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .srem(self.config.dead_jobs_set(), run_id)
            .hdel(self.config.job_data_hash(), run_id)
            .del(format!("{}:{run_id}", self.config.job_meta_hash()))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    fn last_fired_key(&self) -> String {
        format!("{}:scheduler:last_fired", self.config.queue.as_ref())
    }

    pub async fn last_fired(&self) -> Result<HashMap<String, i64>> {
        let mut conn = self.conn.clone();
        Ok(conn.hgetall(self.last_fired_key()).await?)
    }

    pub async fn record_fired(&self, fired: &[(&str, i64)]) -> Result<()> {
        let key = self.last_fired_key();
        let mut pipe = redis::pipe();
        for (dataset, at) in fired {
            pipe.hset(&key, *dataset, *at).ignore();
        }
        let mut conn = self.conn.clone();
        let _: () = pipe.query_async(&mut conn).await?;
        Ok(())
    }

    /// Counters are cluster-wide hashes (not per queue), so every replica adds to one set.
    pub async fn add_counters(&self, group: &str, adds: &[(String, f64)]) -> Result<()> {
        let mut pipe = redis::pipe();
        for (field, by) in adds {
            pipe.cmd("HINCRBYFLOAT")
                .arg(group)
                .arg(field)
                .arg(*by)
                .ignore();
        }
        let mut conn = self.conn.clone();
        let _: () = pipe.query_async(&mut conn).await?;
        Ok(())
    }

    pub async fn counters(&self, group: &str) -> Result<HashMap<String, f64>> {
        let mut conn = self.conn.clone();
        let raw: HashMap<String, String> = conn.hgetall(group).await?;
        Ok(raw
            .into_iter()
            .filter_map(|(field, value)| value.parse().ok().map(|v| (field, v)))
            .collect())
    }

    pub async fn try_lock(&self, key: &str, token: &str, ttl: Duration) -> Result<bool> {
        let mut conn = self.conn.clone();
        let taken: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        Ok(taken.is_some())
    }

    pub async fn renew_lock(&self, key: &str, token: &str, ttl: Duration) -> Result<bool> {
        let mut conn = self.conn.clone();
        let renewed: i64 = redis::Script::new(RENEW_LOCK)
            .key(key)
            .arg(token)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(renewed == 1)
    }

    pub async fn release_lock(&self, key: &str, token: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::Script::new(RELEASE_LOCK)
            .key(key)
            .arg(token)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}
