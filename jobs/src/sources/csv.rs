//! CSV: streamed through the `csv` crate (records, quoting, escapes), UTF-8 or Latin-1, or what a
//! byte-order mark says (UTF-16 included). Line numbers are counted from the bytes, so they are
//! exact with `\r\n` endings, quoted newlines and blank lines alike.
//!
//! Blank lines (nothing on them) are not rows: they are skipped and counted in the report, as
//! pandas and polars skip them. A line of empty fields (`,,`) is an empty row, counted as such.

use carga_config::{CsvOptions, CsvSource};
use csv::ByteRecord;

use super::table::{TableAssembler, truncate};
use super::text_input::{Detected, LineCounter, utf8_input};
use super::{FileFormat, SourceOutput};
use crate::error::{JobError, Result};
use crate::storage::SourceObject;
use crate::validation::ReadStats;

/// A header name longer than this is almost always a wrong delimiter or a binary file.
const MAX_HEADER_NAME_BYTES: usize = 1024;

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
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(opts.delimiter as u8)
        .quote(opts.quote as u8)
        .escape(opts.escape.map(|c| c as u8))
        .double_quote(opts.escape.is_none())
        .buffer_capacity(1 << 20)
        .from_reader(LineCounter::new(input));
    let location = ctx.location.clone();
    let read_err =
        |e: csv::Error| JobError::io(format!("reading {location}"), std::io::Error::other(e));

    let mut record = ByteRecord::new();
    if !reader.read_byte_record(&mut record).map_err(&read_err)? {
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
    let (names, first_is_data) = if opts.has_header {
        (
            header_names(&record, &ctx, &mut stats.header_problems, hint)?,
            false,
        )
    } else {
        (
            (1..=record.len()).map(|i| format!("column_{i}")).collect(),
            true,
        )
    };

    let null_values = &opts.null_values;
    let mut table = TableAssembler::new(ctx, names, opts.infer_rows, stats);
    let mut has_row = first_is_data;
    // Where the previous record ended (its line, plus the newlines inside its quoted fields):
    // lines between it and the next record are blank.
    let mut previous_end = match first_is_data {
        true => 0,
        false => end_line(&reader, &record),
    };
    loop {
        if !has_row && !reader.read_byte_record(&mut record).map_err(&read_err)? {
            break;
        }
        has_row = false;
        let line = line_of(&reader, &record);
        table.blank_lines(line.saturating_sub(previous_end + 1));
        previous_end = end_line(&reader, &record);
        if record.len() == 1 && record[0].is_empty() && table.width() > 1 {
            table.push_row(line, &vec![None; table.width()])?;
            continue;
        }
        if record.len() != table.width() {
            let reason = format!(
                "line {line}: has {} fields, the header has {}",
                record.len(),
                table.width()
            );
            table.reject(line, "wrong number of fields", reason)?;
            continue;
        }
        match decode_cells(&record, null_values) {
            Ok(cells) => table.push_row(line, &cells)?,
            Err(column) => {
                let reason = format!(
                    "line {line}: column '{}' is not valid UTF-8{hint}",
                    table.names()[column]
                );
                table.reject(line, "invalid UTF-8", reason)?;
            }
        }
        if table.is_closed() {
            break;
        }
    }
    if !table.is_closed() {
        // Blank lines after the last record (a final newline is not one).
        let lines = reader.get_ref().newlines();
        table.blank_lines(lines.saturating_sub(previous_end));
    }
    table.finish()
}

fn line_of<R: std::io::Read>(reader: &csv::Reader<LineCounter<R>>, record: &ByteRecord) -> u64 {
    record
        .position()
        .map_or(0, |p| reader.get_ref().line_of_record(p.byte()))
}

/// The line a record's last byte is on (its quoted fields may hold newlines).
fn end_line<R: std::io::Read>(reader: &csv::Reader<LineCounter<R>>, record: &ByteRecord) -> u64 {
    let inner = memchr::memchr_iter(b'\n', record.as_slice()).count() as u64;
    line_of(reader, record) + inner
}

/// Cells as text, `None` for nulls; `Err(column)` names the first field that is not UTF-8.
fn decode_cells<'r>(
    record: &'r ByteRecord,
    null_values: &[String],
) -> Result<Vec<Option<&'r str>>, usize> {
    record
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let text = std::str::from_utf8(field).map_err(|_| i)?;
            let is_null = text.is_empty() || null_values.iter().any(|n| n == text);
            Ok((!is_null).then_some(text))
        })
        .collect()
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
