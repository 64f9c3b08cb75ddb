//! What a database source says about its tables when asked (`carga discover`): their columns
//! with the Arrow type Carga would write, keys and size.

use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TableInfo {
    pub schema: String,
    pub name: String,
    /// `table` or `view`.
    pub kind: String,
    /// The catalog's row estimate, when it has one.
    pub estimated_rows: Option<i64>,
    pub primary_key: Vec<String>,
    pub columns: Vec<ColumnInfo>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ColumnInfo {
    pub name: String,
    /// As the database declares it.
    pub declared: String,
    /// What Carga writes for it.
    pub arrow: String,
}

/// A driver's error while discovering tables, with the connection's secrets masked.
pub(crate) fn discovery_failed(
    secret: &crate::secrets::ConnectionSecret,
) -> impl Fn(sqlx::Error) -> crate::error::JobError + '_ {
    move |e| crate::error::JobError::Database {
        context: "discovering tables".into(),
        message: secret.redact(&e.to_string()),
    }
}
