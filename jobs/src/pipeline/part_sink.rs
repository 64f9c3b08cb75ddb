//! The destination's writer as the plan's sink: a DataFusion `DataSink` that hands each
//! non-empty batch to the run's `PartWriter` (encrypted Parquet parts in the raw zone), so the
//! plan ends where the rows are stored. The writer is taken back after the plan ran, to finish
//! (list its files) or abort (remove them).

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::datasource::sink::DataSink;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, SendableRecordBatchStream};
use futures::StreamExt;
use tokio::sync::Mutex;

use super::operators::external;
use crate::destination::PartWriter;
use crate::error::{JobError, Result};

/// Called after each batch is written: a drill's injected failure, a chunk's cancellation.
pub(crate) type AfterBatch = Box<dyn FnMut() -> Result<()> + Send>;

pub(crate) struct PartSink {
    schema: SchemaRef,
    writer: Mutex<Option<Box<dyn PartWriter>>>,
    after_batch: std::sync::Mutex<Option<AfterBatch>>,
}

impl PartSink {
    pub(crate) fn new(
        schema: SchemaRef,
        writer: Box<dyn PartWriter>,
        after_batch: Option<AfterBatch>,
    ) -> Self {
        Self {
            schema,
            writer: Mutex::new(Some(writer)),
            after_batch: std::sync::Mutex::new(after_batch),
        }
    }

    /// The writer, once the plan is done with it.
    pub(crate) async fn take_writer(&self) -> Result<Box<dyn PartWriter>> {
        self.writer
            .lock()
            .await
            .take()
            .ok_or_else(|| JobError::Internal("the part writer was taken twice".into()))
    }

    fn after_batch(&self) -> Result<()> {
        let mut hook = self
            .after_batch
            .lock()
            .map_err(|_| JobError::Internal("a run hook panicked".into()))?;
        match hook.as_mut() {
            Some(hook) => hook(),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for PartSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartSink").finish_non_exhaustive()
    }
}

impl DisplayAs for PartSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "CargaPartSink")
    }
}

#[async_trait::async_trait]
impl DataSink for PartSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> DfResult<u64> {
        let mut guard = self.writer.lock().await;
        let writer = guard
            .as_mut()
            .ok_or_else(|| DataFusionError::Internal("the part writer was taken".into()))?;
        let mut rows = 0u64;
        while let Some(batch) = data.next().await {
            let batch = batch?;
            if batch.num_rows() == 0 {
                continue;
            }
            writer.write(&batch).await.map_err(external)?;
            rows += batch.num_rows() as u64;
            self.after_batch().map_err(external)?;
        }
        Ok(rows)
    }
}
