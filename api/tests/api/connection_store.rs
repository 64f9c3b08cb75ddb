//! The connection store (`/connections`, the seed's `/security/store`): write-only secrets, kept
//! in the local secrets file or in AWS Secrets Manager (moto on loopback), owned by their
//! creator, tested on demand, never deleted while a dataset uses them, and never shown again:
//! no answer, audit entry or log line holds a value in any form.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use axum::http::{Method, StatusCode};
use base64::Engine;
use carga_jobs::secrets::{AwsSecretsManager, SecretsProvider};
use serde_json::{Value, json};

use super::{Api, error_of, services_available};

/// A password with the characters that change under each encoding.
const PASSWORD: &str = "Pa$$w0rd/with+and=and@and:colon";

/// Every log line of this test binary, from the first call on.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .try_init();
        logs
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The forms a value can leak in: raw, base64 (alone and in `Basic user:password`), URL- and
/// JSON-escaped.
fn leaked_forms(value: &str) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    vec![
        value.to_owned(),
        b64.encode(value),
        b64.encode(format!("postgres:{value}")),
        percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC)
            .to_string(),
        serde_json::to_string(value)
            .unwrap()
            .trim_matches('"')
            .to_owned(),
    ]
}

fn assert_no_leak(what: &str, text: &str) {
    for form in leaked_forms(PASSWORD) {
        assert!(
            !text.contains(&form),
            "{what} holds the password as {form}: {text}"
        );
    }
}

fn postgres_body(port: u16) -> String {
    json!({"type": "postgres", "fields": {"host": "127.0.0.1", "port": port, "dbname": "postgres",
           "username": "postgres", "password": PASSWORD}})
    .to_string()
}

/// The whole store against one provider; `answers` collects every response body.
async fn exercise(api: &Api, answers: &mut Vec<String>) {
    let (get, put, post, delete) = (Method::GET, Method::PUT, Method::POST, Method::DELETE);
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let ana = api
        .catalog
        .create_token(&format!("ana-{suffix}"), "editor")
        .await
        .unwrap();
    let bob = api
        .catalog
        .create_token(&format!("bob-{suffix}"), "editor")
        .await
        .unwrap();
    let viewer = api.catalog.create_token("vera", "viewer").await.unwrap();
    let admin = api.catalog.create_token("ada", "admin").await.unwrap();
    let mut call = async |method: Method, path: &str, token: &str, body: Option<&str>| {
        let (status, value) = api.call(method, path, Some(token), body).await;
        answers.push(value.to_string());
        (status, value)
    };

    // Viewers read the list, never write.
    let (status, _) = call(
        put.clone(),
        "/connections/ventas-pg",
        &viewer,
        Some(&postgres_body(5432)),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // An editor creates one; the answer and the list show kind, hosts and field names only.
    let (status, body) = call(
        put.clone(),
        "/connections/ventas-pg",
        &ana,
        Some(&postgres_body(5432)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["kind"], "postgres");
    assert_eq!(body["hosts"], json!(["127.0.0.1:5432"]));
    assert_eq!(
        body["fields"],
        json!(["dbname", "host", "password", "port", "username"])
    );
    assert_eq!(body["owner"], format!("ana-{suffix}"));
    let (status, list) = call(get.clone(), "/connections", &viewer, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        list["connections"][0]["connection_id"], "ventas-pg",
        "{list}"
    );

    // Refused: another editor's connection, a misspelt field, a URL of another kind.
    let (status, body) = call(
        put.clone(),
        "/connections/ventas-pg",
        &bob,
        Some(&postgres_body(5432)),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(error_of(&body).contains("belongs to"), "{body}");
    let typo =
        json!({"type": "postgres", "fields": {"host": "h", "dbname": "d", "pasword": PASSWORD}});
    let (status, body) = call(
        put.clone(),
        "/connections/typo",
        &ana,
        Some(&typo.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(error_of(&body).contains("no field `pasword`"), "{body}");
    let wrong = json!({"type": "mysql", "fields": {"url": format!("postgres://u:{PASSWORD}@h/d")}});
    let (status, body) = call(
        put.clone(),
        "/connections/wrong",
        &ana,
        Some(&wrong.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(error_of(&body).contains("mysql://"), "{body}");
    let (status, _) = call(get.clone(), "/connections/typo", &viewer, None).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a refused write leaves nothing"
    );

    // Test connection: the real server answers; a dead port fails with the value masked.
    let (status, body) = call(post.clone(), "/connections/ventas-pg/test", &ana, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["server"].as_str().unwrap().contains("PostgreSQL"),
        "{body}"
    );
    let (status, _) = call(
        put.clone(),
        "/connections/dead-pg",
        &ana,
        Some(&postgres_body(1)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = call(post.clone(), "/connections/dead-pg/test", &ana, None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let (status, _) = call(post.clone(), "/connections/dead-pg/test", &viewer, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A REST connection's hosts are checked against the network policy before any packet.
    let rest =
        json!({"type": "rest", "fields": {"token": PASSWORD, "allowed_hosts": ["127.0.0.1:6379"]}});
    let (status, _) = call(
        put.clone(),
        "/connections/internal-api",
        &ana,
        Some(&rest.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = call(post.clone(), "/connections/internal-api/test", &ana, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(error_of(&body).contains("loopback"), "{body}");

    // In use: refused naming the dataset; free again once the dataset is gone.
    let spec = "id: orders\nsource: {format: postgres, table: public.orders}\nconnection_id: ventas-pg\n\
                mode: complete\ntrigger: callback\n";
    let (status, body) = call(put.clone(), "/datasets/orders", &ana, Some(spec)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, shown) = call(get.clone(), "/connections/ventas-pg", &viewer, None).await;
    assert_eq!(shown["used_by"], json!(["orders"]));
    let (status, body) = call(delete.clone(), "/connections/ventas-pg", &ana, None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error_of(&body).contains("used by dataset orders"), "{body}");
    let (status, _) = call(delete.clone(), "/connections/ventas-pg", &bob, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(delete.clone(), "/datasets/orders", &admin, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(delete.clone(), "/connections/ventas-pg", &ana, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        api_secrets(api).connection("ventas-pg").await.is_err(),
        "the secret is gone"
    );
    // Written again after a delete (Secrets Manager restores the name from its recovery window).
    let (status, body) = call(
        put.clone(),
        "/connections/ventas-pg",
        &bob,
        Some(&postgres_body(5432)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = call(post.clone(), "/connections/ventas-pg/test", &bob, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A secret made by hand under an id: an editor may not take it over, an admin may.
    let taken = json!({"type": "postgres", "fields": {"url": format!("postgres://postgres:{}@127.0.0.1:5432/postgres", percent_encoding::utf8_percent_encode(PASSWORD, percent_encoding::NON_ALPHANUMERIC))}});
    let (status, body) = call(
        put.clone(),
        "/connections/sales-db",
        &ana,
        Some(&taken.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = call(get.clone(), "/connections/sales-db", &viewer, None).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the refused claim is released"
    );
    let (status, body) = call(
        put.clone(),
        "/connections/sales-db",
        &admin,
        Some(&taken.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = call(post.clone(), "/connections/sales-db/test", &admin, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The seed's endpoint.
    let seed = json!({"connectionId": "seed-api", "type": "rest", "fields": {"api_key": PASSWORD, "url": "https://api.example.com/v1"}});
    let (status, body) = call(
        post.clone(),
        "/security/store",
        &ana,
        Some(&seed.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["hosts"], json!(["api.example.com:443"]));

    // Every write and refusal is in the audit log, with field names and no value.
    let (status, audit) = call(get.clone(), "/audit?limit=500", &admin, None).await;
    assert_eq!(status, StatusCode::OK);
    let text = audit.to_string();
    for expected in [
        "put_connection",
        "delete_connection",
        "test_connection",
        "fields dbname, host, password, port, username",
    ] {
        assert!(text.contains(expected), "audit has no {expected}: {text}");
    }
    let denied = audit["entries"]
        .as_array()
        .or(audit.as_array())
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "write_connection" && e["result"] == "denied")
        .count();
    assert!(denied >= 1, "the viewer's refused write is audited: {text}");
}

/// "Test connection" against the other real servers: MariaDB and MongoDB (SecantusDB).
async fn probe_every_database_kind(api: &Api, answers: &mut Vec<String>) {
    if !super::common::services_available(&[
        ("MariaDB", "127.0.0.1:3306"),
        ("MongoDB (SecantusDB)", "127.0.0.1:27018"),
    ]) {
        return;
    }
    let editor = api.catalog.create_token("mia", "editor").await.unwrap();
    let connections = [
        (
            "maria",
            json!({"type": "mariadb", "fields": {"host": "127.0.0.1", "port": 3306, "dbname": "test", "username": "root"}}),
            "MySQL/MariaDB",
        ),
        (
            "mongo",
            json!({"type": "mongodb", "fields": {"url": "mongodb://127.0.0.1:27018/test?directConnection=true"}}),
            "MongoDB",
        ),
    ];
    for (id, body, answer) in connections {
        let path = format!("/connections/{id}");
        let (status, created) = api
            .call(Method::PUT, &path, Some(&editor), Some(&body.to_string()))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let (status, tested) = api
            .call(Method::POST, &format!("{path}/test"), Some(&editor), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{tested}");
        assert!(
            tested["server"].as_str().unwrap().contains(answer),
            "{tested}"
        );
        answers.push(tested.to_string());
    }
}

fn api_secrets(api: &Api) -> Arc<dyn SecretsProvider> {
    api.secrets.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_store_is_write_only() {
    if !services_available() {
        return;
    }
    let logs = captured_logs();
    let api = Api::new().await;
    let mut answers = Vec::new();
    exercise(&api, &mut answers).await;
    probe_every_database_kind(&api, &mut answers).await;
    for answer in &answers {
        assert_no_leak("an API answer", answer);
    }
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(!logged.is_empty(), "the test sees the logs");
    assert_no_leak("the logs", &logged);
    // The file holds the values (it is the store), readable by its owner only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&api.settings.secrets_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "secrets file mode {mode:o}");
    }
}

fn moto_endpoint() -> String {
    std::env::var("CARGA_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5000".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secrets_manager_store_is_write_only() {
    let address = moto_endpoint().trim_start_matches("http://").to_owned();
    if !services_available()
        || !super::common::services_available(&[("moto server (Secrets Manager)", &address)])
    {
        return;
    }
    let logs = captured_logs();
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(moto_endpoint())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .load()
        .await;
    let prefix = format!("carga-test-{}/", uuid::Uuid::new_v4().simple());
    // The secret an operator made by hand before the store existed.
    let manager = aws_sdk_secretsmanager::Client::new(&config);
    manager
        .create_secret()
        .name(format!("{prefix}sales-db"))
        .secret_string(json!({"url": "postgres://postgres@127.0.0.1:5432/postgres"}).to_string())
        .send()
        .await
        .unwrap();
    let provider = AwsSecretsManager::from_sdk_config(&config).with_prefix(&prefix);
    let api = Api::with_secrets(Some(Arc::new(provider))).await;
    let mut answers = Vec::new();
    exercise(&api, &mut answers).await;
    for answer in &answers {
        assert_no_leak("an API answer", answer);
    }
    assert_no_leak("the logs", &String::from_utf8_lossy(&logs.lock().unwrap()));
    // What the store wrote is in Secrets Manager, under the prefix, as JSON fields.
    let stored = manager
        .get_secret_value()
        .secret_id(format!("{prefix}ventas-pg"))
        .send()
        .await
        .unwrap();
    let fields: Value = serde_json::from_str(stored.secret_string().unwrap()).unwrap();
    assert_eq!(fields["password"], PASSWORD);
}
