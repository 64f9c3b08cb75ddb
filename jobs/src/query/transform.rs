//! A dataset's SQL transform on ingest (`transform: "SELECT id, lower(email) AS email FROM
//! source WHERE country = 'MX'"`): DataFusion runs the query over the source as it streams (a
//! `StreamingTable` named `source`), and the run's own operators (schema plan, checks, delta
//! cursor, the encrypted sink) take its output. Projections, filters, casts, renames and masking
//! (`sha256`, `regexp_replace`, ...) are DataFusion's SQL.
//!
//! A SQL database source evaluates the transform's simple filters itself: the query is planned
//! once against a probe table of the source's schema, the filters DataFusion would push into a
//! scan are kept when they are plain comparisons Carga can render in the database's dialect, and
//! the source adds them to its `WHERE`. DataFusion applies every filter again on what arrives, so
//! a filter the database evaluates differently can only let more rows through, never fewer.

use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::sql::unparser::Unparser;
use datafusion::sql::unparser::dialect::{Dialect, MySqlDialect, PostgreSqlDialect};

use super::{query_error, session};
use crate::error::{JobError, Result};
use crate::sources::SourceReader;
use crate::sources::scan::OnePartition;

/// The table name a transform reads from.
pub const SOURCE_TABLE: &str = "source";

/// The SQL dialect a database source evaluates pushed filters in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlDialect {
    Postgres,
    Mysql,
}

/// The transform's filters a database source with `schema` can evaluate itself, rendered in its
/// dialect and joined with `AND`; `None` when there is none.
pub(crate) async fn pushable_filter(
    sql: &str,
    schema: SchemaRef,
    dialect: SqlDialect,
    memory_mib: usize,
) -> Result<Option<String>> {
    let ctx = session(None, memory_mib)?;
    let probe = Arc::new(FilterProbe {
        schema,
        seen: Mutex::new(Vec::new()),
    });
    ctx.register_table(SOURCE_TABLE, probe.clone())
        .map_err(|e| query_error("transform", e))?;
    let frame = ctx
        .sql(sql)
        .await
        .map_err(|e| query_error("transform", e))?;
    frame
        .create_physical_plan()
        .await
        .map_err(|e| query_error("transform", e))?;
    let seen = probe.seen.lock().expect("probe lock").clone();
    let rendered: Vec<String> = seen
        .iter()
        .filter_map(|expr| render(expr, dialect))
        .map(|sql| format!("({sql})"))
        .collect();
    Ok((!rendered.is_empty()).then(|| rendered.join(" AND ")))
}

/// `reader` through the spec's transform, when it has one.
pub(crate) async fn apply_if_any(
    spec: &carga_config::DatasetSpec,
    reader: SourceReader,
    memory_mib: usize,
) -> Result<SourceReader> {
    match &spec.transform {
        Some(sql) => apply(reader, sql, memory_mib)
            .await
            .map_err(|e| refused(&spec.id, e)),
        None => Ok(reader),
    }
}

/// `reader`'s batches through the transform: the same reader, now yielding the query's
/// physical plan over them (and its schema), which the run plan then continues; the source's own
/// end (`finish`) is unchanged.
pub(crate) async fn apply(
    mut reader: SourceReader,
    sql: &str,
    memory_mib: usize,
) -> Result<SourceReader> {
    let ctx = session(None, memory_mib)?;
    let schema = reader.schema.clone();
    let partition = Arc::new(OnePartition::new(schema.clone(), reader.take_batches()));
    let table = StreamingTable::try_new(schema, vec![partition])
        .map_err(|e| query_error("transform", e))?;
    ctx.register_table(SOURCE_TABLE, Arc::new(table))
        .map_err(|e| query_error("transform", e))?;
    let frame = ctx
        .sql(sql)
        .await
        .map_err(|e| query_error("transform", e))?;
    let plan = frame
        .create_physical_plan()
        .await
        .map_err(|e| query_error("transform", e))?;
    reader.set_plan(plan, ctx.task_ctx());
    Ok(reader)
}

/// A table of the source's schema that records the filters DataFusion offers it.
#[derive(Debug)]
struct FilterProbe {
    schema: SchemaRef,
    seen: Mutex<Vec<Expr>>,
}

#[async_trait::async_trait]
impl TableProvider for FilterProbe {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if plain(f, &self.schema) {
                    // Inexact: DataFusion filters again whatever the source returns.
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.seen
            .lock()
            .expect("probe lock")
            .extend(filters.iter().cloned());
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        Ok(Arc::new(EmptyExec::new(schema)))
    }
}

/// Whether a filter is a plain comparison both engines evaluate alike: columns and literals
/// joined by `=`, `<>`, `AND`, `OR`, `NOT`, `IS [NOT] NULL`, `IN`, and `<`/`>` (or `BETWEEN`) on
/// numbers, dates and times only (text ordering depends on the database's collation).
fn plain(expr: &Expr, schema: &SchemaRef) -> bool {
    let ordered = |e: &Expr| match e {
        Expr::Column(c) => schema
            .field_with_name(&c.name)
            .map(|f| orders_alike(f.data_type()))
            .unwrap_or(false),
        Expr::Literal(..) => true,
        _ => false,
    };
    let operand = |e: &Expr| matches!(e, Expr::Column(_) | Expr::Literal(..));
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And | Operator::Or => plain(left, schema) && plain(right, schema),
            Operator::Eq | Operator::NotEq => operand(left) && operand(right),
            Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq => {
                ordered(left) && ordered(right)
            }
            _ => false,
        },
        Expr::Not(inner) => plain(inner, schema),
        Expr::IsNull(inner) | Expr::IsNotNull(inner) => matches!(**inner, Expr::Column(_)),
        Expr::InList(list) => {
            matches!(*list.expr, Expr::Column(_))
                && list.list.iter().all(|e| matches!(e, Expr::Literal(..)))
        }
        Expr::Between(between) => {
            ordered(&between.expr) && ordered(&between.low) && ordered(&between.high)
        }
        _ => false,
    }
}

fn orders_alike(data_type: &DataType) -> bool {
    data_type.is_numeric()
        || matches!(
            data_type,
            DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _) | DataType::Time64(_)
        )
}

/// A plain filter in the database's SQL.
fn render(expr: &Expr, dialect: SqlDialect) -> Option<String> {
    let rendered = match dialect {
        SqlDialect::Postgres => unparse(expr, &PostgreSqlDialect {}),
        SqlDialect::Mysql => unparse(expr, &MySqlDialect {}),
    };
    if rendered.is_none() {
        tracing::debug!(%expr, "a transform filter stays in DataFusion");
    }
    rendered
}

fn unparse(expr: &Expr, dialect: &dyn Dialect) -> Option<String> {
    Unparser::new(dialect)
        .expr_to_sql(expr)
        .ok()
        .map(|sql| sql.to_string())
}

/// A transform that does not plan names the dataset and says what the SQL got wrong.
pub(crate) fn refused(dataset: &str, error: JobError) -> JobError {
    match error {
        JobError::Query { message, .. } => JobError::Refused {
            dataset: dataset.to_owned(),
            message: format!("transform: {message}"),
        },
        other => other,
    }
}
