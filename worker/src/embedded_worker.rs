//! The embedded mode's take loop (`carga serve`): jobs come from the SQLite queue instead of
//! apalis-redis, with the same guarantees the Redis side gives a job:
//!
//! - a heartbeat every `heartbeat`; jobs held by a worker whose heartbeats stopped (a process
//!   killed mid-run, then started again) go back to the queue and are taken again;
//! - at most `concurrency` jobs at once, one taken per free slot;
//! - how a job ended decides its place: done, dead (gave up), or back in the queue shortly
//!   (its dataset is busy, or the catalog could not be reached); a job put back 25 times is
//!   dead, as apalis-redis does;
//! - on shutdown no new job is taken and the running ones finish.

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::{AbortError, BoxDynError};
use carga_scheduler::queue::SqliteQueue;
use carga_scheduler::queue::sqlite::Settlement;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::queue_worker::{Shared, handle_job};

/// The longest a free worker waits before looking at the queue again (a push in this process
/// wakes it at once; a retry's due time does not).
const POLL: Duration = Duration::from_millis(500);
/// Times a job may be put back before it is dead.
const MAX_TAKES: usize = 25;
/// Wait before a job put back is due again.
const PUT_BACK_DELAY: Duration = Duration::from_secs(1);

pub async fn run(
    shared: Arc<Shared>,
    queue: SqliteQueue,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let name = shared.settings.name.clone();
    queue.heartbeat(&name).await?;
    let beating = tokio::spawn(heartbeats(queue.clone(), name.clone()));
    let slots = Arc::new(Semaphore::new(shared.settings.concurrency.max(1)));
    let mut running = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot?,
        };
        match queue.take(&name).await {
            Ok(Some((job, taken))) => {
                let (shared, queue) = (shared.clone(), queue.clone());
                running.spawn(async move {
                    let ended = handle_job(&job, &shared, taken).await;
                    let settlement = settlement(ended, taken);
                    if let Err(e) = queue.settle(&job.run_id, &settlement).await {
                        // The job stays held by this worker; it goes back to the queue when
                        // this process's heartbeats stop.
                        tracing::error!(run_id = %job.run_id, error = %e, "job end not recorded in the queue");
                    }
                    drop(slot);
                });
            }
            Ok(None) => {
                drop(slot);
                tokio::select! {
                    () = &mut shutdown => break,
                    () = queue.wait_for_push(POLL) => {}
                }
            }
            Err(e) => {
                drop(slot);
                tracing::error!(error = %e, "taking a job failed; trying again");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(POLL) => {}
                }
            }
        }
        while let Some(ended) = running.try_join_next() {
            if let Err(e) = ended {
                tracing::error!(error = %e, "a job task ended abnormally");
            }
        }
    }
    tracing::info!(
        running = running.len(),
        "stopping: finishing the running jobs"
    );
    while running.join_next().await.is_some() {}
    beating.abort();
    queue.deregister(&name).await?;
    Ok(())
}

/// Beats for `name` and hands back the jobs of workers that stopped beating.
async fn heartbeats(queue: SqliteQueue, name: String) {
    let every = queue.settings().heartbeat;
    loop {
        if let Err(e) = queue.heartbeat(&name).await {
            tracing::warn!(error = %e, "heartbeat not recorded");
        }
        match queue.recover_orphans().await {
            Ok(orphans) if !orphans.is_empty() => {
                tracing::warn!(?orphans, "jobs of a stopped worker put back in the queue");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "looking for orphaned jobs failed"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Where a job goes after `handle_job` returned.
fn settlement(ended: Result<(), BoxDynError>, taken: usize) -> Settlement {
    match ended {
        Ok(()) => Settlement::Done,
        Err(e) if e.downcast_ref::<AbortError>().is_some() => Settlement::Dead(e.to_string()),
        Err(e) if taken >= MAX_TAKES => {
            Settlement::Dead(format!("put back {taken} times; last: {e}"))
        }
        Err(e) => Settlement::Later {
            delay: PUT_BACK_DELAY,
            reason: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_ends_done_dead_or_back_in_the_queue() {
        assert_eq!(settlement(Ok(()), 1), Settlement::Done);
        let abort: BoxDynError = AbortError::new("source file missing").into();
        assert!(
            matches!(settlement(Err(abort), 1), Settlement::Dead(m) if m.contains("source file missing"))
        );
        let busy: BoxDynError = "dataset 'x' is being extracted by another run".into();
        assert!(matches!(settlement(Err(busy), 3), Settlement::Later { .. }));
        let busy: BoxDynError = "still busy".into();
        assert!(
            matches!(settlement(Err(busy), MAX_TAKES), Settlement::Dead(m) if m.contains("25 times"))
        );
    }
}
