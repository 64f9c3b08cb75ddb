//! One BSON value shaped for its Arrow column, as the JSON that arrow-json decodes: exact (no
//! rounding, no silent casts) or an error that names the field and what was found.

use arrow::datatypes::DataType;
use chrono::{DateTime, SecondsFormat};
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{Bson, Document};
use serde_json::{Map, Value};

use super::schema::ParsedDecimal;

/// Integers a double holds exactly.
const MAX_EXACT_DOUBLE_INT: i64 = 1 << 53;

/// Why a value did not fit its column.
#[derive(Debug, PartialEq)]
pub(crate) enum Misfit {
    /// A value of another type (the row is rejected or fails the run, by policy).
    Type(String),
    /// A nested field the sample never saw: the struct has no place for it.
    UnknownField(String),
}

impl Misfit {
    pub fn message(&self) -> &str {
        match self {
            Misfit::Type(m) | Misfit::UnknownField(m) => m,
        }
    }
}

/// `value` as JSON for a column of `data_type`; `path` names the field in errors.
pub(crate) fn conform(value: &Bson, data_type: &DataType, path: &str) -> Result<Value, Misfit> {
    if matches!(value, Bson::Null | Bson::Undefined) {
        return Ok(Value::Null);
    }
    let mismatch = || {
        Misfit::Type(format!(
            "field '{path}': {} does not fit the column type {data_type}",
            summary(value)
        ))
    };
    Ok(match (data_type, value) {
        (DataType::Utf8 | DataType::LargeUtf8, _) => Value::String(text(value)),
        (DataType::Int32, Bson::Int32(v)) => Value::from(*v),
        (DataType::Int32, Bson::Int64(v)) => {
            Value::from(i32::try_from(*v).map_err(|_| mismatch())?)
        }
        (DataType::Int64, Bson::Int32(v)) => Value::from(*v),
        (DataType::Int64, Bson::Int64(v)) => Value::from(*v),
        (DataType::Float64, Bson::Double(v)) => {
            serde_json::Number::from_f64(*v).map_or(Value::Null, Value::Number)
        }
        (DataType::Float64, Bson::Int32(v)) => Value::from(f64::from(*v)),
        (DataType::Float64, Bson::Int64(v)) if v.abs() <= MAX_EXACT_DOUBLE_INT => {
            Value::from(*v as f64)
        }
        (DataType::Boolean, Bson::Boolean(v)) => Value::Bool(*v),
        (DataType::Timestamp(_, _), Bson::DateTime(v)) => Value::String(iso_millis(v)),
        (DataType::Date32, Bson::DateTime(v)) => {
            let millis = v.timestamp_millis();
            if millis.rem_euclid(86_400_000) != 0 {
                return Err(mismatch());
            }
            Value::String(iso_millis(v)[..10].to_owned())
        }
        (DataType::Decimal128(_, scale), Bson::Decimal128(d)) => {
            let parsed = ParsedDecimal::parse(&d.to_string()).ok_or_else(mismatch)?;
            Value::String(parsed.at_scale(*scale as u32).ok_or_else(|| {
                Misfit::Type(format!(
                    "field '{path}': {d} needs more than {scale} decimal places; declare a wider scale in `schema:`"
                ))
            })?)
        }
        (DataType::Decimal128(_, scale), Bson::Int32(_) | Bson::Int64(_)) => {
            let parsed = ParsedDecimal::parse(&text(value)).ok_or_else(mismatch)?;
            Value::String(parsed.at_scale(*scale as u32).ok_or_else(mismatch)?)
        }
        (DataType::Binary | DataType::LargeBinary, Bson::Binary(b)) => {
            Value::String(hex::encode(&b.bytes))
        }
        (DataType::Struct(fields), Bson::Document(doc)) => {
            if let Some(unknown) = doc.keys().find(|k| fields.find(k).is_none()) {
                return Err(Misfit::UnknownField(format!(
                    "field '{path}.{unknown}' was not in the sampled documents; raise mongodb.sample_size or set mongodb.nested: json"
                )));
            }
            let mut object = Map::with_capacity(fields.len());
            for field in fields {
                let inner = doc.get(field.name()).unwrap_or(&Bson::Null);
                let conformed = conform(
                    inner,
                    field.data_type(),
                    &format!("{path}.{}", field.name()),
                )?;
                object.insert(field.name().clone(), conformed);
            }
            Value::Object(object)
        }
        (DataType::List(item), Bson::Array(items)) => Value::Array(
            items
                .iter()
                .map(|v| conform(v, item.data_type(), &format!("{path}[]")))
                .collect::<Result<_, _>>()?,
        ),
        _ => return Err(mismatch()),
    })
}

/// A value as text: strings as they are, ids and UUIDs in their usual spelling, dates as
/// ISO 8601, anything else as relaxed extended JSON (documents and arrays included).
pub(crate) fn text(value: &Bson) -> String {
    match value {
        Bson::String(s) => s.clone(),
        Bson::ObjectId(id) => id.to_hex(),
        Bson::DateTime(v) => iso_millis(v),
        Bson::Int32(v) => v.to_string(),
        Bson::Int64(v) => v.to_string(),
        Bson::Decimal128(d) => d.to_string(),
        Bson::Boolean(b) => b.to_string(),
        Bson::Binary(b) if b.subtype == BinarySubtype::Uuid && b.bytes.len() == 16 => {
            uuid::Uuid::from_slice(&b.bytes)
                .map(|u| u.to_string())
                .unwrap_or_else(|_| hex::encode(&b.bytes))
        }
        other => other.clone().into_relaxed_extjson().to_string(),
    }
}

fn iso_millis(value: &mongodb::bson::DateTime) -> String {
    let millis = value.timestamp_millis();
    match DateTime::from_timestamp_millis(millis) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => millis.to_string(),
    }
}

/// A short description of a value for error messages (type and a clipped rendering).
fn summary(value: &Bson) -> String {
    let mut rendered = text(value);
    if rendered.len() > 60 {
        let cut = (0..=60).rev().find(|&i| rendered.is_char_boundary(i));
        rendered.truncate(cut.unwrap_or(0));
        rendered.push('…');
    }
    format!("{:?} value {rendered}", value.element_type())
}

/// The document's `_id` as text, to name a document in messages.
pub(crate) fn document_id(doc: &Document) -> String {
    doc.get("_id").map(text).unwrap_or_else(|| "(none)".into())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use arrow::datatypes::{Field, Fields, TimeUnit};
    use mongodb::bson::{Decimal128, doc};

    #[test]
    fn values_fit_their_columns_exactly() {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, Some(Arc::from("+00:00")));
        let when = mongodb::bson::DateTime::from_millis(1_767_225_600_123);
        assert_eq!(
            conform(&Bson::DateTime(when), &ts, "t"),
            Ok(Value::String("2026-01-01T00:00:00.123Z".into()))
        );
        assert_eq!(
            conform(&Bson::Int32(5), &DataType::Int64, "n"),
            Ok(Value::from(5))
        );
        let price = Bson::Decimal128("19.9".parse::<Decimal128>().unwrap());
        assert_eq!(
            conform(&price, &DataType::Decimal128(38, 2), "p"),
            Ok(Value::String("19.90".into()))
        );
        assert!(conform(&price, &DataType::Decimal128(38, 0), "p").is_err());
        let big = Bson::Int64(MAX_EXACT_DOUBLE_INT + 1);
        assert!(conform(&big, &DataType::Float64, "x").is_err());
        let err = conform(&Bson::String("7".into()), &DataType::Int64, "qty").unwrap_err();
        assert!(err.message().contains("field 'qty'"), "{err:?}");
        assert_eq!(
            conform(&Bson::Int32(7), &DataType::Utf8, "code"),
            Ok(Value::String("7".into()))
        );
    }

    #[test]
    fn structs_refuse_fields_the_sample_did_not_see() {
        let address =
            DataType::Struct(Fields::from(vec![Field::new("city", DataType::Utf8, true)]));
        assert_eq!(
            conform(&Bson::Document(doc! {"city": "Lima"}), &address, "address"),
            Ok(serde_json::json!({"city": "Lima"}))
        );
        let err = conform(
            &Bson::Document(doc! {"city": "Lima", "zip": 1}),
            &address,
            "address",
        )
        .unwrap_err();
        assert!(matches!(err, Misfit::UnknownField(ref m) if m.contains("address.zip")));
    }
}
