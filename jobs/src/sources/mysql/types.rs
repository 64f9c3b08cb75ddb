//! MySQL / MariaDB → Arrow type mapping, in one table. Values travel in the text protocol and are
//! cast exactly (a value that does not parse fails the run, naming row and column).
//!
//! | MySQL / MariaDB | Arrow | notes |
//! |---|---|---|
//! | `tinyint`, `smallint`, `mediumint`, `int`, `bigint` | Int8, Int16, Int32, Int32, Int64 | `unsigned`: UInt8, UInt16, UInt32, UInt32, UInt64; `tinyint(1)` stays an integer |
//! | `decimal(p,s)`, p ≤ 38 | Decimal128(p,s) | exact |
//! | `decimal(p,s)`, p > 38 | Utf8 | exact digits |
//! | `float`, `double` | Float32, Float64 | |
//! | `bit(n)` | UInt64 | selected as `col + 0` |
//! | `char`, `varchar`, `*text`, `enum`, `set`, `json` | Utf8 | MariaDB's `json` is `longtext` |
//! | `binary`, `varbinary`, `*blob` | Binary | |
//! | `date` | Date32 | zero dates (`0000-00-00`) fail the row |
//! | `datetime(n)` | Timestamp(µs) | |
//! | `timestamp(n)` | Timestamp(µs, UTC) | the session's time zone is UTC |
//! | `time` | Utf8 | can exceed 24 h or be negative |
//! | `year` | Int16 | |
//! | anything else (geometry, …) | Utf8 | selected as `CAST(col AS CHAR)` |

use std::sync::Arc;

use arrow::datatypes::{DataType, TimeUnit};

/// A column as `information_schema.COLUMNS` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct MyColumn {
    pub name: String,
    /// `DATA_TYPE`, lowercase: `int`, `decimal`, `varchar`, ...
    pub data_type: String,
    /// `COLUMN_TYPE`: `int(10) unsigned`, `decimal(12,2)`, ...
    pub column_type: String,
    pub precision: Option<u64>,
    pub scale: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ColumnPlan {
    pub name: String,
    pub select: String,
    pub data_type: DataType,
    /// Raw bytes rather than text.
    pub binary: bool,
}

pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

pub fn plan_column(column: &MyColumn) -> ColumnPlan {
    let ident = quote_ident(&column.name);
    let unsigned = column.column_type.to_ascii_lowercase().contains("unsigned");
    let int =
        |signed: DataType, unsigned_type: DataType| if unsigned { unsigned_type } else { signed };
    let plan = |data_type: DataType| ColumnPlan {
        name: column.name.clone(),
        select: ident.clone(),
        data_type,
        binary: false,
    };
    match column.data_type.as_str() {
        "tinyint" => plan(int(DataType::Int8, DataType::UInt8)),
        "smallint" => plan(int(DataType::Int16, DataType::UInt16)),
        "mediumint" | "int" | "integer" => plan(int(DataType::Int32, DataType::UInt32)),
        "bigint" => plan(int(DataType::Int64, DataType::UInt64)),
        "decimal" | "numeric" => match (column.precision, column.scale) {
            (Some(p), Some(s)) if p <= 38 => plan(DataType::Decimal128(p as u8, s as i8)),
            _ => plan(DataType::Utf8),
        },
        "float" => plan(DataType::Float32),
        "double" | "real" => plan(DataType::Float64),
        "bit" => ColumnPlan {
            select: format!("{ident} + 0"),
            ..plan(DataType::UInt64)
        },
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set"
        | "json" | "time" => plan(DataType::Utf8),
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => ColumnPlan {
            binary: true,
            ..plan(DataType::Binary)
        },
        "date" => plan(DataType::Date32),
        "datetime" => plan(DataType::Timestamp(TimeUnit::Microsecond, None)),
        "timestamp" => plan(DataType::Timestamp(
            TimeUnit::Microsecond,
            Some(Arc::from(crate::typing::UTC)),
        )),
        "year" => plan(DataType::Int16),
        _ => ColumnPlan {
            select: format!("CAST({ident} AS CHAR)"),
            ..plan(DataType::Utf8)
        },
    }
}

/// A typed SQL expression for a watermark value held in the user variable `var`.
pub fn typed_variable(column: &MyColumn, var: &str) -> String {
    let unsigned = column.column_type.to_ascii_lowercase().contains("unsigned");
    match column.data_type.as_str() {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "year" | "bit"
            if unsigned =>
        {
            format!("CAST({var} AS UNSIGNED)")
        }
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "year" | "bit" => {
            format!("CAST({var} AS SIGNED)")
        }
        "decimal" | "numeric" => format!(
            "CAST({var} AS DECIMAL({}, {}))",
            column.precision.unwrap_or(65),
            column.scale.unwrap_or(0)
        ),
        "date" => format!("CAST({var} AS DATE)"),
        "datetime" | "timestamp" => format!("CAST({var} AS DATETIME(6))"),
        "float" | "double" | "real" => format!("CAST({var} AS DOUBLE)"),
        _ => var.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(
        data_type: &str,
        column_type: &str,
        precision: Option<u64>,
        scale: Option<u64>,
    ) -> MyColumn {
        MyColumn {
            name: "c".into(),
            data_type: data_type.into(),
            column_type: column_type.into(),
            precision,
            scale,
        }
    }

    #[test]
    fn the_mapping_table_holds() {
        let t = |dt: &str, ct: &str| plan_column(&column(dt, ct, None, None)).data_type;
        assert_eq!(t("int", "int(11)"), DataType::Int32);
        assert_eq!(t("int", "int(10) unsigned"), DataType::UInt32);
        assert_eq!(t("bigint", "bigint(20) unsigned"), DataType::UInt64);
        assert_eq!(t("tinyint", "tinyint(1)"), DataType::Int8);
        assert_eq!(
            t("datetime", "datetime(6)"),
            DataType::Timestamp(TimeUnit::Microsecond, None)
        );
        assert_eq!(t("longblob", "longblob"), DataType::Binary);
        assert_eq!(t("time", "time"), DataType::Utf8);
        assert_eq!(t("geometry", "geometry"), DataType::Utf8);
        let decimal = plan_column(&column("decimal", "decimal(12,2)", Some(12), Some(2)));
        assert_eq!(decimal.data_type, DataType::Decimal128(12, 2));
        let wide = plan_column(&column("decimal", "decimal(60,10)", Some(60), Some(10)));
        assert_eq!(wide.data_type, DataType::Utf8);
        assert_eq!(
            plan_column(&column("bit", "bit(3)", None, None)).select,
            "`c` + 0"
        );
        assert_eq!(
            plan_column(&column("point", "point", None, None)).select,
            "CAST(`c` AS CHAR)"
        );
    }

    #[test]
    fn watermark_variables_are_cast_to_the_column_type() {
        assert_eq!(
            typed_variable(&column("bigint", "bigint(20) unsigned", None, None), "@v1"),
            "CAST(@v1 AS UNSIGNED)"
        );
        assert_eq!(
            typed_variable(&column("datetime", "datetime(6)", None, None), "@v0"),
            "CAST(@v0 AS DATETIME(6))"
        );
        assert_eq!(
            typed_variable(&column("decimal", "decimal(12,2)", Some(12), Some(2)), "@v"),
            "CAST(@v AS DECIMAL(12, 2))"
        );
        assert_eq!(
            typed_variable(&column("varchar", "varchar(20)", None, None), "@v"),
            "@v"
        );
        assert_eq!(quote_ident("we`ird"), "`we``ird`");
    }
}
