//! The job a scheduler or the HTTP trigger puts on the queue, and a worker takes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One extraction of one dataset. `run_id` is also the queue's task id and the run's id in the
/// manifests, so a run can be followed from the API to the queue to the bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtractionJob {
    pub run_id: String,
    pub dataset_id: String,
    pub reason: RunReason,
    /// The cron time this run stands for (scheduled runs only).
    pub scheduled_for: Option<DateTime<Utc>>,
    /// Who asked for it (on-demand runs).
    pub requested_by: Option<String>,
    /// Which attempt the next take is (1 first): a failed attempt goes back to the queue as a
    /// delayed job with this raised, so no worker sleeps through a backoff.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// Set on a chunk job: one key range of a run another worker coordinates
    /// (`partitions.across_workers`). `run_id` is then the chunk's own job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<carga_jobs::ChunkOrder>,
}

fn first_attempt() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunReason {
    Schedule,
    Trigger,
    Retry,
}

impl RunReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RunReason::Schedule => "schedule",
            RunReason::Trigger => "trigger",
            RunReason::Retry => "retry",
        }
    }
}

impl ExtractionJob {
    pub fn new(dataset_id: &str, reason: RunReason) -> Self {
        Self {
            run_id: uuid::Uuid::now_v7().to_string(),
            dataset_id: dataset_id.to_owned(),
            reason,
            scheduled_for: None,
            requested_by: None,
            attempt: 1,
            chunk: None,
        }
    }

    /// The job that reads one chunk of run `order.run_id` of `dataset_id`.
    pub fn for_chunk(dataset_id: &str, reason: RunReason, order: carga_jobs::ChunkOrder) -> Self {
        Self {
            run_id: order.job_id(),
            dataset_id: dataset_id.to_owned(),
            reason,
            scheduled_for: None,
            requested_by: None,
            attempt: 1,
            chunk: Some(order),
        }
    }

    /// The same job, for its next attempt.
    pub fn next_attempt(&self) -> Self {
        Self {
            attempt: self.attempt + 1,
            ..self.clone()
        }
    }

    /// The key that makes a scheduled time enqueue once, whichever scheduler replica gets there.
    pub fn idempotency_key(&self) -> Option<String> {
        self.scheduled_for
            .filter(|_| self.reason == RunReason::Schedule)
            .map(|at| format!("{}@{}", self.dataset_id, at.timestamp()))
    }
}
