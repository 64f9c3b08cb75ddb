//! Files that carry their own schema and types: Parquet, Arrow IPC (file or stream format) and
//! Avro. Read batch by batch (Parquet by row group), so memory holds a batch, never the file; a
//! remote file is first streamed to a temporary file (Parquet and the IPC file format need
//! seeks). Types are the file's: the dataset's explicit and previous types are checked against
//! them by the schema plan (a changed type is schema drift), never cast silently.

use std::io::{BufReader, Read, Seek, SeekFrom};

use arrow::array::{RecordBatch, RecordBatchReader};
use arrow::error::ArrowError;
use carga_config::ColumnarSource;

use super::{FileFormat, SourceOutput};
use crate::error::Result;
use crate::storage::SourceObject;
use crate::validation::ReadStats;

/// Which of the self-describing formats.
#[derive(Debug, Clone, Copy)]
pub enum Columnar {
    Parquet,
    ArrowIpc,
    Avro,
}

/// A Parquet, Arrow IPC or Avro file.
pub(crate) struct ColumnarFile {
    pub config: ColumnarSource,
    pub kind: Columnar,
}

impl FileFormat for ColumnarFile {
    fn location(&self) -> &str {
        &self.config.location
    }

    fn parse(&self, object: &SourceObject, output: SourceOutput) -> Result<ReadStats> {
        read(object, self.kind, output)
    }
}

pub(crate) fn read(
    object: &SourceObject,
    format: Columnar,
    mut ctx: SourceOutput,
) -> Result<ReadStats> {
    let copy = object.local_copy(&ctx.runtime)?;
    let file = copy.file()?;
    let batch_rows = ctx.batch_rows;
    let not_readable = |what: &str, e: &dyn std::fmt::Display| {
        ctx.bad_input(format!("not a readable {what} file: {e}"))
    };
    let batches: Box<dyn Iterator<Item = std::result::Result<RecordBatch, ArrowError>>> =
        match format {
            Columnar::Parquet => {
                let builder =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                        .map_err(|e| not_readable("Parquet", &e))?;
                let reader = builder
                    .with_batch_size(batch_rows)
                    .build()
                    .map_err(|e| not_readable("Parquet", &e))?;
                ctx.announce_schema(reader.schema());
                Box::new(reader)
            }
            Columnar::ArrowIpc => {
                let mut file = file;
                let mut magic = [0u8; 6];
                let is_file_format = file.read_exact(&mut magic).is_ok() && &magic == b"ARROW1";
                file.seek(SeekFrom::Start(0))
                    .map_err(|e| not_readable("Arrow IPC", &e))?;
                if is_file_format {
                    let reader = arrow::ipc::reader::FileReader::try_new(file, None)
                        .map_err(|e| not_readable("Arrow IPC", &e))?;
                    ctx.announce_schema(reader.schema());
                    Box::new(reader)
                } else {
                    let reader =
                        arrow::ipc::reader::StreamReader::try_new(BufReader::new(file), None)
                            .map_err(|e| not_readable("Arrow IPC", &e))?;
                    ctx.announce_schema(reader.schema());
                    Box::new(reader)
                }
            }
            Columnar::Avro => {
                let reader = arrow_avro::reader::ReaderBuilder::new()
                    .with_batch_size(batch_rows)
                    .build(BufReader::with_capacity(1 << 20, file))
                    .map_err(|e| not_readable("Avro", &e))?;
                ctx.announce_schema(reader.schema());
                Box::new(reader)
            }
        };
    let mut stats = ReadStats::default();
    for (index, batch) in batches.enumerate() {
        let batch = batch.map_err(|e| {
            ctx.bad_input(format!(
                "batch {} (after row {}): {e}",
                index + 1,
                stats.rows_read
            ))
        })?;
        stats.rows_read += batch.num_rows() as u64;
        if batch.num_rows() > 0 && !ctx.send(batch) {
            break;
        }
    }
    Ok(stats)
}
