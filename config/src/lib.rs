//! Typed configuration for Carga: process settings (where the bucket is, which master key encrypts)
//! and dataset specifications (what to pull, how, and how often).

mod dataset;
mod error;
mod settings;

pub use dataset::{
    CsvOptions, DatasetSpec, Encoding, ErrorCellPolicy, ExcelOptions, ExtraCellPolicy, HeaderRow,
    IncrementalParam, JsonOptions, MalformedRowPolicy, MissingColumnPolicy, MixedTypesPolicy, Mode,
    MongoOptions, NestedPolicy, NewColumnPolicy, Pagination, PartitionSpec, PostgresOptions,
    RestAuth, RestOptions, SourceFormat, SourceSpec, Trigger,
};
pub use error::ConfigError;
pub use settings::{Compression, S3Settings, SecretsProvider, Settings, SourceAccessSettings};
