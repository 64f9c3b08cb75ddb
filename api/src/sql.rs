//! `POST /sql`: read-only SQL over the committed raw zone for approvers and admins (what
//! `carga sql` runs), with a row limit, audited with the query.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::json;

use super::auth::Action;
use super::problem::Problem;
use super::{ApiError, ApiResult, ApiState, authorize};

/// Rows an answer holds at most.
const MAX_ROWS: usize = 10_000;
/// How much of a query the audit log keeps.
const AUDITED_QUERY_CHARS: usize = 500;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct SqlRequest {
    /// One SQL statement (DataFusion's dialect) naming datasets as tables.
    query: String,
    /// Rows at most (1,000 by default, 10,000 at most).
    #[serde(default)]
    limit: Option<usize>,
}

/// A read-only query over the raw zone (approvers and admins; audited with its text).
#[utoipa::path(post, path = "/sql", tag = "sql",
    request_body(content = SqlRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "`columns` (name, data_type), `rows`, `row_count` and `truncated`", body = Object),
        (status = 400, description = "The body is not `{\"query\": ..., \"limit\": n}`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The query failed; the detail says why", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "This process has no master key to decrypt the raw zone", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn run(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    // Authorised before the body is read: a refusal is a 401/403 and audited, whatever was sent.
    let caller = authorize(&state, &headers, peer, Action::Sql, None).await?;
    let request: SqlRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body must be {{\"query\": \"...\", \"limit\": n}}: {e}"),
        )
    })?;
    let query: String = request.query.chars().take(AUDITED_QUERY_CHARS).collect();
    let Some(engine) = &state.engine else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this API process has no master key to decrypt the raw zone with (start it with the key file or KMS key the workers use)",
        ));
    };
    let limit = request.limit.unwrap_or(1000).clamp(1, MAX_ROWS);
    let answer = async {
        let mut stream = engine.sql(&request.query).await?;
        let columns: Vec<serde_json::Value> = stream
            .schema()
            .fields()
            .iter()
            .map(|f| json!({"name": f.name(), "data_type": f.data_type().to_string()}))
            .collect();
        let mut writer = arrow::json::ArrayWriter::new(Vec::new());
        let (mut rows, mut truncated) = (0usize, false);
        while let Some(batch) = stream
            .try_next()
            .await
            .map_err(|e| carga_jobs::query::query_error("sql", e))?
        {
            let take = batch.num_rows().min(limit - rows);
            if take < batch.num_rows() {
                truncated = true;
            }
            writer
                .write(&batch.slice(0, take))
                .map_err(|e| carga_jobs::JobError::arrow("sql answer", e))?;
            rows += take;
            if rows >= limit {
                truncated = truncated || stream.try_next().await.ok().flatten().is_some();
                break;
            }
        }
        writer
            .finish()
            .map_err(|e| carga_jobs::JobError::arrow("sql answer", e))?;
        let bytes = writer.into_inner();
        let data: serde_json::Value = if bytes.is_empty() {
            json!([])
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| json!([]))
        };
        Ok::<_, carga_jobs::JobError>(json!({
            "columns": columns,
            "rows": data,
            "row_count": rows,
            "truncated": truncated,
        }))
    }
    .await;
    let mut entry = caller.audit("sql", None, if answer.is_ok() { "ok" } else { "error" });
    entry.detail = Some(match &answer {
        Ok(body) => format!("{} row(s): {query}", body["row_count"]),
        Err(e) => format!("{e}: {query}"),
    });
    state
        .catalog
        .audit(&entry)
        .await
        .map_err(ApiError::internal)?;
    match answer {
        Ok(body) => Ok(Json(body).into_response()),
        Err(e) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            e.to_string(),
        )),
    }
}
