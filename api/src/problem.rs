//! Every error answer in one shape: RFC 9457 problem details (`application/problem+json`, with
//! `type`, `title`, `status` and `detail`). Carga's own refusals are built as problems
//! (`ApiError`); what axum answers by itself (an unknown path, a wrong method, a body or query
//! that does not parse) is turned into one by `as_problem`, so a client reads errors one way.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// The longest plain-text error body that is carried into a problem's `detail`.
const DETAIL_LIMIT: usize = 4096;

/// An RFC 9457 problem document, the body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem<'a> {
    /// Always `about:blank`: the status says what kind of problem it is.
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "about:blank")]
    kind: &'a str,
    /// The status' standard phrase.
    #[schema(value_type = String, example = "Forbidden")]
    title: &'a str,
    #[schema(example = 403)]
    status: u16,
    /// What went wrong, for a person: the dataset, file, line or column where there is one.
    #[schema(value_type = String, example = "role 'viewer' may not change a dataset's configuration")]
    detail: &'a str,
}

/// A problem answer: the status, its standard title, and what went wrong for a person.
pub fn response(status: StatusCode, detail: &str) -> Response {
    let body = Problem {
        kind: "about:blank",
        title: status.canonical_reason().unwrap_or("Error"),
        status: status.as_u16(),
        detail,
    };
    let body = serde_json::to_string(&body).expect("a problem serialises");
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

/// Middleware: an error answer in plain text or with no body (axum's own rejections of a path,
/// a method, a body or a query) becomes a problem, its text as the detail. Successful answers,
/// and the JSON documents some error statuses carry on purpose (the seed's upload validation
/// answer with 422, `/readyz`'s component states with 503), pass untouched.
pub async fn as_problem(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || !is_plain(&response) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let detail = match axum::body::to_bytes(body, DETAIL_LIMIT).await {
        Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).trim().to_owned(),
        _ => status.canonical_reason().unwrap_or("Error").to_owned(),
    };
    let mut problem = self::response(status, &detail);
    // Headers that say how to go on (Allow, Retry-After, tus' own) stay with the answer.
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            problem.headers_mut().insert(name.clone(), value.clone());
        }
    }
    problem
}

fn is_plain(response: &Response<Body>) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"))
}

/// What an unknown path answers.
pub async fn not_found(uri: axum::http::Uri) -> Response {
    response(
        StatusCode::NOT_FOUND,
        &format!("no such endpoint: {}", uri.path()),
    )
}
