//! BSON to Arrow types. A collection has no schema, so one is inferred from a sample of documents.
//!
//! | BSON                         | Arrow                                    |
//! |------------------------------|------------------------------------------|
//! | int32                        | Int32                                    |
//! | int64 (or int32 + int64)     | Int64                                    |
//! | double (or double + ints)    | Float64 (an int beyond ±2^53 is an error)|
//! | decimal128 (+ ints)          | Decimal128(38, largest scale sampled)    |
//! | string                       | Utf8                                     |
//! | objectId                     | Utf8, 24 hex digits                      |
//! | bool                         | Boolean                                  |
//! | date                         | Timestamp(ms, UTC)                       |
//! | binary subtype 4 (UUID)      | Utf8, canonical UUID text                |
//! | other binary                 | Binary                                   |
//! | embedded document            | Struct (`nested: json`: Utf8 JSON text)  |
//! | array                        | List of the elements' type (or JSON)     |
//! | timestamp, regex, code, ...  | Utf8, relaxed extended JSON              |
//! | only null / missing          | Utf8                                     |
//! | incompatible types           | `mixed_types: string` → Utf8; `fail` → error |

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use carga_config::{MixedTypesPolicy, NestedPolicy};
use mongodb::bson::Bson;
use mongodb::bson::spec::BinarySubtype;

use crate::typing::UTC;

/// The largest precision of an Arrow Decimal128 (BSON decimal128 holds 34 digits).
const DECIMAL_PRECISION: u8 = 38;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Int32,
    Int64,
    Double,
    Decimal,
    String,
    ObjectId,
    Bool,
    DateTime,
    Uuid,
    Binary,
    Document,
    Array,
    /// Timestamp, regex, JavaScript, symbol, min/max key, DBPointer: kept as extended JSON text.
    Other,
}

impl Kind {
    pub fn of(value: &Bson) -> Option<Kind> {
        Some(match value {
            Bson::Null | Bson::Undefined => return None,
            Bson::Int32(_) => Kind::Int32,
            Bson::Int64(_) => Kind::Int64,
            Bson::Double(_) => Kind::Double,
            Bson::Decimal128(_) => Kind::Decimal,
            Bson::String(_) => Kind::String,
            Bson::ObjectId(_) => Kind::ObjectId,
            Bson::Boolean(_) => Kind::Bool,
            Bson::DateTime(_) => Kind::DateTime,
            Bson::Binary(b) if b.subtype == BinarySubtype::Uuid && b.bytes.len() == 16 => {
                Kind::Uuid
            }
            Bson::Binary(_) => Kind::Binary,
            Bson::Document(_) => Kind::Document,
            Bson::Array(_) => Kind::Array,
            _ => Kind::Other,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Int32 => "int32",
            Kind::Int64 => "int64",
            Kind::Double => "double",
            Kind::Decimal => "decimal128",
            Kind::String => "string",
            Kind::ObjectId => "objectId",
            Kind::Bool => "bool",
            Kind::DateTime => "date",
            Kind::Uuid => "uuid",
            Kind::Binary => "binary",
            Kind::Document => "document",
            Kind::Array => "array",
            Kind::Other => "other",
        }
    }
}

/// What the sample showed of one field (or of an array's elements).
#[derive(Debug, Default, Clone)]
pub(crate) struct Observed {
    pub kinds: BTreeSet<Kind>,
    decimal_scale: u32,
    /// Sub-fields of embedded documents, in the order first seen.
    fields: Vec<(String, Observed)>,
    element: Option<Box<Observed>>,
}

impl Observed {
    pub fn observe(&mut self, value: &Bson) {
        let Some(kind) = Kind::of(value) else {
            return;
        };
        self.kinds.insert(kind);
        match value {
            Bson::Decimal128(d) => {
                if let Some(parsed) = ParsedDecimal::parse(&d.to_string()) {
                    self.decimal_scale = self.decimal_scale.max(parsed.scale.max(0) as u32);
                }
            }
            Bson::Document(doc) => self.observe_document(doc),
            Bson::Array(items) => {
                let element = self.element.get_or_insert_with(Default::default);
                for item in items {
                    element.observe(item);
                }
            }
            _ => {}
        }
    }

    pub fn observe_document(&mut self, doc: &mongodb::bson::Document) {
        for (name, value) in doc {
            let position = match self.fields.iter().position(|(n, _)| n == name) {
                Some(position) => position,
                None => {
                    self.fields.push((name.clone(), Observed::default()));
                    self.fields.len() - 1
                }
            };
            self.fields[position].1.observe(value);
        }
    }

    pub fn fields(&self) -> &[(String, Observed)] {
        &self.fields
    }

    /// The Arrow type for this field; `path` names it in errors (`address.city`).
    pub fn resolve(
        &self,
        path: &str,
        mixed: MixedTypesPolicy,
        nested: NestedPolicy,
    ) -> Result<DataType, String> {
        use Kind::*;
        let kinds: Vec<Kind> = self.kinds.iter().copied().collect();
        let only = |allowed: &[Kind]| kinds.iter().all(|k| allowed.contains(k));
        let data_type = match kinds.as_slice() {
            [] => DataType::Utf8,
            [Int32] => DataType::Int32,
            [String] | [ObjectId] | [Uuid] | [Other] => DataType::Utf8,
            [Bool] => DataType::Boolean,
            [DateTime] => DataType::Timestamp(TimeUnit::Millisecond, Some(Arc::from(UTC))),
            [Binary] => DataType::Binary,
            [Document] | [Array] if nested == NestedPolicy::Json => DataType::Utf8,
            [Document] => DataType::Struct(self.struct_fields(path, mixed, nested)?),
            [Array] => {
                let element = match &self.element {
                    Some(element) => element.resolve(&format!("{path}[]"), mixed, nested)?,
                    None => DataType::Utf8,
                };
                DataType::List(Arc::new(Field::new("item", element, true)))
            }
            _ if only(&[Int32, Int64]) => DataType::Int64,
            _ if only(&[Int32, Int64, Double]) => DataType::Float64,
            _ if only(&[Int32, Int64, Decimal]) => {
                DataType::Decimal128(DECIMAL_PRECISION, self.decimal_scale.min(37) as i8)
            }
            _ => match mixed {
                MixedTypesPolicy::String => DataType::Utf8,
                MixedTypesPolicy::Fail => {
                    let seen: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
                    return Err(format!(
                        "field '{path}' has mixed types in the sample ({}); set mongodb.mixed_types: string to write it as text",
                        seen.join(", ")
                    ));
                }
            },
        };
        Ok(data_type)
    }

    fn struct_fields(
        &self,
        path: &str,
        mixed: MixedTypesPolicy,
        nested: NestedPolicy,
    ) -> Result<Fields, String> {
        self.fields
            .iter()
            .map(|(name, observed)| {
                let data_type = observed.resolve(&format!("{path}.{name}"), mixed, nested)?;
                Ok(Field::new(name, data_type, true))
            })
            .collect()
    }
}

/// A decimal number as text, split into sign, digits and scale (digits after the point, negative
/// for exponents that add zeros): `1.05E+3` is digits `105`, scale `-1`.
#[derive(Debug, PartialEq)]
pub(crate) struct ParsedDecimal {
    pub negative: bool,
    pub digits: String,
    pub scale: i32,
}

impl ParsedDecimal {
    pub fn parse(text: &str) -> Option<Self> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let (mantissa, exponent) = match rest.split_once(['E', 'e']) {
            Some((m, e)) => (m, e.parse::<i32>().ok()?),
            None => (rest, 0),
        };
        let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if whole.is_empty() && fraction.is_empty()
            || !whole
                .bytes()
                .chain(fraction.bytes())
                .all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let digits = format!("{whole}{fraction}");
        Some(Self {
            negative,
            digits,
            scale: fraction.len() as i32 - exponent,
        })
    }

    /// The value written with exactly `scale` digits after the point, or `None` if that would
    /// drop a non-zero digit (never round silently).
    pub fn at_scale(&self, scale: u32) -> Option<String> {
        let scale = scale as i32;
        let mut digits = self.digits.clone();
        if self.scale < scale {
            digits.extend(std::iter::repeat_n('0', (scale - self.scale) as usize));
        } else if self.scale > scale {
            let drop = (self.scale - scale) as usize;
            let cut = digits.len().saturating_sub(drop);
            if digits[cut..].bytes().any(|b| b != b'0') {
                return None;
            }
            digits.truncate(cut);
        }
        let digits = digits.trim_start_matches('0');
        let padded = format!("{digits:0>width$}", width = scale as usize + 1);
        let (whole, fraction) = padded.split_at(padded.len() - scale as usize);
        let sign = if self.negative && padded.bytes().any(|b| b != b'0') {
            "-"
        } else {
            ""
        };
        Some(if fraction.is_empty() {
            format!("{sign}{whole}")
        } else {
            format!("{sign}{whole}.{fraction}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{Binary, Decimal128, doc, oid::ObjectId};

    fn resolve(values: &[Bson]) -> Result<DataType, String> {
        let mut observed = Observed::default();
        for v in values {
            observed.observe(v);
        }
        observed.resolve("f", MixedTypesPolicy::Fail, NestedPolicy::Struct)
    }

    #[test]
    fn type_table() {
        let dec = |s: &str| Bson::Decimal128(s.parse::<Decimal128>().unwrap());
        assert_eq!(resolve(&[Bson::Int32(1)]), Ok(DataType::Int32));
        assert_eq!(
            resolve(&[Bson::Int32(1), Bson::Int64(2), Bson::Null]),
            Ok(DataType::Int64)
        );
        assert_eq!(
            resolve(&[Bson::Int32(1), Bson::Double(2.5)]),
            Ok(DataType::Float64)
        );
        assert_eq!(
            resolve(&[dec("1.5"), dec("2.125"), Bson::Int32(3)]),
            Ok(DataType::Decimal128(38, 3))
        );
        assert_eq!(
            resolve(&[Bson::ObjectId(ObjectId::new())]),
            Ok(DataType::Utf8)
        );
        assert_eq!(
            resolve(&[Bson::DateTime(mongodb::bson::DateTime::now())]),
            Ok(DataType::Timestamp(
                TimeUnit::Millisecond,
                Some(Arc::from(UTC))
            ))
        );
        let uuid = Binary {
            subtype: BinarySubtype::Uuid,
            bytes: vec![7; 16],
        };
        assert_eq!(resolve(&[Bson::Binary(uuid)]), Ok(DataType::Utf8));
        let blob = Binary {
            subtype: BinarySubtype::Generic,
            bytes: vec![1, 2],
        };
        assert_eq!(resolve(&[Bson::Binary(blob)]), Ok(DataType::Binary));
        assert_eq!(resolve(&[Bson::Null]), Ok(DataType::Utf8));
    }

    #[test]
    fn nested_documents_become_structs_or_json() {
        let mut observed = Observed::default();
        observed.observe(&Bson::Document(doc! {"city": "Lima", "geo": {"lat": 1.5}}));
        observed.observe(&Bson::Document(doc! {"city": "Quito", "zip": 170150}));
        let data_type = observed
            .resolve("address", MixedTypesPolicy::Fail, NestedPolicy::Struct)
            .unwrap();
        let DataType::Struct(fields) = data_type else {
            panic!("{data_type}")
        };
        let names: Vec<&str> = fields.iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["city", "geo", "zip"]);
        assert_eq!(
            observed.resolve("address", MixedTypesPolicy::Fail, NestedPolicy::Json),
            Ok(DataType::Utf8)
        );
        let mut tags = Observed::default();
        tags.observe(&Bson::Array(vec![Bson::String("a".into())]));
        assert_eq!(
            tags.resolve("tags", MixedTypesPolicy::Fail, NestedPolicy::Struct),
            Ok(DataType::List(Arc::new(Field::new(
                "item",
                DataType::Utf8,
                true
            ))))
        );
    }

    #[test]
    fn mixed_types_follow_the_policy() {
        let mut observed = Observed::default();
        observed.observe(&Bson::String("7".into()));
        observed.observe(&Bson::Int32(7));
        let err = observed
            .resolve("code", MixedTypesPolicy::Fail, NestedPolicy::Struct)
            .unwrap_err();
        assert!(
            err.contains("field 'code'") && err.contains("int32, string"),
            "{err}"
        );
        assert_eq!(
            observed.resolve("code", MixedTypesPolicy::String, NestedPolicy::Struct),
            Ok(DataType::Utf8)
        );
    }

    #[test]
    fn decimals_rescale_without_rounding() {
        let d = ParsedDecimal::parse("1.05E+3").unwrap();
        assert_eq!(d.at_scale(2).as_deref(), Some("1050.00"));
        let d = ParsedDecimal::parse("-0.125").unwrap();
        assert_eq!(d.at_scale(3).as_deref(), Some("-0.125"));
        assert_eq!(d.at_scale(2), None);
        assert_eq!(
            ParsedDecimal::parse("12.500")
                .unwrap()
                .at_scale(1)
                .as_deref(),
            Some("12.5")
        );
        assert_eq!(
            ParsedDecimal::parse("7").unwrap().at_scale(0).as_deref(),
            Some("7")
        );
        assert!(ParsedDecimal::parse("NaN").is_none());
        assert!(ParsedDecimal::parse("Infinity").is_none());
    }
}
