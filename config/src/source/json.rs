//! `format: json`: a JSON array of records or JSON Lines.

use serde::{Deserialize, Serialize};

use super::MixedTypesPolicy;

/// A JSON file (an array of records or one record per line).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JsonSource {
    pub location: String,
    #[serde(default)]
    pub json: JsonOptions,
}

impl JsonSource {
    pub(crate) const FIELDS: &'static [&'static str] = &["location", "json"];
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JsonOptions {
    /// Records sampled for schema inference.
    pub infer_records: usize,
    /// A single record larger than this is refused (protects memory).
    pub max_record_bytes: usize,
    /// A top-level field that is an object or array in some records and something else in
    /// others: `string` writes it as JSON text, `fail` refuses the run naming the field.
    pub mixed_types: MixedTypesPolicy,
}

impl Default for JsonOptions {
    fn default() -> Self {
        Self {
            infer_records: 1000,
            max_record_bytes: 64 * 1024 * 1024,
            mixed_types: MixedTypesPolicy::String,
        }
    }
}
