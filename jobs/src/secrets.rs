//! Connection credentials by connection id. The embedded default reads a local JSON file; AWS
//! Secrets Manager plugs in behind the same trait. A secret's values never reach a log or an error.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use crate::error::{JobError, Result};
use crate::redact::Redactor;

/// Fields that say where and as whom to connect, not how to prove it: never masked.
const PUBLIC_FIELDS: &[&str] = &[
    "host",
    "port",
    "dbname",
    "database",
    "engine",
    "username",
    "user",
    "allowed_hosts",
    "token_url",
    "client_id",
];

/// One host a connection's credentials may be sent to; any port when none is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRule {
    pub host: String,
    pub port: Option<u16>,
}

impl HostRule {
    /// `api.example.com`, `api.example.com:8443`, `127.0.0.1:9000`, `[::1]:80`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        // Parsed as a URL authority so IPv6 brackets and ports follow one set of rules.
        let url = url::Url::parse(&format!("http://{text}/")).ok()?;
        Some(Self {
            host: url.host_str()?.to_ascii_lowercase(),
            port: url.port(),
        })
    }

    pub fn matches(&self, url: &url::Url) -> bool {
        let host_matches = url
            .host_str()
            .is_some_and(|h| h.eq_ignore_ascii_case(&self.host));
        host_matches
            && self
                .port
                .is_none_or(|p| url.port_or_known_default() == Some(p))
    }
}

impl std::fmt::Display for HostRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

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

    /// Every field, for the connection store's checks inside this crate (never to be answered).
    pub(crate) fn fields(&self) -> &BTreeMap<String, Value> {
        &self.fields
    }

    /// One field as text (strings as they are, numbers printed).
    pub fn field(&self, name: &str) -> Option<String> {
        match self.fields.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// `message` with every secret value masked, in every form (see `redact`).
    pub fn redact(&self, message: &str) -> String {
        self.redactor().redact(message)
    }

    /// Masks this secret's values (not the fields that only say where to connect) in every form
    /// a server may echo them: raw, base64 (also inside `Basic base64(user:password)`), URL- and
    /// JSON-escaped. A URL's password is masked on its own too.
    pub fn redactor(&self) -> Redactor {
        let mut values: Vec<String> = Vec::new();
        for (name, value) in &self.fields {
            if PUBLIC_FIELDS.contains(&name.as_str()) {
                continue;
            }
            let Some(text) = value.as_str() else {
                continue;
            };
            values.push(text.to_owned());
            if let Ok(url) = url::Url::parse(text)
                && let Some(password) = url.password()
            {
                let decoded = percent_encoding::percent_decode_str(password).decode_utf8_lossy();
                values.push(decoded.into_owned());
                values.push(password.to_owned());
            }
        }
        Redactor::new(values.iter().map(String::as_str))
    }

    /// The hosts this connection's credentials may be sent to: the secret's `allowed_hosts` (a
    /// list, or one comma-separated string; `host` or `host:port`), else the host and port of its
    /// own `url` and `token_url`, and its `host` and `port` fields. Empty: the credentials go
    /// nowhere over HTTP.
    pub fn allowed_hosts(&self) -> Vec<HostRule> {
        match self.fields.get("allowed_hosts") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .filter_map(HostRule::parse)
                .collect(),
            Some(Value::String(list)) => list.split(',').filter_map(HostRule::parse).collect(),
            _ => {
                // Bound to host and port: a credential for a database on 127.0.0.1:5432 must not
                // go to a listener on 127.0.0.1:9999. A URL whose port is not known gives none.
                let mut rules = Vec::new();
                for field in ["url", "token_url"] {
                    if let Some(url) = self.field(field).and_then(|u| url::Url::parse(&u).ok())
                        && let (Some(host), Some(port)) =
                            (url.host_str(), url.port_or_known_default())
                    {
                        rules.push(HostRule {
                            host: host.to_ascii_lowercase(),
                            port: Some(port),
                        });
                    }
                }
                if let (Some(host), Some(port)) = (self.field("host"), self.field("port"))
                    && let Some(rule) = HostRule::parse(&format!("{host}:{port}"))
                {
                    rules.push(rule);
                }
                rules
            }
        }
    }

    /// Whether this connection's credentials may travel with a request to `url`.
    pub fn may_send_to(&self, url: &url::Url) -> bool {
        self.allowed_hosts().iter().any(|rule| rule.matches(url))
    }

    pub fn id(&self) -> &str {
        &self.id
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

/// What `SecretsProvider::store` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Created,
    Replaced,
    /// `replace` was false and the id already holds a secret: nothing was written.
    AlreadyExists,
}

/// Where connection secrets come from, and (for the connection store) where they are written.
/// Values only go in: no method returns what `store` wrote but `connection`, which the workers and
/// the test call use and the API never answers with.
#[async_trait::async_trait]
pub trait SecretsProvider: Send + Sync {
    async fn connection(&self, connection_id: &str) -> Result<ConnectionSecret>;

    /// Writes a connection's fields under its id, replacing what was there when `replace`.
    async fn store(
        &self,
        connection_id: &str,
        _fields: &BTreeMap<String, Value>,
        _replace: bool,
    ) -> Result<Stored> {
        Err(read_only(connection_id))
    }

    /// Removes a connection's secret; `false` when there was none.
    async fn remove(&self, connection_id: &str) -> Result<bool> {
        Err(read_only(connection_id))
    }
}

fn read_only(connection_id: &str) -> JobError {
    JobError::Secret(format!(
        "connection '{connection_id}': this secrets provider is read-only"
    ))
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
            .await
            .with_prefix(&settings.secrets_prefix),
        ),
    }
}

type SecretsByConnection = BTreeMap<String, BTreeMap<String, Value>>;

/// `{"<connection id>": {...fields...}}` in a local file: the embedded default. Writes (the
/// connection store in `carga serve`) replace the file atomically, readable by its owner only,
/// one writer at a time within the process.
pub struct LocalSecretsFile {
    path: PathBuf,
    writing: tokio::sync::Mutex<()>,
}

impl LocalSecretsFile {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            writing: tokio::sync::Mutex::new(()),
        }
    }

    async fn read_all(&self) -> Result<SecretsByConnection> {
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|e| JobError::io(format!("secrets file {}", self.path.display()), e))?;
        // Parse errors would quote the file: report only where it failed.
        serde_json::from_str(&text).map_err(|e| {
            JobError::Secret(format!(
                "secrets file {} is not a JSON object of id -> fields (line {}, column {})",
                self.path.display(),
                e.line(),
                e.column()
            ))
        })
    }

    /// The file's connections, none when it does not exist yet.
    async fn read_for_update(&self) -> Result<SecretsByConnection> {
        match tokio::fs::try_exists(&self.path).await {
            Ok(false) => Ok(BTreeMap::new()),
            _ => self.read_all().await,
        }
    }

    /// Replaces the file: a private temporary file beside it, then a rename, so a reader sees
    /// the old or the new file, never half of one.
    async fn write_all(&self, all: &SecretsByConnection) -> Result<()> {
        let body = serde_json::to_vec_pretty(all).expect("JSON values always serialize");
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || crate::private_file::replace(&path, &body))
            .await
            .map_err(|e| JobError::Internal(format!("writing the secrets file: {e}")))?
    }
}

#[async_trait::async_trait]
impl SecretsProvider for LocalSecretsFile {
    async fn store(
        &self,
        connection_id: &str,
        fields: &BTreeMap<String, Value>,
        replace: bool,
    ) -> Result<Stored> {
        let _one_writer = self.writing.lock().await;
        let mut all = self.read_for_update().await?;
        let existed = all.contains_key(connection_id);
        if existed && !replace {
            return Ok(Stored::AlreadyExists);
        }
        all.insert(connection_id.to_owned(), fields.clone());
        self.write_all(&all).await?;
        Ok(if existed {
            Stored::Replaced
        } else {
            Stored::Created
        })
    }

    async fn remove(&self, connection_id: &str) -> Result<bool> {
        let _one_writer = self.writing.lock().await;
        let mut all = self.read_for_update().await?;
        if all.remove(connection_id).is_none() {
            return Ok(false);
        }
        self.write_all(&all).await?;
        Ok(true)
    }

    async fn connection(&self, connection_id: &str) -> Result<ConnectionSecret> {
        let mut all = self.read_all().await?;
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
    /// Put before every connection id (`carga/` lets an IAM policy grant `carga/*` only).
    prefix: String,
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
            prefix: String::new(),
        }
    }

    /// A client on a configuration the caller built (its own credentials provider, as in tests).
    pub fn from_sdk_config(config: &aws_config::SdkConfig) -> Self {
        Self {
            client: aws_sdk_secretsmanager::Client::new(config),
            prefix: String::new(),
        }
    }

    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_owned();
        self
    }

    fn name(&self, connection_id: &str) -> String {
        format!("{}{connection_id}", self.prefix)
    }
}

#[async_trait::async_trait]
impl SecretsProvider for AwsSecretsManager {
    async fn connection(&self, connection_id: &str) -> Result<ConnectionSecret> {
        let response = self
            .client
            .get_secret_value()
            .secret_id(self.name(connection_id))
            .send()
            .await
            .map_err(|e| {
                JobError::Secret(format!(
                    "connection '{connection_id}' from AWS Secrets Manager: {}",
                    crate::aws_error::sdk_error_text(&e)
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

    /// `CreateSecret`; when the name exists and `replace`, `PutSecretValue` (restoring a secret
    /// scheduled for deletion first, so an id can be written again after a delete).
    async fn store(
        &self,
        connection_id: &str,
        fields: &BTreeMap<String, Value>,
        replace: bool,
    ) -> Result<Stored> {
        use aws_sdk_secretsmanager::operation::create_secret::CreateSecretError;
        let name = self.name(connection_id);
        let body = serde_json::to_string(fields).expect("JSON values always serialize");
        let failed = |what: &str, detail: String| {
            JobError::Secret(format!(
                "connection '{connection_id}': {what} in AWS Secrets Manager: {detail}"
            ))
        };
        let created = self
            .client
            .create_secret()
            .name(&name)
            .description("Carga connection (written through the connection store)")
            .secret_string(&body)
            .send()
            .await;
        match created {
            Ok(_) => return Ok(Stored::Created),
            // The name is taken: by a live secret, or by one scheduled for deletion (AWS says
            // InvalidRequest for that, some emulators ResourceExists).
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(
                        CreateSecretError::ResourceExistsException(_)
                            | CreateSecretError::InvalidRequestException(_)
                    )
                ) => {}
            Err(e) => return Err(failed("creating it", crate::aws_error::sdk_error_text(&e))),
        }
        let scheduled_for_deletion = self
            .client
            .describe_secret()
            .secret_id(&name)
            .send()
            .await
            .map_err(|e| failed("describing it", crate::aws_error::sdk_error_text(&e)))?
            .deleted_date()
            .is_some();
        if !replace && !scheduled_for_deletion {
            return Ok(Stored::AlreadyExists);
        }
        if scheduled_for_deletion {
            self.client
                .restore_secret()
                .secret_id(&name)
                .send()
                .await
                .map_err(|e| failed("restoring it", crate::aws_error::sdk_error_text(&e)))?;
        }
        self.client
            .put_secret_value()
            .secret_id(&name)
            .secret_string(&body)
            .send()
            .await
            .map_err(|e| failed("writing it", crate::aws_error::sdk_error_text(&e)))?;
        Ok(if scheduled_for_deletion {
            Stored::Created
        } else {
            Stored::Replaced
        })
    }

    /// `DeleteSecret` with Secrets Manager's recovery window (7 days): an operator can restore
    /// a connection deleted by mistake.
    async fn remove(&self, connection_id: &str) -> Result<bool> {
        use aws_sdk_secretsmanager::operation::delete_secret::DeleteSecretError;
        match self
            .client
            .delete_secret()
            .secret_id(self.name(connection_id))
            .recovery_window_in_days(7)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(DeleteSecretError::ResourceNotFoundException(_))
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(JobError::Secret(format!(
                "connection '{connection_id}': deleting it in AWS Secrets Manager: {}",
                crate::aws_error::sdk_error_text(&e)
            ))),
        }
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

    #[test]
    fn credentials_are_bound_to_the_secrets_own_hosts() {
        let url = |u: &str| url::Url::parse(u).unwrap();
        let db = secret(json!({"url": "postgres://u:p@127.0.0.1:5432/x"}));
        assert!(db.may_send_to(&url("http://127.0.0.1:5432/anything")));
        assert!(
            !db.may_send_to(&url("http://127.0.0.1:9999/")),
            "another port"
        );
        let rds = secret(json!({"host": "db.internal", "port": 5432, "password": "p"}));
        assert!(rds.may_send_to(&url("https://db.internal:5432/")));
        assert!(!rds.may_send_to(&url("https://db.internal/")));
        let api_url = secret(json!({"url": "https://api.example.com/v2", "token": "t0ken"}));
        assert!(api_url.may_send_to(&url("https://api.example.com/v2/items?page=2")));
        assert!(
            !api_url.may_send_to(&url("http://api.example.com/v2")),
            "port 80 is not 443"
        );
        let api = secret(
            json!({"token": "t0ken", "allowed_hosts": ["api.example.com", "127.0.0.1:8443"]}),
        );
        assert!(api.may_send_to(&url("https://API.example.com/v1")));
        assert!(api.may_send_to(&url("http://127.0.0.1:8443/")));
        assert!(!api.may_send_to(&url("http://127.0.0.1:8444/")));
        assert!(!api.may_send_to(&url("https://api.example.com.evil.test/")));
        let listed = secret(json!({"token": "t", "allowed_hosts": "a.test, b.test:81"}));
        assert_eq!(listed.allowed_hosts().len(), 2);
        let nowhere = secret(json!({"token": "t0ken"}));
        assert!(nowhere.allowed_hosts().is_empty());
    }

    #[test]
    fn a_urls_password_is_masked_in_its_decoded_and_encoded_forms() {
        let s = secret(json!({"url": "postgres://u:p%40ss-word@h/d"}));
        let shown = s.redact("login p@ss-word failed; url had p%40ss-word");
        assert!(
            !shown.contains("p@ss-word") && !shown.contains("p%40ss-word"),
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
