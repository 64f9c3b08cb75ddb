//! A running source as the leaf of a DataFusion plan: its stream of batches is the one
//! partition of a `StreamingTable` (the `source` table a transform reads) or of a
//! `StreamingTableExec` (the scan the run plan starts from when there is no transform).

use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::error::{JobError, Result};

/// A source's batches as one partition, executed once.
pub(crate) struct OnePartition {
    schema: SchemaRef,
    batches: Mutex<Option<BoxStream<'static, Result<RecordBatch>>>>,
}

impl OnePartition {
    pub(crate) fn new(schema: SchemaRef, batches: BoxStream<'static, Result<RecordBatch>>) -> Self {
        Self {
            schema,
            batches: Mutex::new(Some(batches)),
        }
    }
}

impl std::fmt::Debug for OnePartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnePartition").finish_non_exhaustive()
    }
}

impl PartitionStream for OnePartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batches = self.batches.lock().ok().and_then(|mut b| b.take());
        let stream = match batches {
            // A source error keeps its kind through the plan (see `query::plan_error`).
            Some(batches) => batches
                .map(|batch| batch.map_err(|e| DataFusionError::External(Box::new(e))))
                .boxed(),
            None => futures::stream::once(async {
                Err(DataFusionError::Execution(
                    "the source stream was read already".into(),
                ))
            })
            .boxed(),
        };
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

/// The scan of a source's batches: a plan of one partition.
pub(crate) fn scan(
    schema: SchemaRef,
    batches: BoxStream<'static, Result<RecordBatch>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let partition = Arc::new(OnePartition::new(schema.clone(), batches));
    let exec = StreamingTableExec::try_new(schema, vec![partition], None, [], false, None)
        .map_err(|e| JobError::Internal(format!("scanning the source: {e}")))?;
    Ok(Arc::new(exec))
}
