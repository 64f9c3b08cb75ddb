//! The delta cursor: rows strictly after the stored watermark, comparing (timestamp, key...) as one
//! tuple, so rows sharing a timestamp are neither lost nor repeated across runs.
//!
//! The watermark is stored as text: each cursor value as Arrow displays it (full precision:
//! every decimal digit, microseconds, the key as written), and cast back to the column's type
//! before comparing, so storing it never rounds it.

use std::sync::Arc;

use std::collections::BTreeMap;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray};
use arrow::compute::{CastOptions, cast_with_options, filter_record_batch};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde::{Deserialize, Serialize};

use crate::error::{JobError, Result};

/// A cursor position: the cursor columns' values of one row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Watermark {
    pub columns: Vec<String>,
    /// `{"<column>": "<value as text>", ...}`.
    pub values: BTreeMap<String, String>,
}

pub struct DeltaFilter {
    /// `false` tracks the highest cursor without filtering (complete runs).
    filter: bool,
    indices: Vec<usize>,
    cursor_schema: SchemaRef,
    converter: RowConverter,
    floor: Option<OwnedRow>,
    highest: Option<(OwnedRow, RecordBatch)>,
    null_cursor_rows: u64,
}

impl DeltaFilter {
    /// A delta cursor: rows after `previous` pass, rows with a null cursor value are dropped.
    pub fn new(schema: &Schema, columns: &[String], previous: Option<&Watermark>) -> Result<Self> {
        Self::build(schema, columns, previous, true)
    }

    /// Tracks the highest cursor of a complete run without leaving any row out, so the dataset can
    /// later continue in delta mode from where the snapshot ended.
    pub fn tracking(schema: &Schema, columns: &[String]) -> Result<Self> {
        Self::build(schema, columns, None, false)
    }

    fn build(
        schema: &Schema,
        columns: &[String],
        previous: Option<&Watermark>,
        filter: bool,
    ) -> Result<Self> {
        let indices = columns
            .iter()
            .map(|c| {
                schema.index_of(c).map_err(|_| {
                    JobError::bad_input(
                        "dataset spec",
                        format!("delta cursor column '{c}' is not in the source"),
                    )
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
        let mut filter = Self {
            filter,
            indices,
            cursor_schema,
            converter,
            floor: None,
            highest: None,
            null_cursor_rows: 0,
        };
        if let Some(watermark) = previous {
            if watermark.columns != columns {
                return Err(JobError::bad_input(
                    "dataset spec",
                    format!(
                        "delta cursor changed from ({}) to ({}); a full reload (mode: complete) is needed first",
                        watermark.columns.join(", "),
                        columns.join(", ")
                    ),
                ));
            }
            let batch = filter.decode(watermark)?;
            let rows = filter.convert(&batch)?;
            filter.floor = Some(rows.row(0).owned());
        }
        Ok(filter)
    }

    /// Keeps the rows after the watermark; rows with a null cursor value are dropped and counted.
    pub fn apply(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        let cursor = batch
            .project(&self.indices)
            .map_err(|e| JobError::arrow("delta cursor", e))?;
        let rows = self.convert(&cursor)?;
        let mut keep = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            if self.indices.iter().any(|&c| batch.column(c).is_null(i)) {
                self.null_cursor_rows += 1;
                keep.push(!self.filter);
                continue;
            }
            let row = rows.row(i);
            let after_floor = self.floor.as_ref().is_none_or(|floor| row > floor.row());
            keep.push(after_floor);
            if after_floor
                && self
                    .highest
                    .as_ref()
                    .is_none_or(|(high, _)| row > high.row())
            {
                self.highest = Some((row.owned(), cursor.slice(i, 1)));
            }
        }
        filter_record_batch(batch, &BooleanArray::from(keep))
            .map_err(|e| JobError::arrow("delta filter", e))
    }

    /// Rows with a null cursor value: left out by a delta cursor (they cannot be placed after a
    /// watermark), only counted when tracking.
    pub fn null_cursor_rows(&self) -> u64 {
        self.null_cursor_rows
    }

    /// The highest cursor written in this run, if any row passed.
    pub fn highest(&self) -> Result<Option<Watermark>> {
        let Some((_, batch)) = &self.highest else {
            return Ok(None);
        };
        let options = FormatOptions::default();
        let mut values = BTreeMap::new();
        for (field, column) in self.cursor_schema.fields().iter().zip(batch.columns()) {
            let formatter = ArrayFormatter::try_new(column.as_ref(), &options)
                .map_err(|e| JobError::arrow("encoding the watermark", e))?;
            values.insert(field.name().clone(), formatter.value(0).to_string());
        }
        Ok(Some(Watermark {
            columns: self
                .cursor_schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect(),
            values,
        }))
    }

    fn decode(&self, watermark: &Watermark) -> Result<RecordBatch> {
        let context = "decoding the stored watermark";
        let columns = self
            .cursor_schema
            .fields()
            .iter()
            .map(|field| {
                let text = watermark.values.get(field.name()).ok_or_else(|| {
                    JobError::bad_input(
                        "manifest",
                        format!("stored watermark has no value for '{}'", field.name()),
                    )
                })?;
                let cast = CastOptions {
                    safe: false,
                    ..CastOptions::default()
                };
                cast_with_options(
                    &StringArray::from(vec![text.as_str()]),
                    field.data_type(),
                    &cast,
                )
                .map_err(|e| {
                    JobError::arrow(
                        format!("{context}: column '{}' value '{text}'", field.name()),
                        e,
                    )
                })
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        RecordBatch::try_new(self.cursor_schema.clone(), columns)
            .map_err(|e| JobError::arrow(context, e))
    }

    fn convert(&self, cursor: &RecordBatch) -> Result<arrow::row::Rows> {
        let columns: Vec<ArrayRef> = cursor.columns().to_vec();
        self.converter
            .convert_columns(&columns)
            .map_err(|e| JobError::arrow("comparing delta cursor values", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, TimeUnit};

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

    #[test]
    fn rows_sharing_the_watermark_timestamp_are_split_by_key() {
        let cursor = vec!["ts".to_string(), "id".to_string()];
        let first = batch(&[Some(10), Some(20), Some(20)], &[1, 2, 3]);
        let mut run1 = DeltaFilter::new(&first.schema(), &cursor, None).unwrap();
        assert_eq!(ids(&run1.apply(&first).unwrap()), vec![1, 2, 3]);
        let mark = run1.highest().unwrap().unwrap();
        // Second run: the same rows again, plus id 4 at the same timestamp and id 0 at a later one.
        let second = batch(
            &[Some(10), Some(20), Some(20), Some(20), Some(30)],
            &[1, 2, 3, 4, 0],
        );
        let mut run2 = DeltaFilter::new(&second.schema(), &cursor, Some(&mark)).unwrap();
        assert_eq!(ids(&run2.apply(&second).unwrap()), vec![4, 0]);
        assert_eq!(run2.highest().unwrap().unwrap().values["id"], "0");
    }

    #[test]
    fn watermark_keeps_microsecond_precision() {
        let cursor = vec!["ts".to_string(), "id".to_string()];
        let b = batch(&[Some(1_700_000_000_123_456)], &[7]);
        let mut f = DeltaFilter::new(&b.schema(), &cursor, None).unwrap();
        f.apply(&b).unwrap();
        let mark = f.highest().unwrap().unwrap();
        assert_eq!(mark.values["ts"], "2023-11-14T22:13:20.123456");
        let again = DeltaFilter::new(&b.schema(), &cursor, Some(&mark)).unwrap();
        let next = batch(
            &[Some(1_700_000_000_123_456), Some(1_700_000_000_123_457)],
            &[7, 7],
        );
        let mut again = again;
        assert_eq!(again.apply(&next).unwrap().num_rows(), 1);
    }

    #[test]
    fn null_cursor_values_are_counted_not_written() {
        let cursor = vec!["ts".to_string(), "id".to_string()];
        let b = batch(&[None, Some(5)], &[1, 2]);
        let mut f = DeltaFilter::new(&b.schema(), &cursor, None).unwrap();
        let out = f.apply(&b).unwrap();
        assert_eq!(out.num_rows(), 1);
        assert_eq!(out.column(0).null_count(), 0);
        assert_eq!(f.null_cursor_rows(), 1);
        let mut tracking = DeltaFilter::tracking(&b.schema(), &cursor).unwrap();
        assert_eq!(tracking.apply(&b).unwrap().num_rows(), 2);
        assert_eq!(tracking.highest().unwrap().unwrap().values["id"], "2");
    }
}
