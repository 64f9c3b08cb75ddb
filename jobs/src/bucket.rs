//! The raw zone's bucket: an object store (a local folder or S3) plus a prefix inside it.

use std::path::PathBuf;
use std::sync::Arc;

use carga_config::{S3Settings, Settings};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

use crate::error::{JobError, Result};

/// The raw zone: an object store plus a prefix inside it, with a printable base URL.
#[derive(Clone, Debug)]
pub struct Bucket {
    pub store: Arc<dyn ObjectStore>,
    prefix: Path,
    base_url: String,
}

impl Bucket {
    pub fn open(settings: &Settings) -> Result<Self> {
        let location = settings.bucket.as_str();
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let store = s3_store(bucket, &settings.s3)?;
            return Ok(Self {
                store,
                prefix: Path::from(prefix.trim_matches('/')),
                base_url: format!("s3://{bucket}"),
            });
        }
        let dir = PathBuf::from(location.strip_prefix("file://").unwrap_or(location));
        std::fs::create_dir_all(&dir)
            .map_err(|e| JobError::io(format!("creating bucket folder {}", dir.display()), e))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| JobError::io(format!("bucket folder {}", dir.display()), e))?;
        let store = LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| JobError::store(format!("bucket folder {}", dir.display()), e))?;
        Ok(Self {
            store: Arc::new(store),
            prefix: Path::default(),
            base_url: dir.display().to_string(),
        })
    }

    /// A path inside the bucket, below its prefix.
    pub fn path(&self, relative: &str) -> Path {
        let relative = Path::from(relative);
        if self.prefix.as_ref().is_empty() {
            relative
        } else {
            self.prefix.parts().chain(relative.parts()).collect()
        }
    }

    /// A human (and pyarrow) usable address of `path`: `s3://bucket/key` or an absolute file path.
    pub fn display(&self, path: &Path) -> String {
        format!("{}/{}", self.base_url, path)
    }

    /// The path behind an address `display` made; `None` for an address outside this bucket.
    pub fn locate(&self, address: &str) -> Option<Path> {
        let key = address.strip_prefix(&self.base_url)?.strip_prefix('/')?;
        Path::parse(key).ok().filter(|p| !p.as_ref().is_empty())
    }
}

pub(crate) fn s3_store(bucket: &str, s3: &S3Settings) -> Result<Arc<dyn ObjectStore>> {
    // Credentials come from the standard AWS environment / instance role, never from our settings.
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(endpoint) = &s3.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &s3.region {
        builder = builder.with_region(region);
    }
    if s3.allow_http {
        builder = builder.with_allow_http(true);
    }
    let store = builder
        .build()
        .map_err(|e| JobError::store(format!("S3 bucket '{bucket}'"), e))?;
    Ok(Arc::new(store))
}
