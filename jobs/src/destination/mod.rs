//! Where a run's output goes and how it becomes visible: the seam between the run (source,
//! transform, checks, cursor) and storage. A run asks the destination for the state it starts
//! from (`latest`), writes its rows through `PartWriter`s, its report and side files, and makes
//! everything visible at once with `commit`, which refuses a concurrent writer; on failure it
//! `discard`s what it wrote. The raw zone (encrypted Parquet parts and a manifest log, `raw_zone`)
//! is the first destination; another (Iceberg, a warehouse) implements the same trait.

pub mod raw_zone;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::error::Result;
use crate::manifest::Manifest;
use crate::sink::PartFile;
use crate::validation::ValidationReport;

pub use raw_zone::RawZone;

/// Writes one run's rows, rolling files as the destination decides.
#[async_trait::async_trait]
pub trait PartWriter: Send {
    async fn write(&mut self, batch: &RecordBatch) -> Result<()>;
    /// Closes the last file and lists every file written.
    async fn finish(self: Box<Self>) -> Result<Vec<PartFile>>;
    /// Removes what was written (best effort; nothing references it yet).
    async fn abort(self: Box<Self>);
}

/// A writer that keeps nothing: a validation pass reads and checks every row, and stores none.
pub(crate) struct Discard;

#[async_trait::async_trait]
impl PartWriter for Discard {
    async fn write(&mut self, _batch: &RecordBatch) -> Result<()> {
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<Vec<PartFile>> {
        Ok(Vec::new())
    }

    async fn abort(self: Box<Self>) {}
}

/// Where a run's pieces are, once written or committed (printable addresses).
#[derive(Debug, Clone)]
pub struct Written {
    pub url: String,
    /// The destination's own path of the piece (what a commit refers to).
    pub path: String,
    pub sha256: String,
}

/// A run's commit as the destination holds it.
#[derive(Debug, Clone)]
pub struct Committed {
    pub manifest: Manifest,
    pub report: ValidationReport,
    pub manifest_url: String,
    pub report_url: String,
}

/// One run of one dataset at a destination.
#[derive(Debug, Clone)]
pub struct RunTarget {
    pub dataset: String,
    pub run_id: String,
    /// The run's partition (`ingest_date=YYYY-MM-DD`).
    pub ingest_date: String,
}

#[async_trait::async_trait]
pub trait Destination: Send + Sync {
    /// The dataset's last commit: the schema and watermark the next run starts from.
    async fn latest(&self, dataset: &str) -> Result<Option<Manifest>>;

    /// The commit of `run_id`, if it is among the dataset's newest commits (a job taken again
    /// after its commit is then done), with its report.
    async fn committed(&self, dataset: &str, run_id: &str) -> Result<Option<Committed>>;

    /// A writer of the run's rows of `schema`; `name` tells the files apart (chunks of one run);
    /// `one_file` keeps everything in one file (side files read whole).
    fn parts(
        &self,
        run: &RunTarget,
        schema: SchemaRef,
        name: &str,
        one_file: bool,
    ) -> Result<Box<dyn PartWriter>>;

    /// A side file of the run beside its commit (e.g. the lookback window's tuples).
    fn side_file(
        &self,
        run: &RunTarget,
        schema: SchemaRef,
        name: &str,
    ) -> Result<Box<dyn PartWriter>>;

    /// Reads files this destination wrote (a previous run's side files).
    async fn read_files(&self, files: &[PartFile]) -> Result<Vec<RecordBatch>>;

    /// Writes the run's validation report (on success and on failure).
    async fn write_report(&self, run: &RunTarget, report: &ValidationReport) -> Result<Written>;

    /// Makes the run visible, unless another run committed first (`JobError::Conflict`).
    async fn commit(&self, manifest: &Manifest) -> Result<Written>;

    /// Removes files of a run that will not commit.
    async fn discard(&self, files: &[PartFile]);

    /// Writes a working note of a run spread over workers (what a chunk wrote, or why it gave
    /// up), sealed, beside the run's parts until `sweep` removes it. `name` may hold `/`.
    async fn put_note(&self, run: &RunTarget, name: &str, body: &[u8]) -> Result<()>;

    /// The names of the run's notes under `prefix`.
    async fn note_names(&self, run: &RunTarget, prefix: &str) -> Result<Vec<String>>;

    /// A note `put_note` wrote, opened.
    async fn read_note(&self, run: &RunTarget, name: &str) -> Result<Vec<u8>>;

    /// Removes everything the run wrote beside its rows that `keep` does not list: parts of
    /// attempts that died, and the run's notes. Returns how many objects went.
    async fn sweep(&self, run: &RunTarget, keep: &[PartFile]) -> Result<usize>;

    /// Where the run's rows are, for people.
    fn data_url(&self, run: &RunTarget) -> String;
}
