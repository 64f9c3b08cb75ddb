//! `format: excel`: one sheet of an .xlsx/.xls/.ods workbook.

use serde::{Deserialize, Serialize};

/// A workbook and the sheet to read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExcelSource {
    pub location: String,
    #[serde(default)]
    pub excel: ExcelOptions,
}

impl ExcelSource {
    pub(crate) const FIELDS: &'static [&'static str] = &["location", "excel"];

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.excel.header_row == HeaderRow::Row(0) {
            return Err("excel.header_row is 1-based; 0 is not a row".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExcelOptions {
    /// Sheet name; the first sheet when absent.
    pub sheet: Option<String>,
    /// The header row: `auto` (the first row holding a value; columns start at its first
    /// value) or a 1-based row number; rows above it are skipped.
    pub header_row: HeaderRow,
    pub infer_rows: usize,
    /// A cell holding an Excel error (`#DIV/0!`, `#N/A`): written as null and counted in the
    /// report (`null`, as pandas and polars read them), or the run fails (`fail`).
    pub error_cells: ErrorCellPolicy,
    /// A value in a column beyond the header's: left out and counted in the report with a
    /// warning (`ignore`), or the run fails (`fail`).
    pub extra_cells: ExtraCellPolicy,
}

impl Default for ExcelOptions {
    fn default() -> Self {
        Self {
            sheet: None,
            header_row: HeaderRow::Auto,
            infer_rows: 1000,
            error_cells: ErrorCellPolicy::Null,
            extra_cells: ExtraCellPolicy::Ignore,
        }
    }
}

/// Where a sheet's header is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HeaderRow {
    /// The first row holding a value.
    #[default]
    Auto,
    /// A 1-based row number.
    Row(u32),
}

impl Serialize for HeaderRow {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            HeaderRow::Auto => serializer.serialize_str("auto"),
            HeaderRow::Row(row) => serializer.serialize_u32(*row),
        }
    }
}

impl<'de> Deserialize<'de> for HeaderRow {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Row(u32),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Row(row) => Ok(HeaderRow::Row(row)),
            Raw::Text(text) if text == "auto" => Ok(HeaderRow::Auto),
            Raw::Text(text) => text.parse().map(HeaderRow::Row).map_err(|_| {
                serde::de::Error::custom(format!(
                    "excel.header_row '{text}' is neither `auto` nor a row number"
                ))
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ErrorCellPolicy {
    #[default]
    Null,
    Fail,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ExtraCellPolicy {
    #[default]
    Ignore,
    Fail,
}
