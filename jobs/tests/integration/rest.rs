//! The REST source against a real HTTP server on loopback (axum, one per test): page, offset,
//! cursor and Link-header pagination; API key, bearer, basic and OAuth2 client credentials with
//! token renewal; 429 with Retry-After and 5xx retries; malformed pages; the incremental
//! parameter; the page bound; preview.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{Lab, column};
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use carga_jobs::JobError;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

const TOKEN: &str = "s3cr3t-bearer-token";
const API_KEY: &str = "k3y-0123456789";
const USER: &str = "ana";
const PASSWORD: &str = "p4ss-w0rd-secret";
const CLIENT_ID: &str = "carga-client";
const CLIENT_SECRET: &str = "cl13nt-s3cret-value";

/// What the server serves and what it saw.
#[derive(Default)]
struct ServerState {
    items: Vec<Value>,
    /// Every request as `path?query`.
    requests: Vec<String>,
    /// Responses to give instead of a page, by page number, before serving it (`/page`).
    faults: HashMap<u64, VecDeque<Fault>>,
    /// OAuth2: issued tokens and until when the server accepts them.
    tokens: HashMap<String, Instant>,
    token_requests: u32,
    /// What the token response announces as `expires_in`, and how long the server honours it.
    announced_ttl: u64,
    real_ttl: Duration,
    unauthorized: u32,
}

#[derive(Clone, Copy)]
enum Fault {
    TooManyRequests { retry_after: u64 },
    ServerError(u16),
    NotJson,
    NoRecords,
}

type Shared = Arc<Mutex<ServerState>>;

struct Api {
    state: Shared,
    base: String,
}

impl Api {
    async fn start(items: Vec<Value>) -> Self {
        let state: Shared = Arc::new(Mutex::new(ServerState {
            items,
            announced_ttl: 3600,
            real_ttl: Duration::from_secs(3600),
            ..ServerState::default()
        }));
        let app = Router::new()
            .route("/page", get(page_numbers))
            .route("/offset", get(offsets))
            .route("/cursor", get(cursors))
            .route("/link", get(link_header))
            .route("/secure", get(oauth2_protected))
            .route("/oauth/token", post(oauth2_token))
            .route("/incremental", get(incremental))
            .route("/endless", get(endless))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { state, base }
    }

    fn with<T>(&self, f: impl FnOnce(&mut ServerState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    fn requests(&self, path: &str) -> Vec<String> {
        self.with(|s| {
            s.requests
                .iter()
                .filter(|r| r.starts_with(path))
                .cloned()
                .collect()
        })
    }
}

/// `n` items: id, name, amount, updated_at one minute apart.
fn items(n: u64) -> Vec<Value> {
    (1..=n).map(|id| item(id, &minute(id))).collect()
}

fn item(id: u64, updated_at: &str) -> Value {
    json!({"id": id, "name": format!("item-{id}"), "amount": id as f64 * 1.5, "updated_at": updated_at})
}

fn minute(n: u64) -> String {
    let t = DateTime::parse_from_rfc3339("2026-05-01T08:00:00Z").unwrap()
        + chrono::Duration::minutes(n as i64);
    t.with_timezone(&Utc)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn record(state: &Shared, path: &str, params: &HashMap<String, String>) {
    let mut query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    query.sort();
    state
        .lock()
        .unwrap()
        .requests
        .push(format!("{path}?{}", query.join("&")));
}

fn param(params: &HashMap<String, String>, name: &str, default: u64) -> u64 {
    params
        .get(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn slice(items: &[Value], start: u64, len: u64) -> Vec<Value> {
    items
        .iter()
        .skip(start as usize)
        .take(len as usize)
        .cloned()
        .collect()
}

/// 401 that echoes what it was sent (as careless servers do): the client must not repeat it.
fn unauthorized(state: &Shared, headers: &HeaderMap) -> Response {
    state.lock().unwrap().unauthorized += 1;
    let sent = headers
        .get(header::AUTHORIZATION)
        .or_else(|| headers.get("x-api-key"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("nothing");
    (
        StatusCode::UNAUTHORIZED,
        format!("invalid credentials: {sent}"),
    )
        .into_response()
}

fn bearer_is(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {token}"))
}

/// `?page=N&per_page=M`, bearer token, a bare array per page; faults by page number.
async fn page_numbers(
    State(state): State<Shared>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    record(&state, "/page", &params);
    if !bearer_is(&headers, TOKEN) {
        return unauthorized(&state, &headers);
    }
    let page = param(&params, "page", 1);
    let size = param(&params, "per_page", 10);
    let fault = state
        .lock()
        .unwrap()
        .faults
        .get_mut(&page)
        .and_then(|q| q.pop_front());
    match fault {
        Some(Fault::TooManyRequests { retry_after }) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, retry_after.to_string())],
                "slow down",
            )
                .into_response();
        }
        Some(Fault::ServerError(code)) => {
            return (StatusCode::from_u16(code).unwrap(), "upstream trouble").into_response();
        }
        Some(Fault::NotJson) => return "{\"id\": 1, oops".into_response(),
        Some(Fault::NoRecords) => return axum::Json(json!({"error": "gone"})).into_response(),
        None => {}
    }
    let items = state.lock().unwrap().items.clone();
    axum::Json(slice(&items, (page - 1) * size, size)).into_response()
}

/// `?offset=&limit=`, API key header, records under `data.items`.
async fn offsets(
    State(state): State<Shared>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    record(&state, "/offset", &params);
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(API_KEY) {
        return unauthorized(&state, &headers);
    }
    let items = state.lock().unwrap().items.clone();
    let page = slice(
        &items,
        param(&params, "offset", 0),
        param(&params, "limit", 10),
    );
    axum::Json(json!({"data": {"items": page}, "total": items.len()})).into_response()
}

/// An opaque cursor in `meta.next_cursor`, API key in the query string, 7 records a page.
async fn cursors(
    State(state): State<Shared>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    record(&state, "/cursor", &params);
    if params.get("key").map(String::as_str) != Some(API_KEY) {
        return unauthorized(&state, &headers);
    }
    let start = params
        .get("cursor")
        .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("after:").and_then(|n| n.parse().ok()))
        .unwrap_or(0u64);
    let items = state.lock().unwrap().items.clone();
    let page = slice(&items, start, 7);
    let next = (start + 7 < items.len() as u64)
        .then(|| base64::engine::general_purpose::STANDARD.encode(format!("after:{}", start + 7)));
    axum::Json(json!({"results": page, "meta": {"next_cursor": next}})).into_response()
}

/// GitHub style: `Link: <...>; rel="next"` (relative), basic auth, 20 a page.
async fn link_header(
    State(state): State<Shared>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    record(&state, "/link", &params);
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(&expected)
    {
        return unauthorized(&state, &headers);
    }
    let page = param(&params, "page", 1);
    let items = state.lock().unwrap().items.clone();
    let pages = (items.len() as u64).div_ceil(20);
    let mut response = axum::Json(slice(&items, (page - 1) * 20, 20)).into_response();
    let mut links = vec![format!("</link?page={pages}>; rel=\"last\"")];
    if page < pages {
        links.insert(0, format!("</link?page={}>; rel=\"next\"", page + 1));
    }
    response.headers_mut().insert(
        header::LINK,
        HeaderValue::from_str(&links.join(", ")).unwrap(),
    );
    response
}

/// Client credentials in basic auth; tokens accepted for `real_ttl`, announced as `announced_ttl`.
async fn oauth2_token(State(state): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(&expected)
        || form.get("grant_type").map(String::as_str) != Some("client_credentials")
    {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let mut s = state.lock().unwrap();
    s.token_requests += 1;
    let token = format!("tok-{}", s.token_requests);
    let until = Instant::now() + s.real_ttl;
    s.tokens.insert(token.clone(), until);
    axum::Json(
        json!({"access_token": token, "token_type": "Bearer", "expires_in": s.announced_ttl}),
    )
    .into_response()
}

/// Page numbers behind an OAuth2 token, 5 a page.
async fn oauth2_protected(
    State(state): State<Shared>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    record(&state, "/secure", &params);
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let valid = presented.is_some_and(|t| {
        state
            .lock()
            .unwrap()
            .tokens
            .get(&t)
            .is_some_and(|until| Instant::now() < *until)
    });
    if !valid {
        return unauthorized(&state, &headers);
    }
    let page = param(&params, "page", 1);
    let items = state.lock().unwrap().items.clone();
    axum::Json(slice(&items, (page - 1) * 5, 5)).into_response()
}

/// `updated_since` (inclusive) filters; ordered by (updated_at, id); page numbers, 4 a page.
async fn incremental(
    State(state): State<Shared>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    record(&state, "/incremental", &params);
    let since = params
        .get("updated_since")
        .map(|s| DateTime::parse_from_rfc3339(s).expect("the client sends RFC 3339"));
    let mut items: Vec<Value> = state
        .lock()
        .unwrap()
        .items
        .iter()
        .filter(|i| {
            let at = DateTime::parse_from_rfc3339(i["updated_at"].as_str().unwrap()).unwrap();
            since.is_none_or(|s| at >= s)
        })
        .cloned()
        .collect();
    items.sort_by_key(|i| {
        (
            i["updated_at"].as_str().unwrap().to_owned(),
            i["id"].as_u64(),
        )
    });
    let page = param(&params, "page", 1);
    axum::Json(json!({"items": slice(&items, (page - 1) * 4, 4)})).into_response()
}

/// Always one record and another cursor.
async fn endless(
    State(state): State<Shared>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    record(&state, "/endless", &params);
    let n = param(&params, "cursor", 0);
    axum::Json(json!({"items": [item(n + 1, &minute(n + 1))], "next": n + 1})).into_response()
}

/// A lab whose secrets file holds every credential the server accepts (connection `api`), or
/// wrong ones (connection `wrong`).
fn lab(api: &Api) -> Lab {
    let mut lab = Lab::new();
    let secrets = json!({
        "api": {
            "token": TOKEN, "api_key": API_KEY, "username": USER, "password": PASSWORD,
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "token_url": format!("{}/oauth/token", api.base),
        },
        "wrong": {
            "token": "wr0ng-t0ken-value", "api_key": "wr0ng-k3y-value",
            "allowed_hosts": [api.base.trim_start_matches("http://")],
        },
    });
    lab.settings.secrets_file = lab.write("secrets.json", secrets.to_string());
    lab
}

fn spec(lab: &Lab, api: &Api, id: &str, path: &str, rest: &str) -> carga_config::DatasetSpec {
    lab.spec(&format!(
        "id: {id}\nsource:\n  format: rest\n  location: {}{path}\n  rest: {rest}\nconnection_id: api\ntrigger: callback\nkey: [id]\n",
        api.base
    ))
}

fn ids(rows: &[Value]) -> Vec<u64> {
    let mut ids: Vec<u64> = column(rows, "id")
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn page_numbers_with_a_bearer_token() {
    let api = Api::start(items(95)).await;
    let lab = lab(&api);
    let spec = spec(
        &lab,
        &api,
        "pages",
        "/page",
        "{auth: {type: bearer}, pagination: {style: page, size_param: per_page, size: 10}}",
    );
    let outcome = lab.engine().run(&spec).await.unwrap();
    assert_eq!(outcome.manifest.rows, 95);
    let rows = lab.rows("pages").await;
    assert_eq!(ids(&rows), (1..=95).collect::<Vec<_>>());
    // Ten pages: the tenth holds five records, fewer than the page size, so it is the last.
    let requests = api.requests("/page");
    assert_eq!(requests.len(), 10, "{requests:?}");
    assert_eq!(requests[9], "/page?page=10&per_page=10");
    let schema = &outcome.manifest.schema;
    assert_eq!(
        schema
            .field_with_name("id")
            .unwrap()
            .data_type()
            .to_string(),
        "Int64"
    );
    assert_eq!(
        schema
            .field_with_name("amount")
            .unwrap()
            .data_type()
            .to_string(),
        "Float64"
    );
    assert_eq!(rows[0]["name"], "item-1");
}

#[tokio::test]
async fn offsets_with_an_api_key_header_and_a_records_path() {
    let api = Api::start(items(250)).await;
    let lab = lab(&api);
    let spec = spec(
        &lab,
        &api,
        "offsets",
        "/offset",
        "{auth: {type: api_key, header: X-API-Key}, records_path: data.items, pagination: {style: offset, limit: 100}}",
    );
    lab.engine().run(&spec).await.unwrap();
    assert_eq!(
        ids(&lab.rows("offsets").await),
        (1..=250).collect::<Vec<_>>()
    );
    assert_eq!(
        api.requests("/offset"),
        [
            "/offset?limit=100&offset=0",
            "/offset?limit=100&offset=100",
            "/offset?limit=100&offset=200"
        ]
    );
}

#[tokio::test]
async fn cursors_in_the_body_with_the_api_key_in_the_query() {
    let api = Api::start(items(30)).await;
    let lab = lab(&api);
    let spec = spec(
        &lab,
        &api,
        "cursors",
        "/cursor",
        "{auth: {type: api_key, query_param: key}, records_path: results, pagination: {style: cursor, cursor_path: meta.next_cursor}, query: {status: open}}",
    );
    lab.engine().run(&spec).await.unwrap();
    assert_eq!(
        ids(&lab.rows("cursors").await),
        (1..=30).collect::<Vec<_>>()
    );
    let requests = api.requests("/cursor");
    assert_eq!(requests.len(), 5, "30 records, 7 a page: {requests:?}");
    assert!(
        requests
            .iter()
            .all(|r| r.contains("status=open") && r.contains(&format!("key={API_KEY}")))
    );
}

#[tokio::test]
async fn link_headers_with_basic_auth() {
    let api = Api::start(items(45)).await;
    let lab = lab(&api);
    let spec = spec(
        &lab,
        &api,
        "linked",
        "/link",
        "{auth: {type: basic}, pagination: {style: link_header}}",
    );
    lab.engine().run(&spec).await.unwrap();
    assert_eq!(ids(&lab.rows("linked").await), (1..=45).collect::<Vec<_>>());
    assert_eq!(
        api.requests("/link"),
        ["/link?", "/link?page=2", "/link?page=3"]
    );
}

#[tokio::test]
async fn oauth2_tokens_are_renewed_before_they_expire() {
    let api = Api::start(items(40)).await;
    api.with(|s| {
        s.announced_ttl = 1;
        s.real_ttl = Duration::from_secs(1);
    });
    let lab = lab(&api);
    // Eight pages at 5 requests a second take longer than one token's life.
    let spec = spec(
        &lab,
        &api,
        "oauth_renew",
        "/secure",
        "{auth: {type: oauth2_client_credentials, scopes: [read]}, pagination: {style: page}, requests_per_second: 5}",
    );
    lab.engine().run(&spec).await.unwrap();
    assert_eq!(
        ids(&lab.rows("oauth_renew").await),
        (1..=40).collect::<Vec<_>>()
    );
    let (tokens, refused) = api.with(|s| (s.token_requests, s.unauthorized));
    assert!(
        tokens >= 2,
        "the token should have been renewed; {tokens} issued"
    );
    assert_eq!(refused, 0, "renewal happens before expiry, not after a 401");
}

#[tokio::test]
async fn oauth2_tokens_revoked_early_are_renewed_after_a_401() {
    let api = Api::start(items(40)).await;
    // The server says an hour but honours 300 ms.
    api.with(|s| s.real_ttl = Duration::from_millis(300));
    let lab = lab(&api);
    let spec = spec(
        &lab,
        &api,
        "oauth_revoked",
        "/secure",
        "{auth: {type: oauth2}, pagination: {style: page}, requests_per_second: 5}",
    );
    lab.engine().run(&spec).await.unwrap();
    assert_eq!(
        ids(&lab.rows("oauth_revoked").await),
        (1..=40).collect::<Vec<_>>()
    );
    let (tokens, refused) = api.with(|s| (s.token_requests, s.unauthorized));
    assert!(
        tokens >= 2 && refused >= 1,
        "tokens {tokens}, 401s {refused}"
    );
    assert_eq!(tokens, refused + 1, "each 401 costs exactly one new token");
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried() {
    let api = Api::start(items(50)).await;
    api.with(|s| {
        s.faults
            .insert(2, [Fault::TooManyRequests { retry_after: 1 }].into());
        s.faults
            .insert(3, [Fault::ServerError(500), Fault::ServerError(503)].into());
    });
    let lab = lab(&api);
    let spec = spec(
        &lab,
        &api,
        "flaky",
        "/page",
        "{auth: {type: bearer}, pagination: {style: page, size_param: per_page, size: 10}, backoff_ms: 20, max_attempts: 3, requests_per_second: 50}",
    );
    let started = Instant::now();
    lab.engine().run(&spec).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was not honoured"
    );
    assert_eq!(ids(&lab.rows("flaky").await), (1..=50).collect::<Vec<_>>());
    let requests = api.requests("/page");
    let count = |page: &str| {
        requests
            .iter()
            .filter(|r| r.starts_with(&format!("/page?page={page}&")))
            .count()
    };
    assert_eq!(
        (count("1"), count("2"), count("3"), count("4")),
        (1, 2, 3, 1)
    );
}

#[tokio::test]
async fn a_server_that_keeps_failing_fails_the_run_after_its_attempts() {
    let api = Api::start(items(30)).await;
    api.with(|s| {
        s.faults.insert(
            2,
            std::iter::repeat_n(Fault::ServerError(502), 10).collect(),
        );
    });
    let lab = lab(&api);
    let spec = spec(
        &lab,
        &api,
        "down",
        "/page",
        "{auth: {type: bearer}, pagination: {style: page, size_param: per_page, size: 10}, backoff_ms: 10, max_attempts: 3}",
    );
    let failure = lab.engine().run(&spec).await.unwrap_err();
    let message = failure.error.to_string();
    assert!(matches!(failure.error, JobError::Http { .. }), "{message}");
    assert!(
        !failure.error.is_validation(),
        "a server outage may pass: the queue retries it"
    );
    assert!(
        message.contains("page 2")
            && message.contains("502")
            && message.contains("after 3 attempts"),
        "{message}"
    );
    assert!(lab.manifests("down").await.is_empty());
    assert!(
        lab.parquet_files().is_empty(),
        "the first page's rows must not stay behind"
    );
}

#[tokio::test]
async fn a_malformed_page_fails_the_run_and_keeps_the_previous_snapshot() {
    let api = Api::start(items(40)).await;
    let lab = lab(&api);
    let spec = spec(
        &lab,
        &api,
        "malformed",
        "/page",
        "{auth: {type: bearer}, pagination: {style: page, size_param: per_page, size: 10}}",
    );
    lab.engine().run(&spec).await.unwrap();
    let files_before = lab.parquet_files();

    for (fault, expected) in [(Fault::NotJson, "page 3 ("), (Fault::NoRecords, "page 3 (")] {
        api.with(|s| s.faults.insert(3, [fault].into()));
        let failure = lab.engine().run(&spec).await.unwrap_err();
        let message = failure.error.to_string();
        assert!(failure.error.is_validation(), "{message}");
        assert!(message.contains(expected), "{message}");
        match fault {
            Fault::NotJson => assert!(message.contains("the body is not JSON"), "{message}"),
            _ => assert!(
                message.contains("should be an array of records, found an object"),
                "{message}"
            ),
        }
    }
    assert_eq!(lab.manifests("malformed").await.len(), 1);
    assert_eq!(
        lab.parquet_files(),
        files_before,
        "no part of the failed runs is left"
    );
    assert_eq!(
        ids(&lab.rows("malformed").await),
        (1..=40).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn delta_runs_send_the_watermark_and_neither_lose_nor_repeat_rows() {
    let api = Api::start(items(10)).await;
    let lab = lab(&api);
    let spec = lab.spec(&format!(
        r#"
id: changes
source:
  format: rest
  location: {}/incremental
  rest:
    records_path: items
    pagination: {{style: page}}
    incremental: {{param: updated_since}}
mode: delta
trigger: callback
timestamp_column: updated_at
key: [id]
schema: {{updated_at: timestamp}}
allow_empty: true
"#,
        api.base
    ));
    lab.engine().run(&spec).await.unwrap();
    assert_eq!(
        api.requests("/incremental")[0],
        "/incremental?page=1",
        "no watermark yet"
    );

    // Item 11 shares item 10's time (a tie the key breaks), item 12 is later, item 3 changed.
    api.with(|s| {
        s.items.push(item(11, &minute(10)));
        s.items.push(item(12, &minute(30)));
        s.items[2] = item(3, &minute(20));
        s.requests.clear();
    });
    let second = lab.engine().run(&spec).await.unwrap();
    assert_eq!(second.manifest.rows, 3);
    let requests = api.requests("/incremental");
    assert_eq!(
        requests[0],
        format!("/incremental?page=1&updated_since={}", minute(10)),
        "the watermark's time is sent"
    );

    // Nothing new: an empty delta, and the watermark stays.
    let third = lab.engine().run(&spec).await.unwrap();
    assert_eq!(third.manifest.rows, 0);
    let rows = lab.rows("changes").await;
    let mut delivered: Vec<(u64, String)> = rows
        .iter()
        .map(|r| {
            (
                r["id"].as_u64().unwrap(),
                r["updated_at"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    delivered.sort();
    let mut expected: Vec<(u64, String)> = (1..=10).map(|i| (i, minute(i))).collect();
    expected.extend([(3, minute(20)), (11, minute(10)), (12, minute(30))]);
    expected.sort();
    let expected: Vec<(u64, String)> = expected
        .into_iter()
        .map(|(i, t)| (i, t.trim_end_matches('Z').to_owned()))
        .collect();
    assert_eq!(delivered, expected);
}

#[tokio::test]
async fn endless_pagination_stops_at_the_page_bound() {
    let api = Api::start(Vec::new()).await;
    let lab = lab(&api);
    let spec = spec(
        &lab,
        &api,
        "endless",
        "/endless",
        "{records_path: items, pagination: {style: cursor, cursor_path: next}, max_pages: 25}",
    );
    let failure = lab.engine().run(&spec).await.unwrap_err();
    let message = failure.error.to_string();
    assert!(
        message.contains("more than rest.max_pages (25) pages"),
        "{message}"
    );
    assert_eq!(api.requests("/endless").len(), 25);
    assert!(lab.manifests("endless").await.is_empty());
}

#[tokio::test]
async fn wrong_credentials_are_refused_without_repeating_them() {
    let api = Api::start(items(5)).await;
    let lab = lab(&api);
    let mut spec = spec(&lab, &api, "refused", "/page", "{auth: {type: bearer}}");
    spec.connection_id = Some("wrong".into());
    let failure = lab.engine().run(&spec).await.unwrap_err();
    let message = failure.error.to_string();
    assert!(message.contains("401"), "{message}");
    assert!(
        !message.contains("wr0ng-t0ken-value"),
        "the secret leaked: {message}"
    );
    assert_eq!(api.requests("/page").len(), 1, "a 401 is not retried");
}

#[tokio::test]
async fn preview_reads_one_page_and_shows_the_schema() {
    let api = Api::start(items(95)).await;
    let lab = lab(&api);
    let mut spec = spec(
        &lab,
        &api,
        "preview",
        "/page",
        "{auth: {type: bearer}, pagination: {style: page, size_param: per_page, size: 10}}",
    );
    spec.schema.insert("updated_at".into(), "timestamp".into());
    let preview = lab.engine().preview(&spec, 3).await.unwrap();
    assert_eq!(api.requests("/page").len(), 1, "a preview fetches one page");
    let columns: Vec<(String, String)> = preview
        .columns
        .iter()
        .map(|c| (c.name.clone(), c.data_type.clone()))
        .collect();
    assert!(
        columns.contains(&("id".into(), "Int64".into())),
        "{columns:?}"
    );
    assert!(
        columns.contains(&("updated_at".into(), "Timestamp(µs)".into()))
            || columns
                .iter()
                .any(|(n, t)| n == "updated_at" && t.starts_with("Timestamp")),
        "{columns:?}"
    );
    assert_eq!(preview.rows.len(), 3);
    assert_eq!(preview.rows[0]["name"], "item-1");
    assert!(lab.parquet_files().is_empty() && lab.manifests("preview").await.is_empty());
}
