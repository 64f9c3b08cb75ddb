//! `format: mysql | mariadb | mssql`: a table (or several) of a SQL database: which table and
//! columns, and (MySQL and MariaDB) key ranges read in parallel.

use serde::{Deserialize, Serialize};

use super::PartitionSpec;

/// A table of a MySQL/MariaDB or SQL Server database (the format says which).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TableSource {
    /// Schema-qualified where the server has schemas (`dbo.orders`, `shop.orders`).
    #[serde(default)]
    pub table: Option<String>,
    /// Several tables pulled with the same settings, each as its own dataset (`per_table`).
    #[serde(default)]
    pub tables: Vec<String>,
    /// The columns to extract; all of them when empty.
    #[serde(default)]
    pub columns: Vec<String>,
    /// Split a large table into key ranges read in parallel (MySQL and MariaDB). Each range is
    /// read in its own consistent snapshot: unlike PostgreSQL's, the ranges are not one copy of
    /// the table at one instant (see the README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<PartitionSpec>,
}

impl TableSource {
    pub(crate) const FIELDS: &'static [&'static str] =
        &["table", "tables", "columns", "partitions"];

    /// `partitioned`: whether the format reads key ranges.
    pub(crate) fn validate(&self, partitioned: bool) -> Result<(), String> {
        match &self.partitions {
            Some(_) if !partitioned => {
                Err("source.partitions is read by postgres, mysql and mariadb sources only".into())
            }
            Some(partitions) => partitions.validate(),
            None => Ok(()),
        }
    }
}
