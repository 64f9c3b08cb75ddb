//! The HTTP API against the real PostgreSQL catalog and Redis queue: roles are checked on every
//! endpoint, bad configurations are refused with a clear message, the trigger enqueues a run,
//! and every change and refusal is in the audit log.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Method, Request, StatusCode};
use carga_api::{self as api, ApiState};
use carga_config::Settings;
use carga_jobs::access::AccessPolicy;
use carga_jobs::secrets::SecretsProvider;
use carga_jobs::storage::Bucket;
use carga_scheduler::{Catalog, JobQueue, QueueSettings};
use serde_json::Value;
use tower::ServiceExt;

#[path = "api/connection_store.rs"]
mod connection_store;
#[path = "api/openapi.rs"]
mod openapi;
#[path = "api/uploads.rs"]
mod uploads;

// The scheduler crate's test harness (service checks, a fresh catalog database), shared.
#[path = "../../scheduler/tests/common/mod.rs"]
mod common;

fn services_available() -> bool {
    common::services_available(&[
        ("PostgreSQL", "127.0.0.1:5432"),
        ("Redis", "127.0.0.1:6379"),
    ])
}

struct Api {
    _dir: tempfile::TempDir,
    settings: Settings,
    state: Arc<ApiState>,
    router: axum::Router,
    catalog: Catalog,
    secrets: Arc<dyn SecretsProvider>,
    queue: JobQueue,
}

impl Api {
    async fn new() -> Self {
        Self::with_secrets(None).await
    }

    /// An API whose secrets provider is `secrets` (the local secrets file when `None`).
    async fn with_secrets(secrets: Option<Arc<dyn SecretsProvider>>) -> Self {
        Self::build(secrets, |_| {}, None).await
    }

    /// An API with `tweak` applied to its settings and upload events sent to `amqp_url`.
    async fn build(
        secrets: Option<Arc<dyn SecretsProvider>>,
        tweak: impl FnOnce(&mut Settings),
        amqp_url: Option<&str>,
    ) -> Self {
        let (unique, url) = common::fresh_postgres_database("carga_api").await;
        let catalog = Catalog::connect(&url).await.unwrap();
        catalog.migrate().await.unwrap();
        let queue = JobQueue::connect(&QueueSettings {
            name: format!("carga-test:api-{unique}"),
            ..QueueSettings::default()
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings {
            bucket: dir.path().join("bucket").display().to_string(),
            key_file: dir.path().join("keys.json"),
            secrets_file: dir.path().join("secrets.json"),
            ..Settings::default()
        };
        tweak(&mut settings);
        std::fs::write(
            &settings.secrets_file,
            r#"{"sales-db": {"url": "postgres://reader:s3cr3t-value@db.example:5432/sales"}}"#,
        )
        .unwrap();
        let access = AccessPolicy::for_server(&settings, &[dir.path().to_owned()], &[]);
        let secrets = match secrets {
            Some(secrets) => secrets,
            None => carga_jobs::secrets::provider(&settings).await,
        };
        let state = ApiState::new(
            catalog.clone(),
            queue.clone(),
            secrets.clone(),
            Bucket::open(&settings).unwrap(),
            access,
        )
        .with_engine(carga_jobs::Engine::new(settings.clone()).unwrap());
        if let Some(url) = amqp_url {
            // The outbox's relay, as `carga-scheduler serve` runs it beside the API.
            let relay = carga_scheduler::relay::Relay::new(
                catalog.clone(),
                Some(Arc::new(carga_scheduler::notify::Notifier::new(url))),
                state.secrets.clone(),
                state.access.network,
                carga_scheduler::relay::RelaySettings {
                    poll: std::time::Duration::from_millis(100),
                    ..carga_scheduler::relay::RelaySettings::new(format!("api-test-{unique}"))
                },
            );
            tokio::spawn(relay.run(std::future::pending()));
        }
        let state = Arc::new(state);
        let peer: SocketAddr = "10.1.2.3:4444".parse().unwrap();
        let router = api::router(state.clone()).layer(MockConnectInfo(peer));
        Self {
            _dir: dir,
            settings,
            state,
            router,
            catalog,
            secrets,
            queue,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let authorization = token.map(|t| format!("Bearer {t}"));
        self.call_as(method, path, authorization.as_deref(), &[], body)
            .await
    }

    /// A call with the `Authorization` header as given (or none) and extra headers.
    async fn call_as(
        &self,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }
}

const GOOD: &str = "id: sales\nsource: {format: postgres, table: public.orders}\nconnection_id: sales-db\n\
mode: delta\ntimestamp_column: updated_at\nkey: [id]\ntrigger: timed_pull\ncron: '0 7 * * *'\n\
time_zone: America/Bogota\n";

fn error_of(body: &Value) -> &str {
    body["detail"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_validation_trigger_and_audit() {
    if !services_available() {
        return;
    }
    let api = Api::new().await;
    let viewer = api.catalog.create_token("vera", "viewer").await.unwrap();
    let editor = api.catalog.create_token("eddie", "editor").await.unwrap();
    let approver = api.catalog.create_token("april", "approver").await.unwrap();
    let admin = api.catalog.create_token("ada", "admin").await.unwrap();
    let (get, put, post, delete) = (Method::GET, Method::PUT, Method::POST, Method::DELETE);

    // Probes and metrics need no token.
    assert_eq!(
        api.call(get.clone(), "/healthz", None, None).await.0,
        StatusCode::OK
    );
    let (status, ready) = api.call(get.clone(), "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["catalog"], "ok");

    // No token, a forged token, a role that may not.
    let (status, _) = api.call(get.clone(), "/datasets", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = api
        .call(get.clone(), "/datasets", Some("carga_forged"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = api
        .call(put.clone(), "/datasets/sales", Some(&viewer), Some(GOOD))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(error_of(&body).contains("viewer"), "{body}");

    // Bad configurations, each refused with what is wrong.
    let bad = [
        (
            GOOD.replace("'0 7 * * *'", "'0 25 * * *'"),
            "cron '0 25 * * *' is not valid",
        ),
        (
            GOOD.replace("America/Bogota", "Mars/Olympus"),
            "time zone 'Mars/Olympus'",
        ),
        (
            GOOD.replace("timestamp_column: updated_at\n", ""),
            "timestamp_column",
        ),
        (GOOD.replace("key: [id]\n", ""), "needs `key`"),
        (
            GOOD.replace("sales-db", "no-such-db"),
            "unknown connection id 'no-such-db'",
        ),
        (
            GOOD.replace("id: sales", "id: other"),
            "differs from the dataset in the path",
        ),
        (GOOD.replace("cron: '0 7 * * *'\n", ""), "cron"),
        (
            "id: sales\nsource: {format: excelsior}\n".to_owned(),
            "format",
        ),
    ];
    for (yaml, expected) in &bad {
        let (status, body) = api
            .call(put.clone(), "/datasets/sales", Some(&editor), Some(yaml))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{yaml}: {body}");
        assert!(
            error_of(&body).contains(expected),
            "expected '{expected}' in {body}"
        );
        assert!(
            !error_of(&body).contains("s3cr3t-value"),
            "a secret leaked: {body}"
        );
    }

    // A good one from an editor waits for approval; the trigger refuses it until then.
    let (status, body) = api
        .call(put.clone(), "/datasets/sales", Some(&editor), Some(GOOD))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["approved"], false);
    assert_eq!(body["spec"]["time_zone"], "America/Bogota");
    let (status, body) = api
        .call(post.clone(), "/datasets/sales/runs", Some(&editor), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error_of(&body).contains("waiting for approval"));
    let (status, _) = api
        .call(post.clone(), "/datasets/sales/approve", Some(&editor), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "an editor does not approve");
    let (status, body) = api
        .call(
            post.clone(),
            "/datasets/sales/approve",
            Some(&approver),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["approved_by"], "april");

    // As a viewer sees it, with its next fire time (07:00 in Bogotá is 12:00 UTC).
    let (status, body) = api
        .call(get.clone(), "/datasets/sales", Some(&viewer), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["next_fire"].as_str().unwrap().contains("T12:00:00"),
        "{body}"
    );

    // The on-demand trigger: a viewer may not, an editor may; the run is queued.
    let (status, _) = api
        .call(post.clone(), "/datasets/sales/runs", Some(&viewer), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = api
        .call(post.clone(), "/datasets/sales/runs", Some(&editor), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let run_id = body["run_id"].as_str().unwrap().to_owned();
    let (status, run) = api
        .call(get.clone(), &format!("/runs/{run_id}"), Some(&viewer), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(run["state"], "queued");
    assert_eq!(run["requested_by"], "eddie");
    assert_eq!(run["reason"], "trigger");
    let (_, runs) = api
        .call(get.clone(), "/datasets/sales/runs", Some(&viewer), None)
        .await;
    assert_eq!(runs.as_array().unwrap().len(), 1);
    assert_eq!(api.queue.stats().await.unwrap().queued, 1);
    let (_, metrics) = api.call(get.clone(), "/metrics", None, None).await;
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metrics.contains("# TYPE carga_jobs_enqueued counter"),
        "{metrics}"
    );
    assert!(
        metrics.contains("carga_queue_jobs{state=\"queued\"} 1"),
        "{metrics}"
    );

    // Disabling stops triggers; only an admin deletes and reads the audit log.
    let (status, _) = api
        .call(post.clone(), "/datasets/sales/disable", Some(&editor), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = api
        .call(post.clone(), "/datasets/sales/runs", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error_of(&body).contains("disabled"));
    let (status, _) = api
        .call(delete.clone(), "/datasets/sales", Some(&editor), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api.call(get.clone(), "/audit", Some(&approver), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api
        .call(delete.clone(), "/datasets/sales", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api
        .call(get.clone(), "/datasets/sales", Some(&viewer), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, audit) = api
        .call(get.clone(), "/audit?limit=200", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let entries = audit.as_array().unwrap();
    let has = |subject: &str, action: &str, result: &str| {
        entries
            .iter()
            .any(|e| e["subject"] == subject && e["action"] == action && e["result"] == result)
    };
    assert!(
        has("unknown", "read", "denied"),
        "forged token audited: {audit}"
    );
    assert!(has("vera", "write_config", "denied"));
    assert!(has("vera", "trigger", "denied"));
    assert!(has("eddie", "approve", "denied"));
    assert!(has("eddie", "write_config", "ok"));
    assert!(has("april", "approve", "ok"));
    assert!(has("eddie", "trigger", "ok"));
    assert!(has("ada", "trigger", "rejected"));
    assert!(has("ada", "delete", "ok"));
    assert!(
        entries.iter().all(|e| e["source_ip"] == "10.1.2.3"),
        "{audit}"
    );
    let rejected = entries
        .iter()
        .filter(|e| {
            e["subject"] == "eddie" && e["action"] == "write_config" && e["result"] == "rejected"
        })
        .count();
    assert_eq!(
        rejected,
        bad.len(),
        "every refused configuration is audited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_connection_previews_a_draft_without_writing() {
    if !services_available() {
        return;
    }
    let api = Api::new().await;
    let viewer = api.catalog.create_token("vera", "viewer").await.unwrap();
    let editor = api.catalog.create_token("eddie", "editor").await.unwrap();
    let admin = api.catalog.create_token("ada", "admin").await.unwrap();
    let csv = api._dir.path().join("clientes.csv");
    std::fs::write(&csv, "id,nombre,saldo\n1,Ana,10.5\n2,Luis,3\n3,Eva,7.25\n").unwrap();
    let draft = format!(
        "id: clientes\nsource: {{format: csv, location: '{}'}}\ntrigger: callback\n",
        csv.display()
    );

    let (status, _) = api
        .call(
            Method::POST,
            "/datasets/clientes/preview",
            Some(&viewer),
            Some(&draft),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, preview) = api
        .call(
            Method::POST,
            "/datasets/clientes/preview?rows=2",
            Some(&editor),
            Some(&draft),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    let columns: Vec<(&str, &str)> = preview["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["data_type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        columns,
        [("id", "Int64"), ("nombre", "Utf8"), ("saldo", "Float64")]
    );
    assert_eq!(preview["rows"].as_array().unwrap().len(), 2);
    assert_eq!(preview["rows"][1]["nombre"], "Luis");

    // A source that cannot be read: 422 with the file named; an unknown stored dataset: 404.
    let missing = draft.replace("clientes.csv", "nope.csv");
    let (status, body) = api
        .call(
            Method::POST,
            "/datasets/clientes/preview",
            Some(&editor),
            Some(&missing),
        )
        .await;
    assert!(
        status.is_client_error() || status == StatusCode::BAD_GATEWAY,
        "{status} {body}"
    );
    assert!(error_of(&body).contains("nope.csv"), "{body}");
    let (status, _) = api
        .call(
            Method::POST,
            "/datasets/nothing/preview",
            Some(&editor),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Nothing was configured or written, and both previews are in the audit log.
    assert!(api.catalog.dataset("clientes").await.unwrap().is_none());
    assert!(!api._dir.path().join("bucket").join("raw").exists());
    let (_, audit) = api.call(Method::GET, "/audit", Some(&admin), None).await;
    let previews: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "preview")
        .map(|e| e["result"].as_str().unwrap())
        .collect();
    assert_eq!(
        previews.iter().filter(|r| **r == "ok").count(),
        1,
        "{audit}"
    );
    assert_eq!(
        previews.iter().filter(|r| **r == "error").count(),
        1,
        "{audit}"
    );
    assert_eq!(
        previews.iter().filter(|r| **r == "denied").count(),
        1,
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn specs_reach_only_the_data_roots_and_every_refusal_is_audited() {
    if !services_available() {
        return;
    }
    let api = Api::new().await;
    let editor = api.catalog.create_token("eddie", "editor").await.unwrap();
    let admin = api.catalog.create_token("ada", "admin").await.unwrap();
    let root = api._dir.path();
    std::fs::write(root.join("ok.csv"), "id\n1\n").unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("private.csv"), "secret\n42\n").unwrap();
    std::os::unix::fs::symlink(outside.path().join("private.csv"), root.join("link.csv")).unwrap();
    let locations = [
        "/etc/passwd".to_owned(),
        "file:///etc/passwd".to_owned(),
        format!("{}/../../../../../../etc/hostname", root.display()),
        root.join("link.csv").display().to_string(),
        api.settings.key_file.display().to_string(),
        api.settings.secrets_file.display().to_string(),
        "/proc/self/environ".to_owned(),
        "http://127.0.0.1:6379/".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ];
    let spec = |location: &str| {
        format!(
            "id: probe\nsource: {{format: csv, location: '{location}', csv: {{delimiter: ';'}}}}\ntrigger: callback\n"
        )
    };
    for location in &locations {
        for path in ["/datasets/probe", "/datasets/probe/preview"] {
            let method = if path.ends_with("preview") {
                Method::POST
            } else {
                Method::PUT
            };
            let (status, body) = api
                .call(method, path, Some(&editor), Some(&spec(location)))
                .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path} {location}: {body}");
            let message = error_of(&body);
            assert!(
                !message.contains("root:") && !message.contains("42"),
                "file content leaked: {body}"
            );
        }
    }
    // A stored spec whose file is fine previews; the same preview of a stored spec pointing
    // outside (stored by an admin before the roots narrowed) is refused too.
    let (status, body) = api
        .call(
            Method::PUT,
            "/datasets/probe",
            Some(&admin),
            Some(&spec(&root.join("ok.csv").display().to_string())),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api
        .call(Method::POST, "/datasets/probe/preview", Some(&editor), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut stored = carga_config::DatasetSpec::from_yaml(&spec("/etc/passwd")).unwrap();
    stored.id = "stale".into();
    api.catalog
        .upsert_dataset(&stored, "ada", true)
        .await
        .unwrap();
    let (status, _) = api
        .call(Method::POST, "/datasets/stale/preview", Some(&editor), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Requests without a usable token are refused and audited with the peer's address; a
    // forwarded address from an untrusted peer is not believed.
    for authorization in [
        None,
        Some("bearer"),
        Some("Basic dXNlcjpwYXNz"),
        Some("Bearer "),
    ] {
        let (status, _) = api
            .call_as(
                Method::GET,
                "/datasets",
                authorization,
                &[("x-forwarded-for", "6.6.6.6")],
                None,
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{authorization:?}");
    }
    let (_, audit) = api
        .call(Method::GET, "/audit?limit=500", Some(&admin), None)
        .await;
    let entries = audit.as_array().unwrap();
    let denied = |action: &str| {
        entries
            .iter()
            .filter(|e| e["action"] == action && e["result"] == "denied")
            .count()
    };
    assert_eq!(
        denied("write_config"),
        locations.len(),
        "every refused spec audited: {audit}"
    );
    assert_eq!(denied("preview"), locations.len() + 1, "{audit}");
    let anonymous = entries
        .iter()
        .filter(|e| e["subject"] == "anonymous" && e["result"] == "denied")
        .count();
    assert_eq!(anonymous, 4, "{audit}");
    assert!(
        entries.iter().all(|e| e["source_ip"] != "6.6.6.6"),
        "{audit}"
    );
    assert!(
        entries
            .iter()
            .filter(|e| e["result"] == "denied" && e["action"] == "write_config")
            .all(|e| e["detail"].as_str().is_some_and(|d| !d.is_empty())),
        "refusals say why"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_triggers_leave_one_queued_run_and_a_token_is_rate_limited() {
    if !services_available() {
        return;
    }
    let api = Api::new().await;
    let admin = api.catalog.create_token("ada", "admin").await.unwrap();
    let callback = "id: pedidos\nsource: {format: postgres, table: public.orders}\nconnection_id: sales-db\ntrigger: callback\n";
    let (status, body) = api
        .call(
            Method::PUT,
            "/datasets/pedidos",
            Some(&admin),
            Some(callback),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Fifty clients, each with its own token, press "run" at once.
    let mut tokens = Vec::new();
    for i in 0..50 {
        tokens.push(
            api.catalog
                .create_token(&format!("client-{i}"), "editor")
                .await
                .unwrap(),
        );
    }
    let calls = tokens
        .iter()
        .map(|token| api.call(Method::POST, "/datasets/pedidos/runs", Some(token), None));
    let answers = futures::future::join_all(calls).await;
    let created = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::ACCEPTED)
        .count();
    let joined = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .count();
    assert_eq!((created, joined), (1, 49), "{answers:?}");
    let ids: std::collections::BTreeSet<&str> = answers
        .iter()
        .map(|(_, body)| body["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "every caller got the same run");
    let queued = api
        .catalog
        .runs(Some("pedidos"), Some("queued"), 100)
        .await
        .unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(api.queue.stats().await.unwrap().queued, 1);
    // `force` enqueues another.
    let (status, body) = api
        .call(
            Method::POST,
            "/datasets/pedidos/runs?force=true",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(api.queue.stats().await.unwrap().queued, 2);

    // One token pressing again and again: past its burst, 429 with Retry-After.
    let mut statuses = Vec::new();
    for _ in 0..15 {
        let (status, _) = api
            .call(
                Method::POST,
                "/datasets/pedidos/runs",
                Some(&tokens[0]),
                None,
            )
            .await;
        statuses.push(status);
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let (_, audit) = api
        .call(Method::GET, "/audit?limit=500", Some(&admin), None)
        .await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "trigger"
                && e["result"] == "denied"
                && e["detail"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("rate limited")),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_is_for_approvers_and_admins_and_audited() {
    if !services_available() {
        return;
    }
    let api = Api::new().await;
    let editor = api.catalog.create_token("eddie", "editor").await.unwrap();
    let approver = api.catalog.create_token("april", "approver").await.unwrap();
    let admin = api.catalog.create_token("ada", "admin").await.unwrap();
    let query = r#"{"query": "SELECT 1 + 1 AS two, 'x' AS s", "limit": 5}"#;
    let (status, _) = api
        .call(Method::POST, "/sql", Some(&editor), Some(query))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = api
        .call(Method::POST, "/sql", Some(&approver), Some(query))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rows"], serde_json::json!([{"two": 2, "s": "x"}]));
    assert_eq!(body["columns"][0]["name"], "two");
    let (status, body) = api
        .call(
            Method::POST,
            "/sql",
            Some(&admin),
            Some(r#"{"query": "SELECT * FROM unnest(range(0, 50)) AS t(n)", "limit": 10}"#),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["row_count"].as_u64(), body["truncated"].as_bool()),
        (Some(10), Some(true))
    );
    let (status, body) = api
        .call(
            Method::POST,
            "/sql",
            Some(&admin),
            Some(r#"{"query": "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (_, audit) = api
        .call(Method::GET, "/audit?limit=50", Some(&admin), None)
        .await;
    let sql: Vec<(&str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "sql")
        .map(|e| {
            (
                e["subject"].as_str().unwrap(),
                e["result"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(sql.len(), 4, "{audit}");
    assert!(
        sql.contains(&("eddie", "denied"))
            && sql.contains(&("april", "ok"))
            && sql.contains(&("ada", "error"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermarks_are_shown_only_to_roles_that_may_see_data() {
    if !services_available() {
        return;
    }
    use carga_scheduler::catalog::RunResult;
    use carga_scheduler::job::{ExtractionJob, RunReason};
    let api = Api::new().await;
    let viewer = api.catalog.create_token("vera", "viewer").await.unwrap();
    let editor = api.catalog.create_token("eddie", "editor").await.unwrap();
    let approver = api.catalog.create_token("april", "approver").await.unwrap();
    let job = ExtractionJob::new("ventas", RunReason::Trigger);
    api.catalog
        .insert_queued_runs(std::slice::from_ref(&job))
        .await
        .unwrap();
    api.catalog.run_started(&job, "w1", 1).await.unwrap();
    let watermark = "2031-07-19T08:41:29, K-9d0e17";
    api.catalog
        .run_finished(
            &job.run_id,
            1,
            &RunResult {
                state: "succeeded",
                watermark_after: Some(watermark.into()),
                ..RunResult::default()
            },
        )
        .await
        .unwrap();
    for (token, sees) in [(&viewer, false), (&editor, false), (&approver, true)] {
        for path in [
            format!("/runs/{}", job.run_id),
            "/runs".to_owned(),
            "/datasets/ventas/runs".to_owned(),
        ] {
            let (status, body) = api.call(Method::GET, &path, Some(token), None).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            assert_eq!(
                body.to_string().contains("K-9d0e17"),
                sees,
                "{path}: {body}"
            );
        }
    }
}

/// Every error answer is an RFC 9457 problem: Carga's refusals and axum's own rejections alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_answer_is_a_problem_document() {
    if !services_available() {
        return;
    }
    let api = Api::new().await;
    let viewer = api.catalog.create_token("vera", "viewer").await.unwrap();
    let admin = api.catalog.create_token("ada", "admin").await.unwrap();
    // (method, path, token, body, the status expected)
    type Case<'a> = (
        Method,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        StatusCode,
    );
    let cases: [Case; 6] = [
        (
            Method::GET,
            "/datasets",
            None,
            None,
            StatusCode::UNAUTHORIZED,
        ),
        (
            Method::PUT,
            "/datasets/sales",
            Some(&viewer),
            Some(GOOD),
            StatusCode::FORBIDDEN,
        ),
        (
            Method::GET,
            "/no/such/endpoint",
            Some(&admin),
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::PATCH,
            "/datasets",
            Some(&admin),
            None,
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::GET,
            "/runs?limit=many",
            Some(&admin),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/runs/actions",
            Some(&admin),
            Some("{not json"),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (method, path, token, body, expected) in cases {
        let authorization = token.map(|t| format!("Bearer {t}"));
        let mut request = Request::builder().method(method.clone()).uri(path);
        if let Some(value) = &authorization {
            request = request.header("authorization", value);
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
            .unwrap();
        let response = api.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let problem: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("{method} {path}: {}", String::from_utf8_lossy(&bytes)));
        // A body or query that does not parse: 400, or 422 where it parses but does not fit.
        let fits = status == expected
            || (expected == StatusCode::BAD_REQUEST && status == StatusCode::UNPROCESSABLE_ENTITY);
        assert!(fits, "{method} {path}: {status} {problem}");
        assert_eq!(
            content_type.as_deref(),
            Some("application/problem+json"),
            "{method} {path}"
        );
        assert_eq!(problem["status"], status.as_u16(), "{method} {path}");
        assert_eq!(problem["type"], "about:blank");
        assert_eq!(
            problem["title"],
            status.canonical_reason().unwrap(),
            "{method} {path}"
        );
        assert!(
            !problem["detail"].as_str().unwrap_or_default().is_empty(),
            "{method} {path}: {problem}"
        );
    }
}

#[tokio::test]
async fn webhooks_are_written_by_admins_read_by_approvers_and_never_show_their_secret() {
    if !services_available() {
        return;
    }
    let api = Api::new().await;
    let viewer = api.catalog.create_token("vera", "viewer").await.unwrap();
    let approver = api.catalog.create_token("abel", "approver").await.unwrap();
    let admin = api.catalog.create_token("ada", "admin").await.unwrap();
    const SECRET: &str = "whsec-0123456789abcdef";
    let body = format!(
        r#"{{"url": "https://hooks.example.com/carga?team=ops", "events": ["run_succeeded", "extraction_failed"], "secret": "{SECRET}"}}"#
    );
    let (status, _) = api
        .call(Method::PUT, "/webhooks/ops", Some(&approver), Some(&body))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api
        .call(Method::GET, "/webhooks/deliveries", Some(&viewer), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The service's own network is not a webhook target unless the settings open it.
    let local = body.replace("https://hooks.example.com", "http://127.0.0.1:6379");
    let (status, problem) = api
        .call(Method::PUT, "/webhooks/ops", Some(&admin), Some(&local))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(error_of(&problem).contains("loopback"), "{problem}");
    // A body that does not parse is refused without quoting it (it holds the secret).
    let (status, problem) = api
        .call(
            Method::PUT,
            "/webhooks/ops",
            Some(&admin),
            Some(&body.replace("\"events\"", "\"evnts\"")),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!problem.to_string().contains(SECRET), "{problem}");

    let (status, hook) = api
        .call(Method::PUT, "/webhooks/ops", Some(&admin), Some(&body))
        .await;
    assert_eq!(status, StatusCode::OK, "{hook}");
    assert_eq!(
        hook["events"],
        serde_json::json!(["extraction_failed", "run_succeeded"])
    );
    assert!(hook["dataset_id"].is_null());
    // The secret is in the secrets provider, and nowhere in the catalog.
    let stored = api.secrets.connection("webhooks/ops").await.unwrap();
    assert_eq!(stored.field("secret").as_deref(), Some(SECRET));
    let pool = api.catalog.postgres_pool().unwrap();
    let rows: Vec<String> = sqlx::query_scalar("SELECT row_to_json(w)::text FROM webhooks w")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(!rows[0].contains(SECRET), "{rows:?}");
    let (status, list) = api
        .call(Method::GET, "/webhooks", Some(&approver), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (status, log) = api
        .call(Method::GET, "/webhooks/deliveries", Some(&approver), None)
        .await;
    assert_eq!((status, log), (StatusCode::OK, serde_json::json!([])));
    let (_, audit) = api.call(Method::GET, "/audit", Some(&admin), None).await;
    let text = audit.to_string();
    assert!(!text.contains(SECRET), "{text}");
    let results: Vec<(&str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"].as_str().is_some_and(|a| a.contains("webhook")))
        .map(|a| (a["action"].as_str().unwrap(), a["result"].as_str().unwrap()))
        .collect();
    assert!(results.contains(&("put_webhook", "ok")), "{results:?}");
    assert_eq!(
        results.iter().filter(|r| r.1 == "rejected").count(),
        2,
        "{results:?}"
    );
    assert!(
        results.contains(&("manage_webhooks", "denied"))
            && results.contains(&("read_webhooks", "denied")),
        "the refusals are audited: {results:?}"
    );
    let (status, _) = api
        .call(Method::DELETE, "/webhooks/ops", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        api.secrets.connection("webhooks/ops").await.is_err(),
        "the secret goes with the subscription"
    );
}
