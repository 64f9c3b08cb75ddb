//! The operator dashboard: one HTML page (no build step, no external assets) and the JSON it
//! polls, plus the job actions it offers: retry now, kill, delete, on one job or many. Each
//! action is checked against the caller's role and written to the audit log, one entry per job.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use carga_config::Trigger;
use chrono::Utc;
use object_store::ObjectStoreExt;
use serde::Deserialize;
use serde_json::{Value, json};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Action;
use super::problem::Problem;
use super::{ApiError, ApiResult, ApiState, Caller, authorize};
use carga_scheduler::catalog::{RunFilter, RunRecord};
use carga_scheduler::job::{ExtractionJob, RunReason};
use carga_scheduler::schedule::CronSchedule;

/// A worker whose last heartbeat is older than this is shown as gone (the workers' default
/// heartbeat, 10 s, times the missed heartbeats apalis allows, 3).
const WORKER_ALIVE_WITHIN: Duration = Duration::from_secs(30);
/// The throughput chart's window.
const THROUGHPUT_MINUTES: i64 = 60;

const PAGE: &str = include_str!("dashboard.html");

pub(super) fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new()
        .routes(routes!(root))
        .routes(routes!(dashboard_page))
        .routes(routes!(whoami))
        .routes(routes!(overview))
        .routes(routes!(bulk_action))
        .routes(routes!(retry_one))
        .routes(routes!(kill_one))
        .routes(routes!(manifest))
        .routes(routes!(report))
}

/// The dashboard is the service's front page.
#[utoipa::path(get, path = "/", tag = "dashboard",
    responses((status = 303, description = "To `/dashboard`")))]
async fn root() -> axum::response::Redirect {
    axum::response::Redirect::to("/dashboard")
}

/// The dashboard's page (it asks for a token and reads the JSON endpoints with it).
#[utoipa::path(get, path = "/dashboard", tag = "dashboard",
    responses((status = 200, description = "The page", body = String, content_type = "text/html")))]
async fn dashboard_page() -> Html<&'static str> {
    Html(PAGE)
}

/// The caller's name and role, and which of the dashboard's actions it may take.
#[utoipa::path(get, path = "/whoami", tag = "dashboard",
    responses((status = 200, description = "`subject`, `role` and `may` (trigger, retry, kill, delete, audit)", body = Object)))]
async fn whoami(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authorize(&state, &headers, peer, Action::Read, None).await?;
    let may = |action: Action| action.allows(caller.role);
    Ok(Json(json!({
        "subject": caller.subject,
        "role": caller.role,
        "may": {
            "trigger": may(Action::Trigger),
            "retry": may(Action::RetryJob),
            "kill": may(Action::KillJob),
            "delete": may(Action::DeleteJob),
            "audit": may(Action::ReadAudit),
            "webhooks": may(Action::ReadWebhooks),
        },
    }))
    .into_response())
}

/// Everything the dashboard shows at a glance, in one request.
#[utoipa::path(get, path = "/overview", tag = "dashboard",
    responses((status = 200, description = "Queue, workers, throughput, datasets and the runs that need attention", body = Object)))]
async fn overview(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authorize(&state, &headers, peer, Action::Read, None).await?;
    let now = Utc::now();
    let queue = state.queue.stats().await.map_err(ApiError::internal)?;
    let oldest = state
        .catalog
        .oldest_queued()
        .await
        .map_err(ApiError::internal)?;
    let throughput = state
        .catalog
        .throughput(THROUGHPUT_MINUTES)
        .await
        .map_err(ApiError::internal)?;

    // Workers, with what each holds and since when.
    let mut workers = Vec::new();
    for worker in state
        .queue
        .workers(WORKER_ALIVE_WITHIN)
        .await
        .map_err(ApiError::internal)?
    {
        let mut running = Vec::new();
        for run_id in &worker.running {
            let run = state
                .catalog
                .run(run_id)
                .await
                .map_err(ApiError::internal)?;
            running.push(json!({
                "run_id": run_id,
                "dataset_id": run.as_ref().map(|r| r.dataset_id.clone()),
                "since": run.as_ref().and_then(|r| r.started_at),
                "state": run.as_ref().map(|r| r.state.clone()),
            }));
        }
        workers.push(json!({
            "name": worker.name,
            "alive": worker.alive,
            "last_seen": worker.last_seen,
            "running": running,
        }));
    }

    let last_success: std::collections::HashMap<String, chrono::DateTime<Utc>> = state
        .catalog
        .last_successes()
        .await
        .map_err(ApiError::internal)?
        .into_iter()
        .collect();
    let datasets: Vec<Value> = state
        .catalog
        .datasets()
        .await
        .map_err(ApiError::internal)?
        .into_iter()
        .map(|d| {
            let next_fire = (d.spec.trigger == Trigger::TimedPull && d.is_runnable())
                .then(|| {
                    CronSchedule::parse(
                        d.spec.cron.as_deref().unwrap_or_default(),
                        d.spec.time_zone.as_deref(),
                    )
                    .ok()
                    .and_then(|s| s.next_after(now))
                })
                .flatten();
            json!({
                "dataset_id": d.dataset_id,
                "format": d.spec.source.format_name(),
                "mode": d.spec.mode,
                "trigger": d.spec.trigger,
                "cron": d.spec.cron,
                "time_zone": d.spec.time_zone.as_deref().unwrap_or("UTC"),
                "enabled": d.enabled,
                "approved": d.approved,
                "next_fire": next_fire,
                "last_success": last_success.get(&d.dataset_id),
            })
        })
        .collect();

    let mut attention: Vec<RunRecord> = Vec::new();
    for wanted in ["retrying", "dead", "failed"] {
        let filter = RunFilter {
            state: Some(wanted.into()),
            limit: 100,
            ..RunFilter::default()
        };
        attention.extend(
            state
                .catalog
                .search_runs(&filter)
                .await
                .map_err(ApiError::internal)?
                .into_iter()
                .filter(|r| r.retried_as.is_none()),
        );
    }
    attention.sort_by_key(|r| std::cmp::Reverse(r.enqueued_at));

    Ok(Json(json!({
        "generated_at": now,
        "queue": queue,
        "oldest_queued_seconds": oldest.map(|t| (now - t).num_milliseconds() as f64 / 1000.0),
        "workers": workers,
        "throughput": throughput,
        "datasets": datasets,
        "attention": crate::visible_runs(caller.role, attention),
    }))
    .into_response())
}

/// What an operator may do to a job.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum JobAction {
    Retry,
    Kill,
    Delete,
}

impl JobAction {
    fn permission(self) -> Action {
        match self {
            JobAction::Retry => Action::RetryJob,
            JobAction::Kill => Action::KillJob,
            JobAction::Delete => Action::DeleteJob,
        }
    }

    fn audit_name(self) -> &'static str {
        self.permission().as_str()
    }
}

/// Runs a failed, dead or retrying job again now, as a new run.
#[utoipa::path(post, path = "/runs/{run_id}/retry", tag = "runs", params(("run_id" = String, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The new run", body = Object),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The run is not in a state that can be retried", body = Problem, content_type = "application/problem+json"),
    ))]
async fn retry_one(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> ApiResult<Response> {
    single(&state, &headers, peer, JobAction::Retry, &run_id).await
}

/// Stops a queued, retrying or running job (a running one at its next batch).
#[utoipa::path(post, path = "/runs/{run_id}/kill", tag = "runs", params(("run_id" = String, Path, description = "The run's id")),
    responses(
        (status = 200, description = "Killed", body = Object),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The run has already ended", body = Problem, content_type = "application/problem+json"),
    ))]
async fn kill_one(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> ApiResult<Response> {
    single(&state, &headers, peer, JobAction::Kill, &run_id).await
}

/// `DELETE /runs/{run_id}`.
#[utoipa::path(delete, path = "/runs/{run_id}", tag = "runs", params(("run_id" = String, Path, description = "The run's id")),
    responses(
        (status = 200, description = "Deleted from the history", body = Object),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The run is still queued or running", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn delete_one(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> ApiResult<Response> {
    single(&state, &headers, peer, JobAction::Delete, &run_id).await
}

async fn single(
    state: &ApiState,
    headers: &HeaderMap,
    peer: SocketAddr,
    action: JobAction,
    run_id: &str,
) -> ApiResult<Response> {
    let caller = authorize(state, headers, peer, action.permission(), None).await?;
    match act(state, &caller, action, run_id).await? {
        Ok(done) => Ok(Json(done).into_response()),
        Err((status, message)) => Err(ApiError::new(status, message)),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
struct BulkRequest {
    action: JobAction,
    run_ids: Vec<String>,
}

/// One action on many jobs; each job's result is reported (and audited) on its own.
#[utoipa::path(post, path = "/runs/actions", tag = "runs",
    request_body(content = BulkRequest, content_type = "application/json"),
    responses((status = 200, description = "`results`: each job's outcome (`ok`, `result` or `error`)", body = Object)))]
async fn bulk_action(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(request): Json<BulkRequest>,
) -> ApiResult<Response> {
    let caller = authorize(&state, &headers, peer, request.action.permission(), None).await?;
    if request.run_ids.len() > 1000 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "at most 1000 jobs per request",
        ));
    }
    let mut results = Vec::with_capacity(request.run_ids.len());
    for run_id in &request.run_ids {
        results.push(match act(&state, &caller, request.action, run_id).await? {
            Ok(done) => json!({"run_id": run_id, "ok": true, "result": done}),
            Err((_, message)) => json!({"run_id": run_id, "ok": false, "error": message}),
        });
    }
    Ok(Json(json!({ "results": results })).into_response())
}

type Outcome = Result<Value, (StatusCode, String)>;

/// Applies one action to one job and audits it. The outer error is a failure of ours (catalog,
/// Redis); the inner one a refusal the caller can act on.
async fn act(
    state: &ApiState,
    caller: &Caller,
    action: JobAction,
    run_id: &str,
) -> ApiResult<Outcome> {
    let run = state
        .catalog
        .run(run_id)
        .await
        .map_err(ApiError::internal)?;
    let outcome = match run {
        None => Err((StatusCode::NOT_FOUND, format!("no run '{run_id}'"))),
        Some(run) => match action {
            JobAction::Retry => retry(state, caller, &run).await?,
            JobAction::Kill => kill(state, caller, &run).await?,
            JobAction::Delete => delete(state, &run).await?,
        },
    };
    let dataset = state
        .catalog
        .run(run_id)
        .await
        .ok()
        .flatten()
        .map(|r| r.dataset_id);
    let (result, detail) = match &outcome {
        Ok(done) => ("ok", Some(format!("run {run_id}: {done}"))),
        Err((_, message)) => ("rejected", Some(format!("run {run_id}: {message}"))),
    };
    let mut entry = caller.audit(action.audit_name(), dataset.as_deref(), result);
    entry.detail = detail;
    state
        .catalog
        .audit(&entry)
        .await
        .map_err(ApiError::internal)?;
    Ok(outcome)
}

/// A failed, dead or killed job runs again now, as a new run of the same dataset.
async fn retry(state: &ApiState, caller: &Caller, run: &RunRecord) -> ApiResult<Outcome> {
    if let Some(replacement) = &run.retried_as {
        return Ok(Err((
            StatusCode::CONFLICT,
            format!("run {} was already retried as {replacement}", run.run_id),
        )));
    }
    if !matches!(run.state.as_str(), "failed" | "dead" | "killed") {
        return Ok(Err((
            StatusCode::CONFLICT,
            format!(
                "run {} is {}; only failed, dead or killed runs can be retried",
                run.run_id, run.state
            ),
        )));
    }
    let dataset = state
        .catalog
        .dataset(&run.dataset_id)
        .await
        .map_err(ApiError::internal)?;
    if !dataset.as_ref().is_some_and(|d| d.is_runnable()) {
        return Ok(Err((
            StatusCode::CONFLICT,
            format!(
                "dataset '{}' is missing, disabled or waiting for approval",
                run.dataset_id
            ),
        )));
    }
    let mut job = ExtractionJob::new(&run.dataset_id, RunReason::Retry);
    job.requested_by = Some(caller.subject.clone());
    super::enqueue_now(state, &job).await?;
    state
        .queue
        .forget(&run.run_id)
        .await
        .map_err(ApiError::internal)?;
    state
        .catalog
        .run_retried_as(&run.run_id, &job.run_id)
        .await
        .map_err(ApiError::internal)?;
    Ok(Ok(json!({"run_id": run.run_id, "retried_as": job.run_id})))
}

/// A queued job leaves the queue; a running one is stopped by its worker within a second,
/// uncommitted (nothing of it becomes visible and the watermark stays).
async fn kill(state: &ApiState, caller: &Caller, run: &RunRecord) -> ApiResult<Outcome> {
    if !matches!(run.state.as_str(), "queued" | "running" | "retrying") {
        return Ok(Err((
            StatusCode::CONFLICT,
            format!(
                "run {} is {}; only queued or running jobs can be killed",
                run.run_id, run.state
            ),
        )));
    }
    // The flag first: a worker that fetches the job meanwhile sees it before starting.
    state
        .queue
        .request_cancel(&run.run_id)
        .await
        .map_err(ApiError::internal)?;
    let dequeued = state
        .queue
        .remove_queued(&run.run_id)
        .await
        .map_err(ApiError::internal)?;
    let killed = state
        .catalog
        .run_killed(&run.run_id, &caller.subject)
        .await
        .map_err(ApiError::internal)?;
    if !killed {
        return Ok(Err((
            StatusCode::CONFLICT,
            format!("run {} ended before it could be killed", run.run_id),
        )));
    }
    Ok(Ok(json!({
        "run_id": run.run_id,
        "state": "killed",
        "was": run.state,
        "removed_from_queue": dequeued,
    })))
}

/// A finished job leaves the history and the dead set. Its committed data stays.
async fn delete(state: &ApiState, run: &RunRecord) -> ApiResult<Outcome> {
    if !matches!(
        run.state.as_str(),
        "succeeded" | "failed" | "dead" | "killed"
    ) {
        return Ok(Err((
            StatusCode::CONFLICT,
            format!(
                "run {} is {}; kill it before deleting it",
                run.run_id, run.state
            ),
        )));
    }
    state
        .queue
        .forget(&run.run_id)
        .await
        .map_err(ApiError::internal)?;
    state
        .catalog
        .delete_run(&run.run_id)
        .await
        .map_err(ApiError::internal)?;
    Ok(Ok(json!({"run_id": run.run_id, "deleted": true})))
}

/// The run's manifest (its watermark opened for approvers and admins).
#[utoipa::path(get, path = "/runs/{run_id}/manifest", tag = "runs", params(("run_id" = String, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The manifest", body = Object),
        (status = 404, description = "No such run, or the run has none", body = Problem, content_type = "application/problem+json"),
    ))]
async fn manifest(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> ApiResult<Response> {
    run_document(&state, &headers, peer, &run_id, |r| r.manifest_url.clone()).await
}

/// The run's validation report (opened for approvers and admins).
#[utoipa::path(get, path = "/runs/{run_id}/report", tag = "runs", params(("run_id" = String, Path, description = "The run's id")),
    responses(
        (status = 200, description = "The report", body = Object),
        (status = 404, description = "No such run, or the run has none", body = Problem, content_type = "application/problem+json"),
    ))]
async fn report(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> ApiResult<Response> {
    run_document(&state, &headers, peer, &run_id, |r| r.report_url.clone()).await
}

/// A run's manifest or validation report, read from the bucket (the first, for a multi-table run).
/// Their sealed values (the watermark's, the whole report) are opened for the roles that may see
/// data values (those that may query it with SQL) when this process has the key; others get
/// what is readable without it.
async fn run_document(
    state: &ApiState,
    headers: &HeaderMap,
    peer: SocketAddr,
    run_id: &str,
    pick: fn(&RunRecord) -> Option<String>,
) -> ApiResult<Response> {
    let caller = authorize(state, headers, peer, Action::Read, None).await?;
    let run = state
        .catalog
        .run(run_id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no run '{run_id}'")))?;
    let address = pick(&run)
        .and_then(|urls| urls.split_whitespace().next().map(str::to_owned))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("run {run_id} has none")))?;
    let path = state.bucket.locate(&address).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{address} is not in this bucket"),
        )
    })?;
    let bytes = state
        .bucket
        .store
        .get(&path)
        .await
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))?
        .bytes()
        .await
        .map_err(ApiError::internal)?;
    let keys = state
        .engine
        .as_ref()
        .filter(|_| Action::Sql.allows(caller.role))
        .map(|engine| engine.encryptor());
    let document = carga_jobs::destination::raw_zone::open_document(&bytes, keys)
        .map_err(ApiError::internal)?;
    Ok(Json(document).into_response())
}
