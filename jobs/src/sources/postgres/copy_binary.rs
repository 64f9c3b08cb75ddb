//! Decoder for PostgreSQL's binary COPY format (`COPY ... TO STDOUT (FORMAT binary)`): the fastest
//! way out of PostgreSQL. Bytes arrive in arbitrary chunks; complete tuples go straight into Arrow
//! builders, so memory holds one batch of rows plus one partial tuple.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::SchemaRef;
use bytes::{Buf, BytesMut};

use super::types::{ColumnPlan, Decode};

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// Days from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

enum Column {
    Bool(BooleanBuilder),
    Int2(Int16Builder),
    Int4(Int32Builder),
    Int8(Int64Builder),
    Float4(Float32Builder),
    Float8(Float64Builder),
    Text(StringBuilder),
    Jsonb(StringBuilder),
    Uuid(StringBuilder),
    NumericText(StringBuilder),
    Bytea(BinaryBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder, Option<Arc<str>>),
    Time(Time64MicrosecondBuilder),
    Numeric(Decimal128Builder, u8, i8),
}

pub struct CopyDecoder {
    schema: SchemaRef,
    names: Vec<String>,
    columns: Vec<Column>,
    pending: BytesMut,
    header_done: bool,
    trailer_seen: bool,
    rows: usize,
    /// Rows decoded so far, for messages (1-based row numbers of the extraction).
    rows_total: u64,
}

impl CopyDecoder {
    pub fn new(schema: SchemaRef, plans: &[ColumnPlan]) -> Self {
        let columns = plans
            .iter()
            .map(|plan| match plan.decode {
                Decode::Bool => Column::Bool(BooleanBuilder::new()),
                Decode::Int2 => Column::Int2(Int16Builder::new()),
                Decode::Int4 => Column::Int4(Int32Builder::new()),
                Decode::Int8 => Column::Int8(Int64Builder::new()),
                Decode::Float4 => Column::Float4(Float32Builder::new()),
                Decode::Float8 => Column::Float8(Float64Builder::new()),
                Decode::Text => Column::Text(StringBuilder::new()),
                Decode::Jsonb => Column::Jsonb(StringBuilder::new()),
                Decode::Uuid => Column::Uuid(StringBuilder::new()),
                Decode::NumericText => Column::NumericText(StringBuilder::new()),
                Decode::Bytea => Column::Bytea(BinaryBuilder::new()),
                Decode::Date => Column::Date(Date32Builder::new()),
                Decode::Timestamp => Column::Timestamp(TimestampMicrosecondBuilder::new(), None),
                Decode::TimestampTz => Column::Timestamp(
                    TimestampMicrosecondBuilder::new(),
                    Some(Arc::from(crate::typing::UTC)),
                ),
                Decode::Time => Column::Time(Time64MicrosecondBuilder::new()),
                Decode::Numeric { precision, scale } => Column::Numeric(
                    Decimal128Builder::new()
                        .with_precision_and_scale(precision, scale)
                        .expect("valid decimal"),
                    precision,
                    scale,
                ),
            })
            .collect();
        Self {
            schema,
            names: plans.iter().map(|p| p.name.clone()).collect(),
            columns,
            pending: BytesMut::new(),
            header_done: false,
            trailer_seen: false,
            rows: 0,
            rows_total: 0,
        }
    }

    /// Rows decoded and not yet taken as a batch.
    pub fn buffered_rows(&self) -> usize {
        self.rows
    }

    /// Adds bytes and decodes every complete tuple in them.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        self.pending.extend_from_slice(chunk);
        if !self.header_done {
            if self.pending.len() < SIGNATURE.len() + 8 {
                return Ok(());
            }
            if &self.pending[..SIGNATURE.len()] != SIGNATURE {
                return Err("the server's COPY output is not in binary format".into());
            }
            let extension =
                u32::from_be_bytes(self.pending[15..19].try_into().expect("4 bytes")) as usize;
            if self.pending.len() < 19 + extension {
                return Ok(());
            }
            self.pending.advance(19 + extension);
            self.header_done = true;
        }
        while !self.trailer_seen {
            match tuple_length(&self.pending, self.columns.len())? {
                None => break,
                Some(Tuple::Trailer) => {
                    self.pending.advance(2);
                    self.trailer_seen = true;
                }
                Some(Tuple::Row(length)) => {
                    let tuple = self.pending.split_to(length).freeze();
                    self.decode_row(&tuple[2..])?;
                }
            }
        }
        Ok(())
    }

    /// Checks the stream ended where the format says it ends.
    pub fn finish(&self) -> Result<(), String> {
        if !self.trailer_seen || !self.pending.is_empty() {
            return Err("the COPY stream ended in the middle of a row".into());
        }
        Ok(())
    }

    /// Takes the decoded rows as a record batch.
    pub fn take_batch(&mut self) -> Result<RecordBatch, String> {
        let columns: Vec<ArrayRef> = self.columns.iter_mut().map(finish).collect();
        self.rows = 0;
        RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| e.to_string())
    }

    fn decode_row(&mut self, mut fields: &[u8]) -> Result<(), String> {
        self.rows_total += 1;
        for (i, column) in self.columns.iter_mut().enumerate() {
            let length = i32::from_be_bytes(fields[..4].try_into().expect("checked length"));
            fields = &fields[4..];
            let value = if length < 0 {
                None
            } else {
                let (value, rest) = fields.split_at(length as usize);
                fields = rest;
                Some(value)
            };
            append(column, value).map_err(|reason| {
                format!(
                    "row {}: column '{}': {reason}",
                    self.rows_total, self.names[i]
                )
            })?;
        }
        self.rows += 1;
        Ok(())
    }
}

enum Tuple {
    Row(usize),
    Trailer,
}

/// The byte length of the next complete tuple, if the buffer holds one.
fn tuple_length(buf: &[u8], columns: usize) -> Result<Option<Tuple>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fields = i16::from_be_bytes([buf[0], buf[1]]);
    if fields == -1 {
        return Ok(Some(Tuple::Trailer));
    }
    if fields as usize != columns {
        return Err(format!(
            "a COPY row has {fields} fields, expected {columns}"
        ));
    }
    let mut position = 2;
    for _ in 0..columns {
        let Some(bytes) = buf.get(position..position + 4) else {
            return Ok(None);
        };
        let length = i32::from_be_bytes(bytes.try_into().expect("4 bytes"));
        position += 4;
        if length > 0 {
            position += length as usize;
        }
        if position > buf.len() {
            return Ok(None);
        }
    }
    Ok(Some(Tuple::Row(position)))
}

fn fixed<const N: usize>(value: &[u8]) -> Result<[u8; N], String> {
    value
        .try_into()
        .map_err(|_| format!("expected {N} bytes, got {}", value.len()))
}

fn text(value: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(value)
        .map_err(|_| "text is not valid UTF-8 (set the database's client encoding to UTF8)".into())
}

fn append(column: &mut Column, value: Option<&[u8]>) -> Result<(), String> {
    let Some(v) = value else {
        append_null(column);
        return Ok(());
    };
    match column {
        Column::Bool(b) => b.append_value(fixed::<1>(v)?[0] != 0),
        Column::Int2(b) => b.append_value(i16::from_be_bytes(fixed(v)?)),
        Column::Int4(b) => b.append_value(i32::from_be_bytes(fixed(v)?)),
        Column::Int8(b) => b.append_value(i64::from_be_bytes(fixed(v)?)),
        Column::Float4(b) => b.append_value(f32::from_be_bytes(fixed(v)?)),
        Column::Float8(b) => b.append_value(f64::from_be_bytes(fixed(v)?)),
        Column::Text(b) => b.append_value(text(v)?),
        Column::Jsonb(b) => match v.split_first() {
            Some((1, json)) => b.append_value(text(json)?),
            _ => return Err("unknown jsonb binary version".into()),
        },
        Column::Uuid(b) => b.append_value(format_uuid(&fixed::<16>(v)?)),
        Column::NumericText(b) => b.append_value(numeric_text(v)?),
        Column::Bytea(b) => b.append_value(v),
        Column::Date(b) => {
            let days = i32::from_be_bytes(fixed(v)?);
            if days == i32::MAX || days == i32::MIN {
                return Err("date is ±infinity, which Arrow cannot represent".into());
            }
            b.append_value(days.checked_add(PG_EPOCH_DAYS).ok_or("date out of range")?);
        }
        Column::Timestamp(b, _) => {
            let micros = i64::from_be_bytes(fixed(v)?);
            if micros == i64::MAX || micros == i64::MIN {
                return Err("timestamp is ±infinity, which Arrow cannot represent".into());
            }
            b.append_value(
                micros
                    .checked_add(PG_EPOCH_MICROS)
                    .ok_or("timestamp out of range")?,
            );
        }
        Column::Time(b) => b.append_value(i64::from_be_bytes(fixed(v)?)),
        Column::Numeric(b, precision, scale) => {
            b.append_value(numeric_decimal(v, *precision, *scale)?)
        }
    }
    Ok(())
}

fn append_null(column: &mut Column) {
    match column {
        Column::Bool(b) => b.append_null(),
        Column::Int2(b) => b.append_null(),
        Column::Int4(b) => b.append_null(),
        Column::Int8(b) => b.append_null(),
        Column::Float4(b) => b.append_null(),
        Column::Float8(b) => b.append_null(),
        Column::Text(b) | Column::Jsonb(b) | Column::Uuid(b) | Column::NumericText(b) => {
            b.append_null()
        }
        Column::Bytea(b) => b.append_null(),
        Column::Date(b) => b.append_null(),
        Column::Timestamp(b, _) => b.append_null(),
        Column::Time(b) => b.append_null(),
        Column::Numeric(b, _, _) => b.append_null(),
    }
}

fn finish(column: &mut Column) -> ArrayRef {
    match column {
        Column::Bool(b) => Arc::new(b.finish()),
        Column::Int2(b) => Arc::new(b.finish()),
        Column::Int4(b) => Arc::new(b.finish()),
        Column::Int8(b) => Arc::new(b.finish()),
        Column::Float4(b) => Arc::new(b.finish()),
        Column::Float8(b) => Arc::new(b.finish()),
        Column::Text(b) | Column::Jsonb(b) | Column::Uuid(b) | Column::NumericText(b) => {
            Arc::new(b.finish())
        }
        Column::Bytea(b) => Arc::new(b.finish()),
        Column::Date(b) => Arc::new(b.finish()),
        Column::Timestamp(b, zone) => Arc::new(b.finish().with_timezone_opt(zone.clone())),
        Column::Time(b) => Arc::new(b.finish()),
        Column::Numeric(b, _, _) => Arc::new(b.finish()),
    }
}

fn format_uuid(b: &[u8; 16]) -> String {
    let hex = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The parts of a binary `numeric`: base-10000 digits with the weight of the first one.
struct Numeric<'a> {
    digits: &'a [u8],
    weight: i16,
    negative: bool,
    display_scale: u16,
}

fn parse_numeric(v: &[u8]) -> Result<Numeric<'_>, String> {
    if v.len() < 8 {
        return Err("numeric value is truncated".into());
    }
    let count = u16::from_be_bytes([v[0], v[1]]) as usize;
    let weight = i16::from_be_bytes([v[2], v[3]]);
    let sign = u16::from_be_bytes([v[4], v[5]]);
    let display_scale = u16::from_be_bytes([v[6], v[7]]);
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Err("numeric is NaN".into()),
        0xD000 | 0xF000 => return Err("numeric is ±Infinity".into()),
        other => return Err(format!("numeric has an unknown sign 0x{other:04x}")),
    }
    let digits = v
        .get(8..8 + 2 * count)
        .ok_or("numeric value is truncated")?;
    Ok(Numeric {
        digits,
        weight,
        negative: sign == 0x4000,
        display_scale,
    })
}

fn numeric_digit(n: &Numeric<'_>, i: usize) -> i128 {
    i16::from_be_bytes([n.digits[2 * i], n.digits[2 * i + 1]]) as i128
}

/// The unscaled value at `scale`, checked against `precision`: exact or an error, never rounded.
/// Digit by digit from the most significant, so a value of 38 digits never overflows on the
/// zero padding of its last base-10000 group.
fn numeric_decimal(v: &[u8], precision: u8, scale: i8) -> Result<i128, String> {
    let n = parse_numeric(v)?;
    let overflow = || format!("numeric value does not fit decimal({precision},{scale})");
    let count = n.digits.len() / 2;
    let scale = i32::from(scale);
    let mut unscaled: i128 = 0;
    for i in 0..count {
        let group = numeric_digit(&n, i);
        // Group i holds the digits of 10^(4*(weight-i)+3) down to 10^(4*(weight-i)).
        let top = 4 * (i32::from(n.weight) - i as i32) + 3;
        for (k, divisor) in [1000i128, 100, 10, 1].into_iter().enumerate() {
            let digit = (group / divisor) % 10;
            let exponent = top - k as i32;
            if exponent + scale >= 0 {
                unscaled = unscaled
                    .checked_mul(10)
                    .and_then(|u| u.checked_add(digit))
                    .ok_or_else(overflow)?;
            } else if digit != 0 {
                return Err(format!(
                    "numeric value has more than {scale} decimal places"
                ));
            }
        }
    }
    // Whole groups below the last digit read (value * 10^(weight - count + 1) * 10^scale).
    let lowest = 4 * (i32::from(n.weight) - count as i32 + 1);
    for _ in 0..(lowest + scale).max(0) {
        unscaled = unscaled.checked_mul(10).ok_or_else(overflow)?;
    }
    if unscaled >= 10i128.pow(u32::from(precision)) {
        return Err(overflow());
    }
    Ok(if n.negative { -unscaled } else { unscaled })
}

/// The exact decimal text of a `numeric`, with its display scale.
fn numeric_text(v: &[u8]) -> Result<String, String> {
    let n = match parse_numeric(v) {
        Ok(n) => n,
        Err(e) if e.contains("NaN") => return Ok("NaN".into()),
        Err(e) if e.contains("Infinity") => {
            let sign = u16::from_be_bytes([v[4], v[5]]);
            return Ok(if sign == 0xF000 {
                "-Infinity"
            } else {
                "Infinity"
            }
            .into());
        }
        Err(e) => return Err(e),
    };
    let count = n.digits.len() / 2;
    let mut integer = String::new();
    let mut fraction = String::new();
    // Digit i has weight (n.weight - i): non-negative weights are integer digits.
    let last_weight = (n.weight as i32).max(0);
    for w in (0..=last_weight).rev() {
        let i = n.weight as i32 - w;
        let d = if i >= 0 && (i as usize) < count {
            numeric_digit(&n, i as usize)
        } else {
            0
        };
        if integer.is_empty() {
            if d != 0 || w == 0 {
                integer = d.to_string();
            }
        } else {
            integer.push_str(&format!("{d:04}"));
        }
    }
    let fraction_groups = (n.display_scale as i32 + 3) / 4;
    for g in 1..=fraction_groups {
        let i = n.weight as i32 + g;
        let d = if i >= 0 && (i as usize) < count {
            numeric_digit(&n, i as usize)
        } else {
            0
        };
        fraction.push_str(&format!("{d:04}"));
    }
    fraction.truncate(n.display_scale as usize);
    let mut out = String::new();
    if n.negative {
        out.push('-');
    }
    out.push_str(&integer);
    if !fraction.is_empty() {
        out.push('.');
        out.push_str(&fraction);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Binary numeric from a decimal string, as PostgreSQL encodes it.
    fn numeric(text: &str) -> Vec<u8> {
        let negative = text.starts_with('-');
        let text = text.trim_start_matches('-');
        let (int, frac) = text.split_once('.').unwrap_or((text, ""));
        let dscale = frac.len() as u16;
        let int_pad = (4 - int.len() % 4) % 4;
        let int = format!("{}{int}", "0".repeat(int_pad));
        let frac = format!("{frac}{}", "0".repeat((4 - frac.len() % 4) % 4));
        let mut groups: Vec<i16> = int
            .as_bytes()
            .chunks(4)
            .chain(frac.as_bytes().chunks(4))
            .map(|c| std::str::from_utf8(c).unwrap().parse().unwrap())
            .collect();
        let mut weight = (int.len() / 4) as i16 - 1;
        while groups.first() == Some(&0) && groups.len() > 1 {
            groups.remove(0);
            weight -= 1;
        }
        while groups.last() == Some(&0) && groups.len() > 1 {
            groups.pop();
        }
        let mut out = Vec::new();
        out.extend((groups.len() as u16).to_be_bytes());
        out.extend(weight.to_be_bytes());
        out.extend((if negative { 0x4000u16 } else { 0 }).to_be_bytes());
        out.extend(dscale.to_be_bytes());
        for g in groups {
            out.extend(g.to_be_bytes());
        }
        out
    }

    #[test]
    fn numerics_decode_exactly_or_fail() {
        assert_eq!(numeric_decimal(&numeric("12345.67"), 12, 2), Ok(1234567));
        assert_eq!(numeric_decimal(&numeric("-0.05"), 5, 2), Ok(-5));
        assert_eq!(
            numeric_decimal(&numeric("100000000"), 12, 2),
            Ok(10_000_000_000)
        );
        assert!(
            numeric_decimal(&numeric("12345.67"), 5, 2)
                .unwrap_err()
                .contains("does not fit")
        );
        assert!(
            numeric_decimal(&numeric("1.234"), 10, 2)
                .unwrap_err()
                .contains("decimal places")
        );
        assert_eq!(
            numeric_text(&numeric("12345.6700")),
            Ok("12345.6700".into())
        );
        assert_eq!(numeric_text(&numeric("-0.000001")), Ok("-0.000001".into()));
        assert_eq!(
            numeric_text(&numeric("98765432109876543210987654321098765432109876")),
            Ok("98765432109876543210987654321098765432109876".into())
        );
        assert_eq!(numeric_text(&numeric("0")), Ok("0".into()));
    }

    #[test]
    fn numerics_at_38_digits_decode_exactly() {
        let cases = [
            (
                "1234567890123456789012345678.0123456789",
                38,
                10,
                12345678901234567890123456780123456789,
            ),
            (
                "123456789012345678901234567890123456.78",
                38,
                2,
                12345678901234567890123456789012345678,
            ),
            (
                "123456789012345678901234567890123456.00",
                38,
                2,
                12345678901234567890123456789012345600,
            ),
            (
                "99999999999999999999999999999999999999",
                38,
                0,
                99999999999999999999999999999999999999,
            ),
            (
                "-99999999999999999999999999999999999999",
                38,
                0,
                -99999999999999999999999999999999999999,
            ),
            (
                "9999999999999999999999999999.9999999999",
                38,
                10,
                99999999999999999999999999999999999999,
            ),
            (
                "-999999999999999999999999999999999999.99",
                38,
                2,
                -99999999999999999999999999999999999999,
            ),
            ("0.00012", 5, 5, 12),
            ("0", 38, 10, 0),
        ];
        for (text, precision, scale, expected) in cases {
            assert_eq!(
                numeric_decimal(&numeric(text), precision, scale),
                Ok(expected),
                "{text} as decimal({precision},{scale})"
            );
        }
        assert!(
            numeric_decimal(&numeric("1234567890123456789012345678901234567.8"), 38, 2)
                .unwrap_err()
                .contains("does not fit")
        );
    }

    #[test]
    fn uuids_print_canonically() {
        let bytes: [u8; 16] = *b"\x12\x34\x56\x78\x9a\xbc\xde\xf0\x12\x34\x56\x78\x9a\xbc\xde\xf0";
        assert_eq!(format_uuid(&bytes), "12345678-9abc-def0-1234-56789abcdef0");
    }

    #[test]
    fn tuples_split_across_chunks_decode_once_complete() {
        use crate::sources::postgres::types::{ColumnPlan, Decode};
        use arrow::datatypes::{DataType, Field, Schema};
        let plans = vec![
            ColumnPlan {
                name: "id".into(),
                select: "id".into(),
                decode: Decode::Int8,
                data_type: DataType::Int64,
                note: None,
            },
            ColumnPlan {
                name: "t".into(),
                select: "t".into(),
                decode: Decode::Text,
                data_type: DataType::Utf8,
                note: None,
            },
        ];
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("t", DataType::Utf8, true),
        ]));
        let mut stream = SIGNATURE.to_vec();
        stream.extend([0u8; 8]);
        for (id, t) in [(1i64, Some("uno")), (2, None)] {
            stream.extend(2i16.to_be_bytes());
            stream.extend(8i32.to_be_bytes());
            stream.extend(id.to_be_bytes());
            match t {
                Some(t) => {
                    stream.extend((t.len() as i32).to_be_bytes());
                    stream.extend(t.as_bytes());
                }
                None => stream.extend((-1i32).to_be_bytes()),
            }
        }
        stream.extend((-1i16).to_be_bytes());
        let mut decoder = CopyDecoder::new(schema, &plans);
        for chunk in stream.chunks(3) {
            decoder.feed(chunk).unwrap();
        }
        decoder.finish().unwrap();
        let batch = decoder.take_batch().unwrap();
        assert_eq!(batch.num_rows(), 2);
        let mut cut = CopyDecoder::new(batch.schema(), &plans);
        cut.feed(&stream[..stream.len() - 5]).unwrap();
        assert!(cut.finish().is_err());
    }
}
