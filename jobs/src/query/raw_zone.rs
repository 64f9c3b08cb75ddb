//! The committed raw zone as SQL tables. Only the manifests know which parts are live (a
//! complete run supersedes the snapshot before it; a failed run's parts are never referenced), so
//! every table is built from the manifests, never from a listing of the folders:
//!
//! - `<dataset>`: the dataset as it stands — the latest complete snapshot and the deltas after it;
//! - `<dataset>__history`: every committed row of every run, with `_carga_run_id`,
//!   `_carga_sequence` and `_carga_committed_at`;
//! - `<dataset>__current` (delta datasets): the latest version of each key, by the dataset's
//!   cursor (timestamp, then commit order).
//!
//! Dataset ids with `/` (one table of a multi-table dataset) are table names as they are: quote
//! them in SQL (`SELECT * FROM "ventas/public_pedidos"`).

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::MemTable;
use datafusion::common::TableReference;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::{DataFrame, SessionContext, lit};
use object_store::path::Path;
use serde::Serialize;

use carga_config::Mode;

use super::{ENCRYPTION_FACTORY_ID, query_error};
use crate::error::{JobError, Result};
use crate::manifest::{Manifest, ManifestLog};
use crate::storage::Bucket;

/// The URL the bucket's store is registered under in a session.
const STORE_URL: &str = "carga://bucket";

/// One dataset as the session sees it.
#[derive(Debug, Clone, Serialize)]
pub struct QueryableDataset {
    pub dataset: String,
    /// The tables registered for it.
    pub tables: Vec<String>,
    pub manifests: usize,
    pub live_rows: u64,
}

/// Registers every committed dataset of `bucket` in `ctx` (which must have Carga's encryption
/// registered, see `query::session`).
pub async fn register(ctx: &SessionContext, bucket: &Bucket) -> Result<Vec<QueryableDataset>> {
    let url = url::Url::parse(STORE_URL).expect("a valid URL");
    ctx.register_object_store(&url, bucket.store.clone());
    let mut registered = Vec::new();
    for dataset in committed_datasets(bucket).await? {
        let log = ManifestLog::new(bucket, &dataset);
        let mut manifests = Vec::new();
        for sequence in log.sequences().await? {
            manifests.push(log.load(sequence).await?);
        }
        if manifests.is_empty() {
            continue;
        }
        registered.push(register_dataset(ctx, &dataset, &manifests).await?);
    }
    Ok(registered)
}

async fn register_dataset(
    ctx: &SessionContext,
    dataset: &str,
    manifests: &[Manifest],
) -> Result<QueryableDataset> {
    let latest = manifests.last().expect("at least one manifest");
    let schema: SchemaRef = Arc::new(latest.schema.clone());
    // The dataset as it stands: back from the newest manifest to the last complete one.
    let live_start = manifests
        .iter()
        .rposition(|m| m.mode == Mode::Complete)
        .unwrap_or(0);
    let live = &manifests[live_start..];
    let context = |what: &str| format!("dataset '{dataset}': {what}");

    let live_files: Vec<String> = live
        .iter()
        .flat_map(|m| m.files.iter().map(|f| f.path.clone()))
        .collect();
    let live_table = files_table(&schema, &live_files)?;
    let mut tables = vec![dataset.to_owned()];
    ctx.register_table(TableReference::bare(dataset), live_table)
        .map_err(|e| query_error(&context("registering"), e))?;

    let history = versions(ctx, &schema, manifests).await?;
    let history_name = format!("{dataset}__history");
    ctx.register_table(
        TableReference::bare(history_name.as_str()),
        history.into_view(),
    )
    .map_err(|e| query_error(&context("registering its history"), e))?;
    tables.push(history_name);

    // The cursor says what a key is and which version is newer.
    let cursor = latest
        .watermark
        .as_ref()
        .and_then(|w| w.to.as_ref().or(w.from.as_ref()))
        .map(|w| w.columns.clone())
        .filter(|columns| columns.len() >= 2);
    if let (Some(cursor), true) = (cursor, latest.mode == Mode::Delta) {
        let current = current_versions(ctx, &schema, live, &cursor).await?;
        let name = format!("{dataset}__current");
        ctx.register_table(TableReference::bare(name.as_str()), current.into_view())
            .map_err(|e| query_error(&context("registering its current rows"), e))?;
        tables.push(name);
    }
    Ok(QueryableDataset {
        dataset: dataset.to_owned(),
        tables,
        manifests: manifests.len(),
        live_rows: live.iter().map(|m| m.rows).sum(),
    })
}

/// A table of exactly these encrypted parts (none: an empty table of the schema).
fn files_table(
    schema: &SchemaRef,
    files: &[String],
) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
    if files.is_empty() {
        let empty = MemTable::try_new(schema.clone(), vec![vec![]])
            .map_err(|e| query_error("an empty table", e))?;
        return Ok(Arc::new(empty));
    }
    let urls = files
        .iter()
        .map(|path| ListingTableUrl::parse(format!("{STORE_URL}/{path}")))
        .collect::<datafusion::error::Result<Vec<_>>>()
        .map_err(|e| query_error("naming the parts", e))?;
    let mut options = datafusion::config::TableParquetOptions::new();
    options.crypto.factory_id = Some(ENCRYPTION_FACTORY_ID.to_owned());
    let format = ParquetFormat::default().with_options(options);
    let listing = ListingOptions::new(Arc::new(format)).with_file_extension(".parquet");
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(listing)
        .with_schema(schema.clone());
    let table = ListingTable::try_new(config).map_err(|e| query_error("a table of parts", e))?;
    Ok(Arc::new(table))
}

/// Every row of `manifests`, each with the run that committed it.
async fn versions(
    ctx: &SessionContext,
    schema: &SchemaRef,
    manifests: &[Manifest],
) -> Result<DataFrame> {
    let mut union: Option<DataFrame> = None;
    for manifest in manifests {
        let files: Vec<String> = manifest.files.iter().map(|f| f.path.clone()).collect();
        let table = files_table(schema, &files)?;
        let frame = ctx
            .read_table(table)
            .and_then(|df| df.with_column("_carga_run_id", lit(manifest.run_id.clone())))
            .and_then(|df| df.with_column("_carga_sequence", lit(manifest.sequence)))
            .and_then(|df| {
                df.with_column(
                    "_carga_committed_at",
                    lit(manifest.committed_at.to_rfc3339()),
                )
            })
            .map_err(|e| query_error("a run's rows", e))?;
        union = Some(match union {
            None => frame,
            Some(all) => all
                .union(frame)
                .map_err(|e| query_error("the history", e))?,
        });
    }
    union.ok_or_else(|| JobError::Query {
        context: "the history".into(),
        message: "no manifest".into(),
    })
}

/// The newest version of each key among the live rows: by the cursor's timestamp, then by
/// commit order.
async fn current_versions(
    ctx: &SessionContext,
    schema: &SchemaRef,
    live: &[Manifest],
    cursor: &[String],
) -> Result<DataFrame> {
    let versions = versions(ctx, schema, live).await?;
    let temporary = format!("__carga_versions_{}", uuid::Uuid::now_v7().simple());
    ctx.register_table(
        TableReference::bare(temporary.as_str()),
        versions.into_view(),
    )
    .map_err(|e| query_error("the current rows", e))?;
    let quote = |c: &str| format!("\"{}\"", c.replace('"', "\"\""));
    let keys: Vec<String> = cursor[1..].iter().map(|c| quote(c)).collect();
    let sql = format!(
        "SELECT * EXCLUDE (__carga_rank, _carga_run_id, _carga_sequence, _carga_committed_at) FROM (
             SELECT *, ROW_NUMBER() OVER (PARTITION BY {} ORDER BY {} DESC, _carga_sequence DESC) AS __carga_rank
             FROM \"{temporary}\") WHERE __carga_rank = 1",
        keys.join(", "),
        quote(&cursor[0])
    );
    let current = ctx
        .sql(&sql)
        .await
        .map_err(|e| query_error("the current rows", e))?;
    // The plan holds the table itself; the name is not needed any more.
    let _ = ctx.deregister_table(TableReference::bare(temporary.as_str()));
    Ok(current)
}

/// Ids of the datasets with a manifest folder: `raw/<id>/_manifests/` or, for a table of a
/// multi-table dataset, `raw/<id>/<table>/_manifests/`.
async fn committed_datasets(bucket: &Bucket) -> Result<Vec<String>> {
    let raw = bucket.path("raw");
    let listed = |prefix: Path| async move {
        bucket
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| JobError::store(format!("listing {}", bucket.display(&prefix)), e))
    };
    let mut datasets = Vec::new();
    let top = listed(raw.clone()).await?;
    for first in top.common_prefixes {
        let below = listed(first.clone()).await?;
        let id = first.filename().unwrap_or_default().to_owned();
        for inner in below.common_prefixes {
            match inner.filename() {
                Some("_manifests") => datasets.push(id.clone()),
                Some(name) if !name.starts_with("ingest_date=") => {
                    let deeper = listed(inner.clone()).await?;
                    if deeper
                        .common_prefixes
                        .iter()
                        .any(|p| p.filename() == Some("_manifests"))
                    {
                        datasets.push(format!("{id}/{name}"));
                    }
                }
                _ => {}
            }
        }
    }
    datasets.sort();
    Ok(datasets)
}
