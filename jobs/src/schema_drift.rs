//! Schema drift between runs. New source columns are ignored or added as the dataset says;
//! columns that disappeared fail the run (a renamed header must not replace a snapshot with
//! nulls) or, with `missing_columns: null`, are kept and filled with nulls; a changed type is an
//! error, never a silent cast.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, new_null_array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use carga_config::{MissingColumnPolicy, NewColumnPolicy};

use crate::error::{JobError, Result};
use crate::typing::describe;

/// How each output column is produced from a source batch.
#[derive(Debug)]
pub struct SchemaPlan {
    pub output: SchemaRef,
    /// For each output column: the source column index, or `None` for a column of nulls.
    sources: Vec<Option<usize>>,
    /// Human-readable changes against the previous schema, for the validation report.
    pub changes: Vec<String>,
}

impl SchemaPlan {
    pub fn new(
        dataset: &str,
        source: &Schema,
        previous: Option<&Schema>,
        policy: NewColumnPolicy,
        missing: MissingColumnPolicy,
    ) -> Result<Self> {
        let Some(previous) = previous else {
            return Ok(Self {
                output: Arc::new(source.clone()),
                sources: (0..source.fields().len()).map(Some).collect(),
                changes: Vec::new(),
            });
        };
        let mut fields = Vec::new();
        let mut sources = Vec::new();
        let mut changes = Vec::new();
        let mut type_errors = Vec::new();
        let mut missing_columns = Vec::new();
        for old in previous.fields() {
            match source.index_of(old.name()) {
                Ok(i) => {
                    let new_type = source.field(i).data_type();
                    if compatible(old.data_type(), new_type) {
                        fields.push(old.as_ref().clone().with_nullable(true));
                        sources.push(Some(i));
                    } else if old.data_type() == &DataType::Null {
                        changes.push(format!(
                            "column '{}' now has values of type {}",
                            old.name(),
                            describe(new_type)
                        ));
                        fields.push(Field::new(old.name(), new_type.clone(), true));
                        sources.push(Some(i));
                    } else {
                        type_errors.push(format!(
                            "column '{}' was {} in previous runs and is now {}",
                            old.name(),
                            describe(old.data_type()),
                            describe(new_type)
                        ));
                    }
                }
                Err(_) => {
                    missing_columns.push(old.name().clone());
                    changes.push(format!(
                        "column '{}' is missing from the source; written as nulls",
                        old.name()
                    ));
                    fields.push(old.as_ref().clone().with_nullable(true));
                    sources.push(None);
                }
            }
        }
        if !type_errors.is_empty() {
            return Err(JobError::SchemaDrift {
                dataset: dataset.to_owned(),
                message: format!(
                    "{} (fix the source, or pin the type in the spec's `schema:` section)",
                    type_errors.join("; ")
                ),
            });
        }
        if !missing_columns.is_empty() && missing == MissingColumnPolicy::Fail {
            let new: Vec<&str> = source
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .filter(|n| previous.index_of(n).is_err())
                .collect();
            let renamed = if new.is_empty() {
                String::new()
            } else {
                format!(" (the source has new columns {}: renamed?)", new.join(", "))
            };
            return Err(JobError::SchemaDrift {
                dataset: dataset.to_owned(),
                message: format!(
                    "column(s) {} of the previous runs are missing from the source{renamed}; fix the source, or set missing_columns: null to write them as nulls",
                    missing_columns
                        .iter()
                        .map(|c| format!("'{c}'"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        for (i, field) in source.fields().iter().enumerate() {
            if previous.index_of(field.name()).is_ok() {
                continue;
            }
            match policy {
                NewColumnPolicy::Add => {
                    changes.push(format!(
                        "new column '{}' ({}) added",
                        field.name(),
                        describe(field.data_type())
                    ));
                    fields.push(field.as_ref().clone().with_nullable(true));
                    sources.push(Some(i));
                }
                NewColumnPolicy::Ignore => {
                    changes.push(format!(
                        "new column '{}' ignored (new_columns: ignore)",
                        field.name()
                    ));
                }
            }
        }
        Ok(Self {
            output: Arc::new(Schema::new(fields)),
            sources,
            changes,
        })
    }

    pub fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = self
            .sources
            .iter()
            .zip(self.output.fields())
            .map(|(source, field)| match source {
                Some(i) if batch.column(*i).data_type() == &DataType::Null => {
                    new_null_array(field.data_type(), batch.num_rows())
                }
                Some(i) => batch.column(*i).clone(),
                None => new_null_array(field.data_type(), batch.num_rows()),
            })
            .collect();
        RecordBatch::try_new(self.output.clone(), columns)
            .map_err(|e| JobError::arrow("applying the dataset schema", e))
    }
}

/// Same type, or a column of nulls that can stand in for any type.
fn compatible(old: &DataType, new: &DataType) -> bool {
    new == &DataType::Null || old.equals_datatype(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array, StringArray};
    use carga_config::MissingColumnPolicy;

    fn schema(fields: &[(&str, DataType)]) -> Schema {
        Schema::new(
            fields
                .iter()
                .map(|(n, t)| Field::new(*n, t.clone(), true))
                .collect::<Vec<_>>(),
        )
    }

    fn batch(schema: &Schema) -> RecordBatch {
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Int64 => Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
                _ => Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef,
            })
            .collect();
        RecordBatch::try_new(Arc::new(schema.clone()), columns).unwrap()
    }

    #[test]
    fn new_columns_are_ignored_or_added_as_configured() {
        let previous = schema(&[("id", DataType::Int64)]);
        let source = schema(&[("id", DataType::Int64), ("extra", DataType::Utf8)]);
        let ignore = SchemaPlan::new(
            "d",
            &source,
            Some(&previous),
            NewColumnPolicy::Ignore,
            MissingColumnPolicy::Null,
        )
        .unwrap();
        assert_eq!(ignore.apply(&batch(&source)).unwrap().num_columns(), 1);
        assert!(ignore.changes[0].contains("ignored"));
        let add = SchemaPlan::new(
            "d",
            &source,
            Some(&previous),
            NewColumnPolicy::Add,
            MissingColumnPolicy::Null,
        )
        .unwrap();
        let out = add.apply(&batch(&source)).unwrap();
        assert_eq!(out.schema().field(1).name(), "extra");
    }

    #[test]
    fn missing_columns_become_nulls_in_the_old_position() {
        let previous = schema(&[("id", DataType::Int64), ("name", DataType::Utf8)]);
        let source = schema(&[("name", DataType::Utf8)]);
        let plan = SchemaPlan::new(
            "d",
            &source,
            Some(&previous),
            NewColumnPolicy::Ignore,
            MissingColumnPolicy::Null,
        )
        .unwrap();
        let out = plan.apply(&batch(&source)).unwrap();
        assert_eq!(out.schema().field(0).name(), "id");
        assert_eq!(out.column(0).null_count(), 2);
    }

    #[test]
    fn missing_columns_fail_by_default_naming_them_and_the_new_ones() {
        let previous = schema(&[("ciudad", DataType::Utf8), ("cantidad", DataType::Int64)]);
        let source = schema(&[("city", DataType::Utf8), ("qty", DataType::Int64)]);
        let err = SchemaPlan::new(
            "ventas",
            &source,
            Some(&previous),
            NewColumnPolicy::Ignore,
            MissingColumnPolicy::Fail,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("'ciudad', 'cantidad'") && err.contains("city, qty: renamed?"),
            "{err}"
        );
        assert!(err.contains("missing_columns: null"), "{err}");
    }

    #[test]
    fn type_changes_are_errors_naming_the_column() {
        let previous = schema(&[("id", DataType::Int64)]);
        let source = schema(&[("id", DataType::Utf8)]);
        let err = SchemaPlan::new(
            "ventas",
            &source,
            Some(&previous),
            NewColumnPolicy::Add,
            MissingColumnPolicy::Null,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("ventas") && msg.contains("'id'") && msg.contains("int64"),
            "{msg}"
        );
    }
}
