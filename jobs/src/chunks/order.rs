//! What travels between a partitioned run's coordinator and the workers that read its chunks:
//! the order a chunk job carries (`ChunkOrder`), what a chunk reports back through the
//! destination's notes (`ChunkReport`, `ChunkGaveUp`), where those notes are, and the seam to
//! the queue (`ChunkDispatch`), which the worker implements (the jobs crate knows no queue).

use serde::{Deserialize, Serialize};

use crate::delta::CursorState;
use crate::destination::RunTarget;
use crate::error::{JobError, Result};
use crate::sink::PartFile;
use crate::sources::Chunk;
use crate::validation::{ChecksState, KeySeed, ReadStats};

/// One chunk of a run, as its job on the queue carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkOrder {
    /// The coordinator's run: the parts go to its folder, the report into its notes.
    pub run_id: String,
    /// The id of the spec the run reads (one table of a multi-table dataset: `<id>/<table>`).
    pub dataset: String,
    /// A digest of that spec: a chunk taken after an editor changed the dataset refuses to read.
    pub spec_digest: String,
    pub ingest_date: String,
    /// The coordinator attempt that planned it: its notes are under this name, and orders of
    /// an earlier attempt (a coordinator that died) are not mixed with this one's.
    pub plan: String,
    pub chunk: Chunk,
    /// How many chunks the plan has.
    pub chunks: usize,
    /// Attempts this chunk gets before the run gives up.
    pub attempts: u32,
    /// The commit the run starts from (its sequence), which every chunk must start from too.
    pub previous_sequence: Option<u64>,
    /// Every chunk hashes keys alike, so the coordinator can find a key in two chunks.
    pub key_seed: KeySeed,
    /// Whether the chunks' key ranges can share a key (the partition column is not in the key):
    /// then each chunk ships its keys' hashes.
    pub ship_key_hashes: bool,
    /// The output schema the coordinator planned, as text: a chunk that plans another one
    /// (a worker of another version, a table altered mid-run) refuses to write.
    pub schema: String,
}

impl ChunkOrder {
    /// The queue id of the chunk's job: the run's id, the plan and the chunk.
    pub fn job_id(&self) -> String {
        format!("{}:{}:c{:04}", self.run_id, self.plan, self.chunk.index)
    }

    pub fn target(&self) -> RunTarget {
        RunTarget {
            dataset: self.dataset.clone(),
            run_id: self.run_id.clone(),
            ingest_date: self.ingest_date.clone(),
        }
    }

    /// The note a chunk leaves when its rows are all written.
    pub fn done_note(&self) -> String {
        done_note(&self.plan, self.chunk.index)
    }

    /// The note a chunk leaves when it gives up.
    pub fn failed_note(&self) -> String {
        failed_note(&self.plan, self.chunk.index)
    }

    /// What a chunk's part files are called: one prefix per take of the job, so the files of a
    /// take that died (or is still writing somewhere) never mix with the files of the next.
    pub fn part_prefix(&self, take: usize) -> String {
        format!("part-c{:04}-t{take}-", self.chunk.index)
    }
}

/// A digest of a spec as it is stored, to tell whether two workers read the same one.
pub fn spec_digest(spec: &carga_config::DatasetSpec) -> String {
    use sha2::Digest;
    let text = serde_json::to_vec(spec).unwrap_or_default();
    hex::encode(&sha2::Sha256::digest(&text)[..16])
}

pub(crate) fn done_note(plan: &str, index: usize) -> String {
    format!("{plan}/c{index:04}.done")
}

pub(crate) fn failed_note(plan: &str, index: usize) -> String {
    format!("{plan}/c{index:04}.failed")
}

/// The note listing a plan's chunk jobs, so a later attempt of the coordinator can withdraw them.
pub(crate) fn plan_note(plan: &str) -> String {
    format!("{plan}/plan")
}

/// What a chunk wrote and counted: the coordinator folds these into the run's report, cursor
/// and manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkReport {
    pub index: usize,
    pub rows: u64,
    pub stats: ReadStats,
    pub checks: ChecksState,
    pub cursor: Option<CursorState>,
    pub files: Vec<PartFile>,
    /// Which worker wrote it, and in which take of the job.
    pub worker: String,
    pub take: usize,
}

/// Why a chunk gave up (its last attempt's error).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkGaveUp {
    pub index: usize,
    pub message: String,
    /// The input or the spec is at fault: the run fails without retrying.
    pub validation: bool,
    pub attempts: u32,
}

impl ChunkGaveUp {
    pub fn into_error(self) -> JobError {
        JobError::Masked {
            message: format!(
                "chunk {} gave up after {} attempt(s): {}",
                self.index, self.attempts, self.message
            ),
            validation: self.validation,
        }
    }
}

/// The plan of one coordinator attempt, as its note keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PlanNote {
    pub job_ids: Vec<String>,
}

pub(crate) fn to_note<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value)
        .map_err(|e| JobError::Internal(format!("a chunk note does not serialise: {e}")))
}

pub(crate) fn from_note<T: for<'de> Deserialize<'de>>(name: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| JobError::Internal(format!("chunk note {name} does not parse: {e}")))
}

/// Puts a partitioned run's chunks on the queue for any worker to take: the worker's side of
/// a run spread over workers (`partitions.across_workers`).
#[async_trait::async_trait]
pub trait ChunkDispatch: Send + Sync {
    /// Enqueues one job per order.
    async fn send(&self, orders: &[ChunkOrder]) -> Result<()>;

    /// Of these job ids, those the queue no longer holds (settled, or lost).
    async fn gone(&self, job_ids: &[String]) -> Result<Vec<String>>;

    /// Takes jobs back: removed if still queued, asked to stop if running (best effort).
    async fn withdraw(&self, job_ids: &[String]);

    /// The coordinator only waits from now on: the slot it holds may take other jobs (its own
    /// chunks among them).
    fn waiting(&self) {}
}
