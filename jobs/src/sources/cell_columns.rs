//! Typed columns built from text cells (CSV, Excel): each cell is parsed into its column's type
//! as its row arrives, instead of buffering a batch as text and casting it afterwards. A batch is
//! then never held twice (text, then typed), and a cell that does not fit is known at its row,
//! before anything of that row is appended.
//!
//! The parsing is arrow's own cast from text, cell by cell (the same `Parser` functions, the same
//! exact decimals as `typing::cast_text`): a property test holds the two to the same answers.

use std::sync::Arc;

use arrow::array::timezone::Tz;
use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Float64Builder, Int32Builder,
    Int64Builder, StringArray, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::compute::kernels::cast_utils::{Parser, string_to_datetime};
use arrow::datatypes::{
    ArrowTimestampType, DataType, Date32Type, Float64Type, Int32Type, Int64Type, SchemaRef,
    TimeUnit, TimestampMicrosecondType,
};
use arrow::error::ArrowError;

use crate::typing::{cast_text, decimal_from_text};

/// One batch's columns, filled a row at a time.
pub(crate) struct CellColumns {
    columns: Vec<CellColumn>,
    /// The current row's parsed cells (kept between rows for its allocation).
    parsed: Vec<Option<Parsed>>,
    rows: usize,
}

enum CellColumn {
    Text(StringBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Date32(Date32Builder),
    Boolean(BooleanBuilder),
    Decimal {
        builder: Decimal128Builder,
        precision: u8,
        scale: i8,
    },
    Timestamp {
        builder: TimestampMicrosecondBuilder,
        /// The zone a text without an offset is read in (UTC when the column has none).
        zone: Tz,
    },
    /// A type no reader infers or a spec declares (a previous run's schema may hold one): kept
    /// as text, each cell checked by a cast of its own, the column cast when the batch is done.
    Other {
        texts: StringBuilder,
        data_type: DataType,
    },
}

/// A cell's value, parsed, before its row is known to fit.
#[derive(Clone, Copy)]
enum Parsed {
    Text,
    I32(i32),
    I64(i64),
    F64(f64),
    I128(i128),
    Bool(bool),
}

impl CellColumns {
    /// Columns for `schema`; an error when a column's type cannot be read from text at all.
    pub fn try_new(schema: &SchemaRef) -> Result<Self, ArrowError> {
        let columns = schema
            .fields()
            .iter()
            .map(|field| CellColumn::try_new(field.data_type()))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            columns,
            parsed: Vec::with_capacity(schema.fields().len()),
            rows: 0,
        })
    }

    /// Rows appended since the last [`Self::finish`].
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Appends a row of cells (`None` = null, one per column), or leaves it out and names the
    /// first column whose cell does not parse as its type: `Err(column)`.
    pub fn push_row(&mut self, cells: &[Option<&str>]) -> Result<(), usize> {
        self.parsed.clear();
        for (i, (column, cell)) in self.columns.iter().zip(cells).enumerate() {
            let parsed = match cell {
                Some(text) => Some(column.parse(text).ok_or(i)?),
                None => None,
            };
            self.parsed.push(parsed);
        }
        for ((column, parsed), cell) in self.columns.iter_mut().zip(&self.parsed).zip(cells) {
            column.append(*parsed, *cell);
        }
        self.rows += 1;
        Ok(())
    }

    /// The columns of the rows appended so far; the builders start over.
    pub fn finish(&mut self) -> Result<Vec<ArrayRef>, ArrowError> {
        self.rows = 0;
        self.columns.iter_mut().map(CellColumn::finish).collect()
    }
}

impl CellColumn {
    fn try_new(data_type: &DataType) -> Result<Self, ArrowError> {
        Ok(match data_type {
            DataType::Utf8 => Self::Text(StringBuilder::new()),
            DataType::Int32 => Self::Int32(Int32Builder::new()),
            DataType::Int64 => Self::Int64(Int64Builder::new()),
            DataType::Float64 => Self::Float64(Float64Builder::new()),
            DataType::Date32 => Self::Date32(Date32Builder::new()),
            DataType::Boolean => Self::Boolean(BooleanBuilder::new()),
            DataType::Decimal128(precision, scale) => Self::Decimal {
                builder: Decimal128Builder::new().with_precision_and_scale(*precision, *scale)?,
                precision: *precision,
                scale: *scale,
            },
            DataType::Timestamp(TimeUnit::Microsecond, zone) => Self::Timestamp {
                builder: TimestampMicrosecondBuilder::new().with_timezone_opt(zone.clone()),
                zone: zone.as_deref().unwrap_or("+00:00").parse()?,
            },
            other => {
                // Fails now, not at the first row, when text has no cast to this type.
                cast_text(&StringArray::from(Vec::<&str>::new()), other)?;
                Self::Other {
                    texts: StringBuilder::new(),
                    data_type: other.clone(),
                }
            }
        })
    }

    /// `text` as this column's type, exactly as arrow's cast from text reads it.
    fn parse(&self, text: &str) -> Option<Parsed> {
        match self {
            Self::Text(_) => Some(Parsed::Text),
            Self::Int32(_) => Int32Type::parse(text).map(Parsed::I32),
            Self::Int64(_) => Int64Type::parse(text).map(Parsed::I64),
            Self::Float64(_) => Float64Type::parse(text).map(Parsed::F64),
            Self::Date32(_) => Date32Type::parse(text).map(Parsed::I32),
            Self::Boolean(_) => text_to_bool(text).map(Parsed::Bool),
            Self::Decimal {
                precision, scale, ..
            } => decimal_from_text(text, *precision, *scale).map(Parsed::I128),
            Self::Timestamp { zone, .. } => {
                let instant = string_to_datetime(zone, text).ok()?.naive_utc();
                TimestampMicrosecondType::from_naive_datetime(instant, None).map(Parsed::I64)
            }
            Self::Other { data_type, .. } => {
                let typed = cast_text(&StringArray::from(vec![text]), data_type).ok()?;
                (typed.null_count() == 0).then_some(Parsed::Text)
            }
        }
    }

    /// Appends a cell `parse` accepted (`text` for the columns that keep it), or a null.
    fn append(&mut self, parsed: Option<Parsed>, text: Option<&str>) {
        match (self, parsed) {
            (Self::Text(b) | Self::Other { texts: b, .. }, _) => b.append_option(text),
            (Self::Int32(b), Some(Parsed::I32(v))) => b.append_value(v),
            (Self::Date32(b), Some(Parsed::I32(v))) => b.append_value(v),
            (Self::Int64(b), Some(Parsed::I64(v))) => b.append_value(v),
            (Self::Timestamp { builder, .. }, Some(Parsed::I64(v))) => builder.append_value(v),
            (Self::Float64(b), Some(Parsed::F64(v))) => b.append_value(v),
            (Self::Decimal { builder, .. }, Some(Parsed::I128(v))) => builder.append_value(v),
            (Self::Boolean(b), Some(Parsed::Bool(v))) => b.append_value(v),
            (column, _) => column.append_null(),
        }
    }

    fn append_null(&mut self) {
        match self {
            Self::Text(b) | Self::Other { texts: b, .. } => b.append_null(),
            Self::Int32(b) => b.append_null(),
            Self::Date32(b) => b.append_null(),
            Self::Int64(b) => b.append_null(),
            Self::Timestamp { builder, .. } => builder.append_null(),
            Self::Float64(b) => b.append_null(),
            Self::Decimal { builder, .. } => builder.append_null(),
            Self::Boolean(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> Result<ArrayRef, ArrowError> {
        Ok(match self {
            Self::Text(b) => Arc::new(b.finish()),
            Self::Int32(b) => Arc::new(b.finish()),
            Self::Date32(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::Timestamp { builder, .. } => Arc::new(builder.finish()),
            Self::Float64(b) => Arc::new(b.finish()),
            Self::Decimal { builder, .. } => Arc::new(builder.finish()),
            Self::Boolean(b) => Arc::new(b.finish()),
            Self::Other { texts, data_type } => cast_text(&texts.finish(), data_type)?,
        })
    }
}

/// Text to a boolean as arrow's cast reads it: any case, surrounding spaces ignored.
fn text_to_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().trim() {
        "t" | "tr" | "tru" | "true" | "y" | "ye" | "yes" | "on" | "1" => Some(true),
        "f" | "fa" | "fal" | "fals" | "false" | "n" | "no" | "of" | "off" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, RecordBatch};
    use arrow::datatypes::{Field, Schema};
    use proptest::prelude::*;

    use crate::typing::timestamp_type;

    /// Every type a spec can declare or a sample infer, and one neither does.
    fn types() -> Vec<DataType> {
        vec![
            DataType::Utf8,
            DataType::Int32,
            DataType::Int64,
            DataType::Float64,
            DataType::Date32,
            DataType::Boolean,
            DataType::Decimal128(5, 2),
            DataType::Decimal128(38, 10),
            timestamp_type(false),
            timestamp_type(true),
            DataType::Int16,
        ]
    }

    /// The cells as `CellColumns` reads them row by row, and as `cast_text` reads the column.
    fn both_ways(data_type: &DataType, cells: &[Option<&str>]) {
        let schema = Arc::new(Schema::new(vec![Field::new("c", data_type.clone(), true)]));
        let mut columns = CellColumns::try_new(&schema).unwrap();
        let mut kept = Vec::new();
        for cell in cells {
            let fits = columns.push_row(&[*cell]).is_ok();
            let texts = StringArray::from(vec![*cell]);
            let cast = cast_text(&texts, data_type).unwrap();
            assert_eq!(
                fits,
                cast.null_count() == texts.null_count(),
                "{data_type}: {cell:?} fits one way and not the other"
            );
            if fits {
                kept.push(*cell);
            }
        }
        assert_eq!(columns.rows(), kept.len());
        let ours = columns.finish().unwrap().remove(0);
        let arrows = cast_text(&StringArray::from(kept), data_type).unwrap();
        assert_eq!(ours.data_type(), data_type);
        assert_eq!(&ours, &arrows, "{data_type}");
        let batch = RecordBatch::try_new(schema, vec![ours]);
        assert!(batch.is_ok(), "{data_type}: {batch:?}");
    }

    #[test]
    fn cells_read_as_arrows_cast_reads_them() {
        let cells = [
            Some("1"),
            Some("-20"),
            Some(" 7 "),
            Some("+3"),
            Some("2147483648"),
            Some("9223372036854775808"),
            Some("1.5"),
            Some("-0.25"),
            Some("1e3"),
            Some("NaN"),
            Some("inf"),
            Some(".5"),
            Some("123.456"),
            Some("true"),
            Some(" Yes"),
            Some("off"),
            Some("2024-01-31"),
            Some("2024-02-30"),
            Some("2024-01-31 10:00:00"),
            Some("2024-01-31T10:00:00.123456Z"),
            Some("2024-01-31T10:00:00+02:00"),
            Some("x"),
            Some(""),
            None,
        ];
        for data_type in types() {
            both_ways(&data_type, &cells);
        }
    }

    #[test]
    fn a_row_with_a_misfit_appends_nothing_and_names_its_first_bad_column() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new("d", DataType::Date32, true),
        ]));
        let mut columns = CellColumns::try_new(&schema).unwrap();
        columns.push_row(&[Some("a"), Some("1"), None]).unwrap();
        assert_eq!(
            columns.push_row(&[Some("b"), Some("x"), Some("nope")]),
            Err(1)
        );
        assert_eq!(
            columns.push_row(&[Some("c"), Some("2"), Some("nope")]),
            Err(2)
        );
        columns
            .push_row(&[None, Some("3"), Some("2024-01-31")])
            .unwrap();
        let batch = RecordBatch::try_new(schema, columns.finish().unwrap()).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(columns.rows(), 0, "the builders start over");
        let names = batch.column(0).as_any().downcast_ref::<StringArray>();
        assert_eq!(names.unwrap().value(0), "a");
        assert!(batch.column(0).is_null(1) && batch.column(2).is_null(0));
    }

    #[test]
    fn a_type_text_cannot_become_is_refused_up_front() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "c",
            DataType::Struct(vec![Field::new("x", DataType::Int64, true)].into()),
            true,
        )]));
        assert!(CellColumns::try_new(&schema).is_err());
    }

    /// Text near every type's edge: digits, signs, points, exponents, dates, times, offsets,
    /// words and spaces.
    fn near_values() -> impl Strategy<Value = String> {
        prop_oneof![
            "[-+ ]?[0-9]{0,22}(\\.[0-9]{0,14})?([eE][-+]?[0-9]{1,3})? ?",
            "[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}",
            "[0-9]{4}-[01][0-9]-[0-3][0-9][T ][0-2][0-9]:[0-5][0-9](:[0-6][0-9](\\.[0-9]{1,9})?)?(Z|[-+][01][0-9](:?[0-5][0-9])?)?",
            " ?(?i:t|true|yes|y|on|off|no|n|f|false|nan|inf|-inf|infinity) ?",
            "\\PC{0,12}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(256, 1)))]

        #[test]
        fn any_text_reads_as_arrows_cast_reads_it(cells in prop::collection::vec(prop::option::of(near_values()), 1..24)) {
            let cells: Vec<Option<&str>> = cells.iter().map(Option::as_deref).collect();
            for data_type in types() {
                both_ways(&data_type, &cells);
            }
        }
    }
}
