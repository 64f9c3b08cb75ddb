//! Rows of text cells (CSV, Excel) assembled into typed Arrow batches.
//!
//! The first rows are held as a sample to infer column types; after that rows go straight into
//! string builders, and each full batch is cast to the column types. A cell that does not parse
//! is reported with its row, column, value and expected type: the run fails, or the row is
//! rejected and counted, as the dataset's malformed-row policy says.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray, StringBuilder};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::SourceOutput;
use super::output::RowRules;
use crate::error::{JobError, Result};
use carga_config::MalformedRowPolicy;

use crate::typing::{cast_text, describe, infer_type};
use crate::validation::ReadStats;

pub(crate) struct TableAssembler {
    rules: RowRules,
    out: BatchOut,
    names: Vec<String>,
    infer_rows: usize,
    sample: Vec<(u64, Vec<Option<String>>)>,
    schema: Option<SchemaRef>,
    builders: Vec<StringBuilder>,
    row_numbers: Vec<u64>,
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
    pub fn for_part(rules: RowRules, schema: SchemaRef, infer_rows: usize) -> Self {
        let names = schema.fields().iter().map(|f| f.name().clone()).collect();
        let mut table = Self::build(
            rules,
            BatchOut::Kept(Vec::new()),
            names,
            infer_rows,
            ReadStats::default(),
        );
        table.schema = Some(schema);
        table
    }

    fn build(
        rules: RowRules,
        out: BatchOut,
        names: Vec<String>,
        infer_rows: usize,
        stats: ReadStats,
    ) -> Self {
        let builders = names.iter().map(|_| StringBuilder::new()).collect();
        Self {
            rules,
            out,
            names,
            infer_rows: infer_rows.max(1),
            sample: Vec::new(),
            schema: None,
            builders,
            row_numbers: Vec::new(),
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
        if self.rules.policy == MalformedRowPolicy::Fail && self.schema.is_some() {
            // Rows buffered before this one are checked first, so the run fails on the first
            // bad row of the source however its rows were batched.
            self.flush()?;
        }
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
        self.append(row, cells.iter().copied());
        if self.row_numbers.len() >= self.rules.batch_rows {
            self.flush()?;
        }
        Ok(())
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

    fn append<'a>(&mut self, row: u64, cells: impl Iterator<Item = Option<&'a str>>) {
        for (builder, cell) in self.builders.iter_mut().zip(cells) {
            builder.append_option(cell);
        }
        self.row_numbers.push(row);
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
        self.schema = Some(schema);
        for (row, cells) in sample {
            self.append(row, cells.iter().map(Option::as_deref));
            if self.row_numbers.len() >= self.rules.batch_rows {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Casts the buffered text to the schema's types and sends the batch. Cells that do not fit
    /// are handled row by row in the source's order: the first bad row decides a failing run.
    fn flush(&mut self) -> Result<()> {
        if self.row_numbers.is_empty() || self.closed {
            return Ok(());
        }
        let schema = self
            .schema
            .clone()
            .expect("schema is settled before rows are buffered");
        let rows = std::mem::take(&mut self.row_numbers);
        let texts: Vec<StringArray> = self.builders.iter_mut().map(|b| b.finish()).collect();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(texts.len());
        let mut misfits = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let field = schema.field(i);
            let typed = cast_text(text, field.data_type()).map_err(|e| {
                JobError::arrow(
                    format!("{}: column '{}'", self.rules.location, field.name()),
                    e,
                )
            })?;
            if typed.null_count() != text.null_count() {
                misfits.push(i);
            }
            columns.push(typed);
        }
        let mut keep = vec![true; rows.len()];
        if !misfits.is_empty() {
            for r in 0..rows.len() {
                let Some(&i) = misfits
                    .iter()
                    .find(|&&i| texts[i].is_valid(r) && columns[i].is_null(r))
                else {
                    continue;
                };
                keep[r] = false;
                self.misfit(&schema, &texts, (i, r), rows[r])?;
            }
        }
        let batch = RecordBatch::try_new(schema, columns)
            .map_err(|e| JobError::arrow(self.rules.location.clone(), e))?;
        let batch = if keep.iter().all(|&k| k) {
            batch
        } else {
            filter_record_batch(&batch, &BooleanArray::from(keep))
                .map_err(|e| JobError::arrow(self.rules.location.clone(), e))?
        };
        if batch.num_rows() == 0 {
            return Ok(());
        }
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

    /// A cell (`column`, index `r` of the batch) that does not parse as its column's type: the
    /// run rereads the file with a wider type (an inferred type, failing policy), fails, or
    /// leaves the row out and counts it.
    fn misfit(
        &mut self,
        schema: &Schema,
        texts: &[StringArray],
        (column, r): (usize, usize),
        row: u64,
    ) -> Result<()> {
        let field = schema.field(column);
        let text = &texts[column];
        let may_widen = self.rules.hints.may_widen(field.name());
        if self.rules.policy == MalformedRowPolicy::Fail && may_widen {
            return Err(JobError::Reread {
                column: field.name().clone(),
                data_type: widened(field.data_type(), text.value(r)),
                message: format!(
                    "column '{}' was inferred as {} from the first {} rows, but row {row} holds '{}'",
                    field.name(),
                    describe(field.data_type()),
                    self.infer_rows,
                    truncate(text.value(r), 80)
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
        let key = self.key_of(texts, r);
        let reason = format!(
            "row {row}{key}: column '{}': '{}' is not a valid {}{hint}",
            field.name(),
            truncate(text.value(r), 80),
            describe(field.data_type())
        );
        self.rules
            .reject(&mut self.stats, row, "type mismatch", reason)
    }
}

impl TableAssembler {
    /// ` (id=4)`: the row's key as the file wrote it, when the dataset has one.
    fn key_of(&self, texts: &[StringArray], row: usize) -> String {
        let parts: Vec<String> = self
            .rules
            .key
            .iter()
            .filter_map(|name| {
                let i = self.names.iter().position(|n| n == name)?;
                let text = &texts[i];
                Some(format!(
                    "{name}={}",
                    if text.is_valid(row) {
                        truncate(text.value(row), 40)
                    } else {
                        "null".to_owned()
                    }
                ))
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
