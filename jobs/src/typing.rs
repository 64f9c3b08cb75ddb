//! Text cells to typed Arrow columns: type names in specs, inference over a sample, and conversion
//! that reports exactly which row and column did not fit instead of silently nulling it.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Decimal128Array, StringArray};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, TimeUnit};

/// The zone of instants (`timestamptz`). An offset rather than a zone name, so that no time zone
/// database is needed to read or display it; readers see UTC either way.
pub const UTC: &str = "+00:00";

/// The type a timestamp column gets: microseconds, UTC when the text carries an offset.
pub fn timestamp_type(with_zone: bool) -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, with_zone.then(|| Arc::from(UTC)))
}

/// Parses a type name as written in a dataset spec's `schema:` section.
pub fn parse_type_name(name: &str) -> Option<DataType> {
    let lower = name.trim().to_ascii_lowercase();
    let simple = match lower.as_str() {
        "string" | "text" | "utf8" | "varchar" => Some(DataType::Utf8),
        "int" | "integer" | "int64" | "bigint" | "long" => Some(DataType::Int64),
        "int32" => Some(DataType::Int32),
        "float" | "double" | "float64" => Some(DataType::Float64),
        "bool" | "boolean" => Some(DataType::Boolean),
        "date" => Some(DataType::Date32),
        "timestamp" => Some(timestamp_type(false)),
        "timestamptz" | "timestamp with time zone" => Some(timestamp_type(true)),
        _ => None,
    };
    if simple.is_some() {
        return simple;
    }
    let args = lower.strip_prefix("decimal(")?.strip_suffix(')')?;
    let (precision, scale) = args.split_once(',')?;
    let precision: u8 = precision.trim().parse().ok()?;
    let scale: i8 = scale.trim().parse().ok()?;
    if precision == 0 || precision > 38 || scale < 0 || scale as u8 > precision {
        return None;
    }
    Some(DataType::Decimal128(precision, scale))
}

const SAFE: CastOptions<'static> = CastOptions {
    safe: true,
    format_options: arrow::util::display::FormatOptions::new(),
};

/// Casts text to `target`; cells that were present but did not parse come back as null.
pub fn cast_text(values: &StringArray, target: &DataType) -> arrow::error::Result<ArrayRef> {
    match target {
        DataType::Utf8 => Ok(Arc::new(values.clone())),
        DataType::Decimal128(precision, scale) => {
            let typed: Decimal128Array = values
                .iter()
                .map(|v| v.and_then(|v| decimal_from_text(v, *precision, *scale)))
                .collect();
            Ok(Arc::new(
                typed.with_precision_and_scale(*precision, *scale)?,
            ))
        }
        _ => cast_with_options(values, target, &SAFE),
    }
}

/// The exact value of a decimal written as text (`-12.50`, `+3`, `.5`, surrounding spaces
/// allowed), scaled to `scale`; `None` when it is not a decimal, needs more digits than
/// `precision`, or has non-zero digits past `scale` (arrow's own cast rounds those: a value is
/// never altered silently here). Parses straight into an `i128`, without arrow's per-value
/// string building.
pub fn decimal_from_text(text: &str, precision: u8, scale: i8) -> Option<i128> {
    let bytes = text.trim().as_bytes();
    let (negative, digits) = match bytes.first() {
        Some(b'-') => (true, &bytes[1..]),
        Some(b'+') => (false, &bytes[1..]),
        _ => (false, bytes),
    };
    let (integer, fraction) = match memchr::memchr(b'.', digits) {
        Some(dot) => (&digits[..dot], &digits[dot + 1..]),
        None => (digits, &digits[digits.len()..]),
    };
    if (integer.is_empty() && fraction.is_empty())
        || !integer.iter().chain(fraction).all(u8::is_ascii_digit)
    {
        return None;
    }
    let scale = usize::try_from(scale).ok()?;
    let (kept, beyond) = fraction.split_at(fraction.len().min(scale));
    if beyond.iter().any(|&d| d != b'0') {
        return None;
    }
    let digits = integer.iter().chain(kept);
    let mut value: i128 = if integer.len() + kept.len() <= MAX_U64_DIGITS {
        // Most decimals fit 64 bits: their digits are gathered without 128-bit arithmetic.
        i128::from(digits.fold(0u64, |v, &d| v * 10 + u64::from(d - b'0')))
    } else {
        let mut value: i128 = 0;
        for &d in digits {
            value = value.checked_mul(10)?.checked_add(i128::from(d - b'0'))?;
        }
        value
    };
    let padding = scale - kept.len();
    value = value.checked_mul(*POWERS_OF_TEN.get(padding)?)?;
    if value >= *POWERS_OF_TEN.get(usize::from(precision))? {
        return None;
    }
    Some(if negative { -value } else { value })
}

/// Digits that always fit a `u64` (10^19 - 1 does, 10^20 - 1 does not).
const MAX_U64_DIGITS: usize = 19;

/// 10^0 ..= 10^38: the scales and precisions of a `Decimal128`.
const POWERS_OF_TEN: [i128; 39] = {
    let mut powers = [1i128; 39];
    let mut i = 1;
    while i < powers.len() {
        powers[i] = powers[i - 1] * 10;
        i += 1;
    }
    powers
};

/// Casts text to `target`, or names the first present cell that does not parse: `Err(index)`.
pub fn cast_exact(values: &StringArray, target: &DataType) -> Result<ArrayRef, CastFailure> {
    let typed = cast_text(values, target).map_err(|e| CastFailure::Unsupported(e.to_string()))?;
    if typed.null_count() != values.null_count() {
        let bad = (0..values.len())
            .find(|&i| values.is_valid(i) && typed.is_null(i))
            .expect("a cell turned null");
        return Err(CastFailure::Value(bad));
    }
    Ok(typed)
}

#[derive(Debug)]
pub enum CastFailure {
    /// The cell at this index does not parse as the target type.
    Value(usize),
    /// No cast from text to the target type exists.
    Unsupported(String),
}

/// Infers a column type from sample values (nulls already removed by the caller's null rules).
/// Returns `None` when the sample holds no value at all, so a hint or `Utf8` can decide.
pub fn infer_type(values: &StringArray) -> Option<DataType> {
    let present = values.len() - values.null_count();
    if present == 0 {
        return None;
    }
    let fits = |target: &DataType| {
        cast_text(values, target)
            .map(|typed| typed.null_count() == values.null_count())
            .unwrap_or(false)
    };
    let texts = || values.iter().flatten();
    // Identifiers like zip codes keep their leading zeros: such a column stays text.
    let leading_zero = texts().any(|v| {
        let digits = v.strip_prefix('-').unwrap_or(v);
        digits.len() > 1 && digits.starts_with('0') && !digits.starts_with("0.")
    });
    if !leading_zero && texts().all(|v| !v.contains(['.', 'e', 'E'])) && fits(&DataType::Int64) {
        return Some(DataType::Int64);
    }
    if !leading_zero
        && texts().all(|v| v.bytes().any(|b| b.is_ascii_digit()))
        && fits(&DataType::Float64)
    {
        return Some(DataType::Float64);
    }
    if texts().all(|v| v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false")) {
        return Some(DataType::Boolean);
    }
    if texts().all(|v| v.len() == 10) && fits(&DataType::Date32) {
        return Some(DataType::Date32);
    }
    if texts().all(|v| v.len() >= 16 && v.as_bytes()[4] == b'-') && fits(&timestamp_type(false)) {
        let zoned = texts().any(has_zone_designator);
        return Some(timestamp_type(zoned));
    }
    Some(DataType::Utf8)
}

fn has_zone_designator(text: &str) -> bool {
    let t = text.trim_end();
    if t.ends_with('Z') || t.ends_with('z') {
        return true;
    }
    // An offset like +02:00, -0500 or +02 after the time part.
    let time_part = t.get(10..).unwrap_or("");
    time_part.rfind(['+', '-']).is_some_and(|pos| {
        time_part[pos + 1..]
            .chars()
            .all(|c| c.is_ascii_digit() || c == ':')
    })
}

/// Human name of a type for messages.
pub fn describe(data_type: &DataType) -> String {
    match data_type {
        DataType::Utf8 => "string".into(),
        DataType::Int16 => "int16".into(),
        DataType::Int32 => "int32".into(),
        DataType::Int64 => "int64".into(),
        DataType::Float32 => "float32".into(),
        DataType::Binary => "binary".into(),
        DataType::Float64 => "float64".into(),
        DataType::Boolean => "bool".into(),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(_, None) => "timestamp".into(),
        DataType::Timestamp(_, Some(_)) => "timestamptz".into(),
        DataType::Decimal128(p, s) => format!("decimal({p},{s})"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infer(values: &[Option<&str>]) -> Option<DataType> {
        infer_type(&StringArray::from(values.to_vec()))
    }

    #[test]
    fn infers_the_narrowest_type_that_fits_every_value() {
        assert_eq!(
            infer(&[Some("1"), Some("-20"), None]),
            Some(DataType::Int64)
        );
        assert_eq!(infer(&[Some("1"), Some("2.5")]), Some(DataType::Float64));
        assert_eq!(
            infer(&[Some("true"), Some("FALSE")]),
            Some(DataType::Boolean)
        );
        assert_eq!(infer(&[Some("2024-01-31")]), Some(DataType::Date32));
        assert_eq!(
            infer(&[
                Some("2024-01-31 10:00:00"),
                Some("2024-02-01T11:30:00.123456")
            ]),
            Some(timestamp_type(false))
        );
        assert_eq!(
            infer(&[
                Some("2024-01-31T10:00:00Z"),
                Some("2024-01-31T10:00:00+02:00")
            ]),
            Some(timestamp_type(true))
        );
        assert_eq!(infer(&[Some("1"), Some("x")]), Some(DataType::Utf8));
        assert_eq!(infer(&[None, None]), None);
    }

    #[test]
    fn leading_zeros_keep_identifiers_as_text() {
        assert_eq!(infer(&[Some("01234"), Some("55555")]), Some(DataType::Utf8));
        assert_eq!(infer(&[Some("0"), Some("0.5")]), Some(DataType::Float64));
    }

    #[test]
    fn numbers_are_not_booleans_and_dates_are_not_numbers() {
        assert_eq!(infer(&[Some("1"), Some("0")]), Some(DataType::Int64));
        assert_eq!(infer(&[Some("yes"), Some("no")]), Some(DataType::Utf8));
        assert_eq!(infer(&[Some("20240131")]), Some(DataType::Int64));
    }

    #[test]
    fn type_names_parse() {
        assert_eq!(
            parse_type_name("Decimal(12, 2)"),
            Some(DataType::Decimal128(12, 2))
        );
        assert_eq!(parse_type_name("decimal(40,2)"), None);
        assert_eq!(parse_type_name("timestamptz"), Some(timestamp_type(true)));
        assert_eq!(parse_type_name("blob"), None);
    }

    #[test]
    fn decimals_parse_exactly_or_not_at_all() {
        let d = |text| decimal_from_text(text, 5, 2);
        assert_eq!(d("123.45"), Some(12345));
        assert_eq!(d("-1.5"), Some(-150));
        assert_eq!(d(" +7 "), Some(700));
        assert_eq!(d(".5"), Some(50));
        assert_eq!(d("5."), Some(500));
        assert_eq!(d("-0.01"), Some(-1));
        assert_eq!(d("1.500"), Some(150), "zeros past the scale change nothing");
        assert_eq!(d("1.005"), None, "rounding would alter the value");
        assert_eq!(d("1000.00"), None, "six digits in decimal(5,2)");
        assert_eq!(d("999.99"), Some(99999));
        for bad in [
            "", ".", "-", "1e3", "1.2.3", "12a", "--1", "1,5", "0x10", " ",
        ] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
        let max = "9".repeat(38);
        assert_eq!(decimal_from_text(&max, 38, 0), Some(10_i128.pow(38) - 1));
        assert_eq!(decimal_from_text(&format!("{max}9"), 38, 0), None);
        assert_eq!(
            decimal_from_text("-0.00000000000000000000000000000000000001", 38, 38),
            Some(-1)
        );
        assert_eq!(
            decimal_from_text("12", 38, -2),
            None,
            "negative scales are not text's"
        );
    }

    /// Digit by digit in 128 bits, every step checked: what `decimal_from_text` must agree with.
    fn decimal_by_the_digit(text: &str, precision: u8, scale: i8) -> Option<i128> {
        let text = text.trim();
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let (integer, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        if (integer.is_empty() && fraction.is_empty())
            || !all_digits(integer)
            || !all_digits(fraction)
        {
            return None;
        }
        let scale = usize::try_from(scale).ok()?;
        let fraction = fraction.trim_end_matches('0');
        if fraction.len() > scale {
            return None;
        }
        let mut value: i128 = 0;
        for d in integer.bytes().chain(fraction.bytes()) {
            value = value.checked_mul(10)?.checked_add(i128::from(d - b'0'))?;
        }
        for _ in fraction.len()..scale {
            value = value.checked_mul(10)?;
        }
        let limit = (0..precision).try_fold(1i128, |p, _| p.checked_mul(10))?;
        (value < limit).then_some(if negative { -value } else { value })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(crate::fuzz_cases(512, 1)))]

        #[test]
        fn decimals_agree_with_a_digit_by_digit_reading(
            text in "[-+ ]?[0-9]{0,40}(\\.[0-9]{0,40})? ?",
            precision in 1u8..=38,
            scale in 0i8..=38,
        ) {
            let scale = scale.min(precision as i8);
            proptest::prop_assert_eq!(
                decimal_from_text(&text, precision, scale),
                decimal_by_the_digit(&text, precision, scale),
                "{} as decimal({},{})", text, precision, scale
            );
        }
    }

    #[test]
    fn decimals_agree_with_arrow_where_arrow_is_exact() {
        let texts = [
            "0", "1.25", "-3.1", "+42", "99999.99", "-0.50", ".75", "7.", " 8.5 ",
        ];
        let values = StringArray::from(texts.to_vec());
        let ours = cast_text(&values, &DataType::Decimal128(7, 2)).unwrap();
        let arrows = cast_with_options(&values, &DataType::Decimal128(7, 2), &SAFE).unwrap();
        assert_eq!(&ours, &arrows);
    }

    #[test]
    fn cast_text_marks_unparseable_cells_null() {
        let values = StringArray::from(vec![Some("1"), Some("x"), None]);
        let typed = cast_text(&values, &DataType::Int64).unwrap();
        assert!(typed.is_valid(0) && typed.is_null(1) && typed.is_null(2));
    }
}
