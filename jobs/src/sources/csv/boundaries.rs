//! Where CSV records end, found the way the parser finds them, so that a file can be cut into
//! chunks that each start on a record: parsed apart (on other threads), they give the same
//! records as one pass over the whole file.
//!
//! A newline ends a record only outside quotes, and whether a byte is inside quotes depends on
//! everything before it: a quote opens a field only at the field's start (elsewhere it is text),
//! and inside quotes `""` or the escape byte keep the field open. So the scanner follows
//! csv-core's state machine over the whole file, in jumps: outside quotes only the next quote
//! byte can change anything, so it finds that with `memchr` and takes the last newline before it
//! as a place to cut; inside quotes it jumps to the next quote (or escape) byte. A cut is right
//! after a newline outside quotes: a proven record boundary (blank lines may follow it).

use std::io::{self, Read};
use std::sync::Arc;

use carga_config::CsvOptions;

use crate::sources::spares::Spares;

/// The parser's states (csv-core's NFA, without comments; the terminator is `\r`, `\n` or `\r\n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between records (line ends are skipped) or at a field's start: a quote opens a field.
    FieldStart,
    /// In an unquoted field (or after a quoted field's closing quote): a quote is text.
    InField,
    InQuotedField,
    /// After the escape byte inside quotes: the next byte is taken as it is.
    InEscape,
    /// After a quote inside quotes: a second quote (when quotes double) keeps the field open.
    AfterQuote,
}

/// Follows the parser's state through a stream of bytes handed over in pieces.
#[derive(Debug, Clone)]
pub(crate) struct RecordScanner {
    delimiter: u8,
    quote: u8,
    escape: Option<u8>,
    double_quote: bool,
    state: State,
}

impl RecordScanner {
    pub fn new(opts: &CsvOptions) -> Self {
        Self {
            delimiter: opts.delimiter as u8,
            quote: opts.quote as u8,
            escape: opts.escape.map(|c| c as u8),
            double_quote: opts.escape.is_none(),
            state: State::FieldStart,
        }
    }

    /// Scans the next bytes of the stream; returns the offset in `bytes` just past the last
    /// newline outside quotes, where a chunk may be cut.
    pub fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut cut = None;
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                State::FieldStart | State::InField => {
                    let quote = memchr::memchr(self.quote, &bytes[i..]).map(|k| i + k);
                    let end = quote.unwrap_or(bytes.len());
                    if let Some(k) = memchr::memrchr(b'\n', &bytes[i..end]) {
                        cut = Some(i + k + 1);
                    }
                    // The state just before `end`: set by its last byte, if the jump crossed any.
                    if end > i {
                        self.state = self.after_unquoted(bytes[end - 1]);
                    }
                    match quote {
                        Some(q) => {
                            self.state = match self.state {
                                State::FieldStart => State::InQuotedField,
                                _ => State::InField,
                            };
                            i = q + 1;
                        }
                        None => i = bytes.len(),
                    }
                }
                State::InQuotedField => {
                    let found = match self.escape {
                        Some(escape) => memchr::memchr2(self.quote, escape, &bytes[i..]),
                        None => memchr::memchr(self.quote, &bytes[i..]),
                    };
                    match found {
                        None => i = bytes.len(),
                        Some(k) => {
                            let b = bytes[i + k];
                            i += k + 1;
                            self.state = if b == self.quote {
                                State::AfterQuote
                            } else {
                                State::InEscape
                            };
                        }
                    }
                }
                State::InEscape => {
                    i += 1;
                    self.state = State::InQuotedField;
                }
                State::AfterQuote => {
                    let b = bytes[i];
                    i += 1;
                    if self.double_quote && b == self.quote {
                        self.state = State::InQuotedField;
                    } else {
                        if b == b'\n' {
                            cut = Some(i);
                        }
                        self.state = self.after_unquoted(b);
                    }
                }
            }
        }
        cut
    }

    /// The state after byte `b` outside quotes (a quote byte is handled by the caller).
    fn after_unquoted(&self, b: u8) -> State {
        if b == self.delimiter || b == b'\n' || b == b'\r' {
            State::FieldStart
        } else {
            State::InField
        }
    }
}

/// A piece of the file that starts on a record (or at the file's start); it may hold only blank
/// lines.
#[derive(Debug)]
pub(crate) struct TextChunk {
    /// The 1-based line of the file the chunk's first byte is on.
    pub first_line: u64,
    pub bytes: Vec<u8>,
}

/// Cuts a stream of CSV text into chunks of about `target` bytes, each ending right after a
/// newline outside quotes (a record longer than `target` makes a longer chunk).
pub(crate) struct ChunkSplitter<R> {
    input: R,
    scanner: RecordScanner,
    target: usize,
    buffer: Vec<u8>,
    /// Bytes of `buffer` the scanner has seen.
    scanned: usize,
    /// The last cut found in `buffer`.
    cut: Option<usize>,
    next_line: u64,
    ended: bool,
    /// Chunks' buffers given back once parsed, filled again here.
    spare_buffers: Arc<Spares<Vec<u8>>>,
}

impl<R: Read> ChunkSplitter<R> {
    pub fn new(input: R, opts: &CsvOptions, target: usize) -> Self {
        Self {
            input,
            scanner: RecordScanner::new(opts),
            target: target.max(1),
            buffer: Vec::new(),
            scanned: 0,
            cut: None,
            next_line: 1,
            ended: false,
            spare_buffers: Arc::default(),
        }
    }

    /// Where a parsed chunk's buffer goes back to (`Spares::give`), to be filled again: a
    /// chunk's few MiB are allocated once per chunk in flight, not once per chunk.
    pub fn spare_buffers(&self) -> Arc<Spares<Vec<u8>>> {
        self.spare_buffers.clone()
    }

    /// The next chunk, `None` after the last.
    pub fn next_chunk(&mut self) -> io::Result<Option<TextChunk>> {
        loop {
            if let Some(cut) = self
                .cut
                .filter(|_| self.buffer.len() >= self.target || self.ended)
            {
                let mut rest = self.spare_buffers.take().unwrap_or_default();
                rest.clear();
                rest.extend_from_slice(&self.buffer[cut..]);
                self.buffer.truncate(cut);
                let bytes = std::mem::replace(&mut self.buffer, rest);
                self.scanned -= cut;
                self.cut = None;
                return Ok(Some(self.chunk(bytes)));
            }
            if self.ended {
                if self.buffer.is_empty() {
                    return Ok(None);
                }
                let bytes = std::mem::take(&mut self.buffer);
                self.scanned = 0;
                return Ok(Some(self.chunk(bytes)));
            }
            self.fill()?;
            let start = self.scanned;
            if let Some(cut) = self.scanner.scan(&self.buffer[start..]) {
                self.cut = Some(start + cut);
            }
            self.scanned = self.buffer.len();
        }
    }

    /// Reads until the buffer holds `target` bytes past what was scanned, or the input ends.
    /// The buffer grows by what is read (at most `READ_STEP` at a time), not by the target.
    fn fill(&mut self) -> io::Result<()> {
        const READ_STEP: usize = 1 << 20;
        let want = self.scanned + self.target;
        while self.buffer.len() < want {
            let filled = self.buffer.len();
            self.buffer
                .resize(filled + (want - filled).min(READ_STEP), 0);
            match self.input.read(&mut self.buffer[filled..]) {
                Ok(n) => {
                    self.buffer.truncate(filled + n);
                    if n == 0 {
                        self.ended = true;
                        break;
                    }
                }
                Err(e) => {
                    self.buffer.truncate(filled);
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    fn chunk(&mut self, bytes: Vec<u8>) -> TextChunk {
        let chunk = TextChunk {
            first_line: self.next_line,
            bytes,
        };
        self.next_line += memchr::memchr_iter(b'\n', &chunk.bytes).count() as u64;
        chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn options(escape: Option<char>) -> CsvOptions {
        CsvOptions {
            escape,
            ..CsvOptions::default()
        }
    }

    fn records(text: &[u8], opts: &CsvOptions) -> Vec<Vec<Vec<u8>>> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .escape(opts.escape.map(|c| c as u8))
            .double_quote(opts.escape.is_none())
            .from_reader(text);
        reader
            .byte_records()
            .map(|r| r.unwrap().iter().map(<[u8]>::to_vec).collect())
            .collect()
    }

    /// Reads one byte at a time at most `step` bytes per call, as a network body can.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(buf.len()).min(self.1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn split(text: &[u8], opts: &CsvOptions, target: usize, step: usize) -> Vec<TextChunk> {
        let mut splitter = ChunkSplitter::new(Trickle(text, step), opts, target);
        let mut chunks = Vec::new();
        while let Some(chunk) = splitter.next_chunk().unwrap() {
            chunks.push(chunk);
        }
        chunks
    }

    fn check_split(text: &[u8], opts: &CsvOptions, target: usize, step: usize) {
        let chunks = split(text, opts, target, step);
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.bytes.clone()).collect();
        assert_eq!(joined, text, "the chunks are the file");
        let mut offset = 0u64;
        let mut line = 1u64;
        let mut parts = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            assert_eq!(chunk.first_line, line, "chunk {i} starts on line {line}");
            if offset > 0 {
                assert_eq!(text[offset as usize - 1], b'\n', "a cut follows a newline");
            }
            parts.extend(records(&chunk.bytes, opts));
            offset += chunk.bytes.len() as u64;
            line += memchr::memchr_iter(b'\n', &chunk.bytes).count() as u64;
        }
        assert_eq!(parts, records(text, opts), "parsed apart = parsed whole");
    }

    #[test]
    fn cuts_only_after_a_newline_outside_quotes() {
        let text = b"id,note\n1,\"two\nlines\"\n\n2,\"say \"\"hi\"\"\n,\"\"\"\"\r\n3,x\"y\n4,end";
        for target in 1..text.len() + 2 {
            for step in [1, 3, 7, 64] {
                check_split(text, &CsvOptions::default(), target, step);
            }
        }
    }

    #[test]
    fn escaped_quotes_keep_the_field_open() {
        let opts = options(Some('\\'));
        let text = b"a,b\n1,\"x\\\"\ny\"\n2,\"\\\\\"\n3,\"p\"\"\nq\"\n";
        for target in 1..text.len() + 2 {
            check_split(text, &opts, target, 5);
        }
    }

    #[test]
    fn a_quote_inside_an_unquoted_field_is_text() {
        // `5"` is five inches: the newline after it ends the record.
        let text = b"size,n\n5\" pipe,1\n6\" pipe,2\n";
        let chunks = split(text, &CsvOptions::default(), 1, 64);
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[2].first_line, 3);
    }

    #[test]
    fn crlf_and_bare_cr_line_ends() {
        let text = b"a\r\n1\r\n\r\n2\r3\r\n4";
        for target in 1..text.len() + 2 {
            check_split(text, &CsvOptions::default(), target, 2);
        }
    }

    fn csv_text() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b",".to_vec()),
            Just(b"\"".to_vec()),
            Just(b"\"\"".to_vec()),
            Just(b"\\".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"a".to_vec()),
            Just(b"xyz".to_vec()),
            Just("ñ".as_bytes().to_vec()),
        ];
        proptest::collection::vec(piece, 0..60).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(500, 1)))]

        #[test]
        fn any_text_splits_into_the_same_records(
            text in csv_text(),
            target in 1usize..40,
            step in 1usize..16,
            escaped in any::<bool>(),
        ) {
            let opts = options(escaped.then_some('\\'));
            check_split(&text, &opts, target, step);
        }
    }
}
