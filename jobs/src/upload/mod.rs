//! Uploaded files as they arrive and as runs read them: the bucket's `temp/` area.
//!
//! An upload is a state object (`temp/uploads/<id>.json`: who, which dataset, the declared length,
//! the offset received so far, its segments) and the bytes as **segments** under
//! `temp/<owner>/<id>/`: each request's body becomes one segment object, encrypted as it streams
//! (AES-GCM frames under a fresh data key wrapped by the master key, `encryption::frames`), so no
//! plaintext reaches a disk or the bucket and a server holds a few frames and one multipart part
//! per request, whatever the file's size. A request cut short keeps what it received (the
//! segment is completed with the bytes that came), so a client resumes from the offset the state
//! says. A run reads an upload (`location: upload://<id>`) as the segments' decrypted bytes in
//! order, checked frame by frame and against the lengths the state recorded.
//!
//! Writers of one upload are serialised by the API; if two ever race, each writes its own
//! segment object (a random suffix) and the state that lands last names a consistent set.

mod sniff;

pub use sniff::{UploadFormat, check as check_format};

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bucket::Bucket;
use crate::encryption::{Encryptor, FRAME_BYTES, FrameOpener, FrameSealer, FrameSplitter};
use crate::error::JobError;

/// How a dataset spec names an upload: `location: upload://<id>`.
pub const UPLOAD_SCHEME: &str = "upload://";
/// The state objects' folder, and the root of the uploads' bytes.
const AREA: &str = "temp";
const STATES: &str = "temp/uploads";
/// The state's layout.
const STATE_VERSION: u32 = 1;
/// Bytes per multipart part: the least S3 takes, since each part in flight is memory.
const PART_BYTES: usize = 5 << 20;
/// Parts in flight per request (memory per request ≈ (this + 1) × `PART_BYTES`).
const PARTS_IN_FLIGHT: usize = 2;
/// Sealed bytes gathered before they are handed to the part being filled (the buffer is reused).
const HANDOFF_BYTES: usize = 1 << 20;
/// First bytes kept from a segment at offset 0, for the format check.
const HEAD_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("no upload '{0}'")]
    NotFound(String),
    #[error(
        "the upload is at offset {expected}, not {got}: ask its offset (HEAD) and resume from there"
    )]
    OffsetMismatch { expected: u64, got: u64 },
    #[error("the upload would exceed {limit} bytes ({why})")]
    TooLarge { limit: u64, why: &'static str },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Job(#[from] JobError),
}

/// Who sent the file and what it is meant to become.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UploadMetadata {
    /// The dataset id it is uploaded for.
    pub dataset: String,
    pub filename: String,
    pub format: UploadFormat,
}

/// One request's bytes, as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Segment {
    /// The object, relative to the bucket.
    pub object: String,
    /// The file offset of its first byte.
    pub start: u64,
    /// Plaintext bytes it holds.
    pub bytes: u64,
    /// The wrapped data key of its frames (PKMT1 key material).
    pub key_material: String,
}

/// What the initial validation said.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UploadOutcome {
    /// `initial-validation-passed`, `validated_with_warnings` or `rejected` (the seed's words).
    pub status: String,
    pub report_url: Option<String>,
    pub reason: Option<String>,
}

/// An upload's state object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UploadState {
    pub format_version: u32,
    pub id: String,
    /// The uploader's subject (token owner).
    pub owner: String,
    pub metadata: UploadMetadata,
    /// Declared total; `None` while a streamed (multipart) upload does not know it yet.
    pub length: Option<u64>,
    pub offset: u64,
    pub segments: Vec<Segment>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub outcome: Option<UploadOutcome>,
}

impl UploadState {
    pub fn is_complete(&self) -> bool {
        self.length == Some(self.offset)
    }

    /// Where a spec points to read it.
    pub fn location(&self) -> String {
        format!("{UPLOAD_SCHEME}{}", self.id)
    }

    fn folder(&self) -> String {
        format!("{AREA}/{}/{}", owner_folder(&self.owner), self.id)
    }
}

/// What one request added.
#[derive(Debug)]
pub struct Appended {
    pub received: u64,
    /// Why the body ended early (the connection was cut); what came before is kept.
    pub cut: Option<String>,
    /// The file's first bytes, when this request started at offset 0.
    pub head: Option<Vec<u8>>,
}

/// A subject as a folder name: readable, and unique through a hash of the exact subject.
fn owner_folder(subject: &str) -> String {
    let readable: String = subject
        .chars()
        .take(40)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let hash = hex::encode(&Sha256::digest(subject.as_bytes())[..4]);
    format!("{readable}-{hash}")
}

/// An upload id as the API hands it out (a UUID); anything else is refused before it names a path.
pub fn check_id(id: &str) -> Result<(), UploadError> {
    uuid::Uuid::parse_str(id)
        .map(|_| ())
        .map_err(|_| UploadError::NotFound(id.to_owned()))
}

/// The uploads of one bucket, sealed with one master key.
#[derive(Clone)]
pub struct UploadArea {
    bucket: Bucket,
    encryptor: Encryptor,
}

impl fmt::Debug for UploadArea {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UploadArea")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl UploadArea {
    pub fn new(bucket: Bucket, encryptor: Encryptor) -> Self {
        Self { bucket, encryptor }
    }

    fn state_path(&self, id: &str) -> Path {
        self.bucket.path(&format!("{STATES}/{id}.json"))
    }

    /// A new, empty upload.
    pub async fn create(
        &self,
        owner: &str,
        metadata: UploadMetadata,
        length: Option<u64>,
    ) -> Result<UploadState, UploadError> {
        let now = Utc::now();
        let state = UploadState {
            format_version: STATE_VERSION,
            id: uuid::Uuid::now_v7().to_string(),
            owner: owner.to_owned(),
            metadata,
            length,
            offset: 0,
            segments: Vec::new(),
            created_at: now,
            updated_at: now,
            outcome: None,
        };
        self.save(&state).await?;
        Ok(state)
    }

    pub async fn state(&self, id: &str) -> Result<Option<UploadState>, UploadError> {
        check_id(id)?;
        let path = self.state_path(id);
        let bytes = match self.bucket.store.get(&path).await {
            Ok(get) => get
                .bytes()
                .await
                .map_err(|e| JobError::store(format!("reading upload {id}"), e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(JobError::store(format!("reading upload {id}"), e).into()),
        };
        let state = serde_json::from_slice(&bytes).map_err(|e| {
            JobError::Internal(format!("upload {id}: its state does not parse: {e}"))
        })?;
        Ok(Some(state))
    }

    pub async fn save(&self, state: &UploadState) -> Result<(), UploadError> {
        let json = serde_json::to_vec_pretty(state).expect("an upload state serializes");
        self.bucket
            .store
            .put(&self.state_path(&state.id), PutPayload::from(json))
            .await
            .map_err(|e| JobError::store(format!("saving upload {}", state.id), e))?;
        Ok(())
    }

    /// Appends `body` at `state.offset` as one new segment, encrypting as it streams, and
    /// saves the state. `limit` caps an upload whose length is not declared. A body that ends
    /// in an error (a cut connection) keeps the bytes that arrived.
    pub async fn append<S, E>(
        &self,
        state: &mut UploadState,
        body: S,
        limit: u64,
    ) -> Result<Appended, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: fmt::Display,
    {
        let start = state.offset;
        let (allowed, why) = match state.length {
            Some(length) => (length - start, "the declared Upload-Length"),
            None => (limit.saturating_sub(start), "the size limit"),
        };
        let object = format!("{}/{start:020}-{:016x}.seg", state.folder(), rand_suffix());
        let context = format!("upload {} segment {object}", state.id);
        let (sealer, key_material) = self.encryptor.frame_sealer(&context)?;
        let mut writer = SegmentWriter::new(self, &object, sealer, start == 0);
        let mut body = std::pin::pin!(body);
        let mut cut = None;
        while let Some(piece) = body.next().await {
            match piece {
                Ok(bytes) => {
                    if writer.received + bytes.len() as u64 > allowed {
                        writer.abort().await;
                        return Err(UploadError::TooLarge {
                            limit: start + allowed,
                            why,
                        });
                    }
                    if let Err(e) = writer.push(&bytes).await {
                        writer.abort().await;
                        return Err(e.into());
                    }
                }
                Err(e) => {
                    cut = Some(e.to_string());
                    break;
                }
            }
        }
        let received = writer.received;
        let head = writer.head.take();
        if received > 0 {
            writer.finish().await?;
            state.segments.push(Segment {
                object,
                start,
                bytes: received,
                key_material,
            });
            state.offset += received;
        }
        state.updated_at = Utc::now();
        self.save(state).await?;
        Ok(Appended {
            received,
            cut,
            head,
        })
    }

    /// The file's bytes in order, decrypted and checked (frames, lengths); streamed.
    pub fn plaintext(&self, state: &UploadState) -> BoxStream<'static, std::io::Result<Bytes>> {
        let reading = Reading {
            area: self.clone(),
            id: state.id.clone(),
            segments: state.segments.iter().cloned().collect(),
            current: None,
        };
        futures::stream::try_unfold(reading, |mut reading| async move {
            let next = reading.next().await.map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>(next.map(|bytes| (bytes, reading)))
        })
        .boxed()
    }

    /// Removes an upload: its segments (every object under its folder, also a raced writer's)
    /// and its state.
    pub async fn remove(&self, state: &UploadState) -> Result<(), UploadError> {
        let folder = self.bucket.path(&state.folder());
        let objects: Vec<Path> = self
            .bucket
            .store
            .list(Some(&folder))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| JobError::store(format!("listing upload {}", state.id), e))?;
        for object in objects {
            delete_quietly(&self.bucket, &object).await?;
        }
        delete_quietly(&self.bucket, &self.state_path(&state.id)).await?;
        Ok(())
    }

    /// Removes unfinished uploads nobody has sent bytes to for `idle`; returns how many.
    pub async fn sweep(&self, idle: Duration) -> Result<usize, UploadError> {
        let Some(cutoff) = chrono::Duration::from_std(idle)
            .ok()
            .and_then(|idle| Utc::now().checked_sub_signed(idle))
        else {
            return Ok(0);
        };
        let states: Vec<Path> = self
            .bucket
            .store
            .list(Some(&self.bucket.path(STATES)))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| JobError::store("listing uploads", e))?;
        let mut removed = 0;
        for path in states {
            let Some(id) = path.filename().and_then(|f| f.strip_suffix(".json")) else {
                continue;
            };
            let Ok(Some(state)) = self.state(id).await else {
                continue;
            };
            if !state.is_complete() && state.updated_at < cutoff {
                tracing::info!(upload = %state.id, owner = %state.owner, "removing an abandoned upload");
                self.remove(&state).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

async fn delete_quietly(bucket: &Bucket, path: &Path) -> Result<(), JobError> {
    match bucket.store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(JobError::store(format!("removing {path}"), e)),
    }
}

fn rand_suffix() -> u64 {
    let id = uuid::Uuid::new_v4();
    u64::from_be_bytes(id.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// One segment being written: plaintext in, sealed frames out to a multipart upload.
struct SegmentWriter<'a> {
    area: &'a UploadArea,
    path: Path,
    sealer: FrameSealer,
    /// Plaintext of the frame being filled; sealed when the next byte proves it is not the last.
    pending: Vec<u8>,
    sealed: Vec<u8>,
    upload: Option<WriteMultipart>,
    received: u64,
    head: Option<Vec<u8>>,
}

impl<'a> SegmentWriter<'a> {
    fn new(area: &'a UploadArea, object: &str, sealer: FrameSealer, keep_head: bool) -> Self {
        Self {
            area,
            path: area.bucket.path(object),
            sealer,
            pending: Vec::with_capacity(FRAME_BYTES),
            sealed: Vec::with_capacity(HANDOFF_BYTES + FRAME_BYTES + 64),
            upload: None,
            received: 0,
            head: keep_head.then(Vec::new),
        }
    }

    async fn push(&mut self, mut bytes: &[u8]) -> Result<(), JobError> {
        if let Some(head) = self.head.as_mut().filter(|h| h.len() < HEAD_BYTES) {
            let take = (HEAD_BYTES - head.len()).min(bytes.len());
            head.extend_from_slice(&bytes[..take]);
        }
        self.received += bytes.len() as u64;
        while !bytes.is_empty() {
            if self.pending.len() == FRAME_BYTES {
                self.sealer.seal(&self.pending, false, &mut self.sealed)?;
                self.pending.clear();
            }
            let take = (FRAME_BYTES - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        if self.sealed.len() >= HANDOFF_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), JobError> {
        if self.upload.is_none() {
            let upload = self
                .area
                .bucket
                .store
                .put_multipart(&self.path)
                .await
                .map_err(|e| JobError::store(format!("writing {}", self.path), e))?;
            self.upload = Some(WriteMultipart::new_with_chunk_size(upload, PART_BYTES));
        }
        let upload = self.upload.as_mut().expect("started above");
        upload
            .wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(|e| JobError::store(format!("writing {}", self.path), e))?;
        upload.write(&self.sealed);
        self.sealed.clear();
        Ok(())
    }

    async fn finish(mut self) -> Result<(), JobError> {
        let pending = std::mem::take(&mut self.pending);
        self.sealer.seal(&pending, true, &mut self.sealed)?;
        self.flush().await?;
        let upload = self.upload.take().expect("flush started it");
        upload
            .finish()
            .await
            .map_err(|e| JobError::store(format!("writing {}", self.path), e))?;
        Ok(())
    }

    async fn abort(mut self) {
        if let Some(upload) = self.upload.take()
            && let Err(e) = upload.abort().await
        {
            tracing::warn!(error = %e, path = %self.path, "aborting an upload segment failed");
        }
    }
}

/// The state of `UploadArea::plaintext`: the segments left and the one being read.
struct Reading {
    area: UploadArea,
    id: String,
    segments: VecDeque<Segment>,
    current: Option<SegmentReader>,
}

struct SegmentReader {
    segment: Segment,
    bytes: BoxStream<'static, object_store::Result<Bytes>>,
    opener: FrameOpener,
    splitter: FrameSplitter,
    /// Sealed bytes of the object not yet taken as frames: zero after the last frame.
    sealed_left: u64,
    plain: u64,
}

impl Reading {
    async fn next(&mut self) -> Result<Option<Bytes>, JobError> {
        loop {
            let Some(current) = self.current.as_mut() else {
                let Some(segment) = self.segments.pop_front() else {
                    return Ok(None);
                };
                self.current = Some(open_segment(&self.area, &self.id, segment).await?);
                continue;
            };
            if let Some(mut frame) = current.splitter.next_frame()? {
                current.sealed_left = current.sealed_left.saturating_sub(4 + frame.len() as u64);
                let last = current.sealed_left == 0;
                let plain = current.opener.open(&mut frame, last)?;
                current.plain += plain.len() as u64;
                if plain.is_empty() {
                    continue;
                }
                return Ok(Some(Bytes::copy_from_slice(plain)));
            }
            match current.bytes.next().await {
                Some(piece) => {
                    let piece = piece
                        .map_err(|e| JobError::store(format!("reading upload {}", self.id), e))?;
                    current.splitter.push(&piece);
                }
                None => {
                    if current.splitter.leftover() > 0 || current.plain != current.segment.bytes {
                        return Err(JobError::Encryption(format!(
                            "upload {}: segment at offset {} holds {} bytes where {} were recorded",
                            self.id, current.segment.start, current.plain, current.segment.bytes
                        )));
                    }
                    self.current = None;
                }
            }
        }
    }
}

/// A segment's object opened for reading, with the opener of its frames. (A free function: the
/// reading state holds a stream that is not `Sync`, so no `&Reading` may live across an await.)
async fn open_segment(
    area: &UploadArea,
    id: &str,
    segment: Segment,
) -> Result<SegmentReader, JobError> {
    let path = area.bucket.path(&segment.object);
    let context = format!("upload {id} segment {}", segment.object);
    let opener = area
        .encryptor
        .frame_opener(&segment.key_material, &context)?;
    let get = area
        .bucket
        .store
        .get(&path)
        .await
        .map_err(|e| JobError::store(format!("reading upload {id}"), e))?;
    let sealed_left = get.meta.size;
    Ok(SegmentReader {
        segment,
        bytes: get.into_stream(),
        opener,
        splitter: FrameSplitter::default(),
        sealed_left,
        plain: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encryption::MasterKeyring;

    fn area(dir: &std::path::Path) -> UploadArea {
        let keyring = MasterKeyring::create_file(&dir.join("keys.json"), "k1").unwrap();
        let settings = carga_config::Settings {
            bucket: dir.join("bucket").display().to_string(),
            ..Default::default()
        };
        UploadArea::new(
            Bucket::open(&settings).unwrap(),
            Encryptor::new(keyring, "k1").unwrap(),
        )
    }

    fn metadata() -> UploadMetadata {
        UploadMetadata {
            dataset: "ventas".into(),
            filename: "ventas.csv".into(),
            format: UploadFormat::Csv,
        }
    }

    fn body(pieces: Vec<Result<Bytes, String>>) -> impl Stream<Item = Result<Bytes, String>> {
        futures::stream::iter(pieces)
    }

    async fn read_all(area: &UploadArea, state: &UploadState) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut stream = area.plaintext(state);
        while let Some(piece) = stream.next().await {
            out.extend_from_slice(&piece?);
        }
        Ok(out)
    }

    fn file_bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| b"0123456789abcdef\n"[i % 17]).collect()
    }

    #[tokio::test]
    async fn a_cut_request_keeps_what_arrived_and_the_upload_resumes_from_there() {
        let dir = tempfile::tempdir().unwrap();
        let area = area(dir.path());
        let file = file_bytes(300_000);
        let mut state = area
            .create("ana@boveda", metadata(), Some(file.len() as u64))
            .await
            .unwrap();
        let first = area
            .append(
                &mut state,
                body(vec![
                    Ok(Bytes::copy_from_slice(&file[..100_000])),
                    Ok(Bytes::copy_from_slice(&file[100_000..170_001])),
                    Err("connection reset".into()),
                ]),
                u64::MAX,
            )
            .await
            .unwrap();
        assert_eq!(first.received, 170_001);
        assert_eq!(first.cut.as_deref(), Some("connection reset"));
        assert_eq!(first.head.unwrap().len(), HEAD_BYTES);
        let reloaded = area.state(&state.id).await.unwrap().unwrap();
        assert_eq!(reloaded.offset, 170_001);
        assert!(!reloaded.is_complete());
        let mut state = reloaded;
        area.append(
            &mut state,
            body(vec![Ok(Bytes::copy_from_slice(&file[170_001..]))]),
            u64::MAX,
        )
        .await
        .unwrap();
        assert!(state.is_complete());
        assert_eq!(read_all(&area, &state).await.unwrap(), file);
        // Nothing under the bucket holds the plaintext.
        for entry in walk(&dir.path().join("bucket")) {
            let stored = std::fs::read(&entry).unwrap();
            assert!(
                !stored.windows(17).any(|w| w == b"0123456789abcdef\n"),
                "{} holds plaintext",
                entry.display()
            );
        }
        area.remove(&state).await.unwrap();
        assert!(area.state(&state.id).await.unwrap().is_none());
        assert!(walk(&dir.path().join("bucket")).is_empty());
    }

    #[tokio::test]
    async fn bytes_past_the_declared_length_are_refused_and_nothing_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let area = area(dir.path());
        let mut state = area.create("ana", metadata(), Some(10)).await.unwrap();
        let error = area
            .append(
                &mut state,
                body(vec![Ok(Bytes::from_static(b"0123456789AB"))]),
                u64::MAX,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(error, UploadError::TooLarge { limit: 10, .. }),
            "{error}"
        );
        assert_eq!(area.state(&state.id).await.unwrap().unwrap().offset, 0);
    }

    #[tokio::test]
    async fn a_segment_changed_in_the_bucket_does_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let area = area(dir.path());
        let file = file_bytes(200_000);
        let mut state = area
            .create("ana", metadata(), Some(file.len() as u64))
            .await
            .unwrap();
        area.append(&mut state, body(vec![Ok(Bytes::from(file))]), u64::MAX)
            .await
            .unwrap();
        let segment = dir.path().join("bucket").join(&state.segments[0].object);
        let mut sealed = std::fs::read(&segment).unwrap();
        // Cut the last frame off: every remaining frame still opens, the end does not.
        let first = 4 + u32::from_be_bytes(sealed[..4].try_into().unwrap()) as usize;
        sealed.truncate(first);
        std::fs::write(&segment, &sealed).unwrap();
        let error = read_all(&area, &state).await.unwrap_err().to_string();
        assert!(error.contains("does not open"), "{error}");
    }

    #[tokio::test]
    async fn abandoned_uploads_are_swept_and_finished_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let area = area(dir.path());
        let mut done = area.create("ana", metadata(), Some(3)).await.unwrap();
        area.append(
            &mut done,
            body(vec![Ok(Bytes::from_static(b"a\n1"))]),
            u64::MAX,
        )
        .await
        .unwrap();
        let mut idle = area.create("ana", metadata(), Some(30)).await.unwrap();
        area.append(
            &mut idle,
            body(vec![Ok(Bytes::from_static(b"a\n1"))]),
            u64::MAX,
        )
        .await
        .unwrap();
        assert_eq!(area.sweep(Duration::from_secs(3600)).await.unwrap(), 0);
        idle.updated_at = Utc::now() - chrono::Duration::hours(2);
        area.save(&idle).await.unwrap();
        assert_eq!(area.sweep(Duration::from_secs(3600)).await.unwrap(), 1);
        assert!(area.state(&idle.id).await.unwrap().is_none());
        assert!(area.state(&done.id).await.unwrap().is_some());
    }

    #[test]
    fn owner_folders_are_safe_names_that_do_not_collide() {
        let a = owner_folder("ana/../../etc");
        assert!(!a.contains('/') && !a.contains(".."), "{a}");
        assert_ne!(owner_folder("ana@x"), owner_folder("ana#x"));
        assert!(check_id("../x").is_err());
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return out;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }
}
