//! Which URL comes next. Pure: it sees each page's body, headers and record count, and answers
//! with the next URL or the end, so every style is unit-tested without a server.

use carga_config::Pagination;
use reqwest::header::HeaderMap;
use serde_json::Value;
use url::Url;

use super::json_path;

/// Walks the pages of one listing.
pub(crate) struct Pager {
    style: Pagination,
    /// The first page's URL with the fixed query parameters; page-style URLs are built from it.
    base: Url,
    next: Option<Url>,
    /// Page number or offset of the next request.
    position: u64,
    /// Cursor tokens already sent, to refuse an API that hands the same one back forever.
    last_cursor: Option<String>,
}

impl Pager {
    pub fn new(base: Url, style: &Pagination) -> Self {
        let position = match style {
            Pagination::Page { first, .. } => *first,
            _ => 0,
        };
        let mut pager = Self {
            style: style.clone(),
            base,
            next: None,
            position,
            last_cursor: None,
        };
        pager.next = Some(pager.positional_url());
        pager
    }

    /// The URL to request now; `None` once the listing is over.
    pub fn current(&self) -> Option<&Url> {
        self.next.as_ref()
    }

    /// Moves past the page just read. An error names what in the page made the next one unknowable.
    pub fn advance(
        &mut self,
        body: &Value,
        headers: &HeaderMap,
        records: usize,
    ) -> Result<(), String> {
        let Some(current) = self.next.take() else {
            return Ok(());
        };
        let records = records as u64;
        self.next = match &self.style {
            Pagination::None => None,
            Pagination::Page { size, .. } => {
                if records == 0 || size.is_some_and(|s| records < s) {
                    None
                } else {
                    self.position += 1;
                    Some(self.positional_url())
                }
            }
            Pagination::Offset { limit, .. } => {
                if records == 0 || records < *limit {
                    None
                } else {
                    self.position += records;
                    Some(self.positional_url())
                }
            }
            Pagination::Cursor {
                cursor_path,
                param,
                next_url_path,
            } => {
                if let Some(path) = next_url_path {
                    match token_at(body, path)? {
                        Some(next) => Some(current.join(&next).map_err(|e| {
                            format!("next page URL '{next}' at '{path}' is not a URL: {e}")
                        })?),
                        None => None,
                    }
                } else {
                    let path = cursor_path.as_deref().unwrap_or_default();
                    match token_at(body, path)? {
                        Some(token) => {
                            if self.last_cursor.as_deref() == Some(token.as_str()) {
                                return Err(format!(
                                    "the API returned the same cursor '{token}' twice at '{path}'; stopping instead of looping"
                                ));
                            }
                            let mut url = self.base.clone();
                            set_param(&mut url, param, &token);
                            self.last_cursor = Some(token);
                            Some(url)
                        }
                        None => None,
                    }
                }
            }
            Pagination::LinkHeader => match next_link(headers) {
                Some(link) => Some(
                    current
                        .join(&link)
                        .map_err(|e| format!("Link rel=\"next\" '{link}' is not a URL: {e}"))?,
                ),
                None => None,
            },
        };
        if self.next.as_ref() == Some(&current) {
            return Err(format!(
                "the next page is the page just read ({current}); stopping instead of looping"
            ));
        }
        Ok(())
    }

    /// The base URL with the page number or offset parameters of `position`.
    fn positional_url(&self) -> Url {
        let mut url = self.base.clone();
        match &self.style {
            Pagination::Page {
                param,
                size_param,
                size,
                ..
            } => {
                set_param(&mut url, param, &self.position.to_string());
                if let (Some(size_param), Some(size)) = (size_param, size) {
                    set_param(&mut url, size_param, &size.to_string());
                }
            }
            Pagination::Offset {
                param,
                limit_param,
                limit,
            } => {
                set_param(&mut url, param, &self.position.to_string());
                set_param(&mut url, limit_param, &limit.to_string());
            }
            _ => {}
        }
        url
    }
}

/// Sets a query parameter, replacing any value it had.
pub(crate) fn set_param(url: &mut Url, name: &str, value: &str) {
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut pairs = url.query_pairs_mut();
    pairs.clear();
    for (k, v) in &kept {
        pairs.append_pair(k, v);
    }
    pairs.append_pair(name, value);
}

/// A cursor or URL at `path`: a non-empty string or a number; absent, null, `false` or `""` end
/// the listing; anything else is a malformed page.
fn token_at(body: &Value, path: &str) -> Result<Option<String>, String> {
    match json_path(body, path) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(format!(
            "the cursor at '{path}' should be a string or a number, found {}",
            super::kind_of(other)
        )),
    }
}

/// The `rel="next"` target of RFC 8288 `Link` headers (several headers or comma-joined links).
fn next_link(headers: &HeaderMap) -> Option<String> {
    for header in headers.get_all(reqwest::header::LINK) {
        let Ok(text) = header.to_str() else { continue };
        let mut rest = text;
        while let Some(open) = rest.find('<') {
            let Some(close) = rest[open..].find('>') else {
                break;
            };
            let target = &rest[open + 1..open + close];
            let after = &rest[open + close + 1..];
            let params = &after[..after.find('<').unwrap_or(after.len())];
            let is_next = params.split(';').any(|p| {
                let p = p.trim().trim_end_matches(',').trim();
                p.strip_prefix("rel=").is_some_and(|rels| {
                    rels.trim_matches('"')
                        .split_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
                })
            });
            if is_next {
                return Some(target.to_owned());
            }
            rest = after;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Url {
        Url::parse("http://api.test/v1/items?status=open").unwrap()
    }

    fn no_headers() -> HeaderMap {
        HeaderMap::new()
    }

    #[test]
    fn page_numbers_stop_at_a_short_page() {
        let style = Pagination::Page {
            param: "page".into(),
            first: 1,
            size_param: Some("per_page".into()),
            size: Some(2),
        };
        let mut pager = Pager::new(base(), &style);
        assert_eq!(
            pager.current().unwrap().as_str(),
            "http://api.test/v1/items?status=open&page=1&per_page=2"
        );
        pager.advance(&json!([]), &no_headers(), 2).unwrap();
        assert_eq!(
            pager.current().unwrap().as_str(),
            "http://api.test/v1/items?status=open&page=2&per_page=2"
        );
        pager.advance(&json!([]), &no_headers(), 1).unwrap();
        assert!(pager.current().is_none());
    }

    #[test]
    fn page_numbers_without_a_size_stop_at_an_empty_page() {
        let style = Pagination::Page {
            param: "p".into(),
            first: 0,
            size_param: None,
            size: None,
        };
        let mut pager = Pager::new(base(), &style);
        pager.advance(&json!([]), &no_headers(), 7).unwrap();
        assert!(pager.current().unwrap().as_str().ends_with("p=1"));
        pager.advance(&json!([]), &no_headers(), 0).unwrap();
        assert!(pager.current().is_none());
    }

    #[test]
    fn offsets_move_by_the_records_read() {
        let style = Pagination::Offset {
            param: "offset".into(),
            limit_param: "limit".into(),
            limit: 100,
        };
        let mut pager = Pager::new(base(), &style);
        assert!(
            pager
                .current()
                .unwrap()
                .as_str()
                .ends_with("offset=0&limit=100")
        );
        pager.advance(&json!({}), &no_headers(), 100).unwrap();
        assert!(
            pager
                .current()
                .unwrap()
                .as_str()
                .ends_with("offset=100&limit=100")
        );
        pager.advance(&json!({}), &no_headers(), 40).unwrap();
        assert!(pager.current().is_none());
    }

    #[test]
    fn cursors_come_from_the_body_and_end_when_absent() {
        let style = Pagination::Cursor {
            cursor_path: Some("meta.next".into()),
            param: "cursor".into(),
            next_url_path: None,
        };
        let mut pager = Pager::new(base(), &style);
        pager
            .advance(&json!({"meta": {"next": "abc=="}}), &no_headers(), 3)
            .unwrap();
        assert_eq!(
            pager.current().unwrap().as_str(),
            "http://api.test/v1/items?status=open&cursor=abc%3D%3D"
        );
        pager
            .advance(&json!({"meta": {"next": 17}}), &no_headers(), 3)
            .unwrap();
        assert!(pager.current().unwrap().as_str().ends_with("cursor=17"));
        pager
            .advance(&json!({"meta": {"next": null}}), &no_headers(), 3)
            .unwrap();
        assert!(pager.current().is_none());
    }

    #[test]
    fn a_repeated_cursor_or_a_cursor_of_the_wrong_kind_is_an_error() {
        let style = Pagination::Cursor {
            cursor_path: Some("next".into()),
            param: "cursor".into(),
            next_url_path: None,
        };
        let mut pager = Pager::new(base(), &style);
        pager
            .advance(&json!({"next": "x"}), &no_headers(), 1)
            .unwrap();
        let err = pager
            .advance(&json!({"next": "x"}), &no_headers(), 1)
            .unwrap_err();
        assert!(err.contains("same cursor 'x' twice"), "{err}");
        let mut pager = Pager::new(base(), &style);
        let err = pager
            .advance(&json!({"next": {"a": 1}}), &no_headers(), 1)
            .unwrap_err();
        assert!(err.contains("found an object"), "{err}");
    }

    #[test]
    fn next_urls_in_the_body_may_be_relative() {
        let style = Pagination::Cursor {
            cursor_path: None,
            param: "cursor".into(),
            next_url_path: Some("links.next".into()),
        };
        let mut pager = Pager::new(base(), &style);
        pager
            .advance(
                &json!({"links": {"next": "/v1/items?after=9"}}),
                &no_headers(),
                1,
            )
            .unwrap();
        assert_eq!(
            pager.current().unwrap().as_str(),
            "http://api.test/v1/items?after=9"
        );
        pager
            .advance(&json!({"links": {"next": ""}}), &no_headers(), 1)
            .unwrap();
        assert!(pager.current().is_none());
    }

    #[test]
    fn link_headers_are_followed_to_rel_next() {
        let mut pager = Pager::new(base(), &Pagination::LinkHeader);
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::LINK,
            r#"<http://api.test/v1/items?page=1>; rel="first", <http://api.test/v1/items?page=3>; rel="next", <http://api.test/v1/items?page=9>; rel="last""#
                .parse()
                .unwrap(),
        );
        pager.advance(&json!([]), &headers, 1).unwrap();
        assert_eq!(
            pager.current().unwrap().as_str(),
            "http://api.test/v1/items?page=3"
        );
        headers.insert(
            reqwest::header::LINK,
            r#"</v1/items?page=4>; rel="prev next""#.parse().unwrap(),
        );
        pager.advance(&json!([]), &headers, 1).unwrap();
        assert_eq!(
            pager.current().unwrap().as_str(),
            "http://api.test/v1/items?page=4"
        );
        headers.insert(
            reqwest::header::LINK,
            r#"<http://api.test/v1/items?page=1>; rel="first""#.parse().unwrap(),
        );
        pager.advance(&json!([]), &headers, 1).unwrap();
        assert!(pager.current().is_none());
    }

    #[test]
    fn no_pagination_is_one_request() {
        let mut pager = Pager::new(base(), &Pagination::None);
        assert_eq!(pager.current(), Some(&base()));
        pager.advance(&json!([1]), &no_headers(), 1).unwrap();
        assert!(pager.current().is_none());
    }
}
