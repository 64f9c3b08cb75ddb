//! SQL Server → Arrow type mapping, in one table, and the decoding of TDS values into Arrow.
//!
//! | SQL Server | Arrow | notes |
//! |---|---|---|
//! | `bit` | Boolean | |
//! | `tinyint`, `smallint`, `int`, `bigint` | UInt8, Int16, Int32, Int64 | `tinyint` is unsigned in SQL Server |
//! | `real`, `float` | Float32, Float64 | |
//! | `decimal(p,s)`, `numeric(p,s)` | Decimal128(p,s) | exact; a value that does not fit fails the run |
//! | `money`, `smallmoney` | Decimal128(19,4), Decimal128(10,4) | |
//! | `char`, `varchar`, `nchar`, `nvarchar`, `text`, `ntext`, `xml` | Utf8 | `char(n)` keeps its padding |
//! | `binary`, `varbinary`, `image`, `rowversion` | Binary | |
//! | `uniqueidentifier` | Utf8 | canonical text |
//! | `date` | Date32 | |
//! | `datetime`, `smalldatetime`, `datetime2(n)` | Timestamp(µs) | `datetime2(7)`'s 100 ns digit is truncated to µs |
//! | `datetimeoffset(n)` | Timestamp(µs, UTC) | the instant, in UTC |
//! | `time(n)` | Time64(µs) | |
//! | anything else (`sql_variant`, `hierarchyid`, spatial) | Utf8 | selected as `CONVERT(nvarchar(max), col)` |

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder, UInt8Builder,
};
use arrow::datatypes::{DataType, TimeUnit};
use tiberius::ColumnData;

/// A column as `INFORMATION_SCHEMA.COLUMNS` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlColumn {
    pub name: String,
    /// `DATA_TYPE`, lowercase.
    pub data_type: String,
    pub precision: Option<u8>,
    pub scale: Option<i8>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ColumnPlan {
    pub name: String,
    pub select: String,
    pub data_type: DataType,
}

pub fn quote_ident(name: &str) -> String {
    format!("[{}]", name.replace(']', "]]"))
}

pub fn plan_column(column: &SqlColumn) -> ColumnPlan {
    let ident = quote_ident(&column.name);
    let plan = |data_type: DataType| ColumnPlan {
        name: column.name.clone(),
        select: ident.clone(),
        data_type,
    };
    match column.data_type.as_str() {
        "bit" => plan(DataType::Boolean),
        "tinyint" => plan(DataType::UInt8),
        "smallint" => plan(DataType::Int16),
        "int" => plan(DataType::Int32),
        "bigint" => plan(DataType::Int64),
        "real" => plan(DataType::Float32),
        "float" => plan(DataType::Float64),
        "decimal" | "numeric" => plan(DataType::Decimal128(
            column.precision.unwrap_or(18).min(38),
            column.scale.unwrap_or(0),
        )),
        "money" => plan(DataType::Decimal128(19, 4)),
        "smallmoney" => plan(DataType::Decimal128(10, 4)),
        "char" | "varchar" | "nchar" | "nvarchar" | "text" | "ntext" | "xml"
        | "uniqueidentifier" => plan(DataType::Utf8),
        "binary" | "varbinary" | "image" | "timestamp" | "rowversion" => plan(DataType::Binary),
        "date" => plan(DataType::Date32),
        "datetime" | "smalldatetime" | "datetime2" => {
            plan(DataType::Timestamp(TimeUnit::Microsecond, None))
        }
        "datetimeoffset" => plan(DataType::Timestamp(
            TimeUnit::Microsecond,
            Some(Arc::from(crate::typing::UTC)),
        )),
        "time" => plan(DataType::Time64(TimeUnit::Microsecond)),
        _ => ColumnPlan {
            select: format!("CONVERT(nvarchar(max), {ident})"),
            ..plan(DataType::Utf8)
        },
    }
}

/// Days from 0001-01-01 (TDS `date`) and from 1900-01-01 (TDS `datetime`) to 1970-01-01.
const DAYS_0001_TO_1970: i64 = 719_162;
const DAYS_1900_TO_1970: i64 = 25_567;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Builds one Arrow column from TDS values.
pub enum Builder {
    Bool(BooleanBuilder),
    U8(UInt8Builder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Decimal(Decimal128Builder, u8, i8),
    Text(StringBuilder),
    Binary(BinaryBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder, Option<Arc<str>>),
    Time(Time64MicrosecondBuilder),
}

impl Builder {
    pub fn for_type(data_type: &DataType) -> Self {
        match data_type {
            DataType::Boolean => Builder::Bool(BooleanBuilder::new()),
            DataType::UInt8 => Builder::U8(UInt8Builder::new()),
            DataType::Int16 => Builder::I16(Int16Builder::new()),
            DataType::Int32 => Builder::I32(Int32Builder::new()),
            DataType::Int64 => Builder::I64(Int64Builder::new()),
            DataType::Float32 => Builder::F32(Float32Builder::new()),
            DataType::Float64 => Builder::F64(Float64Builder::new()),
            DataType::Decimal128(p, s) => Builder::Decimal(
                Decimal128Builder::new()
                    .with_precision_and_scale(*p, *s)
                    .expect("valid decimal"),
                *p,
                *s,
            ),
            DataType::Binary => Builder::Binary(BinaryBuilder::new()),
            DataType::Date32 => Builder::Date(Date32Builder::new()),
            DataType::Timestamp(_, zone) => {
                Builder::Timestamp(TimestampMicrosecondBuilder::new(), zone.clone())
            }
            DataType::Time64(_) => Builder::Time(Time64MicrosecondBuilder::new()),
            _ => Builder::Text(StringBuilder::new()),
        }
    }

    /// Appends one value; the error says what did not fit.
    pub fn append(&mut self, value: &ColumnData<'_>) -> Result<(), String> {
        use ColumnData as V;
        match (self, value) {
            (Builder::Bool(b), V::Bit(v)) => b.append_option(*v),
            (Builder::U8(b), V::U8(v)) => b.append_option(*v),
            (Builder::I16(b), V::I16(v)) => b.append_option(*v),
            (Builder::I32(b), V::I32(v)) => b.append_option(*v),
            (Builder::I64(b), V::I64(v)) => b.append_option(*v),
            (Builder::F32(b), V::F32(v)) => b.append_option(*v),
            (Builder::F64(b), V::F64(v)) => b.append_option(*v),
            (Builder::Decimal(b, precision, scale), V::Numeric(v)) => match v {
                None => b.append_null(),
                Some(n) => b.append_value(rescale(n.value(), n.scale() as i8, *precision, *scale)?),
            },
            // money arrives as a 4-decimal numeric, or as float on old servers.
            (Builder::Decimal(b, precision, scale), V::F64(v)) => match v {
                None => b.append_null(),
                Some(_) => {
                    return Err(format!(
                        "float value for decimal({precision},{scale}) would lose precision"
                    ));
                }
            },
            (Builder::Text(b), V::String(v)) => b.append_option(v.as_deref()),
            (Builder::Text(b), V::Guid(v)) => b.append_option(v.map(|g| g.to_string())),
            (Builder::Text(b), V::Xml(v)) => b.append_option(v.as_ref().map(|x| x.to_string())),
            (Builder::Binary(b), V::Binary(v)) => b.append_option(v.as_deref()),
            (Builder::Date(b), V::Date(v)) => {
                b.append_option(v.map(|d| (d.days() as i64 - DAYS_0001_TO_1970) as i32))
            }
            (Builder::Timestamp(b, _), V::DateTime(v)) => b.append_option(v.map(|t| {
                // 1/300 s ticks since midnight.
                (t.days() as i64 - DAYS_1900_TO_1970) * MICROS_PER_DAY
                    + t.seconds_fragments() as i64 * 10_000 / 3
            })),
            (Builder::Timestamp(b, _), V::SmallDateTime(v)) => b.append_option(v.map(|t| {
                (t.days() as i64 - DAYS_1900_TO_1970) * MICROS_PER_DAY
                    + t.seconds_fragments() as i64 * 60_000_000
            })),
            (Builder::Timestamp(b, _), V::DateTime2(v)) => b.append_option(v.map(datetime2_micros)),
            // The value holds the UTC instant and, beside it, the offset it was written with.
            (Builder::Timestamp(b, _), V::DateTimeOffset(v)) => {
                b.append_option(v.map(|t| datetime2_micros(t.datetime2())))
            }
            (Builder::Time(b), V::Time(v)) => b.append_option(v.map(time_micros)),
            (builder, value) => {
                return Err(format!(
                    "unexpected value {value:?} for a {} column",
                    builder.describe()
                ));
            }
        }
        Ok(())
    }

    pub fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::U8(b) => Arc::new(b.finish()),
            Builder::I16(b) => Arc::new(b.finish()),
            Builder::I32(b) => Arc::new(b.finish()),
            Builder::I64(b) => Arc::new(b.finish()),
            Builder::F32(b) => Arc::new(b.finish()),
            Builder::F64(b) => Arc::new(b.finish()),
            Builder::Decimal(b, _, _) => Arc::new(b.finish()),
            Builder::Text(b) => Arc::new(b.finish()),
            Builder::Binary(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
            Builder::Timestamp(b, zone) => Arc::new(b.finish().with_timezone_opt(zone.clone())),
            Builder::Time(b) => Arc::new(b.finish()),
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Builder::Bool(_) => "bit",
            Builder::U8(_) | Builder::I16(_) | Builder::I32(_) | Builder::I64(_) => "integer",
            Builder::F32(_) | Builder::F64(_) => "float",
            Builder::Decimal(..) => "decimal",
            Builder::Text(_) => "text",
            Builder::Binary(_) => "binary",
            Builder::Date(_) => "date",
            Builder::Timestamp(..) => "timestamp",
            Builder::Time(_) => "time",
        }
    }
}

fn time_micros(time: tiberius::time::Time) -> i64 {
    let increments = time.increments() as i64;
    match time.scale() {
        s if s <= 6 => increments * 10i64.pow(6 - s as u32),
        s => increments / 10i64.pow(s as u32 - 6),
    }
}

fn datetime2_micros(value: tiberius::time::DateTime2) -> i64 {
    (value.date().days() as i64 - DAYS_0001_TO_1970) * MICROS_PER_DAY + time_micros(value.time())
}

/// `value` at `from_scale` as an unscaled integer at `to_scale`: exact, or an error.
fn rescale(value: i128, from_scale: i8, precision: u8, to_scale: i8) -> Result<i128, String> {
    let overflow = || format!("value does not fit decimal({precision},{to_scale})");
    let scaled = if to_scale >= from_scale {
        value
            .checked_mul(10i128.pow((to_scale - from_scale) as u32))
            .ok_or_else(overflow)?
    } else {
        let divisor = 10i128.pow((from_scale - to_scale) as u32);
        if value % divisor != 0 {
            return Err(format!("value has more than {to_scale} decimal places"));
        }
        value / divisor
    };
    if scaled.unsigned_abs() >= 10u128.pow(precision as u32) {
        return Err(overflow());
    }
    Ok(scaled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{
        Date32Type, Decimal128Type, Time64MicrosecondType, TimestampMicrosecondType,
    };
    use tiberius::numeric::Numeric;
    use tiberius::time::{Date, DateTime, DateTime2, DateTimeOffset, Time};

    fn column(data_type: &str, precision: Option<u8>, scale: Option<i8>) -> SqlColumn {
        SqlColumn {
            name: "c".into(),
            data_type: data_type.into(),
            precision,
            scale,
        }
    }

    #[test]
    fn the_mapping_table_holds() {
        let t = |dt: &str| plan_column(&column(dt, None, None)).data_type;
        assert_eq!(t("tinyint"), DataType::UInt8);
        assert_eq!(t("bigint"), DataType::Int64);
        assert_eq!(t("money"), DataType::Decimal128(19, 4));
        assert_eq!(t("nvarchar"), DataType::Utf8);
        assert_eq!(t("uniqueidentifier"), DataType::Utf8);
        assert_eq!(t("varbinary"), DataType::Binary);
        assert_eq!(
            t("datetime2"),
            DataType::Timestamp(TimeUnit::Microsecond, None)
        );
        assert_eq!(
            t("datetimeoffset"),
            DataType::Timestamp(TimeUnit::Microsecond, Some(crate::typing::UTC.into()))
        );
        assert_eq!(t("time"), DataType::Time64(TimeUnit::Microsecond));
        assert_eq!(
            plan_column(&column("decimal", Some(12), Some(2))).data_type,
            DataType::Decimal128(12, 2)
        );
        assert_eq!(
            plan_column(&column("sql_variant", None, None)).select,
            "CONVERT(nvarchar(max), [c])"
        );
        assert_eq!(quote_ident("we]ird"), "[we]]ird]");
    }

    #[test]
    fn decimals_rescale_exactly_or_fail() {
        let mut b = Builder::for_type(&DataType::Decimal128(12, 2));
        b.append(&ColumnData::Numeric(Some(Numeric::new_with_scale(
            1234567, 2,
        ))))
        .unwrap();
        b.append(&ColumnData::Numeric(Some(Numeric::new_with_scale(15, 1))))
            .unwrap();
        b.append(&ColumnData::Numeric(None)).unwrap();
        assert!(
            b.append(&ColumnData::Numeric(Some(Numeric::new_with_scale(1234, 3))))
                .unwrap_err()
                .contains("decimal places")
        );
        let mut small = Builder::for_type(&DataType::Decimal128(3, 0));
        assert!(
            small
                .append(&ColumnData::Numeric(Some(Numeric::new_with_scale(1000, 0))))
                .unwrap_err()
                .contains("does not fit")
        );
        let array = b.finish();
        let decimals = array.as_primitive::<Decimal128Type>();
        assert_eq!(
            (decimals.value(0), decimals.value(1), decimals.is_null(2)),
            (1234567, 150, true)
        );
    }

    #[test]
    fn dates_and_times_land_on_the_unix_epoch() {
        // 2026-02-28 is day 739,674 after 0001-01-01 and day 46,079 after 1900-01-01.
        let mut date = Builder::for_type(&DataType::Date32);
        date.append(&ColumnData::Date(Some(Date::new(739_674))))
            .unwrap();
        assert_eq!(date.finish().as_primitive::<Date32Type>().value(0), 20_512);

        let mut ts = Builder::for_type(&DataType::Timestamp(TimeUnit::Microsecond, None));
        // datetime: 13:14:15 = 47,655 s = 14,296,500 ticks of 1/300 s.
        ts.append(&ColumnData::DateTime(Some(DateTime::new(
            46_079, 14_296_500,
        ))))
        .unwrap();
        // datetime2(7): 13:14:15.1234567 in 100 ns increments.
        let time = Time::new(476_551_234_567, 7);
        ts.append(&ColumnData::DateTime2(Some(DateTime2::new(
            Date::new(739_674),
            time,
        ))))
        .unwrap();
        let values = ts.finish();
        let values = values.as_primitive::<TimestampMicrosecondType>();
        let midnight = 20_512i64 * MICROS_PER_DAY;
        assert_eq!(values.value(0), midnight + 47_655_000_000);
        assert_eq!(values.value(1), midnight + 47_655_123_456);

        let mut offset = Builder::for_type(&DataType::Timestamp(
            TimeUnit::Microsecond,
            Some(crate::typing::UTC.into()),
        ));
        offset
            .append(&ColumnData::DateTimeOffset(Some(DateTimeOffset::new(
                DateTime2::new(Date::new(739_674), Time::new(0, 0)),
                120,
            ))))
            .unwrap();
        assert_eq!(
            offset
                .finish()
                .as_primitive::<TimestampMicrosecondType>()
                .value(0),
            midnight
        );

        let mut t = Builder::for_type(&DataType::Time64(TimeUnit::Microsecond));
        t.append(&ColumnData::Time(Some(Time::new(1_500, 3))))
            .unwrap();
        assert_eq!(
            t.finish().as_primitive::<Time64MicrosecondType>().value(0),
            1_500_000
        );
    }

    #[test]
    fn text_guids_and_mismatches() {
        let mut text = Builder::for_type(&DataType::Utf8);
        text.append(&ColumnData::String(Some("ñandú".into())))
            .unwrap();
        let guid = tiberius::Uuid::parse_str("12345678-9abc-def0-1234-56789abcdef0").unwrap();
        text.append(&ColumnData::Guid(Some(guid))).unwrap();
        let array = text.finish();
        let strings = array.as_string::<i32>();
        assert_eq!(
            (strings.value(0), strings.value(1)),
            ("ñandú", "12345678-9abc-def0-1234-56789abcdef0")
        );
        let mut int = Builder::for_type(&DataType::Int32);
        assert!(
            int.append(&ColumnData::String(Some("x".into())))
                .unwrap_err()
                .contains("integer")
        );
    }
}
