//! JSON: a top-level array of objects or NDJSON, decoded by arrow-json. Nested objects become
//! structs, arrays become lists. Records are split first (see `records`), so a bad record is
//! named by number and line, and with the skip policy only that record is left out.
//!
//! The first records settle the schema, in order; the rest are split on the calling thread (it
//! only follows brackets and quotes) into parts that `parse_threads` threads check and decode,
//! handed on in the file's order (`sources::in_order`): the same rows, report and first error as
//! one pass.
//!
//! Values are never altered silently: a field inferred as text takes numbers and booleans as
//! their JSON text; a field that is an object or array in some records and a scalar in others is
//! written as JSON text (`json.mixed_types: string`) or refused (`fail`); integers beyond int64
//! are exact decimals (or text when they exceed 38 digits or mix with fractions), never floats.

mod records;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::json::reader::{Decoder, ReaderBuilder, infer_json_schema_from_iterator};
use carga_config::{Encoding, JsonOptions, JsonSource, MalformedRowPolicy, MixedTypesPolicy};
use serde_json::Value;
use serde_json::value::RawValue;

use self::records::{RecordPosition, RecordSplitter};
use super::in_order::parse_in_order;
use super::output::RowRules;
use super::spares::Spares;
use super::text_input::utf8_input;
use super::{FileFormat, SourceOutput, TypeHints};
use crate::error::{JobError, Result};
use crate::storage::SourceObject;
use crate::validation::ReadStats;

/// A JSON file (an array of records or one record per line).
impl FileFormat for JsonSource {
    fn location(&self) -> &str {
        &self.location
    }

    fn parse(&self, object: &SourceObject, output: SourceOutput) -> Result<ReadStats> {
        read(object, &self.json, output)
    }
}

pub(crate) fn read(
    object: &SourceObject,
    opts: &JsonOptions,
    ctx: SourceOutput,
) -> Result<ReadStats> {
    let raw = ctx.open_counted(object)?;
    let (input, _) = utf8_input(raw, Encoding::Utf8)
        .map_err(|e| JobError::io(format!("reading {}", ctx.location), e))?;
    let shape = (ctx.parse_threads, ctx.batch_rows, PART_BYTES);
    read_text(input, opts, ctx, shape)
}

/// Records per part are the batch size; bytes per part are capped too, so a file of large
/// records keeps the parts in flight (threads + 1) a few MiB each.
const PART_BYTES: usize = 4 << 20;

/// Reads UTF-8 JSON text: the sample in order, then the rest split into parts of at most
/// `part_rows` records and about `part_bytes` that `threads` threads check and decode, handed on
/// in the file's order (`sources::in_order`).
fn read_text(
    input: impl std::io::Read + Send,
    opts: &JsonOptions,
    mut ctx: SourceOutput,
    (threads, part_rows, part_bytes): (usize, usize, usize),
) -> Result<ReadStats> {
    let input = std::io::BufReader::with_capacity(1 << 20, input);
    let mut splitter = RecordSplitter::new(input, opts.max_record_bytes);
    let mut stats = ReadStats::default();
    let mut head = PendingRecords::default();

    // Sample: parse the first records fully to infer the schema; keep their bytes to decode later.
    let mut sample = Vec::new();
    let mut kinds = FieldKinds::default();
    while sample.len() < opts.infer_records.max(1) {
        let start = head.bytes.len();
        let Some(position) = next_record(&mut splitter, &mut head.bytes, &ctx)? else {
            break;
        };
        let record = &head.bytes[start..];
        let parsed =
            serde_json::from_slice::<BTreeMap<String, &RawValue>>(record).and_then(|fields| {
                kinds.observe(&fields);
                serde_json::from_slice::<Value>(record)
            });
        head.record_appended(position);
        match parsed {
            Ok(value) => sample.push(value),
            // The run fails: on this record, or on an earlier one that does not fit the schema
            // the records before it give (the head's decode below names the first).
            Err(e) if ctx.policy == MalformedRowPolicy::Fail => {
                if sample.is_empty() {
                    stats.rows_read += 1;
                    ctx.reject(
                        &mut stats,
                        position.record,
                        "invalid JSON",
                        invalid(position, &e),
                    )?;
                }
                break;
            }
            // Left out of the sample; counted in its place when the head is decoded.
            Err(_) => {}
        }
    }
    let decided = kinds
        .decide(opts.mixed_types, &ctx.hints)
        .map_err(|m| ctx.bad_input(m))?;
    // Fields decided here (mixed, big integers) are left out of arrow's inference, which would
    // refuse the mixes and round the integers.
    for value in &mut sample {
        if let Value::Object(fields) = value {
            fields.retain(|name, _| !decided.contains_key(name));
        }
    }
    let inferred = infer_json_schema_from_iterator(sample.iter().map(Ok)).map_err(|e| {
        ctx.bad_input(format!(
            "cannot infer a schema from the first {} records: {e}",
            sample.len()
        ))
    })?;
    drop(sample);
    let inferred = kinds.in_first_seen_order(inferred, &decided);
    let schema = apply_hints(inferred, &ctx.hints);
    if schema.fields().is_empty() {
        return Err(ctx.bad_input("the records have no fields (`{}`): there is no column to write"));
    }
    ctx.announce_schema(schema.clone());
    let as_json_text: Vec<String> = decided
        .iter()
        .filter(|(name, data_type)| {
            **data_type == DataType::Utf8 && kinds.nested.contains(name.as_str())
        })
        .map(|(name, _)| name.clone())
        .collect();
    if !as_json_text.is_empty() {
        stats.warnings.push(format!(
            "field(s) {} are objects or arrays in some records and not in others: written as JSON text (json.mixed_types: fail refuses them)",
            as_json_text.join(", ")
        ));
    }

    let decoding = RecordDecoding {
        schema,
        as_json_text,
        rules: ctx.rules().without_progress(),
        part_rows: part_rows.max(1),
        spare_decoders: Spares::default(),
    };
    let mut deliver = |(batch, part_stats): (Option<RecordBatch>, ReadStats)| {
        stats.absorb(part_stats);
        ctx.progress.reported(stats.rows_read, stats.rejected_rows);
        Ok(batch.is_none_or(|batch| ctx.send(batch)))
    };
    // The sample's records first, on this thread: they are the file's first rows.
    if head.len() > 0 && !deliver(decoding.decode_part(&head)?)? {
        return Ok(stats);
    }
    drop(head);
    let part_rows = decoding.part_rows;
    let (mut ended, mut stashed) = (false, None);
    // Decoded parts come back emptied, to be filled again: each part's few MiB are allocated
    // once, instead of fresh buffers (and their page faults) for every part.
    let spare_parts: Spares<PendingRecords> = Spares::default();
    parse_in_order(
        || {
            if let Some(error) = stashed.take() {
                return Err(error);
            }
            let mut part = spare_parts.take().unwrap_or_default();
            while !ended && part.len() < part_rows && part.bytes.len() < part_bytes {
                match splitter.next_record(&mut part.bytes) {
                    Ok(Some(position)) => part.record_appended(position),
                    Ok(None) => ended = true,
                    // The records before the broken layout are delivered before its error.
                    Err(message) => {
                        ended = true;
                        stashed = Some(ctx.bad_input(message));
                    }
                }
            }
            match (part.len(), stashed.take()) {
                (0, Some(error)) => Err(error),
                (0, None) => Ok(None),
                (_, error) => {
                    stashed = error;
                    Ok(Some(part))
                }
            }
        },
        threads,
        |mut part| {
            let decoded = decoding.decode_part(&part);
            part.clear();
            spare_parts.give(part);
            decoded
        },
        &mut deliver,
    )?;
    Ok(stats)
}

fn next_record<R: std::io::BufRead>(
    splitter: &mut RecordSplitter<R>,
    out: &mut Vec<u8>,
    ctx: &SourceOutput,
) -> Result<Option<RecordPosition>> {
    splitter
        .next_record(out)
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
    /// The record the splitter just appended to `bytes` ends here.
    fn record_appended(&mut self, position: RecordPosition) {
        self.ends.push(self.bytes.len());
        self.positions.push(position);
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
        self.positions.clear();
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
}

/// Parts of up to this many records are decoded by decoders kept for reuse.
const MAX_REUSED_ROWS: usize = 1 << 16;

/// What every thread needs to turn a part's records into a batch: the schema, the fields whose
/// nested values become text, and the malformed-row rules.
struct RecordDecoding {
    schema: SchemaRef,
    /// Text fields whose objects and arrays are written as their JSON text.
    as_json_text: Vec<String>,
    rules: RowRules,
    /// Records per part: the batch size of the decoders kept for reuse.
    part_rows: usize,
    /// Decoders that decoded a part cleanly, kept for the next part: a decoder's tape holds
    /// a few MiB per 8,192 records, which a fresh one would allocate and fault in again.
    spare_decoders: Spares<Decoder>,
}

impl RecordDecoding {
    /// The record with the objects and arrays of `as_json_text` fields replaced by their text.
    fn nested_as_text(&self, record: &[u8]) -> serde_json::Result<Vec<u8>> {
        let mut value: Value = serde_json::from_slice(record)?;
        if let Value::Object(fields) = &mut value {
            for name in &self.as_json_text {
                if let Some(field) = fields.get_mut(name)
                    && (field.is_object() || field.is_array())
                {
                    *field = Value::String(field.to_string());
                }
            }
        }
        serde_json::to_vec(&value)
    }

    fn decoder(&self, rows: usize) -> arrow::error::Result<Decoder> {
        // Numbers and booleans in a text field are written as their JSON text, not refused.
        ReaderBuilder::new(self.schema.clone())
            .with_batch_size(rows.max(1))
            .with_coerce_primitive(true)
            .build_decoder()
    }

    fn decode<'a>(
        &self,
        records: impl Iterator<Item = &'a [u8]>,
        rows: usize,
    ) -> arrow::error::Result<Option<RecordBatch>> {
        // A kept decoder is sized for a whole part up front; parts of more records than
        // `MAX_REUSED_ROWS` (a very large `batch_rows`) get a decoder of their own size.
        let reusable = rows > 1 && rows <= self.part_rows && self.part_rows <= MAX_REUSED_ROWS;
        let spare = reusable.then(|| self.spare_decoders.take()).flatten();
        let mut decoder = match spare {
            Some(decoder) => decoder,
            None => self.decoder(if reusable { self.part_rows } else { rows })?,
        };
        for record in records {
            decoder.decode(record)?;
        }
        let batch = decoder.flush()?;
        // Only a decoder that ended cleanly is empty again (an error leaves its tape behind).
        if reusable {
            self.spare_decoders.give(decoder);
        }
        Ok(batch)
    }

    /// Checks and decodes one part: its batch (the records that are valid and fit the schema)
    /// and its counts. Bad records go through the malformed-row policy in the file's order, so
    /// with `fail` the error is the part's first bad record whatever made it bad.
    fn decode_part(&self, part: &PendingRecords) -> Result<(Option<RecordBatch>, ReadStats)> {
        let mut stats = ReadStats {
            rows_read: part.len() as u64,
            ..ReadStats::default()
        };
        let mut bad: Vec<(RecordPosition, &'static str, String)> = Vec::new();
        // A cheap syntax check per record, so one bad record cannot poison a whole batch's decode.
        let mut valid: Vec<(RecordPosition, Cow<'_, [u8]>)> = Vec::with_capacity(part.len());
        for (position, record) in part.records() {
            let checked = if self.as_json_text.is_empty() {
                serde_json::from_slice::<serde::de::IgnoredAny>(record)
                    .map(|_| Cow::Borrowed(record))
            } else {
                self.nested_as_text(record).map(Cow::Owned)
            };
            match checked {
                Ok(record) => valid.push((position, record)),
                Err(e) => bad.push((position, "invalid JSON", invalid(position, &e))),
            }
        }
        let arrow_error = |e| JobError::arrow(self.rules.location.clone(), e);
        let batch = match self.decode(valid.iter().map(|(_, r)| r.as_ref()), valid.len()) {
            Ok(batch) => batch,
            // Some record does not fit the schema: find which, decoding each on its own.
            Err(_) => {
                let mut fitting = Vec::with_capacity(valid.len());
                for (position, record) in &valid {
                    match self.decode(std::iter::once(record.as_ref()), 1) {
                        Ok(_) => fitting.push(record.as_ref()),
                        Err(e) => bad.push((
                            *position,
                            "type mismatch",
                            format!(
                                "record {} (line {}{}): does not fit the schema: {e}",
                                position.record,
                                position.line,
                                record_key(record, &self.rules.key)
                            ),
                        )),
                    }
                }
                let rows = fitting.len();
                self.decode(fitting.into_iter(), rows)
                    .map_err(arrow_error)?
            }
        };
        bad.sort_by_key(|(position, _, _)| position.record);
        for (position, kind, reason) in bad {
            self.rules
                .reject(&mut stats, position.record, kind, reason)?;
        }
        Ok((batch.filter(|batch| batch.num_rows() > 0), stats))
    }
}

/// What the sample showed of each top-level field: the kinds of values it held, and whether it
/// held integers beyond int64 (and how many digits they have).
#[derive(Default)]
struct FieldKinds {
    /// Field names in the order they were first seen.
    order: Vec<String>,
    kinds: BTreeMap<String, BTreeSet<&'static str>>,
    /// Fields holding an integer outside int64: the most digits seen.
    big_integers: BTreeMap<String, usize>,
    /// Fields holding a number with a fraction or an exponent.
    fractions: BTreeSet<String>,
    /// Fields whose nested values become text (filled by `decide`).
    nested: BTreeSet<String>,
}

impl FieldKinds {
    fn observe(&mut self, fields: &BTreeMap<String, &RawValue>) {
        for (name, raw) in fields {
            let text = raw.get();
            let kind = match text.as_bytes().first() {
                Some(b'{') => "object",
                Some(b'[') => "array",
                Some(b'"') => "string",
                Some(b't' | b'f') => "boolean",
                Some(b'n') => "null",
                _ => "number",
            };
            if !self.kinds.contains_key(name) {
                self.order.push(name.clone());
            }
            self.kinds.entry(name.clone()).or_default().insert(kind);
            if kind == "number" {
                if text.contains(['.', 'e', 'E']) {
                    self.fractions.insert(name.clone());
                } else if text.parse::<i64>().is_err() {
                    let digits = text.trim_start_matches('-').len();
                    let most = self.big_integers.entry(name.clone()).or_default();
                    *most = (*most).max(digits);
                }
            }
        }
    }

    /// The types Carga decides itself (arrow's inference would refuse or round them), unless a
    /// hint names the field's type: mixed nested and scalar values become text (or fail), big
    /// integers exact decimals (text beyond 38 digits or beside fractions).
    fn decide(
        &mut self,
        policy: MixedTypesPolicy,
        hints: &TypeHints,
    ) -> std::result::Result<BTreeMap<String, DataType>, String> {
        let mut decided = BTreeMap::new();
        for (name, kinds) in &self.kinds {
            if hints.for_column(name).is_some() {
                continue;
            }
            let values: Vec<&str> = kinds.iter().copied().filter(|k| *k != "null").collect();
            let nested = values.iter().any(|k| *k == "object" || *k == "array");
            if nested && values.len() > 1 {
                if policy == MixedTypesPolicy::Fail {
                    return Err(format!(
                        "field '{name}' holds {} in the first records (json.mixed_types: string writes such a field as JSON text)",
                        values.join(" and ")
                    ));
                }
                self.nested.insert(name.clone());
                decided.insert(name.clone(), DataType::Utf8);
            } else if let Some(&digits) = self.big_integers.get(name) {
                let exact = values == ["number"] && !self.fractions.contains(name) && digits <= 38;
                let data_type = if exact {
                    DataType::Decimal128(38, 0)
                } else {
                    DataType::Utf8
                };
                decided.insert(name.clone(), data_type);
            }
        }
        Ok(decided)
    }

    /// arrow's inferred fields and the decided ones, in the order the fields were first seen.
    fn in_first_seen_order(
        &self,
        inferred: Schema,
        decided: &BTreeMap<String, DataType>,
    ) -> Schema {
        let mut fields: Vec<Field> = Vec::with_capacity(inferred.fields().len() + decided.len());
        for name in &self.order {
            if let Some(data_type) = decided.get(name) {
                fields.push(Field::new(name, data_type.clone(), true));
            } else if let Ok(field) = inferred.field_with_name(name) {
                fields.push(field.clone());
            }
        }
        // Fields arrow saw that the scan did not (none expected): kept, after the others.
        for field in inferred.fields() {
            if !fields.iter().any(|f| f.name() == field.name()) {
                fields.push(field.as_ref().clone());
            }
        }
        Schema::new(fields)
    }
}

/// `, id=4`: the record's key as it wrote it, when the dataset has one (only on the error path,
/// so the record is parsed again here rather than carried along).
fn record_key(record: &[u8], key: &[String]) -> String {
    if key.is_empty() {
        return String::new();
    }
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(record) else {
        return String::new();
    };
    key.iter()
        .filter_map(|name| {
            let value = match fields.get(name)? {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            Some(format!(", {name}={}", super::table::truncate(&value, 60)))
        })
        .collect()
}
