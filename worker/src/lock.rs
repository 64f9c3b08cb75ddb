//! At most one running extraction per dataset: a Redis lock with a TTL, renewed while the run
//! lasts, released only by its holder (a token check in Lua). A worker killed mid-run stops
//! renewing, so the lock expires and the job's next taker can proceed.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::task::JoinHandle;

const RELEASE: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#;
const RENEW: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) else return 0 end"#;

pub struct DatasetLock {
    conn: ConnectionManager,
    key: String,
    token: String,
    renewal: JoinHandle<()>,
}

impl DatasetLock {
    /// Takes the dataset's lock, waiting up to `wait` for a holder to finish. `None`: still held.
    pub async fn acquire(
        conn: &ConnectionManager,
        dataset: &str,
        holder: &str,
        ttl: Duration,
        wait: Duration,
    ) -> redis::RedisResult<Option<Self>> {
        let key = format!("carga:lock:dataset:{dataset}");
        let token = format!("{holder}:{}", uuid::Uuid::now_v7());
        let mut conn = conn.clone();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let taken: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .query_async(&mut conn)
                .await?;
            if taken.is_some() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let renewal = {
            let (mut conn, key, token) = (conn.clone(), key.clone(), token.clone());
            tokio::spawn(async move {
                let script = redis::Script::new(RENEW);
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    let renewed: redis::RedisResult<i64> = script
                        .key(&key)
                        .arg(&token)
                        .arg(ttl.as_millis() as u64)
                        .invoke_async(&mut conn)
                        .await;
                    match renewed {
                        Ok(1) => {}
                        Ok(_) => {
                            tracing::error!(%key, "dataset lock lost; the manifest commit still refuses a concurrent writer");
                            break;
                        }
                        Err(e) => tracing::warn!(%key, error = %e, "dataset lock renewal failed"),
                    }
                }
            })
        };
        Ok(Some(Self {
            conn,
            key,
            token,
            renewal,
        }))
    }

    pub async fn release(mut self) {
        self.renewal.abort();
        let result: redis::RedisResult<i64> = redis::Script::new(RELEASE)
            .key(&self.key)
            .arg(&self.token)
            .invoke_async(&mut self.conn)
            .await;
        if let Err(e) = result {
            tracing::warn!(key = %self.key, error = %e, "dataset lock release failed; it expires on its own");
        }
    }
}

impl Drop for DatasetLock {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}
