//! Reading committed data back: decrypts parts with the master key, in commit order.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::RecordBatch;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::{AsyncFileReader, MetadataSuffixFetch};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use crate::encryption::Encryptor;
use crate::error::{JobError, Result};
use crate::manifest::ManifestLog;
use crate::storage::Bucket;

/// Streams the record batches of one part file.
pub async fn read_part(
    bucket: &Bucket,
    encryptor: &Encryptor,
    path: &str,
) -> Result<impl Stream<Item = Result<RecordBatch>> + use<>> {
    let path = Path::from(path);
    let display = bucket.display(&path);
    let reader = ObjectReader {
        store: Arc::clone(&bucket.store),
        path,
    };
    let options =
        ArrowReaderOptions::new().with_file_decryption_properties(encryptor.file_decryption()?);
    let stream = ParquetRecordBatchStreamBuilder::new_with_options(reader, options)
        .await
        .map_err(|e| JobError::parquet(format!("opening {display}"), e))?
        .build()
        .map_err(|e| JobError::parquet(format!("opening {display}"), e))?;
    Ok(stream.map_err(move |e| JobError::parquet(format!("reading {display}"), e)))
}

/// Streams the dataset as it stands: the latest complete snapshot plus the deltas committed after it.
pub async fn read_dataset(
    bucket: &Bucket,
    encryptor: &Encryptor,
    dataset: &str,
) -> Result<impl Stream<Item = Result<RecordBatch>> + use<>> {
    let files = ManifestLog::new(bucket, dataset).live_files().await?;
    let bucket = bucket.clone();
    let encryptor = encryptor.clone();
    Ok(futures::stream::iter(files)
        .then(move |file| {
            let bucket = bucket.clone();
            let encryptor = encryptor.clone();
            async move { read_part(&bucket, &encryptor, &file.path).await }
        })
        .try_flatten())
}

/// Collects a whole dataset; for tests and small previews only.
pub async fn collect_dataset(
    bucket: &Bucket,
    encryptor: &Encryptor,
    dataset: &str,
) -> Result<Vec<RecordBatch>> {
    read_dataset(bucket, encryptor, dataset)
        .await?
        .try_collect()
        .await
}

/// Random access to one object for the Parquet reader: ranges for pages, a suffix for the footer.
struct ObjectReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
}

fn to_parquet_err(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for ObjectReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(to_parquet_err)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(to_parquet_err)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_via_suffix_and_finish(self)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

impl MetadataSuffixFetch for &mut ObjectReader {
    fn fetch_suffix(&mut self, suffix: usize) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        let options = GetOptions {
            range: Some(GetRange::Suffix(suffix as u64)),
            ..Default::default()
        };
        async move {
            let response = self
                .store
                .get_opts(&self.path, options)
                .await
                .map_err(to_parquet_err)?;
            response.bytes().await.map_err(to_parquet_err)
        }
        .boxed()
    }
}
