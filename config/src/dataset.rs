//! The dataset specification: one YAML document per dataset, the Rust twin of a `dataset_crons` row.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// What to extract, how, and when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// Stable identifier; becomes the folder under `raw/`. Letters, digits, `-` and `_`.
    pub id: String,
    #[serde(default)]
    pub description: Option<String>,
    pub source: SourceSpec,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub trigger: Trigger,
    /// Cron expression for `timed_pull` datasets (used by the scheduler).
    #[serde(default)]
    pub cron: Option<String>,
    /// IANA time zone the cron is read in (`America/Bogota`); UTC when absent.
    #[serde(default, alias = "timeZone")]
    pub time_zone: Option<String>,
    /// Secret id of the connection credentials (database and API sources).
    #[serde(default, rename = "connection_id", alias = "connectionId")]
    pub connection_id: Option<String>,
    /// What to do when the source grows a column the previous runs did not have.
    #[serde(default, alias = "IgnoreColumns")]
    pub new_columns: NewColumnPolicy,
    /// What to do when a column of the previous runs is missing from the source (a renamed
    /// header, a dropped column).
    #[serde(default)]
    pub missing_columns: MissingColumnPolicy,
    /// Columns whose values identify a row; used for duplicate detection and the delta cursor tie-break.
    #[serde(default)]
    pub key: Vec<String>,
    /// Column holding the row's change time; the delta cursor's first component.
    #[serde(default)]
    pub timestamp_column: Option<String>,
    /// Delta runs re-read this far behind the watermark (`90s`, `15m`, `2h`, `1d`) to catch rows
    /// committed late; rows already delivered are recognised and not repeated.
    #[serde(default)]
    pub lookback: Option<String>,
    /// Explicit column types that win over inference, e.g. `amount: decimal(12,2)`.
    #[serde(default)]
    pub schema: BTreeMap<String, String>,
    #[serde(default)]
    pub on_malformed_row: MalformedRowPolicy,
    /// SQL run over the source as it streams, reading the table `source`:
    /// `SELECT id, lower(email) AS email, sha256(phone) AS phone FROM source WHERE country = 'MX'`.
    /// Its output is what the run checks, filters by the cursor and writes.
    #[serde(default)]
    pub transform: Option<String>,
    /// A run that reads no data rows is refused unless this is set.
    #[serde(default)]
    pub allow_empty: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub format: SourceFormat,
    /// Files: a local path (relative to the spec file), an `s3://bucket/key` object or an `https://` URL.
    #[serde(default)]
    pub location: String,
    /// Databases: the table to extract, schema-qualified (`public.orders`); MongoDB: the
    /// collection, optionally `database.collection`.
    #[serde(default, alias = "collection")]
    pub table: Option<String>,
    /// Databases: several tables (MongoDB: collections) pulled with the same settings. Each runs
    /// as its own dataset `<id>/<table>`, with its own manifests and watermark (`per_table`).
    #[serde(default, alias = "collections")]
    pub tables: Vec<String>,
    /// Databases: the columns to extract; all of them when empty.
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default)]
    pub postgres: PostgresOptions,
    /// Split a large table into key ranges read in parallel (PostgreSQL).
    #[serde(default)]
    pub partitions: Option<PartitionSpec>,
    #[serde(default)]
    pub mongodb: MongoOptions,
    #[serde(default)]
    pub csv: CsvOptions,
    #[serde(default)]
    pub json: JsonOptions,
    #[serde(default)]
    pub excel: ExcelOptions,
    #[serde(default)]
    pub rest: RestOptions,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    Csv,
    Json,
    Excel,
    /// Parquet files (not encrypted), read row group by row group with their own types.
    Parquet,
    /// Arrow IPC, file (Feather v2) or stream format.
    #[serde(alias = "ipc", alias = "feather")]
    Arrow,
    /// Avro object container files.
    Avro,
    Postgres,
    /// MySQL and MariaDB.
    #[serde(alias = "mariadb")]
    Mysql,
    /// SQL Server.
    #[serde(alias = "sqlserver")]
    Mssql,
    /// MongoDB: `source.table` (or `collection`) names the collection.
    #[serde(alias = "mongo")]
    Mongodb,
    /// A REST API returning JSON: `source.location` is the first page's URL, `source.rest` says
    /// how to authenticate, paginate and find the records.
    #[serde(alias = "api", alias = "http")]
    Rest,
}

impl SourceFormat {
    /// Sources that read credentials from a connection secret.
    pub fn needs_connection(self) -> bool {
        self.is_database() || self == SourceFormat::Rest
    }

    pub fn is_database(self) -> bool {
        matches!(
            self,
            SourceFormat::Postgres
                | SourceFormat::Mysql
                | SourceFormat::Mssql
                | SourceFormat::Mongodb
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresOptions {
    /// How `numeric` columns without a declared precision are written: `text` keeps every digit
    /// exactly as a string; `decimal(p,s)` makes them decimals, and a value that does not fit fails.
    pub unconstrained_numeric: String,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            unconstrained_numeric: "text".into(),
        }
    }
}

/// Partitioned extraction, like Spark JDBC's `partitionColumn`/`numPartitions`, but with the
/// range bounds taken from the data (quantiles of a sample), so skewed keys still split evenly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PartitionSpec {
    /// A column with an ordering (integer, numeric, date, timestamp, text); ideally indexed.
    pub column: String,
    /// How many key ranges (chunks) to cut the table into.
    pub count: u32,
    /// Chunks read at the same time; all of them when absent.
    #[serde(default)]
    pub parallel: Option<u32>,
    /// Attempts per chunk before the run fails (a failed attempt's parts are removed first).
    #[serde(default = "default_chunk_attempts")]
    pub attempts: u32,
}

fn default_chunk_attempts() -> u32 {
    3
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
pub enum MixedTypesPolicy {
    /// Write the field as text: strings as they are, other values as relaxed extended JSON.
    #[default]
    String,
    /// Refuse the run, naming the field and the types seen.
    Fail,
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

/// A REST source: authentication, pagination, where the records are, and how to be polite.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RestOptions {
    /// Extra request headers (not secrets: those come from the connection's secret).
    pub headers: BTreeMap<String, String>,
    /// Extra query parameters sent with every request.
    pub query: BTreeMap<String, String>,
    pub auth: RestAuth,
    pub pagination: Pagination,
    /// Dot path to the records array in each page (`data.items`); the body itself when empty.
    pub records_path: String,
    pub incremental: Option<IncrementalParam>,
    /// Requests per second at most (0: no limit).
    pub requests_per_second: f64,
    /// Attempts per request for 429, 5xx, timeouts and connection errors.
    pub max_attempts: u32,
    /// First backoff between attempts, in milliseconds; doubles each attempt (capped at 60 s).
    /// A `Retry-After` header wins.
    pub backoff_ms: u64,
    /// Seconds a request may take in all.
    pub timeout_seconds: u64,
    /// A run stops with an error after this many pages (protects against endless pagination).
    pub max_pages: u64,
    /// A page larger than this is refused.
    pub max_page_bytes: usize,
    /// Records sampled for schema inference (from the first pages).
    pub infer_records: usize,
}

impl Default for RestOptions {
    fn default() -> Self {
        Self {
            headers: BTreeMap::new(),
            query: BTreeMap::new(),
            auth: RestAuth::None,
            pagination: Pagination::None,
            records_path: String::new(),
            incremental: None,
            requests_per_second: 0.0,
            max_attempts: 5,
            backoff_ms: 1000,
            timeout_seconds: 60,
            max_pages: 100_000,
            max_page_bytes: 64 * 1024 * 1024,
            infer_records: 1000,
        }
    }
}

/// How requests authenticate. Secret values are read from the connection secret's fields named
/// here (`api_key`, `token`, `username`/`password`, `client_id`/`client_secret`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "type")]
pub enum RestAuth {
    #[default]
    None,
    /// The secret's `api_key` in a header (`X-API-Key` by default) or a query parameter.
    ApiKey {
        #[serde(default)]
        header: Option<String>,
        #[serde(default)]
        query_param: Option<String>,
    },
    /// `Authorization: Bearer <token>` with the secret's `token`.
    Bearer,
    /// HTTP basic with the secret's `username` and `password`.
    Basic,
    /// OAuth2 client credentials: a token from `token_url` (or the secret's `token_url`) with the
    /// secret's `client_id` and `client_secret`, renewed before it expires and after a 401.
    #[serde(alias = "oauth2")]
    Oauth2ClientCredentials {
        #[serde(default)]
        token_url: Option<String>,
        #[serde(default)]
        scopes: Vec<String>,
    },
}

/// How the next page is found, and when to stop.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "style")]
pub enum Pagination {
    /// One request.
    #[default]
    None,
    /// `?page=1,2,3...`; stops at an empty page or one shorter than `size`.
    Page {
        #[serde(default = "default_page_param")]
        param: String,
        #[serde(default = "default_one")]
        first: u64,
        #[serde(default)]
        size_param: Option<String>,
        #[serde(default)]
        size: Option<u64>,
    },
    /// `?offset=0&limit=100`, `?offset=100&limit=100`...; stops at a short or empty page.
    Offset {
        #[serde(default = "default_offset_param")]
        param: String,
        #[serde(default = "default_limit_param")]
        limit_param: String,
        limit: u64,
    },
    /// A token in the body (`meta.next_cursor`) sent back as `param`, or a full next URL in the
    /// body (`next_url_path`); stops when it is absent, null or empty.
    Cursor {
        #[serde(default)]
        cursor_path: Option<String>,
        #[serde(default = "default_cursor_param")]
        param: String,
        #[serde(default)]
        next_url_path: Option<String>,
    },
    /// RFC 8288 `Link: <...>; rel="next"` headers (GitHub style); stops when there is none.
    LinkHeader,
}

fn default_page_param() -> String {
    "page".into()
}
fn default_one() -> u64 {
    1
}
fn default_offset_param() -> String {
    "offset".into()
}
fn default_limit_param() -> String {
    "limit".into()
}
fn default_cursor_param() -> String {
    "cursor".into()
}

/// A request parameter filled from the stored watermark on delta runs (`updated_since`), so the
/// API sends only what changed; the pipeline still filters on the exact cursor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IncrementalParam {
    pub param: String,
    /// `rfc3339` (default), `epoch_seconds`, `epoch_millis`, or a chrono format like `%Y-%m-%d`.
    #[serde(default = "default_incremental_format")]
    pub format: String,
    /// Value sent on the first run, when there is no watermark yet (none sent when absent).
    #[serde(default)]
    pub initial: Option<String>,
}

fn default_incremental_format() -> String {
    "rfc3339".into()
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

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MissingColumnPolicy {
    /// The run fails naming the columns (a renamed header must not replace a snapshot with nulls).
    #[default]
    Fail,
    /// The missing columns are written as nulls and listed in the report.
    Null,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Only rows after the stored watermark.
    Delta,
    /// Reload everything and replace the previous snapshot.
    #[default]
    Complete,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    #[default]
    TimedPull,
    Callback,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NewColumnPolicy {
    /// Keep the schema of the previous runs; new source columns are dropped (and reported).
    #[default]
    Ignore,
    /// New source columns are added to the output schema.
    Add,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MalformedRowPolicy {
    /// The first malformed row fails the run, naming the row and the reason.
    #[default]
    Fail,
    /// Malformed rows are left out, counted, and listed (row numbers) in the validation report.
    Skip,
}

impl SourceSpec {
    /// How the source is named in messages: the file location or the table.
    pub fn describe(&self) -> String {
        match (&self.table, self.format.is_database()) {
            (Some(table), true) => format!("table {table}"),
            _ => self.location.clone(),
        }
    }
}

impl DatasetSpec {
    /// Reads a spec and resolves a relative local `source.location` against the spec's folder.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut spec: DatasetSpec =
            serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?;
        if !spec.source.format.is_database()
            && is_local_relative(&spec.source.location)
            && let Some(dir) = path.parent()
        {
            spec.source.location = dir.join(&spec.source.location).display().to_string();
        }
        spec.validate()?;
        Ok(spec)
    }

    /// One spec per table of a multi-table dataset (itself when it names one table): id
    /// `<id>/<table>` with the table name's other characters as `_` (`public.pedidos` →
    /// `ventas/public_pedidos`), so each table keeps its own manifests under `raw/<id>/<table>/`.
    pub fn per_table(&self) -> Vec<DatasetSpec> {
        if self.source.tables.is_empty() {
            return vec![self.clone()];
        }
        self.source
            .tables
            .iter()
            .map(|table| {
                let mut spec = self.clone();
                spec.source.tables.clear();
                spec.source.table = Some(table.clone());
                let folder: String = table
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                spec.id = format!("{}/{folder}", self.id);
                spec
            })
            .collect()
    }

    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let spec: DatasetSpec =
            serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
                path: "<inline>".into(),
                source,
            })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks that can be made without touching the source. Delta needs a cursor; timed pulls need a cron.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::InvalidDataset {
            dataset: self.id.clone(),
            message,
        };
        // `<id>/<table>` is what `per_table` makes of a multi-table dataset.
        let valid_segment = |segment: &str| {
            !segment.is_empty()
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !self.id.split('/').all(valid_segment) || self.id.split('/').count() > 2 {
            return Err(invalid(
                "id must be non-empty and use only letters, digits, '-' and '_'".into(),
            ));
        }
        if self.mode == Mode::Delta {
            if self.timestamp_column.is_none() {
                return Err(invalid(
                    "mode 'delta' needs `timestamp_column` (the column the watermark follows)"
                        .into(),
                ));
            }
            if self.key.is_empty() {
                return Err(invalid(
                    "mode 'delta' needs `key` (the incremental key that orders rows sharing a timestamp)"
                        .into(),
                ));
            }
        }
        if let Some(partitions) = &self.source.partitions {
            if self.source.format != SourceFormat::Postgres {
                return Err(invalid(
                    "source.partitions is available for postgres sources (one exported snapshot keeps the chunks consistent)".into(),
                ));
            }
            if partitions.count < 2 || partitions.count > 1024 {
                return Err(invalid(
                    "source.partitions.count must be between 2 and 1024".into(),
                ));
            }
            if partitions.attempts == 0 || partitions.parallel == Some(0) {
                return Err(invalid(
                    "source.partitions.attempts and parallel must be at least 1".into(),
                ));
            }
        }
        if let Some(text) = &self.lookback {
            if parse_duration_seconds(text).is_none() {
                return Err(invalid(format!(
                    "lookback '{text}' is not a duration like 90s, 15m, 2h or 1d, of at most 366d"
                )));
            }
            if self.timestamp_column.is_none() {
                return Err(invalid("lookback needs `timestamp_column`".into()));
            }
        }
        if let Some(sql) = &self.transform
            && !sql.to_ascii_lowercase().contains("source")
        {
            return Err(invalid(
                "transform is SQL that reads the table `source` (SELECT ... FROM source ...)"
                    .into(),
            ));
        }
        if self.trigger == Trigger::TimedPull && self.cron.as_deref().is_none_or(str::is_empty) {
            return Err(invalid(
                "trigger 'timed_pull' needs `cron`; use trigger 'callback' for on-demand datasets"
                    .into(),
            ));
        }
        if self.source.format.is_database() {
            let has_table = self.source.table.as_deref().is_some_and(|t| !t.is_empty());
            match (has_table, self.source.tables.is_empty()) {
                (false, true) => {
                    return Err(invalid(
                        "a database source needs source.table (or source.tables)".into(),
                    ));
                }
                (true, false) => {
                    return Err(invalid(
                        "give source.table or source.tables, not both".into(),
                    ));
                }
                _ => {}
            }
            if self.source.tables.iter().any(|t| t.trim().is_empty()) {
                return Err(invalid("source.tables has an empty name".into()));
            }
            if self.connection_id.as_deref().is_none_or(str::is_empty) {
                return Err(invalid(
                    "a database source needs connection_id (the secret holding its credentials)"
                        .into(),
                ));
            }
        } else if self.source.location.is_empty() {
            return Err(invalid("source.location is empty".into()));
        }
        if self.source.format == SourceFormat::Rest {
            self.validate_rest().map_err(invalid)?;
        }
        let csv = &self.source.csv;
        if !csv.delimiter.is_ascii() || !csv.quote.is_ascii() {
            return Err(invalid(
                "csv.delimiter and csv.quote must be single ASCII characters".into(),
            ));
        }
        if self.source.excel.header_row == HeaderRow::Row(0) {
            return Err(invalid(
                "excel.header_row is 1-based; 0 is not a row".into(),
            ));
        }
        self.refuse_foreign_options().map_err(invalid)?;
        Ok(())
    }

    fn validate_rest(&self) -> Result<(), String> {
        let rest = &self.source.rest;
        let url = url::Url::parse(&self.source.location).map_err(|e| {
            format!(
                "source.location '{}' is not a URL: {e}",
                self.source.location
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("a rest source's location must be an http(s) URL".into());
        }
        if rest.auth != RestAuth::None && self.connection_id.as_deref().is_none_or(str::is_empty) {
            return Err(
                "rest.auth needs connection_id (the secret holding the API credentials)".into(),
            );
        }
        if let RestAuth::ApiKey {
            header: Some(_),
            query_param: Some(_),
        } = &rest.auth
        {
            return Err("rest.auth api_key: give header or query_param, not both".into());
        }
        match &rest.pagination {
            Pagination::Offset { limit: 0, .. } | Pagination::Page { size: Some(0), .. } => {
                return Err("rest.pagination: the page size must be at least 1".into());
            }
            Pagination::Cursor {
                cursor_path: None,
                next_url_path: None,
                ..
            } => {
                return Err(
                    "rest.pagination cursor needs cursor_path (a token) or next_url_path (a URL)"
                        .into(),
                );
            }
            _ => {}
        }
        if rest.incremental.is_some() && self.timestamp_column.is_none() {
            return Err(
                "rest.incremental needs `timestamp_column` (the watermark it sends)".into(),
            );
        }
        if rest.requests_per_second < 0.0 || !rest.requests_per_second.is_finite() {
            return Err("rest.requests_per_second must be 0 (no limit) or more".into());
        }
        if rest.max_attempts == 0 || rest.max_pages == 0 || rest.timeout_seconds == 0 {
            return Err(
                "rest.max_attempts, max_pages and timeout_seconds must be at least 1".into(),
            );
        }
        Ok(())
    }

    /// Option blocks belong to one format: a `csv:` block on a postgres source (or a `table` on a
    /// file) is a mistake to name, not to ignore.
    fn refuse_foreign_options(&self) -> Result<(), String> {
        use SourceFormat::*;
        let source = &self.source;
        let format = source.format;
        let blocks: [(&str, bool, bool); 6] = [
            ("csv", source.csv != CsvOptions::default(), format == Csv),
            (
                "json",
                source.json != JsonOptions::default(),
                format == Json,
            ),
            (
                "excel",
                source.excel != ExcelOptions::default(),
                format == Excel,
            ),
            (
                "postgres",
                source.postgres != PostgresOptions::default(),
                format == Postgres,
            ),
            (
                "mongodb",
                source.mongodb != MongoOptions::default(),
                format == Mongodb,
            ),
            (
                "rest",
                source.rest != RestOptions::default(),
                format == Rest,
            ),
        ];
        let name = serde_json::to_value(format)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        for (block, given, belongs) in blocks {
            if given && !belongs {
                return Err(format!(
                    "source.{block} does not apply to a {name} source; remove it (or fix source.format)"
                ));
            }
        }
        if !format.is_database() {
            let table = source.table.is_some() || !source.tables.is_empty();
            if table || !source.columns.is_empty() {
                return Err(format!(
                    "source.table, tables and columns apply to database sources, not to a {name} source"
                ));
            }
        } else if !source.location.is_empty() {
            return Err(format!(
                "source.location does not apply to a {name} source (its connection_id says where it is)"
            ));
        }
        Ok(())
    }

    /// The lookback window in seconds, if one is set (validated in `validate`).
    pub fn lookback_seconds(&self) -> Option<u64> {
        self.lookback.as_deref().and_then(parse_duration_seconds)
    }

    /// Columns that form the delta cursor, timestamp first, in comparison order.
    pub fn cursor_columns(&self) -> Vec<String> {
        self.timestamp_column
            .iter()
            .chain(self.key.iter())
            .cloned()
            .collect()
    }
}

/// `90s`, `15m`, `2h`, `1d` as seconds.
fn parse_duration_seconds(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let unit_seconds = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    number
        .checked_mul(unit_seconds)
        .filter(|&s| s > 0 && s <= MAX_LOOKBACK_SECONDS)
}

/// A lookback longer than a year is a typo (and would overflow the microsecond arithmetic).
const MAX_LOOKBACK_SECONDS: u64 = 366 * 86_400;

fn is_local_relative(location: &str) -> bool {
    !location.contains("://") && !Path::new(location).is_absolute()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        "id: ventas\nsource: {format: csv, location: ventas.csv}\ncron: '0 7 * * *'\n";

    #[test]
    fn minimal_spec_takes_defaults() {
        let spec = DatasetSpec::from_yaml(MINIMAL).unwrap();
        assert_eq!(spec.mode, Mode::Complete);
        assert_eq!(spec.trigger, Trigger::TimedPull);
        assert_eq!(spec.new_columns, NewColumnPolicy::Ignore);
        assert_eq!(spec.source.csv.delimiter, ',');
        assert_eq!(spec.on_malformed_row, MalformedRowPolicy::Fail);
    }

    #[test]
    fn delta_without_cursor_is_refused_with_a_reason() {
        let err = DatasetSpec::from_yaml(&format!("{MINIMAL}mode: delta\n")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("ventas") && msg.contains("timestamp_column"),
            "{msg}"
        );
        let err = DatasetSpec::from_yaml(&format!("{MINIMAL}mode: delta\ntimestamp_column: ts\n"))
            .unwrap_err();
        assert!(err.to_string().contains("`key`"), "{err}");
        DatasetSpec::from_yaml(&format!(
            "{MINIMAL}mode: delta\ntimestamp_column: ts\nkey: [id]\n"
        ))
        .unwrap();
    }

    #[test]
    fn lookback_is_a_duration_and_needs_a_timestamp() {
        let base = format!("{MINIMAL}mode: delta\ntimestamp_column: ts\nkey: [id]\n");
        let spec = DatasetSpec::from_yaml(&format!("{base}lookback: 15m\n")).unwrap();
        assert_eq!(spec.lookback_seconds(), Some(900));
        assert!(DatasetSpec::from_yaml(&format!("{base}lookback: soon\n")).is_err());
        assert!(DatasetSpec::from_yaml(&format!("{base}lookback: 0s\n")).is_err());
        assert_eq!(parse_duration_seconds("2d"), Some(172_800));
        let huge = DatasetSpec::from_yaml(&format!("{base}lookback: 99999999999999999d\n"));
        assert!(huge.unwrap_err().to_string().contains("at most 366d"));
        assert_eq!(parse_duration_seconds("367d"), None);
    }

    #[test]
    fn rest_sources_are_checked_before_any_request() {
        let rest = |extra: &str| {
            DatasetSpec::from_yaml(&format!(
                "id: api\ntrigger: callback\nsource:\n  format: rest\n  location: https://api.test/v1/items\n{extra}"
            ))
        };
        let spec = rest("  rest: {auth: {type: oauth2, scopes: [a]}, pagination: {style: offset, limit: 50}}\nconnection_id: prov\n").unwrap();
        assert!(matches!(
            spec.source.rest.auth,
            RestAuth::Oauth2ClientCredentials { .. }
        ));
        assert_eq!(
            spec.source.rest.pagination,
            Pagination::Offset {
                param: "offset".into(),
                limit_param: "limit".into(),
                limit: 50
            }
        );
        let refused = [
            ("  rest: {auth: {type: bearer}}\n", "needs connection_id"),
            ("  rest: {pagination: {style: cursor}}\n", "cursor_path"),
            (
                "  rest: {pagination: {style: offset, limit: 0}}\n",
                "at least 1",
            ),
            (
                "  rest: {incremental: {param: since}}\n",
                "timestamp_column",
            ),
            ("  rest: {max_pages: 0}\n", "at least 1"),
            (
                "  rest: {auth: {type: api_key, header: X, query_param: k}}\nconnection_id: c\n",
                "not both",
            ),
        ];
        for (extra, expected) in refused {
            let err = rest(extra).unwrap_err().to_string();
            assert!(err.contains(expected), "{extra}: {err}");
        }
        let err = DatasetSpec::from_yaml(
            "id: api\ntrigger: callback\nsource: {format: rest, location: 'ftp://x/y'}\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("http(s) URL"), "{err}");
    }

    #[test]
    fn timed_pull_needs_a_cron_but_callback_does_not() {
        let no_cron = "id: x\nsource: {format: json, location: a.json}\n";
        assert!(DatasetSpec::from_yaml(no_cron).is_err());
        DatasetSpec::from_yaml(&format!("{no_cron}trigger: callback\n")).unwrap();
    }

    #[test]
    fn unknown_fields_and_bad_ids_are_refused() {
        assert!(DatasetSpec::from_yaml(&format!("{MINIMAL}moda: delta\n")).is_err());
        let bad_id = MINIMAL.replace("ventas", "../etc");
        assert!(DatasetSpec::from_yaml(&bad_id).is_err());
    }

    #[test]
    fn option_blocks_of_another_format_are_refused_by_name() {
        let pg = "id: p\nsource: {format: postgres, table: t, csv: {delimiter: ';'}}\nconnection_id: c\ntrigger: callback\n";
        let err = DatasetSpec::from_yaml(pg).unwrap_err().to_string();
        assert!(
            err.contains("source.csv does not apply to a postgres source"),
            "{err}"
        );
        let file_with_table =
            "id: f\nsource: {format: csv, location: a.csv, table: t}\ntrigger: callback\n";
        let err = DatasetSpec::from_yaml(file_with_table)
            .unwrap_err()
            .to_string();
        assert!(err.contains("apply to database sources"), "{err}");
        let rest_on_json = "id: j\nsource: {format: json, location: a.json, rest: {max_pages: 3}}\ntrigger: callback\n";
        assert!(
            DatasetSpec::from_yaml(rest_on_json)
                .unwrap_err()
                .to_string()
                .contains("source.rest")
        );
        DatasetSpec::from_yaml("id: c\nsource: {format: csv, location: a.csv, csv: {delimiter: ';'}}\ntrigger: callback\n").unwrap();
    }

    #[test]
    fn excel_header_row_is_auto_or_a_number() {
        let spec = |extra: &str| {
            DatasetSpec::from_yaml(&format!(
                "id: x\nsource: {{format: excel, location: a.xlsx{extra}}}\ntrigger: callback\n"
            ))
        };
        assert_eq!(spec("").unwrap().source.excel.header_row, HeaderRow::Auto);
        assert_eq!(
            spec(", excel: {header_row: 3}")
                .unwrap()
                .source
                .excel
                .header_row,
            HeaderRow::Row(3)
        );
        assert_eq!(
            spec(", excel: {header_row: auto}")
                .unwrap()
                .source
                .excel
                .header_row,
            HeaderRow::Auto
        );
        assert!(spec(", excel: {header_row: 0}").is_err());
        assert!(spec(", excel: {header_row: top}").is_err());
    }

    #[test]
    fn seed_design_field_names_are_accepted() {
        let spec = DatasetSpec::from_yaml(&format!(
            "{MINIMAL}connectionId: secret-1\nIgnoreColumns: add\n"
        ))
        .unwrap();
        assert_eq!(spec.connection_id.as_deref(), Some("secret-1"));
        assert_eq!(spec.new_columns, NewColumnPolicy::Add);
    }

    #[test]
    fn several_tables_become_one_dataset_each() {
        let spec = DatasetSpec::from_yaml(
            "id: ventas\nsource: {format: postgres, tables: [public.pedidos, \"Clientes\"]}\nconnection_id: pg\ntrigger: callback\n",
        )
        .unwrap();
        let ids: Vec<String> = spec.per_table().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["ventas/public_pedidos", "ventas/Clientes"]);
        let each = &spec.per_table()[0];
        assert_eq!(each.source.table.as_deref(), Some("public.pedidos"));
        each.validate().unwrap();
        let both = DatasetSpec::from_yaml(
            "id: v\nsource: {format: postgres, table: a, tables: [b]}\nconnection_id: pg\ntrigger: callback\n",
        )
        .unwrap_err();
        assert!(both.to_string().contains("not both"), "{both}");
        let bad_id = DatasetSpec::from_yaml(
            "id: a/b/c\nsource: {format: csv, location: x.csv}\ntrigger: callback\n",
        );
        assert!(bad_id.is_err());
    }
}
