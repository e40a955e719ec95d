//! `LeafMergeExec`: the compaction read of Sleeper leaf partitions. Each output partition is one
//! leaf: its sorted input files are read concurrently, filtered to the leaf's region, and merged
//! k-way into Sleeper's key order. Nothing is ever fully sorted or held whole in memory.
//!
//! Split as DataFusion splits its sorts: this file is the plan node; `reader` opens and reads
//! one input file (schema adaptation, region and age-off filters, key encoding, the order
//! check), from the row groups and pages `prune` chooses, fetched by `fetch` through
//! `object_file`, within the budgets `budget` reserves from the memory pool; `inputs` opens
//! a leaf's files and starts their readers; `keys` holds a
//! batch's sort keys; `loser_tree` merges sorted input streams; `gather` copies each merged
//! batch's rows out of the inputs' batches.

mod adapt;
mod budget;
mod counts;
mod decode;
mod fetch;
mod gather;
mod inputs;
mod keys;
mod loser_tree;
mod object_file;
mod order_check;
mod prune;
mod reader;

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::EmptyRecordBatchStream;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning,
    PlanProperties, ReplaceChildrenOptions,
};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Semaphore;

use super::aggregate_exec::LeafAggregateExec;
use super::filter::RowFilter;
use super::memory::{reserve_first_granted, LeafMemoryShare};
use crate::error::{Error, Result};
use crate::model::{CompactionRules, KeyOrder, Region, Schema};
use budget::ReadBudget;
use counts::LeafCounters;
pub use counts::MergeCounts;
use inputs::{open_files, start_inputs};
use loser_tree::LeafMerge;
use reader::FileReader;

/// What one leaf partition's merge reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInput {
    pub partition_id: String,
    pub partition_region: Region,
    /// Rows must also fall in one of these (Sleeper's exports pass the partition region itself).
    pub query_regions: Vec<Region>,
    /// Input file URLs, in the order ties between equal keys are broken.
    pub files: Vec<String>,
}

/// Batches read ahead per input file: one overlaps decoding with merging; a second cost 35 MiB
/// at 128 files and was no faster (`benches/scale.rs`).
const READ_AHEAD_BATCHES: usize = 1;

/// Files of a leaf whose footers are read at once.
const FILES_OPENED_AT_ONCE: usize = 16;

/// Requests for windows' bytes a leaf's files have in flight together: each file fetches its
/// next window's pages, a request per column, so 128 files had 640 at once on S3, each with
/// its connection's buffers (824 MiB peak); ample to keep a store's latency hidden.
const LEAF_REQUESTS_AT_ONCE: usize = 32;

#[derive(Debug, Clone)]
pub struct LeafMergeExec {
    table_id: String,
    schema: Arc<Schema>,
    /// The order of the table's files, which the merge and the region filter follow.
    order: KeyOrder,
    /// Whether to check, as files are read, that their rows are in that order.
    verify_order: bool,
    /// Positions in `read_schema` of the columns this node emits: those projected, and where
    /// the table aggregates, every key too (its aggregation, above, groups by them).
    output_columns: Vec<usize>,
    /// Where the table aggregates, the positions in `output_schema` of the projected columns,
    /// which the aggregation above the merge emits.
    aggregated_columns: Option<Vec<usize>>,
    /// Table columns read from files: the key columns first, then the projected value columns.
    read_schema: SchemaRef,
    output_schema: SchemaRef,
    leaves: Arc<Vec<LeafInput>>,
    /// Leaves of the table left out because the query cannot touch them, for `EXPLAIN`.
    pruned_leaves: usize,
    /// Filters and aggregations; empty for a raw export.
    rules: Arc<CompactionRules>,
    /// A fixed clock for age-off filters, instead of reading it at each leaf's start.
    age_off_clock: Option<i64>,
    metrics: ExecutionPlanMetricsSet,
    /// One per leaf, registered in `metrics`.
    counters: Arc<Vec<LeafCounters>>,
    cache: Arc<PlanProperties>,
}

impl LeafMergeExec {
    /// `projection` indexes the table's columns (row keys, sort keys, values), as DataFusion's
    /// scans do; `None` is every column. `rules` are applied as Sleeper's compaction would. A
    /// projection or an age-off column that is not the table's is an error.
    #[allow(clippy::too_many_arguments)]
    pub fn try_new(
        table_id: impl Into<String>,
        schema: Arc<Schema>,
        order: KeyOrder,
        leaves: Vec<LeafInput>,
        projection: Option<&[usize]>,
        rules: CompactionRules,
    ) -> Result<Self> {
        let table_id = table_id.into();
        let table_schema = schema.arrow_schema();
        let key_count = schema.key_fields().count();
        let projection: Vec<usize> = projection.map_or_else(
            || (0..table_schema.fields().len()).collect(),
            <[usize]>::to_vec,
        );
        let column_index = |name: &str| {
            table_schema.index_of(name).map_err(|_| {
                Error::Schema(format!(
                    "the age-off column {name} is not a column of table {table_id}"
                ))
            })
        };
        let mut read_columns: Vec<usize> = (0..key_count).collect();
        read_columns.extend(projection.iter().copied());
        for age_off in &rules.age_offs {
            read_columns.push(column_index(&age_off.column)?);
        }
        read_columns.sort_unstable();
        read_columns.dedup();
        let position_read = |c: &usize| {
            read_columns
                .iter()
                .position(|r| r == c)
                .expect("every projected column is read")
        };
        let (output_columns, aggregated_columns): (Vec<usize>, _) = if rules.aggregations.is_empty()
        {
            (projection.iter().map(position_read).collect(), None)
        } else {
            let mut merged: Vec<usize> = (0..key_count).chain(projection.iter().copied()).collect();
            merged.sort_unstable();
            merged.dedup();
            let aggregated = projection
                .iter()
                .map(|c| merged.iter().position(|m| m == c).expect("merged"))
                .collect();
            (merged.iter().map(position_read).collect(), Some(aggregated))
        };
        let read_schema =
            Arc::new(
                table_schema
                    .project(&read_columns)
                    .map_err(|source| Error::Arrow {
                        context: format!("projecting table {table_id}"),
                        source,
                    })?,
            );
        let output_schema = Arc::new(
            read_schema
                .project(&output_columns)
                .expect("output columns are read"),
        );
        let metrics = ExecutionPlanMetricsSet::new();
        // With every leaf pruned there is still one (empty) partition.
        let counters = LeafCounters::register(&metrics, leaves.len().max(1));
        let cache = Arc::new(Self::compute_properties(
            &schema,
            order,
            &output_schema,
            &output_columns,
            leaves.len(),
        ));
        Ok(LeafMergeExec {
            table_id,
            schema,
            order,
            verify_order: true,
            output_columns,
            aggregated_columns,
            read_schema,
            output_schema,
            leaves: Arc::new(leaves),
            pruned_leaves: 0,
            rules: Arc::new(rules),
            age_off_clock: None,
            counters: Arc::new(counters),
            metrics,
            cache,
        })
    }

    pub fn with_pruned_leaves(mut self, count: usize) -> Self {
        self.pruned_leaves = count;
        self
    }

    /// Skips the check that input files are in the table's order (it costs about 0.5 % of an
    /// export; see the `leaf_export` bench), for inputs known to be.
    pub fn with_order_check(mut self, verify: bool) -> Self {
        self.verify_order = verify;
        self
    }

    pub fn with_age_off_clock(mut self, millis: Option<i64>) -> Self {
        self.age_off_clock = millis;
        self
    }

    pub fn leaves(&self) -> &[LeafInput] {
        &self.leaves
    }

    /// The Sleeper schema and key order of the table merged.
    pub fn table(&self) -> (&Schema, KeyOrder) {
        (&self.schema, self.order)
    }

    /// Positions in `read_schema` of the columns of [`LeafMergeExec::into_plan`]'s rows.
    fn plan_columns(&self) -> Vec<usize> {
        match &self.aggregated_columns {
            None => self.output_columns.clone(),
            Some(aggregated) => aggregated.iter().map(|&c| self.output_columns[c]).collect(),
        }
    }

    /// The merge as a plan: alone, or where the table aggregates, under its aggregation
    /// (`LeafAggregateExec`), which collapses equal keys as they pass and projects the columns
    /// asked for. What scans and exports run; the node alone has not aggregated.
    pub fn into_plan(self) -> Arc<dyn ExecutionPlan> {
        let Some(aggregated) = self.aggregated_columns.clone() else {
            return Arc::new(self);
        };
        let plan_columns = self.plan_columns();
        let plan_schema = Arc::new(
            self.read_schema
                .project(&plan_columns)
                .expect("aggregated columns are read"),
        );
        let properties = Self::compute_properties(
            &self.schema,
            self.order,
            &plan_schema,
            &plan_columns,
            self.leaves.len(),
        );
        let key_count = self.schema.key_fields().count();
        let aggregations = self.rules.aggregations.clone();
        Arc::new(LeafAggregateExec::new(
            Arc::new(self),
            key_count,
            aggregations,
            aggregated,
            properties,
        ))
    }

    /// The same merge reading only the columns of `projection` (indexes of this merge's output)
    /// and the rows in `query` (every row when `None`): what a scan of a leaf's rows with
    /// pushed-down key predicates reads. A leaf the query does not meet is left out.
    pub fn narrowed(&self, projection: Option<&[usize]>, query: Option<&[Region]>) -> Result<Self> {
        let table_columns = self.schema.arrow_schema();
        let columns = self.plan_columns();
        let projection: Vec<usize> = match projection {
            Some(projection) => projection.to_vec(),
            None => (0..columns.len()).collect(),
        }
        .into_iter()
        .map(|c| {
            table_columns
                .index_of(self.read_schema.field(columns[c]).name())
                .expect("the merge's columns are the table's")
        })
        .collect();
        let leaves = self
            .leaves
            .iter()
            .filter_map(|leaf| {
                let query_regions: Vec<Region> = match query {
                    None => leaf.query_regions.clone(),
                    Some(query) => leaf
                        .query_regions
                        .iter()
                        .flat_map(|own| query.iter().filter_map(|q| own.intersect(q, self.order)))
                        .collect(),
                };
                (!query_regions.is_empty()).then(|| LeafInput {
                    query_regions,
                    ..leaf.clone()
                })
            })
            .collect();
        let narrowed = LeafMergeExec::try_new(
            self.table_id.clone(),
            Arc::clone(&self.schema),
            self.order,
            leaves,
            Some(&projection),
            self.rules.as_ref().clone(),
        )?;
        Ok(LeafMergeExec {
            verify_order: self.verify_order,
            age_off_clock: self.age_off_clock,
            pruned_leaves: self.pruned_leaves,
            ..narrowed
        })
    }

    /// `3`, or `3 of 10` when a query's predicates left leaves out.
    fn leaf_count_text(&self) -> String {
        match self.pruned_leaves {
            0 => self.leaves.len().to_string(),
            pruned => format!("{} of {}", self.leaves.len(), self.leaves.len() + pruned),
        }
    }

    /// Every leaf is sorted in the table's key order. DataFusion is told the prefix of that order
    /// it shares: every key for the DataFusion engine's order, the integer keys for the Java
    /// engine's (strings and byte arrays order differently there, see `model::order`, and a
    /// declared order that is false would let DataFusion skip a sort that `ORDER BY` needs).
    /// Exports never sort either way: the sink takes each leaf's stream as it is.
    fn compute_properties(
        schema: &Schema,
        order: KeyOrder,
        output_schema: &SchemaRef,
        output_columns: &[usize],
        leaf_count: usize,
    ) -> PlanProperties {
        let mut ordering = Vec::new();
        for (key_index, key_type) in schema.key_types().into_iter().enumerate() {
            if !order.agrees_with_arrow(key_type) {
                break;
            }
            let Some(output_index) = output_columns.iter().position(|&c| c == key_index) else {
                break;
            };
            let name = output_schema.field(output_index).name();
            ordering.push(PhysicalSortExpr::new_default(
                Arc::new(Column::new(name, output_index)) as Arc<dyn PhysicalExpr>,
            ));
        }
        let eq_properties = if ordering.is_empty() {
            EquivalenceProperties::new(Arc::clone(output_schema))
        } else {
            EquivalenceProperties::new_with_orderings(Arc::clone(output_schema), [ordering])
        };
        PlanProperties::new(
            eq_properties,
            // With every leaf pruned there is still one (empty) partition: DataFusion's
            // operators expect at least one.
            Partitioning::UnknownPartitioning(leaf_count.max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        )
    }

    /// The leaf's files are reached through `context`'s object stores, as DataFusion's own
    /// scans reach theirs, and what it reads is reserved from its memory pool: the
    /// reservation lives as long as the merge.
    async fn merge_leaf(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<(LeafMerge, MemoryReservation)> {
        let leaf = &self.leaves[partition];
        let batch_size = context.session_config().batch_size();
        let key_types = self.schema.key_types();
        let converter = Arc::new(keys::key_converter(&key_types)?);
        let filter = Arc::new(RowFilter::new(
            &leaf.partition_region,
            &leaf.query_regions,
            &self.schema.row_key_types(),
            self.order,
        ));
        let age_offs = Arc::new(self.age_off_cutoffs(partition));
        let rows_read = self.counters[partition].rows_read.clone();
        let row_groups_pruned =
            MetricBuilder::new(&self.metrics).counter("row_groups_pruned", partition);
        MetricBuilder::new(&self.metrics)
            .counter("input_files", partition)
            .add(leaf.files.len());
        let requests = Arc::new(Semaphore::new(LEAF_REQUESTS_AT_ONCE));
        let readers: Vec<FileReader> = leaf
            .files
            .iter()
            .map(|file| FileReader {
                file: file.clone(),
                partition_id: leaf.partition_id.clone(),
                read_schema: Arc::clone(&self.read_schema),
                key_types: key_types.clone(),
                order: self.order,
                verify_order: self.verify_order,
                converter: Arc::clone(&converter),
                filter: Arc::clone(&filter),
                age_offs: Arc::clone(&age_offs),
                rows_read: rows_read.clone(),
                row_groups_pruned: row_groups_pruned.clone(),
                requests: Arc::clone(&requests),
            })
            .collect();
        let opened = open_files(&readers, &context.runtime_env()).await?;
        let reservation = MemoryConsumer::new(format!("LeafMergeExec[{}]", leaf.partition_id))
            .register(context.memory_pool());
        let share = LeafMemoryShare::of(&context).map(LeafMemoryShare::reads);
        let candidates = ReadBudget::candidates(&opened, batch_size, share);
        let (budget, _) = reserve_first_granted(&reservation, candidates, |(_, bytes)| bytes)?;
        let inputs = start_inputs(readers, opened, budget);
        let mut merge = LeafMerge::new(
            inputs,
            Arc::clone(&self.read_schema),
            self.output_columns.clone(),
            batch_size,
        );
        merge.start().await?;
        Ok((merge, reservation))
    }
}

impl DisplayAs for LeafMergeExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let files: usize = self.leaves.iter().map(|l| l.files.len()).sum();
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => write!(
                f,
                "LeafMergeExec: table={}, leaves={}, files={}, order=[{}] ({})",
                self.table_id,
                self.leaf_count_text(),
                files,
                self.schema
                    .key_fields()
                    .map(|k| k.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                self.order.data_engine()
            ),
            DisplayFormatType::TreeRender => {
                write!(f, "leaves={}\nfiles={}", self.leaf_count_text(), files)
            }
        }
    }
}

impl ExecutionPlan for LeafMergeExec {
    fn name(&self) -> &'static str {
        "LeafMergeExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
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
        if self.leaves.is_empty() && partition == 0 {
            return Ok(Box::pin(EmptyRecordBatchStream::new(Arc::clone(
                &self.output_schema,
            ))));
        }
        if partition >= self.leaves.len() {
            return Err(DataFusionError::Internal(format!(
                "LeafMergeExec has {} leaves, partition {partition} asked for",
                self.leaves.len()
            )));
        }
        let this = self.clone();
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        // The merge is opened lazily, on the first poll, because opening reads file footers.
        let open = async move { this.merge_leaf(partition, context).await };
        let stream = futures::stream::once(open)
            // Called once: the stream before it yields the one merge.
            .map_ok(move |(merge, reservation)| {
                let state = (merge, baseline.clone(), reservation);
                futures::stream::try_unfold(
                    state,
                    |(mut merge, baseline, reservation)| async move {
                        let batch = merge.next_batch().await?;
                        Ok(batch.map(|batch| {
                            baseline.record_output(batch.num_rows());
                            (batch, (merge, baseline, reservation))
                        }))
                    },
                )
            })
            .try_flatten()
            .map(|r: Result<RecordBatch>| r.map_err(DataFusionError::from));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.output_schema),
            stream,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}
