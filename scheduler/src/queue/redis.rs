//! The production queue on Redis, in apalis-redis' layout: scheduled and on-demand runs go in
//! through apalis-redis' push script, workers take them out with heartbeats, and jobs that give up
//! land in its dead set, so apalis' own tools read the same keys.
//!
//! The take side (take, settle, heartbeat, hand-over of a stopped worker's jobs) is ours, a few
//! Lua scripts over those keys, because apalis-core 1.0's worker ends on the first backend error
//! (a Redis restart ends every worker process), refuses to re-register a name seen within the
//! orphan threshold, and reschedules a failed task one second per attempt whatever the backoff.
//! Here a fault is retried until Redis answers again, a heartbeat re-registers a worker the queue
//! forgot, and a failed attempt waits out its backoff in the scheduled set, not in a worker.
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

use super::{QueueError, QueueSettings, QueueStats, Result, Settlement, TakenJob, WorkerInfo};
use crate::job::ExtractionJob;

const RELEASE_LOCK: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#;
const RENEW_LOCK: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) else return 0 end"#;

/// Registers the worker, promotes due scheduled jobs, and moves the oldest job to the worker's
/// in-flight set. A job whose data is gone (removed while queued) is skipped.
/// KEYS: workers, active list, in-flight prefix, data hash, meta prefix, scheduled set.
/// ARGV: now (s), worker.
const TAKE: &str = r#"
redis.call('zadd', KEYS[1], ARGV[1], ARGV[2])
local due = redis.call('zrangebyscore', KEYS[6], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, id in ipairs(due) do
  redis.call('rpush', KEYS[2], id)
  redis.call('zrem', KEYS[6], id)
end
while true do
  local id = redis.call('lpop', KEYS[2])
  if not id then return false end
  local data = redis.call('hget', KEYS[4], id)
  if data then
    redis.call('sadd', KEYS[3] .. ':' .. ARGV[2], id)
    local meta = KEYS[5] .. ':' .. id
    local takes = redis.call('hincrby', meta, 'carga_takes', 1)
    redis.call('hset', meta, 'status', 'Running', 'lock_by', ARGV[2])
    return {id, data, takes}
  end
end
"#;

/// Ends a taken job: removed (done), dead, or back in the scheduled set at a due time, with a
/// new body when given. Leaves a job alone that another worker holds now.
/// KEYS: in-flight prefix, data hash, meta prefix, dead set, scheduled set.
/// ARGV: worker, id, done|dead|later, reason, due (s), new body or ''.
const SETTLE: &str = r#"
local held = redis.call('srem', KEYS[1] .. ':' .. ARGV[1], ARGV[2])
local meta = KEYS[3] .. ':' .. ARGV[2]
if held == 0 and redis.call('hget', meta, 'status') == 'Running' then return 0 end
if ARGV[3] == 'done' then
  redis.call('hdel', KEYS[2], ARGV[2])
  redis.call('del', meta)
elseif ARGV[3] == 'dead' then
  redis.call('sadd', KEYS[4], ARGV[2])
  redis.call('hset', meta, 'status', 'Killed', 'carga_error', ARGV[4])
else
  if ARGV[6] ~= '' then redis.call('hset', KEYS[2], ARGV[2], ARGV[6]) end
  if redis.call('hexists', KEYS[2], ARGV[2]) == 0 then return 0 end
  redis.call('zadd', KEYS[5], ARGV[5], ARGV[2])
  redis.call('hset', meta, 'status', 'Pending', 'carga_error', ARGV[4])
end
return 1
"#;

/// Hands the jobs of workers whose last heartbeat is before ARGV[1] (all but ARGV[2], the caller)
/// back to the active list, once: the in-flight set is removed with the move.
/// KEYS: workers, active list, in-flight prefix.
const RECOVER: &str = r#"
local gone = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1])
local ids = {}
for _, worker in ipairs(gone) do
  if worker ~= ARGV[2] then
    local key = KEYS[3] .. ':' .. worker
    for _, id in ipairs(redis.call('smembers', key)) do
      redis.call('rpush', KEYS[2], id)
      table.insert(ids, id)
    end
    redis.call('del', key)
    redis.call('zrem', KEYS[1], worker)
  end
end
return ids
"#;

#[derive(Clone)]
pub struct RedisQueue {
    conn: ConnectionManager,
    config: Config,
    settings: QueueSettings,
}

impl RedisQueue {
    pub async fn connect(settings: &QueueSettings) -> Result<Self> {
        // Lazy, so a process starts while Redis is down; every command times out, so a fault
        // surfaces as an error the caller retries rather than a call that hangs.
        let client = redis::Client::open(settings.redis_url.as_str())?;
        let options = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_max_delay(Duration::from_secs(5));
        let conn = ConnectionManager::new_lazy_with_config(client, options)?;
        let config = Config::default()
            .queue(&settings.name)
            // One job per fetch: a worker busy with a long extraction must not hoard waiting jobs.
            .batch_size(1)
            .heartbeat_interval(settings.heartbeat)
            .missed_heartbeats(settings.missed_heartbeats)
            .idempotency_ttl(Some(settings.idempotency_ttl))
            .emit_events(false);
        Ok(Self {
            conn,
            config,
            settings: settings.clone(),
        })
    }

    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    /// A key of this installation: every key Carga keeps besides apalis' starts with the queue
    /// name, so two installations on one Redis share nothing.
    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.config.queue.as_ref())
    }

    pub async fn take(&self, worker: &str) -> Result<Option<TakenJob>> {
        let mut conn = self.conn.clone();
        let taken: Option<(String, Vec<u8>, i64)> = redis::Script::new(TAKE)
            .key(self.config.workers_set())
            .key(self.config.active_jobs_list())
            .key(self.config.inflight_jobs_set())
            .key(self.config.job_data_hash())
            .key(self.config.job_meta_hash())
            .key(self.config.scheduled_jobs_set())
            .arg(chrono::Utc::now().timestamp())
            .arg(worker)
            .invoke_async(&mut conn)
            .await?;
        let Some((run_id, body, takes)) = taken else {
            return Ok(None);
        };
        let job = serde_json::from_slice(&body).map_err(|e| QueueError::BadJob {
            run_id,
            message: e.to_string(),
        })?;
        Ok(Some(TakenJob {
            job,
            takes: usize::try_from(takes).unwrap_or(usize::MAX),
        }))
    }

    pub async fn settle(&self, worker: &str, run_id: &str, settlement: &Settlement) -> Result<()> {
        let (kind, reason, due, body) = match settlement {
            Settlement::Done => ("done", String::new(), 0, Vec::new()),
            Settlement::Dead(reason) => ("dead", reason.clone(), 0, Vec::new()),
            Settlement::Later { delay, reason, job } => (
                "later",
                reason.clone(),
                chrono::Utc::now().timestamp() + delay.as_secs_f64().ceil() as i64,
                job.as_ref()
                    .map(|j| serde_json::to_vec(j).expect("a job serializes"))
                    .unwrap_or_default(),
            ),
        };
        let mut conn = self.conn.clone();
        let _: i64 = redis::Script::new(SETTLE)
            .key(self.config.inflight_jobs_set())
            .key(self.config.job_data_hash())
            .key(self.config.job_meta_hash())
            .key(self.config.dead_jobs_set())
            .key(self.config.scheduled_jobs_set())
            .arg(worker)
            .arg(run_id)
            .arg(kind)
            .arg(reason)
            .arg(due)
            .arg(body)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    pub async fn heartbeat(&self, worker: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .zadd(
                self.config.workers_set(),
                worker,
                chrono::Utc::now().timestamp(),
            )
            .await?;
        Ok(())
    }

    pub async fn recover_orphans(&self, worker: &str) -> Result<Vec<String>> {
        let allowance =
            self.settings.heartbeat.as_secs_f64() * self.settings.missed_heartbeats.max(1) as f64;
        let expired_before = chrono::Utc::now().timestamp() - allowance.ceil() as i64;
        let mut conn = self.conn.clone();
        Ok(redis::Script::new(RECOVER)
            .key(self.config.workers_set())
            .key(self.config.active_jobs_list())
            .key(self.config.inflight_jobs_set())
            .arg(expired_before)
            .arg(worker)
            .invoke_async(&mut conn)
            .await?)
    }

    pub async fn deregister(&self, worker: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let held: u64 = conn
            .scard(format!("{}:{worker}", self.config.inflight_jobs_set()))
            .await?;
        if held == 0 {
            let _: () = conn.zrem(self.config.workers_set(), worker).await?;
        }
        Ok(())
    }

    pub async fn contains(&self, run_id: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        Ok(conn.hexists(self.config.job_data_hash(), run_id).await?)
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
        let keyed: Vec<(usize, String)> = jobs
            .iter()
            .enumerate()
            .filter_map(|(i, job)| {
                job.idempotency_key()
                    .map(|key| (i, format!("{}:{key}", self.config.idempotency_key_set())))
            })
            .collect();
        let keys: Vec<&str> = keyed.iter().map(|(_, k)| k.as_str()).collect();
        // Keys owned before this call were won by an earlier push, even one of this same job.
        let owned_before: Vec<Option<String>> = if keys.is_empty() {
            Vec::new()
        } else {
            conn.mget(&keys).await?
        };
        // Pushes in slices so a thousand due datasets do not become one huge script call.
        for chunk in tasks.chunks(500) {
            apalis_redis::queries::push_tasks(&mut conn, &self.config, chunk).await?;
        }
        let mut won = vec![true; jobs.len()];
        if !keyed.is_empty() {
            let owners: Vec<Option<String>> = conn.mget(&keys).await?;
            for (((index, _), owner), before) in keyed.iter().zip(owners).zip(owned_before) {
                won[*index] =
                    before.is_none() && owner.as_deref() == Some(jobs[*index].run_id.as_str());
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
        self.key(&format!("carga:cancel:{run_id}"))
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
        self.key("scheduler:last_fired")
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

    /// Counters are hashes of the installation (shared by its replicas, not by another
    /// installation on the same Redis).
    pub async fn add_counters(&self, group: &str, adds: &[(String, f64)]) -> Result<()> {
        let group = self.key(group);
        let mut pipe = redis::pipe();
        for (field, by) in adds {
            pipe.cmd("HINCRBYFLOAT")
                .arg(&group)
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
        let raw: HashMap<String, String> = conn.hgetall(self.key(group)).await?;
        Ok(raw
            .into_iter()
            .filter_map(|(field, value)| value.parse().ok().map(|v| (field, v)))
            .collect())
    }

    pub async fn try_lock(&self, key: &str, token: &str, ttl: Duration) -> Result<bool> {
        let mut conn = self.conn.clone();
        let taken: Option<String> = redis::cmd("SET")
            .arg(self.key(key))
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
            .key(self.key(key))
            .arg(token)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(renewed == 1)
    }

    pub async fn release_lock(&self, key: &str, token: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::Script::new(RELEASE_LOCK)
            .key(self.key(key))
            .arg(token)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}
