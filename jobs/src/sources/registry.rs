//! Which [`Source`] reads a spec: one line per built-in format, and the formats an embedding
//! program registers (a `format: kafka` spec is read by whatever was registered as `kafka`).

use std::collections::BTreeMap;
use std::sync::Arc;

use carga_config::{ColumnarSource, DatasetSpec, SourceFormat, SourceSpec};

use super::FileSource;
use super::Source;
use super::columnar::{Columnar, ColumnarFile};
use super::listing::TableInfo;
use super::mongodb::MongoCollection;
use super::mssql::MssqlTable;
use super::mysql::MysqlTable;
use super::postgres::PostgresTable;
use super::rest::RestApi;
use crate::access::AccessPolicy;
use crate::error::{JobError, Result};
use crate::secrets::ConnectionSecret;

/// Builds the source of a spec whose `source.format` it was registered under.
pub trait SourceFactory: Send + Sync {
    /// `spec.source` is a `SourceSpec::Plugin` with its other fields in `options`; refuse the
    /// ones that do not belong (with `JobError::Refused`) rather than ignoring them. Files are
    /// read only through `policy` (data roots, network policy).
    fn build(&self, spec: &DatasetSpec, policy: &AccessPolicy) -> Result<Arc<dyn Source>>;

    /// How a connection of this format lists its tables (`carga discover`), if it can.
    fn discovery(&self) -> Option<Arc<dyn TableDiscovery>> {
        None
    }
}

/// What a connection says about its tables when asked: names, columns with the Arrow type the
/// source would write, keys and sizes.
#[async_trait::async_trait]
pub trait TableDiscovery: Send + Sync {
    /// The tables of the connection, optionally of one schema (database, for MySQL and MongoDB).
    async fn discover(
        &self,
        secret: &ConnectionSecret,
        schema: Option<&str>,
    ) -> Result<Vec<TableInfo>>;
}

/// The sources a process can read: the built-in ones and the registered ones.
#[derive(Clone, Default)]
pub struct SourceRegistry {
    registered: BTreeMap<String, Arc<dyn SourceFactory>>,
}

impl SourceRegistry {
    /// Reads specs of `format` with `factory`. A built-in format's name cannot be taken.
    pub fn register(
        &mut self,
        format: impl Into<String>,
        factory: Arc<dyn SourceFactory>,
    ) -> Result<()> {
        let format = format.into();
        if SourceFormat::from_name(&format).is_some() {
            return Err(JobError::Internal(format!(
                "'{format}' is a built-in source format; register another name"
            )));
        }
        self.registered.insert(format, factory);
        Ok(())
    }

    /// The source that reads `spec` (one table: see `DatasetSpec::per_table`).
    pub fn build(&self, spec: &DatasetSpec, policy: &AccessPolicy) -> Result<Arc<dyn Source>> {
        let policy = policy.clone();
        Ok(match &spec.source {
            SourceSpec::Csv(config) => Arc::new(FileSource::new(config.clone(), policy)),
            SourceSpec::Json(config) => Arc::new(FileSource::new(config.clone(), policy)),
            SourceSpec::Excel(config) => Arc::new(FileSource::new(config.clone(), policy)),
            SourceSpec::Parquet(config) => Arc::new(columnar(config, Columnar::Parquet, policy)),
            SourceSpec::Arrow(config) => Arc::new(columnar(config, Columnar::ArrowIpc, policy)),
            SourceSpec::Avro(config) => Arc::new(columnar(config, Columnar::Avro, policy)),
            SourceSpec::Postgres(config) => Arc::new(PostgresTable::new(spec, config.clone())),
            SourceSpec::Mysql(_) => Arc::new(MysqlTable::new(spec)),
            SourceSpec::Mssql(_) => Arc::new(MssqlTable::new(spec)),
            SourceSpec::Mongodb(config) => Arc::new(MongoCollection::new(spec, config.clone())),
            SourceSpec::Rest(config) => Arc::new(RestApi::new(spec, (**config).clone(), policy)),
            SourceSpec::Plugin(plugin) => match self.registered.get(&plugin.format) {
                Some(factory) => factory.build(spec, &policy)?,
                None => return Err(self.unknown(spec, &plugin.format)),
            },
        })
    }

    /// Asks the source of `format` (a built-in name or a registered one) for the tables of the
    /// connection `secret` opens.
    pub async fn discover(
        &self,
        format: &str,
        secret: &ConnectionSecret,
        schema: Option<&str>,
    ) -> Result<Vec<TableInfo>> {
        match SourceFormat::from_name(format) {
            Some(SourceFormat::Postgres) => {
                super::postgres::discover::discover(secret, schema).await
            }
            Some(SourceFormat::Mysql) => super::mysql::discover::discover(secret, schema).await,
            Some(SourceFormat::Mssql) => super::mssql::discover(secret, schema).await,
            Some(SourceFormat::Mongodb) => super::mongodb::discover(secret, schema).await,
            Some(other) => Err(not_discoverable(other.name())),
            None => match self.registered.get(format).map(|f| f.discovery()) {
                Some(Some(discovery)) => discovery.discover(secret, schema).await,
                Some(None) => Err(not_discoverable(format)),
                None => Err(JobError::Refused {
                    dataset: "discover".into(),
                    message: format!(
                        "'{format}' is not a source this program reads (formats: {})",
                        self.formats().join(", ")
                    ),
                }),
            },
        }
    }

    /// Every format this registry reads, built-in first.
    pub fn formats(&self) -> Vec<&str> {
        let mut known: Vec<&str> = SourceFormat::ALL.iter().map(|f| f.name()).collect();
        known.extend(self.registered.keys().map(String::as_str));
        known
    }

    /// Refuses a spec whose format nobody here reads (a misspelt `format` parses as a plugin's
    /// until a registry says no), before anything runs.
    pub fn check_format(&self, spec: &DatasetSpec) -> Result<()> {
        match &spec.source {
            SourceSpec::Plugin(plugin) if !self.registered.contains_key(&plugin.format) => {
                Err(self.unknown(spec, &plugin.format))
            }
            _ => Ok(()),
        }
    }

    fn unknown(&self, spec: &DatasetSpec, format: &str) -> JobError {
        JobError::Refused {
            dataset: spec.id.clone(),
            message: format!(
                "source.format '{format}' is not a source this program reads (formats: {})",
                self.formats().join(", ")
            ),
        }
    }
}

/// A source that reads files or an API has no tables to list.
fn not_discoverable(format: &str) -> JobError {
    JobError::Refused {
        dataset: "discover".into(),
        message: format!(
            "a {format} source has no tables to list (discover works on database connections)"
        ),
    }
}

fn columnar(
    config: &ColumnarSource,
    kind: Columnar,
    policy: AccessPolicy,
) -> FileSource<ColumnarFile> {
    FileSource::new(
        ColumnarFile {
            config: config.clone(),
            kind,
        },
        policy,
    )
}
