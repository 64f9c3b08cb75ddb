//! Webhook subscriptions (the seed's WebhookNotificationHandler) and their delivery log.
//!
//! An admin subscribes a URL to events (`upload_success`, `validation_failed`,
//! `extraction_failed`, `run_succeeded`) of one dataset or of all, with a shared secret that
//! signs every delivery (HMAC-SHA256, `Carga-Signature`). The secret goes to the secrets provider
//! (`webhooks/<id>`, as connections' credentials do) and is never shown again, in an answer, the
//! log, the catalog or the audit. Deliveries come from the outbox relay, with
//! retries and backoff; approvers and admins read the log.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use carga_scheduler::catalog::{DeliveryRecord, WEBHOOK_EVENTS, WebhookRecord, WebhookSpec};
use carga_scheduler::webhook::{SECRET_FIELD, secret_name};
use serde::Deserialize;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Action;
use crate::problem::Problem;
use crate::{ApiError, ApiResult, ApiState, audit_detail, authorize};

/// The shortest secret accepted: a signature is only as strong as its key.
const MIN_SECRET_CHARS: usize = 16;

pub(crate) fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(put, delete))
        .routes(routes!(deliveries))
}

/// A subscription as written (the secret only ever goes this way).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct WebhookBody {
    /// Where deliveries are POSTed: http(s), no user or password in it, an address this
    /// service may reach (`sources.allow_private_networks` for private ones).
    url: String,
    /// Some of `upload_success`, `validation_failed`, `extraction_failed`, `run_succeeded`.
    events: Vec<String>,
    /// One dataset's events; absent or null for every dataset's.
    #[serde(default)]
    dataset_id: Option<String>,
    /// The HMAC-SHA256 key of `Carga-Signature` (16 characters at least); never shown again.
    secret: String,
    #[serde(default = "enabled")]
    enabled: bool,
}

fn enabled() -> bool {
    true
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct DeliveryFilter {
    /// Only this subscription's deliveries.
    webhook: Option<String>,
    /// Only this dataset's.
    dataset: Option<String>,
    /// Deliveries at most (100 by default, 1,000 at most).
    limit: Option<i64>,
}

/// The subscriptions (never their secrets).
#[utoipa::path(get, path = "/webhooks", tag = "webhooks",
    responses((status = 200, description = "The subscriptions", body = [WebhookRecord])))]
async fn list(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    authorize(&state, &headers, peer, Action::ReadWebhooks, None).await?;
    let records = state.catalog.webhooks().await.map_err(ApiError::internal)?;
    Ok(Json(records).into_response())
}

/// Creates or replaces a subscription (admins).
#[utoipa::path(put, path = "/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "The subscription's id")),
    request_body(content = WebhookBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored (the secret is not in the answer)", body = WebhookRecord),
        (status = 422, description = "Not a valid subscription; the detail says which field", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The secrets provider refused the secret", body = Problem, content_type = "application/problem+json"),
    ))]
async fn put(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    const ACTION: &str = "put_webhook";
    let caller = authorize(&state, &headers, peer, Action::ManageWebhooks, None).await?;
    let (spec, secret) = match parse(&state, &id, &body) {
        Ok(parsed) => parsed,
        Err(why) => {
            let message = format!("webhook '{id}': {why}");
            audit_detail(&state, &caller, ACTION, None, "rejected", message.clone()).await?;
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message));
        }
    };
    // The secret first: a subscription is never in the catalog without the key to sign with.
    let fields = BTreeMap::from([(SECRET_FIELD.to_owned(), Value::String(secret))]);
    state
        .secrets
        .store(&secret_name(&id), &fields, true)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
    let record = state
        .catalog
        .put_webhook(&id, &spec, &caller.subject)
        .await
        .map_err(ApiError::internal)?;
    let detail = format!(
        "webhook '{id}': {} for {} of {}",
        host_of(&record.url),
        record.events.join(", "),
        record.dataset_id.as_deref().unwrap_or("every dataset")
    );
    audit_detail(&state, &caller, ACTION, None, "ok", detail).await?;
    Ok(Json(record).into_response())
}

/// Deletes a subscription (admins); its deliveries still pending end as failed.
#[utoipa::path(delete, path = "/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "The subscription's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    const ACTION: &str = "delete_webhook";
    let caller = authorize(&state, &headers, peer, Action::ManageWebhooks, None).await?;
    let deleted = state
        .catalog
        .delete_webhook(&id)
        .await
        .map_err(ApiError::internal)?;
    if deleted && let Err(e) = state.secrets.remove(&secret_name(&id)).await {
        tracing::warn!(webhook = %id, error = %e, "webhook secret not removed from the secrets provider");
    }
    let result = if deleted { "ok" } else { "rejected" };
    audit_detail(
        &state,
        &caller,
        ACTION,
        None,
        result,
        format!("webhook '{id}'"),
    )
    .await?;
    if !deleted {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no webhook '{id}'"),
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The delivery log, newest first: state, attempts, the last HTTP status or error.
#[utoipa::path(get, path = "/webhooks/deliveries", tag = "webhooks", params(DeliveryFilter),
    responses((status = 200, description = "The deliveries", body = [DeliveryRecord])))]
async fn deliveries(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(filter): Query<DeliveryFilter>,
) -> ApiResult<Response> {
    authorize(&state, &headers, peer, Action::ReadWebhooks, None).await?;
    let records = state
        .catalog
        .deliveries(
            filter.webhook.as_deref().filter(|w| !w.is_empty()),
            filter.dataset.as_deref().filter(|d| !d.is_empty()),
            filter.limit.unwrap_or(100).clamp(1, 1000),
        )
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(records).into_response())
}

/// The body as a subscription and its secret, or what is wrong with it; never quotes the secret.
fn parse(state: &ApiState, id: &str, body: &[u8]) -> Result<(WebhookSpec, String), String> {
    if id.is_empty()
        || id.len() > 100
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("the id must be 1 to 100 letters, digits, '-', '_' or '.'".into());
    }
    // serde's messages can quote the value that did not fit, which may be the secret.
    let body: WebhookBody = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the body must be {{\"url\", \"events\", \"secret\", \"dataset_id\"?, \"enabled\"?}} (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    let url = url::Url::parse(&body.url).map_err(|e| format!("url: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("url: must be http or https".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("url: must not hold a user or password (the signature authenticates)".into());
    }
    state
        .access
        .network
        .check_url(&url)
        .map_err(|why| format!("url: {why}, which this service may not reach"))?;
    if body.events.is_empty() {
        return Err(format!(
            "events: name one or more of {}",
            WEBHOOK_EVENTS.join(", ")
        ));
    }
    if let Some(unknown) = body
        .events
        .iter()
        .find(|e| !WEBHOOK_EVENTS.contains(&e.as_str()))
    {
        return Err(format!(
            "events: '{unknown}' is not one of {}",
            WEBHOOK_EVENTS.join(", ")
        ));
    }
    if body.secret.chars().count() < MIN_SECRET_CHARS {
        return Err(format!("secret: {MIN_SECRET_CHARS} characters at least"));
    }
    let mut events = body.events;
    events.sort();
    events.dedup();
    let spec = WebhookSpec {
        url: url.to_string(),
        dataset_id: body.dataset_id.filter(|d| !d.is_empty()),
        events,
        enabled: body.enabled,
    };
    Ok((spec, body.secret))
}

/// What the audit log names of a URL: its host, never its path or query.
fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default()
}
