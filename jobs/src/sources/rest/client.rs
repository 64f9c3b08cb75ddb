//! One HTTP client per run: authentication (API key, bearer, basic, OAuth2 client credentials with
//! renewal), a request rate limit, and retries of 429 / 5xx / timeouts with backoff that honours
//! `Retry-After`. Secret values live only in request headers and never reach a message.

use std::time::Duration;

use bytes::Bytes;
use carga_config::{RestAuth, RestOptions};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;
use url::Url;

use crate::access::NetworkPolicy;
use crate::redact::Redactor;
use crate::retry::Backoff;
use crate::secrets::ConnectionSecret;

/// The longest `Retry-After` we wait for; a server asking for more fails the run instead of
/// holding a worker.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Backoff doubles per attempt up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A token is renewed this long before the expiry its server announced.
const TOKEN_MARGIN: Duration = Duration::from_secs(30);
/// How much of a failed response's body a message quotes (redacted): enough to see the API's
/// reason, too little to carry a page of echoed request data.
const SNIPPET_CHARS: usize = 120;

/// Why a request did not return a usable page. Messages carry no secret.
#[derive(Debug)]
pub(crate) enum FetchError {
    /// The server or network kept failing (after all attempts) or refused us (4xx).
    Http(String),
    /// The page arrived but is not one we can use (too large).
    Page(String),
    /// The request was not sent: the address or the credentials' host is not allowed.
    Denied(String),
}

/// A page as received.
pub(crate) struct Response {
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub(crate) struct RestClient {
    http: reqwest::Client,
    options: RestOptions,
    secret: Option<ConnectionSecret>,
    redactor: Redactor,
    network: NetworkPolicy,
    pacer: Pacer,
    token: Option<Token>,
    /// Requests sent (every attempt), for the run's log line.
    pub requests: u64,
    /// OAuth2 tokens obtained.
    pub tokens_fetched: u64,
}

struct Token {
    value: String,
    renew_at: Option<Instant>,
}

impl RestClient {
    pub fn new(
        options: &RestOptions,
        secret: Option<ConnectionSecret>,
        network: NetworkPolicy,
    ) -> Result<Self, String> {
        // Credentials follow a redirect only to a host the connection names.
        let bound = (options.auth != RestAuth::None)
            .then(|| secret.clone())
            .flatten();
        let http = network
            .client_builder_checking(move |url| match &bound {
                Some(secret) if !secret.may_send_to(url) => Err(format!(
                    "{} is not a host connection '{}' may send its credentials to",
                    url.host_str().unwrap_or_default(),
                    secret.id()
                )),
                _ => Ok(()),
            })
            .timeout(Duration::from_secs(options.timeout_seconds))
            .user_agent(concat!("carga/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        if options.auth != RestAuth::None && secret.is_none() {
            return Err("rest.auth is set but the connection has no secret".into());
        }
        let redactor = secret
            .as_ref()
            .map(ConnectionSecret::redactor)
            .unwrap_or_default();
        Ok(Self {
            http,
            options: options.clone(),
            secret,
            redactor,
            network,
            pacer: Pacer::new(options.requests_per_second),
            token: None,
            requests: 0,
            tokens_fetched: 0,
        })
    }

    /// GETs `url`, retrying what may pass on a later attempt.
    pub async fn get(&mut self, url: &Url) -> Result<Response, FetchError> {
        let mut pauses = self.backoff().pauses();
        let mut attempt = 1;
        let mut renewed_after_401 = false;
        self.may_request(url)?;
        loop {
            self.pacer.wait().await;
            let request = self
                .authorize(self.http.get(self.with_query_key(url)?))
                .await?;
            self.requests += 1;
            let failure = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    return self.read_body(response).await;
                }
                Ok(response) => {
                    let status = response.status();
                    let retry_after = retry_after(response.headers());
                    let snippet = self.snippet(response).await;
                    if status == StatusCode::UNAUTHORIZED && self.is_oauth2() && !renewed_after_401
                    {
                        // The token expired early or was revoked: renew once, right away.
                        self.token = None;
                        renewed_after_401 = true;
                        continue;
                    }
                    if !is_retryable(status) {
                        return Err(FetchError::Http(format!("HTTP {status}{snippet}")));
                    }
                    Failure {
                        message: format!("HTTP {status}{snippet}"),
                        retry_after,
                    }
                }
                // A refused redirect is the policy's answer: trying again changes nothing.
                Err(e) if e.is_redirect() => return Err(FetchError::Denied(describe(&e))),
                Err(e) => Failure {
                    message: describe(&e),
                    retry_after: None,
                },
            };
            let Some(pause) = pauses.next() else {
                return Err(FetchError::Http(format!(
                    "{} (after {attempt} attempts)",
                    failure.message
                )));
            };
            let wait = match failure.retry_after {
                Some(wait) if wait > MAX_RETRY_AFTER => {
                    return Err(FetchError::Http(format!(
                        "{}: the server asks to retry after {} s, more than the {} s a run waits",
                        failure.message,
                        wait.as_secs(),
                        MAX_RETRY_AFTER.as_secs()
                    )));
                }
                Some(wait) => wait,
                None => pause,
            };
            tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, reason = %failure.message, "request failed; retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// Refuses a URL this process may not reach, and one the connection's credentials may not
    /// be sent to (every page, `next` URLs and token URLs alike), before anything is sent.
    fn may_request(&self, url: &Url) -> Result<(), FetchError> {
        self.network.check_url(url).map_err(|why| {
            FetchError::Denied(format!(
                "{why}, which this process may not reach (sources.allow_private_networks)"
            ))
        })?;
        if self.options.auth == RestAuth::None {
            return Ok(());
        }
        let Some(secret) = &self.secret else {
            return Ok(());
        };
        if secret.may_send_to(url) {
            return Ok(());
        }
        let allowed: Vec<String> = secret
            .allowed_hosts()
            .iter()
            .map(ToString::to_string)
            .collect();
        Err(FetchError::Denied(format!(
            "connection '{}' may send its credentials only to {}; {} is not one of them (the secret's allowed_hosts names where they may go)",
            secret.id(),
            if allowed.is_empty() {
                "no host".to_owned()
            } else {
                allowed.join(", ")
            },
            url.host_str().unwrap_or("a URL without a host"),
        )))
    }

    /// The pauses between tries: `backoff_ms` doubling, `max_attempts` tries in all.
    fn backoff(&self) -> Backoff {
        Backoff::new(Duration::from_millis(self.options.backoff_ms), MAX_BACKOFF)
            .attempts(self.options.max_attempts)
    }

    fn is_oauth2(&self) -> bool {
        matches!(self.options.auth, RestAuth::Oauth2ClientCredentials { .. })
    }

    fn field(&self, name: &str) -> Result<String, FetchError> {
        self.secret
            .as_ref()
            .and_then(|s| s.field(name))
            .ok_or_else(|| FetchError::Http(format!("the connection secret has no `{name}` field")))
    }

    /// `url` with the API key as a query parameter, when the key goes there.
    fn with_query_key(&self, url: &Url) -> Result<Url, FetchError> {
        let mut url = url.clone();
        if let RestAuth::ApiKey {
            query_param: Some(param),
            ..
        } = &self.options.auth
        {
            // Replaces a value already in the URL rather than sending two.
            super::pagination::set_param(&mut url, param, &self.field("api_key")?);
        }
        Ok(url)
    }

    /// Adds the spec's headers and the credentials (but a query-parameter API key) to a request.
    async fn authorize(
        &mut self,
        mut request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, FetchError> {
        for (name, value) in &self.options.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                FetchError::Http(format!("rest.headers: '{name}' is not a header name"))
            })?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                FetchError::Http(format!("rest.headers: the value of '{name}' is not valid"))
            })?;
            request = request.header(name, value);
        }
        match self.options.auth.clone() {
            RestAuth::None => {}
            RestAuth::ApiKey {
                query_param: Some(_),
                ..
            } => {}
            RestAuth::ApiKey { header, .. } => {
                let key = self.field("api_key")?;
                let name = header.unwrap_or_else(|| "X-API-Key".into());
                request = request.header(name, sensitive(&key)?);
            }
            RestAuth::Bearer => {
                let token = self.field("token")?;
                request = request.header(
                    reqwest::header::AUTHORIZATION,
                    sensitive(&format!("Bearer {token}"))?,
                );
            }
            RestAuth::Basic => {
                let user = self.field("username")?;
                let password = self.field("password")?;
                request = request.basic_auth(user, Some(password));
            }
            RestAuth::Oauth2ClientCredentials { token_url, scopes } => {
                let token = self.oauth2_token(token_url.as_deref(), &scopes).await?;
                request = request.header(
                    reqwest::header::AUTHORIZATION,
                    sensitive(&format!("Bearer {token}"))?,
                );
            }
        }
        Ok(request)
    }

    /// The cached OAuth2 token, or a new one when it is missing or about to expire.
    async fn oauth2_token(
        &mut self,
        token_url: Option<&str>,
        scopes: &[String],
    ) -> Result<String, FetchError> {
        if let Some(token) = &self.token
            && token.renew_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok(token.value.clone());
        }
        let token_url = match token_url {
            Some(url) => url.to_owned(),
            None => self.field("token_url")?,
        };
        let client_id = self.field("client_id")?;
        let client_secret = self.field("client_secret")?;
        let token_endpoint = Url::parse(&token_url)
            .map_err(|e| FetchError::Http(format!("OAuth2 token_url is not a URL: {e}")))?;
        self.may_request(&token_endpoint)?;
        let mut form = vec![("grant_type", "client_credentials".to_owned())];
        if !scopes.is_empty() {
            form.push(("scope", scopes.join(" ")));
        }
        let mut pauses = self.backoff().pauses();
        let mut attempt = 1;
        let response = loop {
            self.pacer.wait().await;
            self.requests += 1;
            let sent = self
                .http
                .post(&token_url)
                .basic_auth(&client_id, Some(&client_secret))
                .form(&form)
                .send()
                .await;
            let failure = match sent {
                Ok(r) if r.status().is_success() => break r,
                Ok(r) if !is_retryable(r.status()) => {
                    let status = r.status();
                    let snippet = self.snippet(r).await;
                    return Err(FetchError::Http(format!(
                        "OAuth2 token request to {token_url} refused: HTTP {status}{snippet}"
                    )));
                }
                Ok(r) => format!("HTTP {}", r.status()),
                Err(e) => describe(&e),
            };
            let Some(pause) = pauses.next() else {
                return Err(FetchError::Http(format!(
                    "OAuth2 token request to {token_url} failed: {failure} (after {attempt} attempts)"
                )));
            };
            tokio::time::sleep(pause).await;
            attempt += 1;
        };
        let bytes = response
            .bytes()
            .await
            .map_err(|e| FetchError::Http(format!("OAuth2 token response: {}", describe(&e))))?;
        let body: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            FetchError::Http(format!(
                "OAuth2 token response from {token_url} is not JSON: {e}"
            ))
        })?;
        let value = body
            .get("access_token")
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                FetchError::Http(format!(
                    "OAuth2 token response from {token_url} has no access_token"
                ))
            })?
            .to_owned();
        let renew_at = body.get("expires_in").and_then(|v| v.as_u64()).map(|secs| {
            let lifetime = Duration::from_secs(secs);
            // Short-lived tokens renew at half their life rather than never.
            let margin = TOKEN_MARGIN.min(lifetime / 2);
            Instant::now() + lifetime - margin
        });
        self.tokens_fetched += 1;
        tracing::debug!(token_url = %token_url, "obtained an OAuth2 access token");
        self.token = Some(Token {
            value: value.clone(),
            renew_at,
        });
        Ok(value)
    }

    /// Reads a body up to the page size limit.
    async fn read_body(&self, mut response: reqwest::Response) -> Result<Response, FetchError> {
        let headers = response.headers().clone();
        let limit = self.options.max_page_bytes;
        if response
            .content_length()
            .is_some_and(|n| n as usize > limit)
        {
            return Err(FetchError::Page(format!(
                "the page is larger than rest.max_page_bytes ({limit} bytes)"
            )));
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > limit {
                        return Err(FetchError::Page(format!(
                            "the page is larger than rest.max_page_bytes ({limit} bytes)"
                        )));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(FetchError::Http(format!(
                        "reading the page: {}",
                        describe(&e)
                    )));
                }
            }
        }
        Ok(Response {
            headers,
            body: Bytes::from(body),
        })
    }

    /// The start of an error body, for the message; secret values masked.
    async fn snippet(&self, response: reqwest::Response) -> String {
        let text = response.text().await.unwrap_or_default();
        // Masked before it is cut, so a cut cannot split a secret into unmasked halves.
        let text = self.redactor.redact(&text);
        let mut excerpt: String = text.trim().chars().take(SNIPPET_CHARS).collect();
        if excerpt.is_empty() {
            return String::new();
        }
        if text.trim().chars().count() > SNIPPET_CHARS {
            excerpt.push('…');
        }
        format!(": {excerpt}")
    }
}

struct Failure {
    message: String,
    retry_after: Option<Duration>,
}

fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// A header value that HTTP tooling must not print.
fn sensitive(value: &str) -> Result<HeaderValue, FetchError> {
    let mut header = HeaderValue::from_str(value)
        .map_err(|_| FetchError::Http("a credential is not a valid header value".into()))?;
    header.set_sensitive(true);
    Ok(header)
}

/// A reqwest error without its URL (which may hold an API key in the query).
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "the response body broke off"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(e) = source {
        detail = e.to_string();
        source = e.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = chrono::DateTime::parse_from_rfc2822(text).ok()?;
    let wait = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// Spaces request starts at least `1 / requests_per_second` apart.
struct Pacer {
    interval: Option<Duration>,
    next: Option<Instant>,
}

impl Pacer {
    fn new(requests_per_second: f64) -> Self {
        let interval =
            (requests_per_second > 0.0).then(|| Duration::from_secs_f64(1.0 / requests_per_second));
        Self {
            interval,
            next: None,
        }
    }

    async fn wait(&mut self) {
        let Some(interval) = self.interval else {
            return;
        };
        let now = Instant::now();
        if let Some(next) = self.next
            && next > now
        {
            tokio::time::sleep_until(next).await;
        }
        self.next = Some(self.next.map_or(now, |n| n.max(now)) + interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        let soon = chrono::Utc::now() + chrono::Duration::seconds(30);
        headers.insert(
            reqwest::header::RETRY_AFTER,
            soon.to_rfc2822().replace("+0000", "GMT").parse().unwrap(),
        );
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        headers.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[tokio::test]
    async fn the_pacer_spaces_requests() {
        let mut pacer = Pacer::new(20.0);
        let start = Instant::now();
        for _ in 0..5 {
            pacer.wait().await;
        }
        // Five requests at 20/s: the fifth cannot start before four intervals have passed.
        assert!(Instant::now() - start >= Duration::from_millis(200));
        let mut unlimited = Pacer::new(0.0);
        unlimited.wait().await;
        assert!(unlimited.next.is_none());
    }

    #[test]
    fn retryable_statuses() {
        for code in [429, 408, 500, 502, 503, 504] {
            assert!(is_retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [400, 401, 403, 404, 422, 501] {
            assert!(!is_retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }
}
