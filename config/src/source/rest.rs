//! `format: rest`: a JSON API, page by page.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A REST API: `location` is the first page's URL; `rest` says how to authenticate, paginate
/// and find the records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RestSource {
    pub location: String,
    #[serde(default)]
    pub rest: RestOptions,
}

impl RestSource {
    pub(crate) const FIELDS: &'static [&'static str] = &["location", "rest"];

    /// `connection_id` and whether the spec has a `timestamp_column`: what the API options need.
    pub(crate) fn validate(
        &self,
        connection_id: Option<&str>,
        has_timestamp_column: bool,
    ) -> Result<(), String> {
        let rest = &self.rest;
        let url = url::Url::parse(&self.location)
            .map_err(|e| format!("source.location '{}' is not a URL: {e}", self.location))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("a rest source's location must be an http(s) URL".into());
        }
        if rest.auth != RestAuth::None && connection_id.is_none_or(str::is_empty) {
            return Err(
                "rest.auth needs connection_id (the secret holding the API credentials)".into(),
            );
        }
        if let RestAuth::ApiKey {
            header: Some(_),
            query_param: Some(_),
        } = &rest.auth
        {
            return Err("rest.auth api_key: give header or query_param, not both".into());
        }
        match &rest.pagination {
            Pagination::Offset { limit: 0, .. } | Pagination::Page { size: Some(0), .. } => {
                return Err("rest.pagination: the page size must be at least 1".into());
            }
            Pagination::Cursor {
                cursor_path: None,
                next_url_path: None,
                ..
            } => {
                return Err(
                    "rest.pagination cursor needs cursor_path (a token) or next_url_path (a URL)"
                        .into(),
                );
            }
            _ => {}
        }
        if rest.incremental.is_some() && !has_timestamp_column {
            return Err(
                "rest.incremental needs `timestamp_column` (the watermark it sends)".into(),
            );
        }
        if rest.requests_per_second < 0.0 || !rest.requests_per_second.is_finite() {
            return Err("rest.requests_per_second must be 0 (no limit) or more".into());
        }
        if rest.max_attempts == 0 || rest.max_pages == 0 || rest.timeout_seconds == 0 {
            return Err(
                "rest.max_attempts, max_pages and timeout_seconds must be at least 1".into(),
            );
        }
        Ok(())
    }
}

/// A REST source: authentication, pagination, where the records are, and how to be polite.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RestOptions {
    /// Extra request headers (not secrets: those come from the connection's secret).
    pub headers: BTreeMap<String, String>,
    /// Extra query parameters sent with every request.
    pub query: BTreeMap<String, String>,
    pub auth: RestAuth,
    pub pagination: Pagination,
    /// Dot path to the records array in each page (`data.items`); the body itself when empty.
    pub records_path: String,
    pub incremental: Option<IncrementalParam>,
    /// Requests per second at most (0: no limit).
    pub requests_per_second: f64,
    /// Attempts per request for 429, 5xx, timeouts and connection errors.
    pub max_attempts: u32,
    /// First backoff between attempts, in milliseconds; doubles each attempt (capped at 60 s).
    /// A `Retry-After` header wins.
    pub backoff_ms: u64,
    /// Seconds a request may take in all.
    pub timeout_seconds: u64,
    /// A run stops with an error after this many pages (protects against endless pagination).
    pub max_pages: u64,
    /// A page larger than this is refused.
    pub max_page_bytes: usize,
    /// Records sampled for schema inference (from the first pages).
    pub infer_records: usize,
}

impl Default for RestOptions {
    fn default() -> Self {
        Self {
            headers: BTreeMap::new(),
            query: BTreeMap::new(),
            auth: RestAuth::None,
            pagination: Pagination::None,
            records_path: String::new(),
            incremental: None,
            requests_per_second: 0.0,
            max_attempts: 5,
            backoff_ms: 1000,
            timeout_seconds: 60,
            max_pages: 100_000,
            max_page_bytes: 64 * 1024 * 1024,
            infer_records: 1000,
        }
    }
}

/// How requests authenticate. Secret values are read from the connection secret's fields named
/// here (`api_key`, `token`, `username`/`password`, `client_id`/`client_secret`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "type")]
pub enum RestAuth {
    #[default]
    None,
    /// The secret's `api_key` in a header (`X-API-Key` by default) or a query parameter.
    ApiKey {
        #[serde(default)]
        header: Option<String>,
        #[serde(default)]
        query_param: Option<String>,
    },
    /// `Authorization: Bearer <token>` with the secret's `token`.
    Bearer,
    /// HTTP basic with the secret's `username` and `password`.
    Basic,
    /// OAuth2 client credentials: a token from `token_url` (or the secret's `token_url`) with the
    /// secret's `client_id` and `client_secret`, renewed before it expires and after a 401.
    #[serde(alias = "oauth2")]
    Oauth2ClientCredentials {
        #[serde(default)]
        token_url: Option<String>,
        #[serde(default)]
        scopes: Vec<String>,
    },
}

/// How the next page is found, and when to stop.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "style")]
pub enum Pagination {
    /// One request.
    #[default]
    None,
    /// `?page=1,2,3...`; stops at an empty page or one shorter than `size`.
    Page {
        #[serde(default = "default_page_param")]
        param: String,
        #[serde(default = "default_one")]
        first: u64,
        #[serde(default)]
        size_param: Option<String>,
        #[serde(default)]
        size: Option<u64>,
    },
    /// `?offset=0&limit=100`, `?offset=100&limit=100`...; stops at a short or empty page.
    Offset {
        #[serde(default = "default_offset_param")]
        param: String,
        #[serde(default = "default_limit_param")]
        limit_param: String,
        limit: u64,
    },
    /// A token in the body (`meta.next_cursor`) sent back as `param`, or a full next URL in the
    /// body (`next_url_path`); stops when it is absent, null or empty.
    Cursor {
        #[serde(default)]
        cursor_path: Option<String>,
        #[serde(default = "default_cursor_param")]
        param: String,
        #[serde(default)]
        next_url_path: Option<String>,
    },
    /// RFC 8288 `Link: <...>; rel="next"` headers (GitHub style); stops when there is none.
    LinkHeader,
}

fn default_page_param() -> String {
    "page".into()
}
fn default_one() -> u64 {
    1
}
fn default_offset_param() -> String {
    "offset".into()
}
fn default_limit_param() -> String {
    "limit".into()
}
fn default_cursor_param() -> String {
    "cursor".into()
}

/// A request parameter filled from the stored watermark on delta runs (`updated_since`), so the
/// API sends only what changed; the pipeline still filters on the exact cursor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IncrementalParam {
    pub param: String,
    /// `rfc3339` (default), `epoch_seconds`, `epoch_millis`, or a chrono format like `%Y-%m-%d`.
    #[serde(default = "default_incremental_format")]
    pub format: String,
    /// Value sent on the first run, when there is no watermark yet (none sent when absent).
    #[serde(default)]
    pub initial: Option<String>,
}

fn default_incremental_format() -> String {
    "rfc3339".into()
}
