//! Process settings: read from an optional YAML file, then overridden by `CARGA_*` environment variables.
//! Credentials are never settings: S3 keys come from the standard `AWS_*` variables or the instance role.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where the raw zone lives: `s3://bucket[/prefix]`, `file:///abs/dir` or a local directory path.
    pub bucket: String,
    /// JSON file mapping master key ids to base64 keys (the local key provider).
    pub key_file: PathBuf,
    /// Where connection credentials come from: `local` (the `secrets_file`) or
    /// `aws-secrets-manager`.
    pub secrets_provider: SecretsProvider,
    /// Endpoint override for AWS Secrets Manager (a local test server).
    pub secrets_endpoint: Option<String>,
    /// Put before each connection id to name its secret in AWS Secrets Manager (`carga/`, so
    /// an IAM policy can grant `secret:carga/*` and nothing else). Empty by default.
    pub secrets_prefix: String,
    /// JSON file of connection credentials by connection id (the local secrets provider):
    /// `{"<id>": {"url": "postgres://..."}}` or the fields of an AWS RDS secret
    /// (`engine`, `host`, `port`, `username`, `password`, `dbname`).
    pub secrets_file: PathBuf,
    /// Master key that wraps each file's data key: an id in `key_file`, or `kms://<key id, ARN
    /// or alias/name>` for a key in AWS KMS.
    pub master_key_id: String,
    /// Endpoint override for AWS KMS (a local test server).
    pub kms_endpoint: Option<String>,
    /// Create `key_file` with a fresh random master key when it does not exist (embedded default).
    pub create_key_if_missing: bool,
    pub compression: Compression,
    /// A part file is closed and a new one started after this many rows.
    pub rows_per_file: usize,
    /// Rows per Parquet row group; bounds the writer's memory.
    pub rows_per_row_group: usize,
    /// Rows per Arrow record batch flowing through the pipeline.
    pub batch_rows: usize,
    /// Threads that parse one file at once (CSV); 0 means one per core.
    pub parse_threads: usize,
    /// Threads that encode one Parquet part (its columns dealt out among them); 0 means one per
    /// core.
    pub encode_threads: usize,
    pub s3: S3Settings,
    /// What a dataset spec may reach: local folders and networks.
    pub sources: SourceAccessSettings,
    /// Memory DataFusion may use per query (a transform, `carga sql`), in MiB.
    pub query_memory_mib: usize,
    /// File uploads through the API (`/upload/dataset`).
    pub uploads: UploadSettings,
}

/// Limits of `/upload/dataset`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UploadSettings {
    /// The largest file accepted, in bytes (`Tus-Max-Size`).
    pub max_bytes: u64,
    /// An unfinished upload with no bytes for this long is removed.
    pub abandoned_after_hours: u64,
}

impl Default for UploadSettings {
    fn default() -> Self {
        Self {
            max_bytes: 50 << 30,
            abandoned_after_hours: 24,
        }
    }
}

/// The fence around what a spec can read. `None` means "the default of the command": `carga run`
/// and `carga preview` read under the spec's folder and the working directory and may reach any
/// network; the servers (`carga worker`, `carga-scheduler serve`, `carga serve`) read only under
/// the roots they are given and refuse loopback, link-local and private addresses.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SourceAccessSettings {
    /// Folders local file sources may be read from (after symlinks and `..` are resolved).
    pub local_roots: Option<Vec<PathBuf>>,
    /// Whether REST and http(s) file sources may reach loopback, link-local and private
    /// addresses (tests and on-premises APIs opt in with `true`).
    pub allow_private_networks: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct S3Settings {
    /// Custom endpoint (moto, MinIO); AWS when absent.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Allow plain-HTTP endpoints (local test servers only).
    pub allow_http: bool,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SecretsProvider {
    #[default]
    Local,
    AwsSecretsManager,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Zstd,
    Snappy,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bucket: ".carga/bucket".into(),
            key_file: ".carga/master-keys.json".into(),
            secrets_provider: SecretsProvider::Local,
            secrets_endpoint: None,
            secrets_prefix: String::new(),
            secrets_file: ".carga/secrets.json".into(),
            master_key_id: "carga-master".into(),
            kms_endpoint: None,
            create_key_if_missing: true,
            compression: Compression::Zstd,
            rows_per_file: 5_000_000,
            rows_per_row_group: 122_880,
            batch_rows: 8192,
            parse_threads: 0,
            encode_threads: 0,
            s3: S3Settings::default(),
            sources: SourceAccessSettings::default(),
            query_memory_mib: 512,
            uploads: UploadSettings::default(),
        }
    }
}

impl Settings {
    /// Threads that parse one file at once: the setting, or one per core.
    pub fn parse_threads(&self) -> usize {
        threads_or_cores(self.parse_threads)
    }

    /// Threads that encode one Parquet part: the setting, or one per core.
    pub fn encode_threads(&self) -> usize {
        threads_or_cores(self.encode_threads)
    }

    /// Loads `path` if given (missing file is an error), else defaults; then applies the environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut settings = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.to_owned(),
                    source,
                })?
            }
            None => Settings::default(),
        };
        settings.apply_env(|name| std::env::var(name).ok())?;
        settings.validate()?;
        Ok(settings)
    }

    /// Environment overrides, one variable per field, e.g. `CARGA_BUCKET=s3://lake`.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = var("CARGA_BUCKET") {
            self.bucket = v;
        }
        if let Some(v) = var("CARGA_KEY_FILE") {
            self.key_file = v.into();
        }
        if let Some(v) = var("CARGA_SECRETS_PROVIDER") {
            self.secrets_provider = match v.as_str() {
                "local" => SecretsProvider::Local,
                "aws-secrets-manager" => SecretsProvider::AwsSecretsManager,
                other => {
                    return Err(ConfigError::InvalidSetting {
                        name: "CARGA_SECRETS_PROVIDER".into(),
                        message: format!("'{other}' is not one of local, aws-secrets-manager"),
                    });
                }
            };
        }
        if let Some(v) = var("CARGA_SECRETS_ENDPOINT") {
            self.secrets_endpoint = Some(v);
        }
        if let Some(v) = var("CARGA_SECRETS_PREFIX") {
            self.secrets_prefix = v;
        }
        if let Some(v) = var("CARGA_SECRETS_FILE") {
            self.secrets_file = v.into();
        }
        if let Some(v) = var("CARGA_MASTER_KEY_ID") {
            self.master_key_id = v;
        }
        if let Some(v) = var("CARGA_KMS_ENDPOINT") {
            self.kms_endpoint = Some(v);
        }
        if let Some(v) = var("CARGA_CREATE_KEY_IF_MISSING") {
            self.create_key_if_missing = parse_env("CARGA_CREATE_KEY_IF_MISSING", &v)?;
        }
        if let Some(v) = var("CARGA_COMPRESSION") {
            self.compression = match v.to_ascii_lowercase().as_str() {
                "zstd" => Compression::Zstd,
                "snappy" => Compression::Snappy,
                other => {
                    return Err(ConfigError::InvalidSetting {
                        name: "CARGA_COMPRESSION".into(),
                        message: format!("'{other}' is not one of zstd, snappy"),
                    });
                }
            };
        }
        if let Some(v) = var("CARGA_ROWS_PER_FILE") {
            self.rows_per_file = parse_env("CARGA_ROWS_PER_FILE", &v)?;
        }
        if let Some(v) = var("CARGA_BATCH_ROWS") {
            self.batch_rows = parse_env("CARGA_BATCH_ROWS", &v)?;
        }
        if let Some(v) = var("CARGA_PARSE_THREADS") {
            self.parse_threads = parse_env("CARGA_PARSE_THREADS", &v)?;
        }
        if let Some(v) = var("CARGA_ENCODE_THREADS") {
            self.encode_threads = parse_env("CARGA_ENCODE_THREADS", &v)?;
        }
        if let Some(v) = var("CARGA_S3_ENDPOINT") {
            self.s3.endpoint = Some(v);
        }
        if let Some(v) = var("CARGA_S3_REGION") {
            self.s3.region = Some(v);
        }
        if let Some(v) = var("CARGA_S3_ALLOW_HTTP") {
            self.s3.allow_http = parse_env("CARGA_S3_ALLOW_HTTP", &v)?;
        }
        if let Some(v) = var("CARGA_QUERY_MEMORY_MIB") {
            self.query_memory_mib = parse_env("CARGA_QUERY_MEMORY_MIB", &v)?;
        }
        if let Some(v) = var("CARGA_UPLOAD_MAX_BYTES") {
            self.uploads.max_bytes = parse_env("CARGA_UPLOAD_MAX_BYTES", &v)?;
        }
        if let Some(v) = var("CARGA_UPLOAD_ABANDONED_AFTER_HOURS") {
            self.uploads.abandoned_after_hours =
                parse_env("CARGA_UPLOAD_ABANDONED_AFTER_HOURS", &v)?;
        }
        if let Some(v) = var("CARGA_LOCAL_ROOTS") {
            // A PATH-like list; an empty value means no local file may be read.
            self.sources.local_roots = Some(
                std::env::split_paths(&v)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect(),
            );
        }
        if let Some(v) = var("CARGA_ALLOW_PRIVATE_NETWORKS") {
            self.sources.allow_private_networks =
                Some(parse_env("CARGA_ALLOW_PRIVATE_NETWORKS", &v)?);
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("rows_per_file", self.rows_per_file),
            ("rows_per_row_group", self.rows_per_row_group),
            ("batch_rows", self.batch_rows),
            ("query_memory_mib", self.query_memory_mib),
            ("uploads.max_bytes", self.uploads.max_bytes as usize),
            (
                "uploads.abandoned_after_hours",
                self.uploads.abandoned_after_hours as usize,
            ),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::InvalidSetting {
                    name: name.into(),
                    message: "must be greater than 0".into(),
                });
            }
        }
        if self.bucket.is_empty() {
            return Err(ConfigError::InvalidSetting {
                name: "bucket".into(),
                message: "is empty".into(),
            });
        }
        Ok(())
    }
}

fn parse_env<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| ConfigError::InvalidSetting {
            name: name.into(),
            message: format!("cannot parse '{value}'"),
        })
}

/// `0` means one thread per core.
fn threads_or_cores(setting: usize) -> usize {
    match setting {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn environment_overrides_file_values() {
        let env: HashMap<&str, &str> = [
            ("CARGA_BUCKET", "s3://lake/raw"),
            ("CARGA_COMPRESSION", "snappy"),
            ("CARGA_S3_ALLOW_HTTP", "true"),
        ]
        .into();
        let mut settings = Settings::default();
        settings
            .apply_env(|k| env.get(k).map(|v| v.to_string()))
            .unwrap();
        assert_eq!(settings.bucket, "s3://lake/raw");
        assert_eq!(settings.compression, Compression::Snappy);
        assert!(settings.s3.allow_http);
    }

    #[test]
    fn source_access_comes_from_the_environment() {
        let env: HashMap<&str, &str> = [
            ("CARGA_LOCAL_ROOTS", "/data/in:/srv/shared"),
            ("CARGA_ALLOW_PRIVATE_NETWORKS", "true"),
        ]
        .into();
        let mut settings = Settings::default();
        assert_eq!(settings.sources.local_roots, None);
        settings
            .apply_env(|k| env.get(k).map(|v| v.to_string()))
            .unwrap();
        assert_eq!(
            settings.sources.local_roots,
            Some(vec![
                PathBuf::from("/data/in"),
                PathBuf::from("/srv/shared")
            ])
        );
        assert_eq!(settings.sources.allow_private_networks, Some(true));
        settings
            .apply_env(|k| (k == "CARGA_LOCAL_ROOTS").then(String::new))
            .unwrap();
        assert_eq!(settings.sources.local_roots, Some(vec![]));
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        let mut settings = Settings::default();
        let err = settings
            .apply_env(|k| (k == "CARGA_ROWS_PER_FILE").then(|| "many".to_string()))
            .unwrap_err();
        assert!(err.to_string().contains("CARGA_ROWS_PER_FILE"), "{err}");
    }

    #[test]
    fn zero_sizes_are_refused() {
        let settings = Settings {
            batch_rows: 0,
            ..Settings::default()
        };
        assert!(settings.validate().is_err());
    }
}
