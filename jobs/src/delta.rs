//! The delta cursor: rows after the stored watermark, comparing (timestamp, key...) as one tuple,
//! so rows sharing a timestamp are neither lost nor repeated across runs.
//!
//! With a lookback window, a run also re-reads the rows whose timestamp lies within the window
//! before the watermark, to catch rows committed late (a transaction that started before the last
//! run but committed after it). Rows already delivered are recognised by their cursor tuple: the
//! watermark keeps every delivered tuple inside the window (`recent`), so nothing is repeated.
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

/// Tuples kept for a lookback window at most; a window holding more fails the run.
pub const MAX_RECENT_ROWS: usize = 200_000;

/// A cursor position: the cursor columns' values of one row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Watermark {
    pub columns: Vec<String>,
    /// `{"<column>": "<value as text>", ...}`.
    pub values: BTreeMap<String, String>,
    /// The lookback window the `recent` tuples cover, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookback_seconds: Option<u64>,
    /// Every delivered cursor tuple (text, in `columns` order) whose timestamp is within the
    /// lookback window ending at `values`' timestamp.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<Vec<String>>,
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

/// A delivered tuple inside the lookback window.
struct Recent {
    micros: i64,
    row: Vec<u8>,
    text: Vec<String>,
}

struct Lookback {
    /// The window the dataset asks for.
    configured: i64,
    /// Rows with a timestamp at or before this were settled by earlier runs; every delivered
    /// tuple after it is known (`None`: nothing was delivered before).
    cutoff: Option<i64>,
    delivered_before: HashSet<Vec<u8>>,
    window: Vec<Recent>,
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
    pub fn new(
        schema: &Schema,
        columns: &[String],
        previous: Option<&Watermark>,
        lookback_seconds: Option<u64>,
    ) -> Result<Self> {
        Self::build(schema, columns, previous, lookback_seconds, true)
    }

    /// Tracks the highest cursor (and the lookback window) of a complete run without leaving any
    /// row out, so the dataset can later continue in delta mode from where the snapshot ended.
    pub fn tracking(
        schema: &Schema,
        columns: &[String],
        lookback_seconds: Option<u64>,
    ) -> Result<Self> {
        Self::build(schema, columns, None, lookback_seconds, false)
    }

    fn build(
        schema: &Schema,
        columns: &[String],
        previous: Option<&Watermark>,
        lookback_seconds: Option<u64>,
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
                configured: s as i64 * 1_000_000,
                cutoff: None,
                delivered_before: HashSet::new(),
                window: Vec::new(),
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
                lookback.cutoff = floor_micros.map(|f| f - window as i64 * 1_000_000);
                lookback.newest = floor_micros;
                let recent = delta.decode(&watermark.recent)?;
                let rows = delta.convert(&recent)?;
                let stamps = micros(recent.column(0))?;
                let lookback = delta.lookback.as_mut().expect("present");
                for (i, text) in watermark.recent.iter().enumerate() {
                    let row = rows.row(i).as_ref().to_vec();
                    lookback.delivered_before.insert(row.clone());
                    if let Some(micros) = stamps[i] {
                        lookback.window.push(Recent {
                            micros,
                            row,
                            text: text.clone(),
                        });
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
        let formatters = match self.lookback {
            Some(_) => Some(formatters(&cursor)?),
            None => None,
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
            if let (Some(lookback), Some(formatters), Some(micros)) = (
                self.lookback.as_mut(),
                formatters.as_ref(),
                stamps.get(i).copied().flatten(),
            ) {
                let text = formatters.iter().map(|f| f.value(i).to_string()).collect();
                lookback.remember(Recent {
                    micros,
                    row: row.as_ref().to_vec(),
                    text,
                })?;
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
            for recent in theirs.window {
                mine.remember(recent)?;
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
    /// nothing new arrived) and, with a lookback, the tuples inside the window.
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
                ..previous.clone()
            },
            (None, None) => return Ok(None),
        };
        if let Some(lookback) = &self.lookback {
            let Some(newest) = lookback.newest else {
                return Ok(Some(watermark));
            };
            // The window we can vouch for: every delivered tuple inside it is known.
            let window = match lookback.cutoff {
                None => lookback.configured,
                Some(cutoff) => lookback.configured.min(newest - cutoff),
            };
            watermark.lookback_seconds = Some((window / 1_000_000) as u64);
            let mut recent: Vec<&Recent> = lookback
                .window
                .iter()
                .filter(|r| r.micros > newest - window)
                .collect();
            if recent.len() > MAX_RECENT_ROWS {
                return Err(JobError::bad_input(
                    "dataset spec",
                    format!(
                        "the lookback window holds {} rows, more than the {MAX_RECENT_ROWS} tracked; shorten `lookback`",
                        recent.len()
                    ),
                ));
            }
            recent.sort_by(|a, b| a.row.cmp(&b.row));
            recent.dedup_by(|a, b| a.row == b.row);
            watermark.recent = recent.into_iter().map(|r| r.text.clone()).collect();
        }
        Ok(Some(watermark))
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
    /// Remembers a delivered tuple; drops tuples that fell out of the window as it moves.
    fn remember(&mut self, recent: Recent) -> Result<()> {
        self.newest = Some(self.newest.map_or(recent.micros, |n| n.max(recent.micros)));
        self.window.push(recent);
        if self.window.len() > 2 * MAX_RECENT_ROWS {
            let oldest_kept = self.newest.expect("just set") - self.configured;
            self.window.retain(|r| r.micros > oldest_kept);
            if self.window.len() > MAX_RECENT_ROWS {
                return Err(JobError::bad_input(
                    "dataset spec",
                    format!(
                        "the lookback window holds more than {MAX_RECENT_ROWS} rows; shorten `lookback`"
                    ),
                ));
            }
        }
        Ok(())
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
        let mut run1 = DeltaFilter::new(&first.schema(), &cursor(), None, None).unwrap();
        assert_eq!(ids(&run1.apply(&first).unwrap()), vec![1, 2, 3]);
        let mark = run1.highest(None).unwrap().unwrap();
        // Second run: the same rows again, plus id 4 at the same timestamp and id 0 at a later one.
        let second = batch(
            &[Some(10), Some(20), Some(20), Some(20), Some(30)],
            &[1, 2, 3, 4, 0],
        );
        let mut run2 = DeltaFilter::new(&second.schema(), &cursor(), Some(&mark), None).unwrap();
        assert_eq!(ids(&run2.apply(&second).unwrap()), vec![4, 0]);
        assert_eq!(
            run2.highest(Some(&mark)).unwrap().unwrap().values["id"],
            "0"
        );
    }

    #[test]
    fn watermark_keeps_microsecond_precision() {
        let b = batch(&[Some(1_700_000_000_123_456)], &[7]);
        let mut f = DeltaFilter::new(&b.schema(), &cursor(), None, None).unwrap();
        f.apply(&b).unwrap();
        let mark = f.highest(None).unwrap().unwrap();
        assert_eq!(mark.values["ts"], "2023-11-14T22:13:20.123456");
        let mut again = DeltaFilter::new(&b.schema(), &cursor(), Some(&mark), None).unwrap();
        let next = batch(
            &[Some(1_700_000_000_123_456), Some(1_700_000_000_123_457)],
            &[7, 7],
        );
        assert_eq!(again.apply(&next).unwrap().num_rows(), 1);
    }

    #[test]
    fn null_cursor_values_are_counted_not_written() {
        let b = batch(&[None, Some(5)], &[1, 2]);
        let mut f = DeltaFilter::new(&b.schema(), &cursor(), None, None).unwrap();
        let out = f.apply(&b).unwrap();
        assert_eq!(out.num_rows(), 1);
        assert_eq!(out.column(0).null_count(), 0);
        assert_eq!(f.null_cursor_rows(), 1);
        let mut tracking = DeltaFilter::tracking(&b.schema(), &cursor(), None).unwrap();
        assert_eq!(tracking.apply(&b).unwrap().num_rows(), 2);
        assert_eq!(tracking.highest(None).unwrap().unwrap().values["id"], "2");
    }

    #[test]
    fn lookback_delivers_late_rows_once_and_never_repeats_delivered_ones() {
        let second = 1_000_000;
        let lookback = Some(60);
        let first = batch(
            &[Some(100 * second), Some(110 * second), Some(120 * second)],
            &[1, 2, 3],
        );
        let mut run1 = DeltaFilter::new(&first.schema(), &cursor(), None, lookback).unwrap();
        assert_eq!(ids(&run1.apply(&first).unwrap()), [1, 2, 3]);
        let mark1 = run1.highest(None).unwrap().unwrap();
        assert_eq!(
            mark1.recent.len(),
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
        let mut run2 =
            DeltaFilter::new(&again.schema(), &cursor(), Some(&mark1), lookback).unwrap();
        assert_eq!(ids(&run2.apply(&again).unwrap()), [9, 4]);
        let mark2 = run2.highest(Some(&mark1)).unwrap().unwrap();
        assert_eq!(mark2.values["id"], "4");
        assert_eq!(mark2.recent.len(), 5);

        // Run 3: only a late row arrives; the watermark must not move back to it.
        let late = batch(&[Some(125 * second)], &[7]);
        let mut run3 = DeltaFilter::new(&late.schema(), &cursor(), Some(&mark2), lookback).unwrap();
        assert_eq!(ids(&run3.apply(&late).unwrap()), [7]);
        let mark3 = run3.highest(Some(&mark2)).unwrap().unwrap();
        assert_eq!(mark3.values, mark2.values);
        let mut again_after =
            DeltaFilter::new(&again.schema(), &cursor(), Some(&mark3), lookback).unwrap();
        assert_eq!(
            again_after.apply(&again).unwrap().num_rows(),
            0,
            "nothing repeated after a late-only run"
        );
        let mark2 = mark3;

        // Run 4: nothing new, nothing repeated; the watermark stays.
        let mut run3 =
            DeltaFilter::new(&again.schema(), &cursor(), Some(&mark2), lookback).unwrap();
        assert_eq!(run3.apply(&again).unwrap().num_rows(), 0);
        assert_eq!(
            run3.highest(Some(&mark2)).unwrap().unwrap().values,
            mark2.values
        );
    }

    #[test]
    fn turning_lookback_on_starts_strictly_after_the_old_watermark() {
        let first = batch(&[Some(100), Some(200)], &[1, 2]);
        let mut run1 = DeltaFilter::new(&first.schema(), &cursor(), None, None).unwrap();
        run1.apply(&first).unwrap();
        let mark = run1.highest(None).unwrap().unwrap();
        assert_eq!(effective_lookback(Some(&mark), Some(3600)), None);
        let mut run2 =
            DeltaFilter::new(&first.schema(), &cursor(), Some(&mark), Some(3600)).unwrap();
        assert_eq!(
            run2.apply(&first).unwrap().num_rows(),
            0,
            "no window recorded yet: nothing re-delivered"
        );
    }

    #[test]
    fn lookback_needs_a_temporal_cursor() {
        let b = batch(&[Some(1)], &[1]);
        let err = DeltaFilter::new(&b.schema(), &["id".to_string()], None, Some(60))
            .err()
            .unwrap();
        assert!(err.to_string().contains("date or timestamp"), "{err}");
    }
}
