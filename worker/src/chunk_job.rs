//! Runs spread over workers, the queue's side (`partitions.across_workers`): `QueueDispatch`
//! puts a coordinating run's chunks on the queue as chunk jobs, and `handle_chunk` is what any
//! worker does with one it takes: read the range into the run's folder and leave its note
//! (`Engine::run_chunk`), retry a transient failure through the queue with a growing pause, and
//! note that the chunk gave up after its last attempt. Chunk jobs touch neither the catalog's
//! runs nor the dataset's lock: the coordinating run holds the lock and records the run.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use carga_jobs::retry::Backoff;
use carga_jobs::{ChunkDispatch, ChunkOrder, JobError};
use carga_scheduler::queue::Settlement;
use carga_scheduler::{ExtractionJob, JobQueue, RunReason};
use tokio::sync::OwnedSemaphorePermit;

use crate::queue_worker::{Shared, cancelled};

/// Pause before a chunk's second attempt; doubles for each further one, up to the second.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(250);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// A taken job's worker slot, which a coordinating run gives back while it only waits.
pub(crate) type Slot = Arc<Mutex<Option<OwnedSemaphorePermit>>>;

/// Sends a coordinating run's chunks to the queue this worker takes from.
pub(crate) struct QueueDispatch {
    pub queue: JobQueue,
    /// The catalog's dataset (a multi-table dataset's tables share it).
    pub dataset_id: String,
    pub reason: RunReason,
    pub slot: Slot,
    /// The chunk jobs sent so far, to withdraw when the worker stops under the run.
    pub sent: Mutex<Vec<String>>,
}

impl QueueDispatch {
    pub fn new(queue: JobQueue, job: &ExtractionJob, slot: Slot) -> Self {
        Self {
            queue,
            dataset_id: job.dataset_id.clone(),
            reason: job.reason,
            slot,
            sent: Mutex::default(),
        }
    }

    /// Withdraws every chunk job this run sent.
    pub async fn withdraw_sent(&self) {
        let sent = std::mem::take(&mut *self.sent.lock().unwrap_or_else(|e| e.into_inner()));
        self.withdraw(&sent).await;
    }
}

fn queue_error(e: impl std::fmt::Display) -> JobError {
    JobError::Queue(e.to_string())
}

#[async_trait::async_trait]
impl ChunkDispatch for QueueDispatch {
    async fn send(&self, orders: &[ChunkOrder]) -> carga_jobs::Result<()> {
        let jobs: Vec<ExtractionJob> = orders
            .iter()
            .map(|order| ExtractionJob::for_chunk(&self.dataset_id, self.reason, order.clone()))
            .collect();
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(jobs.iter().map(|j| j.run_id.clone()));
        self.queue.enqueue(&jobs).await.map_err(queue_error)?;
        Ok(())
    }

    async fn gone(&self, job_ids: &[String]) -> carga_jobs::Result<Vec<String>> {
        let mut gone = Vec::new();
        for id in job_ids {
            // A dead job stays in the queue's dead set, but nobody will run it again.
            let there = self.queue.contains(id).await.map_err(queue_error)?
                && !self.queue.is_dead(id).await.map_err(queue_error)?;
            if !there {
                gone.push(id.clone());
            }
        }
        Ok(gone)
    }

    async fn withdraw(&self, job_ids: &[String]) {
        for id in job_ids {
            let withdrawn = match self.queue.remove_queued(id).await {
                Ok(true) => Ok(()),
                // Running (or about to be): its worker stops it at its next look.
                Ok(false) => self.queue.request_cancel(id).await,
                Err(e) => Err(e),
            };
            if let Err(e) = withdrawn {
                tracing::warn!(job = %id, error = %e, "a chunk job could not be withdrawn; it finds its run gone and writes nothing it keeps");
            }
        }
    }

    fn waiting(&self) {
        // The run now only polls notes: its slot may read chunks (its own among them).
        let released = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        if released.is_some() {
            tracing::debug!("the coordinating run gave its worker slot back while it waits");
        }
    }
}

/// A chunk job taken for the `takes`-th time: where it goes next.
pub(crate) async fn handle_chunk(
    job: &ExtractionJob,
    order: &ChunkOrder,
    shared: &Shared,
    takes: usize,
) -> Result<Settlement, Box<dyn std::error::Error + Send + Sync>> {
    let engine = &shared.engine;
    if shared.queue.is_cancelled(&job.run_id).await? {
        tracing::info!("chunk job withdrawn by its run before it started");
        return Ok(Settlement::Done);
    }
    let spec = shared
        .catalog
        .dataset(&job.dataset_id)
        .await?
        .filter(|record| record.is_runnable())
        .and_then(|record| {
            record
                .spec
                .per_table()
                .into_iter()
                .find(|table| table.id == order.dataset)
        });
    let Some(spec) = spec else {
        let error = JobError::Refused {
            dataset: order.dataset.clone(),
            message: "the dataset is no longer configured, enabled and approved".into(),
        };
        engine.chunk_gave_up(order, &error).await;
        return Ok(Settlement::Done);
    };
    tracing::info!(
        chunk = order.chunk.index,
        of = order.chunks,
        takes,
        attempt = job.attempt,
        "chunk job taken"
    );
    let read = tokio::select! {
        read = engine.run_chunk(&spec, order, takes, &shared.settings.name) => read,
        () = cancelled(shared, &job.run_id) => {
            tracing::warn!("chunk job withdrawn by its run; what it wrote is left to the run's sweep");
            return Ok(Settlement::Done);
        }
    };
    match read {
        Ok(_) => Ok(Settlement::Done),
        Err(error) if !error.is_validation() && job.attempt < order.attempts => {
            let delay = Backoff::new(FIRST_RETRY_DELAY, MAX_RETRY_DELAY).pause(job.attempt);
            tracing::warn!(%error, attempt = job.attempt, retry_in_ms = delay.as_millis() as u64, "chunk attempt failed; the job waits in the queue for the next one");
            Ok(Settlement::Later {
                delay,
                reason: error.to_string(),
                job: Some(Box::new(job.next_attempt())),
            })
        }
        Err(error) => {
            tracing::error!(%error, attempt = job.attempt, "chunk gave up; its run stops");
            engine.chunk_gave_up(order, &error).await;
            Ok(Settlement::Done)
        }
    }
}
