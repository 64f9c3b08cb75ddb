//! Splits a JSON file into top-level records without parsing them: a top-level array of objects
//! (`[{...},{...}]`) or newline/whitespace-delimited objects (NDJSON). Each record is appended
//! to the caller's buffer; nothing else is held.

use std::io::BufRead;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Unknown,
    /// Inside a top-level array.
    Array(Expect),
    /// After the top-level array's closing bracket: only whitespace may follow.
    Closed,
    Lines,
}

/// What may come next inside the top-level array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Right after `[`: a record or `]`.
    FirstOrEnd,
    /// After a record: `,` or `]`.
    CommaOrEnd,
    /// After `,`: a record (not `,`, not `]`).
    Record,
}

/// Where a record came from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordPosition {
    /// 1-based record number.
    pub record: u64,
    /// 1-based line where the record starts.
    pub line: u64,
}

pub(crate) struct RecordSplitter<R> {
    reader: R,
    layout: Layout,
    line: u64,
    records: u64,
    max_record_bytes: usize,
}

impl<R: BufRead> RecordSplitter<R> {
    pub fn new(reader: R, max_record_bytes: usize) -> Self {
        Self {
            reader,
            layout: Layout::Unknown,
            line: 1,
            records: 0,
            max_record_bytes,
        }
    }

    /// Appends the next record to `out` (its bytes are copied once, from the reader's buffer to
    /// where they are decoded); on `Ok(None)` or an error `out` is as it was.
    pub fn next_record(&mut self, out: &mut Vec<u8>) -> Result<Option<RecordPosition>, String> {
        let start = out.len();
        let next = self.scan_record(out, start);
        if !matches!(next, Ok(Some(_))) {
            out.truncate(start);
        }
        next
    }

    fn scan_record(
        &mut self,
        out: &mut Vec<u8>,
        start: usize,
    ) -> Result<Option<RecordPosition>, String> {
        let mut depth = 0u32;
        let mut in_string = false;
        let mut escaped = false;
        let mut start_line = self.line;
        loop {
            let buf = self
                .reader
                .fill_buf()
                .map_err(|e| format!("read error: {e}"))?;
            if buf.is_empty() {
                return self.end_of_input(depth > 0, start_line);
            }
            // The record's bytes in this buffer start here; they are copied once per buffer.
            let mut record_from = (depth > 0).then_some(0);
            let mut at = 0;
            let mut done = false;
            while at < buf.len() {
                if depth == 0 {
                    let byte = buf[at];
                    at += 1;
                    if byte == b'\n' {
                        self.line += 1;
                    }
                    // Between records: whitespace, array punctuation in its place, or the start
                    // of the next record. Anything else is malformed, never skipped.
                    let at_line = |what: String| format!("line {}: {what}", self.line);
                    match (byte, self.layout) {
                        (b' ' | b'\t' | b'\r' | b'\n', _) => continue,
                        (b'[', Layout::Unknown) => {
                            self.layout = Layout::Array(Expect::FirstOrEnd);
                            continue;
                        }
                        (b',', Layout::Array(Expect::CommaOrEnd)) => {
                            self.layout = Layout::Array(Expect::Record);
                            continue;
                        }
                        (b']', Layout::Array(Expect::FirstOrEnd | Expect::CommaOrEnd)) => {
                            self.layout = Layout::Closed;
                            continue;
                        }
                        (b'{', Layout::Unknown) => self.layout = Layout::Lines,
                        (b'{', Layout::Array(Expect::FirstOrEnd | Expect::Record)) => {
                            self.layout = Layout::Array(Expect::CommaOrEnd);
                        }
                        (b'{', Layout::Lines) => {}
                        (b'{', Layout::Array(Expect::CommaOrEnd)) => {
                            return Err(at_line(format!(
                                "a ',' is missing between record {} and the next one",
                                self.records
                            )));
                        }
                        (b',', Layout::Array(Expect::FirstOrEnd)) => {
                            return Err(at_line(
                                "the array starts with ',' (an empty element)".into(),
                            ));
                        }
                        (b',', Layout::Array(Expect::Record)) => {
                            return Err(at_line(format!(
                                "two ',' in a row after record {} (an empty element)",
                                self.records
                            )));
                        }
                        (b']', Layout::Array(Expect::Record)) => {
                            return Err(at_line(format!(
                                "a ',' after the last record ({}) before ']'",
                                self.records
                            )));
                        }
                        (b',', Layout::Lines) => {
                            return Err(at_line(format!(
                                "a ',' between records {} and {} of a file of JSON lines (records are not separated by commas outside an array)",
                                self.records,
                                self.records + 1
                            )));
                        }
                        (_, Layout::Closed) => {
                            return Err(at_line("unexpected content after the closing ']'".into()));
                        }
                        (other, _) => {
                            return Err(at_line(format!(
                                "record {} is not a JSON object (starts with {})",
                                self.records + 1,
                                describe_byte(other)
                            )));
                        }
                    }
                    depth = 1;
                    start_line = self.line;
                    record_from = Some(at - 1);
                    continue;
                }
                if in_string {
                    if escaped {
                        escaped = false;
                        if buf[at] == b'\n' {
                            self.line += 1;
                        }
                        at += 1;
                        continue;
                    }
                    // Most of a record is string contents: jump to what can end or escape one.
                    match memchr::memchr3(b'"', b'\\', b'\n', &buf[at..]) {
                        None => at = buf.len(),
                        Some(offset) => {
                            match buf[at + offset] {
                                b'"' => in_string = false,
                                b'\\' => escaped = true,
                                _ => self.line += 1,
                            }
                            at += offset + 1;
                        }
                    }
                    continue;
                }
                let byte = buf[at];
                at += 1;
                match byte {
                    b'\n' => self.line += 1,
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            done = true;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            if let Some(from) = record_from {
                out.extend_from_slice(&buf[from..at]);
            }
            self.reader.consume(at);
            if done {
                self.records += 1;
                return Ok(Some(RecordPosition {
                    record: self.records,
                    line: start_line,
                }));
            }
            if out.len() - start > self.max_record_bytes {
                return Err(format!(
                    "record {} starting at line {start_line} is larger than json.max_record_bytes ({} bytes)",
                    self.records + 1,
                    self.max_record_bytes
                ));
            }
        }
    }

    fn end_of_input(
        &self,
        inside_record: bool,
        start_line: u64,
    ) -> Result<Option<RecordPosition>, String> {
        if inside_record {
            return Err(format!(
                "record {} starting at line {start_line} is cut off: the file ends inside it",
                self.records + 1
            ));
        }
        match self.layout {
            Layout::Unknown => Err("file is empty: expected a JSON array or JSON objects".into()),
            Layout::Array(_) => {
                Err("the top-level array is not closed: the file ends before ']'".into())
            }
            Layout::Closed | Layout::Lines => Ok(None),
        }
    }
}

fn describe_byte(byte: u8) -> String {
    if byte.is_ascii_graphic() {
        format!("'{}'", byte as char)
    } else {
        format!("byte 0x{byte:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(input: &str) -> Result<Vec<(String, u64)>, String> {
        split_from(input.as_bytes())
    }

    /// Every record (as text, with its line) until the end of `reader` or the first error.
    fn split_from(reader: impl BufRead) -> Result<Vec<(String, u64)>, String> {
        let mut splitter = RecordSplitter::new(reader, 1 << 20);
        let mut out = Vec::new();
        let mut record = Vec::new();
        while let Some(pos) = splitter.next_record(&mut record)? {
            out.push((String::from_utf8(record.clone()).unwrap(), pos.line));
            record.clear();
        }
        Ok(out)
    }

    #[test]
    fn splits_arrays_and_lines_alike() {
        let array = split("[\n {\"a\": 1},\n {\"a\": \"}]\\\"\"}\n]\n").unwrap();
        assert_eq!(
            array,
            vec![("{\"a\": 1}".into(), 2), ("{\"a\": \"}]\\\"\"}".into(), 3)]
        );
        let lines = split("{\"a\": {\"b\": [1,2]}}\n\n{\"a\": 2}").unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].1, 3);
        assert_eq!(split("[]").unwrap(), vec![]);
    }

    /// Records, lines and errors do not depend on where the reader's buffer ends: escapes,
    /// quotes and newlines cut between two reads are followed across the cut.
    #[test]
    fn buffer_boundaries_change_nothing() {
        let inputs = [
            "[\n {\"a\": \"x\\\"}\\\\\"},\r\n {\"b\": [1, {\"c\": \"]\"}]}\n]\n",
            "{\"a\": \"line\\nbreak\"}\n\n\n{\"a\": \"\\u00e9\"}\n{\"a\": {\"b\": \"{\"}}",
            "{\"a\": \"raw\nnewline\"}\n{\"a\": \"x\\\nnewline\"}\n{\"a\": 3}",
            "{\"a\": 1}\n{\"a\": 2},\n",
            "{\"a\": \"cut off",
        ];
        for input in inputs {
            let whole = split(input);
            for capacity in 1..=9 {
                let reader = std::io::BufReader::with_capacity(capacity, input.as_bytes());
                assert_eq!(split_from(reader), whole, "capacity {capacity}: {input:?}");
            }
        }
        let lines = split(inputs[2]).unwrap();
        assert_eq!(lines.iter().map(|(_, l)| *l).collect::<Vec<_>>(), [1, 3, 5]);
    }

    #[test]
    fn malformed_layouts_are_named() {
        assert!(split("").unwrap_err().contains("empty"));
        assert!(split("[{\"a\":1}").unwrap_err().contains("not closed"));
        assert!(split("{\"a\":1").unwrap_err().contains("cut off"));
        assert!(split("[1, 2]").unwrap_err().contains("not a JSON object"));
        assert!(split("[{}] {}").unwrap_err().contains("after the closing"));
        assert!(split("hello").unwrap_err().contains("'h'"));
    }

    #[test]
    fn broken_arrays_are_refused_not_skipped() {
        for (input, expected) in [
            (r#"[{"a":1},,{"a":2}]"#, "two ',' in a row after record 1"),
            (r#"[{"a":1} {"a":2}]"#, "',' is missing between record 1"),
            (r#"[,{"a":1}]"#, "starts with ','"),
            (r#"[{"a":1},]"#, "after the last record (1)"),
            ("[,]", "starts with ','"),
            ("{\"a\":1},\n{\"a\":2}", "between records 1 and 2"),
            ("[{\"a\":1}]\n,", "after the closing"),
        ] {
            let err = split(input).unwrap_err();
            assert!(err.contains(expected), "{input}: {err}");
            assert!(err.starts_with("line "), "{input}: {err}");
        }
        assert_eq!(split("[ {\"a\":1} ,\n {\"a\":2} ]").unwrap().len(), 2);
    }

    #[test]
    fn oversized_records_are_refused() {
        let big = format!("{{\"a\": \"{}\"}}", "x".repeat(5000));
        let mut splitter =
            RecordSplitter::new(std::io::BufReader::with_capacity(64, big.as_bytes()), 1000);
        assert!(
            splitter
                .next_record(&mut Vec::new())
                .unwrap_err()
                .contains("max_record_bytes")
        );
    }
}
