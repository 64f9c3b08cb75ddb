//! The raw zone as a destination: encrypted Parquet parts under
//! `raw/<dataset>/ingest_date=<date>/<run-id>/`, and a manifest log under `raw/<dataset>/_manifests/`
//! whose numbered manifests are created if absent (see `manifest.rs`). Manifests are committed
//! with their watermark values sealed, and each run's validation report is sealed whole (it holds
//! rejected rows and per-column statistics): only `dataset`, `run_id` and `status` stay readable.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use carga_config::Settings;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use sha2::Digest;

use super::{Committed, Destination, PartWriter, RunTarget, Written};
use crate::encryption::Encryptor;
use crate::encryption::Sealed;
use crate::error::{JobError, Result};
use crate::manifest::{Manifest, ManifestLog};
use crate::sink::{PartFile, PartSink};
use crate::storage::Bucket;
use crate::validation::{RunStatus, ValidationReport};

/// The folder of a run's working notes, inside its data folder.
const NOTES_FOLDER: &str = "_chunks";

/// 3: the report is sealed; only these fields are readable.
const SEALED_REPORT_VERSION: u32 = 3;

/// A validation report as stored.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredReport {
    format_version: u32,
    dataset: String,
    run_id: String,
    status: RunStatus,
    sealed: Sealed,
}

fn report_context(dataset: &str, run_id: &str) -> String {
    format!("validation report {dataset} {run_id}")
}

/// A manifest or validation report from the raw zone as JSON: sealed values opened with `keys`,
/// or left sealed without them (what a role that may not see data values gets).
pub fn open_document(bytes: &[u8], keys: Option<&Encryptor>) -> Result<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| JobError::bad_input("raw-zone document", e.to_string()))?;
    let (Some(keys), true) = (keys, value.get("sealed").is_some()) else {
        return Ok(value);
    };
    if value.get("files").is_some() {
        let mut manifest: Manifest = serde_json::from_value(value)
            .map_err(|e| JobError::bad_input("manifest", e.to_string()))?;
        manifest.unseal(keys)?;
        return serde_json::to_value(manifest).map_err(|e| JobError::Internal(e.to_string()));
    }
    let report = open_report(bytes, keys, "validation report")?;
    serde_json::to_value(report).map_err(|e| JobError::Internal(e.to_string()))
}

/// A stored report, opened (reports written before sealing read as they are).
fn open_report(bytes: &[u8], keys: &Encryptor, shown_as: &str) -> Result<ValidationReport> {
    let not_a_report = |e: serde_json::Error| {
        JobError::bad_input(shown_as, format!("not a validation report: {e}"))
    };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(not_a_report)?;
    if value.get("sealed").is_none() {
        return serde_json::from_value(value).map_err(not_a_report);
    }
    let stored: StoredReport = serde_json::from_value(value).map_err(not_a_report)?;
    let plain = keys.open(
        &stored.sealed,
        &report_context(&stored.dataset, &stored.run_id),
    )?;
    serde_json::from_slice(&plain).map_err(not_a_report)
}

/// Manifests looked at (newest first) to find a run's commit: one run per dataset at a time
/// means a run's commit is among the last few.
const RECENT_COMMITS: usize = 20;

#[derive(Clone)]
pub struct RawZone {
    bucket: Bucket,
    encryptor: Encryptor,
    settings: Settings,
}

impl RawZone {
    pub fn new(bucket: Bucket, encryptor: Encryptor, settings: Settings) -> Self {
        Self {
            bucket,
            encryptor,
            settings,
        }
    }

    fn run_dir(&self, run: &RunTarget) -> Path {
        self.bucket.path(&format!(
            "raw/{}/ingest_date={}/{}",
            run.dataset, run.ingest_date, run.run_id
        ))
    }

    fn log(&self, dataset: &str) -> ManifestLog {
        ManifestLog::new(&self.bucket, dataset).with_keys(&self.encryptor)
    }

    fn report_path(&self, run: &RunTarget) -> Path {
        self.log(&run.dataset)
            .dir()
            .clone()
            .join(format!("{}.validation.json", run.run_id))
    }

    /// Notes live in the run's folder under `_chunks/`, which Spark and pyarrow skip as hidden.
    fn notes_dir(&self, run: &RunTarget) -> String {
        format!("{}/{NOTES_FOLDER}", self.run_dir(run))
    }

    fn note_context(run: &RunTarget, name: &str) -> String {
        format!("run note {}/{}/{name}", run.dataset, run.run_id)
    }

    async fn read_object(&self, path: &Path) -> Result<bytes::Bytes> {
        let context = || format!("reading {}", self.bucket.display(path));
        self.bucket
            .store
            .get(path)
            .await
            .map_err(|e| JobError::store(context(), e))?
            .bytes()
            .await
            .map_err(|e| JobError::store(context(), e))
    }
}

#[async_trait::async_trait]
impl PartWriter for PartSink {
    async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        PartSink::write(self, batch).await
    }

    async fn finish(self: Box<Self>) -> Result<Vec<PartFile>> {
        PartSink::finish(*self).await
    }

    async fn abort(self: Box<Self>) {
        PartSink::abort(*self).await
    }
}

#[async_trait::async_trait]
impl Destination for RawZone {
    async fn latest(&self, dataset: &str) -> Result<Option<Manifest>> {
        self.log(dataset).latest().await
    }

    async fn committed(&self, dataset: &str, run_id: &str) -> Result<Option<Committed>> {
        let log = self.log(dataset);
        for sequence in log
            .sequences()
            .await?
            .into_iter()
            .rev()
            .take(RECENT_COMMITS)
        {
            let manifest = log.load(sequence).await?;
            if manifest.run_id != run_id {
                continue;
            }
            let report_path = Path::from(manifest.validation_report.as_str());
            let bytes = self.read_object(&report_path).await?;
            let report = open_report(&bytes, &self.encryptor, &self.bucket.display(&report_path))?;
            return Ok(Some(Committed {
                manifest_url: self.bucket.display(&log.path_of(sequence)),
                report_url: self.bucket.display(&report_path),
                manifest,
                report,
            }));
        }
        Ok(None)
    }

    fn parts(
        &self,
        run: &RunTarget,
        schema: SchemaRef,
        name: &str,
        one_file: bool,
    ) -> Result<Box<dyn PartWriter>> {
        let sink = PartSink::new(
            self.bucket.clone(),
            self.run_dir(run),
            schema,
            self.encryptor.clone(),
            &self.settings,
        )?
        .with_name_prefix(name);
        Ok(Box::new(if one_file { sink.in_one_file() } else { sink }))
    }

    fn side_file(
        &self,
        run: &RunTarget,
        schema: SchemaRef,
        name: &str,
    ) -> Result<Box<dyn PartWriter>> {
        let dir = self.log(&run.dataset).dir().clone();
        let sink = PartSink::new(
            self.bucket.clone(),
            dir,
            schema,
            self.encryptor.clone(),
            &self.settings,
        )?
        .with_name_prefix(format!("{}.{name}-", run.run_id))
        .in_one_file();
        Ok(Box::new(sink))
    }

    async fn read_files(&self, files: &[PartFile]) -> Result<Vec<RecordBatch>> {
        let mut batches = Vec::new();
        for file in files {
            let mut stream =
                Box::pin(crate::read::read_part(&self.bucket, &self.encryptor, &file.path).await?);
            while let Some(batch) = stream.try_next().await? {
                batches.push(batch);
            }
        }
        Ok(batches)
    }

    async fn write_report(&self, run: &RunTarget, report: &ValidationReport) -> Result<Written> {
        let path = self.report_path(run);
        let mut report = report.clone();
        if report.error.is_some() {
            report.status = RunStatus::Failed;
        }
        let plain = serde_json::to_vec(&report)
            .map_err(|e| JobError::bad_input("validation report", e.to_string()))?;
        let stored = StoredReport {
            format_version: SEALED_REPORT_VERSION,
            dataset: run.dataset.clone(),
            run_id: run.run_id.clone(),
            status: report.status,
            sealed: self
                .encryptor
                .seal(&plain, &report_context(&run.dataset, &run.run_id))?,
        };
        let body = serde_json::to_vec_pretty(&stored)
            .map_err(|e| JobError::bad_input("validation report", e.to_string()))?;
        let sha256 = hex::encode(sha2::Sha256::digest(&body));
        self.bucket
            .store
            .put(&path, PutPayload::from(body))
            .await
            .map_err(|e| JobError::store(format!("writing {}", self.bucket.display(&path)), e))?;
        Ok(Written {
            url: self.bucket.display(&path),
            path: path.to_string(),
            sha256,
        })
    }

    async fn commit(&self, manifest: &Manifest) -> Result<Written> {
        let path = self.log(&manifest.dataset).commit(manifest).await?;
        Ok(Written {
            url: self.bucket.display(&path),
            path: path.to_string(),
            sha256: String::new(),
        })
    }

    async fn discard(&self, files: &[PartFile]) {
        for file in files {
            if let Err(e) = self
                .bucket
                .store
                .delete(&Path::from(file.path.as_str()))
                .await
            {
                tracing::warn!(path = %file.path, error = %e, "could not delete an uncommitted part; it is unreferenced and safe to remove");
            }
        }
    }

    async fn put_note(&self, run: &RunTarget, name: &str, body: &[u8]) -> Result<()> {
        let sealed = self.encryptor.seal(body, &Self::note_context(run, name))?;
        let bytes = serde_json::to_vec(&sealed)
            .map_err(|e| JobError::Internal(format!("a run note does not serialise: {e}")))?;
        let path = Path::from(format!("{}/{name}", self.notes_dir(run)));
        self.bucket
            .store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| JobError::store(format!("writing {}", self.bucket.display(&path)), e))?;
        Ok(())
    }

    async fn note_names(&self, run: &RunTarget, prefix: &str) -> Result<Vec<String>> {
        let dir = self.notes_dir(run);
        let listed: Vec<_> = self
            .bucket
            .store
            .list(Some(&Path::from(dir.as_str())))
            .try_collect()
            .await
            .map_err(|e| JobError::store(format!("listing the notes of run {}", run.run_id), e))?;
        let mut names: Vec<String> = listed
            .into_iter()
            .filter_map(|meta| {
                meta.location
                    .as_ref()
                    .strip_prefix(&format!("{dir}/"))
                    .map(str::to_owned)
            })
            .filter(|name| name.starts_with(prefix))
            .collect();
        names.sort();
        Ok(names)
    }

    async fn read_note(&self, run: &RunTarget, name: &str) -> Result<Vec<u8>> {
        let path = Path::from(format!("{}/{name}", self.notes_dir(run)));
        let bytes = self.read_object(&path).await?;
        let sealed: Sealed = serde_json::from_slice(&bytes).map_err(|e| {
            JobError::Internal(format!(
                "{} is not a run note: {e}",
                self.bucket.display(&path)
            ))
        })?;
        self.encryptor.open(&sealed, &Self::note_context(run, name))
    }

    async fn sweep(&self, run: &RunTarget, keep: &[PartFile]) -> Result<usize> {
        let dir = self.run_dir(run);
        let listed: Vec<_> = self
            .bucket
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| JobError::store(format!("listing run {}", run.run_id), e))?;
        let kept: std::collections::HashSet<&str> = keep.iter().map(|f| f.path.as_str()).collect();
        let mut removed = 0;
        for meta in listed {
            if kept.contains(meta.location.as_ref()) {
                continue;
            }
            self.bucket
                .store
                .delete(&meta.location)
                .await
                .map_err(|e| {
                    JobError::store(
                        format!("removing {}", self.bucket.display(&meta.location)),
                        e,
                    )
                })?;
            removed += 1;
        }
        Ok(removed)
    }

    fn data_url(&self, run: &RunTarget) -> String {
        self.bucket.display(&self.run_dir(run))
    }
}
