//! CSV: parsed by the `csv` crate (records, quoting, escapes), UTF-8 or Latin-1, or what a
//! byte-order mark says (UTF-16 included), on every core.
//!
//! The file is cut into chunks that each start on a record (`boundaries`: the cut is proven by
//! running the parser's state machine, so quoted newlines never split a record). The header and
//! the rows that settle the column types are parsed first, in order; then the chunks are parsed
//! on `parse_threads` threads and their batches, rejected rows and errors are handed on in the
//! file's order (`sources::in_order`), so a run gives the same rows, report and first error as a
//! single pass. Line numbers are counted from the bytes, so they are exact with `\r\n` endings,
//! quoted newlines and blank lines alike.
//!
//! Blank lines (nothing on them) are not rows: they are skipped and counted in the report, as
//! pandas and polars skip them. A line of empty fields (`,,`) is an empty row, counted as such.

mod boundaries;
mod records;

use std::io::Read;

use carga_config::{CsvOptions, CsvSource};
use csv::ByteRecord;

use self::boundaries::ChunkSplitter;
use self::records::ChunkRecords;
use super::in_order::parse_in_order;
use super::table::{TableAssembler, truncate};
use super::text_input::{Detected, utf8_input};
use super::{FileFormat, SourceOutput};
use crate::error::{JobError, Result};
use crate::storage::SourceObject;
use crate::validation::ReadStats;

/// A header name longer than this is almost always a wrong delimiter or a binary file.
const MAX_HEADER_NAME_BYTES: usize = 1024;

/// Bytes per chunk: large enough that handing a chunk to a thread costs nothing next to parsing
/// it, small enough that the chunks in flight (threads + 1, with their batches) stay a few MiB.
const CHUNK_BYTES: usize = 2 << 20;

/// A CSV file: local, `s3://` or `https://`.
impl FileFormat for CsvSource {
    fn location(&self) -> &str {
        &self.location
    }

    fn parse(&self, object: &SourceObject, output: SourceOutput) -> Result<ReadStats> {
        read(object, &self.csv, output)
    }
}

pub(crate) fn read(
    object: &SourceObject,
    opts: &CsvOptions,
    ctx: SourceOutput,
) -> Result<ReadStats> {
    let raw = ctx.open_counted(object)?;
    let (input, detected) = utf8_input(raw, opts.encoding)
        .map_err(|e| JobError::io(format!("reading {}", ctx.location), e))?;
    let threads = ctx.parse_threads;
    read_text(input, detected, opts, ctx, (threads, CHUNK_BYTES))
}

/// Reads UTF-8 CSV text on `threads` threads in chunks of about `chunk_bytes`.
fn read_text(
    input: impl Read + Send,
    detected: Detected,
    opts: &CsvOptions,
    ctx: SourceOutput,
    (threads, chunk_bytes): (usize, usize),
) -> Result<ReadStats> {
    let location = ctx.location.clone();
    let read_err = |e: std::io::Error| JobError::io(format!("reading {location}"), e);
    let mut chunks = ChunkSplitter::new(input, opts, chunk_bytes);
    // The first chunk with a record (blank lines before the header are skipped, not counted).
    let first = loop {
        match chunks.next_chunk().map_err(read_err)? {
            Some(chunk) if chunk.bytes.iter().any(|&b| b != b'\n' && b != b'\r') => break chunk,
            Some(_) => {}
            None => return Err(ctx.bad_input("file is empty: expected a header line")),
        }
    };
    let mut records = ChunkRecords::new(&first, opts, &location);
    if !records.next()? {
        return Err(ctx.bad_input("file is empty: expected a header line"));
    }
    let mut stats = ReadStats::default();
    if let Some(encoding) = detected.describe() {
        stats
            .header_problems
            .push(format!("the file is {encoding}"));
    }
    let hint = if detected == Detected::Declared {
        " (if the file is Latin-1, set csv.encoding: latin-1)"
    } else {
        ""
    };
    let names = if opts.has_header {
        let names = header_names(&records.record, &ctx, &mut stats.header_problems, hint)?;
        records.header_read();
        names
    } else {
        (1..=records.record.len())
            .map(|i| format!("column_{i}"))
            .collect()
    };
    let null_values = &opts.null_values;

    // The head: parsed here, in order, until the sample has settled the column types.
    let mut table = TableAssembler::new(ctx, names, opts.infer_rows, stats);
    records.rows_into(&mut table, null_values, hint, !opts.has_header)?;
    drop(records);
    drop(first);
    while table.schema().is_none() && !table.is_closed() {
        let Some(chunk) = chunks.next_chunk().map_err(read_err)? else {
            break;
        };
        ChunkRecords::new(&chunk, opts, &location).rows_into(
            &mut table,
            null_values,
            hint,
            false,
        )?;
    }
    let closed = table.is_closed();
    let schema = table.schema().cloned();
    let (ctx, mut stats) = table.finish_parts()?;
    let (Some(ctx), Some(schema)) = (ctx, schema) else {
        return Ok(stats);
    };
    if closed {
        return Ok(stats);
    }

    // The rest: chunks parsed on every thread, handed on in the file's order.
    let rules = ctx.rules().without_progress();
    let spare_buffers = chunks.spare_buffers();
    parse_in_order(
        || chunks.next_chunk().map_err(read_err),
        threads,
        |chunk| {
            let mut part =
                TableAssembler::for_part(rules.clone(), schema.clone(), opts.infer_rows)?;
            ChunkRecords::new(&chunk, opts, &location).rows_into(
                &mut part,
                null_values,
                hint,
                false,
            )?;
            spare_buffers.give(chunk.bytes);
            part.finish_kept()
        },
        |(batches, part_stats)| {
            for batch in batches {
                if !ctx.send(batch) {
                    return Ok(false);
                }
            }
            stats.absorb(part_stats);
            ctx.progress.reported(stats.rows_read, stats.rejected_rows);
            Ok(true)
        },
    )?;
    Ok(stats)
}

/// Validates the header: names must be UTF-8, unique and of sane length; blanks get a name.
fn header_names(
    record: &ByteRecord,
    ctx: &SourceOutput,
    problems: &mut Vec<String>,
    encoding_hint: &str,
) -> Result<Vec<String>> {
    let mut names: Vec<String> = Vec::with_capacity(record.len());
    for (i, raw) in record.iter().enumerate() {
        let position = i + 1;
        let raw = if i == 0 {
            raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw)
        } else {
            raw
        };
        if raw.len() > MAX_HEADER_NAME_BYTES {
            return Err(ctx.bad_input(format!(
                "header column {position} is {} bytes long (limit {MAX_HEADER_NAME_BYTES}): is the delimiter right, is this a CSV file?",
                raw.len()
            )));
        }
        let text = std::str::from_utf8(raw).map_err(|_| {
            ctx.bad_input(format!(
                "header column {position} is not valid UTF-8{encoding_hint}"
            ))
        })?;
        let trimmed = text.trim();
        if trimmed.len() != text.len() {
            problems.push(format!(
                "column {position} name '{text}' has surrounding spaces; trimmed"
            ));
        }
        let name = if trimmed.is_empty() {
            problems.push(format!(
                "column {position} has no name; named column_{position}"
            ));
            format!("column_{position}")
        } else {
            trimmed.to_owned()
        };
        if let Some(first) = names.iter().position(|n| *n == name) {
            return Err(ctx.bad_input(format!(
                "header names column '{}' twice (positions {} and {position})",
                truncate(&name, 80),
                first + 1
            )));
        }
        names.push(name);
    }
    Ok(names)
}

#[cfg(test)]
mod tests;
