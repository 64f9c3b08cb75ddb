use std::path::PathBuf;

/// Why a settings file or dataset spec was refused. Messages name the file and field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("dataset '{dataset}': {message}")]
    InvalidDataset { dataset: String, message: String },
    #[error("setting {name}: {message}")]
    InvalidSetting { name: String, message: String },
}
