//! Typed configuration for Carga: process settings (where the bucket is, which master key encrypts)
//! and dataset specifications (what to pull, how, and how often).

mod dataset;
mod error;
mod settings;
mod source;

pub use dataset::{
    DatasetSpec, MalformedRowPolicy, MissingColumnPolicy, Mode, NewColumnPolicy, Trigger,
};
pub use error::ConfigError;
pub use settings::{
    Compression, S3Settings, SecretsProvider, Settings, SourceAccessSettings, UploadSettings,
};
pub use source::{
    ColumnarSource, CsvOptions, CsvSource, Encoding, ErrorCellPolicy, ExcelOptions, ExcelSource,
    ExtraCellPolicy, HeaderRow, IncrementalParam, JsonOptions, JsonSource, MixedTypesPolicy,
    MongoOptions, MongoSource, NestedPolicy, Pagination, PartitionSpec, PluginSource,
    PostgresOptions, PostgresSource, RestAuth, RestOptions, RestSource, SourceFormat, SourceSpec,
    TableSelection, TableSource,
};
