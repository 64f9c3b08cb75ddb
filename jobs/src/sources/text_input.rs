//! Text files as UTF-8 bytes for the parsers, and where each line starts.
//!
//! - A byte-order mark wins over the declared encoding: UTF-8's is dropped, UTF-16's (either byte
//!   order) is transcoded, so a spreadsheet's "Unicode text" export reads as it is.
//! - `LineCounter` counts the newlines the parser has been given, so a record's line is exact
//!   whatever the line endings (`\r\n` included) and however many blank lines came before it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, BufRead, Cursor, Read};

use carga_config::Encoding;
use encoding_rs_io::DecodeReaderBytesBuilder;

/// What the first bytes said about the encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detected {
    /// No byte-order mark: the declared encoding.
    Declared,
    Utf8Bom,
    Utf16Le,
    Utf16Be,
}

impl Detected {
    pub fn describe(self) -> Option<&'static str> {
        match self {
            Detected::Declared => None,
            Detected::Utf8Bom => Some("UTF-8 (byte-order mark)"),
            Detected::Utf16Le => Some("UTF-16 little-endian (byte-order mark), read as UTF-8"),
            Detected::Utf16Be => Some("UTF-16 big-endian (byte-order mark), read as UTF-8"),
        }
    }
}

/// The bytes of `raw` as UTF-8 (or, for Latin-1 without a mark, transcoded from it).
pub(crate) fn utf8_input(
    mut raw: Box<dyn BufRead + Send>,
    declared: Encoding,
) -> io::Result<(Box<dyn Read + Send>, Detected)> {
    // The first three bytes, however the source hands them over.
    let mut head = Vec::with_capacity(3);
    while head.len() < 3 {
        let buf = raw.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let take = buf.len().min(3 - head.len());
        head.extend_from_slice(&buf[..take]);
        raw.consume(take);
    }
    let detected = match head.as_slice() {
        [0xEF, 0xBB, 0xBF, ..] => Detected::Utf8Bom,
        [0xFF, 0xFE, ..] => Detected::Utf16Le,
        [0xFE, 0xFF, ..] => Detected::Utf16Be,
        _ => Detected::Declared,
    };
    let rest = Cursor::new(head).chain(raw);
    let input: Box<dyn Read + Send> = match (detected, declared) {
        (Detected::Utf8Bom, _) => {
            let mut rest = rest;
            io::copy(&mut (&mut rest).take(3), &mut io::sink())?;
            Box::new(rest)
        }
        // The decoder reads the mark itself and drops it.
        (Detected::Utf16Le | Detected::Utf16Be, _) => Box::new(
            DecodeReaderBytesBuilder::new()
                .bom_sniffing(true)
                .build(rest),
        ),
        (Detected::Declared, Encoding::Utf8) => Box::new(rest),
        (Detected::Declared, Encoding::Latin1) => Box::new(
            DecodeReaderBytesBuilder::new()
                .bom_sniffing(false)
                .encoding(Some(encoding_rs::WINDOWS_1252))
                .build(rest),
        ),
    };
    Ok((input, detected))
}

/// Counts the newlines read through it, and tells the line a record starts on. A CSV parser
/// says where it began reading a record, which is before the line ends (`\r\n`) and blank lines
/// it skipped: those are stepped over here. Holds the line-end bytes read ahead of the last
/// question only; questions come in increasing order, as a parser meets records.
pub(crate) struct LineCounter<R> {
    inner: R,
    offset: u64,
    /// Offsets of `\r` and `\n` bytes not passed yet (`true` for `\n`).
    ahead: RefCell<VecDeque<(u64, bool)>>,
    /// Newlines passed.
    passed: Cell<u64>,
}

impl<R: Read> LineCounter<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            offset: 0,
            ahead: RefCell::new(VecDeque::new()),
            passed: Cell::new(0),
        }
    }

    /// The 1-based line of the first byte at or after `offset` that is not a line end.
    pub fn line_of_record(&self, offset: u64) -> u64 {
        let mut ahead = self.ahead.borrow_mut();
        let mut at = offset;
        while let Some(&(position, newline)) = ahead.front() {
            if position > at {
                break;
            }
            if position == at {
                at += 1;
            }
            if newline {
                self.passed.set(self.passed.get() + 1);
            }
            ahead.pop_front();
        }
        self.passed.get() + 1
    }

    /// Newlines read so far.
    pub fn newlines(&self) -> u64 {
        self.passed.get() + self.ahead.borrow().iter().filter(|(_, nl)| *nl).count() as u64
    }
}

impl<R: Read> Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut ahead = self.ahead.borrow_mut();
        for i in memchr::memchr2_iter(b'\n', b'\r', &buf[..n]) {
            ahead.push_back((self.offset + i as u64, buf[i] == b'\n'));
        }
        self.offset += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf8(bytes: &[u8], declared: Encoding) -> (String, Detected) {
        let raw: Box<dyn BufRead + Send> =
            Box::new(io::BufReader::new(Cursor::new(bytes.to_vec())));
        let (mut input, detected) = utf8_input(raw, declared).unwrap();
        let mut text = String::new();
        input.read_to_string(&mut text).unwrap();
        (text, detected)
    }

    #[test]
    fn byte_order_marks_say_the_encoding() {
        assert_eq!(
            utf8(b"\xEF\xBB\xBFid\n", Encoding::Utf8),
            ("id\n".into(), Detected::Utf8Bom)
        );
        let le: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain("año\n".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        assert_eq!(
            utf8(&le, Encoding::Utf8),
            ("año\n".into(), Detected::Utf16Le)
        );
        let be: Vec<u8> = [0xFE, 0xFF]
            .into_iter()
            .chain("año\n".encode_utf16().flat_map(u16::to_be_bytes))
            .collect();
        assert_eq!(
            utf8(&be, Encoding::Latin1),
            ("año\n".into(), Detected::Utf16Be)
        );
        assert_eq!(utf8(b"a\xF1o", Encoding::Latin1).0, "año");
        assert_eq!(
            utf8(b"ab", Encoding::Utf8),
            ("ab".into(), Detected::Declared)
        );
        assert_eq!(
            utf8(b"", Encoding::Utf8),
            (String::new(), Detected::Declared)
        );
    }

    #[test]
    fn lines_are_counted_whatever_the_endings() {
        let text = b"a\r\nb\r\n\r\nc\nd";
        let mut counter = LineCounter::new(Cursor::new(text.to_vec()));
        let mut sink = Vec::new();
        // Small reads, as a parser's buffer refills.
        let mut buf = [0u8; 3];
        loop {
            let n = counter.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            sink.extend_from_slice(&buf[..n]);
        }
        assert_eq!(counter.newlines(), 4);
        assert_eq!(counter.line_of_record(0), 1);
        // Where a parser says the next record begins: on the previous line's `\n`.
        assert_eq!(counter.line_of_record(2), 2);
        // Past a `\r\n` and a blank `\r\n`.
        assert_eq!(counter.line_of_record(4), 4);
        assert_eq!(counter.line_of_record(9), 5);
        assert_eq!(counter.newlines(), 4);
    }
}
