//! `format: csv`: a delimited text file.

use serde::{Deserialize, Serialize};

/// A CSV file: `location` (a path under the data roots, `s3://bucket/key` or an http(s) URL)
/// and how to read it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CsvSource {
    pub location: String,
    #[serde(default)]
    pub csv: CsvOptions,
}

impl CsvSource {
    pub(crate) const FIELDS: &'static [&'static str] = &["location", "csv"];

    pub(crate) fn validate(&self) -> Result<(), String> {
        if !self.csv.delimiter.is_ascii() || !self.csv.quote.is_ascii() {
            return Err("csv.delimiter and csv.quote must be single ASCII characters".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CsvOptions {
    pub delimiter: char,
    pub quote: char,
    /// Escape character inside quoted fields; `None` means quotes are escaped by doubling them.
    pub escape: Option<char>,
    pub has_header: bool,
    pub encoding: Encoding,
    /// Field values read as null (besides the empty string).
    pub null_values: Vec<String>,
    /// Rows sampled for type inference.
    pub infer_rows: usize,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self {
            delimiter: ',',
            quote: '"',
            escape: None,
            has_header: true,
            encoding: Encoding::Utf8,
            null_values: Vec::new(),
            infer_rows: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    #[default]
    #[serde(alias = "utf-8")]
    Utf8,
    /// ISO-8859-1, read as Windows-1252 as browsers and Excel do.
    #[serde(alias = "latin-1", alias = "iso-8859-1", alias = "windows-1252")]
    Latin1,
}
