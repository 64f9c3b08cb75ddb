//! The run's own steps as DataFusion operators: the schema plan, the checks and the delta cursor
//! each become a `StepExec` over the plan before it (the source's scan, or the transform's
//! plan), so the whole run is one `ExecutionPlan` ending in the destination's sink
//! (`part_sink.rs`). Each step maps the batches of its single input partition in order and keeps
//! what it learns (counts, the highest cursor) in a state the run takes back once the plan has
//! run (`StepState::into_inner`).
//!
//! Carga keeps these steps rather than DataFusion's own operators because they do what a filter
//! or a cast cannot: the checks name the row and key of a bad value, the cursor compares whole
//! (timestamp, key) tuples in arrow's row format, tie-safe, with a lookback window.

use std::fmt;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties,
    Partitioning, PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream,
};
use futures::StreamExt;

use crate::delta::DeltaFilter;
use crate::error::{JobError, Result};
use crate::schema_drift::SchemaPlan;
use crate::validation::BatchChecks;

/// One step of a run over each batch, in order.
pub(crate) trait BatchStep: Send + 'static {
    /// The operator's name in a displayed plan.
    const NAME: &'static str;

    /// The schema of what the step emits, given its input's.
    fn output_schema(&self, input: &SchemaRef) -> SchemaRef;

    fn apply(&mut self, batch: RecordBatch) -> Result<RecordBatch>;
}

/// A step's state, shared by its operator and the run that reads it back after the plan ran.
pub(crate) struct StepState<S>(Arc<Mutex<S>>);

impl<S> StepState<S> {
    pub(crate) fn new(step: S) -> Self {
        Self(Arc::new(Mutex::new(step)))
    }

    /// The step as the plan left it. Call once the plan and its streams are dropped.
    pub(crate) fn into_inner(self) -> Result<S> {
        Arc::try_unwrap(self.0)
            .map_err(|_| {
                JobError::Internal(format!(
                    "{} is still held by a running plan",
                    std::any::type_name::<S>()
                ))
            })?
            .into_inner()
            .map_err(|_| JobError::Internal("a run step panicked".into()))
    }
}

/// A `BatchStep` as an operator: one input partition in, the same partition out.
pub(crate) struct StepExec<S: BatchStep> {
    input: Arc<dyn ExecutionPlan>,
    state: Arc<Mutex<S>>,
    properties: Arc<PlanProperties>,
}

impl<S: BatchStep> StepExec<S> {
    /// `input` must have one partition (the run's steps are stateful and see every row in order).
    pub(crate) fn try_new(input: Arc<dyn ExecutionPlan>, state: &StepState<S>) -> Result<Self> {
        let partitions = input.output_partitioning().partition_count();
        if partitions != 1 {
            return Err(JobError::Internal(format!(
                "{} needs one input partition, not {partitions}",
                S::NAME
            )));
        }
        let schema = state
            .0
            .lock()
            .map_err(|_| JobError::Internal("a run step panicked".into()))?
            .output_schema(&input.schema());
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            input.pipeline_behavior(),
            input.boundedness(),
        );
        Ok(Self {
            input,
            state: state.0.clone(),
            properties: Arc::new(properties),
        })
    }
}

impl<S: BatchStep> fmt::Debug for StepExec<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(S::NAME).finish_non_exhaustive()
    }
}

impl<S: BatchStep> DisplayAs for StepExec<S> {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", S::NAME)
    }
}

impl<S: BatchStep> ExecutionPlan for StepExec<S> {
    fn name(&self) -> &str {
        S::NAME
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(format!(
                "{} takes one child, not {}",
                S::NAME,
                children.len()
            )));
        }
        let input = children.swap_remove(0);
        match options.children_properties {
            ChildrenPropertiesMode::Keep => Ok(Arc::new(Self {
                input,
                state: self.state.clone(),
                properties: self.properties.clone(),
            })),
            ChildrenPropertiesMode::Recompute => {
                let state = StepState(self.state.clone());
                Ok(Arc::new(Self::try_new(input, &state).map_err(external)?))
            }
        }
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "{} has one partition, not {partition}",
                S::NAME
            )));
        }
        let state = self.state.clone();
        let stream = self.input.execute(0, context)?.map(move |batch| {
            let batch = batch?;
            let mut step = state
                .lock()
                .map_err(|_| DataFusionError::Internal("a run step panicked".into()))?;
            step.apply(batch).map_err(external)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.properties.eq_properties.schema().clone(),
            stream,
        )))
    }
}

/// A Carga error carried through DataFusion; `query::plan_error` takes it back by value.
pub(crate) fn external(error: JobError) -> DataFusionError {
    DataFusionError::External(Box::new(error))
}

/// The schema plan: each batch in the dataset's columns and types (new, missing, reordered).
pub(crate) struct ConformSchema(pub Arc<SchemaPlan>);

impl BatchStep for ConformSchema {
    const NAME: &'static str = "CargaSchemaPlanExec";

    fn output_schema(&self, _input: &SchemaRef) -> SchemaRef {
        self.0.output.clone()
    }

    fn apply(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        self.0.apply(&batch)
    }
}

/// The streaming checks (keys, nulls, timestamps): they look at every row and pass it on.
impl BatchStep for BatchChecks {
    const NAME: &'static str = "CargaChecksExec";

    fn output_schema(&self, input: &SchemaRef) -> SchemaRef {
        input.clone()
    }

    fn apply(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        self.observe(&batch)?;
        Ok(batch)
    }
}

/// The delta cursor: only rows after the watermark (and not delivered inside the lookback
/// window) pass; in complete mode it only tracks the highest tuple.
impl BatchStep for DeltaFilter {
    const NAME: &'static str = "CargaDeltaCursorExec";

    fn output_schema(&self, input: &SchemaRef) -> SchemaRef {
        input.clone()
    }

    fn apply(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        DeltaFilter::apply(self, &batch)
    }
}
