//! REST API source: pages of JSON fetched one at a time (authenticated, paced, retried), the
//! records found at `records_path`, their schema inferred from the first records, and batches
//! decoded by arrow-json. Memory holds one page and one batch of records, never the listing.
//!
//! Delta runs send the stored watermark's timestamp as a request parameter (`updated_since`)
//! so the API returns only what changed; the pipeline's delta cursor then drops the rows already
//! delivered, so an inclusive parameter loses nothing and repeats nothing.

mod client;
mod pagination;

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::json::reader::{ReaderBuilder, infer_json_schema_from_iterator};
use carga_config::{DatasetSpec, IncrementalParam, NewColumnPolicy, RestSource};
use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use serde_json::Value;
use url::Url;

use self::client::{FetchError, RestClient};
use self::pagination::{Pager, set_param};
use super::{Capabilities, Source, SourceAccess, SourceOutput};
use crate::access::{AccessPolicy, NetworkPolicy};
use crate::delta::Watermark;
use crate::error::{JobError, Result};
use crate::secrets::ConnectionSecret;
use crate::validation::ReadStats;

/// A JSON listing behind an HTTP API.
pub struct RestApi {
    spec: DatasetSpec,
    config: RestSource,
    policy: AccessPolicy,
}

impl RestApi {
    pub fn new(spec: &DatasetSpec, config: RestSource, policy: AccessPolicy) -> Self {
        Self {
            spec: spec.clone(),
            config,
            policy,
        }
    }
}

#[async_trait::async_trait]
impl Source for RestApi {
    fn describe(&self) -> String {
        self.config.location.clone()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            filter_dialect: None,
            cursor_pushdown: self.config.rest.incremental.is_some(),
        }
    }

    async fn read(
        self: Arc<Self>,
        output: SourceOutput,
        access: SourceAccess,
    ) -> Result<ReadStats> {
        read(
            &self.spec,
            &self.config,
            access.secret,
            access.floor,
            access.lookback,
            self.policy.network,
            output,
        )
        .await
    }
}

/// Reads the whole listing into the pipeline.
async fn read(
    spec: &DatasetSpec,
    config: &RestSource,
    secret: Option<ConnectionSecret>,
    floor: Option<Watermark>,
    lookback: Option<u64>,
    network: NetworkPolicy,
    mut ctx: SourceOutput,
) -> Result<ReadStats> {
    let rest = &config.rest;
    let first = first_url(spec, config, floor.as_ref(), lookback).map_err(|m| ctx.bad_input(m))?;
    let mut client = RestClient::new(rest, secret, network).map_err(|m| ctx.bad_input(m))?;
    let mut pager = Pager::new(first, &rest.pagination);
    let mut stats = ReadStats::default();
    let mut pending: Vec<Pending> = Vec::new();
    let mut schema: Option<SchemaRef> = None;
    let mut page = 0u64;
    // With `new_columns: add`, a field first seen after the sample must not vanish silently.
    let added_columns_matter = spec.new_columns == NewColumnPolicy::Add;

    while let Some(url) = pager.current().cloned() {
        page += 1;
        if page > rest.max_pages {
            return Err(ctx.bad_input(format!(
                "the listing has more than rest.max_pages ({}) pages; raise it if that is expected",
                rest.max_pages
            )));
        }
        let records = fetch_page(
            &mut client,
            &mut pager,
            &url,
            page,
            &rest.records_path,
            &ctx,
        )
        .await?;
        for (index, record) in records.into_iter().enumerate() {
            stats.rows_read += 1;
            let at = Position {
                page,
                record: index as u64 + 1,
                overall: stats.rows_read,
            };
            if record.is_object() {
                pending.push(Pending { at, record });
            } else {
                let reason = format!(
                    "{at}: a record should be a JSON object, found {}",
                    kind_of(&record)
                );
                ctx.reject(&mut stats, at.overall, "not an object", reason)?;
            }
        }
        if schema.is_none() && pending.len() >= rest.infer_records.max(1) {
            schema = Some(announce(&mut ctx, &pending)?);
        }
        if let Some(schema) = &schema {
            while pending.len() >= ctx.batch_rows {
                let rest_of_page = pending.split_off(ctx.batch_rows);
                let batch = std::mem::replace(&mut pending, rest_of_page);
                if !flush(schema, batch, added_columns_matter, &ctx, &mut stats).await? {
                    return Ok(stats);
                }
            }
        }
    }
    let schema = match schema {
        Some(schema) => schema,
        None => announce(&mut ctx, &pending)?,
    };
    flush(&schema, pending, added_columns_matter, &ctx, &mut stats).await?;
    tracing::info!(
        pages = page,
        requests = client.requests,
        oauth2_tokens = client.tokens_fetched,
        records = stats.rows_read,
        "REST listing read"
    );
    Ok(stats)
}

/// Fetches one page, moves the pager past it, and returns its records.
async fn fetch_page(
    client: &mut RestClient,
    pager: &mut Pager,
    url: &Url,
    page: u64,
    records_path: &str,
    ctx: &SourceOutput,
) -> Result<Vec<Value>> {
    let where_ = format!("page {page} ({url})");
    let response = client.get(url).await.map_err(|e| match e {
        FetchError::Http(message) => JobError::Http {
            context: format!("{}, {where_}", ctx.location),
            message,
        },
        FetchError::Page(message) => ctx.bad_input(format!("{where_}: {message}")),
        FetchError::Denied(message) => JobError::Denied {
            rule: "outbound policy",
            message: format!("{}, {where_}: {message}", ctx.location),
        },
    })?;
    let mut body: Value = serde_json::from_slice(&response.body)
        .map_err(|e| ctx.bad_input(format!("{where_}: the body is not JSON: {e}")))?;
    let count = match json_path(&body, records_path) {
        Some(Value::Array(records)) => records.len(),
        Some(other) => {
            return Err(ctx.bad_input(format!(
                "{where_}: '{}' should be an array of records, found {}",
                display_path(records_path),
                kind_of(other)
            )));
        }
        None => {
            return Err(ctx.bad_input(format!(
                "{where_}: the body has no '{}' (rest.records_path)",
                display_path(records_path)
            )));
        }
    };
    pager
        .advance(&body, &response.headers, count)
        .map_err(|m| ctx.bad_input(format!("{where_}: {m}")))?;
    Ok(match json_path_mut(&mut body, records_path) {
        Some(Value::Array(records)) => std::mem::take(records),
        _ => Vec::new(),
    })
}

/// The first page's URL: the location, the spec's fixed parameters, and on delta runs the
/// incremental parameter from the watermark.
fn first_url(
    spec: &DatasetSpec,
    config: &RestSource,
    floor: Option<&Watermark>,
    lookback: Option<u64>,
) -> Result<Url, String> {
    let rest = &config.rest;
    let mut url =
        Url::parse(&config.location).map_err(|e| format!("source.location is not a URL: {e}"))?;
    for (name, value) in &rest.query {
        set_param(&mut url, name, value);
    }
    if let Some(incremental) = &rest.incremental {
        let column = spec.timestamp_column.as_deref().unwrap_or_default();
        if let Some(value) = incremental_value(incremental, floor, column, lookback)? {
            set_param(&mut url, &incremental.param, &value);
        }
    }
    Ok(url)
}

/// The value of the incremental parameter: the watermark's timestamp (minus the lookback), in the
/// format the API expects; `initial` before the first watermark.
pub(crate) fn incremental_value(
    param: &IncrementalParam,
    floor: Option<&Watermark>,
    column: &str,
    lookback: Option<u64>,
) -> Result<Option<String>, String> {
    let Some(text) = floor.and_then(|w| w.values.get(column)) else {
        return Ok(param.initial.clone());
    };
    let Some(instant) = parse_instant(text) else {
        // A text cursor the API compares as text: send it as stored.
        return match param.format.as_str() {
            "rfc3339" if lookback.is_none() => Ok(Some(text.clone())),
            _ => Err(format!(
                "rest.incremental: the watermark '{text}' of '{column}' is not a date or timestamp (declare its type in `schema`)"
            )),
        };
    };
    let instant = instant - chrono::Duration::seconds(lookback.unwrap_or(0) as i64);
    Ok(Some(match param.format.as_str() {
        "rfc3339" => instant.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        "epoch_seconds" => instant.timestamp().to_string(),
        "epoch_millis" => instant.timestamp_millis().to_string(),
        pattern => {
            use std::fmt::Write;
            let mut out = String::new();
            write!(out, "{}", instant.format(pattern)).map_err(|_| {
                format!("rest.incremental.format '{pattern}' is not a valid chrono format")
            })?;
            out
        }
    }))
}

/// A watermark's timestamp text as an instant (naive timestamps are UTC).
fn parse_instant(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for pattern in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, pattern) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc())
}

/// Where a record came from, for messages.
#[derive(Debug, Clone, Copy)]
struct Position {
    page: u64,
    /// 1-based within the page.
    record: u64,
    /// 1-based within the run (the row number of the validation report).
    overall: u64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "page {} record {}", self.page, self.record)
    }
}

struct Pending {
    at: Position,
    record: Value,
}

/// Infers the schema from the records held so far, applies the type hints, and announces it.
fn announce(ctx: &mut SourceOutput, pending: &[Pending]) -> Result<SchemaRef> {
    let inferred = infer_json_schema_from_iterator(pending.iter().map(|p| Ok(p.record.clone())))
        .map_err(|e| {
            ctx.bad_input(format!(
                "cannot infer a schema from the first {} records: {e}",
                pending.len()
            ))
        })?;
    let schema = super::json::apply_hints(inferred, &ctx.hints);
    ctx.announce_schema(schema.clone());
    Ok(schema)
}

/// Decodes records into one batch and sends it; a record that does not fit the schema is found
/// by decoding each on its own, and handled by the malformed-row policy. `false` when the
/// pipeline stopped listening.
async fn flush(
    schema: &SchemaRef,
    mut records: Vec<Pending>,
    refuse_unknown_fields: bool,
    ctx: &SourceOutput,
    stats: &mut ReadStats,
) -> Result<bool> {
    if refuse_unknown_fields {
        let mut kept = Vec::with_capacity(records.len());
        for pending in records {
            let unknown = pending.record.as_object().and_then(|fields| {
                fields
                    .keys()
                    .find(|name| schema.field_with_name(name).is_err())
                    .cloned()
            });
            match unknown {
                Some(name) => {
                    let reason = format!(
                        "{}: field '{name}' first appears after the records the schema was inferred from (raise rest.infer_records)",
                        pending.at
                    );
                    ctx.reject(stats, pending.at.overall, "unknown field", reason)?;
                }
                None => kept.push(pending),
            }
        }
        records = kept;
    }
    if records.is_empty() {
        return Ok(true);
    }
    let batch = match decode(schema, records.iter().map(|p| &p.record)) {
        Ok(batch) => batch,
        Err(_) => {
            let mut good = Vec::with_capacity(records.len());
            for pending in &records {
                match decode(schema, std::iter::once(&pending.record)) {
                    Ok(_) => good.push(&pending.record),
                    Err(e) => {
                        let reason = format!("{}: does not fit the schema: {e}", pending.at);
                        ctx.reject(stats, pending.at.overall, "type mismatch", reason)?;
                    }
                }
            }
            decode(schema, good.into_iter())
                .map_err(|e| JobError::arrow(ctx.location.clone(), e))?
        }
    };
    Ok(match batch {
        Some(batch) if batch.num_rows() > 0 => ctx.send_async(batch).await,
        _ => true,
    })
}

fn decode<'a>(
    schema: &SchemaRef,
    records: impl Iterator<Item = &'a Value>,
) -> arrow::error::Result<Option<RecordBatch>> {
    let records: Vec<&Value> = records.collect();
    let mut decoder = ReaderBuilder::new(Arc::clone(schema))
        .with_batch_size(records.len().max(1))
        .build_decoder()?;
    decoder.serialize(&records)?;
    decoder.flush()
}

/// The value at a dot path (`data.items`, `results.0.rows`); the value itself for an empty path.
pub(crate) fn json_path<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .filter(|s| !s.is_empty())
        .try_fold(value, |v, segment| match v {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
}

fn json_path_mut<'a>(value: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    path.split('.')
        .filter(|s| !s.is_empty())
        .try_fold(value, |v, segment| match v {
            Value::Object(map) => map.get_mut(segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            _ => None,
        })
}

fn display_path(path: &str) -> &str {
    if path.is_empty() { "the body" } else { path }
}

pub(crate) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn watermark(value: &str) -> Watermark {
        Watermark {
            columns: vec!["updated_at".into(), "id".into()],
            values: [
                ("updated_at".to_owned(), value.to_owned()),
                ("id".to_owned(), "7".to_owned()),
            ]
            .into(),
            ..Watermark::default()
        }
    }

    fn param(format: &str) -> IncrementalParam {
        IncrementalParam {
            param: "updated_since".into(),
            format: format.into(),
            initial: None,
        }
    }

    #[test]
    fn the_incremental_parameter_follows_the_watermark() {
        let w = watermark("2026-03-01T10:00:05.250");
        let value = |format: &str, lookback| {
            incremental_value(&param(format), Some(&w), "updated_at", lookback)
                .unwrap()
                .unwrap()
        };
        assert_eq!(value("rfc3339", None), "2026-03-01T10:00:05.250Z");
        assert_eq!(value("rfc3339", Some(60)), "2026-03-01T09:59:05.250Z");
        assert_eq!(value("epoch_seconds", None), "1772359205");
        assert_eq!(value("epoch_millis", None), "1772359205250");
        assert_eq!(value("%Y-%m-%d", None), "2026-03-01");
        let tz = watermark("2026-03-01T10:00:05+02:00");
        assert_eq!(
            incremental_value(&param("rfc3339"), Some(&tz), "updated_at", None)
                .unwrap()
                .unwrap(),
            "2026-03-01T08:00:05Z"
        );
    }

    #[test]
    fn before_the_first_watermark_the_initial_value_is_sent() {
        let mut p = param("rfc3339");
        assert_eq!(
            incremental_value(&p, None, "updated_at", None).unwrap(),
            None
        );
        p.initial = Some("2020-01-01".into());
        assert_eq!(
            incremental_value(&p, None, "updated_at", None)
                .unwrap()
                .as_deref(),
            Some("2020-01-01")
        );
    }

    #[test]
    fn a_text_watermark_is_sent_as_stored_but_cannot_take_a_lookback() {
        let w = watermark("v-000123");
        assert_eq!(
            incremental_value(&param("rfc3339"), Some(&w), "updated_at", None)
                .unwrap()
                .as_deref(),
            Some("v-000123")
        );
        let err =
            incremental_value(&param("rfc3339"), Some(&w), "updated_at", Some(60)).unwrap_err();
        assert!(err.contains("not a date or timestamp"), "{err}");
    }

    #[test]
    fn dot_paths_walk_objects_and_arrays() {
        let body = json!({"data": {"items": [{"a": 1}], "pages": [{"rows": [2]}]}});
        assert_eq!(json_path(&body, "data.items"), Some(&json!([{"a": 1}])));
        assert_eq!(json_path(&body, "data.pages.0.rows"), Some(&json!([2])));
        assert_eq!(json_path(&body, ""), Some(&body));
        assert_eq!(json_path(&body, "data.missing"), None);
        assert_eq!(json_path(&body, "data.items.x"), None);
    }
}
