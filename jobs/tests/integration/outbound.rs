//! A hostile editor's REST specs against listeners on loopback that record everything they get:
//! a stored credential is sent only to the hosts its connection names (not to another port of the
//! same machine, not across a redirect, not to a token URL the spec chose), and when an allowed
//! API echoes the credentials back in an error, no form of them reaches the run's error or its
//! validation report.

use std::sync::{Arc, Mutex};

use crate::common::Lab;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine as _;
use carga_jobs::JobError;
use carga_jobs::redact::Redactor;
use serde_json::json;

const DB_PASSWORD: &str = "Db-Passw0rd:with/odd chars";
const TOKEN: &str = "t0ken-3ch0-value";
const API_KEY: &str = "k3y-3ch0-value";
const CLIENT_SECRET: &str = "cl13nt-3ch0-secret";

/// A listener that records each request (method, URI, headers, body) and answers 401 with all of
/// it echoed back, as careless APIs do.
struct Echo {
    seen: Arc<Mutex<Vec<String>>>,
    base: String,
}

impl Echo {
    async fn start() -> Self {
        Self::start_with(Router::new()).await
    }

    async fn start_with(extra: Router<Arc<Mutex<Vec<String>>>>) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = extra.fallback(any(echo)).with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { seen, base }
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    fn authority(&self) -> &str {
        self.base.trim_start_matches("http://")
    }
}

async fn echo(State(seen): State<Arc<Mutex<Vec<String>>>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let mut text = format!("{} {}\n", parts.method, parts.uri);
    for (name, value) in &parts.headers {
        text.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
    }
    text.push_str(&String::from_utf8_lossy(&body));
    seen.lock().unwrap().push(text.clone());
    let decoded: String = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let echoed = json!({
        "error": "unauthorized",
        "you_sent": text,
        "decoded": decoded,
        "escaped": url::form_urlencoded::byte_serialize(decoded.as_bytes()).collect::<String>(),
    });
    (StatusCode::UNAUTHORIZED, echoed.to_string()).into_response()
}

/// Secrets: a database connection (its credentials bound to 127.0.0.1:5432), an API connection
/// bound to a partner's host, and one bound to `echo` itself.
fn lab(echo: &Echo) -> (Lab, Redactor) {
    let mut lab = Lab::new();
    let secrets = json!({
        "sales-db": {"url": format!("postgres://reader:{}@127.0.0.1:5432/sales",
                        url::form_urlencoded::byte_serialize(DB_PASSWORD.as_bytes()).collect::<String>()),
                     "username": "reader", "password": DB_PASSWORD},
        "partner": {"token": TOKEN, "api_key": API_KEY, "client_id": "carga",
                    "client_secret": CLIENT_SECRET, "username": "carga", "password": DB_PASSWORD,
                    "allowed_hosts": ["api.partner.example"]},
        "echo-bound": {"username": "reader", "password": DB_PASSWORD, "token": TOKEN,
                       "api_key": API_KEY, "allowed_hosts": [echo.authority()]},
    });
    lab.settings.secrets_file = lab.write("secrets.json", secrets.to_string());
    let redactor = Redactor::new([DB_PASSWORD, TOKEN, API_KEY, CLIENT_SECRET]);
    (lab, redactor)
}

fn spec(lab: &Lab, location: &str, connection: &str, auth: &str) -> carga_config::DatasetSpec {
    lab.spec(&format!(
        "id: probe\nsource:\n  format: rest\n  location: '{location}'\n  rest: {{auth: {auth}, max_attempts: 1}}\nconnection_id: {connection}\ntrigger: callback\n"
    ))
}

/// The run's error and its validation report (as stored, and opened with the key), as an
/// operator (or the editor) would read them.
fn what_the_run_left(lab: &Lab, failure: &carga_jobs::RunFailure) -> String {
    let mut text = failure.to_string();
    if let Some(report) = &failure.report_url {
        text.push_str(&std::fs::read_to_string(report).unwrap());
        text.push_str(&lab.document(report).to_string());
    }
    text
}

#[tokio::test]
async fn stored_credentials_never_reach_a_host_their_connection_does_not_name() {
    let echo = Echo::start().await;
    let (lab, redactor) = lab(&echo);
    let attacks = [
        // A database's username and password as HTTP basic to another port of its host.
        ("sales-db", "{type: basic}".to_owned()),
        ("partner", "{type: bearer}".to_owned()),
        ("partner", "{type: api_key}".to_owned()),
        ("partner", "{type: api_key, query_param: key}".to_owned()),
        ("partner", "{type: basic}".to_owned()),
        (
            "partner",
            format!("{{type: oauth2, token_url: '{}/token'}}", echo.base),
        ),
    ];
    for (connection, auth) in attacks {
        let spec = spec(&lab, &format!("{}/steal", echo.base), connection, &auth);
        let failure = lab.engine().run(&spec).await.unwrap_err();
        assert!(
            matches!(failure.error, JobError::Denied { .. }),
            "{connection} {auth}: {failure}"
        );
        let left = what_the_run_left(&lab, &failure);
        assert!(left.contains("may send its credentials only to"), "{left}");
        assert!(
            !redactor.finds_secret_in(&left),
            "{connection} {auth}: {left}"
        );
    }
    assert!(
        echo.requests().is_empty(),
        "the listener got {:?}",
        echo.requests()
    );
}

#[tokio::test]
async fn credentials_do_not_follow_a_redirect_to_another_host() {
    let thief = Echo::start().await;
    let target = format!("{}/collect", thief.base);
    let redirecting = Router::new().route(
        "/items",
        any(move || {
            let target = target.clone();
            async move { axum::response::Redirect::temporary(&target) }
        }),
    );
    let allowed = Echo::start_with(redirecting).await;
    let (lab, redactor) = lab(&allowed);
    for auth in ["{type: bearer}", "{type: api_key}", "{type: basic}"] {
        let spec = spec(&lab, &format!("{}/items", allowed.base), "echo-bound", auth);
        let failure = lab.engine().run(&spec).await.unwrap_err();
        assert!(
            failure.to_string().contains("redirect refused"),
            "{failure}"
        );
        assert!(!redactor.finds_secret_in(&what_the_run_left(&lab, &failure)));
    }
    assert!(
        thief.requests().is_empty(),
        "the redirect target got {:?}",
        thief.requests()
    );
}

#[tokio::test]
async fn an_allowed_api_that_echoes_the_credentials_leaves_no_form_of_them_in_the_run() {
    let echo = Echo::start().await;
    let (lab, redactor) = lab(&echo);
    for auth in [
        "{type: basic}",
        "{type: bearer}",
        "{type: api_key}",
        "{type: api_key, query_param: key}",
    ] {
        let spec = spec(&lab, &format!("{}/items", echo.base), "echo-bound", auth);
        let failure = lab.engine().run(&spec).await.unwrap_err();
        let left = what_the_run_left(&lab, &failure);
        assert!(left.contains("401"), "{left}");
        assert!(!redactor.finds_secret_in(&left), "{auth}: {left}");
        if auth == "{type: basic}" {
            // The echoed `Authorization: Basic base64(user:password)` is masked, not dropped.
            assert!(
                left.contains("authorization: Basic ") && left.contains("***"),
                "{left}"
            );
        }
    }
    // The credentials did go where the connection allows.
    let sent = echo.requests().join("\n");
    assert!(sent.contains(TOKEN) && sent.contains(API_KEY), "{sent}");
}
