//! File uploads (the seed's dataset-upload-service, `POST /upload/dataset`).
//!
//! Two ways in, one store (`carga_jobs::upload`: encrypted segments under `temp/<user>/<id>`):
//!
//! - **tus 1.0** (core + creation + creation-with-upload + termination) for files of any size:
//!   `POST /upload/dataset` with `Upload-Length` and `Upload-Metadata` (`dataset`, `filename`,
//!   optionally `format`) creates the upload (`Location: /upload/dataset/<id>`); `PATCH` with
//!   `Upload-Offset` appends; `HEAD` says the offset to resume from after a cut; `DELETE` ends it.
//!   tus because it is the open standard for exactly this (resumable, offset-checked, clients in
//!   every language and the browser) and small enough to serve fully here.
//! - **multipart/form-data** (`curl -F dataset=ventas -F file=@ventas.csv`) for a file in one
//!   request, streamed like a PATCH.
//!
//! When the last byte arrives the seed's initial validation runs (the run's reader and checks
//! over the whole file, writing nothing) and the answer is the seed's
//! `{"datasetId", "status", "reportUrl"}`; `upload_success` or `validation_failed` goes to
//! RabbitMQ. A rejected upload is removed at once. Every step and refusal is audited.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use carga_config::DatasetSpec;
use carga_jobs::Engine;
use carga_jobs::destination::RunTarget;
use carga_jobs::upload::{
    UploadArea, UploadError, UploadFormat, UploadMetadata, UploadOutcome, UploadState, check_format,
};
use carga_jobs::validation::{RunStatus, ValidationReport};
use carga_scheduler::notify::Notification;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Action, Role};
use crate::problem::Problem;
use crate::{ApiError, ApiResult, ApiState, Caller, audit_detail, authorize};

const TUS_VERSION: &str = "1.0.0";
const TUS_EXTENSIONS: &str = "creation,creation-with-upload,termination";
const OFFSET_STREAM: &str = "application/offset+octet-stream";

pub const PASSED: &str = "initial-validation-passed";
pub const WARNINGS: &str = "validated_with_warnings";
pub const REJECTED: &str = "rejected";

pub(crate) fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new()
        .routes(routes!(create, capabilities))
        .routes(routes!(append, offset, status, terminate))
        // Bodies are streamed to the store and capped by `uploads.max_bytes`, not buffered.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::map_response(tus_resumable))
}

/// Every tus answer names the protocol version.
async fn tus_resumable(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    response
}

/// Uploads a request is writing; the claim is let go when the request ends, however it ends.
#[derive(Default, Clone)]
pub(crate) struct InFlight(Arc<Mutex<HashSet<String>>>);

struct Claim {
    set: InFlight,
    id: String,
}

impl InFlight {
    fn claim(&self, id: &str) -> Option<Claim> {
        let mut set = self.0.lock().expect("in-flight set");
        set.insert(id.to_owned()).then(|| Claim {
            set: self.clone(),
            id: id.to_owned(),
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.set.0.lock().expect("in-flight set").remove(&self.id);
    }
}

fn upload_error(error: UploadError) -> ApiError {
    let status = match &error {
        UploadError::NotFound(_) => StatusCode::NOT_FOUND,
        UploadError::OffsetMismatch { .. } => StatusCode::CONFLICT,
        UploadError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        UploadError::Invalid(_) => StatusCode::BAD_REQUEST,
        UploadError::Job(_) => return ApiError::internal(error),
    };
    ApiError::new(status, error.to_string())
}

fn engine(state: &ApiState) -> ApiResult<&Arc<Engine>> {
    state.engine.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this API process has no master key to seal uploads with (start it with the key file or KMS key the workers use)",
        )
    })
}

async fn audit(
    state: &ApiState,
    caller: &Caller,
    action: &str,
    dataset: &str,
    result: &'static str,
    detail: String,
) -> ApiResult<()> {
    audit_detail(state, caller, action, Some(dataset), result, detail).await
}

/// `OPTIONS /upload/dataset`: what this server speaks (tus discovery; no token needed).
#[utoipa::path(options, path = "/upload/dataset", tag = "uploads", operation_id = "upload_capabilities",
    responses((status = 204, description = "`Tus-Version`, `Tus-Extension` and `Tus-Max-Size` headers")))]
async fn capabilities(State(state): State<Arc<ApiState>>) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    headers.insert("tus-extension", HeaderValue::from_static(TUS_EXTENSIONS));
    if let Some(engine) = &state.engine {
        headers.insert("tus-max-size", engine.settings().uploads.max_bytes.into());
    }
    response
}

/// tus `Upload-Metadata`: `key base64,key base64`.
fn parse_metadata(headers: &HeaderMap) -> Result<Vec<(String, String)>, String> {
    let Some(raw) = headers.get("upload-metadata") else {
        return Ok(Vec::new());
    };
    let raw = raw.to_str().map_err(|_| "Upload-Metadata is not ASCII")?;
    let mut pairs = Vec::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once(' ').unwrap_or((pair, ""));
        let value = BASE64
            .decode(value.trim())
            .ok()
            .and_then(|v| String::from_utf8(v).ok())
            .ok_or_else(|| format!("Upload-Metadata '{key}' is not base64 of UTF-8 text"))?;
        pairs.push((key.to_owned(), value));
    }
    Ok(pairs)
}

/// The dataset, file name and format of a new upload, checked.
fn upload_metadata(
    dataset: Option<String>,
    filename: Option<String>,
    format: Option<String>,
) -> Result<UploadMetadata, String> {
    let dataset = dataset.ok_or("the upload needs `dataset` (the dataset id it is for)")?;
    let filename = filename.ok_or("the upload needs `filename`")?;
    let valid = !dataset.is_empty()
        && dataset.len() <= 128
        && dataset
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(format!(
            "dataset '{dataset}': an id uses only letters, digits, '-' and '_' (at most 128)"
        ));
    }
    let format = UploadFormat::declared(format.as_deref(), &filename)?;
    Ok(UploadMetadata {
        dataset,
        filename,
        format,
    })
}

/// Refuses a name already taken: the seed's "unique dataset name" check.
async fn name_is_free(state: &ApiState, dataset: &str) -> ApiResult<Result<(), String>> {
    let taken = state
        .catalog
        .dataset(dataset)
        .await
        .map_err(ApiError::internal)?
        .is_some();
    Ok(if taken {
        Err(format!(
            "a dataset named '{dataset}' already exists: upload under a new name"
        ))
    } else {
        Ok(())
    })
}

/// `POST /upload/dataset`: a tus creation (with or without a first body) or a multipart upload.
#[utoipa::path(post, path = "/upload/dataset", tag = "uploads",
    params(
        ("Upload-Length" = Option<u64>, Header, description = "tus: the file's size in bytes"),
        ("Upload-Metadata" = Option<String>, Header, description = "tus: `dataset`, `filename` and optionally `format`, each base64"),
    ),
    request_body(content = Option<String>, content_type = "multipart/form-data",
                 description = "A multipart upload (`dataset`, `file`), or with tus an empty body or the first bytes (`application/offset+octet-stream`)"),
    responses(
        (status = 201, description = "tus: created; `Location` names it and `Upload-Offset` says what arrived"),
        (status = 200, description = "The whole file arrived and was validated: `datasetId`, `status`, `reportUrl`", body = Object),
        (status = 409, description = "A dataset of that name exists already", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than the uploads' size limit", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The file failed the initial validation (the seed's answer)", body = Object),
    ))]
async fn create(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> ApiResult<Response> {
    let headers = request.headers().clone();
    let caller = authorize(&state, &headers, peer, Action::Upload, None).await?;
    let engine = engine(&state)?.clone();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if content_type.starts_with("multipart/form-data") {
        let multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
        return create_multipart(&state, &engine, &caller, multipart).await;
    }
    let refuse = async |status: StatusCode, why: String, dataset: &str| -> ApiResult<Response> {
        audit(&state, &caller, "upload", dataset, "rejected", why.clone()).await?;
        Err(ApiError::new(status, why))
    };
    let metadata = match parse_metadata(&headers) {
        Ok(pairs) => {
            let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
            upload_metadata(get("dataset"), get("filename"), get("format"))
        }
        Err(why) => Err(why),
    };
    let metadata = match metadata {
        Ok(metadata) => metadata,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, why, "").await,
    };
    let dataset = metadata.dataset.clone();
    let limit = engine.settings().uploads.max_bytes;
    let length = match headers
        .get("upload-length")
        .and_then(|v| v.to_str().ok())
        .map(str::parse::<u64>)
    {
        Some(Ok(length)) => length,
        _ => {
            let why = "Upload-Length (the file's size in bytes) is required; deferred lengths are not supported (use multipart/form-data for a stream of unknown size)".to_owned();
            return refuse(StatusCode::BAD_REQUEST, why, &dataset).await;
        }
    };
    if length > limit {
        let why = format!("the file has {length} bytes; this server takes at most {limit}");
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, why, &dataset).await;
    }
    if let Err(why) = name_is_free(&state, &dataset).await? {
        return refuse(StatusCode::CONFLICT, why, &dataset).await;
    }
    let area = engine.uploads();
    let mut upload = area
        .create(&caller.subject, metadata, Some(length))
        .await
        .map_err(upload_error)?;
    audit(
        &state,
        &caller,
        "upload",
        &dataset,
        "ok",
        format!(
            "created upload {} ({}, {length} bytes)",
            upload.id, upload.metadata.filename
        ),
    )
    .await?;
    let location = format!("/upload/dataset/{}", upload.id);
    let with_body = content_type == OFFSET_STREAM;
    let mut answer = if with_body {
        let _claim = state.uploads_in_flight.claim(&upload.id);
        write_body(&state, &engine, &caller, &mut upload, request.into_body()).await?
    } else {
        StatusCode::CREATED.into_response()
    };
    if answer.status() == StatusCode::NO_CONTENT {
        *answer.status_mut() = StatusCode::CREATED;
    }
    let headers = answer.headers_mut();
    headers.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("an upload path is a header value"),
    );
    headers.insert("upload-offset", upload.offset.into());
    Ok(answer)
}

/// `multipart/form-data`: fields `dataset` and optionally `format`, then `file` (streamed).
async fn create_multipart(
    state: &ApiState,
    engine: &Engine,
    caller: &Caller,
    mut multipart: Multipart,
) -> ApiResult<Response> {
    let bad = |why: String| ApiError::new(StatusCode::BAD_REQUEST, why);
    let (mut dataset, mut format) = (None, None);
    loop {
        let field = multipart
            .next_field()
            .await
            .map_err(|e| bad(e.body_text()))?
            .ok_or_else(|| bad("the form has no `file` field".into()))?;
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "dataset" => dataset = Some(field.text().await.map_err(|e| bad(e.body_text()))?),
            "format" => format = Some(field.text().await.map_err(|e| bad(e.body_text()))?),
            "file" => {
                let filename = field.file_name().map(str::to_owned);
                let metadata = match upload_metadata(dataset.clone(), filename, format.clone()) {
                    Ok(metadata) => metadata,
                    Err(why) => {
                        let name = dataset.as_deref().unwrap_or_default();
                        audit(state, caller, "upload", name, "rejected", why.clone()).await?;
                        return Err(bad(why));
                    }
                };
                let name = metadata.dataset.clone();
                if let Err(why) = name_is_free(state, &name).await? {
                    audit(state, caller, "upload", &name, "rejected", why.clone()).await?;
                    return Err(ApiError::new(StatusCode::CONFLICT, why));
                }
                let area = engine.uploads();
                let mut upload = area
                    .create(&caller.subject, metadata, None)
                    .await
                    .map_err(upload_error)?;
                let limit = engine.settings().uploads.max_bytes;
                let appended = match area.append(&mut upload, field, limit).await {
                    Ok(appended) => appended,
                    Err(e) => {
                        area.remove(&upload).await.map_err(upload_error)?;
                        audit(state, caller, "upload", &name, "rejected", e.to_string()).await?;
                        return Err(upload_error(e));
                    }
                };
                if let Some(cut) = appended.cut {
                    // A form has no offset to resume from: what came is dropped.
                    area.remove(&upload).await.map_err(upload_error)?;
                    let why = format!("the file did not arrive whole ({cut})");
                    audit(state, caller, "upload", &name, "rejected", why.clone()).await?;
                    return Err(bad(why));
                }
                upload.length = Some(upload.offset);
                area.save(&upload).await.map_err(upload_error)?;
                audit(
                    state,
                    caller,
                    "upload",
                    &name,
                    "ok",
                    format!(
                        "received upload {} ({}, {} bytes, multipart)",
                        upload.id, upload.metadata.filename, upload.offset
                    ),
                )
                .await?;
                if let Some(head) = appended.head
                    && let Err(why) = check_format(upload.metadata.format, &head)
                {
                    return reject(state, engine, caller, &upload, why, None).await;
                }
                return conclude(state, engine, caller, upload).await;
            }
            other => {
                return Err(bad(format!(
                    "unknown form field '{other}' (expected dataset, format, file)"
                )));
            }
        }
    }
}

/// The upload `id` if the caller may touch it: its uploader, or an admin. Anyone else is told
/// it does not exist (and the attempt is audited).
async fn owned_upload(
    state: &ApiState,
    engine: &Engine,
    caller: &Caller,
    id: &str,
) -> ApiResult<UploadState> {
    let upload = engine
        .uploads()
        .state(id)
        .await
        .map_err(upload_error)?
        .ok_or_else(|| upload_error(UploadError::NotFound(id.to_owned())))?;
    if upload.owner != caller.subject && caller.role != Role::Admin {
        audit(
            state,
            caller,
            "upload",
            &upload.metadata.dataset,
            "denied",
            format!("upload {id} belongs to another user"),
        )
        .await?;
        return Err(upload_error(UploadError::NotFound(id.to_owned())));
    }
    Ok(upload)
}

/// The caller, the engine and the upload `id` for a request about one upload (HEAD, GET,
/// DELETE): authorised, and the caller's own upload (or an admin's view).
async fn request_for_upload(
    state: &ApiState,
    headers: &HeaderMap,
    peer: SocketAddr,
    id: &str,
) -> ApiResult<(Caller, Arc<Engine>, UploadState)> {
    let caller = authorize(state, headers, peer, Action::Upload, None).await?;
    let engine = engine(state)?.clone();
    let upload = owned_upload(state, &engine, &caller, id).await?;
    Ok((caller, engine, upload))
}

/// `HEAD /upload/dataset/{id}`: the offset to resume from.
#[utoipa::path(head, path = "/upload/dataset/{id}", tag = "uploads", params(("id" = String, Path, description = "The upload's id (from `Location`)")),
    responses(
        (status = 200, description = "`Upload-Offset`: where to resume; `Upload-Length` when known"),
        (status = 404, description = "No such upload of this caller's"),
    ))]
async fn offset(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (_, _, upload) = request_for_upload(&state, &headers, peer, &id).await?;
    let mut response = StatusCode::OK.into_response();
    let headers = response.headers_mut();
    headers.insert("upload-offset", upload.offset.into());
    if let Some(length) = upload.length {
        headers.insert("upload-length", length.into());
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `GET /upload/dataset/{id}`: the upload as JSON (progress, and the validation once done).
#[utoipa::path(get, path = "/upload/dataset/{id}", tag = "uploads", params(("id" = String, Path, description = "The upload's id (from `Location`)")),
    responses(
        (status = 200, description = "Progress, and the validation's status and report once done", body = Object),
        (status = 404, description = "No such upload of this caller's", body = Problem, content_type = "application/problem+json"),
    ))]
async fn status(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (_, _, upload) = request_for_upload(&state, &headers, peer, &id).await?;
    let outcome = upload.outcome.as_ref();
    Ok(axum::Json(json!({
        "uploadId": upload.id,
        "datasetId": upload.metadata.dataset,
        "filename": upload.metadata.filename,
        "format": upload.metadata.format,
        "offset": upload.offset,
        "length": upload.length,
        "status": outcome.map_or("uploading", |o| o.status.as_str()),
        "reportUrl": outcome.and_then(|o| o.report_url.clone()),
        "location": upload.location(),
        "updatedAt": upload.updated_at,
    }))
    .into_response())
}

/// `DELETE /upload/dataset/{id}`: tus termination; the bytes and the state go.
#[utoipa::path(delete, path = "/upload/dataset/{id}", tag = "uploads", params(("id" = String, Path, description = "The upload's id (from `Location`)")),
    responses(
        (status = 204, description = "The upload and its bytes are gone"),
        (status = 404, description = "No such upload of this caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A request is writing it right now", body = Problem, content_type = "application/problem+json"),
    ))]
async fn terminate(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (caller, engine, upload) = request_for_upload(&state, &headers, peer, &id).await?;
    let Some(_claim) = state.uploads_in_flight.claim(&id) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "a request is writing this upload; end it first",
        ));
    };
    engine
        .uploads()
        .remove(&upload)
        .await
        .map_err(upload_error)?;
    audit(
        &state,
        &caller,
        "upload_delete",
        &upload.metadata.dataset,
        "ok",
        format!("removed upload {id}"),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PATCH /upload/dataset/{id}`: appends at `Upload-Offset`.
#[utoipa::path(patch, path = "/upload/dataset/{id}", tag = "uploads",
    params(("id" = String, Path, description = "The upload's id (from `Location`)"), ("Upload-Offset" = u64, Header, description = "Where these bytes start; must be the upload's offset")),
    request_body(content = String, content_type = "application/offset+octet-stream", description = "The next bytes"),
    responses(
        (status = 204, description = "Appended; `Upload-Offset` is the new offset"),
        (status = 200, description = "The last byte arrived and the file was validated", body = Object),
        (status = 409, description = "`Upload-Offset` is not the upload's offset, or another request is writing it", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not `application/offset+octet-stream`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The file failed the initial validation (the seed's answer)", body = Object),
    ))]
async fn append(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let caller = authorize(&state, &headers, peer, Action::Upload, None).await?;
    let engine = engine(&state)?.clone();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if content_type != Some(OFFSET_STREAM) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("a PATCH carries Content-Type: {OFFSET_STREAM}"),
        ));
    }
    let claimed = headers
        .get("upload-offset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "Upload-Offset is required"))?;
    let Some(_claim) = state.uploads_in_flight.claim(&id) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "another request is writing this upload: wait for it, then ask the offset (HEAD)",
        ));
    };
    // Read after the claim: the offset cannot move under this request.
    let mut upload = owned_upload(&state, &engine, &caller, &id).await?;
    if upload.offset != claimed {
        return Err(upload_error(UploadError::OffsetMismatch {
            expected: upload.offset,
            got: claimed,
        }));
    }
    if upload.is_complete() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the upload is complete; GET it for its validation",
        ));
    }
    write_body(&state, &engine, &caller, &mut upload, body).await
}

/// Appends a request body to `upload`; when that completes it, validates. `204` with the new
/// offset while bytes are missing.
async fn write_body(
    state: &ApiState,
    engine: &Engine,
    caller: &Caller,
    upload: &mut UploadState,
    body: Body,
) -> ApiResult<Response> {
    let area = engine.uploads();
    let limit = engine.settings().uploads.max_bytes;
    let appended = area
        .append(upload, body.into_data_stream(), limit)
        .await
        .map_err(upload_error)?;
    if let Some(cut) = &appended.cut {
        tracing::info!(upload = %upload.id, offset = upload.offset, %cut, "an upload request ended early; it resumes from its offset");
    }
    if let Some(head) = appended.head
        && let Err(why) = check_format(upload.metadata.format, &head)
    {
        return reject(state, engine, caller, upload, why, None).await;
    }
    if upload.is_complete() {
        audit(
            state,
            caller,
            "upload",
            &upload.metadata.dataset,
            "ok",
            format!("received upload {} ({} bytes)", upload.id, upload.offset),
        )
        .await?;
        return conclude(state, engine, caller, upload.clone()).await;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert("upload-offset", upload.offset.into());
    Ok(response)
}

/// The spec the initial validation reads the upload with: the format's defaults, a complete
/// snapshot.
fn validation_spec(upload: &UploadState) -> Result<DatasetSpec, String> {
    serde_json::from_value(json!({
        "id": upload.metadata.dataset,
        "trigger": "callback",
        "source": {"format": upload.metadata.format.name(), "location": upload.location()},
    }))
    .map_err(|e| e.to_string())
}

/// What a passing report says: clean, or with things the uploader should look at.
fn verdict(report: &ValidationReport) -> &'static str {
    if report.status == RunStatus::Failed {
        return REJECTED;
    }
    let noted = !report.warnings.is_empty()
        || !report.header_problems.is_empty()
        || report.rejected_rows > 0
        || report.empty_rows > 0
        || report.blank_lines > 0
        || report
            .duplicate_keys
            .as_ref()
            .is_some_and(|d| d.duplicate_rows > 0);
    if noted { WARNINGS } else { PASSED }
}

/// The seed's initial validation of a complete upload, its report, its message and its answer.
async fn conclude(
    state: &ApiState,
    engine: &Engine,
    caller: &Caller,
    mut upload: UploadState,
) -> ApiResult<Response> {
    if let Err(why) = name_is_free(state, &upload.metadata.dataset).await? {
        return reject(state, engine, caller, &upload, why, None).await;
    }
    let spec = validation_spec(&upload).map_err(ApiError::internal)?;
    let run_id = format!("upload-{}", upload.id);
    let report = engine
        .validate(&spec, &run_id)
        .await
        .map_err(ApiError::internal)?;
    let target = RunTarget {
        dataset: upload.metadata.dataset.clone(),
        run_id,
        ingest_date: chrono::Utc::now().date_naive().to_string(),
    };
    let report_url = engine
        .destination()
        .write_report(&target, &report)
        .await
        .map_err(ApiError::internal)?
        .url;
    let status = verdict(&report);
    if status == REJECTED {
        let why = report
            .error
            .clone()
            .unwrap_or_else(|| "the file did not validate".into());
        return reject(state, engine, caller, &upload, why, Some(report_url)).await;
    }
    upload.outcome = Some(UploadOutcome {
        status: status.into(),
        report_url: Some(report_url.clone()),
        reason: None,
    });
    engine.uploads().save(&upload).await.map_err(upload_error)?;
    audit(
        state,
        caller,
        "upload_validate",
        &upload.metadata.dataset,
        "ok",
        format!(
            "upload {}: {status}, {} rows read, {} rejected",
            upload.id, report.rows_read, report.rejected_rows
        ),
    )
    .await?;
    notify(
        state,
        "upload_success",
        &upload,
        Some(report_url.as_str()),
        None,
        Some(report.rows_valid),
    )
    .await;
    Ok((
        StatusCode::OK,
        axum::Json(json!({
            "datasetId": upload.metadata.dataset,
            "uploadId": upload.id,
            "status": status,
            "reportUrl": report_url,
            "location": upload.location(),
            "rows": report.rows_valid,
            "warnings": report.warnings,
        })),
    )
        .into_response())
}

/// A refused upload: removed from `temp/`, audited, announced, answered 422.
async fn reject(
    state: &ApiState,
    engine: &Engine,
    caller: &Caller,
    upload: &UploadState,
    why: String,
    report_url: Option<String>,
) -> ApiResult<Response> {
    let area: &UploadArea = engine.uploads();
    area.remove(upload).await.map_err(upload_error)?;
    audit(
        state,
        caller,
        "upload_validate",
        &upload.metadata.dataset,
        "rejected",
        format!("upload {}: {why}", upload.id),
    )
    .await?;
    notify(
        state,
        "validation_failed",
        upload,
        report_url.as_deref(),
        Some(why.as_str()),
        None,
    )
    .await;
    Ok((
        StatusCode::UNPROCESSABLE_ENTITY,
        axum::Json(json!({
            "datasetId": upload.metadata.dataset,
            "uploadId": upload.id,
            "status": REJECTED,
            "reportUrl": report_url,
            "reason": why,
        })),
    )
        .into_response())
}

async fn notify(
    state: &ApiState,
    event: &'static str,
    upload: &UploadState,
    report_url: Option<&str>,
    reason: Option<&str>,
    rows: Option<u64>,
) {
    let note = Notification {
        event,
        dataset_id: upload.metadata.dataset.clone(),
        run_id: format!("upload-{}", upload.id),
        at: chrono::Utc::now(),
        rows,
        manifest: None,
        reason: reason.map(str::to_owned),
        upload_id: Some(upload.id.clone()),
        report: report_url.map(str::to_owned),
    };
    // Through the outbox: a relay publishes it to RabbitMQ and delivers it to the webhooks.
    let message = note.message(format!("upload:{}:{event}", upload.id), true);
    if let Err(e) = state.catalog.record_messages(&[message]).await {
        tracing::error!(error = %e, upload = %upload.id, "upload message not recorded");
    }
}

/// Whether `caller` may point a dataset at `location` (`upload://<id>`): the upload exists, is
/// complete and validated, and is theirs (or they are an admin).
pub(crate) async fn check_use(
    state: &ApiState,
    caller: &Caller,
    location: &str,
) -> Result<(), String> {
    let Some(id) = location.strip_prefix(carga_jobs::upload::UPLOAD_SCHEME) else {
        return Ok(());
    };
    let Some(engine) = &state.engine else {
        return Err("this API process cannot read uploads (no master key)".into());
    };
    let upload = match engine.uploads().state(id).await {
        Ok(Some(upload)) => upload,
        Ok(None) | Err(UploadError::NotFound(_)) => return Err(format!("no upload '{id}'")),
        Err(e) => return Err(e.to_string()),
    };
    if upload.owner != caller.subject && caller.role != Role::Admin {
        return Err(format!("no upload '{id}'"));
    }
    match &upload.outcome {
        Some(outcome) if outcome.status != REJECTED => Ok(()),
        _ => Err(format!(
            "upload '{id}' is not finished and validated yet ({} of {} bytes)",
            upload.offset,
            upload.length.map_or("?".into(), |l| l.to_string())
        )),
    }
}

/// Removes abandoned uploads every so often, for as long as the API serves.
pub(crate) fn spawn_sweeper(state: Arc<ApiState>) {
    let Some(engine) = state.engine.clone() else {
        return;
    };
    let idle =
        std::time::Duration::from_secs(engine.settings().uploads.abandoned_after_hours * 3600);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(600));
        loop {
            every.tick().await;
            match engine.uploads().sweep(idle).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "abandoned uploads removed"),
                Err(e) => tracing::warn!(error = %e, "sweeping abandoned uploads failed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tus_metadata_is_parsed_and_checked() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "upload-metadata",
            HeaderValue::from_static("filename dmVudGFzLmNzdg==,dataset dmVudGFz, is_confidential"),
        );
        let pairs = parse_metadata(&headers).unwrap();
        assert_eq!(pairs[0], ("filename".into(), "ventas.csv".into()));
        assert_eq!(pairs[1], ("dataset".into(), "ventas".into()));
        assert_eq!(pairs[2], ("is_confidential".into(), String::new()));
        let metadata =
            upload_metadata(Some("ventas".into()), Some("ventas.csv".into()), None).unwrap();
        assert_eq!(metadata.format, UploadFormat::Csv);
        assert!(upload_metadata(Some("../x".into()), Some("a.csv".into()), None).is_err());
        assert!(upload_metadata(None, Some("a.csv".into()), None).is_err());
        headers.insert("upload-metadata", HeaderValue::from_static("filename %%%"));
        assert!(parse_metadata(&headers).is_err());
    }

    #[test]
    fn claims_are_exclusive_and_let_go() {
        let set = InFlight::default();
        let first = set.claim("a").unwrap();
        assert!(set.claim("a").is_none());
        drop(first);
        assert!(set.claim("a").is_some());
    }
}
