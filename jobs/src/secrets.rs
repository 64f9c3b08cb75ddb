//! Connection credentials by connection id. The embedded default reads a local JSON file; AWS
//! Secrets Manager plugs in behind the same trait. A secret's values never reach a log or an error.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use crate::error::{JobError, Result};

/// The fields of one secret. `Debug` lists field names only.
#[derive(Clone)]
pub struct ConnectionSecret {
    id: String,
    fields: BTreeMap<String, Value>,
}

impl std::fmt::Debug for ConnectionSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionSecret")
            .field("id", &self.id)
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ConnectionSecret {
    pub fn new(id: &str, fields: BTreeMap<String, Value>) -> Self {
        Self {
            id: id.to_owned(),
            fields,
        }
    }

    /// One field as text (strings as they are, numbers printed).
    pub fn field(&self, name: &str) -> Option<String> {
        match self.fields.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// `message` with every secret value masked, for errors that may echo connection details.
    pub fn redact(&self, message: &str) -> String {
        let mut out = message.to_owned();
        for (name, value) in &self.fields {
            if matches!(
                name.as_str(),
                "host" | "port" | "dbname" | "database" | "engine" | "username"
            ) {
                continue;
            }
            if let Some(text) = value.as_str().filter(|t| t.len() >= 3) {
                out = out.replace(text, "***");
            }
        }
        out
    }

    /// A connection URL: the secret's `url`, or one built from the fields of an AWS RDS secret
    /// (`host`, `port`, `username`, `password`, `dbname`), with user and password percent-encoded.
    pub fn database_url(&self, scheme: &str, default_port: u16) -> Result<String> {
        if let Some(url) = self.field("url") {
            return Ok(url);
        }
        let missing = |field: &str| {
            JobError::Secret(format!(
                "connection '{}' has neither `url` nor `{field}`",
                self.id
            ))
        };
        let host = self.field("host").ok_or_else(|| missing("host"))?;
        let port = self
            .field("port")
            .unwrap_or_else(|| default_port.to_string());
        let database = self
            .field("dbname")
            .or_else(|| self.field("database"))
            .ok_or_else(|| missing("dbname"))?;
        let mut url =
            url::Url::parse(&format!("{scheme}://{host}:{port}/{database}")).map_err(|_| {
                JobError::Secret(format!(
                    "connection '{}' has an invalid host or port",
                    self.id
                ))
            })?;
        if let Some(user) = self.field("username") {
            url.set_username(&user)
                .map_err(|_| JobError::Secret(format!("connection '{}': bad username", self.id)))?;
        }
        if let Some(password) = self.field("password") {
            url.set_password(Some(&password))
                .map_err(|_| JobError::Secret(format!("connection '{}': bad password", self.id)))?;
        }
        Ok(url.to_string())
    }
}

/// Where connection secrets come from.
#[async_trait::async_trait]
pub trait SecretsProvider: Send + Sync {
    async fn connection(&self, connection_id: &str) -> Result<ConnectionSecret>;
}

/// The provider the settings name.
pub async fn provider(settings: &carga_config::Settings) -> std::sync::Arc<dyn SecretsProvider> {
    match settings.secrets_provider {
        carga_config::SecretsProvider::Local => {
            std::sync::Arc::new(LocalSecretsFile::new(settings.secrets_file.clone()))
        }
        carga_config::SecretsProvider::AwsSecretsManager => std::sync::Arc::new(
            AwsSecretsManager::new(
                settings.secrets_endpoint.as_deref(),
                settings.s3.region.as_deref(),
            )
            .await,
        ),
    }
}

/// `{"<connection id>": {...fields...}}` in a local file: the embedded default.
pub struct LocalSecretsFile {
    path: PathBuf,
}

impl LocalSecretsFile {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }
}

#[async_trait::async_trait]
impl SecretsProvider for LocalSecretsFile {
    async fn connection(&self, connection_id: &str) -> Result<ConnectionSecret> {
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|e| JobError::io(format!("secrets file {}", self.path.display()), e))?;
        // Parse errors would quote the file: report only where it failed.
        let mut all: BTreeMap<String, BTreeMap<String, Value>> = serde_json::from_str(&text)
            .map_err(|e| {
                JobError::Secret(format!(
                    "secrets file {} is not a JSON object of id -> fields (line {}, column {})",
                    self.path.display(),
                    e.line(),
                    e.column()
                ))
            })?;
        let fields = all.remove(connection_id).ok_or_else(|| {
            JobError::Secret(format!(
                "connection '{connection_id}' is not in the secrets file {}",
                self.path.display()
            ))
        })?;
        Ok(ConnectionSecret::new(connection_id, fields))
    }
}

/// AWS Secrets Manager: each `connection_id` is a secret whose string is a JSON object (the shape
/// RDS writes: `engine`, `host`, `port`, `username`, `password`, `dbname`; or a `url`). Credentials
/// for Secrets Manager itself come from the standard AWS chain (environment, profile, role).
pub struct AwsSecretsManager {
    client: aws_sdk_secretsmanager::Client,
}

impl AwsSecretsManager {
    /// `endpoint` overrides AWS's (a local test server); `region` overrides the environment's.
    pub async fn new(endpoint: Option<&str>, region: Option<&str>) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(endpoint) = endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(region) = region {
            loader = loader.region(aws_config::Region::new(region.to_owned()));
        }
        Self {
            client: aws_sdk_secretsmanager::Client::new(&loader.load().await),
        }
    }
}

#[async_trait::async_trait]
impl SecretsProvider for AwsSecretsManager {
    async fn connection(&self, connection_id: &str) -> Result<ConnectionSecret> {
        let response = self
            .client
            .get_secret_value()
            .secret_id(connection_id)
            .send()
            .await
            .map_err(|e| {
                // The service's error code and message name the secret, never its value.
                let detail = e
                    .as_service_error()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.to_string());
                JobError::Secret(format!(
                    "connection '{connection_id}' from AWS Secrets Manager: {detail}"
                ))
            })?;
        let text = response.secret_string().ok_or_else(|| {
            JobError::Secret(format!("connection '{connection_id}' has no secret string (binary secrets are not supported)"))
        })?;
        let fields: BTreeMap<String, Value> = serde_json::from_str(text).map_err(|_| {
            JobError::Secret(format!(
                "connection '{connection_id}' is not a JSON object of connection fields"
            ))
        })?;
        Ok(ConnectionSecret::new(connection_id, fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret(value: Value) -> ConnectionSecret {
        ConnectionSecret::new("pg", serde_json::from_value(value).unwrap())
    }

    #[test]
    fn rds_style_fields_become_a_url_with_encoded_credentials() {
        let s = secret(
            json!({"engine": "postgres", "host": "db.local", "port": 5433, "username": "ana", "password": "p@ss/w:rd", "dbname": "ventas"}),
        );
        assert_eq!(
            s.database_url("postgres", 5432).unwrap(),
            "postgres://ana:p%40ss%2Fw%3Ard@db.local:5433/ventas"
        );
        let s = secret(json!({"url": "postgres://x@y/z"}));
        assert_eq!(
            s.database_url("postgres", 5432).unwrap(),
            "postgres://x@y/z"
        );
    }

    #[test]
    fn secrets_never_show_in_debug_or_errors() {
        let s = secret(json!({"host": "h", "password": "hunter2"}));
        assert!(!format!("{s:?}").contains("hunter2"));
        let err = s.database_url("postgres", 5432).unwrap_err().to_string();
        assert!(err.contains("dbname") && !err.contains("hunter2"), "{err}");
    }

    #[test]
    fn redaction_masks_passwords_and_urls() {
        let s =
            secret(json!({"url": "postgres://u:hunter2@h/d", "password": "hunter2", "host": "db"}));
        let shown = s.redact("cannot connect to postgres://u:hunter2@h/d (password hunter2) at db");
        assert!(
            !shown.contains("hunter2") && shown.contains("at db"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn unknown_ids_and_broken_files_name_the_file_not_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.json");
        std::fs::write(&path, r#"{"pg": {"password": "hunter2"}"#).unwrap();
        let provider = LocalSecretsFile::new(path.clone());
        let err = provider.connection("pg").await.unwrap_err().to_string();
        assert!(
            err.contains("secrets.json") && !err.contains("hunter2"),
            "{err}"
        );
        std::fs::write(&path, r#"{"pg": {"password": "hunter2"}}"#).unwrap();
        let err = provider.connection("other").await.unwrap_err().to_string();
        assert!(err.contains("'other'") && !err.contains("hunter2"), "{err}");
    }
}
