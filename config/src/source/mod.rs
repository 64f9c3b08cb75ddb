//! The spec's `source`: one config struct per format, chosen by its `format` field. Each struct
//! refuses fields that are not its own (a `csv:` block on a postgres source is named, not
//! ignored). A format Carga does not know is kept as a [`PluginSource`] for a source the
//! embedding program registered (`carga_jobs::sources::SourceRegistry`); the registry refuses
//! it when nobody did.

mod columnar;
mod csv;
mod database;
mod excel;
mod json;
mod mongodb;
mod postgres;
mod rest;

use serde::{Deserialize, Serialize};

pub use columnar::ColumnarSource;
pub use csv::{CsvOptions, CsvSource, Encoding};
pub use database::TableSource;
pub use excel::{ErrorCellPolicy, ExcelOptions, ExcelSource, ExtraCellPolicy, HeaderRow};
pub use json::{JsonOptions, JsonSource};
pub use mongodb::{MongoOptions, MongoSource, NestedPolicy};
pub use postgres::{PartitionSpec, PostgresOptions, PostgresSource};
pub use rest::{IncrementalParam, Pagination, RestAuth, RestOptions, RestSource};

/// Where a dataset's rows come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    Csv(CsvSource),
    Json(JsonSource),
    Excel(ExcelSource),
    /// Parquet files (not encrypted), read row group by row group with their own types.
    Parquet(ColumnarSource),
    /// Arrow IPC, file (Feather v2) or stream format.
    Arrow(ColumnarSource),
    /// Avro object container files.
    Avro(ColumnarSource),
    Postgres(PostgresSource),
    /// MySQL and MariaDB.
    Mysql(TableSource),
    /// SQL Server.
    Mssql(TableSource),
    Mongodb(MongoSource),
    Rest(Box<RestSource>),
    /// A format registered by the program embedding Carga.
    Plugin(PluginSource),
}

/// A source of a format Carga does not build in: its name and its other fields, for the
/// registered source to read.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSource {
    pub format: String,
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// The built-in formats by name (`carga discover --format`, messages).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    Csv,
    Json,
    Excel,
    Parquet,
    #[serde(alias = "ipc", alias = "feather")]
    Arrow,
    Avro,
    Postgres,
    #[serde(alias = "mariadb")]
    Mysql,
    #[serde(alias = "sqlserver")]
    Mssql,
    #[serde(alias = "mongo")]
    Mongodb,
    #[serde(alias = "api", alias = "http")]
    Rest,
}

impl SourceFormat {
    pub const ALL: [SourceFormat; 11] = [
        SourceFormat::Csv,
        SourceFormat::Json,
        SourceFormat::Excel,
        SourceFormat::Parquet,
        SourceFormat::Arrow,
        SourceFormat::Avro,
        SourceFormat::Postgres,
        SourceFormat::Mysql,
        SourceFormat::Mssql,
        SourceFormat::Mongodb,
        SourceFormat::Rest,
    ];

    /// The format's name or one of its aliases.
    pub fn from_name(name: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
    }

    pub fn name(self) -> &'static str {
        match self {
            SourceFormat::Csv => "csv",
            SourceFormat::Json => "json",
            SourceFormat::Excel => "excel",
            SourceFormat::Parquet => "parquet",
            SourceFormat::Arrow => "arrow",
            SourceFormat::Avro => "avro",
            SourceFormat::Postgres => "postgres",
            SourceFormat::Mysql => "mysql",
            SourceFormat::Mssql => "mssql",
            SourceFormat::Mongodb => "mongodb",
            SourceFormat::Rest => "rest",
        }
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

    /// The fields its config struct takes (besides `format`).
    fn fields(self) -> &'static [&'static str] {
        match self {
            SourceFormat::Csv => CsvSource::FIELDS,
            SourceFormat::Json => JsonSource::FIELDS,
            SourceFormat::Excel => ExcelSource::FIELDS,
            SourceFormat::Parquet | SourceFormat::Arrow | SourceFormat::Avro => {
                ColumnarSource::FIELDS
            }
            SourceFormat::Postgres => PostgresSource::FIELDS,
            SourceFormat::Mysql | SourceFormat::Mssql => TableSource::FIELDS,
            SourceFormat::Mongodb => MongoSource::FIELDS,
            SourceFormat::Rest => RestSource::FIELDS,
        }
    }
}

/// A field sampled in a previous run with incompatible types (say string and number).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MixedTypesPolicy {
    /// Write the field as text: strings as they are, other values as JSON.
    #[default]
    String,
    /// Refuse the run, naming the field and the types seen.
    Fail,
}

/// The table selection of a database source.
#[derive(Debug, Clone, Copy)]
pub struct TableSelection<'a> {
    pub table: Option<&'a str>,
    pub tables: &'a [String],
    pub columns: &'a [String],
}

impl SourceSpec {
    /// The built-in format, `None` for a plugin.
    pub fn builtin(&self) -> Option<SourceFormat> {
        Some(match self {
            SourceSpec::Csv(_) => SourceFormat::Csv,
            SourceSpec::Json(_) => SourceFormat::Json,
            SourceSpec::Excel(_) => SourceFormat::Excel,
            SourceSpec::Parquet(_) => SourceFormat::Parquet,
            SourceSpec::Arrow(_) => SourceFormat::Arrow,
            SourceSpec::Avro(_) => SourceFormat::Avro,
            SourceSpec::Postgres(_) => SourceFormat::Postgres,
            SourceSpec::Mysql(_) => SourceFormat::Mysql,
            SourceSpec::Mssql(_) => SourceFormat::Mssql,
            SourceSpec::Mongodb(_) => SourceFormat::Mongodb,
            SourceSpec::Rest(_) => SourceFormat::Rest,
            SourceSpec::Plugin(_) => return None,
        })
    }

    /// The `format` field as written in the spec's canonical form.
    pub fn format_name(&self) -> &str {
        match (self, self.builtin()) {
            (_, Some(format)) => format.name(),
            (SourceSpec::Plugin(plugin), None) => &plugin.format,
            (_, None) => unreachable!("only a plugin has no built-in format"),
        }
    }

    pub fn is_database(&self) -> bool {
        self.builtin().is_some_and(SourceFormat::is_database)
    }

    /// Whether `connection_id`'s credentials are read for it (a plugin gets them when it names one).
    pub fn needs_connection(&self) -> bool {
        self.is_database() || matches!(self, SourceSpec::Rest(_) | SourceSpec::Plugin(_))
    }

    /// The file's (or the API's) location.
    pub fn location(&self) -> Option<&str> {
        match self {
            SourceSpec::Csv(s) => Some(&s.location),
            SourceSpec::Json(s) => Some(&s.location),
            SourceSpec::Excel(s) => Some(&s.location),
            SourceSpec::Parquet(s) | SourceSpec::Arrow(s) | SourceSpec::Avro(s) => {
                Some(&s.location)
            }
            SourceSpec::Rest(s) => Some(&s.location),
            _ => None,
        }
    }

    pub fn location_mut(&mut self) -> Option<&mut String> {
        match self {
            SourceSpec::Csv(s) => Some(&mut s.location),
            SourceSpec::Json(s) => Some(&mut s.location),
            SourceSpec::Excel(s) => Some(&mut s.location),
            SourceSpec::Parquet(s) | SourceSpec::Arrow(s) | SourceSpec::Avro(s) => {
                Some(&mut s.location)
            }
            SourceSpec::Rest(s) => Some(&mut s.location),
            _ => None,
        }
    }

    /// A local file given relative to the spec's folder.
    pub(crate) fn is_local_file(&self) -> bool {
        !matches!(self, SourceSpec::Rest(_)) && self.location().is_some()
    }

    /// Which table(s) and columns a database source reads.
    pub fn selection(&self) -> Option<TableSelection<'_>> {
        let (table, tables, columns) = match self {
            SourceSpec::Postgres(s) => (&s.table, &s.tables, &s.columns),
            SourceSpec::Mysql(s) | SourceSpec::Mssql(s) => (&s.table, &s.tables, &s.columns),
            SourceSpec::Mongodb(s) => (&s.table, &s.tables, &s.columns),
            _ => return None,
        };
        Some(TableSelection {
            table: table.as_deref(),
            tables,
            columns,
        })
    }

    /// The one table a database source reads (empty when it names none or several).
    pub fn table(&self) -> &str {
        self.selection().and_then(|s| s.table).unwrap_or_default()
    }

    /// The several tables of a multi-table dataset (empty for others).
    pub fn tables(&self) -> &[String] {
        self.selection().map_or(&[], |s| s.tables)
    }

    /// The columns a database source is limited to (empty: all).
    pub fn columns(&self) -> &[String] {
        self.selection().map_or(&[], |s| s.columns)
    }

    /// This source reading `table` alone (one of `tables`).
    pub(crate) fn for_table(&self, table: &str) -> SourceSpec {
        let mut one = self.clone();
        let slots = match &mut one {
            SourceSpec::Postgres(s) => Some((&mut s.table, &mut s.tables)),
            SourceSpec::Mysql(s) | SourceSpec::Mssql(s) => Some((&mut s.table, &mut s.tables)),
            SourceSpec::Mongodb(s) => Some((&mut s.table, &mut s.tables)),
            _ => None,
        };
        if let Some((one_table, tables)) = slots {
            *one_table = Some(table.to_owned());
            tables.clear();
        }
        one
    }

    /// How the source is named in messages: the file location or the table.
    pub fn describe(&self) -> String {
        match (self.location(), self) {
            (Some(location), _) => location.to_owned(),
            (None, SourceSpec::Plugin(plugin)) => format!("{} source", plugin.format),
            (None, _) => format!("table {}", self.table()),
        }
    }

    /// The checks of each format's own fields (the spec checks what spans several).
    pub(crate) fn validate(&self) -> Result<(), String> {
        match self {
            SourceSpec::Csv(s) => s.validate(),
            SourceSpec::Excel(s) => s.validate(),
            SourceSpec::Postgres(s) => s.validate(),
            SourceSpec::Mysql(s) => s.validate(true),
            SourceSpec::Mssql(s) => s.validate(false),
            _ => Ok(()),
        }
    }
}

impl<'de> Deserialize<'de> for SourceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut fields = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        let format = match fields.remove("format") {
            Some(serde_json::Value::String(format)) => format,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "source.format must be a name (csv, postgres, ...), not {other}"
                )));
            }
            None => return Err(D::Error::missing_field("format")),
        };
        let Some(builtin) = SourceFormat::from_name(&format) else {
            return Ok(SourceSpec::Plugin(PluginSource {
                format,
                options: fields,
            }));
        };
        if let Some(foreign) = fields
            .keys()
            .find(|field| !builtin.fields().contains(&field.as_str()))
        {
            return Err(D::Error::custom(foreign_field(builtin, foreign)));
        }
        let value = serde_json::Value::Object(fields);
        let parsed = match builtin {
            SourceFormat::Csv => serde_json::from_value(value).map(SourceSpec::Csv),
            SourceFormat::Json => serde_json::from_value(value).map(SourceSpec::Json),
            SourceFormat::Excel => serde_json::from_value(value).map(SourceSpec::Excel),
            SourceFormat::Parquet => serde_json::from_value(value).map(SourceSpec::Parquet),
            SourceFormat::Arrow => serde_json::from_value(value).map(SourceSpec::Arrow),
            SourceFormat::Avro => serde_json::from_value(value).map(SourceSpec::Avro),
            SourceFormat::Postgres => serde_json::from_value(value).map(SourceSpec::Postgres),
            SourceFormat::Mysql => serde_json::from_value(value).map(SourceSpec::Mysql),
            SourceFormat::Mssql => serde_json::from_value(value).map(SourceSpec::Mssql),
            SourceFormat::Mongodb => serde_json::from_value(value).map(SourceSpec::Mongodb),
            SourceFormat::Rest => serde_json::from_value(value).map(SourceSpec::Rest),
        };
        parsed.map_err(|e| D::Error::custom(format!("source ({}): {e}", builtin.name())))
    }
}

/// A field of another format's struct is a mistake to name (with whose it is), not to ignore.
fn foreign_field(format: SourceFormat, field: &str) -> String {
    let name = format.name();
    let owners: Vec<&str> = SourceFormat::ALL
        .iter()
        .filter(|f| f.fields().contains(&field))
        .map(|f| f.name())
        .collect();
    if owners.is_empty() {
        return format!(
            "source.{field} is not a field of a {name} source (its fields: format, {})",
            format.fields().join(", ")
        );
    }
    let whose = if owners
        .iter()
        .all(|o| SourceFormat::from_name(o).is_some_and(SourceFormat::is_database))
    {
        "database sources".to_owned()
    } else {
        format!("{} sources", owners.join(", "))
    };
    format!(
        "source.{field} does not apply to a {name} source (it belongs to {whose}); remove it (or fix source.format)"
    )
}

impl Serialize for SourceSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap};
        let fields = match self {
            SourceSpec::Csv(s) => serde_json::to_value(s),
            SourceSpec::Json(s) => serde_json::to_value(s),
            SourceSpec::Excel(s) => serde_json::to_value(s),
            SourceSpec::Parquet(s) | SourceSpec::Arrow(s) | SourceSpec::Avro(s) => {
                serde_json::to_value(s)
            }
            SourceSpec::Postgres(s) => serde_json::to_value(s),
            SourceSpec::Mysql(s) | SourceSpec::Mssql(s) => serde_json::to_value(s),
            SourceSpec::Mongodb(s) => serde_json::to_value(s),
            SourceSpec::Rest(s) => serde_json::to_value(s),
            SourceSpec::Plugin(p) => Ok(serde_json::Value::Object(p.options.clone())),
        }
        .map_err(S::Error::custom)?;
        let serde_json::Value::Object(fields) = fields else {
            return Err(S::Error::custom("a source serializes as a map"));
        };
        let mut map = serializer.serialize_map(Some(fields.len() + 1))?;
        map.serialize_entry("format", self.format_name())?;
        for (key, value) in &fields {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}
