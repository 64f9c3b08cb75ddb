//! Rows of text cells (CSV, Excel) assembled into typed Arrow batches.
//!
//! The first rows are held as a sample to infer column types; after that each row's cells are
//! parsed straight into typed columns (`cell_columns`), and each full batch is sent. A cell that
//! does not parse is reported with its row, column, value and expected type when its row
//! arrives: the run fails, or the row is rejected and counted, as the dataset's malformed-row
//! policy says.

use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::SourceOutput;
use super::cell_columns::CellColumns;
use super::output::RowRules;
use crate::error::{JobError, Result};
use carga_config::MalformedRowPolicy;

use crate::typing::{describe, infer_type};
use crate::validation::ReadStats;

pub(crate) struct TableAssembler {
    rules: RowRules,
    out: BatchOut,
    names: Vec<String>,
    infer_rows: usize,
    sample: Vec<(u64, Vec<Option<String>>)>,
    schema: Option<SchemaRef>,
    /// The batch being filled, once the schema is settled.
    columns: Option<CellColumns>,
    stats: ReadStats,
    /// Set when the pipeline stopped listening; the reader should stop too.
    closed: bool,
}

/// Where full batches go.
enum BatchOut {
    /// Straight to the run (a reader that reads the whole source itself).
    Source(SourceOutput),
    /// Kept for whoever sends the parts in the source's order (a chunk parsed on another thread).
    Kept(Vec<RecordBatch>),
}

impl TableAssembler {
    pub fn new(ctx: SourceOutput, names: Vec<String>, infer_rows: usize, stats: ReadStats) -> Self {
        Self::build(ctx.rules(), BatchOut::Source(ctx), names, infer_rows, stats)
    }

    /// An assembler for a later part of a source whose schema is already settled; its batches
    /// are kept (see [`Self::finish_kept`]) and its counts are the part's own.
    pub fn for_part(rules: RowRules, schema: SchemaRef, infer_rows: usize) -> Result<Self> {
        let names = schema.fields().iter().map(|f| f.name().clone()).collect();
        let mut table = Self::build(
            rules,
            BatchOut::Kept(Vec::new()),
            names,
            infer_rows,
            ReadStats::default(),
        );
        table.start_columns(schema)?;
        Ok(table)
    }

    fn build(
        rules: RowRules,
        out: BatchOut,
        names: Vec<String>,
        infer_rows: usize,
        stats: ReadStats,
    ) -> Self {
        Self {
            rules,
            out,
            names,
            infer_rows: infer_rows.max(1),
            sample: Vec::new(),
            schema: None,
            columns: None,
            stats,
            closed: false,
        }
    }

    pub fn width(&self) -> usize {
        self.names.len()
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Lines with nothing on them, skipped between rows.
    pub fn blank_lines(&mut self, lines: u64) {
        self.stats.blank_lines += lines;
    }

    /// The settled schema, once the sample has been read.
    pub fn schema(&self) -> Option<&SchemaRef> {
        self.schema.as_ref()
    }

    /// A row that cannot be read at all (wrong field count, bad encoding, cell error).
    /// `kind` groups it in the report; `reason` names the row and what is wrong.
    pub fn reject(&mut self, row: u64, kind: &str, reason: String) -> Result<()> {
        self.stats.rows_read += 1;
        self.rules.reject(&mut self.stats, row, kind, reason)
    }

    /// Adds one row of cells (`None` = null). `cells.len()` must equal `width()`.
    pub fn push_row(&mut self, row: u64, cells: &[Option<&str>]) -> Result<()> {
        self.stats.rows_read += 1;
        if cells.iter().all(Option::is_none) {
            self.stats.empty_rows += 1;
            return Ok(());
        }
        if self.schema.is_none() {
            self.sample
                .push((row, cells.iter().map(|c| c.map(str::to_owned)).collect()));
            if self.sample.len() >= self.infer_rows {
                self.settle_schema()?;
            }
            return Ok(());
        }
        self.append(row, cells)
    }

    /// Flushes what is left and returns the reader's statistics.
    pub fn finish(self) -> Result<ReadStats> {
        Ok(self.finish_parts()?.1)
    }

    /// Flushes what is left; the run's output comes back for the parts that follow (`None` when
    /// the batches were kept) with this part's statistics.
    pub fn finish_parts(mut self) -> Result<(Option<SourceOutput>, ReadStats)> {
        if self.schema.is_none() {
            self.settle_schema()?;
        }
        self.flush()?;
        let out = match self.out {
            BatchOut::Source(ctx) => Some(ctx),
            BatchOut::Kept(_) => None,
        };
        Ok((out, self.stats))
    }

    /// Flushes what is left; the kept batches, in order, and this part's statistics.
    pub fn finish_kept(mut self) -> Result<(Vec<RecordBatch>, ReadStats)> {
        self.flush()?;
        match self.out {
            BatchOut::Kept(batches) => Ok((batches, self.stats)),
            BatchOut::Source(_) => unreachable!("finish_kept is for assemblers made by for_part"),
        }
    }

    /// Parses a row into the batch (or handles its misfit cell), sending the batch when full.
    fn append(&mut self, row: u64, cells: &[Option<&str>]) -> Result<()> {
        let columns = self
            .columns
            .as_mut()
            .expect("the columns start with the schema");
        if let Err(column) = columns.push_row(cells) {
            return self.misfit(column, cells, row);
        }
        if columns.rows() >= self.rules.batch_rows {
            self.flush()?;
        }
        Ok(())
    }

    fn start_columns(&mut self, schema: SchemaRef) -> Result<()> {
        let columns = CellColumns::try_new(&schema)
            .map_err(|e| JobError::arrow(self.rules.location.clone(), e))?;
        self.columns = Some(columns);
        self.schema = Some(schema);
        Ok(())
    }

    /// Decides column types from the sample and the hints, announces the schema, replays the sample.
    fn settle_schema(&mut self) -> Result<()> {
        let sample = std::mem::take(&mut self.sample);
        let fields: Vec<Field> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let data_type = self.rules.hints.for_column(name).unwrap_or_else(|| {
                    let values: StringArray = sample
                        .iter()
                        .map(|(_, cells)| cells[i].as_deref())
                        .collect();
                    infer_type(&values).unwrap_or(DataType::Utf8)
                });
                Field::new(name, data_type, true)
            })
            .collect();
        let schema = Arc::new(Schema::new(fields));
        if let BatchOut::Source(ctx) = &mut self.out {
            ctx.announce_schema(schema.clone());
        }
        self.start_columns(schema)?;
        for (row, cells) in sample {
            let cells: Vec<Option<&str>> = cells.iter().map(Option::as_deref).collect();
            self.append(row, &cells)?;
        }
        Ok(())
    }

    /// Sends the rows parsed so far as a batch.
    fn flush(&mut self) -> Result<()> {
        let Some(columns) = self.columns.as_mut() else {
            return Ok(());
        };
        if columns.rows() == 0 || self.closed {
            return Ok(());
        }
        let schema = self
            .schema
            .clone()
            .expect("schema is settled before rows are parsed");
        let batch = columns
            .finish()
            .and_then(|columns| RecordBatch::try_new(schema, columns))
            .map_err(|e| JobError::arrow(self.rules.location.clone(), e))?;
        match &mut self.out {
            BatchOut::Source(ctx) => {
                if !ctx.send(batch) {
                    self.closed = true;
                }
            }
            BatchOut::Kept(batches) => batches.push(batch),
        }
        Ok(())
    }

    /// A row whose cell in `column` does not parse as the column's type: the run rereads the
    /// file with a wider type (an inferred type, failing policy), fails, or leaves the row out
    /// and counts it.
    fn misfit(&mut self, column: usize, cells: &[Option<&str>], row: u64) -> Result<()> {
        let schema = self
            .schema
            .clone()
            .expect("schema is settled before rows are parsed");
        let field = schema.field(column);
        let text = cells[column].expect("a null cell always fits");
        let may_widen = self.rules.hints.may_widen(field.name());
        if self.rules.policy == MalformedRowPolicy::Fail && may_widen {
            return Err(JobError::Reread {
                column: field.name().clone(),
                data_type: widened(field.data_type(), text),
                message: format!(
                    "column '{}' was inferred as {} from the first {} rows, but row {row} holds '{}'",
                    field.name(),
                    describe(field.data_type()),
                    self.infer_rows,
                    truncate(text, 80)
                ),
            });
        }
        *self
            .stats
            .type_mismatches
            .entry(field.name().clone())
            .or_default() += 1;
        let hint = if may_widen {
            format!(
                " (the type was inferred from the first {} rows; declare it in the spec's `schema:` to keep such rows)",
                self.infer_rows
            )
        } else {
            String::new()
        };
        let key = self.key_of(cells);
        let reason = format!(
            "row {row}{key}: column '{}': '{}' is not a valid {}{hint}",
            field.name(),
            truncate(text, 80),
            describe(field.data_type())
        );
        self.rules
            .reject(&mut self.stats, row, "type mismatch", reason)
    }
}

impl TableAssembler {
    /// ` (id=4)`: the row's key as the file wrote it, when the dataset has one.
    fn key_of(&self, cells: &[Option<&str>]) -> String {
        let parts: Vec<String> = self
            .rules
            .key
            .iter()
            .filter_map(|name| {
                let i = self.names.iter().position(|n| n == name)?;
                let text = cells[i].map_or_else(|| "null".to_owned(), |t| truncate(t, 40));
                Some(format!("{name}={text}"))
            })
            .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        }
    }
}

/// The type a column inferred as `from` widens to so that `value` fits: integers to floats when
/// the value is a number, everything else to text.
fn widened(from: &DataType, value: &str) -> DataType {
    let number = value.trim().parse::<f64>().is_ok_and(f64::is_finite);
    match from {
        DataType::Int64 if number => DataType::Float64,
        _ => DataType::Utf8,
    }
}

pub(crate) fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}
