//! At most one running extraction per dataset: a lock with a TTL kept where the queue keeps its
//! state (Redis; the embedded SQLite file), renewed while the run lasts, released only by its
//! holder (a token check). A worker killed mid-run stops renewing, so the lock expires and the
//! job's next taker can proceed.

use std::time::Duration;

use carga_scheduler::JobQueue;
use carga_scheduler::queue::QueueError;
use tokio::task::JoinHandle;

pub struct DatasetLock {
    queue: JobQueue,
    key: String,
    token: String,
    renewal: JoinHandle<()>,
}

impl DatasetLock {
    /// Takes the dataset's lock, waiting up to `wait` for a holder to finish. `None`: still held.
    pub async fn acquire(
        queue: &JobQueue,
        dataset: &str,
        holder: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Option<Self>, QueueError> {
        let key = format!("lock:dataset:{dataset}");
        let token = format!("{holder}:{}", uuid::Uuid::now_v7());
        let deadline = tokio::time::Instant::now() + wait;
        while !queue.try_lock(&key, &token, ttl).await? {
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let renewal = {
            let (queue, key, token) = (queue.clone(), key.clone(), token.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    match queue.renew_lock(&key, &token, ttl).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::error!(%key, "dataset lock lost; the manifest commit still refuses a concurrent writer");
                            break;
                        }
                        Err(e) => tracing::warn!(%key, error = %e, "dataset lock renewal failed"),
                    }
                }
            })
        };
        Ok(Some(Self {
            queue: queue.clone(),
            key,
            token,
            renewal,
        }))
    }

    pub async fn release(self) {
        self.renewal.abort();
        if let Err(e) = self.queue.release_lock(&self.key, &self.token).await {
            tracing::warn!(key = %self.key, error = %e, "dataset lock release failed; it expires on its own");
        }
    }
}

impl Drop for DatasetLock {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}
