//! One error type for the dataflow. Every variant carries enough context (dataset, file, row, column)
//! for an operator to act on the message alone; none carries a secret.

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Config(#[from] carga_config::ConfigError),

    /// The input itself is wrong: the message names the file and, where known, the row and column.
    #[error("{location}: {message}")]
    BadInput { location: String, message: String },

    #[error("{context}: {source}")]
    Store {
        context: String,
        source: object_store::Error,
    },

    #[error("{context}: {source}")]
    Parquet {
        context: String,
        source: parquet::errors::ParquetError,
    },

    #[error("{context}: {source}")]
    Arrow {
        context: String,
        source: arrow::error::ArrowError,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },

    #[error("encryption: {0}")]
    Encryption(String),

    /// A connection secret is missing or malformed. Never carries a secret value.
    #[error("secrets: {0}")]
    Secret(String),

    /// The database refused or failed a statement. The message names the dataset's table.
    #[error("{context}: {message}")]
    Database { context: String, message: String },

    /// An HTTP source failed (after its retries) or refused the request. Never carries a secret.
    #[error("{context}: {message}")]
    Http { context: String, message: String },

    /// Another run committed between our start and our commit; our output was discarded.
    #[error("dataset '{dataset}': {message}")]
    Conflict { dataset: String, message: String },

    #[error("dataset '{dataset}': schema of the source changed: {message}")]
    SchemaDrift { dataset: String, message: String },

    #[error("dataset '{dataset}': {message}")]
    Refused { dataset: String, message: String },

    /// The spec names something this process may not reach (a file outside the data roots, a
    /// private address, a host its credentials may not go to). `rule` names the rule, for audits.
    #[error("{message}")]
    Denied { rule: &'static str, message: String },

    /// A column inferred from the sample does not fit a later value: the run reads the source
    /// again with `column` as `data_type` (never seen outside a run unless widening gave up).
    #[error("{message}")]
    Reread {
        column: String,
        data_type: arrow::datatypes::DataType,
        message: String,
    },

    /// A SQL query (a transform, `carga sql`) could not be planned or run.
    #[error("{context}: {message}")]
    Query { context: String, message: String },

    /// A bug or an unexpected stop inside Carga (a reader thread that panicked): not the input's
    /// fault; the message names the dataset.
    #[error("internal error: {0}")]
    Internal(String),

    /// The job queue failed (a run spread over workers talks to it).
    #[error("queue: {0}")]
    Queue(String),

    /// An error whose text had to be masked: what it said, with the secrets taken out.
    #[error("{message}")]
    Masked { message: String, validation: bool },
}

pub type Result<T, E = JobError> = std::result::Result<T, E>;

impl JobError {
    /// The input or the configuration is wrong (bad rows, refused schema change, invalid spec):
    /// running again will not help until someone changes something. Everything else (database,
    /// store, network, a concurrent commit) may pass on a later attempt.
    pub fn is_validation(&self) -> bool {
        matches!(
            self,
            JobError::Config(_)
                | JobError::BadInput { .. }
                | JobError::SchemaDrift { .. }
                | JobError::Refused { .. }
                | JobError::Denied { .. }
                | JobError::Reread { .. }
                | JobError::Query { .. }
                | JobError::Masked {
                    validation: true,
                    ..
                }
        )
    }

    /// The error with every form of the redactor's secrets masked. Errors that do not mention one
    /// come back as they are.
    pub fn redacted(self, redactor: &crate::redact::Redactor) -> Self {
        if redactor.is_empty() || !redactor.finds_secret_in(&self.to_string()) {
            return self;
        }
        let validation = self.is_validation();
        let mask = |s: String| redactor.redact(&s);
        match self {
            JobError::BadInput { location, message } => JobError::BadInput {
                location: mask(location),
                message: mask(message),
            },
            JobError::Secret(message) => JobError::Secret(mask(message)),
            JobError::Database { context, message } => JobError::Database {
                context: mask(context),
                message: mask(message),
            },
            JobError::Http { context, message } => JobError::Http {
                context: mask(context),
                message: mask(message),
            },
            JobError::Denied { rule, message } => JobError::Denied {
                rule,
                message: mask(message),
            },
            other => JobError::Masked {
                message: mask(other.to_string()),
                validation,
            },
        }
    }

    pub fn bad_input(location: impl Into<String>, message: impl Into<String>) -> Self {
        JobError::BadInput {
            location: location.into(),
            message: message.into(),
        }
    }

    pub fn store(context: impl Into<String>, source: object_store::Error) -> Self {
        JobError::Store {
            context: context.into(),
            source,
        }
    }

    pub fn parquet(context: impl Into<String>, source: parquet::errors::ParquetError) -> Self {
        JobError::Parquet {
            context: context.into(),
            source,
        }
    }

    pub fn arrow(context: impl Into<String>, source: arrow::error::ArrowError) -> Self {
        JobError::Arrow {
            context: context.into(),
            source,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        JobError::Io {
            context: context.into(),
            source,
        }
    }
}
