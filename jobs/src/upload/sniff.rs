//! What an upload's first bytes say it is, checked against the format it was declared as: a
//! spreadsheet named `.csv` or a binary file sent as JSON is refused at its first bytes, not at
//! the end of a 20 GB transfer.

use serde::{Deserialize, Serialize};

/// The formats an upload may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadFormat {
    Csv,
    Json,
    Excel,
    Parquet,
}

impl UploadFormat {
    /// The declared `format`, or the file name's extension when none was declared.
    pub fn declared(format: Option<&str>, filename: &str) -> Result<Self, String> {
        let name = match format {
            Some(format) => format.to_ascii_lowercase(),
            None => filename
                .rsplit_once('.')
                .map(|(_, ext)| ext.to_ascii_lowercase())
                .unwrap_or_default(),
        };
        match name.as_str() {
            "csv" | "tsv" | "txt" => Ok(Self::Csv),
            "json" | "jsonl" | "ndjson" => Ok(Self::Json),
            "excel" | "xlsx" | "xls" | "xlsm" | "ods" => Ok(Self::Excel),
            "parquet" => Ok(Self::Parquet),
            "" => Err(format!(
                "'{filename}' has no extension: say its format (csv, json, excel or parquet) in the upload's metadata"
            )),
            other => Err(format!(
                "'{other}' is not a format Carga takes uploads of (csv, json, excel, parquet)"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Json => "json",
            Self::Excel => "excel",
            Self::Parquet => "parquet",
        }
    }
}

/// What the bytes look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniffed {
    /// A ZIP container (xlsx, ods).
    Zip,
    /// An OLE2 compound file (legacy xls).
    Ole,
    Parquet,
    /// Text starting with `{` or `[`.
    JsonText,
    Text,
    Binary,
}

fn sniff(head: &[u8]) -> Sniffed {
    if head.starts_with(b"PK\x03\x04") {
        return Sniffed::Zip;
    }
    if head.starts_with(&[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1]) {
        return Sniffed::Ole;
    }
    if head.starts_with(b"PAR1") {
        return Sniffed::Parquet;
    }
    // NUL bytes do not occur in UTF-8 or Latin-1 text (UTF-16 is not a format Carga reads).
    if head.contains(&0) {
        return Sniffed::Binary;
    }
    let text = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    match text.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{' | b'[') => Sniffed::JsonText,
        _ => Sniffed::Text,
    }
}

/// Refuses `head` (an upload's first bytes) when it is not `format`, saying what it looks like.
pub fn check(format: UploadFormat, head: &[u8]) -> Result<(), String> {
    let seen = sniff(head);
    let fits = match format {
        UploadFormat::Csv => seen == Sniffed::Text,
        UploadFormat::Json => seen == Sniffed::JsonText,
        UploadFormat::Excel => matches!(seen, Sniffed::Zip | Sniffed::Ole),
        UploadFormat::Parquet => seen == Sniffed::Parquet,
    };
    if fits {
        return Ok(());
    }
    let looks = match seen {
        Sniffed::Zip => "a ZIP container (an .xlsx or .ods workbook)",
        Sniffed::Ole => "a legacy Office file (.xls)",
        Sniffed::Parquet => "a Parquet file",
        Sniffed::JsonText => "JSON",
        Sniffed::Text => "plain text",
        Sniffed::Binary => "binary data",
    };
    Err(format!(
        "declared as {} but its first bytes are {looks}",
        format.name()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_come_from_the_declaration_or_the_extension() {
        assert_eq!(
            UploadFormat::declared(None, "ventas.CSV"),
            Ok(UploadFormat::Csv)
        );
        assert_eq!(
            UploadFormat::declared(Some("excel"), "x.bin"),
            Ok(UploadFormat::Excel)
        );
        assert!(UploadFormat::declared(None, "ventas").is_err());
        assert!(UploadFormat::declared(None, "a.exe").is_err());
    }

    #[test]
    fn the_first_bytes_must_match_the_declared_format() {
        assert!(check(UploadFormat::Csv, b"\xEF\xBB\xBFid,name\n1,a\n").is_ok());
        assert!(check(UploadFormat::Json, b"  [{\"id\": 1}]").is_ok());
        assert!(check(UploadFormat::Excel, b"PK\x03\x04rest").is_ok());
        assert!(check(UploadFormat::Parquet, b"PAR1....").is_ok());
        let error = check(UploadFormat::Csv, b"PK\x03\x04rest").unwrap_err();
        assert!(error.contains("ZIP"), "{error}");
        assert!(check(UploadFormat::Csv, b"a\0b").is_err());
        assert!(check(UploadFormat::Json, b"id,name\n").is_err());
    }
}
