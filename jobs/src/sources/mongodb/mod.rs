//! MongoDB source: the schema is inferred from a sample of the collection (see `schema` for the
//! type table and the mixed-type and nested-document policies), then one `find` cursor streams the
//! documents, each shaped exactly for its columns and decoded by arrow-json in batches. Delta runs
//! push the cursor down as `(ts, key) > (watermark)` written as an `$or` of comparisons.
//!
//! A `find` is not a point-in-time snapshot: documents changed while the cursor runs may be seen
//! in either state (MongoDB's snapshot reads expire after minutes, too short for large pulls).

mod convert;
mod schema;

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::json::reader::{Decoder, ReaderBuilder};
use carga_config::{DatasetSpec, MongoOptions, MongoSource, NewColumnPolicy};
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc, oid::ObjectId};
use mongodb::{Client, Collection};
use serde_json::{Map, Value};

use super::{Capabilities, Source, SourceAccess, SourceOutput};
use crate::delta::Watermark;
use crate::error::{JobError, Result};
use crate::secrets::ConnectionSecret;
use crate::validation::ReadStats;
use convert::{Misfit, conform, document_id};
use schema::{Kind, Observed};

/// One collection of a MongoDB database.
pub struct MongoCollection {
    spec: DatasetSpec,
    config: MongoSource,
}

impl MongoCollection {
    pub fn new(spec: &DatasetSpec, config: MongoSource) -> Self {
        Self {
            spec: spec.clone(),
            config,
        }
    }
}

#[async_trait::async_trait]
impl Source for MongoCollection {
    fn describe(&self) -> String {
        super::describe_table(&self.spec)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            filter_dialect: None,
            cursor_pushdown: true,
        }
    }

    async fn read(
        self: Arc<Self>,
        output: SourceOutput,
        access: SourceAccess,
    ) -> Result<ReadStats> {
        let secret = access.require_secret(self.spec.connection_id.as_deref())?;
        read(
            &self.spec,
            &self.config.mongodb,
            secret,
            access.floor,
            access.lookback,
            output,
        )
        .await
    }
}

async fn read(
    spec: &DatasetSpec,
    opts: &MongoOptions,
    secret: ConnectionSecret,
    floor: Option<Watermark>,
    lookback: Option<u64>,
    mut ctx: SourceOutput,
) -> Result<ReadStats> {
    let location = ctx.location.clone();
    let db_error = |what: &str, e: mongodb::error::Error| JobError::Database {
        context: format!("{location} ({what})"),
        message: secret.redact(&e.to_string()),
    };
    let collection = open_collection(spec, &secret).await.map_err(|e| match e {
        Opening::Driver(e) => db_error("connecting", e),
        Opening::Spec(m) => ctx.bad_input(m),
    })?;

    // Sample in natural order: the first documents decide the columns and their types.
    let mut observed = Observed::default();
    {
        let mut sample = collection
            .find(doc! {})
            .limit(opts.sample_size.max(1) as i64)
            .batch_size(opts.batch_size)
            .await
            .map_err(|e| db_error("sampling documents", e))?;
        while let Some(document) = sample
            .try_next()
            .await
            .map_err(|e| db_error("sampling documents", e))?
        {
            observed.observe_document(&document);
        }
    }
    let schema = plan_schema(spec, opts, &observed, &ctx).map_err(|m| ctx.bad_input(m))?;

    let mut filter = match &opts.filter {
        Some(text) => parse_filter(text).map_err(|m| ctx.bad_input(m))?,
        None => Document::new(),
    };
    if let Some(watermark) = &floor {
        let cursor = cursor_filter(watermark, lookback, &observed).map_err(|m| ctx.bad_input(m))?;
        filter = if filter.is_empty() {
            cursor
        } else {
            doc! {"$and": [filter, cursor]}
        };
    }
    ctx.announce_schema(schema.clone());
    // A whole-collection read shows its progress against the server's count from metadata.
    if filter.is_empty()
        && let Ok(count) = collection.estimated_document_count().await
    {
        ctx.expect_rows(count);
    }

    let mut batcher = Batcher::new(schema, &ctx)?;
    let mut stats = ReadStats::default();
    let mut documents = collection
        .find(filter)
        .batch_size(opts.batch_size)
        .await
        .map_err(|e| db_error("starting the query", e))?;
    while let Some(document) = documents
        .try_next()
        .await
        .map_err(|e| db_error("reading documents", e))?
    {
        stats.rows_read += 1;
        match batcher.shape(
            &document,
            spec.new_columns,
            !spec.source.columns().is_empty(),
        ) {
            Ok(row) => batcher.rows.push(row),
            Err(misfit) => {
                let kind = match misfit {
                    Misfit::Type(_) => "type mismatch",
                    Misfit::UnknownField(_) => "field not in the sample",
                };
                let reason = format!(
                    "document {} (_id {}): {}",
                    stats.rows_read,
                    document_id(&document),
                    misfit.message()
                );
                let row = stats.rows_read;
                ctx.reject(&mut stats, row, kind, reason)?;
            }
        }
        if batcher.rows.len() >= ctx.batch_rows {
            let batch = batcher.flush(stats.rows_read, &ctx)?;
            if !ctx.send_async(batch).await {
                return Ok(stats);
            }
        }
    }
    if !batcher.rows.is_empty() {
        let batch = batcher.flush(stats.rows_read, &ctx)?;
        ctx.send_async(batch).await;
    }
    Ok(stats)
}

enum Opening {
    Driver(mongodb::error::Error),
    Spec(String),
}

/// The collection named by `source.table`: `collection` in the connection's database, or
/// `database.collection`.
async fn open_collection(
    spec: &DatasetSpec,
    secret: &ConnectionSecret,
) -> std::result::Result<Collection<Document>, Opening> {
    let url = secret
        .database_url("mongodb", 27017)
        .map_err(|e| Opening::Spec(e.to_string()))?;
    let client = Client::with_uri_str(&url).await.map_err(Opening::Driver)?;
    let name = spec.source.table().to_owned();
    let (database, collection) = match name.split_once('.') {
        Some((database, collection)) => (client.database(database), collection.to_owned()),
        None => {
            let database = secret
                .field("database")
                .or_else(|| secret.field("dbname"))
                .map(|d| client.database(&d))
                .or_else(|| client.default_database())
                .ok_or_else(|| {
                    Opening::Spec(format!(
                        "collection '{name}' names no database: write it as database.collection, or put the database in the connection URL or its `database` field"
                    ))
                })?;
            (database, name)
        }
    };
    Ok(database.collection::<Document>(&collection))
}

/// Columns in first-seen order (restricted to `source.columns` when given), typed by the spec's
/// explicit types, then previous runs' types, then the sample.
fn plan_schema(
    spec: &DatasetSpec,
    opts: &MongoOptions,
    observed: &Observed,
    ctx: &SourceOutput,
) -> std::result::Result<SchemaRef, String> {
    let wanted = spec.source.columns();
    let mut fields = Vec::new();
    for (name, field) in observed.fields() {
        if !wanted.is_empty() && !wanted.contains(name) {
            continue;
        }
        let data_type = match ctx.hints.for_column(name) {
            Some(pinned) => pinned,
            None => field.resolve(name, opts.mixed_types, opts.nested)?,
        };
        fields.push(Field::new(name, data_type, true));
    }
    // Columns earlier runs had but the sample lacks keep their place and type.
    if let Some(previous) = &ctx.hints.previous {
        for field in previous.fields() {
            let selected = wanted.is_empty() || wanted.contains(field.name());
            if selected && !fields.iter().any(|f| f.name() == field.name()) {
                fields.push(field.as_ref().clone().with_nullable(true));
            }
        }
    }
    for name in wanted {
        if !fields.iter().any(|f| f.name() == name) {
            fields.push(Field::new(
                name,
                ctx.hints.for_column(name).unwrap_or(DataType::Utf8),
                true,
            ));
        }
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// Documents shaped for the schema until a batch is full, then decoded into Arrow.
struct Batcher {
    schema: SchemaRef,
    decoder: Decoder,
    rows: Vec<Value>,
}

impl Batcher {
    fn new(schema: SchemaRef, ctx: &SourceOutput) -> Result<Self> {
        let decoder = ReaderBuilder::new(schema.clone())
            .with_batch_size(ctx.batch_rows)
            .with_strict_mode(true)
            .build_decoder()
            .map_err(|e| JobError::arrow("preparing the document decoder", e))?;
        Ok(Self {
            schema,
            decoder,
            rows: Vec::with_capacity(ctx.batch_rows),
        })
    }

    fn shape(
        &self,
        document: &Document,
        new_columns: NewColumnPolicy,
        columns_listed: bool,
    ) -> std::result::Result<Value, Misfit> {
        if new_columns == NewColumnPolicy::Add
            && !columns_listed
            && let Some(unknown) = document
                .keys()
                .find(|k| self.schema.field_with_name(k).is_err())
        {
            return Err(Misfit::UnknownField(format!(
                "field '{unknown}' first appears after the sampled documents; raise mongodb.sample_size so the run can add it"
            )));
        }
        let mut row = Map::with_capacity(self.schema.fields().len());
        for field in self.schema.fields() {
            let value = document.get(field.name()).unwrap_or(&Bson::Null);
            row.insert(
                field.name().clone(),
                conform(value, field.data_type(), field.name())?,
            );
        }
        Ok(Value::Object(row))
    }

    /// `last_document` numbers the last document read, to place a decoding error.
    fn flush(
        &mut self,
        last_document: u64,
        ctx: &SourceOutput,
    ) -> Result<arrow::array::RecordBatch> {
        let first = last_document + 1 - self.rows.len() as u64;
        let decoded = self
            .decoder
            .serialize(&self.rows)
            .and_then(|_| self.decoder.flush());
        self.rows.clear();
        match decoded {
            Ok(Some(batch)) => Ok(batch),
            Ok(None) => Ok(arrow::array::RecordBatch::new_empty(self.schema.clone())),
            Err(e) => Err(ctx.bad_input(format!(
                "documents {first}..{last_document} do not fit the columns: {e}"
            ))),
        }
    }
}

/// "Test connection": the server answers `ping` with these credentials (the driver logs in on
/// the first command).
pub(crate) async fn ping(secret: &ConnectionSecret) -> Result<String> {
    let failed = |e: mongodb::error::Error| JobError::Database {
        context: format!("testing connection '{}'", secret.id()),
        message: secret.redact(&e.to_string()),
    };
    let client = Client::with_uri_str(secret.database_url("mongodb", 27017)?)
        .await
        .map_err(failed)?;
    let database = secret
        .field("database")
        .or_else(|| secret.field("dbname"))
        .or_else(|| client.default_database().map(|d| d.name().to_owned()))
        .unwrap_or_else(|| "admin".to_owned());
    client
        .database(&database)
        .run_command(doc! { "ping": 1 })
        .await
        .map_err(failed)?;
    Ok(format!("MongoDB (ping answered by database '{database}')"))
}

/// Documents sampled per collection by discovery.
const DISCOVERY_SAMPLE: i64 = 200;

/// The collections of one database (or of every database but the server's own), each with the
/// fields and types a sample of its documents shows.
pub(crate) async fn discover(
    secret: &ConnectionSecret,
    database: Option<&str>,
) -> Result<Vec<super::listing::TableInfo>> {
    use super::listing::{ColumnInfo, TableInfo};
    let failed = |e: mongodb::error::Error| JobError::Database {
        context: "discovering collections".into(),
        message: secret.redact(&e.to_string()),
    };
    let client = Client::with_uri_str(secret.database_url("mongodb", 27017)?)
        .await
        .map_err(failed)?;
    let databases = match database
        .map(str::to_owned)
        .or_else(|| secret.field("database"))
    {
        Some(name) => vec![name],
        None => client
            .list_database_names()
            .await
            .map_err(failed)?
            .into_iter()
            .filter(|d| !matches!(d.as_str(), "admin" | "local" | "config"))
            .collect(),
    };
    let mut out = Vec::new();
    for database_name in databases {
        let database = client.database(&database_name);
        let mut names = database.list_collection_names().await.map_err(failed)?;
        names.sort();
        for name in names.into_iter().filter(|n| !n.starts_with("system.")) {
            let collection = database.collection::<Document>(&name);
            let mut observed = Observed::default();
            let mut sample = collection
                .find(doc! {})
                .limit(DISCOVERY_SAMPLE)
                .await
                .map_err(failed)?;
            while let Some(document) = sample.try_next().await.map_err(failed)? {
                observed.observe_document(&document);
            }
            let estimated_rows = collection
                .estimated_document_count()
                .await
                .ok()
                .and_then(|n| i64::try_from(n).ok());
            let columns = observed
                .fields()
                .iter()
                .map(|(field, seen)| ColumnInfo {
                    name: field.clone(),
                    declared: seen
                        .kinds
                        .iter()
                        .map(|k| k.name())
                        .collect::<Vec<_>>()
                        .join("|"),
                    arrow: seen
                        .resolve(
                            field,
                            carga_config::MixedTypesPolicy::String,
                            carga_config::NestedPolicy::Struct,
                        )
                        .map(|t| t.to_string())
                        .unwrap_or_else(|e| e),
                })
                .collect();
            out.push(TableInfo {
                schema: database_name.clone(),
                name,
                kind: "collection".into(),
                estimated_rows,
                primary_key: vec!["_id".into()],
                columns,
            });
        }
    }
    Ok(out)
}

/// The server-side filter for rows after the watermark: `(c0, c1, …) > (v0, v1, …)` as
/// `{$or: [{c0: {$gt: v0}}, {c0: v0, c1: {$gt: v1}}, …]}`; with a lookback, the timestamp alone,
/// moved back by the window (the pipeline drops what was already delivered).
fn cursor_filter(
    watermark: &Watermark,
    lookback: Option<u64>,
    observed: &Observed,
) -> std::result::Result<Document, String> {
    let mut values = Vec::new();
    for column in &watermark.columns {
        let text = watermark
            .values
            .get(column)
            .ok_or_else(|| format!("stored watermark has no value for '{column}'"))?;
        let kinds = observed
            .fields()
            .iter()
            .find(|(name, _)| name == column)
            .map(|(_, o)| o.kinds.clone())
            .unwrap_or_default();
        values.push((column.clone(), watermark_value(column, text, &kinds)?));
    }
    if let Some(seconds) = lookback {
        let (column, value) = &values[0];
        let Bson::DateTime(at) = value else {
            return Err(format!(
                "a lookback needs a date cursor field, and '{column}' is not one"
            ));
        };
        let from =
            mongodb::bson::DateTime::from_millis(at.timestamp_millis() - (seconds as i64) * 1000);
        return Ok(doc! {column: {"$gt": from}});
    }
    let mut alternatives = Vec::new();
    for i in 0..values.len() {
        let mut clause = Document::new();
        for (column, value) in &values[..i] {
            clause.insert(column.clone(), value.clone());
        }
        let (column, value) = &values[i];
        clause.insert(column.clone(), doc! {"$gt": value.clone()});
        alternatives.push(clause);
    }
    Ok(doc! {"$or": alternatives})
}

/// A stored watermark value (text) as the BSON type the field holds, so the server compares like
/// with like (`_id` as an ObjectId, dates as dates).
fn watermark_value(
    column: &str,
    text: &str,
    kinds: &std::collections::BTreeSet<Kind>,
) -> std::result::Result<Bson, String> {
    let unreadable = |what: &str| format!("watermark '{text}' of '{column}' is not {what}");
    let numeric = [Kind::Int32, Kind::Int64];
    let kind = if kinds.iter().all(|k| numeric.contains(k)) && !kinds.is_empty() {
        Kind::Int64
    } else if kinds.len() == 1 {
        *kinds.first().expect("one kind")
    } else if kinds.is_empty() {
        // Nothing sampled (an empty collection): the value's own shape decides.
        return Ok(Bson::String(text.to_owned()));
    } else {
        return Err(format!(
            "delta cursor field '{column}' holds several types in the collection; it needs one"
        ));
    };
    Ok(match kind {
        Kind::DateTime => {
            let at =
                chrono::DateTime::parse_from_rfc3339(text).map_err(|_| unreadable("a date"))?;
            Bson::DateTime(mongodb::bson::DateTime::from_millis(at.timestamp_millis()))
        }
        Kind::Int32 | Kind::Int64 => {
            Bson::Int64(text.parse().map_err(|_| unreadable("an integer"))?)
        }
        Kind::Double => Bson::Double(text.parse().map_err(|_| unreadable("a number"))?),
        Kind::Decimal => Bson::Decimal128(text.parse().map_err(|_| unreadable("a decimal"))?),
        Kind::ObjectId => {
            Bson::ObjectId(ObjectId::parse_str(text).map_err(|_| unreadable("an ObjectId"))?)
        }
        Kind::String => Bson::String(text.to_owned()),
        other => {
            return Err(format!(
                "delta cursor field '{column}' is of a type ({other:?}) that cannot be compared; use a date, number, string or ObjectId field"
            ));
        }
    })
}

/// `mongodb.filter`, written as (extended) JSON.
fn parse_filter(text: &str) -> std::result::Result<Document, String> {
    let json: Value =
        serde_json::from_str(text).map_err(|e| format!("mongodb.filter is not valid JSON: {e}"))?;
    match Bson::try_from(json) {
        Ok(Bson::Document(document)) => Ok(document),
        Ok(_) => Err("mongodb.filter must be a JSON object".into()),
        Err(e) => Err(format!("mongodb.filter is not valid extended JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_filter_compares_the_tuple_with_typed_values() {
        let mut observed = Observed::default();
        observed.observe_document(&doc! {
            "_id": ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap(),
            "updated": mongodb::bson::DateTime::from_millis(1_000),
        });
        let watermark = Watermark {
            columns: vec!["updated".into(), "_id".into()],
            values: [
                (
                    "updated".to_string(),
                    "2026-01-01T00:00:00.123+00:00".to_string(),
                ),
                ("_id".to_string(), "65a1b2c3d4e5f60718293a4b".to_string()),
            ]
            .into(),
            ..Watermark::default()
        };
        let at = mongodb::bson::DateTime::from_millis(1_767_225_600_123);
        let id = ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap();
        assert_eq!(
            cursor_filter(&watermark, None, &observed).unwrap(),
            doc! {"$or": [
                {"updated": {"$gt": at}},
                {"updated": at, "_id": {"$gt": id}},
            ]}
        );
        let back = mongodb::bson::DateTime::from_millis(1_767_225_600_123 - 60_000);
        assert_eq!(
            cursor_filter(&watermark, Some(60), &observed).unwrap(),
            doc! {"updated": {"$gt": back}}
        );
    }

    #[test]
    fn filters_are_extended_json_objects() {
        assert_eq!(
            parse_filter(r#"{"status": "active", "n": {"$gte": 3}}"#).unwrap(),
            doc! {"status": "active", "n": {"$gte": 3}}
        );
        assert!(parse_filter("[1]").unwrap_err().contains("object"));
        assert!(parse_filter("{").unwrap_err().contains("not valid JSON"));
    }
}
