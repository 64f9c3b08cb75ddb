//! Which columns of a part are written without a dictionary.
//!
//! Parquet writers dictionary-encode every column and fall back to plain pages only when a row
//! group's dictionary passes its size limit (1 MiB). For a column whose values are nearly all
//! distinct (amounts, ids, free text) that is wasted work: every value is hashed and interned,
//! and then either the whole row group is written as indexes into a dictionary as large as the
//! data (8-byte numbers: 131,072 fit under the limit, more than a row group of 122,880 rows
//! holds), or the dictionary is dropped once full and the pages are written again plain. The
//! part's first batch decides: a column whose first rows are nearly all distinct is written
//! plain from the start (zstd still compresses it); the others keep their dictionary.

use std::collections::HashSet;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::datatypes::DataType;
use arrow::row::{RowConverter, SortField};
use parquet::schema::types::ColumnPath;

/// Rows of the first batch looked at, per column.
const SAMPLE_ROWS: usize = 8192;

/// Fewer non-null values than this say too little: the column keeps its dictionary.
const MIN_VALUES: usize = 1024;

/// Distinct values per non-null value above which a dictionary cannot pay: with a row group 15
/// times the sample, such a column has about as many distinct values as rows in each group.
const MOSTLY_DISTINCT: f64 = 0.9;

/// The top-level columns of `batch` whose sampled values are mostly distinct.
pub(crate) fn columns_without_dictionary(batch: &RecordBatch) -> Vec<ColumnPath> {
    let schema = batch.schema();
    schema
        .fields()
        .iter()
        .zip(batch.columns())
        .filter(|(field, column)| {
            dictionary_may_be_chosen(field.data_type())
                && mostly_distinct(&column.slice(0, column.len().min(SAMPLE_ROWS)))
        })
        .map(|(field, _)| ColumnPath::from(field.name().as_str()))
        .collect()
}

/// Types whose Parquet column is one leaf that a dictionary can encode (not nested, not
/// booleans, which are never dictionary-encoded, not already dictionary arrays).
fn dictionary_may_be_chosen(data_type: &DataType) -> bool {
    !(data_type.is_nested()
        || matches!(
            data_type,
            DataType::Boolean | DataType::Null | DataType::Dictionary(_, _)
        ))
}

fn mostly_distinct(sample: &ArrayRef) -> bool {
    let values = sample.len() - sample.null_count();
    if values < MIN_VALUES {
        return false;
    }
    // Rows of one column compare as bytes: one set of slices counts distinct values of any type.
    let Ok(converter) = RowConverter::new(vec![SortField::new(sample.data_type().clone())]) else {
        return false;
    };
    let Ok(rows) = converter.convert_columns(std::slice::from_ref(sample)) else {
        return false;
    };
    let distinct: HashSet<&[u8]> = (0..sample.len())
        .filter(|&i| sample.is_valid(i))
        .map(|i| rows.row(i).data())
        .collect();
    distinct.len() as f64 > MOSTLY_DISTINCT * values as f64
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Date32Array, Decimal128Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    #[test]
    fn only_mostly_distinct_columns_lose_their_dictionary() {
        let rows = 10_000;
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("flag", DataType::Utf8, false),
            Field::new("comment", DataType::Utf8, true),
            Field::new("amount", DataType::Decimal128(15, 2), false),
            Field::new("day", DataType::Date32, false),
            Field::new("rare", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows)),
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| ["A", "N", "R"][i as usize % 3]),
                )),
                Arc::new(StringArray::from_iter(
                    (0..rows).map(|i| (i % 10 != 0).then(|| format!("comment {i}"))),
                )),
                Arc::new(
                    Decimal128Array::from_iter_values((0..rows).map(|i| i128::from(i) * 7919))
                        .with_precision_and_scale(15, 2)
                        .unwrap(),
                ),
                Arc::new(Date32Array::from_iter_values(
                    (0..rows).map(|i| 19_000 + (i % 2500) as i32),
                )),
                // Distinct, but too few values to judge.
                Arc::new(Int64Array::from_iter(
                    (0..rows).map(|i| (i % 20 == 0).then_some(i)),
                )),
            ],
        )
        .unwrap();
        let plain: Vec<String> = columns_without_dictionary(&batch)
            .iter()
            .map(|path| path.string())
            .collect();
        assert_eq!(plain, ["id", "comment", "amount"]);
    }

    #[test]
    fn small_batches_keep_every_dictionary() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..100))])
                .unwrap();
        assert!(columns_without_dictionary(&batch).is_empty());
    }
}
