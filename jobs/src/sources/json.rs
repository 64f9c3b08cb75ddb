//! JSON: a top-level array of objects or NDJSON, decoded by arrow-json. Nested objects become
//! structs, arrays become lists. Records are split first (see `json_records`), so a bad record is
//! named by number and line, and with the skip policy only that record is left out.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::json::reader::{Decoder, ReaderBuilder, infer_json_schema_from_iterator};
use carga_config::JsonOptions;
use serde_json::Value;

use super::json_records::{RecordPosition, RecordSplitter};
use super::{ReadContext, TypeHints};
use crate::error::{JobError, Result};
use crate::storage::SourceObject;
use crate::validation::ReadStats;

pub(crate) fn read(
    object: &SourceObject,
    opts: &JsonOptions,
    mut ctx: ReadContext,
) -> Result<ReadStats> {
    let input = object.open_blocking(&ctx.runtime)?;
    let mut splitter = RecordSplitter::new(input, opts.max_record_bytes);
    let mut stats = ReadStats::default();
    let mut pending = PendingRecords::default();

    // Sample: parse the first records fully to infer the schema; keep their bytes to decode later.
    let mut sample = Vec::new();
    while sample.len() < opts.infer_records.max(1) {
        let Some(position) = next_record(&mut splitter, &ctx)? else {
            break;
        };
        stats.rows_read += 1;
        match serde_json::from_slice::<Value>(&splitter.record) {
            Ok(value) => {
                sample.push(value);
                pending.push(position, &splitter.record);
            }
            Err(e) => ctx.reject(
                &mut stats,
                position.record,
                "invalid JSON",
                invalid(position, &e),
            )?,
        }
    }
    let inferred = infer_json_schema_from_iterator(sample.iter().map(Ok)).map_err(|e| {
        ctx.bad_input(format!(
            "cannot infer a schema from the first {} records: {e}",
            sample.len()
        ))
    })?;
    drop(sample);
    let schema = apply_hints(inferred, &ctx.hints);
    ctx.announce_schema(schema.clone());

    let mut batcher = Batcher { schema, ctx, stats };
    loop {
        if pending.len() >= batcher.ctx.batch_rows && !batcher.flush(&mut pending)? {
            return Ok(batcher.stats);
        }
        let Some(position) = next_record(&mut splitter, &batcher.ctx)? else {
            break;
        };
        batcher.stats.rows_read += 1;
        // A cheap syntax check per record, so one bad record cannot poison a whole batch's decode.
        match serde_json::from_slice::<serde::de::IgnoredAny>(&splitter.record) {
            Ok(_) => pending.push(position, &splitter.record),
            Err(e) => {
                let reason = invalid(position, &e);
                batcher
                    .ctx
                    .reject(&mut batcher.stats, position.record, "invalid JSON", reason)?
            }
        }
    }
    batcher.flush(&mut pending)?;
    Ok(batcher.stats)
}

fn next_record<R: std::io::BufRead>(
    splitter: &mut RecordSplitter<R>,
    ctx: &ReadContext,
) -> Result<Option<RecordPosition>> {
    splitter
        .next_record()
        .map_err(|message| ctx.bad_input(message))
}

fn invalid(position: RecordPosition, error: &serde_json::Error) -> String {
    format!(
        "record {} (line {}): invalid JSON: {error}",
        position.record, position.line
    )
}

/// Explicit and previous-run types replace inferred ones; previous columns absent from the sample
/// are kept so that they decode if they appear later in the file.
pub(crate) fn apply_hints(inferred: Schema, hints: &TypeHints) -> SchemaRef {
    let mut fields: Vec<Field> = inferred
        .fields()
        .iter()
        .map(|f| match hints.for_column(f.name()) {
            Some(data_type) => Field::new(f.name(), data_type, true),
            None => f.as_ref().clone().with_nullable(true),
        })
        .collect();
    let known: Vec<String> = fields.iter().map(|f| f.name().clone()).collect();
    let previous = hints.previous.iter().flat_map(|s| {
        s.fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
    });
    let explicit = hints.explicit.iter().map(|(n, t)| (n.clone(), t.clone()));
    for (name, data_type) in explicit.chain(previous) {
        if !known.contains(&name) && !fields.iter().any(|f| *f.name() == name) {
            fields.push(Field::new(name, data_type, true));
        }
    }
    Arc::new(Schema::new(fields))
}

/// Raw bytes of the records of the batch being built, with their positions.
#[derive(Default)]
struct PendingRecords {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    positions: Vec<RecordPosition>,
}

impl PendingRecords {
    fn push(&mut self, position: RecordPosition, record: &[u8]) {
        self.bytes.extend_from_slice(record);
        self.ends.push(self.bytes.len());
        self.positions.push(position);
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn records(&self) -> impl Iterator<Item = (RecordPosition, &[u8])> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        self.positions
            .iter()
            .zip(starts.zip(self.ends.iter().copied()))
            .map(|(p, (s, e))| (*p, &self.bytes[s..e]))
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
        self.positions.clear();
    }
}

struct Batcher {
    schema: SchemaRef,
    ctx: ReadContext,
    stats: ReadStats,
}

impl Batcher {
    fn decoder(&self, rows: usize) -> Result<Decoder> {
        ReaderBuilder::new(self.schema.clone())
            .with_batch_size(rows.max(1))
            .build_decoder()
            .map_err(|e| JobError::arrow(self.ctx.location.clone(), e))
    }

    fn decode<'a>(
        &self,
        records: impl Iterator<Item = &'a [u8]>,
        rows: usize,
    ) -> arrow::error::Result<Option<RecordBatch>> {
        let mut decoder = self
            .decoder(rows)
            .map_err(|e| arrow::error::ArrowError::ExternalError(Box::new(e)))?;
        for record in records {
            decoder.decode(record)?;
        }
        decoder.flush()
    }

    /// Decodes and sends the pending records; `false` when the pipeline stopped listening.
    fn flush(&mut self, pending: &mut PendingRecords) -> Result<bool> {
        if pending.len() == 0 {
            return Ok(true);
        }
        let batch = match self.decode(pending.records().map(|(_, r)| r), pending.len()) {
            Ok(batch) => batch,
            // Some record does not fit the schema: find which, decoding each on its own.
            Err(_) => {
                let mut good = Vec::with_capacity(pending.len());
                for (position, record) in pending.records() {
                    match self.decode(std::iter::once(record), 1) {
                        Ok(_) => good.push(record),
                        Err(e) => {
                            let reason = format!(
                                "record {} (line {}): does not fit the schema: {e}",
                                position.record, position.line
                            );
                            self.ctx.reject(
                                &mut self.stats,
                                position.record,
                                "type mismatch",
                                reason,
                            )?;
                        }
                    }
                }
                let rows = good.len();
                self.decode(good.into_iter(), rows)
                    .map_err(|e| JobError::arrow(self.ctx.location.clone(), e))?
            }
        };
        pending.clear();
        Ok(match batch {
            Some(batch) if batch.num_rows() > 0 => self.ctx.send(batch),
            _ => true,
        })
    }
}
