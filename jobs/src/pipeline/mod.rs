//! The streaming part of a run, the same for one reader and for each chunk of a partitioned
//! read: one DataFusion plan from the source's scan (or a transform's plan over it) through the
//! schema plan, the checks and the delta cursor (`operators.rs`) into the destination's writer
//! (`part_sink.rs`), run by `stream`; the cursor a run starts with (`new_cursor`), and what an extraction produced
//! (`Extracted`) with the run-level rules applied once every row is read (`run_rules`).

mod operators;
mod part_sink;

use std::sync::Arc;

use arrow::array::{Array, RecordBatch, UInt64Array};
use carga_config::{DatasetSpec, MalformedRowPolicy, Mode};
use datafusion::datasource::sink::DataSinkExec;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{ExecutionPlan, collect, displayable};

use crate::delta::DeltaFilter;
use crate::destination::{Destination, PartWriter};
use crate::error::{JobError, Result};
use crate::query::plan_error;
use crate::schema_drift::SchemaPlan;
use crate::sink::PartFile;
use crate::sources::{ReaderEnd, SourceReader};
use crate::validation::{BatchChecks, ReadStats};
use operators::{ConformSchema, StepExec, StepState};
pub(crate) use part_sink::AfterBatch;
use part_sink::PartSink;

/// What the extraction produced before the report and the commit.
pub(crate) struct Extracted {
    pub plan: Arc<SchemaPlan>,
    pub checks: BatchChecks,
    pub cursor: Option<DeltaFilter>,
    pub rows: u64,
    pub stats: ReadStats,
    pub files: Vec<PartFile>,
}

impl Extracted {
    /// Applies the run-level rules (`run_rules`); a refused run removes the parts it wrote.
    pub(crate) async fn checked(
        mut self,
        spec: &DatasetSpec,
        destination: &dyn Destination,
        resumes_from_watermark: bool,
    ) -> Result<Self> {
        let stats = std::mem::take(&mut self.stats);
        match run_rules(
            spec,
            &self.checks,
            self.cursor.as_ref(),
            resumes_from_watermark,
            stats,
        ) {
            Ok(stats) => {
                self.stats = stats;
                Ok(self)
            }
            Err(e) => {
                destination.discard(&self.files).await;
                Err(e)
            }
        }
    }
}

/// The delta cursor of a run: filtering in delta mode; in complete mode only tracking (when a
/// cursor is declared), so a dataset can move to delta from where its snapshot ended.
pub(crate) fn new_cursor(
    spec: &DatasetSpec,
    plan: &SchemaPlan,
    floor: Option<&crate::delta::Watermark>,
    delivered: &[RecordBatch],
) -> Result<Option<DeltaFilter>> {
    let has_cursor = spec.timestamp_column.is_some() && !spec.key.is_empty();
    let lookback = spec.lookback_seconds();
    Ok(match (spec.mode, has_cursor) {
        (Mode::Delta, _) => Some(DeltaFilter::new(
            &plan.output,
            &spec.cursor_columns(),
            floor,
            lookback,
            delivered,
        )?),
        (Mode::Complete, true) => Some(DeltaFilter::tracking(
            &plan.output,
            &spec.cursor_columns(),
            lookback,
        )?),
        (Mode::Complete, false) => None,
    })
}

/// What one reader's pass through the run plan produced.
pub(crate) struct Streamed {
    pub rows: u64,
    pub stats: ReadStats,
    pub checks: BatchChecks,
    pub cursor: Option<DeltaFilter>,
    pub files: Vec<PartFile>,
}

/// Runs a reader through the run plan (`RunPlan`); on any failure the writer's files are
/// removed.
pub(crate) async fn stream(
    reader: SourceReader,
    schema_plan: &Arc<SchemaPlan>,
    checks: BatchChecks,
    cursor: Option<DeltaFilter>,
    writer: Box<dyn PartWriter>,
    after_batch: Option<AfterBatch>,
) -> Result<Streamed> {
    RunPlan::new(reader, schema_plan, checks, cursor, writer, after_batch)
        .await?
        .execute()
        .await
}

/// One reader's run as a single DataFusion plan: the source's scan (or the transform's plan
/// over it) -> schema plan -> checks -> delta cursor -> the destination's writer. The run's
/// steps keep their state outside the plan, and the run takes it back once the plan is done.
pub(crate) struct RunPlan {
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    end: ReaderEnd,
    sink: Arc<PartSink>,
    checks: StepState<BatchChecks>,
    cursor: Option<StepState<DeltaFilter>>,
}

impl RunPlan {
    /// `after_batch` (drills, a chunk's cancellation) runs after each batch is written.
    pub(crate) async fn new(
        reader: SourceReader,
        schema_plan: &Arc<SchemaPlan>,
        checks: BatchChecks,
        cursor: Option<DeltaFilter>,
        writer: Box<dyn PartWriter>,
        after_batch: Option<AfterBatch>,
    ) -> Result<Self> {
        let sink = Arc::new(PartSink::new(
            schema_plan.output.clone(),
            writer,
            after_batch,
        ));
        let checks = StepState::new(checks);
        let cursor = cursor.map(StepState::new);
        let planned = reader.into_plan().and_then(|(scan, task, end)| {
            let schema = StepState::new(ConformSchema(schema_plan.clone()));
            let mut plan: Arc<dyn ExecutionPlan> = Arc::new(StepExec::try_new(scan, &schema)?);
            plan = Arc::new(StepExec::try_new(plan, &checks)?);
            if let Some(cursor) = &cursor {
                plan = Arc::new(StepExec::try_new(plan, cursor)?);
            }
            let plan: Arc<dyn ExecutionPlan> =
                Arc::new(DataSinkExec::new(plan, sink.clone(), None));
            Ok((plan, task, end))
        });
        match planned {
            Ok((plan, task, end)) => Ok(Self {
                plan,
                task,
                end,
                sink,
                checks,
                cursor,
            }),
            Err(e) => {
                sink.take_writer().await?.abort().await;
                Err(e)
            }
        }
    }

    /// The plan, one operator a line, leaf last.
    pub(crate) fn display(&self) -> String {
        displayable(self.plan.as_ref()).indent(false).to_string()
    }

    /// Runs the plan to its end and finishes the writer; on a failure removes what it wrote.
    pub(crate) async fn execute(self) -> Result<Streamed> {
        tracing::debug!(plan = %self.display(), "run plan");
        let Self {
            plan,
            task,
            end,
            sink,
            checks,
            cursor,
        } = self;
        let executed = collect(plan, task)
            .await
            .map_err(plan_error)
            .map(|counts| written_rows(&counts));
        let writer = sink.take_writer().await?;
        drop(sink);
        let finished = match executed {
            Ok(rows) => end.finish().await.map(|stats| (rows, stats)),
            Err(e) => Err(e),
        };
        let (rows, stats) = match finished {
            Ok(done) => done,
            Err(e) => {
                writer.abort().await;
                return Err(e);
            }
        };
        let files = writer.finish().await?;
        Ok(Streamed {
            rows,
            stats,
            checks: checks.into_inner()?,
            cursor: cursor.map(StepState::into_inner).transpose()?,
            files,
        })
    }
}

/// The rows the sink reports (`DataSinkExec`'s one `count` row).
fn written_rows(counts: &[RecordBatch]) -> u64 {
    counts
        .iter()
        .filter_map(|batch| batch.column(0).as_any().downcast_ref::<UInt64Array>())
        .map(|counts| counts.iter().flatten().sum::<u64>())
        .sum()
}

/// The run-level rules once every row is read: null cursors in delta mode, empty input.
pub(crate) fn run_rules(
    spec: &DatasetSpec,
    checks: &BatchChecks,
    cursor: Option<&DeltaFilter>,
    resumes_from_watermark: bool,
    mut stats: ReadStats,
) -> Result<ReadStats> {
    let null_cursors = cursor.map_or(0, |c| c.null_cursor_rows());
    if spec.mode == Mode::Delta && null_cursors > 0 {
        let message = format!(
            "{null_cursors} rows have no value in the cursor column(s) ({}) and cannot be placed after a watermark",
            spec.cursor_columns().join(", ")
        );
        if spec.on_malformed_row == MalformedRowPolicy::Fail {
            return Err(JobError::Refused {
                dataset: spec.id.clone(),
                message: format!("{message} (set on_malformed_row: skip to leave them out)"),
            });
        }
        stats.rejected_rows += null_cursors;
        *stats
            .rejected_by_reason
            .entry("null cursor value".into())
            .or_default() += null_cursors;
    }
    // Zero new rows after a watermark is normal; an empty first load or snapshot is suspicious.
    if checks.rows() == 0 && !spec.allow_empty && !resumes_from_watermark {
        return Err(JobError::Refused {
            dataset: spec.id.clone(),
            message: format!(
                "{} has no data rows ({} read, {} empty, {} blank lines, {} rejected); set allow_empty: true if that is expected",
                spec.source.describe(),
                stats.rows_read,
                stats.empty_rows,
                stats.blank_lines,
                stats.rejected_rows
            ),
        });
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use arrow::array::{Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;
    use crate::sources::{Source, SourceAccess, SourceOutput, TypeHints};

    /// Rows held in memory, sent as one batch.
    struct Rows(RecordBatch);

    #[async_trait::async_trait]
    impl Source for Rows {
        fn describe(&self) -> String {
            "rows in memory".into()
        }

        async fn read(
            self: Arc<Self>,
            mut output: SourceOutput,
            _access: SourceAccess,
        ) -> Result<ReadStats> {
            output.announce_schema(self.0.schema());
            output.send_async(self.0.clone()).await;
            Ok(ReadStats {
                rows_read: self.0.num_rows() as u64,
                ..ReadStats::default()
            })
        }
    }

    /// Keeps what it is given; says whether it was finished or aborted.
    #[derive(Clone, Default)]
    struct Kept {
        batches: Arc<Mutex<Vec<RecordBatch>>>,
        ended: Arc<Mutex<&'static str>>,
        fail_with: Option<&'static str>,
    }

    #[async_trait::async_trait]
    impl PartWriter for Kept {
        async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
            if let Some(message) = self.fail_with {
                return Err(JobError::Database {
                    context: "writing a part".into(),
                    message: message.into(),
                });
            }
            self.batches.lock().unwrap().push(batch.clone());
            Ok(())
        }

        async fn finish(self: Box<Self>) -> Result<Vec<PartFile>> {
            *self.ended.lock().unwrap() = "finished";
            Ok(Vec::new())
        }

        async fn abort(self: Box<Self>) {
            *self.ended.lock().unwrap() = "aborted";
        }
    }

    fn rows() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("country", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![Some(1), Some(2), Some(3), None])),
                Arc::new(StringArray::from(vec!["MX", "MX", "AR", "MX"])),
                Arc::new(TimestampMicrosecondArray::from(vec![10, 20, 30, 40])),
            ],
        )
        .unwrap()
    }

    async fn run_plan(yaml: &str, kept: &Kept) -> Result<RunPlan> {
        let spec = DatasetSpec::from_yaml(yaml).unwrap();
        let source: Arc<dyn Source> = Arc::new(Rows(rows()));
        let reader = crate::sources::open(
            &source,
            &spec,
            crate::sources::ReadShape::first_rows(1024),
            TypeHints::default(),
            SourceAccess::default(),
        )
        .await?;
        let reader = crate::query::transform::apply_if_any(&spec, reader, 64).await?;
        let schema_plan = Arc::new(SchemaPlan::new(
            &spec.id,
            &reader.schema,
            None,
            spec.new_columns,
            spec.missing_columns,
        )?);
        let checks = BatchChecks::new(
            &schema_plan.output,
            &spec.key,
            spec.timestamp_column.as_deref(),
        )?;
        let cursor = new_cursor(&spec, &schema_plan, None, &[])?;
        RunPlan::new(
            reader,
            &schema_plan,
            checks,
            cursor,
            Box::new(kept.clone()),
            None,
        )
        .await
    }

    async fn failure(plan: RunPlan) -> JobError {
        match plan.execute().await {
            Ok(streamed) => panic!("the plan wrote {} rows", streamed.rows),
            Err(e) => e,
        }
    }

    const SPEC: &str = "id: ventas\nsource: {format: csv, location: ventas.csv}\ntrigger: callback\nmode: delta\nkey: [id]\ntimestamp_column: ts\non_malformed_row: skip\n";

    #[tokio::test]
    async fn a_run_is_one_plan_from_the_source_through_the_transform_and_the_steps_to_the_sink() {
        let kept = Kept::default();
        let yaml = format!(
            "{SPEC}transform: \"SELECT id, lower(country) AS country, ts FROM source WHERE country = 'MX'\"\n"
        );
        let plan = run_plan(&yaml, &kept).await.unwrap();
        let shown = plan.display();
        let order = [
            "DataSinkExec",
            "CargaDeltaCursorExec",
            "CargaChecksExec",
            "CargaSchemaPlanExec",
            "FilterExec",
            "StreamingTableExec",
        ];
        let positions: Vec<usize> = order
            .iter()
            .map(|name| {
                shown
                    .find(name)
                    .unwrap_or_else(|| panic!("{name} missing:\n{shown}"))
            })
            .collect();
        assert!(positions.is_sorted(), "operators out of order:\n{shown}");

        let streamed = plan.execute().await.unwrap();
        // Three MX rows pass the transform; the one without a key has no cursor and is dropped.
        assert_eq!(streamed.checks.rows(), 3);
        assert_eq!(streamed.rows, 2);
        assert_eq!(streamed.stats.rows_read, 4);
        assert_eq!(streamed.cursor.as_ref().unwrap().null_cursor_rows(), 1);
        let written = kept.batches.lock().unwrap().clone();
        let countries: Vec<String> = written
            .iter()
            .flat_map(|b| {
                let c = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
                c.iter().map(|v| v.unwrap().to_owned()).collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(countries, ["mx", "mx"]);
        assert_eq!(*kept.ended.lock().unwrap(), "finished");
    }

    #[tokio::test]
    async fn without_a_transform_the_plan_starts_at_the_source_scan() {
        let kept = Kept::default();
        let plan = run_plan(SPEC, &kept).await.unwrap();
        let shown = plan.display();
        assert!(
            shown.contains("StreamingTableExec") && !shown.contains("FilterExec"),
            "{shown}"
        );
        let streamed = plan.execute().await.unwrap();
        assert_eq!((streamed.checks.rows(), streamed.rows), (4, 3));
    }

    #[tokio::test]
    async fn a_failure_inside_the_plan_keeps_its_kind_and_removes_the_parts() {
        // The writer's own error comes back by value through DataFusion (transient: retried).
        let kept = Kept {
            fail_with: Some("disk full"),
            ..Kept::default()
        };
        let error = failure(run_plan(SPEC, &kept).await.unwrap()).await;
        assert!(
            matches!(&error, JobError::Database { message, .. } if message == "disk full"),
            "{error:?}"
        );
        assert_eq!(*kept.ended.lock().unwrap(), "aborted");

        // A transform that fails on the data is a query error of the transform.
        let kept = Kept::default();
        let yaml =
            format!("{SPEC}transform: \"SELECT CAST(country AS INT) AS id, ts FROM source\"\n");
        let error = failure(run_plan(&yaml, &kept).await.unwrap()).await;
        assert!(matches!(error, JobError::Query { .. }), "{error:?}");
        assert_eq!(*kept.ended.lock().unwrap(), "aborted");
    }
}
