//! `format: parquet | arrow | avro`: files that carry their own schema; only where they are.

use serde::{Deserialize, Serialize};

/// A Parquet, Arrow IPC or Avro file (the format says which); read with its own types.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ColumnarSource {
    pub location: String,
}

impl ColumnarSource {
    pub(crate) const FIELDS: &'static [&'static str] = &["location"];
}
