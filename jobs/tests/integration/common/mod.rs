//! Shared test harness: a temporary bucket and key file, spec helpers, and service checks.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use arrow::array::RecordBatch;
use carga_config::{DatasetSpec, Settings, SourceAccessSettings};
use carga_jobs::manifest::{Manifest, ManifestLog};
use carga_jobs::{Engine, read};

/// Set by `.ci/run`: a test that would skip for a missing service or tool fails instead.
pub const REQUIRE_ALL: &str = "CARGA_TEST_REQUIRE_ALL";

/// Returns false (and says why) when a service this test needs is not reachable.
pub fn service_available(name: &str, address: &str) -> bool {
    let reachable = address
        .parse()
        .ok()
        .and_then(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
        .is_some();
    skip_unless(reachable, &format!("{name} is not reachable at {address}"))
}

/// Sets the AWS credential variables moto accepts, once per test process, before a test makes
/// its first AWS client (the standard chain reads them).
pub fn aws_test_credentials() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: the same constant values every time, written once, before this test's
        // threads read them; no other code in this binary writes these variables.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
            std::env::set_var("AWS_DEFAULT_REGION", "us-east-1");
        }
    });
}

/// The moto server tests talk to for S3, Secrets Manager and KMS.
pub fn moto_endpoint() -> String {
    std::env::var("CARGA_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5000".into())
}

/// Returns `condition`; when false, prints a skip notice, or panics when CI requires everything.
pub fn skip_unless(condition: bool, why: &str) -> bool {
    if !condition {
        if std::env::var(REQUIRE_ALL).is_ok_and(|v| v == "1") {
            panic!("{why}, and {REQUIRE_ALL}=1 forbids skipping");
        }
        eprintln!("SKIPPED: {why} (set {REQUIRE_ALL}=1 to make this a failure)");
    }
    condition
}

/// A throwaway bucket folder and master key file.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub settings: Settings,
}

impl Lab {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            bucket: dir.path().join("bucket").display().to_string(),
            key_file: dir.path().join("keys.json"),
            // Small batches and files, so multi-batch and multi-part paths run on small inputs.
            batch_rows: 64,
            rows_per_file: 500,
            rows_per_row_group: 128,
            // The lab folder and the repository's samples are the data roots; REST tests serve
            // on loopback.
            sources: SourceAccessSettings {
                local_roots: Some(vec![
                    dir.path().to_owned(),
                    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../samples")),
                    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests")),
                ]),
                allow_private_networks: Some(true),
            },
            ..Settings::default()
        };
        Self { dir, settings }
    }

    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// A spec from YAML whose `location` is a file name inside the lab folder.
    pub fn spec(&self, yaml: &str) -> DatasetSpec {
        let mut spec = DatasetSpec::from_yaml(yaml).unwrap();
        let folder = self.dir.path().to_owned();
        if let Some(location) = spec.source.location_mut()
            && !location.contains("://")
            && !location.starts_with('/')
        {
            *location = folder.join(&*location).display().to_string();
        }
        spec
    }

    pub fn engine(&self) -> Engine {
        Engine::new(self.settings.clone()).unwrap()
    }

    pub async fn batches(&self, dataset: &str) -> Vec<RecordBatch> {
        let engine = self.engine();
        read::collect_dataset(engine.bucket(), engine.encryptor(), dataset)
            .await
            .unwrap()
    }

    /// The committed rows as JSON objects, in commit order.
    pub async fn rows(&self, dataset: &str) -> Vec<serde_json::Value> {
        rows_as_json(&self.batches(dataset).await)
    }

    pub async fn manifests(&self, dataset: &str) -> Vec<Manifest> {
        let engine = self.engine();
        let log = ManifestLog::new(engine.bucket(), dataset).with_keys(engine.encryptor());
        let mut out = Vec::new();
        for sequence in log.sequences().await.unwrap() {
            out.push(log.load(sequence).await.unwrap());
        }
        out
    }

    /// A stored manifest or validation report, opened with the master key as the dashboard
    /// shows it to roles that may see data values.
    pub fn document(&self, path: impl AsRef<std::path::Path>) -> serde_json::Value {
        let bytes = std::fs::read(path).unwrap();
        carga_jobs::destination::raw_zone::open_document(&bytes, Some(self.engine().encryptor()))
            .unwrap()
    }

    /// Where a committed part lives on disk.
    pub fn part_path(&self, file: &carga_jobs::sink::PartFile) -> PathBuf {
        self.dir.path().join("bucket").join(&file.path)
    }

    /// Every Parquet file under the bucket, committed or not.
    pub fn parquet_files(&self) -> Vec<PathBuf> {
        self.bucket_files()
            .into_iter()
            .filter(|path| path.extension().is_some_and(|e| e == "parquet"))
            .collect()
    }

    /// Every file in the lab's bucket, at any depth.
    pub fn bucket_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir.path().join("bucket"), &mut out);
        out
    }
}

pub fn rows_as_json(batches: &[RecordBatch]) -> Vec<serde_json::Value> {
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    for batch in batches {
        writer.write(batch).unwrap();
    }
    writer.finish().unwrap();
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Vec::new();
    }
    serde_json::from_slice(&bytes).unwrap()
}

/// Values of one column across rows, for compact assertions.
pub fn column(rows: &[serde_json::Value], name: &str) -> Vec<serde_json::Value> {
    rows.iter()
        .map(|r| r.get(name).cloned().unwrap_or(serde_json::Value::Null))
        .collect()
}
