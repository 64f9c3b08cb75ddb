//! `format: mongodb`: a collection (or several).

use serde::{Deserialize, Serialize};

use super::MixedTypesPolicy;

/// A MongoDB collection: `collection` in the connection's database, or `database.collection`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MongoSource {
    #[serde(default, alias = "collection")]
    pub table: Option<String>,
    #[serde(default, alias = "collections")]
    pub tables: Vec<String>,
    /// The fields to extract; all of them when empty.
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default)]
    pub mongodb: MongoOptions,
}

impl MongoSource {
    pub(crate) const FIELDS: &'static [&'static str] = &[
        "table",
        "collection",
        "tables",
        "collections",
        "columns",
        "mongodb",
    ];
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MongoOptions {
    /// Documents sampled (in natural order) to infer the collection's schema.
    pub sample_size: usize,
    /// A field seen with incompatible BSON types in the sample (say string and number).
    pub mixed_types: MixedTypesPolicy,
    /// How embedded documents and arrays are written.
    pub nested: NestedPolicy,
    /// Extended-JSON filter applied on the server before the delta cursor, e.g. `{"status": "active"}`.
    pub filter: Option<String>,
    /// Documents the server returns per round trip.
    pub batch_size: u32,
}

impl Default for MongoOptions {
    fn default() -> Self {
        Self {
            sample_size: 1000,
            mixed_types: MixedTypesPolicy::String,
            nested: NestedPolicy::Struct,
            filter: None,
            batch_size: 4096,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NestedPolicy {
    /// Embedded documents become Arrow structs and arrays become lists, with inferred types.
    #[default]
    Struct,
    /// Embedded documents and arrays are written as JSON text.
    Json,
}
