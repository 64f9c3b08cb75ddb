//! The connection store (the seed's security-service `/security/store`): connections are written
//! once and never read back. The values go to the secrets provider (AWS Secrets Manager, or the
//! local secrets file in embedded mode); the catalog keeps what may be shown (kind, hosts, field
//! names, owner, who changed it). There is no `/security/retrieve`: only the workers and the test
//! call read a connection, inside the process.
//!
//! A PUT replaces every field (there is no merge), so nobody can point a stored password at a new
//! host without giving the password again. An editor writes and deletes only the connections they
//! created; an admin any. Every write, test, deletion and refusal is audited, with field names and
//! never a value.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use carga_jobs::connections::{self, ConnectionKind, ConnectionProfile};
use carga_jobs::secrets::Stored;
use carga_scheduler::catalog::ConnectionRecord;
use serde_json::{Value, json};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Action, Role};
use crate::problem::Problem;
use crate::{ApiError, ApiResult, ApiState, Caller, audit_detail, authorize};

pub(crate) fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(show, put, delete_connection))
        .routes(routes!(test))
        .routes(routes!(security_store))
}

/// The connections in the store, as `GET /connections` answers.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // describes the answer in the OpenAPI document only
struct ConnectionList {
    connections: Vec<ConnectionRecord>,
}

/// A connection as a body, as `parse_body` reads it (described here for the OpenAPI document;
/// the body is parsed by hand so that no error can quote a value).
#[derive(utoipa::ToSchema)]
#[schema(as = ConnectionBody)]
#[allow(dead_code)] // describes the body in the OpenAPI document only
struct ConnectionBodyDoc {
    /// `postgres`, `mysql`, `mariadb`, `sqlserver`, `mongodb`, `rest`, ...
    #[schema(rename = "type")]
    kind: String,
    /// The connection's fields (host, port, user, password, url, token, ...): written to the
    /// secrets provider, never shown again.
    #[schema(value_type = Object)]
    fields: (),
}

/// The seed's `/security/store` body: a connection with its id.
#[derive(utoipa::ToSchema)]
#[schema(as = SecurityStoreBody)]
#[allow(dead_code)] // describes the body in the OpenAPI document only
struct SecurityStoreDoc {
    #[schema(rename = "connectionId")]
    connection_id: String,
    #[schema(rename = "type")]
    kind: String,
    #[schema(value_type = Object)]
    fields: (),
}

/// A connection as a body: `{"type": "postgres", "fields": {"host": …, "password": …}}`.
struct ConnectionBody {
    kind: ConnectionKind,
    fields: BTreeMap<String, Value>,
}

/// Parses a body without ever quoting it: serde's messages can hold the value that did not fit,
/// which here may be a password.
fn parse_body(bytes: &[u8], id_key: bool) -> Result<(Option<String>, ConnectionBody), String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "body is not JSON (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    let Value::Object(mut object) = value else {
        return Err("body must be a JSON object: {\"type\": …, \"fields\": {…}}".into());
    };
    let id = if id_key {
        match object.remove("connectionId") {
            Some(Value::String(id)) => Some(id),
            _ => return Err("`connectionId` (text) is required".into()),
        }
    } else {
        None
    };
    let kind = match object.remove("type") {
        Some(Value::String(kind)) => ConnectionKind::parse(&kind).ok_or_else(|| {
            format!(
                "`type` must be one of {}",
                ConnectionKind::ALL.map(|k| k.as_str()).join(", ")
            )
        })?,
        _ => return Err("`type` (text) is required".into()),
    };
    let fields = match object.remove("fields") {
        Some(Value::Object(fields)) => fields.into_iter().collect(),
        _ => return Err("`fields` (an object of the connection's fields) is required".into()),
    };
    if let Some(other) = object.keys().next() {
        return Err(format!(
            "unknown key `{other}` (a body holds `type` and `fields`)"
        ));
    }
    Ok((id, ConnectionBody { kind, fields }))
}

async fn audit(
    state: &ApiState,
    caller: &Caller,
    action: &str,
    result: &'static str,
    detail: String,
) -> ApiResult<()> {
    audit_detail(state, caller, action, None, result, detail).await
}

/// Refuses, audited, with the same message to the caller and the log.
async fn refuse(
    state: &ApiState,
    caller: &Caller,
    action: &str,
    result: &'static str,
    status: StatusCode,
    message: String,
) -> ApiResult<Response> {
    audit(state, caller, action, result, message.clone()).await?;
    Err(ApiError::new(status, message))
}

/// Whether `caller` may change `record`: its owner, or an admin.
fn may_change(caller: &Caller, record: &ConnectionRecord) -> bool {
    caller.role == Role::Admin || caller.subject == record.owner
}

fn not_owner(id: &str, record: &ConnectionRecord) -> String {
    format!(
        "connection '{id}' belongs to '{}'; an editor changes only the connections they created",
        record.owner
    )
}

/// What the store holds: kinds, hosts and field names, never a value.
#[utoipa::path(get, path = "/connections", tag = "connections",
    responses((status = 200, description = "`{\"connections\": [...]}`", body = ConnectionList)))]
async fn list(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    authorize(&state, &headers, peer, Action::Read, None).await?;
    let records = state
        .catalog
        .connections()
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({ "connections": records })).into_response())
}

/// One connection (never a value) and the datasets that use it (`used_by`).
#[utoipa::path(get, path = "/connections/{id}", tag = "connections", params(("id" = String, Path, description = "The connection's id")),
    responses(
        (status = 200, description = "The connection, and `used_by`: the datasets naming it", body = ConnectionRecord),
        (status = 404, description = "No such connection", body = Problem, content_type = "application/problem+json"),
    ))]
async fn show(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    authorize(&state, &headers, peer, Action::Read, None).await?;
    let Some(record) = state
        .catalog
        .connection(&id)
        .await
        .map_err(ApiError::internal)?
    else {
        return Err(not_in_store(&id));
    };
    let used_by = state
        .catalog
        .datasets_using(&id)
        .await
        .map_err(ApiError::internal)?;
    let mut body = serde_json::to_value(record).map_err(ApiError::internal)?;
    body["used_by"] = json!(used_by);
    Ok(Json(body).into_response())
}

fn not_in_store(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no connection '{id}' in the connection store"),
    )
}

/// Writes a connection (every field; there is no merge). An editor writes only their own.
#[utoipa::path(put, path = "/connections/{id}", tag = "connections", params(("id" = String, Path, description = "The connection's id")),
    request_body(content = ConnectionBodyDoc, description = "The connection's kind and every field"),
    responses(
        (status = 200, description = "Replaced", body = ConnectionRecord),
        (status = 201, description = "Created", body = ConnectionRecord),
        (status = 409, description = "Created by someone else just now, or a secret of that name exists outside the store", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid connection; the detail never quotes a value", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The secrets provider refused the write", body = Problem, content_type = "application/problem+json"),
    ))]
async fn put(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let caller = authorize(&state, &headers, peer, Action::WriteConnection, None).await?;
    match parse_body(&body, false) {
        Ok((_, body)) => store(&state, &caller, &id, body).await,
        Err(why) => {
            let message = format!("connection '{id}': {why}");
            refuse(
                &state,
                &caller,
                "put_connection",
                "rejected",
                StatusCode::UNPROCESSABLE_ENTITY,
                message,
            )
            .await
        }
    }
}

/// The seed's endpoint: `POST /security/store` with `connectionId` in the body.
#[utoipa::path(post, path = "/security/store", tag = "connections",
    request_body(content = SecurityStoreDoc, description = "The seed's body: `connectionId`, the kind and every field"),
    responses(
        (status = 200, description = "Replaced", body = ConnectionRecord),
        (status = 201, description = "Created", body = ConnectionRecord),
        (status = 409, description = "Created by someone else just now, or a secret of that name exists outside the store", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid connection; the detail never quotes a value", body = Problem, content_type = "application/problem+json"),
    ))]
async fn security_store(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let caller = authorize(&state, &headers, peer, Action::WriteConnection, None).await?;
    match parse_body(&body, true) {
        // An empty id is refused by the id check.
        Ok((id, body)) => store(&state, &caller, &id.unwrap_or_default(), body).await,
        Err(why) => {
            refuse(
                &state,
                &caller,
                "put_connection",
                "rejected",
                StatusCode::UNPROCESSABLE_ENTITY,
                why,
            )
            .await
        }
    }
}

/// Validates, checks ownership, writes the secret and records what may be shown. A new id is
/// claimed in the catalog first, so two editors creating it at once cannot both own it.
async fn store(
    state: &ApiState,
    caller: &Caller,
    id: &str,
    body: ConnectionBody,
) -> ApiResult<Response> {
    const ACTION: &str = "put_connection";
    let profile = match connections::validate(id, body.kind, &body.fields) {
        Ok(profile) => profile,
        Err(invalid) => {
            return refuse(
                state,
                caller,
                ACTION,
                "rejected",
                StatusCode::UNPROCESSABLE_ENTITY,
                invalid.to_string(),
            )
            .await;
        }
    };
    let kind = profile.kind.as_str();
    let hosts: Vec<String> = profile.hosts.iter().map(ToString::to_string).collect();
    let detail = describe(id, &profile);
    let existing = state
        .catalog
        .connection(id)
        .await
        .map_err(ApiError::internal)?;
    let (record, created) = match existing {
        Some(record) => {
            if !may_change(caller, &record) {
                return refuse(
                    state,
                    caller,
                    ACTION,
                    "denied",
                    StatusCode::FORBIDDEN,
                    not_owner(id, &record),
                )
                .await;
            }
            write_secret(state, id, &body.fields, true).await?;
            let record = state
                .catalog
                .upsert_connection(id, kind, &hosts, &profile.fields, &caller.subject)
                .await
                .map_err(ApiError::internal)?;
            (record, false)
        }
        None => {
            let Some(record) = state
                .catalog
                .create_connection(id, kind, &hosts, &profile.fields, &caller.subject)
                .await
                .map_err(ApiError::internal)?
            else {
                return refuse(state, caller, ACTION, "rejected", StatusCode::CONFLICT,
                    format!("connection '{id}' was created by someone else just now; try again to see whose it is")).await;
            };
            // A secret written by hand under this id is taken over by an admin only.
            let written = write_secret(state, id, &body.fields, caller.role == Role::Admin).await;
            match written {
                Ok(Stored::AlreadyExists) | Err(_) => {
                    // Best effort: the claim goes with the failed write.
                    let _ = state.catalog.delete_connection(id).await;
                }
                Ok(_) => {}
            }
            if matches!(written, Ok(Stored::AlreadyExists)) {
                return refuse(state, caller, ACTION, "rejected", StatusCode::CONFLICT,
                    format!("a secret named '{id}' already exists in the secrets provider but not in the connection store; an admin may take it over by writing it")).await;
            }
            written?;
            (record, true)
        }
    };
    audit(state, caller, ACTION, "ok", detail).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(record)).into_response())
}

async fn write_secret(
    state: &ApiState,
    id: &str,
    fields: &BTreeMap<String, Value>,
    replace: bool,
) -> ApiResult<Stored> {
    state
        .secrets
        .store(id, fields, replace)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))
}

/// The audit line of a write: kind, hosts and field names.
fn describe(id: &str, profile: &ConnectionProfile) -> String {
    format!(
        "connection '{id}': {} at {}; fields {}",
        profile.kind,
        profile
            .hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        profile.fields.join(", ")
    )
}

/// Deletes a connection no dataset uses (one in use is refused, naming the datasets).
#[utoipa::path(delete, path = "/connections/{id}", tag = "connections", params(("id" = String, Path, description = "The connection's id")),
    responses(
        (status = 204, description = "Deleted, with its secret"),
        (status = 404, description = "No such connection", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Datasets use it; the detail names them", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_connection(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    const ACTION: &str = "delete_connection";
    let caller = authorize(&state, &headers, peer, Action::WriteConnection, None).await?;
    let Some(record) = state
        .catalog
        .connection(&id)
        .await
        .map_err(ApiError::internal)?
    else {
        let message = format!("no connection '{id}' in the connection store");
        return refuse(
            &state,
            &caller,
            ACTION,
            "rejected",
            StatusCode::NOT_FOUND,
            message,
        )
        .await;
    };
    if !may_change(&caller, &record) {
        return refuse(
            &state,
            &caller,
            ACTION,
            "denied",
            StatusCode::FORBIDDEN,
            not_owner(&id, &record),
        )
        .await;
    }
    let used_by = state
        .catalog
        .datasets_using(&id)
        .await
        .map_err(ApiError::internal)?;
    if !used_by.is_empty() {
        let message = format!(
            "connection '{id}' is used by {} {}; change or delete them first",
            if used_by.len() == 1 {
                "dataset"
            } else {
                "datasets"
            },
            used_by.join(", ")
        );
        return refuse(
            &state,
            &caller,
            ACTION,
            "rejected",
            StatusCode::CONFLICT,
            message,
        )
        .await;
    }
    state
        .secrets
        .remove(&id)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
    state
        .catalog
        .delete_connection(&id)
        .await
        .map_err(ApiError::internal)?;
    audit(&state, &caller, ACTION, "ok", format!("connection '{id}'")).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Logs in with a stored connection (databases) or reaches its hosts (REST).
#[utoipa::path(post, path = "/connections/{id}/test", tag = "connections", params(("id" = String, Path, description = "The connection's id")),
    responses(
        (status = 200, description = "Reached: the server's name and how long it took", body = Object,
         example = json!({"ok": true, "server": "PostgreSQL 15.19", "elapsed_ms": 12})),
        (status = 404, description = "No such connection", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The source could not be reached or refused the login", body = Problem, content_type = "application/problem+json"),
    ))]
async fn test(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    const ACTION: &str = "test_connection";
    let caller = authorize(&state, &headers, peer, Action::TestConnection, None).await?;
    let Some(record) = state
        .catalog
        .connection(&id)
        .await
        .map_err(ApiError::internal)?
    else {
        return Err(not_in_store(&id));
    };
    let kind = ConnectionKind::parse(&record.kind)
        .ok_or_else(|| ApiError::internal(format!("connection '{id}' has an unknown kind")))?;
    let secret = state
        .secrets
        .connection(&id)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
    let outcome = match connections::profile(kind, &secret) {
        Ok(profile) => connections::probe::probe(&profile, &secret, &state.access.network)
            .await
            .map_err(|e| {
                let status = match e {
                    carga_jobs::JobError::Denied { .. } => StatusCode::FORBIDDEN,
                    _ => StatusCode::BAD_GATEWAY,
                };
                (status, e.to_string())
            }),
        Err(invalid) => Err((StatusCode::UNPROCESSABLE_ENTITY, invalid.to_string())),
    };
    match outcome {
        Ok(report) => {
            let detail = format!("connection '{id}': {}", report.server);
            audit(&state, &caller, ACTION, "ok", detail).await?;
            let body =
                json!({"ok": true, "server": report.server, "elapsed_ms": report.elapsed_ms});
            Ok(Json(body).into_response())
        }
        Err((status, message)) => {
            // Masked at the source already; masked again in case a driver echoed a value.
            let message = secret.redact(&message);
            let result = if status == StatusCode::FORBIDDEN {
                "denied"
            } else {
                "error"
            };
            refuse(&state, &caller, ACTION, result, status, message).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_parsed_without_quoting_them() {
        for body in [
            r#"{"type": "postgres", "fields": "hunter2"}"#,
            r#"{"type": "hunter2", "fields": {}}"#,
            r#"["hunter2"]"#,
            r#"{"type": "postgres", "fields": {"password": "hunter2""#,
        ] {
            let why = parse_body(body.as_bytes(), false).err().unwrap();
            assert!(!why.contains("hunter2"), "{why}");
        }
        let (_, ok) = parse_body(
            br#"{"type": "mariadb", "fields": {"url": "mysql://u:p@h/d"}}"#,
            false,
        )
        .unwrap();
        assert_eq!(ok.kind, ConnectionKind::Mysql);
        let (id, _) = parse_body(
            br#"{"connectionId": "c", "type": "rest", "fields": {}}"#,
            true,
        )
        .unwrap();
        assert_eq!(id.as_deref(), Some("c"));
    }
}
