//! `carga sql "<query>"`: read-only SQL over the committed raw zone (DataFusion, decrypting with
//! the master key; see `carga_jobs::query::raw_zone` for the tables), printed as a table, CSV,
//! JSON lines, or written as Parquet. `carga read` is one such query.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use arrow::array::RecordBatch;
use carga_config::Settings;
use carga_jobs::Engine;
use futures::TryStreamExt;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// A text table (at most `--limit` rows).
    Table,
    Csv,
    /// One JSON object per line.
    Json,
    /// A plain (not encrypted) Parquet file at `--output`.
    Parquet,
}

#[derive(clap::Args)]
pub struct SqlArgs {
    /// The query, e.g. `SELECT count(*) FROM ventas` (dataset ids with `/` in double quotes).
    query: Option<String>,
    /// How to print the result.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Write the result to this file instead of standard output (required for parquet).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Rows at most (0: no limit; a table prints 1000 at most by default).
    #[arg(long)]
    limit: Option<usize>,
    /// List the tables the query can read, with their datasets and live rows, and exit.
    #[arg(long)]
    tables: bool,
}

pub async fn sql(settings_path: Option<&Path>, args: SqlArgs) -> Result<()> {
    let engine = engine(settings_path)?;
    if args.tables {
        let (_, datasets) = engine.query_session().await?;
        let mut out = std::io::stdout().lock();
        for dataset in &datasets {
            writeln!(
                out,
                "{} ({} manifest(s), {} live rows): {}",
                dataset.dataset,
                dataset.manifests,
                dataset.live_rows,
                dataset.tables.join(", ")
            )?;
        }
        writeln!(out, "{} dataset(s)", datasets.len())?;
        return Ok(());
    }
    let query = args
        .query
        .as_deref()
        .context("give a query (or --tables to list what can be queried)")?;
    let limit = match (args.limit, args.format) {
        (Some(0), _) => None,
        (Some(n), _) => Some(n),
        (None, Format::Table) => Some(1000),
        (None, _) => None,
    };
    print(&engine, query, args.format, args.output.as_deref(), limit).await
}

/// The engine that reads the raw zone: the settings' bucket and key, never a new key.
pub fn engine(settings_path: Option<&Path>) -> Result<Engine> {
    let settings = Settings::load(settings_path)?;
    Ok(Engine::new(Settings {
        create_key_if_missing: false,
        ..settings
    })?)
}

/// Runs `query` and writes its rows as `format`; returns after at most `limit` rows.
pub async fn print(
    engine: &Engine,
    query: &str,
    format: Format,
    output: Option<&Path>,
    limit: Option<usize>,
) -> Result<()> {
    let mut stream = engine.sql(query).await?;
    let schema = stream.schema();
    let mut sink: Box<dyn Write> = match output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None if matches!(format, Format::Parquet) => {
            anyhow::bail!("--format parquet needs --output FILE")
        }
        None => Box::new(std::io::stdout().lock()),
    };
    let mut remaining = limit.unwrap_or(usize::MAX);
    let mut table = Vec::new();
    let mut parquet = match format {
        Format::Parquet => Some(parquet::arrow::ArrowWriter::try_new(
            Vec::new(),
            schema.clone(),
            None,
        )?),
        _ => None,
    };
    let mut rows = 0usize;
    let mut header = true;
    while remaining > 0 {
        let Some(batch) = stream
            .try_next()
            .await
            .map_err(|e| carga_jobs::query::query_error("sql", e))?
        else {
            break;
        };
        let batch: RecordBatch = batch.slice(0, batch.num_rows().min(remaining));
        remaining -= batch.num_rows();
        rows += batch.num_rows();
        match format {
            Format::Table => table.push(batch),
            Format::Csv => {
                // The header once, before the first batch.
                let mut writer = arrow::csv::WriterBuilder::new()
                    .with_header(header)
                    .build(&mut sink);
                writer.write(&batch)?;
                header = false;
            }
            Format::Json => {
                let mut lines = arrow::json::LineDelimitedWriter::new(Vec::new());
                lines.write(&batch)?;
                lines.finish()?;
                sink.write_all(&lines.into_inner())?;
            }
            Format::Parquet => {
                let writer = parquet.as_mut().expect("a parquet writer");
                writer.write(&batch)?;
                if writer.in_progress_size() > 0 {
                    sink.write_all(writer.inner())?;
                    writer.inner_mut().clear();
                }
            }
        }
    }
    match format {
        Format::Table if table.is_empty() => writeln!(sink, "(no rows)")?,
        Format::Table => {
            writeln!(
                sink,
                "{}",
                arrow::util::pretty::pretty_format_batches(&table)?
            )?;
            let more = if limit.is_some_and(|l| rows >= l) {
                format!("; at most --limit {}", limit.unwrap_or_default())
            } else {
                String::new()
            };
            writeln!(sink, "({rows} row(s) shown{more})")?;
        }
        Format::Parquet => {
            let writer = parquet.take().expect("a parquet writer");
            let bytes = writer.into_inner()?;
            sink.write_all(&bytes)?;
        }
        Format::Csv | Format::Json => {}
    }
    sink.flush()?;
    Ok(())
}
