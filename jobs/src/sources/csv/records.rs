//! The records of one chunk of a CSV file, with their lines in the file, into a table.

use csv::ByteRecord;

use super::boundaries::TextChunk;
use crate::error::{JobError, Result};
use crate::sources::table::TableAssembler;
use crate::sources::text_input::LineCounter;
use carga_config::CsvOptions;

/// A chunk's records, read by the csv crate.
pub(super) struct ChunkRecords<'a> {
    reader: csv::Reader<LineCounter<&'a [u8]>>,
    pub record: ByteRecord,
    /// Added to the chunk's own line numbers (1-based) to give the file's.
    line_offset: u64,
    /// The file line the previous record ended on: lines after it and before the next record
    /// are blank.
    previous_end: u64,
    location: &'a str,
}

impl<'a> ChunkRecords<'a> {
    pub fn new(chunk: &'a TextChunk, opts: &CsvOptions, location: &'a str) -> Self {
        let reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(opts.delimiter as u8)
            .quote(opts.quote as u8)
            .escape(opts.escape.map(|c| c as u8))
            .double_quote(opts.escape.is_none())
            .buffer_capacity(64 * 1024)
            .from_reader(LineCounter::new(chunk.bytes.as_slice()));
        let line_offset = chunk.first_line - 1;
        Self {
            reader,
            record: ByteRecord::new(),
            line_offset,
            previous_end: line_offset,
            location,
        }
    }

    /// Reads the next record into `self.record`; `false` at the chunk's end.
    pub fn next(&mut self) -> Result<bool> {
        self.reader.read_byte_record(&mut self.record).map_err(|e| {
            JobError::io(
                format!("reading {}", self.location),
                std::io::Error::other(e),
            )
        })
    }

    /// The file line the current record starts on.
    pub fn line(&self) -> u64 {
        let local = self
            .record
            .position()
            .map_or(0, |p| self.reader.get_ref().line_of_record(p.byte()));
        self.line_offset + local
    }

    /// The file line the current record's last byte is on (its quoted fields may hold newlines).
    fn end_line(&self) -> u64 {
        let inner = memchr::memchr_iter(b'\n', self.record.as_slice()).count() as u64;
        self.line() + inner
    }

    /// The current record is the header: blank lines before it are not counted.
    pub fn header_read(&mut self) {
        self.previous_end = self.end_line();
    }

    /// Reads the chunk's records into `table` (the current record first, when `current`).
    pub fn rows_into(
        &mut self,
        table: &mut TableAssembler,
        null_values: &[String],
        encoding_hint: &str,
        mut current: bool,
    ) -> Result<()> {
        // One row's cells, its allocation kept from row to row (the cells borrow the record).
        let mut spare: Vec<Option<&str>> = Vec::with_capacity(table.width());
        loop {
            if !current && !self.next()? {
                break;
            }
            current = false;
            let line = self.line();
            table.blank_lines(line.saturating_sub(self.previous_end + 1));
            self.previous_end = self.end_line();
            let record = &self.record;
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
            let mut cells = recycle(std::mem::take(&mut spare));
            let decoded = decode_cells(record, null_values, &mut cells);
            match decoded {
                Ok(()) => table.push_row(line, &cells)?,
                Err(column) => {
                    let reason = format!(
                        "line {line}: column '{}' is not valid UTF-8{encoding_hint}",
                        table.names()[column]
                    );
                    table.reject(line, "invalid UTF-8", reason)?;
                }
            }
            spare = recycle(cells);
            if table.is_closed() {
                return Ok(());
            }
        }
        // Blank lines after the chunk's last record (the newline that ends a record is not one).
        let lines = self.line_offset + self.reader.get_ref().newlines();
        table.blank_lines(lines.saturating_sub(self.previous_end));
        Ok(())
    }
}

/// An empty vector of cells in the allocation of `cells`, free of their borrow (the standard
/// library collects a vector's `into_iter().map()` in place).
fn recycle<'b>(mut cells: Vec<Option<&str>>) -> Vec<Option<&'b str>> {
    cells.clear();
    cells.into_iter().map(|_| None).collect()
}

/// The record's cells into `cells` as text, `None` for nulls; `Err(column)` names the first
/// field that is not UTF-8.
fn decode_cells<'r>(
    record: &'r ByteRecord,
    null_values: &[String],
    cells: &mut Vec<Option<&'r str>>,
) -> Result<(), usize> {
    let cell = |text: &'r str| {
        let is_null = text.is_empty() || null_values.iter().any(|n| n == text);
        (!is_null).then_some(text)
    };
    cells.clear();
    // The record's fields lie back to back in one buffer: when it is UTF-8 as a whole and every
    // field starts and ends on a character boundary, every field is UTF-8, checked in one pass
    // instead of one call per field.
    if let Ok(whole) = std::str::from_utf8(record.as_slice()) {
        for i in 0..record.len() {
            match record.range(i).and_then(|range| whole.get(range)) {
                Some(text) => cells.push(cell(text)),
                None => break,
            }
        }
        if cells.len() == record.len() {
            return Ok(());
        }
        cells.clear();
    }
    for (i, field) in record.iter().enumerate() {
        cells.push(cell(std::str::from_utf8(field).map_err(|_| i)?));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_utf8_one_by_one_even_when_the_record_is_as_a_whole() {
        // `é` cut in two by a delimiter: the record's buffer is UTF-8, its fields are not.
        let mut cells = Vec::new();
        let split = ByteRecord::from(vec![&b"1"[..], b"\xC3", b"\xA9"]);
        assert_eq!(decode_cells(&split, &[], &mut cells), Err(1));
        let bad = ByteRecord::from(vec![&b"1"[..], b"ok", b"\xFF"]);
        assert_eq!(decode_cells(&bad, &[], &mut cells), Err(2));
        let good = ByteRecord::from(vec![&b"1"[..], "é".as_bytes(), b"", b"NA"]);
        assert_eq!(decode_cells(&good, &["NA".into()], &mut cells), Ok(()));
        assert_eq!(cells, vec![Some("1"), Some("é"), None, None]);
    }

    #[test]
    fn recycled_cells_keep_their_allocation() {
        let record = ByteRecord::from(vec!["a", "b", "c"]);
        let mut cells = Vec::with_capacity(16);
        decode_cells(&record, &[], &mut cells).unwrap();
        let (place, capacity) = (cells.as_ptr() as usize, cells.capacity());
        let again: Vec<Option<&str>> = recycle(cells);
        assert!(again.is_empty());
        assert_eq!(
            (again.as_ptr() as usize, again.capacity()),
            (place, capacity)
        );
    }
}
