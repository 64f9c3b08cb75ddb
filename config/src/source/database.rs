//! `format: mysql | mariadb | mssql`: a table (or several) of a SQL database with no options of
//! its own beyond which table and columns.

use serde::{Deserialize, Serialize};

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
}

impl TableSource {
    pub(crate) const FIELDS: &'static [&'static str] = &["table", "tables", "columns"];
}
