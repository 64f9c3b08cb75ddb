//! Run manifests: the commit log of a dataset.
//!
//! A run's parts are invisible until its manifest exists. Manifests are numbered
//! (`raw/<dataset>/_manifests/<sequence>.manifest.json`) and created with a conditional put
//! (create-if-absent), so of two runs that started from the same state only one commits; the
//! other learns it lost and discards its parts. The latest manifest holds the schema and the
//! watermark the next run starts from: the state lives in the bucket, no database needed.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use carga_config::Mode;

use crate::delta::Watermark;
use crate::error::{JobError, Result};
use crate::sink::PartFile;
use crate::storage::Bucket;

pub const FORMAT_VERSION: u32 = 1;
const MANIFEST_SUFFIX: &str = ".manifest.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format_version: u32,
    pub dataset: String,
    pub sequence: u64,
    pub run_id: String,
    pub mode: Mode,
    pub started_at: DateTime<Utc>,
    pub committed_at: DateTime<Utc>,
    pub ingest_date: String,
    pub source: ManifestSource,
    pub rows: u64,
    pub bytes: u64,
    pub files: Vec<PartFile>,
    pub schema: arrow_schema::Schema,
    pub watermark: Option<WatermarkRange>,
    /// Path of the run's validation report inside the bucket.
    pub validation_report: String,
    /// SHA-256 of the report's bytes, so a reader can tell it is the one this commit wrote.
    #[serde(default)]
    pub validation_report_sha256: Option<String>,
    pub encryption: EncryptionInfo,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestSource {
    /// The source's `format` (`csv`, `postgres`, or a registered one).
    pub format: String,
    pub location: String,
}

/// The cursor before and after the run; `to` is what the next delta run starts from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WatermarkRange {
    pub from: Option<Watermark>,
    pub to: Option<Watermark>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EncryptionInfo {
    /// Parquet Modular Encryption algorithm.
    pub algorithm: String,
    pub master_key_id: String,
    /// Where each file's wrapped data key lives.
    pub key_material: String,
}

impl Manifest {
    /// The watermark a following delta run should start from.
    pub fn next_watermark(&self) -> Option<&Watermark> {
        self.watermark
            .as_ref()
            .and_then(|w| w.to.as_ref().or(w.from.as_ref()))
    }
}

/// The manifests of one dataset.
pub struct ManifestLog {
    bucket: Bucket,
    dataset: String,
    dir: Path,
}

impl ManifestLog {
    pub fn new(bucket: &Bucket, dataset: &str) -> Self {
        Self {
            bucket: bucket.clone(),
            dataset: dataset.to_owned(),
            dir: bucket.path(&format!("raw/{dataset}/_manifests")),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sequence numbers of committed manifests, ascending.
    pub async fn sequences(&self) -> Result<Vec<u64>> {
        let listed: Vec<_> = self
            .bucket
            .store
            .list(Some(&self.dir))
            .try_collect()
            .await
            .map_err(|e| {
                JobError::store(format!("listing {}", self.bucket.display(&self.dir)), e)
            })?;
        let mut sequences: Vec<u64> = listed
            .iter()
            .filter_map(|meta| {
                meta.location
                    .filename()?
                    .strip_suffix(MANIFEST_SUFFIX)?
                    .parse()
                    .ok()
            })
            .collect();
        sequences.sort_unstable();
        Ok(sequences)
    }

    pub async fn load(&self, sequence: u64) -> Result<Manifest> {
        let path = self.path_of(sequence);
        let bytes = self
            .bucket
            .store
            .get(&path)
            .await
            .map_err(|e| JobError::store(format!("reading {}", self.bucket.display(&path)), e))?
            .bytes()
            .await
            .map_err(|e| JobError::store(format!("reading {}", self.bucket.display(&path)), e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            JobError::bad_input(
                self.bucket.display(&path),
                format!("not a valid manifest: {e}"),
            )
        })
    }

    pub async fn latest(&self) -> Result<Option<Manifest>> {
        match self.sequences().await?.last() {
            Some(&sequence) => Ok(Some(self.load(sequence).await?)),
            None => Ok(None),
        }
    }

    /// Files that make up the dataset now: the latest complete snapshot and the deltas after it.
    pub async fn live_files(&self) -> Result<Vec<PartFile>> {
        let mut files = Vec::new();
        for sequence in self.sequences().await?.into_iter().rev() {
            let manifest = self.load(sequence).await?;
            let replaces = manifest.mode == Mode::Complete;
            files.splice(0..0, manifest.files);
            if replaces {
                break;
            }
        }
        Ok(files)
    }

    /// Commits `manifest` if its sequence number is still free. Returns the manifest's path.
    pub async fn commit(&self, manifest: &Manifest) -> Result<Path> {
        let path = self.path_of(manifest.sequence);
        let body = serde_json::to_vec_pretty(manifest)
            .map_err(|e| JobError::bad_input("manifest", e.to_string()))?;
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .bucket
            .store
            .put_opts(&path, PutPayload::from(body), options)
            .await
        {
            Ok(_) => Ok(path),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Err(JobError::Conflict {
                dataset: self.dataset.clone(),
                message: format!(
                    "another run committed manifest {} first; this run's output was discarded and the watermark left as that run set it",
                    manifest.sequence
                ),
            }),
            Err(e) => Err(JobError::store(
                format!("committing {}", self.bucket.display(&path)),
                e,
            )),
        }
    }

    pub fn path_of(&self, sequence: u64) -> Path {
        self.dir
            .clone()
            .join(format!("{sequence:020}{MANIFEST_SUFFIX}"))
    }
}
