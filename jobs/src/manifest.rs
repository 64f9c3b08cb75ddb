//! Run manifests: the commit log of a dataset.
//!
//! A run's parts are invisible until its manifest exists. Manifests are numbered
//! (`raw/<dataset>/_manifests/<sequence>.manifest.json`) and created with a conditional put
//! (create-if-absent), so of two runs that started from the same state only one commits; the
//! other learns it lost and discards its parts. The latest manifest holds the schema and the
//! watermark the next run starts from: the state lives in the bucket, no database needed.
//!
//! What stays readable and what is sealed (format 2): a transformation engine finds the files
//! without a key — paths, rows, bytes, checksums, schema, mode, run and commit times, the source's
//! format and location (credentials never appear in it), the cursor's column names and the files
//! of its lookback window (themselves encrypted Parquet). The watermark's values (a timestamp and a
//! key from the data) are sealed with the master key (`encryption::Sealed`), bound to the manifest's
//! dataset and sequence. A log opened `with_keys` seals on commit and unseals on load; without
//! keys the values read as empty and `sealed` stays as written.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use carga_config::Mode;

use std::collections::BTreeMap;

use crate::delta::Watermark;
use crate::encryption::{Encryptor, Sealed};
use crate::error::{JobError, Result};
use crate::sink::PartFile;
use crate::storage::Bucket;

/// 2: the watermark's values are sealed.
pub const FORMAT_VERSION: u32 = 2;
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
    /// The watermark's values, sealed (format 2; absent in format 1, where they are plain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<Sealed>,
}

/// What a manifest seals: the data values of its watermark.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SealedWatermark {
    from: Option<CursorValues>,
    to: Option<CursorValues>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CursorValues {
    values: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    recent: Vec<Vec<String>>,
}

impl CursorValues {
    fn take(watermark: &mut Watermark) -> Self {
        Self {
            values: std::mem::take(&mut watermark.values),
            recent: std::mem::take(&mut watermark.recent),
        }
    }

    fn put(self, watermark: &mut Watermark) {
        watermark.values = self.values;
        watermark.recent = self.recent;
    }
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
    /// The context a manifest's sealed values are bound to.
    fn seal_context(&self) -> String {
        format!("manifest {} {}", self.dataset, self.sequence)
    }

    /// A copy ready to store: the watermark's values sealed.
    pub fn sealed_with(&self, keys: &Encryptor) -> Result<Manifest> {
        let mut stored = self.clone();
        let Some(range) = stored.watermark.as_mut() else {
            return Ok(stored);
        };
        let values = SealedWatermark {
            from: range.from.as_mut().map(CursorValues::take),
            to: range.to.as_mut().map(CursorValues::take),
        };
        let plain = serde_json::to_vec(&values).expect("text values always serialize");
        stored.sealed = Some(keys.seal(&plain, &self.seal_context())?);
        Ok(stored)
    }

    /// Puts the sealed values back into the watermark.
    pub fn unseal(&mut self, keys: &Encryptor) -> Result<()> {
        let Some(sealed) = self.sealed.take() else {
            return Ok(());
        };
        let plain = keys.open(&sealed, &self.seal_context())?;
        let values: SealedWatermark = serde_json::from_slice(&plain).map_err(|e| {
            JobError::Encryption(format!("{}: sealed values: {e}", self.seal_context()))
        })?;
        if let Some(range) = self.watermark.as_mut() {
            if let (Some(w), Some(v)) = (range.from.as_mut(), values.from) {
                v.put(w);
            }
            if let (Some(w), Some(v)) = (range.to.as_mut(), values.to) {
                v.put(w);
            }
        }
        Ok(())
    }

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
    /// Seals on commit and unseals on load; without, sealed values stay sealed.
    keys: Option<Encryptor>,
}

impl ManifestLog {
    pub fn new(bucket: &Bucket, dataset: &str) -> Self {
        Self {
            bucket: bucket.clone(),
            dataset: dataset.to_owned(),
            dir: bucket.path(&format!("raw/{dataset}/_manifests")),
            keys: None,
        }
    }

    /// This log with the master keys: manifests are sealed when committed and unsealed when
    /// loaded.
    pub fn with_keys(mut self, keys: &Encryptor) -> Self {
        self.keys = Some(keys.clone());
        self
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
        let mut manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            JobError::bad_input(
                self.bucket.display(&path),
                format!("not a valid manifest: {e}"),
            )
        })?;
        if let Some(keys) = &self.keys {
            manifest.unseal(keys)?;
        }
        Ok(manifest)
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
        let stored = match &self.keys {
            Some(keys) => std::borrow::Cow::Owned(manifest.sealed_with(keys)?),
            None => std::borrow::Cow::Borrowed(manifest),
        };
        let body = serde_json::to_vec_pretty(stored.as_ref())
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
