//! Where a source's bytes come from: a local file under the data roots, an `s3://` object, an
//! `http(s)` URL or an upload, each checked against the access policy and read as a stream.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::access::{AccessPolicy, LocalRoots};
pub use crate::bucket::Bucket;
use crate::bucket::s3_store;
use crate::error::{JobError, Result};
use crate::upload::{UPLOAD_SCHEME, UploadArea, UploadError};

/// A source file to read: a local path, an `s3://` object or an `https://` URL, resolved and
/// checked against the process's access policy.
#[derive(Clone, Debug)]
pub struct SourceObject {
    /// How the file is named in messages.
    pub display: String,
    pub kind: SourceObjectKind,
}

#[derive(Clone, Debug)]
pub enum SourceObjectKind {
    /// A file under the data roots, already resolved (symlinks followed).
    Local { path: PathBuf, roots: LocalRoots },
    Remote {
        store: Arc<dyn ObjectStore>,
        path: Path,
    },
    /// Fetched with the policy's HTTP client (addresses checked as they are resolved).
    Http {
        client: reqwest::Client,
        url: url::Url,
    },
    /// A file uploaded through the API, decrypted as it is read.
    Upload { area: UploadArea, id: String },
}

impl SourceObject {
    pub fn resolve(location: &str, policy: &AccessPolicy) -> Result<Self> {
        let display = location.to_owned();
        if let Some(id) = location.strip_prefix(UPLOAD_SCHEME) {
            let area = policy.uploads.clone().ok_or_else(|| JobError::Denied {
                rule: "uploads",
                message: format!(
                    "{location}: this process has no access to uploaded files (its bucket and master key)"
                ),
            })?;
            crate::upload::check_id(id)
                .map_err(|_| JobError::bad_input(location, "not an upload id"))?;
            return Ok(Self {
                display,
                kind: SourceObjectKind::Upload {
                    area,
                    id: id.to_owned(),
                },
            });
        }
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').ok_or_else(|| {
                JobError::bad_input(location, "an s3:// location needs a bucket and a key")
            })?;
            let store = s3_store(bucket, &policy.s3)?;
            return Ok(Self {
                display,
                kind: SourceObjectKind::Remote {
                    store,
                    path: Path::from(key),
                },
            });
        }
        if location.starts_with("https://") || location.starts_with("http://") {
            let url = url::Url::parse(location)
                .map_err(|e| JobError::bad_input(location, format!("not a valid URL: {e}")))?;
            policy.network.check_url(&url).map_err(|why| JobError::Denied {
                rule: "private network",
                message: format!(
                    "{location}: {why}, which this process may not reach (sources.allow_private_networks)"
                ),
            })?;
            let client = policy
                .network
                .client_builder()
                .user_agent(concat!("carga/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| JobError::bad_input(location, format!("HTTP client: {e}")))?;
            return Ok(Self {
                display,
                kind: SourceObjectKind::Http { client, url },
            });
        }
        let path = policy
            .local
            .check(location)
            .map_err(|refusal| JobError::Denied {
                rule: refusal.rule(),
                message: refusal.to_string(),
            })?;
        Ok(Self {
            display,
            kind: SourceObjectKind::Local {
                path,
                roots: policy.local.clone(),
            },
        })
    }

    /// A blocking reader over the object's bytes, streamed (never loaded whole).
    /// Must be called from a blocking thread (`spawn_blocking`), never from async code.
    pub fn open_blocking(
        &self,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Box<dyn BufRead + Send>> {
        self.open_sized_blocking(runtime).map(|(reader, _)| reader)
    }

    /// As `open_blocking`, with the object's size in bytes where the same open tells it (the
    /// file's metadata, the store's answer to the GET, `Content-Length`, the upload's length):
    /// live progress measures against it without a second open or request.
    pub fn open_sized_blocking(
        &self,
        runtime: &tokio::runtime::Handle,
    ) -> Result<(Box<dyn BufRead + Send>, Option<u64>)> {
        match &self.kind {
            SourceObjectKind::Local { .. } => {
                let file = self.open_local()?;
                let size = file.metadata().ok().map(|m| m.len());
                Ok((Box::new(BufReader::with_capacity(1 << 20, file)), size))
            }
            SourceObjectKind::Remote { store, path } => {
                let get = runtime
                    .block_on(store.get(path))
                    .map_err(|e| JobError::store(format!("reading {}", self.display), e))?;
                let size = get.meta.size;
                let stream = get.into_stream().map_err(std::io::Error::other);
                let reader =
                    SyncIoBridge::new_with_handle(StreamReader::new(stream), runtime.clone());
                Ok((
                    Box::new(BufReader::with_capacity(1 << 20, reader)),
                    Some(size),
                ))
            }
            SourceObjectKind::Http { client, url } => {
                let response = runtime
                    .block_on(client.get(url.clone()).send())
                    .map_err(|e| self.http_error(&e))?;
                if !response.status().is_success() {
                    return Err(JobError::Http {
                        context: format!("reading {}", self.display),
                        message: format!("HTTP {}", response.status()),
                    });
                }
                let size = response.content_length();
                let stream = response.bytes_stream().map_err(std::io::Error::other);
                let reader =
                    SyncIoBridge::new_with_handle(StreamReader::new(stream), runtime.clone());
                Ok((Box::new(BufReader::with_capacity(1 << 20, reader)), size))
            }
            SourceObjectKind::Upload { area, id } => {
                // The store failing is not the input's fault (and must not reject an upload).
                let state = runtime
                    .block_on(area.state(id))
                    .map_err(|e| match e {
                        UploadError::Job(e) => e,
                        other => JobError::bad_input(&self.display, other.to_string()),
                    })?
                    .ok_or_else(|| JobError::bad_input(&self.display, "no such upload"))?;
                if !state.is_complete() {
                    return Err(JobError::bad_input(
                        &self.display,
                        format!(
                            "the upload is not finished ({} of {} bytes received)",
                            state.offset,
                            state.length.map_or("?".into(), |l| l.to_string())
                        ),
                    ));
                }
                let reader = SyncIoBridge::new_with_handle(
                    StreamReader::new(area.plaintext(&state)),
                    runtime.clone(),
                );
                Ok((
                    Box::new(BufReader::with_capacity(1 << 20, reader)),
                    state.length,
                ))
            }
        }
    }

    /// A local file of the data roots, opened and checked again (see `LocalRoots::open`).
    fn open_local(&self) -> Result<std::fs::File> {
        let SourceObjectKind::Local { path, roots } = &self.kind else {
            unreachable!("open_local on a remote object");
        };
        roots.open(&self.display, path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                JobError::Denied {
                    rule: "outside the data roots",
                    message: format!("opening {}: {e}", self.display),
                }
            } else {
                JobError::io(format!("opening {}", self.display), e)
            }
        })
    }

    fn http_error(&self, error: &reqwest::Error) -> JobError {
        // The innermost cause says why (refused address, timeout, TLS); the URL is ours already.
        let mut cause: &dyn std::error::Error = error;
        while let Some(next) = cause.source() {
            cause = next;
        }
        JobError::Http {
            context: format!("reading {}", self.display),
            message: cause.to_string(),
        }
    }

    /// A local file with the object's bytes: the file itself (kept open, so the checked file is
    /// the one read), or a temporary copy streamed to disk. Formats that need random access
    /// (Excel) read through this.
    pub fn local_copy(&self, runtime: &tokio::runtime::Handle) -> Result<LocalCopy> {
        match &self.kind {
            SourceObjectKind::Local { path, .. } => Ok(LocalCopy::Original {
                file: self.open_local()?,
                path: path.clone(),
            }),
            SourceObjectKind::Remote { .. }
            | SourceObjectKind::Http { .. }
            | SourceObjectKind::Upload { .. } => {
                let mut temp = tempfile::NamedTempFile::new()
                    .map_err(|e| JobError::io("creating a temporary file", e))?;
                let mut reader = self.open_blocking(runtime)?;
                std::io::copy(&mut reader, temp.as_file_mut())
                    .map_err(|e| JobError::io(format!("downloading {}", self.display), e))?;
                Ok(LocalCopy::Temporary(temp))
            }
        }
    }
}

pub enum LocalCopy {
    Original { file: std::fs::File, path: PathBuf },
    Temporary(tempfile::NamedTempFile),
}

impl LocalCopy {
    /// A readable copy of the bytes: the open file (not its path, which could have been swapped
    /// since it was checked), or the temporary file.
    pub fn file(&self) -> Result<std::fs::File> {
        let (file, context) = match self {
            LocalCopy::Original { file, path } => (file, path.display().to_string()),
            LocalCopy::Temporary(temp) => (temp.as_file(), temp.path().display().to_string()),
        };
        file.try_clone()
            .map_err(|e| JobError::io(format!("reading {context}"), e))
    }
}
