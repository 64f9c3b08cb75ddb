//! The HTTP API: dataset configuration, the on-demand trigger, run history, health and metrics.
//! Every request but the probes and `/metrics` carries a bearer token whose role is checked, and
//! every change (and every refused attempt) is written to the audit log.

pub mod auth;
pub mod client;
mod connections;
mod dashboard;
pub mod limits;
pub mod openapi;
mod problem;
mod sql;
mod upload;
mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use carga_config::{DatasetSpec, SourceSpec, Trigger};
use carga_jobs::JobError;
use carga_jobs::access::AccessPolicy;
use carga_jobs::secrets::SecretsProvider;
use carga_jobs::storage::{Bucket, SourceObject};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use auth::{Action, Role};
use carga_scheduler::catalog::{AuditEntry, AuditRecord, Catalog, DatasetRecord, RunRecord};
use carga_scheduler::job::{ExtractionJob, RunReason};
use carga_scheduler::metrics::{Counter, Metrics};
use carga_scheduler::queue::{JobQueue, QueueStats};
use carga_scheduler::schedule::CronSchedule;
use client::TrustedProxies;
use limits::TriggerLimit;
use problem::Problem;

/// What the handlers share.
pub struct ApiState {
    pub catalog: Catalog,
    pub queue: JobQueue,
    pub metrics: Metrics,
    pub secrets: Arc<dyn SecretsProvider>,
    pub bucket: Bucket,
    /// What a spec may reach (data roots, networks, the S3 endpoint): checked when a spec is
    /// stored and when a preview opens it.
    pub access: AccessPolicy,
    /// Whose `X-Forwarded-For` names the client in the audit log.
    pub trusted_proxies: TrustedProxies,
    /// Triggers per token.
    pub trigger_limit: TriggerLimit,
    /// The engine with this process's bucket and master key: `POST /sql` queries the raw zone
    /// with it, uploads are sealed and validated with it; `None` when this process has no key.
    pub engine: Option<Arc<carga_jobs::Engine>>,
    /// Uploads a request is writing right now: a second writer is refused, not raced.
    pub(crate) uploads_in_flight: upload::InFlight,
}

/// The API's own flags, shared by `carga-scheduler serve` and `carga serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Proxies (addresses or CIDR networks, comma-separated) whose X-Forwarded-For names the
    /// client in the audit log; from anyone else the header is ignored.
    #[arg(long, env = "CARGA_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
    /// Run triggers per token per minute (bursts of up to a sixth of it, at least 1).
    #[arg(long, env = "CARGA_TRIGGERS_PER_MINUTE", default_value_t = 60)]
    pub triggers_per_minute: u32,
}

impl ApiArgs {
    /// `state` with these flags applied.
    pub fn apply(&self, state: ApiState) -> Result<ApiState, String> {
        let proxies = TrustedProxies::parse(&self.trusted_proxies)
            .map_err(|e| format!("--trusted-proxies: {e}"))?;
        let burst = (self.triggers_per_minute / 6).max(1);
        Ok(state
            .with_trusted_proxies(proxies)
            .with_trigger_limit(TriggerLimit::new(self.triggers_per_minute, burst)))
    }
}

impl ApiState {
    pub fn new(
        catalog: Catalog,
        queue: JobQueue,
        secrets: Arc<dyn SecretsProvider>,
        bucket: Bucket,
        access: AccessPolicy,
    ) -> Self {
        Self {
            catalog,
            metrics: Metrics::new(queue.clone()),
            queue,
            secrets,
            bucket,
            access,
            trusted_proxies: TrustedProxies::default(),
            trigger_limit: TriggerLimit::default(),
            engine: None,
            uploads_in_flight: upload::InFlight::default(),
        }
    }

    /// Serves `POST /sql` and `/upload/dataset` with this engine (its bucket and master key);
    /// specs may then name its uploads.
    pub fn with_engine(mut self, engine: carga_jobs::Engine) -> Self {
        self.access.uploads = engine.policy().uploads.clone();
        self.engine = Some(Arc::new(engine));
        self
    }

    pub fn with_trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.trusted_proxies = proxies;
        self
    }

    pub fn with_trigger_limit(mut self, limit: TriggerLimit) -> Self {
        self.trigger_limit = limit;
        self
    }
}

/// Every endpoint, each registered together with its OpenAPI operation (`routes!` takes the
/// method and path from the handler's `#[utoipa::path]`), so the router and the document cannot
/// disagree.
pub(crate) fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(list_datasets))
        .routes(routes!(get_dataset, put_dataset, delete_dataset))
        .routes(routes!(approve_dataset))
        .routes(routes!(enable_dataset))
        .routes(routes!(disable_dataset))
        .routes(routes!(trigger_run, dataset_runs))
        .routes(routes!(preview_dataset))
        .routes(routes!(list_runs))
        .routes(routes!(get_run, dashboard::delete_one))
        .routes(routes!(queue_stats))
        .routes(routes!(audit_log))
        .routes(routes!(sql::run))
        .merge(connections::routes())
        .merge(upload::routes())
        .merge(dashboard::routes())
        .merge(webhooks::routes())
}

pub fn router(state: Arc<ApiState>) -> Router {
    let (router, document) = routes().split_for_parts();
    router
        .fallback(problem::not_found)
        .layer(Extension(Arc::new(openapi::complete(document))))
        .layer(axum::middleware::map_response(problem::as_problem))
        .with_state(state)
}

/// The process is up (the liveness probe).
#[utoipa::path(get, path = "/healthz", tag = "service",
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok"
}

/// Serves the API until `shutdown` resolves.
pub async fn serve(
    state: Arc<ApiState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    upload::spawn_sweeper(state.clone());
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// An error answer: a status and a message for a person.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "API request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        problem::response(self.status, &self.message)
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The authenticated caller.
struct Caller {
    subject: String,
    role: Role,
    source_ip: String,
    /// The token's hash: what per-token limits count by.
    token_key: String,
}

impl Caller {
    fn audit(&self, action: &str, dataset: Option<&str>, result: &'static str) -> AuditEntry {
        AuditEntry {
            subject: self.subject.clone(),
            role: Some(self.role.as_str().into()),
            action: action.into(),
            dataset_id: dataset.map(str::to_owned),
            source_ip: Some(self.source_ip.clone()),
            result,
            detail: None,
        }
    }
}

/// Writes an audit entry with its detail (what was done or why it was refused).
async fn audit_detail(
    state: &ApiState,
    caller: &Caller,
    action: &str,
    dataset: Option<&str>,
    result: &'static str,
    detail: String,
) -> ApiResult<()> {
    let mut entry = caller.audit(action, dataset, result);
    entry.detail = Some(detail);
    state
        .catalog
        .audit(&entry)
        .await
        .map_err(ApiError::internal)
}

/// The bearer token of a request, or why there is none.
fn bearer_token(headers: &HeaderMap) -> Result<&str, &'static str> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Err("missing bearer token (Authorization: Bearer <token>)");
    };
    value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or("malformed Authorization header (expected: Bearer <token>)")
}

/// Checks the bearer token and the role. Every refusal is audited, with the caller's address.
async fn authorize(
    state: &ApiState,
    headers: &HeaderMap,
    peer: SocketAddr,
    action: Action,
    dataset: Option<&str>,
) -> ApiResult<Caller> {
    let ip = state.trusted_proxies.client_ip(headers, peer);
    let refusal = |subject: &str, why: &str| AuditEntry {
        subject: subject.into(),
        role: None,
        action: action.as_str().into(),
        dataset_id: dataset.map(str::to_owned),
        source_ip: Some(ip.clone()),
        result: "denied",
        detail: Some(why.to_owned()),
    };
    let token = match bearer_token(headers) {
        Ok(token) => token,
        Err(why) => {
            state
                .catalog
                .audit(&refusal("anonymous", why))
                .await
                .map_err(ApiError::internal)?;
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, why));
        }
    };
    let found = state
        .catalog
        .token(token)
        .await
        .map_err(ApiError::internal)?;
    let Some((subject, role)) = found else {
        let why = "unknown or revoked token";
        state
            .catalog
            .audit(&refusal("unknown", why))
            .await
            .map_err(ApiError::internal)?;
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, why));
    };
    let role = Role::parse(&role).ok_or_else(|| ApiError::internal("token with unknown role"))?;
    let caller = Caller {
        subject,
        role,
        source_ip: ip,
        token_key: carga_scheduler::catalog::token_hash(token),
    };
    if !action.allows(role) {
        let mut entry = caller.audit(action.as_str(), dataset, "denied");
        entry.detail = Some(format!(
            "role '{}' may not {}",
            role.as_str(),
            action.as_str()
        ));
        state
            .catalog
            .audit(&entry)
            .await
            .map_err(ApiError::internal)?;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("role '{}' may not {}", role.as_str(), action.as_str()),
        ));
    }
    Ok(caller)
}

/// Ready when the catalog, the queue and the object store all answer.
#[utoipa::path(get, path = "/readyz", tag = "service",
    responses(
        (status = 200, description = "Each component's state: `ok`", body = Object,
         example = json!({"catalog": "ok", "queue": "ok", "object_store": "ok"})),
        (status = 503, description = "A component does not answer; its error is its state", body = Object),
    ))]
async fn readyz(State(state): State<Arc<ApiState>>) -> Response {
    let catalog = state.catalog.ping().await.map_err(|e| e.to_string());
    let queue = state.queue.ping().await.map_err(|e| e.to_string());
    let store = state
        .bucket
        .store
        .head(&state.bucket.path("_carga_readyz"))
        .await;
    let store = match store {
        Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.to_string()),
    };
    let describe = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.clone(),
    };
    let body = json!({
        "catalog": describe(&catalog),
        "queue": describe(&queue),
        "object_store": describe(&store),
    });
    let status = if catalog.is_ok() && queue.is_ok() && store.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// The cluster-wide counters, the run-duration histogram and the queue, for Prometheus.
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "OpenMetrics text exposition (Prometheus scrapes it)", body = String,
               content_type = "application/openmetrics-text")))]
async fn metrics(State(state): State<Arc<ApiState>>) -> ApiResult<Response> {
    let stats = state.queue.stats().await.map_err(ApiError::internal)?;
    let outbox = state
        .catalog
        .outbox_counts()
        .await
        .map_err(ApiError::internal)?;
    let text = state
        .metrics
        .render(&stats, &outbox)
        .await
        .map_err(ApiError::internal)?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            carga_scheduler::metrics::CONTENT_TYPE,
        )],
        text,
    )
        .into_response())
}

/// Every dataset in the catalog.
#[utoipa::path(get, path = "/datasets", tag = "datasets",
    responses((status = 200, description = "The datasets", body = [DatasetRecord])))]
async fn list_datasets(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    authorize(&state, &headers, peer, Action::Read, None).await?;
    let datasets = state.catalog.datasets().await.map_err(ApiError::internal)?;
    Ok(Json(datasets).into_response())
}

/// One dataset, with its next scheduled fire (`next_fire`) when it runs on a cron.
#[utoipa::path(get, path = "/datasets/{id}", tag = "datasets", params(("id" = String, Path, description = "The dataset's id")),
    responses(
        (status = 200, description = "The dataset, and `next_fire` (RFC 3339 or null)", body = DatasetRecord),
        (status = 404, description = "No such dataset", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_dataset(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &headers, peer, Action::Read, Some(&id)).await?;
    let dataset = state
        .catalog
        .dataset(&id)
        .await
        .map_err(ApiError::internal)?;
    let dataset = dataset.ok_or_else(|| not_found(&id))?;
    let next_fire = (dataset.spec.trigger == Trigger::TimedPull && dataset.is_runnable())
        .then(|| {
            CronSchedule::parse(
                dataset.spec.cron.as_deref().unwrap_or_default(),
                dataset.spec.time_zone.as_deref(),
            )
            .ok()
            .and_then(|s| s.next_after(chrono::Utc::now()))
        })
        .flatten();
    let mut body = serde_json::to_value(&dataset).map_err(ApiError::internal)?;
    body["next_fire"] = json!(next_fire);
    Ok(Json(body).into_response())
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no dataset '{id}'"))
}

/// Creates or replaces a dataset's configuration after validating it; an editor's change waits
/// for an approver, an admin's is approved at once.
#[utoipa::path(put, path = "/datasets/{id}", tag = "datasets", params(("id" = String, Path, description = "The dataset's id")),
    request_body(content = String, content_type = "application/yaml",
                 description = "The dataset's spec in YAML (JSON is YAML too); its `id` must be the path's"),
    responses(
        (status = 200, description = "Stored: the new version (waiting for approval unless an admin stored it)", body = DatasetRecord),
        (status = 403, description = "The role may not, or the spec reaches outside the data roots (audited)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The spec is not valid; the detail names the field", body = Problem, content_type = "application/problem+json"),
    ))]
async fn put_dataset(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let caller = authorize(&state, &headers, peer, Action::WriteConfig, Some(&id)).await?;
    let checked = match validate_spec(&state, &id, &body).await {
        Ok(spec) => {
            let location = spec.source.location().unwrap_or_default();
            match upload::check_use(&state, &caller, location).await {
                Ok(()) => Ok(spec),
                Err(why) => Err(SpecProblem::Invalid(format!("dataset '{id}': {why}"))),
            }
        }
        Err(problem) => Err(problem),
    };
    let spec = match checked {
        Ok(spec) => spec,
        Err(problem) => {
            let mut entry = caller.audit("write_config", Some(&id), problem.audit_result());
            entry.detail = Some(problem.to_string());
            state
                .catalog
                .audit(&entry)
                .await
                .map_err(ApiError::internal)?;
            return Err(ApiError::new(problem.status(), problem.to_string()));
        }
    };
    let record = state
        .catalog
        .upsert_dataset(&spec, &caller.subject, caller.role == Role::Admin)
        .await
        .map_err(ApiError::internal)?;
    let mut entry = caller.audit("write_config", Some(&id), "ok");
    entry.detail = Some(format!("version {}", record.version));
    state
        .catalog
        .audit(&entry)
        .await
        .map_err(ApiError::internal)?;
    Ok((StatusCode::OK, Json(record)).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PreviewQuery {
    /// Rows to read (10 by default, 1 to 100).
    rows: Option<usize>,
}

/// Test connection: reads a few rows of the spec in the body (a draft), or of the stored spec
/// when the body is empty. Audited, since it opens the source with the connection's credentials.
#[utoipa::path(post, path = "/datasets/{id}/preview", tag = "datasets", params(("id" = String, Path, description = "The dataset's id"), PreviewQuery),
    request_body(content = Option<String>, content_type = "application/yaml",
                 description = "A draft spec to try; empty to preview the stored one"),
    responses(
        (status = 200, description = "The first rows and the columns' types", body = Object),
        (status = 404, description = "No such dataset (and no draft in the body)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The spec or the data is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The source could not be reached or refused the connection", body = Problem, content_type = "application/problem+json"),
    ))]
async fn preview_dataset(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<PreviewQuery>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let caller = authorize(&state, &headers, peer, Action::Preview, Some(&id)).await?;
    let checked = if body.iter().all(u8::is_ascii_whitespace) {
        match state
            .catalog
            .dataset(&id)
            .await
            .map_err(ApiError::internal)?
        {
            // A stored spec is checked again: the roots may have narrowed since it was stored.
            Some(record) => check_spec(state.secrets.as_ref(), &state.access, &record.spec)
                .await
                .map(|()| record.spec),
            None => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no dataset '{id}'"),
                ));
            }
        }
    } else {
        validate_spec(&state, &id, &body).await
    };
    let spec = match checked {
        Ok(spec) => spec,
        Err(problem) => {
            let mut entry = caller.audit("preview", Some(&id), problem.audit_result());
            entry.detail = Some(problem.to_string());
            state
                .catalog
                .audit(&entry)
                .await
                .map_err(ApiError::internal)?;
            return Err(ApiError::new(problem.status(), problem.to_string()));
        }
    };
    let rows = query.rows.unwrap_or(10).clamp(1, 100);
    let result =
        carga_jobs::preview::preview(&spec, &state.access, state.secrets.as_ref(), rows).await;
    let (status, result_name) = match &result {
        Ok(_) => (StatusCode::OK, "ok"),
        Err(JobError::Denied { .. }) => (StatusCode::FORBIDDEN, "denied"),
        Err(e) if e.is_validation() => (StatusCode::UNPROCESSABLE_ENTITY, "error"),
        // The source could not be reached or refused us.
        Err(_) => (StatusCode::BAD_GATEWAY, "error"),
    };
    let mut entry = caller.audit("preview", Some(&id), result_name);
    entry.detail = result.as_ref().err().map(|e| e.to_string());
    state
        .catalog
        .audit(&entry)
        .await
        .map_err(ApiError::internal)?;
    match result {
        Ok(preview) => Ok(Json(preview).into_response()),
        Err(e) => Err(ApiError::new(status, e.to_string())),
    }
}

/// Puts an on-demand job on the queue: the run row first, so a worker that takes the job at once
/// finds it; then the task; then the counter.
async fn enqueue_now(state: &ApiState, job: &ExtractionJob) -> ApiResult<()> {
    state
        .catalog
        .insert_queued_runs(std::slice::from_ref(job))
        .await
        .map_err(ApiError::internal)?;
    state
        .queue
        .enqueue(std::slice::from_ref(job))
        .await
        .map_err(ApiError::internal)?;
    state.metrics.add(Counter::JobsEnqueued, 1).await;
    Ok(())
}

/// Why a configuration was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpecProblem {
    /// It does not parse or breaks a rule (422).
    #[error("{0}")]
    Invalid(String),
    /// It names something this installation may not reach (403; audited as denied).
    #[error("{message}")]
    Denied { rule: &'static str, message: String },
}

impl SpecProblem {
    fn status(&self) -> StatusCode {
        match self {
            SpecProblem::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            SpecProblem::Denied { .. } => StatusCode::FORBIDDEN,
        }
    }

    fn audit_result(&self) -> &'static str {
        match self {
            SpecProblem::Invalid(_) => "rejected",
            SpecProblem::Denied { .. } => "denied",
        }
    }
}

/// The checks a configuration must pass: it parses (JSON or YAML), names the dataset in the
/// path, and passes `check_spec`.
async fn validate_spec(
    state: &ApiState,
    id: &str,
    body: &[u8],
) -> Result<DatasetSpec, SpecProblem> {
    let invalid = SpecProblem::Invalid;
    let text = std::str::from_utf8(body).map_err(|_| invalid("body is not UTF-8".to_owned()))?;
    let spec: DatasetSpec = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| invalid(format!("dataset spec: {e}")))?
    } else {
        // Validated below, once its format is known to be one the workers read.
        DatasetSpec::parse_yaml(text).map_err(|e| invalid(e.to_string()))?
    };
    if spec.id != id {
        return Err(invalid(format!(
            "the spec's id '{}' differs from the dataset in the path '{id}'",
            spec.id
        )));
    }
    check_spec(state.secrets.as_ref(), &state.access, &spec).await?;
    Ok(spec)
}

/// The checks on a parsed configuration: the spec's own rules (delta needs timestamp and key,
/// ...), a valid cron and time zone, a connection the secrets provider knows, a source this
/// installation may reach, and credentials sent only to the hosts their connection names.
pub async fn check_spec(
    secrets: &dyn SecretsProvider,
    access: &AccessPolicy,
    spec: &DatasetSpec,
) -> Result<(), SpecProblem> {
    let invalid = SpecProblem::Invalid;
    let id = &spec.id;
    if spec.id.contains('/') {
        return Err(invalid(
            "a configured dataset id may not contain '/'".into(),
        ));
    }
    // The workers read the built-in formats (a program embedding Carga with its own sources
    // runs its own API).
    carga_jobs::sources::SourceRegistry::default()
        .check_format(spec)
        .map_err(|e| invalid(e.to_string()))?;
    spec.validate().map_err(|e| invalid(e.to_string()))?;
    if spec.trigger == Trigger::TimedPull {
        let cron = spec.cron.as_deref().unwrap_or_default();
        CronSchedule::parse(cron, spec.time_zone.as_deref())
            .map_err(|e| invalid(format!("dataset '{id}': {e}")))?;
    } else if let Some(zone) = &spec.time_zone {
        CronSchedule::parse("0 0 * * *", Some(zone))
            .map_err(|e| invalid(format!("dataset '{id}': {e}")))?;
    }
    if spec.source.is_database() && spec.connection_id.is_none() {
        return Err(invalid(format!(
            "dataset '{id}': a database source needs `connection_id`"
        )));
    }
    let secret = match &spec.connection_id {
        None => None,
        // The provider's message may say why (missing, access denied); it never holds a value.
        Some(connection) => Some(secrets.connection(connection).await.map_err(|e| {
            invalid(format!(
                "dataset '{id}': unknown connection id '{connection}' ({e})"
            ))
        })?),
    };
    let denied = |rule: &'static str, message: String| SpecProblem::Denied {
        rule,
        message: format!("dataset '{id}': {message}"),
    };
    match &spec.source {
        SourceSpec::Rest(rest) => {
            let url = url::Url::parse(&rest.location)
                .map_err(|e| invalid(format!("dataset '{id}': source.location: {e}")))?;
            access.network.check_url(&url).map_err(|why| {
                denied(
                    "private network",
                    format!("{why}, which this installation may not reach"),
                )
            })?;
            if let Some(secret) = secret
                .as_ref()
                .filter(|_| rest.rest.auth != carga_config::RestAuth::None)
                && !secret.may_send_to(&url)
            {
                return Err(denied(
                    "outbound policy",
                    format!(
                        "connection '{}' may not send its credentials to {} (the secret's allowed_hosts names where they may go)",
                        secret.id(),
                        url.host_str().unwrap_or_default()
                    ),
                ));
            }
        }
        // Databases and registered sources have no file to check here.
        other => {
            if let Some(location) = other.location() {
                match SourceObject::resolve(location, access) {
                    Ok(_) => {}
                    Err(JobError::Denied { rule, message }) => return Err(denied(rule, message)),
                    Err(e) => return Err(invalid(format!("dataset '{id}': {e}"))),
                }
            }
        }
    }
    Ok(())
}

async fn change(
    state: &ApiState,
    peer: SocketAddr,
    headers: &HeaderMap,
    id: &str,
    action: Action,
    name: &str,
) -> ApiResult<Response> {
    let caller = authorize(state, headers, peer, action, Some(id)).await?;
    let record = match name {
        "approve" => state.catalog.approve(id, &caller.subject).await,
        "enable" => state.catalog.set_enabled(id, true, &caller.subject).await,
        _ => state.catalog.set_enabled(id, false, &caller.subject).await,
    }
    .map_err(ApiError::internal)?;
    let Some(record) = record else {
        state
            .catalog
            .audit(&caller.audit(name, Some(id), "rejected"))
            .await
            .map_err(ApiError::internal)?;
        return Err(not_found(id));
    };
    state
        .catalog
        .audit(&caller.audit(name, Some(id), "ok"))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(record).into_response())
}

/// Approves the dataset's waiting change (approver or admin).
#[utoipa::path(post, path = "/datasets/{id}/approve", tag = "datasets", params(("id" = String, Path, description = "The dataset's id")),
    responses(
        (status = 200, description = "Approved", body = DatasetRecord),
        (status = 404, description = "No such dataset", body = Problem, content_type = "application/problem+json"),
    ))]
async fn approve_dataset(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    change(&state, peer, &headers, &id, Action::Approve, "approve").await
}

/// Lets the scheduler and the trigger run the dataset again.
#[utoipa::path(post, path = "/datasets/{id}/enable", tag = "datasets", params(("id" = String, Path, description = "The dataset's id")),
    responses(
        (status = 200, description = "Enabled", body = DatasetRecord),
        (status = 404, description = "No such dataset", body = Problem, content_type = "application/problem+json"),
    ))]
async fn enable_dataset(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    change(&state, peer, &headers, &id, Action::WriteConfig, "enable").await
}

/// Stops the dataset's cron and refuses its triggers until it is enabled.
#[utoipa::path(post, path = "/datasets/{id}/disable", tag = "datasets", params(("id" = String, Path, description = "The dataset's id")),
    responses(
        (status = 200, description = "Disabled", body = DatasetRecord),
        (status = 404, description = "No such dataset", body = Problem, content_type = "application/problem+json"),
    ))]
async fn disable_dataset(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    change(&state, peer, &headers, &id, Action::WriteConfig, "disable").await
}

/// Deletes the dataset's configuration (its data in the raw zone stays).
#[utoipa::path(delete, path = "/datasets/{id}", tag = "datasets", params(("id" = String, Path, description = "The dataset's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such dataset", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_dataset(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let caller = authorize(&state, &headers, peer, Action::Delete, Some(&id)).await?;
    let deleted = state
        .catalog
        .delete_dataset(&id)
        .await
        .map_err(ApiError::internal)?;
    let result = if deleted { "ok" } else { "rejected" };
    state
        .catalog
        .audit(&caller.audit("delete", Some(&id), result))
        .await
        .map_err(ApiError::internal)?;
    if !deleted {
        return Err(not_found(&id));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct TriggerQuery {
    /// Enqueue a new run even when one is already waiting.
    #[serde(default)]
    force: bool,
}

/// How long concurrent triggers of one dataset wait for each other (they are serialised so that
/// only one of them enqueues).
const TRIGGER_LOCK_WAIT: Duration = Duration::from_secs(5);
const TRIGGER_LOCK_TTL: Duration = Duration::from_secs(15);

/// The on-demand ("callback") trigger: enqueues a run now and returns its id (202), or, when the
/// dataset already has a run waiting in the queue, returns that one (200) unless `?force=true`.
/// Each token may trigger a limited number of times a minute (429 with `Retry-After` beyond).
#[utoipa::path(post, path = "/datasets/{id}/runs", tag = "datasets", params(("id" = String, Path, description = "The dataset's id"), TriggerQuery),
    responses(
        (status = 202, description = "A new run was enqueued", body = TriggerAnswer),
        (status = 200, description = "A run of the dataset was already waiting; no new run", body = TriggerAnswer),
        (status = 404, description = "No such dataset", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The dataset is disabled or has a change waiting for approval", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many triggers from this token; `Retry-After` says when", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Another request is triggering the dataset; try again", body = Problem, content_type = "application/problem+json"),
    ))]
async fn trigger_run(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<TriggerQuery>,
) -> ApiResult<Response> {
    let caller = authorize(&state, &headers, peer, Action::Trigger, Some(&id)).await?;
    if let Err(wait) = state.trigger_limit.check(&caller.token_key) {
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut entry = caller.audit("trigger", Some(&id), "denied");
        entry.detail = Some(format!("rate limited; retry after {seconds} s"));
        state
            .catalog
            .audit(&entry)
            .await
            .map_err(ApiError::internal)?;
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many triggers from this token; retry after {seconds} s"),
        )
        .into_response();
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from(seconds),
        );
        return Ok(response);
    }
    let dataset = state
        .catalog
        .dataset(&id)
        .await
        .map_err(ApiError::internal)?;
    let refusal = match &dataset {
        None => Some((StatusCode::NOT_FOUND, format!("no dataset '{id}'"))),
        Some(d) if !d.enabled => {
            Some((StatusCode::CONFLICT, format!("dataset '{id}' is disabled")))
        }
        Some(d) if !d.approved => Some((
            StatusCode::CONFLICT,
            format!("dataset '{id}' has changes waiting for approval"),
        )),
        Some(_) => None,
    };
    if let Some((status, message)) = refusal {
        let mut entry = caller.audit("trigger", Some(&id), "rejected");
        entry.detail = Some(message.clone());
        state
            .catalog
            .audit(&entry)
            .await
            .map_err(ApiError::internal)?;
        return Err(ApiError::new(status, message));
    }
    let lock = TriggerLock::take(&state.queue, &id).await?;
    let waiting = if query.force {
        Ok(None)
    } else {
        waiting_run(&state, &id).await
    };
    let result = match waiting {
        Ok(Some(run_id)) => Ok((run_id, false)),
        Ok(None) => {
            let mut job = ExtractionJob::new(&id, RunReason::Trigger);
            job.requested_by = Some(caller.subject.clone());
            enqueue_now(&state, &job).await.map(|()| (job.run_id, true))
        }
        Err(e) => Err(e),
    };
    lock.release(&state.queue).await;
    let (run_id, new) = result?;
    let mut entry = caller.audit("trigger", Some(&id), "ok");
    entry.detail = Some(if new {
        format!("run {run_id}")
    } else {
        format!("run {run_id} was already queued; no new run")
    });
    state
        .catalog
        .audit(&entry)
        .await
        .map_err(ApiError::internal)?;
    let status = if new {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let answer = TriggerAnswer {
        run_id,
        dataset_id: id,
        state: "queued",
        new,
    };
    Ok((status, Json(answer)).into_response())
}

/// What a trigger answers: the run that will do the work.
#[derive(Debug, Serialize, ToSchema)]
struct TriggerAnswer {
    run_id: String,
    dataset_id: String,
    /// Always `queued`: the run waits for a worker.
    #[schema(value_type = String, example = "queued")]
    state: &'static str,
    /// `false` when the run was already waiting and no new one was enqueued.
    new: bool,
}

/// The dataset's run still waiting for its first attempt, if the queue still holds it. A run the
/// catalog says is queued but the queue lost (a Redis that kept nothing across a restart) is
/// ended as dead with the reason, so it cannot hold every later trigger back.
async fn waiting_run(state: &ApiState, id: &str) -> ApiResult<Option<String>> {
    let Some(run_id) = state
        .catalog
        .queued_run(id)
        .await
        .map_err(ApiError::internal)?
    else {
        return Ok(None);
    };
    if state
        .queue
        .contains(&run_id)
        .await
        .map_err(ApiError::internal)?
    {
        return Ok(Some(run_id));
    }
    let lost = carga_scheduler::catalog::RunResult {
        state: "dead",
        error: Some("the queue no longer holds this run (lost in a queue restart)".into()),
        ..Default::default()
    };
    state
        .catalog
        .run_finished(&run_id, 0, &lost)
        .await
        .map_err(ApiError::internal)?;
    Ok(None)
}

/// Serialises the triggers of one dataset across API replicas (a lock where the queue keeps its
/// state), so that of many simultaneous triggers one enqueues and the others find its run.
struct TriggerLock {
    key: String,
    token: String,
}

impl TriggerLock {
    async fn take(queue: &JobQueue, dataset: &str) -> ApiResult<Self> {
        let key = format!("lock:trigger:{dataset}");
        let token = uuid::Uuid::now_v7().to_string();
        let deadline = tokio::time::Instant::now() + TRIGGER_LOCK_WAIT;
        loop {
            if queue
                .try_lock(&key, &token, TRIGGER_LOCK_TTL)
                .await
                .map_err(ApiError::internal)?
            {
                return Ok(Self { key, token });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("dataset '{dataset}' is being triggered by another request; try again"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn release(self, queue: &JobQueue) {
        if let Err(e) = queue.release_lock(&self.key, &self.token).await {
            tracing::warn!(key = %self.key, error = %e, "trigger lock not released; it expires on its own");
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct RunFilter {
    /// Only this dataset's runs.
    dataset: Option<String>,
    /// Only runs in this state (`queued`, `running`, `retrying`, `succeeded`, `failed`, `dead`, ...).
    state: Option<String>,
    /// Runs at most (100 by default, 1,000 at most).
    limit: Option<i64>,
    /// A part of the dataset id.
    q: Option<String>,
    /// Enqueued at or after: RFC 3339 or a date (`2026-11-22`, from midnight UTC).
    since: Option<String>,
    /// Enqueued before: RFC 3339 or a date (that whole day included).
    until: Option<String>,
}

/// A filter time: RFC 3339, or a date (`end`: the day after it, so the day is included).
fn filter_time(text: Option<&str>, end: bool) -> ApiResult<Option<chrono::DateTime<chrono::Utc>>> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(Some(t.with_timezone(&chrono::Utc)));
    }
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("'{text}' is neither a date (2026-11-22) nor an RFC 3339 time"),
        )
    })?;
    let date = if end {
        date.succ_opt().unwrap_or(date)
    } else {
        date
    };
    Ok(Some(date.and_hms_opt(0, 0, 0).expect("midnight").and_utc()))
}

/// What a role that may not see data values is shown instead of a watermark.
const SEALED_VALUE: &str = "(sealed: approvers and admins see it)";

/// Run history as `role` may see it: watermarks are values from the data (a timestamp and a
/// key), shown only to the roles that may query the data (approver, admin), as in the raw zone.
pub(crate) fn visible_runs(role: Role, mut runs: Vec<RunRecord>) -> Vec<RunRecord> {
    if !Action::Sql.allows(role) {
        for run in &mut runs {
            for watermark in [&mut run.watermark_before, &mut run.watermark_after] {
                if watermark.is_some() {
                    *watermark = Some(SEALED_VALUE.to_owned());
                }
            }
        }
    }
    runs
}

/// The dataset's runs, newest first (watermarks sealed for viewers and editors).
#[utoipa::path(get, path = "/datasets/{id}/runs", tag = "datasets", params(("id" = String, Path, description = "The dataset's id"), RunFilter),
    responses((status = 200, description = "The runs", body = [RunRecord])))]
async fn dataset_runs(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(filter): Query<RunFilter>,
) -> ApiResult<Response> {
    let caller = authorize(&state, &headers, peer, Action::Read, Some(&id)).await?;
    let limit = filter.limit.unwrap_or(100).clamp(1, 1000);
    let runs = state
        .catalog
        .runs(Some(&id), filter.state.as_deref(), limit)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(visible_runs(caller.role, runs)).into_response())
}

/// Run history across datasets, newest first (watermarks sealed for viewers and editors).
#[utoipa::path(get, path = "/runs", tag = "runs", params(RunFilter),
    responses(
        (status = 200, description = "The runs", body = [RunRecord]),
        (status = 400, description = "A filter that does not parse", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_runs(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(filter): Query<RunFilter>,
) -> ApiResult<Response> {
    let caller = authorize(&state, &headers, peer, Action::Read, None).await?;
    let search = carga_scheduler::catalog::RunFilter {
        dataset_id: filter.dataset.clone().filter(|d| !d.is_empty()),
        state: filter.state.clone().filter(|s| !s.is_empty()),
        search: filter.q.clone().filter(|q| !q.is_empty()),
        since: filter_time(filter.since.as_deref(), false)?,
        until: filter_time(filter.until.as_deref(), true)?,
        limit: filter.limit.unwrap_or(100).clamp(1, 1000),
    };
    let runs = state
        .catalog
        .search_runs(&search)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(visible_runs(caller.role, runs)).into_response())
}

/// One run, with its live progress while it runs.
#[utoipa::path(get, path = "/runs/{run_id}", tag = "runs", params(("run_id" = String, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The run", body = RunRecord),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_run(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> ApiResult<Response> {
    let caller = authorize(&state, &headers, peer, Action::Read, None).await?;
    let run = state
        .catalog
        .run(&run_id)
        .await
        .map_err(ApiError::internal)?;
    let run =
        run.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no run '{run_id}'")))?;
    Ok(Json(visible_runs(caller.role, vec![run]).pop()).into_response())
}

/// Jobs queued, scheduled (delayed or retrying), running and dead, and live workers.
#[utoipa::path(get, path = "/queue", tag = "runs",
    responses((status = 200, description = "The queue's counts", body = QueueStats)))]
async fn queue_stats(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    authorize(&state, &headers, peer, Action::Read, None).await?;
    let stats = state.queue.stats().await.map_err(ApiError::internal)?;
    Ok(Json(stats).into_response())
}

/// The audit log, newest first (admins).
#[utoipa::path(get, path = "/audit", tag = "dashboard",
    params(
        ("dataset" = Option<String>, Query, description = "Only this dataset's entries"),
        ("limit" = Option<i64>, Query, description = "Entries at most (100 by default, 1,000 at most)"),
    ),
    responses((status = 200, description = "The entries", body = [AuditRecord])))]
async fn audit_log(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(filter): Query<RunFilter>,
) -> ApiResult<Response> {
    authorize(&state, &headers, peer, Action::ReadAudit, None).await?;
    let limit = filter.limit.unwrap_or(100).clamp(1, 1000);
    let entries = state
        .catalog
        .audit_log(filter.dataset.as_deref(), limit)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(entries).into_response())
}
