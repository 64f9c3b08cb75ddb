//! "Test connection" (the seed design's preview step): open a dataset's source with its
//! credentials, read the first page or batch, and return the schema Carga would write and a few
//! rows. Nothing is written and no watermark is read or moved.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use carga_config::{DatasetSpec, Pagination, SourceSpec};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::access::AccessPolicy;
use crate::error::{JobError, Result};
use crate::secrets::{ConnectionSecret, SecretsProvider};
use crate::sources::{self, SourceAccess, SourceRegistry, TypeHints};
use crate::typing::parse_type_name;

/// What the source looks like from here.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub dataset: String,
    pub source: String,
    pub columns: Vec<PreviewColumn>,
    pub rows: Vec<Map<String, Value>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PreviewColumn {
    pub name: String,
    /// The Arrow type the column gets (inferred, or the spec's explicit type).
    pub data_type: String,
}

/// Reads at most `rows` rows of the dataset's first table. A REST source makes one request (the
/// first page, with authentication), whatever its pagination.
pub async fn preview(
    spec: &DatasetSpec,
    policy: &AccessPolicy,
    secrets: &dyn SecretsProvider,
    rows: usize,
) -> Result<Preview> {
    preview_with(&SourceRegistry::default(), spec, policy, secrets, rows).await
}

/// `preview` with the sources of `registry` (an engine's, with what it registered).
pub async fn preview_with(
    registry: &SourceRegistry,
    spec: &DatasetSpec,
    policy: &AccessPolicy,
    secrets: &dyn SecretsProvider,
    rows: usize,
) -> Result<Preview> {
    spec.validate()?;
    let mut spec = spec.per_table().swap_remove(0);
    if let SourceSpec::Rest(rest) = &mut spec.source {
        rest.rest.pagination = Pagination::None;
    }
    let secret = match &spec.connection_id {
        Some(id) if spec.source.needs_connection() => Some(secrets.connection(id).await?),
        _ => None,
    };
    // Whatever the source answers, no form of the secret goes back to the caller.
    let redactor = secret
        .as_ref()
        .map(ConnectionSecret::redactor)
        .unwrap_or_default();
    read_first_rows(registry, spec, policy, secret, rows)
        .await
        .map_err(|e| e.redacted(&redactor))
}

async fn read_first_rows(
    registry: &SourceRegistry,
    spec: DatasetSpec,
    policy: &AccessPolicy,
    secret: Option<ConnectionSecret>,
    rows: usize,
) -> Result<Preview> {
    let explicit: BTreeMap<_, _> = spec
        .schema
        .iter()
        .filter_map(|(column, name)| parse_type_name(name).map(|t| (column.clone(), t)))
        .collect();
    let access = SourceAccess {
        secret,
        ..SourceAccess::default()
    };
    let hints = TypeHints {
        explicit,
        ..TypeHints::default()
    };
    let source = registry.build(&spec, policy)?;
    let mut reader = sources::open(
        &source,
        &spec,
        sources::ReadShape::first_rows(rows),
        hints,
        access,
    )
    .await?;
    let columns = reader
        .schema
        .fields()
        .iter()
        .map(|f| PreviewColumn {
            name: f.name().clone(),
            data_type: f.data_type().to_string(),
        })
        .collect();
    let rows = match reader.next_batch().await {
        Some(batch) => {
            let batch = batch?;
            to_json_rows(&batch.slice(0, rows.min(batch.num_rows())), &spec.id)?
        }
        // No batch: the reader ended; its result says whether that was an error.
        None => {
            reader.finish().await?;
            Vec::new()
        }
    };
    // Dropping the reader stops it at its next send.
    Ok(Preview {
        dataset: spec.id.clone(),
        source: spec.source.describe(),
        columns,
        rows,
    })
}

/// Rows as JSON objects, as arrow-json writes them (nulls left out).
fn to_json_rows(batch: &RecordBatch, dataset: &str) -> Result<Vec<Map<String, Value>>> {
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    writer
        .write(batch)
        .and_then(|_| writer.finish())
        .map_err(|e| JobError::arrow(format!("dataset '{dataset}': preview"), e))?;
    let text = writer.into_inner();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&text)
        .map_err(|e| JobError::bad_input(format!("dataset '{dataset}'"), format!("preview: {e}")))
}
