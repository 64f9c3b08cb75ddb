//! The streaming part of a run, the same for one reader and for each chunk of a partitioned
//! read: the batches through the schema plan, the checks and the delta cursor into a writer
//! (`stream`), the cursor a run starts with (`new_cursor`), and what an extraction produced
//! (`Extracted`) with the run-level rules applied once every row is read (`run_rules`).

use std::sync::Arc;

use arrow::array::RecordBatch;
use carga_config::{DatasetSpec, MalformedRowPolicy, Mode};

use crate::delta::DeltaFilter;
use crate::destination::{Destination, PartWriter};
use crate::error::{JobError, Result};
use crate::schema_drift::SchemaPlan;
use crate::sink::PartFile;
use crate::sources::SourceReader;
use crate::validation::{BatchChecks, ReadStats};

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

/// Streams a reader through the schema plan, the checks and the cursor into the sink. Returns
/// the rows written and the reader's statistics. `fault` (drills only) fails after the first
/// batch is written.
pub(crate) async fn stream(
    mut reader: SourceReader,
    plan: &SchemaPlan,
    checks: &mut BatchChecks,
    mut cursor: Option<&mut DeltaFilter>,
    sink: &mut dyn PartWriter,
    mut fault: Option<&mut (dyn FnMut() -> Result<()> + Send)>,
) -> Result<(u64, ReadStats)> {
    let mut rows_written = 0u64;
    while let Some(batch) = reader.next_batch().await {
        let batch = plan.apply(&batch?)?;
        checks.observe(&batch)?;
        let batch = match cursor.as_deref_mut() {
            Some(cursor) => cursor.apply(&batch)?,
            None => batch,
        };
        if batch.num_rows() > 0 {
            sink.write(&batch).await?;
            rows_written += batch.num_rows() as u64;
            if let Some(fault) = fault.as_deref_mut() {
                fault()?;
            }
        }
    }
    let stats = reader.finish().await?;
    Ok((rows_written, stats))
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
