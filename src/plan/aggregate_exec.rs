//! `LeafAggregateExec`: Sleeper's aggregation as a plan node of its own, above the leaf merge.
//! Its input is in key order, so each partition collapses runs of equal keys as they pass
//! ([`RowAggregator`]) and keeps its input's order and partitions: one leaf stays one stream.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    ReplaceChildrenOptions,
};
use futures::StreamExt;

use super::aggregate::RowAggregator;
use crate::model::Aggregation;

#[derive(Debug)]
pub struct LeafAggregateExec {
    /// Sorted by its first `key_count` columns, each partition on its own.
    input: Arc<dyn ExecutionPlan>,
    key_count: usize,
    aggregations: Vec<Aggregation>,
    /// Positions in the input of the columns emitted, once aggregated.
    projection: Vec<usize>,
    schema: SchemaRef,
    metrics: ExecutionPlanMetricsSet,
    cache: Arc<PlanProperties>,
}

impl LeafAggregateExec {
    /// `aggregations` name every value column of `input`; `properties` are those of the
    /// projected rows (their order is the input's).
    pub fn new(
        input: Arc<dyn ExecutionPlan>,
        key_count: usize,
        aggregations: Vec<Aggregation>,
        projection: Vec<usize>,
        properties: PlanProperties,
    ) -> Self {
        LeafAggregateExec {
            schema: Arc::clone(properties.eq_properties.schema()),
            input,
            key_count,
            aggregations,
            projection,
            metrics: ExecutionPlanMetricsSet::new(),
            cache: Arc::new(properties),
        }
    }
}

impl DisplayAs for LeafAggregateExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let aggregations = self
            .aggregations
            .iter()
            .map(|a| format!("{}({})", a.op, a.column))
            .collect::<Vec<_>>()
            .join(", ");
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                write!(f, "LeafAggregateExec: aggregations=[{aggregations}]")
            }
            DisplayFormatType::TreeRender => write!(f, "aggregations=[{aggregations}]"),
        }
    }
}

impl ExecutionPlan for LeafAggregateExec {
    fn name(&self) -> &'static str {
        "LeafAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| DataFusionError::Internal("LeafAggregateExec needs its input".into()))?;
        Ok(Arc::new(LeafAggregateExec::new(
            input,
            self.key_count,
            self.aggregations.clone(),
            self.projection.clone(),
            self.cache.as_ref().clone(),
        )))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let aggregator = RowAggregator::new(input.schema(), self.key_count, &self.aggregations);
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let projection = self.projection.clone();
        // Ends at the first error; the input's end releases the last run of equal keys.
        let aggregated =
            futures::stream::try_unfold(Some((input, aggregator)), |state| async move {
                let Some((mut input, mut aggregator)) = state else {
                    return Ok(None);
                };
                while let Some(batch) = input.next().await {
                    if let Some(ready) = aggregator.push(batch?)? {
                        return Ok(Some((ready, Some((input, aggregator)))));
                    }
                }
                Ok(aggregator.finish().map(|last| (last, None)))
            });
        let stream = aggregated.map(move |batch: DFResult<_>| {
            let batch = batch?.project(&projection)?;
            baseline.record_output(batch.num_rows());
            Ok(batch)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}
