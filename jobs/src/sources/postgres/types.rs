//! PostgreSQL → Arrow type mapping, in one table.
//!
//! | PostgreSQL | Arrow | notes |
//! |---|---|---|
//! | `boolean` | Boolean | |
//! | `smallint`, `integer`, `bigint` | Int16, Int32, Int64 | |
//! | `real`, `double precision` | Float32, Float64 | NaN and ±Infinity kept |
//! | `numeric(p,s)`, p ≤ 38 | Decimal128(p,s) | exact; a value that does not fit fails the run |
//! | `numeric` without precision, or p > 38 | Utf8 (exact digits) by default | `postgres.unconstrained_numeric: decimal(p,s)` makes it Decimal128; never a float |
//! | `text`, `varchar(n)`, `char(n)`, `name` | Utf8 | `char(n)` keeps its blank padding, as PostgreSQL stores it |
//! | `json`, `jsonb` | Utf8 | the JSON text |
//! | `bytea` | Binary | |
//! | `date` | Date32 | ±infinity fails the run |
//! | `timestamp` | Timestamp(µs) | ±infinity fails the run |
//! | `timestamptz` | Timestamp(µs, "+00:00") | an instant, in UTC |
//! | `time` | Time64(µs) | |
//! | `interval` | Utf8 | ISO 8601 duration (`P1M2DT3S`): exact, and Parquet has no month-day-microsecond interval |
//! | `uuid` | Utf8 | canonical lowercase text |
//! | arrays | Utf8 | JSON text (`array_to_json`) |
//! | anything else (enums, ranges, geometry, …) | Utf8 | selected as `::text`, reported in the schema notes |

use std::sync::Arc;

use arrow::datatypes::{DataType, TimeUnit};

use crate::typing::parse_type_name;

/// A column as the catalog describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct PgColumn {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`, e.g. `numeric(12,2)`, `character varying(40)`.
    pub declared: String,
    /// The base type's `typname` (domains resolved), e.g. `numeric`, `varchar`, `_int4`.
    pub base: String,
    /// `typcategory`; `A` marks arrays.
    pub category: String,
    pub typmod: i32,
}

/// How a column's binary COPY field is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decode {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Text,
    Jsonb,
    Bytea,
    Date,
    Timestamp,
    TimestampTz,
    Time,
    Uuid,
    Numeric { precision: u8, scale: i8 },
    NumericText,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ColumnPlan {
    pub name: String,
    /// The expression in the extraction's select list.
    pub select: String,
    pub decode: Decode,
    pub data_type: DataType,
    /// Set when the column is not extracted as its own type (e.g. cast to text).
    pub note: Option<String>,
}

/// Quotes an identifier for SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Plans one column. `unconstrained_numeric` is the dataset's policy: `text` or `decimal(p,s)`.
pub fn plan_column(column: &PgColumn, unconstrained_numeric: &str) -> Result<ColumnPlan, String> {
    let ident = quote_ident(&column.name);
    let plan = |decode: Decode, data_type: DataType| ColumnPlan {
        name: column.name.clone(),
        select: ident.clone(),
        decode,
        data_type,
        note: None,
    };
    if column.category == "A" {
        return Ok(ColumnPlan {
            select: format!("array_to_json({ident})::text"),
            note: Some(format!("{} array written as JSON text", column.declared)),
            ..plan(Decode::Text, DataType::Utf8)
        });
    }
    Ok(match column.base.as_str() {
        "bool" => plan(Decode::Bool, DataType::Boolean),
        "int2" => plan(Decode::Int2, DataType::Int16),
        "int4" => plan(Decode::Int4, DataType::Int32),
        "int8" => plan(Decode::Int8, DataType::Int64),
        "float4" => plan(Decode::Float4, DataType::Float32),
        "float8" => plan(Decode::Float8, DataType::Float64),
        "text" | "varchar" | "bpchar" | "name" | "json" | "xml" | "citext" => {
            plan(Decode::Text, DataType::Utf8)
        }
        "jsonb" => plan(Decode::Jsonb, DataType::Utf8),
        "bytea" => plan(Decode::Bytea, DataType::Binary),
        "date" => plan(Decode::Date, DataType::Date32),
        "timestamp" => plan(
            Decode::Timestamp,
            DataType::Timestamp(TimeUnit::Microsecond, None),
        ),
        "timestamptz" => plan(
            Decode::TimestampTz,
            DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from(crate::typing::UTC))),
        ),
        "time" => plan(Decode::Time, DataType::Time64(TimeUnit::Microsecond)),
        // The session's intervalstyle is iso_8601 (see the reader), so the text is a standard duration.
        "interval" => ColumnPlan {
            select: format!("{ident}::text"),
            ..plan(Decode::Text, DataType::Utf8)
        },
        "uuid" => plan(Decode::Uuid, DataType::Utf8),
        "numeric" => {
            let declared = numeric_typmod(column.typmod).filter(|(p, _)| *p <= 38);
            match declared {
                // numeric(2,5) (scale above precision, which PostgreSQL accepts) holds values
                // below 10^-3: decimal(5,5) holds them all exactly.
                Some((precision, scale)) if scale as u8 > precision => ColumnPlan {
                    note: Some(format!(
                        "{} written as decimal({scale},{scale}): its scale exceeds its precision",
                        column.declared
                    )),
                    ..plan(
                        Decode::Numeric {
                            precision: scale as u8,
                            scale,
                        },
                        DataType::Decimal128(scale as u8, scale),
                    )
                },
                Some((precision, scale)) => plan(
                    Decode::Numeric { precision, scale },
                    DataType::Decimal128(precision, scale),
                ),
                None if unconstrained_numeric.trim().eq_ignore_ascii_case("text") => ColumnPlan {
                    note: Some(format!(
                        "{} written as exact text (postgres.unconstrained_numeric: text)",
                        column.declared
                    )),
                    ..plan(Decode::NumericText, DataType::Utf8)
                },
                None => match parse_type_name(unconstrained_numeric) {
                    Some(DataType::Decimal128(precision, scale)) => plan(
                        Decode::Numeric { precision, scale },
                        DataType::Decimal128(precision, scale),
                    ),
                    _ => {
                        return Err(format!(
                            "postgres.unconstrained_numeric is '{unconstrained_numeric}'; use text or decimal(p,s)"
                        ));
                    }
                },
            }
        }
        _ => ColumnPlan {
            select: format!("{ident}::text"),
            note: Some(format!(
                "column '{}' of type {} written as text",
                column.name, column.declared
            )),
            ..plan(Decode::Text, DataType::Utf8)
        },
    })
}

/// Precision and scale from a `numeric` typmod; `None` when unconstrained.
fn numeric_typmod(typmod: i32) -> Option<(u8, i8)> {
    if typmod < 4 {
        return None;
    }
    let packed = typmod - 4;
    let precision = ((packed >> 16) & 0xffff) as u8;
    let scale = (packed & 0xffff) as i16;
    (0..=38)
        .contains(&scale)
        .then_some((precision, scale as i8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(base: &str, declared: &str, typmod: i32) -> PgColumn {
        PgColumn {
            name: "c".into(),
            declared: declared.into(),
            base: base.into(),
            category: if base.starts_with('_') {
                "A".into()
            } else {
                "X".into()
            },
            typmod,
        }
    }

    fn mapped(base: &str, declared: &str, typmod: i32) -> DataType {
        plan_column(&column(base, declared, typmod), "text")
            .unwrap()
            .data_type
    }

    #[test]
    fn the_mapping_table_holds() {
        assert_eq!(mapped("int8", "bigint", -1), DataType::Int64);
        assert_eq!(mapped("int2", "smallint", -1), DataType::Int16);
        assert_eq!(mapped("float4", "real", -1), DataType::Float32);
        // numeric(12,2): typmod = (12 << 16 | 2) + 4
        assert_eq!(
            mapped("numeric", "numeric(12,2)", (12 << 16 | 2) + 4),
            DataType::Decimal128(12, 2)
        );
        assert_eq!(mapped("numeric", "numeric", -1), DataType::Utf8);
        assert_eq!(
            mapped("numeric", "numeric(50,2)", (50 << 16 | 2) + 4),
            DataType::Utf8
        );
        assert_eq!(mapped("bpchar", "character(5)", 9), DataType::Utf8);
        assert_eq!(
            mapped("timestamptz", "timestamp with time zone", -1),
            DataType::Timestamp(TimeUnit::Microsecond, Some(crate::typing::UTC.into()))
        );
        assert_eq!(
            mapped("timestamp", "timestamp without time zone", -1),
            DataType::Timestamp(TimeUnit::Microsecond, None)
        );
        assert_eq!(mapped("date", "date", -1), DataType::Date32);
        assert_eq!(mapped("bytea", "bytea", -1), DataType::Binary);
        assert_eq!(mapped("interval", "interval", -1), DataType::Utf8);
    }

    #[test]
    fn unconstrained_numeric_follows_the_declared_policy() {
        let plan = plan_column(&column("numeric", "numeric", -1), "decimal(38,10)").unwrap();
        assert_eq!(plan.data_type, DataType::Decimal128(38, 10));
        assert!(plan_column(&column("numeric", "numeric", -1), "float").is_err());
    }

    #[test]
    fn arrays_and_unknown_types_become_text_with_a_note() {
        let array = plan_column(&column("_int4", "integer[]", -1), "text").unwrap();
        assert_eq!(array.select, "array_to_json(\"c\")::text");
        assert!(array.note.is_some());
        let other = plan_column(&column("mood", "mood", -1), "text").unwrap();
        assert_eq!(other.select, "\"c\"::text");
        assert_eq!(other.data_type, DataType::Utf8);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
