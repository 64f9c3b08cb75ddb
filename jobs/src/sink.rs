//! Encrypted Parquet part files written through object_store, rolled every N rows.
//! Each part is hashed as its bytes stream out, so the manifest can carry a checksum
//! without reading the file back.

use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use carga_config::{Compression, Settings};
use futures::future::BoxFuture;
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::basic::{Compression as ParquetCompression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dictionary_choice::columns_without_dictionary;
use crate::encryption::Encryptor;
use crate::error::{JobError, Result};
use crate::row_groups::ParallelFileWriter;
use crate::storage::Bucket;

/// A finished part file, as listed in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartFile {
    /// Path inside the bucket.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Default)]
struct Tally {
    bytes: u64,
    hasher: Sha256,
}

/// Forwards bytes to the object writer, counting and hashing them on the way.
struct HashingWriter {
    inner: BufWriter,
    tally: Arc<Mutex<Tally>>,
}

impl AsyncFileWriter for HashingWriter {
    fn write(&mut self, bs: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        {
            let mut tally = self.tally.lock().expect("tally lock");
            tally.bytes += bs.len() as u64;
            tally.hasher.update(&bs);
        }
        self.inner.write(bs)
    }

    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        self.inner.complete()
    }
}

struct OpenPart {
    /// Encodes the part (on `encode_threads` threads).
    encoder: ParallelFileWriter,
    /// Uploads the encoded bytes.
    upload: HashingWriter,
    path: Path,
    rows: u64,
    tally: Arc<Mutex<Tally>>,
}

pub struct PartSink {
    bucket: Bucket,
    dir: Path,
    schema: SchemaRef,
    encryptor: Encryptor,
    compression: ParquetCompression,
    rows_per_file: u64,
    rows_per_row_group: usize,
    encode_threads: usize,
    current: Option<OpenPart>,
    written: Vec<PartFile>,
    name_prefix: String,
    /// Columns written without a dictionary, decided on the first batch (`dictionary_choice`).
    plain_columns: Option<Vec<ColumnPath>>,
}

impl PartSink {
    /// `dir` is the run's folder inside the bucket; parts are named `part-NNNNN.parquet` in it.
    pub fn new(
        bucket: Bucket,
        dir: Path,
        schema: SchemaRef,
        encryptor: Encryptor,
        settings: &Settings,
    ) -> Result<Self> {
        let compression = match settings.compression {
            Compression::Zstd => ParquetCompression::ZSTD(
                ZstdLevel::try_new(3).map_err(|e| JobError::parquet("zstd level", e))?,
            ),
            Compression::Snappy => ParquetCompression::SNAPPY,
        };
        Ok(Self {
            bucket,
            dir,
            schema,
            encryptor,
            compression,
            rows_per_file: settings.rows_per_file as u64,
            rows_per_row_group: settings.rows_per_row_group,
            encode_threads: settings.encode_threads(),
            current: None,
            written: Vec::new(),
            name_prefix: "part-".into(),
            plain_columns: None,
        })
    }

    /// Keeps everything in one file, whatever `rows_per_file` says (files read whole, such as a
    /// lookback window's tuples).
    pub fn in_one_file(mut self) -> Self {
        self.rows_per_file = u64::MAX;
        self
    }

    /// Names parts `<prefix>NNNNN.parquet` (chunks of one run write side by side in its folder).
    pub fn with_name_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.name_prefix = prefix.into();
        self
    }

    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.current.is_none() {
                if self.plain_columns.is_none() {
                    self.plain_columns = Some(columns_without_dictionary(batch));
                }
                self.current = Some(self.open_part()?);
            }
            let part = self.current.as_mut().expect("part just opened");
            let room = (self.rows_per_file - part.rows) as usize;
            let take = room.min(batch.num_rows() - offset);
            let slice = batch.slice(offset, take);
            let encoded = part.encoder.write(&slice).await;
            let written = match encoded {
                Ok(bytes) if bytes.is_empty() => Ok(()),
                Ok(bytes) => part.upload.write(bytes).await,
                Err(e) => Err(e),
            };
            written.map_err(|e| {
                JobError::parquet(format!("writing {}", self.bucket.display(&part.path)), e)
            })?;
            part.rows += take as u64;
            offset += take;
            if part.rows >= self.rows_per_file {
                self.close_part().await?;
            }
        }
        Ok(())
    }

    /// Closes the last part and returns every part written.
    pub async fn finish(mut self) -> Result<Vec<PartFile>> {
        self.close_part().await?;
        Ok(self.written)
    }

    /// Best-effort removal of the parts this run wrote: nothing references them yet.
    pub async fn abort(mut self) {
        if let Some(part) = self.current.take() {
            // An unfinished upload never becomes visible; aborting it also frees the uploaded parts.
            let mut upload = part.upload.inner;
            if let Err(e) = upload.abort().await {
                tracing::warn!(path = %part.path, error = %e, "could not abort an unfinished upload; it never becomes visible");
            }
        }
        for part in &self.written {
            let path = Path::from(part.path.as_str());
            if let Err(e) = self.bucket.store.delete(&path).await {
                tracing::warn!(path = %part.path, error = %e, "could not delete an uncommitted part; it is unreferenced and safe to remove");
            }
        }
    }

    fn open_part(&self) -> Result<OpenPart> {
        let path = self.dir.clone().join(format!(
            "{}{:05}.parquet",
            self.name_prefix,
            self.written.len()
        ));
        let properties = WriterProperties::builder()
            .set_compression(self.compression)
            .set_max_row_group_row_count(Some(self.rows_per_row_group))
            // `<app> version <x> (...)`: the form parquet-mr's VersionParser accepts, so readers
            // trust the statistics.
            .set_created_by(format!(
                "carga version {} ({})",
                env!("CARGO_PKG_VERSION"),
                parquet::file::properties::DEFAULT_CREATED_BY
            ))
            .with_file_encryption_properties(self.encryptor.file_encryption()?);
        let properties = self
            .plain_columns
            .iter()
            .flatten()
            .fold(properties, |builder, column| {
                builder.set_column_dictionary_enabled(column.clone(), false)
            })
            .build();
        let tally = Arc::new(Mutex::new(Tally::default()));
        let upload = HashingWriter {
            inner: BufWriter::new(self.bucket.store.clone(), path.clone()),
            tally: tally.clone(),
        };
        let encoder = ParallelFileWriter::try_new(
            self.schema.clone(),
            properties,
            self.rows_per_row_group,
            self.encode_threads,
        )
        .map_err(|e| JobError::parquet(format!("creating {}", self.bucket.display(&path)), e))?;
        Ok(OpenPart {
            encoder,
            upload,
            path,
            rows: 0,
            tally,
        })
    }

    async fn close_part(&mut self) -> Result<()> {
        let Some(part) = self.current.take() else {
            return Ok(());
        };
        let OpenPart {
            encoder,
            mut upload,
            path,
            rows,
            tally,
        } = part;
        let finished = match encoder.finish().await {
            Ok(footer) => match upload.write(footer).await {
                Ok(()) => upload.complete().await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        finished.map_err(|e| {
            JobError::parquet(format!("finishing {}", self.bucket.display(&path)), e)
        })?;
        let tally = std::mem::take(&mut *tally.lock().expect("tally lock"));
        self.written.push(PartFile {
            path: path.to_string(),
            rows,
            bytes: tally.bytes,
            sha256: hex::encode(tally.hasher.finalize()),
        });
        Ok(())
    }
}
