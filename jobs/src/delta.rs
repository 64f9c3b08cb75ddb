//! The delta cursor: rows after the stored watermark, comparing (timestamp, key...) as one tuple,
//! so rows sharing a timestamp are neither lost nor repeated across runs.
//!
//! With a lookback window, a run also re-reads the rows whose timestamp lies within the window
//! before the watermark, to catch rows committed late (a transaction that started before the last
//! run but committed after it). Rows already delivered are recognised by their cursor tuple: each
//! run writes every tuple it can vouch was delivered inside the window to an encrypted side file
//! (`recent_files`, beside the manifests), and the next run reads it back, so nothing is repeated
//! and a manifest stays small whatever a bulk update puts inside the window. Memory for the window
//! is bounded: past `WINDOW_BUDGET_BYTES` the oldest tuples are let go and the window the run
//! vouches for narrows to what it kept (the next run re-reads that narrower window), so no volume
//! of updates can fail or strand a dataset.
//!
//! The watermark is stored as text: each cursor value as Arrow displays it (full precision:
//! every decimal digit, microseconds, the key as written), and cast back to the column's type
//! before comparing, so storing it never rounds it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray};
use arrow::compute::{CastOptions, cast, cast_with_options, filter_record_batch};
use arrow::datatypes::{DataType, Int64Type, Schema, SchemaRef, TimeUnit};
use arrow::row::{OwnedRow, RowConverter, Rows, SortField};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde::{Deserialize, Serialize};

use crate::error::{JobError, Result};
use crate::sink::PartFile;

/// Memory a run spends on its lookback window's tuples at most (their row-format bytes and
/// bookkeeping): about a million tuples of a timestamp and one or two keys.
pub const WINDOW_BUDGET_BYTES: usize = 64 << 20;
/// Bookkeeping per remembered tuple besides its bytes.
const TUPLE_OVERHEAD: usize = 40;

/// A cursor position: the cursor columns' values of one row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Watermark {
    pub columns: Vec<String>,
    /// `{"<column>": "<value as text>", ...}`.
    pub values: BTreeMap<String, String>,
    /// The lookback window the `recent` tuples cover, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookback_seconds: Option<u64>,
    /// Delivered tuples inside the window, inline (text, in `columns` order): how manifests
    /// of format 1 stored them. Read, never written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<Vec<String>>,
    /// Every delivered cursor tuple whose timestamp is within the lookback window ending at
    /// `values`' timestamp: encrypted Parquet files of the cursor columns, beside the manifests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_files: Vec<PartFile>,
}

impl Watermark {
    /// The position alone, without the window's tuples.
    pub fn position(&self) -> Watermark {
        Watermark {
            recent: Vec::new(),
            recent_files: Vec::new(),
            ..self.clone()
        }
    }
}

/// The lookback a delta run can use safely: the shorter of the configured one and the one the
/// stored watermark's `recent` tuples cover (a wider window would re-deliver rows).
pub fn effective_lookback(previous: Option<&Watermark>, configured: Option<u64>) -> Option<u64> {
    match (previous, configured) {
        (Some(w), Some(now)) => w
            .lookback_seconds
            .map(|before| before.min(now))
            .filter(|&s| s > 0),
        _ => None,
    }
}

/// A delta filter's findings in transit between workers (`DeltaFilter::export`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CursorState {
    pub null_cursor_rows: u64,
    pub highest: Option<RowBytes>,
    pub forgotten_up_to: Option<i64>,
    /// Delivered tuples inside the lookback window: (timestamp in µs, row bytes).
    pub window: Vec<(i64, RowBytes)>,
}

/// Arrow row-format bytes, base64 in JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowBytes(pub Vec<u8>);

impl Serialize for RowBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use base64::Engine;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for RowBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use base64::Engine;
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(RowBytes)
            .map_err(serde::de::Error::custom)
    }
}

/// A delivered tuple inside the lookback window.
struct Recent {
    micros: i64,
    row: Vec<u8>,
}

struct Lookback {
    /// The window the dataset asks for.
    configured: i64,
    /// Rows with a timestamp at or before this were settled by earlier runs; every delivered
    /// tuple after it is known (`None`: nothing was delivered before).
    cutoff: Option<i64>,
    delivered_before: HashSet<Vec<u8>>,
    window: Vec<Recent>,
    /// Bytes `window` holds (for the budget).
    window_bytes: usize,
    /// Tuples at or before this were let go to stay within the budget: the window this run
    /// vouches for starts after it.
    forgotten_up_to: Option<i64>,
    newest: Option<i64>,
}

pub struct DeltaFilter {
    /// `false` tracks the highest cursor without filtering (complete runs).
    filter: bool,
    indices: Vec<usize>,
    cursor_schema: SchemaRef,
    converter: RowConverter,
    floor: Option<OwnedRow>,
    lookback: Option<Lookback>,
    highest: Option<(OwnedRow, RecordBatch)>,
    null_cursor_rows: u64,
}

impl DeltaFilter {
    /// A delta cursor: rows after `previous` pass (or, with a lookback, rows inside the window not
    /// delivered before); rows with a null cursor value are dropped and counted.
    /// `delivered` holds the tuples the previous run delivered inside its window (read back from
    /// its `recent_files`).
    pub fn new(
        schema: &Schema,
        columns: &[String],
        previous: Option<&Watermark>,
        lookback_seconds: Option<u64>,
        delivered: &[RecordBatch],
    ) -> Result<Self> {
        Self::build(schema, columns, previous, lookback_seconds, delivered, true)
    }

    /// Tracks the highest cursor (and the lookback window) of a complete run without leaving any
    /// row out, so the dataset can later continue in delta mode from where the snapshot ended.
    pub fn tracking(
        schema: &Schema,
        columns: &[String],
        lookback_seconds: Option<u64>,
    ) -> Result<Self> {
        Self::build(schema, columns, None, lookback_seconds, &[], false)
    }

    fn build(
        schema: &Schema,
        columns: &[String],
        previous: Option<&Watermark>,
        lookback_seconds: Option<u64>,
        delivered: &[RecordBatch],
        filter: bool,
    ) -> Result<Self> {
        let spec_error = |message: String| JobError::bad_input("dataset spec", message);
        let indices = columns
            .iter()
            .map(|c| {
                schema.index_of(c).map_err(|_| {
                    spec_error(format!("delta cursor column '{c}' is not in the source"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let cursor_schema = Arc::new(
            schema
                .project(&indices)
                .map_err(|e| JobError::arrow("delta cursor", e))?,
        );
        let converter = RowConverter::new(
            cursor_schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(|e| JobError::arrow("delta cursor columns cannot be ordered", e))?;
        if lookback_seconds.is_some() && !is_temporal(cursor_schema.field(0).data_type()) {
            return Err(spec_error(format!(
                "lookback needs a date or timestamp cursor column; '{}' is {}",
                columns[0],
                cursor_schema.field(0).data_type()
            )));
        }
        let mut delta = Self {
            filter,
            indices,
            cursor_schema,
            converter,
            floor: None,
            lookback: lookback_seconds.map(|s| Lookback {
                configured: i64::try_from(s)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1_000_000),
                cutoff: None,
                delivered_before: HashSet::new(),
                window: Vec::new(),
                window_bytes: 0,
                forgotten_up_to: None,
                newest: None,
            }),
            highest: None,
            null_cursor_rows: 0,
        };
        let Some(watermark) = previous else {
            return Ok(delta);
        };
        if watermark.columns != columns {
            return Err(spec_error(format!(
                "delta cursor changed from ({}) to ({}); a full reload (mode: complete) is needed first",
                watermark.columns.join(", "),
                columns.join(", ")
            )));
        }
        let batch = delta.decode(&[columns_in_order(watermark)?])?;
        let floor = delta.convert(&batch)?.row(0).owned();
        // The watermark never moves back, even when a run delivers only late rows.
        delta.highest = Some((floor.clone(), batch.clone()));
        let floor_micros = micros(batch.column(0))?.first().copied().flatten();
        match (
            delta.lookback.as_mut(),
            effective_lookback(previous, lookback_seconds),
        ) {
            (Some(lookback), Some(window)) => {
                let window = i64::try_from(window)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1_000_000);
                lookback.cutoff = floor_micros.map(|f| f.saturating_sub(window));
                lookback.newest = floor_micros;
                let mut tuples = Vec::with_capacity(delivered.len() + 1);
                if !watermark.recent.is_empty() {
                    tuples.push(delta.decode(&watermark.recent)?);
                }
                for batch in delivered {
                    tuples.push(delta.as_cursor(batch)?);
                }
                for batch in &tuples {
                    let rows = delta.convert(batch)?;
                    let stamps = micros(batch.column(0))?;
                    let lookback = delta.lookback.as_mut().expect("present");
                    for (i, stamp) in stamps.iter().enumerate() {
                        let row = rows.row(i).as_ref().to_vec();
                        lookback.delivered_before.insert(row.clone());
                        if let Some(micros) = *stamp {
                            lookback.remember(Recent { micros, row });
                        }
                    }
                }
            }
            // No usable window from the previous run: start strictly after the watermark (and,
            // with a lookback, start recording the window from there).
            (lookback, _) => {
                delta.floor = Some(floor);
                if let Some(lookback) = lookback {
                    lookback.cutoff = floor_micros;
                    lookback.newest = floor_micros;
                }
            }
        }
        Ok(delta)
    }

    /// Keeps the rows that were not delivered before (all rows when tracking).
    pub fn apply(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        let cursor = batch
            .project(&self.indices)
            .map_err(|e| JobError::arrow("delta cursor", e))?;
        let rows = self.convert(&cursor)?;
        let stamps = match self.lookback {
            Some(_) => micros(cursor.column(0))?,
            None => Vec::new(),
        };
        let mut keep = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            if cursor.columns().iter().any(|c| c.is_null(i)) {
                self.null_cursor_rows += 1;
                keep.push(!self.filter);
                continue;
            }
            let row = rows.row(i);
            let new = match (&self.floor, &self.lookback) {
                (Some(floor), _) => row > floor.row(),
                (None, Some(lookback)) => {
                    lookback
                        .cutoff
                        .is_none_or(|cutoff| stamps[i].is_some_and(|t| t > cutoff))
                        && !lookback.delivered_before.contains(row.as_ref())
                }
                (None, None) => true,
            };
            let kept = new || !self.filter;
            keep.push(kept);
            if !kept {
                continue;
            }
            if self
                .highest
                .as_ref()
                .is_none_or(|(high, _)| row > high.row())
            {
                self.highest = Some((row.owned(), cursor.slice(i, 1)));
            }
            if let (Some(lookback), Some(micros)) =
                (self.lookback.as_mut(), stamps.get(i).copied().flatten())
            {
                lookback.remember(Recent {
                    micros,
                    row: row.as_ref().to_vec(),
                });
            }
        }
        if keep.iter().all(|&k| k) {
            return Ok(batch.clone());
        }
        filter_record_batch(batch, &BooleanArray::from(keep))
            .map_err(|e| JobError::arrow("delta filter", e))
    }

    /// Folds in a filter that saw other rows of the same run (a chunk of a partitioned read),
    /// built with the same columns and previous watermark.
    pub fn absorb(&mut self, other: DeltaFilter) -> Result<()> {
        self.null_cursor_rows += other.null_cursor_rows;
        if let Some((row, batch)) = other.highest
            && self
                .highest
                .as_ref()
                .is_none_or(|(high, _)| row.row() > high.row())
        {
            self.highest = Some((row, batch));
        }
        if let (Some(mine), Some(theirs)) = (self.lookback.as_mut(), other.lookback) {
            mine.forgotten_up_to = mine.forgotten_up_to.max(theirs.forgotten_up_to);
            for recent in theirs.window {
                mine.remember(recent);
            }
        }
        Ok(())
    }

    /// What this filter saw, to be folded into the coordinator's filter by another process (a
    /// chunk read by another worker): the highest tuple and the window's tuples as row bytes,
    /// which decode only with a filter built from the same columns and types.
    pub fn export(&self) -> CursorState {
        CursorState {
            null_cursor_rows: self.null_cursor_rows,
            highest: self
                .highest
                .as_ref()
                .map(|(row, _)| RowBytes(row.row().as_ref().to_vec())),
            forgotten_up_to: self.lookback.as_ref().and_then(|l| l.forgotten_up_to),
            window: self.lookback.as_ref().map_or_else(Vec::new, |l| {
                l.window
                    .iter()
                    .map(|r| (r.micros, RowBytes(r.row.clone())))
                    .collect()
            }),
        }
    }

    /// Folds in what `export` gave on another worker, as `absorb` does with a filter.
    pub fn absorb_state(&mut self, state: CursorState) -> Result<()> {
        self.null_cursor_rows += state.null_cursor_rows;
        if let Some(RowBytes(bytes)) = state.highest {
            let parser = self.converter.parser();
            let row = parser.parse(&bytes);
            let columns = self
                .converter
                .convert_rows(std::iter::once(row))
                .map_err(|e| JobError::arrow("a chunk's highest cursor tuple", e))?;
            let batch = RecordBatch::try_new(self.cursor_schema.clone(), columns)
                .map_err(|e| JobError::arrow("a chunk's highest cursor tuple", e))?;
            // Re-encoded from the decoded values, so a tuple from a foreign layout cannot pass.
            let owned = self.convert(&batch)?.row(0).owned();
            if self
                .highest
                .as_ref()
                .is_none_or(|(high, _)| owned.row() > high.row())
            {
                self.highest = Some((owned, batch));
            }
        }
        if let Some(mine) = self.lookback.as_mut() {
            mine.forgotten_up_to = mine.forgotten_up_to.max(state.forgotten_up_to);
            for (micros, RowBytes(row)) in state.window {
                mine.remember(Recent { micros, row });
            }
        }
        Ok(())
    }

    /// Rows with a null cursor value: left out by a delta cursor (they cannot be placed after a
    /// watermark), only counted when tracking.
    pub fn null_cursor_rows(&self) -> u64 {
        self.null_cursor_rows
    }

    /// The watermark after this run: the highest tuple delivered (or the previous one when
    /// nothing new arrived) and, with a lookback, the window it vouches for. The window's
    /// tuples are `recent_tuples`, for the run to store beside its manifest.
    pub fn highest(&self, previous: Option<&Watermark>) -> Result<Option<Watermark>> {
        let columns: Vec<String> = self
            .cursor_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let mut watermark = match (&self.highest, previous) {
            (Some((_, batch)), _) => {
                let mut values = BTreeMap::new();
                for (name, formatter) in columns.iter().zip(formatters(batch)?) {
                    values.insert(name.clone(), formatter.value(0).to_string());
                }
                Watermark {
                    columns: columns.clone(),
                    values,
                    ..Watermark::default()
                }
            }
            (None, Some(previous)) => Watermark {
                recent: Vec::new(),
                recent_files: Vec::new(),
                ..previous.clone()
            },
            (None, None) => return Ok(None),
        };
        if let Some(window) = self.vouched_window() {
            watermark.lookback_seconds = Some((window / 1_000_000) as u64);
        }
        Ok(Some(watermark))
    }

    /// The window (µs, ending at the newest timestamp) whose every delivered tuple this run
    /// knows: the configured one, narrowed to what earlier runs settled and to what the memory
    /// budget kept.
    fn vouched_window(&self) -> Option<i64> {
        let lookback = self.lookback.as_ref()?;
        let newest = lookback.newest?;
        let mut window = lookback.configured;
        if let Some(cutoff) = lookback.cutoff {
            window = window.min(newest - cutoff);
        }
        if let Some(forgotten) = lookback.forgotten_up_to {
            window = window.min(newest - forgotten);
        }
        Some(window.max(0))
    }

    /// Whether the window was narrowed to stay within the memory budget (for the report).
    pub fn window_narrowed(&self) -> bool {
        self.lookback
            .as_ref()
            .is_some_and(|l| l.forgotten_up_to.is_some())
    }

    /// The delivered tuples inside the vouched window, sorted and without repeats, as cursor
    /// columns: what the next run must recognise. `None` without a lookback.
    pub fn recent_tuples(&self) -> Result<Option<RecordBatch>> {
        let (Some(lookback), Some(window)) = (self.lookback.as_ref(), self.vouched_window()) else {
            return Ok(None);
        };
        let newest = lookback
            .newest
            .expect("a vouched window has a newest tuple");
        let mut recent: Vec<&[u8]> = lookback
            .window
            .iter()
            .filter(|r| r.micros > newest - window)
            .map(|r| r.row.as_slice())
            .collect();
        recent.sort_unstable();
        recent.dedup();
        let parser = self.converter.parser();
        let columns = self
            .converter
            .convert_rows(recent.iter().map(|bytes| parser.parse(bytes)))
            .map_err(|e| JobError::arrow("the lookback window's tuples", e))?;
        RecordBatch::try_new(self.cursor_schema.clone(), columns)
            .map(Some)
            .map_err(|e| JobError::arrow("the lookback window's tuples", e))
    }

    /// A stored window batch as this cursor's columns and types.
    fn as_cursor(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let columns = self
            .cursor_schema
            .fields()
            .iter()
            .map(|field| {
                let column = batch.column_by_name(field.name()).ok_or_else(|| {
                    JobError::bad_input(
                        "lookback window file",
                        format!("has no column '{}'", field.name()),
                    )
                })?;
                cast(column, field.data_type())
                    .map_err(|e| JobError::arrow("reading the lookback window", e))
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        RecordBatch::try_new(self.cursor_schema.clone(), columns)
            .map_err(|e| JobError::arrow("reading the lookback window", e))
    }

    /// Casts text tuples (in cursor column order) back to the cursor's types.
    fn decode(&self, tuples: &[Vec<String>]) -> Result<RecordBatch> {
        let context = "decoding the stored watermark";
        let columns = self
            .cursor_schema
            .fields()
            .iter()
            .enumerate()
            .map(|(c, field)| {
                let texts: StringArray = tuples
                    .iter()
                    .map(|t| t.get(c).map(String::as_str))
                    .collect();
                let cast = CastOptions {
                    safe: false,
                    ..CastOptions::default()
                };
                cast_with_options(&texts, field.data_type(), &cast).map_err(|e| {
                    JobError::arrow(format!("{context}: column '{}'", field.name()), e)
                })
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        RecordBatch::try_new(self.cursor_schema.clone(), columns)
            .map_err(|e| JobError::arrow(context, e))
    }

    fn convert(&self, cursor: &RecordBatch) -> Result<Rows> {
        self.converter
            .convert_columns(cursor.columns())
            .map_err(|e| JobError::arrow("comparing delta cursor values", e))
    }
}

impl Lookback {
    /// Remembers a delivered tuple. Tuples that fell out of the configured window as it moves are
    /// dropped; past the memory budget the oldest quarter is let go and the vouched window
    /// narrows past it.
    fn remember(&mut self, recent: Recent) {
        if self.forgotten_up_to.is_some_and(|f| recent.micros <= f) {
            return;
        }
        self.newest = Some(self.newest.map_or(recent.micros, |n| n.max(recent.micros)));
        self.window_bytes += recent.row.len() + TUPLE_OVERHEAD;
        self.window.push(recent);
        if self.window_bytes <= WINDOW_BUDGET_BYTES {
            return;
        }
        let oldest_kept = self
            .newest
            .expect("just set")
            .saturating_sub(self.configured);
        self.window.retain(|r| r.micros > oldest_kept);
        self.recount();
        if self.window_bytes <= WINDOW_BUDGET_BYTES / 2 {
            return;
        }
        let quarter = self.window.len() / 4;
        self.window
            .select_nth_unstable_by_key(quarter, |r| r.micros);
        let cut = self.window[quarter].micros;
        self.window.retain(|r| r.micros > cut);
        self.forgotten_up_to = self.forgotten_up_to.max(Some(cut));
        self.recount();
        tracing::warn!(
            kept = self.window.len(),
            "the lookback window holds more tuples than its memory budget; the oldest are let go and the window the next run re-reads narrows"
        );
    }

    fn recount(&mut self) {
        self.window_bytes = self
            .window
            .iter()
            .map(|r| r.row.len() + TUPLE_OVERHEAD)
            .sum();
    }
}

fn columns_in_order(watermark: &Watermark) -> Result<Vec<String>> {
    watermark
        .columns
        .iter()
        .map(|c| {
            watermark.values.get(c).cloned().ok_or_else(|| {
                JobError::bad_input(
                    "manifest",
                    format!("stored watermark has no value for '{c}'"),
                )
            })
        })
        .collect()
}

fn is_temporal(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64
    )
}

/// Microseconds since the epoch of a date or timestamp column.
fn micros(column: &ArrayRef) -> Result<Vec<Option<i64>>> {
    let as_micros = cast(column, &DataType::Timestamp(TimeUnit::Microsecond, None))
        .and_then(|t| cast(&t, &DataType::Int64))
        .map_err(|e| JobError::arrow("reading the cursor timestamp", e))?;
    Ok(as_micros.as_primitive::<Int64Type>().iter().collect())
}

fn formatters(batch: &RecordBatch) -> Result<Vec<ArrayFormatter<'_>>> {
    let options = FormatOptions::default();
    batch
        .columns()
        .iter()
        .map(|c| {
            ArrayFormatter::try_new(c.as_ref(), &options)
                .map_err(|e| JobError::arrow("formatting the cursor", e))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, TimestampMicrosecondArray};
    use arrow::datatypes::Field;

    fn batch(ts: &[Option<i64>], ids: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("id", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMicrosecondArray::from(ts.to_vec())),
                Arc::new(Int64Array::from(ids.to_vec())),
            ],
        )
        .unwrap()
    }

    fn ids(batch: &RecordBatch) -> Vec<i64> {
        batch
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .values()
            .to_vec()
    }

    fn cursor() -> Vec<String> {
        vec!["ts".to_string(), "id".to_string()]
    }

    #[test]
    fn rows_sharing_the_watermark_timestamp_are_split_by_key() {
        let first = batch(&[Some(10), Some(20), Some(20)], &[1, 2, 3]);
        let mut run1 = DeltaFilter::new(&first.schema(), &cursor(), None, None, &[]).unwrap();
        assert_eq!(ids(&run1.apply(&first).unwrap()), vec![1, 2, 3]);
        let mark = run1.highest(None).unwrap().unwrap();
        // Second run: the same rows again, plus id 4 at the same timestamp and id 0 at a later one.
        let second = batch(
            &[Some(10), Some(20), Some(20), Some(20), Some(30)],
            &[1, 2, 3, 4, 0],
        );
        let mut run2 =
            DeltaFilter::new(&second.schema(), &cursor(), Some(&mark), None, &[]).unwrap();
        assert_eq!(ids(&run2.apply(&second).unwrap()), vec![4, 0]);
        assert_eq!(
            run2.highest(Some(&mark)).unwrap().unwrap().values["id"],
            "0"
        );
    }

    #[test]
    fn watermark_keeps_microsecond_precision() {
        let b = batch(&[Some(1_700_000_000_123_456)], &[7]);
        let mut f = DeltaFilter::new(&b.schema(), &cursor(), None, None, &[]).unwrap();
        f.apply(&b).unwrap();
        let mark = f.highest(None).unwrap().unwrap();
        assert_eq!(mark.values["ts"], "2023-11-14T22:13:20.123456");
        let mut again = DeltaFilter::new(&b.schema(), &cursor(), Some(&mark), None, &[]).unwrap();
        let next = batch(
            &[Some(1_700_000_000_123_456), Some(1_700_000_000_123_457)],
            &[7, 7],
        );
        assert_eq!(again.apply(&next).unwrap().num_rows(), 1);
    }

    #[test]
    fn null_cursor_values_are_counted_not_written() {
        let b = batch(&[None, Some(5)], &[1, 2]);
        let mut f = DeltaFilter::new(&b.schema(), &cursor(), None, None, &[]).unwrap();
        let out = f.apply(&b).unwrap();
        assert_eq!(out.num_rows(), 1);
        assert_eq!(out.column(0).null_count(), 0);
        assert_eq!(f.null_cursor_rows(), 1);
        let mut tracking = DeltaFilter::tracking(&b.schema(), &cursor(), None).unwrap();
        assert_eq!(tracking.apply(&b).unwrap().num_rows(), 2);
        assert_eq!(tracking.highest(None).unwrap().unwrap().values["id"], "2");
    }

    /// Two chunks' filters folded through their exported state (JSON, as a chunk's note carries
    /// it) give the same watermark and window as the chunks' filters folded in one process.
    #[test]
    fn a_filter_exported_by_another_worker_folds_in_like_the_filter_itself() {
        let second = 1_000_000;
        let lookback = Some(60);
        let left = batch(&[Some(100 * second), Some(130 * second)], &[1, 5]);
        let right = batch(&[Some(130 * second), Some(110 * second), None], &[2, 3, 4]);
        let fresh = || DeltaFilter::new(&left.schema(), &cursor(), None, lookback, &[]).unwrap();
        let (mut a, mut b) = (fresh(), fresh());
        a.apply(&left).unwrap();
        b.apply(&right).unwrap();

        let mut in_process = fresh();
        in_process.absorb(fresh_with(&left, &mut fresh())).unwrap();
        in_process.absorb(fresh_with(&right, &mut fresh())).unwrap();

        let mut across = fresh();
        for filter in [&a, &b] {
            let text = serde_json::to_string(&filter.export()).unwrap();
            across
                .absorb_state(serde_json::from_str(&text).unwrap())
                .unwrap();
        }
        let mark = across.highest(None).unwrap().unwrap();
        assert_eq!(mark.values["id"], "5", "(130 s, 5) is after (130 s, 2)");
        assert_eq!(mark, in_process.highest(None).unwrap().unwrap());
        assert_eq!(across.null_cursor_rows(), 1);
        assert_eq!(
            across.recent_tuples().unwrap(),
            in_process.recent_tuples().unwrap()
        );
        assert_eq!(across.recent_tuples().unwrap().unwrap().num_rows(), 4);
    }

    fn fresh_with(batch: &RecordBatch, filter: &mut DeltaFilter) -> DeltaFilter {
        filter.apply(batch).unwrap();
        std::mem::replace(
            filter,
            DeltaFilter::new(&batch.schema(), &cursor(), None, Some(60), &[]).unwrap(),
        )
    }

    #[test]
    fn lookback_delivers_late_rows_once_and_never_repeats_delivered_ones() {
        let second = 1_000_000;
        let lookback = Some(60);
        let first = batch(
            &[Some(100 * second), Some(110 * second), Some(120 * second)],
            &[1, 2, 3],
        );
        let mut run1 = DeltaFilter::new(&first.schema(), &cursor(), None, lookback, &[]).unwrap();
        assert_eq!(ids(&run1.apply(&first).unwrap()), [1, 2, 3]);
        let mark1 = run1.highest(None).unwrap().unwrap();
        let window1 = run1.recent_tuples().unwrap().unwrap();
        assert_eq!(
            window1.num_rows(),
            3,
            "all three lie within 60 s of the newest"
        );

        // Run 2 sees the same rows plus id 9 committed late at t=115 s (before the watermark),
        // id 8 older than the window (lost by design), and a new row at t=130 s.
        let again = batch(
            &[
                Some(100 * second),
                Some(110 * second),
                Some(120 * second),
                Some(115 * second),
                Some(10 * second),
                Some(130 * second),
            ],
            &[1, 2, 3, 9, 8, 4],
        );
        let mut run2 = DeltaFilter::new(
            &again.schema(),
            &cursor(),
            Some(&mark1),
            lookback,
            &[window1],
        )
        .unwrap();
        assert_eq!(ids(&run2.apply(&again).unwrap()), [9, 4]);
        let mark2 = run2.highest(Some(&mark1)).unwrap().unwrap();
        assert_eq!(mark2.values["id"], "4");
        let window2 = run2.recent_tuples().unwrap().unwrap();
        assert_eq!(window2.num_rows(), 5);

        // Run 3: only a late row arrives; the watermark must not move back to it.
        let late = batch(&[Some(125 * second)], &[7]);
        let mut run3 = DeltaFilter::new(
            &late.schema(),
            &cursor(),
            Some(&mark2),
            lookback,
            &[window2],
        )
        .unwrap();
        assert_eq!(ids(&run3.apply(&late).unwrap()), [7]);
        let mark3 = run3.highest(Some(&mark2)).unwrap().unwrap();
        let window3 = run3.recent_tuples().unwrap().unwrap();
        assert_eq!(mark3.values, mark2.values);
        let mut again_after = DeltaFilter::new(
            &again.schema(),
            &cursor(),
            Some(&mark3),
            lookback,
            std::slice::from_ref(&window3),
        )
        .unwrap();
        assert_eq!(
            again_after.apply(&again).unwrap().num_rows(),
            0,
            "nothing repeated after a late-only run"
        );
        let mark2 = mark3;

        // Run 4: nothing new, nothing repeated; the watermark stays.
        let mut run3 = DeltaFilter::new(
            &again.schema(),
            &cursor(),
            Some(&mark2),
            lookback,
            &[window3],
        )
        .unwrap();
        assert_eq!(run3.apply(&again).unwrap().num_rows(), 0);
        assert_eq!(
            run3.highest(Some(&mark2)).unwrap().unwrap().values,
            mark2.values
        );
    }

    #[test]
    fn turning_lookback_on_starts_strictly_after_the_old_watermark() {
        let first = batch(&[Some(100), Some(200)], &[1, 2]);
        let mut run1 = DeltaFilter::new(&first.schema(), &cursor(), None, None, &[]).unwrap();
        run1.apply(&first).unwrap();
        let mark = run1.highest(None).unwrap().unwrap();
        assert_eq!(effective_lookback(Some(&mark), Some(3600)), None);
        let mut run2 =
            DeltaFilter::new(&first.schema(), &cursor(), Some(&mark), Some(3600), &[]).unwrap();
        assert_eq!(
            run2.apply(&first).unwrap().num_rows(),
            0,
            "no window recorded yet: nothing re-delivered"
        );
    }

    #[test]
    fn a_window_beyond_the_memory_budget_narrows_instead_of_failing() {
        let second = 1_000_000i64;
        // More tuples inside one minute than the budget holds: one per microsecond-ish step.
        let per_tuple = 17 + TUPLE_OVERHEAD;
        let count = (WINDOW_BUDGET_BYTES / per_tuple) as i64 + 50_000;
        let stamps: Vec<Option<i64>> = (0..count).map(|i| Some(1_000 * second + i)).collect();
        let ids_: Vec<i64> = (0..count).collect();
        let bulk = batch(&stamps, &ids_);
        let mut run = DeltaFilter::new(&bulk.schema(), &cursor(), None, Some(3600), &[]).unwrap();
        assert_eq!(
            run.apply(&bulk).unwrap().num_rows() as i64,
            count,
            "every row delivered"
        );
        assert!(run.window_narrowed());
        let mark = run.highest(None).unwrap().unwrap();
        let kept = run.recent_tuples().unwrap().unwrap();
        assert!(kept.num_rows() > 0 && (kept.num_rows() as i64) < count);
        assert!(mark.lookback_seconds.unwrap() < 3600);
        // The next run re-reads the same rows: none is delivered twice.
        let mut next =
            DeltaFilter::new(&bulk.schema(), &cursor(), Some(&mark), Some(3600), &[kept]).unwrap();
        assert_eq!(next.apply(&bulk).unwrap().num_rows(), 0);
    }

    #[test]
    fn lookback_needs_a_temporal_cursor() {
        let b = batch(&[Some(1)], &[1]);
        let err = DeltaFilter::new(&b.schema(), &["id".to_string()], None, Some(60), &[])
            .err()
            .unwrap();
        assert!(err.to_string().contains("date or timestamp"), "{err}");
    }
}
