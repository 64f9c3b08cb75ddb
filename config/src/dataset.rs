//! The dataset specification: one YAML document per dataset, the Rust twin of a `dataset_crons` row.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::source::SourceSpec;

/// What to extract, how, and when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// Stable identifier; becomes the folder under `raw/`. Letters, digits, `-` and `_`.
    pub id: String,
    #[serde(default)]
    pub description: Option<String>,
    pub source: SourceSpec,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub trigger: Trigger,
    /// Cron expression for `timed_pull` datasets (used by the scheduler).
    #[serde(default)]
    pub cron: Option<String>,
    /// IANA time zone the cron is read in (`America/Bogota`); UTC when absent.
    #[serde(default, alias = "timeZone")]
    pub time_zone: Option<String>,
    /// Secret id of the connection credentials (database and API sources).
    #[serde(default, rename = "connection_id", alias = "connectionId")]
    pub connection_id: Option<String>,
    /// What to do when the source grows a column the previous runs did not have.
    #[serde(default, alias = "IgnoreColumns")]
    pub new_columns: NewColumnPolicy,
    /// What to do when a column of the previous runs is missing from the source (a renamed
    /// header, a dropped column).
    #[serde(default)]
    pub missing_columns: MissingColumnPolicy,
    /// Columns whose values identify a row; used for duplicate detection and the delta cursor tie-break.
    #[serde(default)]
    pub key: Vec<String>,
    /// Column holding the row's change time; the delta cursor's first component.
    #[serde(default)]
    pub timestamp_column: Option<String>,
    /// Delta runs re-read this far behind the watermark (`90s`, `15m`, `2h`, `1d`) to catch rows
    /// committed late; rows already delivered are recognised and not repeated.
    #[serde(default)]
    pub lookback: Option<String>,
    /// Explicit column types that win over inference, e.g. `amount: decimal(12,2)`.
    #[serde(default)]
    pub schema: BTreeMap<String, String>,
    #[serde(default)]
    pub on_malformed_row: MalformedRowPolicy,
    /// SQL run over the source as it streams, reading the table `source`:
    /// `SELECT id, lower(email) AS email, sha256(phone) AS phone FROM source WHERE country = 'MX'`.
    /// Its output is what the run checks, filters by the cursor and writes.
    #[serde(default)]
    pub transform: Option<String>,
    /// A run that reads no data rows is refused unless this is set.
    #[serde(default)]
    pub allow_empty: bool,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MissingColumnPolicy {
    /// The run fails naming the columns (a renamed header must not replace a snapshot with nulls).
    #[default]
    Fail,
    /// The missing columns are written as nulls and listed in the report.
    Null,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Only rows after the stored watermark.
    Delta,
    /// Reload everything and replace the previous snapshot.
    #[default]
    Complete,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    #[default]
    TimedPull,
    Callback,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NewColumnPolicy {
    /// Keep the schema of the previous runs; new source columns are dropped (and reported).
    #[default]
    Ignore,
    /// New source columns are added to the output schema.
    Add,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MalformedRowPolicy {
    /// The first malformed row fails the run, naming the row and the reason.
    #[default]
    Fail,
    /// Malformed rows are left out, counted, and listed (row numbers) in the validation report.
    Skip,
}

impl DatasetSpec {
    /// Reads a spec and resolves a relative local `source.location` against the spec's folder.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut spec: DatasetSpec =
            serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?;
        if spec.source.is_local_file()
            && let Some(dir) = path.parent()
            && let Some(location) = spec.source.location_mut()
            && is_local_relative(location)
        {
            *location = dir.join(&*location).display().to_string();
        }
        spec.validate()?;
        Ok(spec)
    }

    /// One spec per table of a multi-table dataset (itself when it names one table): id
    /// `<id>/<table>` with the table name's other characters as `_` (`public.pedidos` →
    /// `ventas/public_pedidos`), so each table keeps its own manifests under `raw/<id>/<table>/`.
    pub fn per_table(&self) -> Vec<DatasetSpec> {
        if self.source.tables().is_empty() {
            return vec![self.clone()];
        }
        self.source
            .tables()
            .iter()
            .map(|table| {
                let mut spec = self.clone();
                spec.source = self.source.for_table(table);
                let folder: String = table
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                spec.id = format!("{}/{folder}", self.id);
                spec
            })
            .collect()
    }

    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let spec = Self::parse_yaml(text)?;
        spec.validate()?;
        Ok(spec)
    }

    /// The spec as written, not yet `validate`d (for callers that check other things first,
    /// such as whether anybody reads its format).
    pub fn parse_yaml(text: &str) -> Result<Self, ConfigError> {
        serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
            path: "<inline>".into(),
            source,
        })
    }

    /// Checks that can be made without touching the source. Delta needs a cursor; timed pulls need a cron.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::InvalidDataset {
            dataset: self.id.clone(),
            message,
        };
        // `<id>/<table>` is what `per_table` makes of a multi-table dataset.
        let valid_segment = |segment: &str| {
            !segment.is_empty()
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !self.id.split('/').all(valid_segment) || self.id.split('/').count() > 2 {
            return Err(invalid(
                "id must be non-empty and use only letters, digits, '-' and '_'".into(),
            ));
        }
        if self.mode == Mode::Delta {
            if self.timestamp_column.is_none() {
                return Err(invalid(
                    "mode 'delta' needs `timestamp_column` (the column the watermark follows)"
                        .into(),
                ));
            }
            if self.key.is_empty() {
                return Err(invalid(
                    "mode 'delta' needs `key` (the incremental key that orders rows sharing a timestamp)"
                        .into(),
                ));
            }
        }
        if let Some(text) = &self.lookback {
            if parse_duration_seconds(text).is_none() {
                return Err(invalid(format!(
                    "lookback '{text}' is not a duration like 90s, 15m, 2h or 1d, of at most 366d"
                )));
            }
            if self.timestamp_column.is_none() {
                return Err(invalid("lookback needs `timestamp_column`".into()));
            }
        }
        if let Some(sql) = &self.transform
            && !sql.to_ascii_lowercase().contains("source")
        {
            return Err(invalid(
                "transform is SQL that reads the table `source` (SELECT ... FROM source ...)"
                    .into(),
            ));
        }
        if self.trigger == Trigger::TimedPull && self.cron.as_deref().is_none_or(str::is_empty) {
            return Err(invalid(
                "trigger 'timed_pull' needs `cron`; use trigger 'callback' for on-demand datasets"
                    .into(),
            ));
        }
        self.source.validate().map_err(invalid)?;
        if let Some(selection) = self.source.selection() {
            let has_table = selection.table.is_some_and(|t| !t.is_empty());
            match (has_table, selection.tables.is_empty()) {
                (false, true) => {
                    return Err(invalid(
                        "a database source needs source.table (or source.tables)".into(),
                    ));
                }
                (true, false) => {
                    return Err(invalid(
                        "give source.table or source.tables, not both".into(),
                    ));
                }
                _ => {}
            }
            if selection.tables.iter().any(|t| t.trim().is_empty()) {
                return Err(invalid("source.tables has an empty name".into()));
            }
            if self.connection_id.as_deref().is_none_or(str::is_empty) {
                return Err(invalid(
                    "a database source needs connection_id (the secret holding its credentials)"
                        .into(),
                ));
            }
        } else if self.source.location().is_some_and(str::is_empty) {
            return Err(invalid("source.location is empty".into()));
        }
        if let SourceSpec::Rest(rest) = &self.source {
            rest.validate(
                self.connection_id.as_deref(),
                self.timestamp_column.is_some(),
            )
            .map_err(invalid)?;
        }
        Ok(())
    }

    /// The lookback window in seconds, if one is set (validated in `validate`).
    pub fn lookback_seconds(&self) -> Option<u64> {
        self.lookback.as_deref().and_then(parse_duration_seconds)
    }

    /// Columns that form the delta cursor, timestamp first, in comparison order.
    pub fn cursor_columns(&self) -> Vec<String> {
        self.timestamp_column
            .iter()
            .chain(self.key.iter())
            .cloned()
            .collect()
    }
}

/// `90s`, `15m`, `2h`, `1d` as seconds.
fn parse_duration_seconds(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let unit_seconds = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    number
        .checked_mul(unit_seconds)
        .filter(|&s| s > 0 && s <= MAX_LOOKBACK_SECONDS)
}

/// A lookback longer than a year is a typo (and would overflow the microsecond arithmetic).
const MAX_LOOKBACK_SECONDS: u64 = 366 * 86_400;

fn is_local_relative(location: &str) -> bool {
    !location.contains("://") && !Path::new(location).is_absolute()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{ExcelOptions, HeaderRow, Pagination, RestAuth, RestOptions};

    fn rest_options(spec: &DatasetSpec) -> &RestOptions {
        match &spec.source {
            SourceSpec::Rest(rest) => &rest.rest,
            other => panic!("not a rest source: {other:?}"),
        }
    }

    fn excel_options(spec: &DatasetSpec) -> &ExcelOptions {
        match &spec.source {
            SourceSpec::Excel(excel) => &excel.excel,
            other => panic!("not an excel source: {other:?}"),
        }
    }

    const MINIMAL: &str =
        "id: ventas\nsource: {format: csv, location: ventas.csv}\ncron: '0 7 * * *'\n";

    #[test]
    fn minimal_spec_takes_defaults() {
        let spec = DatasetSpec::from_yaml(MINIMAL).unwrap();
        assert_eq!(spec.mode, Mode::Complete);
        assert_eq!(spec.trigger, Trigger::TimedPull);
        assert_eq!(spec.new_columns, NewColumnPolicy::Ignore);
        let SourceSpec::Csv(csv) = &spec.source else {
            panic!("{:?}", spec.source)
        };
        assert_eq!(csv.csv.delimiter, ',');
        assert_eq!(spec.on_malformed_row, MalformedRowPolicy::Fail);
    }

    #[test]
    fn partitions_are_read_by_postgres_and_mysql_and_checked() {
        let with = |format: &str, partitions: &str| {
            DatasetSpec::from_yaml(&format!(
                "id: p\nsource:\n  format: {format}\n  table: s.t\n  partitions: {partitions}\nconnection_id: c\ntrigger: callback\n"
            ))
        };
        let spread = with("mariadb", "{column: id, count: 8, across_workers: true}").unwrap();
        let SourceSpec::Mysql(table) = &spread.source else {
            panic!("{:?}", spread.source)
        };
        let partitions = table.partitions.as_ref().unwrap();
        assert!(partitions.across_workers);
        assert_eq!((partitions.count, partitions.attempts), (8, 3));
        assert!(with("postgres", "{column: id, count: 8}").is_ok());
        let err = with("mssql", "{column: id, count: 8}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("postgres, mysql and mariadb"), "{err}");
        let err = with("mysql", "{column: id, count: 1}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("between 2 and 1024"), "{err}");
        assert!(with("mysql", "{column: id, count: 4, spread: true}").is_err());
    }

    #[test]
    fn delta_without_cursor_is_refused_with_a_reason() {
        let err = DatasetSpec::from_yaml(&format!("{MINIMAL}mode: delta\n")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("ventas") && msg.contains("timestamp_column"),
            "{msg}"
        );
        let err = DatasetSpec::from_yaml(&format!("{MINIMAL}mode: delta\ntimestamp_column: ts\n"))
            .unwrap_err();
        assert!(err.to_string().contains("`key`"), "{err}");
        DatasetSpec::from_yaml(&format!(
            "{MINIMAL}mode: delta\ntimestamp_column: ts\nkey: [id]\n"
        ))
        .unwrap();
    }

    #[test]
    fn lookback_is_a_duration_and_needs_a_timestamp() {
        let base = format!("{MINIMAL}mode: delta\ntimestamp_column: ts\nkey: [id]\n");
        let spec = DatasetSpec::from_yaml(&format!("{base}lookback: 15m\n")).unwrap();
        assert_eq!(spec.lookback_seconds(), Some(900));
        assert!(DatasetSpec::from_yaml(&format!("{base}lookback: soon\n")).is_err());
        assert!(DatasetSpec::from_yaml(&format!("{base}lookback: 0s\n")).is_err());
        assert_eq!(parse_duration_seconds("2d"), Some(172_800));
        let huge = DatasetSpec::from_yaml(&format!("{base}lookback: 99999999999999999d\n"));
        assert!(huge.unwrap_err().to_string().contains("at most 366d"));
        assert_eq!(parse_duration_seconds("367d"), None);
    }

    #[test]
    fn rest_sources_are_checked_before_any_request() {
        let rest = |extra: &str| {
            DatasetSpec::from_yaml(&format!(
                "id: api\ntrigger: callback\nsource:\n  format: rest\n  location: https://api.test/v1/items\n{extra}"
            ))
        };
        let spec = rest("  rest: {auth: {type: oauth2, scopes: [a]}, pagination: {style: offset, limit: 50}}\nconnection_id: prov\n").unwrap();
        assert!(matches!(
            rest_options(&spec).auth,
            RestAuth::Oauth2ClientCredentials { .. }
        ));
        assert_eq!(
            rest_options(&spec).pagination,
            Pagination::Offset {
                param: "offset".into(),
                limit_param: "limit".into(),
                limit: 50
            }
        );
        let refused = [
            ("  rest: {auth: {type: bearer}}\n", "needs connection_id"),
            ("  rest: {pagination: {style: cursor}}\n", "cursor_path"),
            (
                "  rest: {pagination: {style: offset, limit: 0}}\n",
                "at least 1",
            ),
            (
                "  rest: {incremental: {param: since}}\n",
                "timestamp_column",
            ),
            ("  rest: {max_pages: 0}\n", "at least 1"),
            (
                "  rest: {auth: {type: api_key, header: X, query_param: k}}\nconnection_id: c\n",
                "not both",
            ),
        ];
        for (extra, expected) in refused {
            let err = rest(extra).unwrap_err().to_string();
            assert!(err.contains(expected), "{extra}: {err}");
        }
        let err = DatasetSpec::from_yaml(
            "id: api\ntrigger: callback\nsource: {format: rest, location: 'ftp://x/y'}\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("http(s) URL"), "{err}");
    }

    #[test]
    fn timed_pull_needs_a_cron_but_callback_does_not() {
        let no_cron = "id: x\nsource: {format: json, location: a.json}\n";
        assert!(DatasetSpec::from_yaml(no_cron).is_err());
        DatasetSpec::from_yaml(&format!("{no_cron}trigger: callback\n")).unwrap();
    }

    #[test]
    fn unknown_fields_and_bad_ids_are_refused() {
        assert!(DatasetSpec::from_yaml(&format!("{MINIMAL}moda: delta\n")).is_err());
        let bad_id = MINIMAL.replace("ventas", "../etc");
        assert!(DatasetSpec::from_yaml(&bad_id).is_err());
    }

    #[test]
    fn option_blocks_of_another_format_are_refused_by_name() {
        let pg = "id: p\nsource: {format: postgres, table: t, csv: {delimiter: ';'}}\nconnection_id: c\ntrigger: callback\n";
        let err = DatasetSpec::from_yaml(pg).unwrap_err().to_string();
        assert!(
            err.contains("source.csv does not apply to a postgres source"),
            "{err}"
        );
        let file_with_table =
            "id: f\nsource: {format: csv, location: a.csv, table: t}\ntrigger: callback\n";
        let err = DatasetSpec::from_yaml(file_with_table)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "source.table does not apply to a csv source (it belongs to database sources)"
            ),
            "{err}"
        );
        let plugin = DatasetSpec::from_yaml(
            "id: k\nsource: {format: kafka, topic: orders}\ntrigger: callback\n",
        )
        .unwrap();
        assert_eq!(plugin.source.format_name(), "kafka");
        let round_trip: DatasetSpec =
            serde_yaml::from_str(&serde_yaml::to_string(&plugin).unwrap()).unwrap();
        assert_eq!(round_trip, plugin);
        let mistyped = DatasetSpec::from_yaml(
            "id: c\nsource: {format: csv, location: a.csv, csv: {delimitr: ';'}}\ntrigger: callback\n",
        )
        .unwrap_err()
        .to_string();
        assert!(mistyped.contains("delimitr"), "{mistyped}");
        let rest_on_json = "id: j\nsource: {format: json, location: a.json, rest: {max_pages: 3}}\ntrigger: callback\n";
        assert!(
            DatasetSpec::from_yaml(rest_on_json)
                .unwrap_err()
                .to_string()
                .contains("source.rest")
        );
        DatasetSpec::from_yaml("id: c\nsource: {format: csv, location: a.csv, csv: {delimiter: ';'}}\ntrigger: callback\n").unwrap();
    }

    #[test]
    fn excel_header_row_is_auto_or_a_number() {
        let spec = |extra: &str| {
            DatasetSpec::from_yaml(&format!(
                "id: x\nsource: {{format: excel, location: a.xlsx{extra}}}\ntrigger: callback\n"
            ))
        };
        let header_row = |extra: &str| excel_options(&spec(extra).unwrap()).header_row;
        assert_eq!(header_row(""), HeaderRow::Auto);
        assert_eq!(header_row(", excel: {header_row: 3}"), HeaderRow::Row(3));
        assert_eq!(header_row(", excel: {header_row: auto}"), HeaderRow::Auto);
        assert!(spec(", excel: {header_row: 0}").is_err());
        assert!(spec(", excel: {header_row: top}").is_err());
    }

    #[test]
    fn seed_design_field_names_are_accepted() {
        let spec = DatasetSpec::from_yaml(&format!(
            "{MINIMAL}connectionId: secret-1\nIgnoreColumns: add\n"
        ))
        .unwrap();
        assert_eq!(spec.connection_id.as_deref(), Some("secret-1"));
        assert_eq!(spec.new_columns, NewColumnPolicy::Add);
    }

    #[test]
    fn several_tables_become_one_dataset_each() {
        let spec = DatasetSpec::from_yaml(
            "id: ventas\nsource: {format: postgres, tables: [public.pedidos, \"Clientes\"]}\nconnection_id: pg\ntrigger: callback\n",
        )
        .unwrap();
        let ids: Vec<String> = spec.per_table().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["ventas/public_pedidos", "ventas/Clientes"]);
        let each = &spec.per_table()[0];
        assert_eq!(each.source.table(), "public.pedidos");
        assert!(each.source.tables().is_empty());
        each.validate().unwrap();
        let both = DatasetSpec::from_yaml(
            "id: v\nsource: {format: postgres, table: a, tables: [b]}\nconnection_id: pg\ntrigger: callback\n",
        )
        .unwrap_err();
        assert!(both.to_string().contains("not both"), "{both}");
        let bad_id = DatasetSpec::from_yaml(
            "id: a/b/c\nsource: {format: csv, location: x.csv}\ntrigger: callback\n",
        );
        assert!(bad_id.is_err());
    }
}
