//! The take side of a worker, the same on Redis and on the embedded SQLite queue: at most
//! `concurrency` jobs at once, one taken per free slot; heartbeats on their own task (a long job
//! never stops them); the jobs of workers whose heartbeats stopped handed back once; and how a
//! job ended (`handle_job`) recorded in the queue.
//!
//! A backend fault never ends the worker: taking, beating and settling are retried with a growing
//! pause until the queue answers again (a heartbeat re-registers a worker the queue forgot, e.g.
//! after a Redis restart). A job's end is kept and recorded once the queue is back, so the job is
//! neither lost nor run twice. On shutdown no new job is taken and the running ones finish.

use std::sync::Arc;
use std::time::Duration;

use carga_jobs::retry::{Backoff, Pauses};
use carga_scheduler::JobQueue;
use carga_scheduler::queue::{Settlement, TakenJob};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::queue_worker::{Shared, handle_job};

/// The longest a free slot waits before looking at the queue again (an embedded push wakes it at
/// once).
const POLL: Duration = Duration::from_millis(500);
/// Pauses after a backend fault grow from the first to the last.
const FAULT_PAUSE_FIRST: Duration = Duration::from_millis(250);
const FAULT_PAUSE_MAX: Duration = Duration::from_secs(10);
const FAULT_BACKOFF: Backoff = Backoff::new(FAULT_PAUSE_FIRST, FAULT_PAUSE_MAX);

pub async fn run(
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let queue = shared.queue.clone();
    let name = shared.settings.name.clone();
    let beating = tokio::spawn(heartbeats(
        queue.clone(),
        name.clone(),
        shared.settings.liveness.clone(),
    ));
    let slots = Arc::new(Semaphore::new(shared.settings.concurrency.max(1)));
    let mut running = JoinSet::new();
    let mut faults = Faults::default();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot?,
        };
        match queue.take(&name).await {
            Ok(Some(taken)) => {
                faults.cleared(&name);
                let (shared, queue, name) = (shared.clone(), queue.clone(), name.clone());
                running.spawn(async move {
                    let TakenJob { job, takes } = taken;
                    // A run coordinating chunks on other workers gives its slot back meanwhile.
                    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(slot)));
                    let settlement = handle_job(&job, &shared, takes, slot.clone()).await;
                    settle(&queue, &name, &job.run_id, &settlement).await;
                    drop(slot);
                });
            }
            Ok(None) => {
                faults.cleared(&name);
                drop(slot);
                tokio::select! {
                    () = &mut shutdown => break,
                    () = queue.wait_for_work(POLL) => {}
                }
            }
            Err(e) => {
                drop(slot);
                let pause = faults.failed(&name, "taking a job", &e);
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
        while let Some(ended) = running.try_join_next() {
            if let Err(e) = ended {
                tracing::error!(error = %e, "a job task ended abnormally");
            }
        }
    }
    shared.stopping.send_replace(true);
    tracing::info!(
        running = running.len(),
        "stopping: finishing the running jobs"
    );
    while running.join_next().await.is_some() {}
    beating.abort();
    if let Err(e) = queue.deregister(&name).await {
        tracing::warn!(error = %e, "worker not deregistered; the queue forgets it once its heartbeats are stale");
    }
    Ok(())
}

/// Records a job's end, retrying through a backend fault. While this waits the job stays in this
/// worker's hands (its heartbeats go on), so no other worker runs it meanwhile.
async fn settle(queue: &JobQueue, worker: &str, run_id: &str, settlement: &Settlement) {
    let mut faults = Faults::default();
    loop {
        match queue.settle(worker, run_id, settlement).await {
            Ok(()) => {
                faults.cleared(worker);
                return;
            }
            Err(e) => {
                let pause = faults.failed(worker, "recording a job's end", &e);
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Beats for `name` and hands back the jobs of workers that stopped beating. Only after this
/// worker has itself beaten without a fault for a whole allowance: right after an outage of the
/// queue every worker's last beat is old, and the others must get the chance to beat again
/// before any of them is taken for dead.
async fn heartbeats(queue: JobQueue, name: String, liveness: crate::health::Liveness) {
    let every = queue.settings().heartbeat;
    let allowance = every.saturating_mul(queue.settings().missed_heartbeats.max(1) as u32);
    let mut faults = Faults::default();
    let mut healthy_since = tokio::time::Instant::now();
    loop {
        let started = tokio::time::Instant::now();
        let beat = queue.heartbeat(&name).await;
        // A beat that took longer than an interval (the queue stalled while it reconnected)
        // counts as a fault too.
        let took = started.elapsed();
        if beat.is_ok() && took > every {
            tracing::warn!(
                worker = %name,
                seconds = took.as_secs_f64(),
                "the queue stalled; stopped workers are looked for again once heartbeats are regular"
            );
        }
        if beat.is_err() || took > every {
            healthy_since = tokio::time::Instant::now();
        }
        let beat = match beat {
            Ok(()) if healthy_since.elapsed() >= allowance => queue.recover_orphans(&name).await,
            Ok(()) => Ok(Vec::new()),
            Err(e) => Err(e),
        };
        let pause = match beat {
            Ok(orphans) => {
                faults.cleared(&name);
                if !orphans.is_empty() {
                    tracing::warn!(?orphans, "jobs of a stopped worker put back in the queue");
                }
                every
            }
            Err(e) => faults.failed(&name, "heartbeat", &e).min(every),
        };
        // The loop ran, whatever the queue answered: the worker is alive.
        liveness.beat();
        tokio::time::sleep(pause).await;
    }
}

/// Consecutive backend faults of one loop: the pause before the next try (growing, capped,
/// jittered), and one log line when the fault starts and one when it ends.
struct Faults {
    count: u32,
    pauses: Pauses,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            count: 0,
            pauses: FAULT_BACKOFF.pauses(),
        }
    }
}

impl Faults {
    fn failed(&mut self, worker: &str, doing: &str, error: &dyn std::fmt::Display) -> Duration {
        self.count += 1;
        if self.count == 1 {
            tracing::warn!(worker, error = %error, "{doing} failed; retrying until the queue answers");
        } else {
            tracing::debug!(worker, attempt = self.count, error = %error, "{doing} failed again");
        }
        // The schedule has no end: a worker waits for its queue as long as it takes.
        self.pauses.next().unwrap_or(FAULT_BACKOFF.max)
    }

    fn cleared(&mut self, worker: &str) {
        if self.count > 0 {
            tracing::info!(worker, faults = self.count, "the queue answers again");
        }
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_after_faults_grow_and_are_capped() {
        let mut faults = Faults::default();
        let pauses: Vec<Duration> = (0..10)
            .map(|_| faults.failed("w", "taking a job", &"broken pipe"))
            .collect();
        let within = |pause: Duration, base: Duration| pause >= base && pause <= base * 2;
        assert!(within(pauses[0], FAULT_PAUSE_FIRST), "{pauses:?}");
        assert!(within(pauses[1], FAULT_PAUSE_FIRST * 2), "{pauses:?}");
        assert!(within(pauses[9], FAULT_PAUSE_MAX), "{pauses:?}");
        faults.cleared("w");
        assert!(within(faults.failed("w", "x", &"e"), FAULT_PAUSE_FIRST));
    }
}
