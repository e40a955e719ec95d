//! `LeafMergeExec`: the compaction read of Sleeper leaf partitions. Each output partition is one
//! leaf: its sorted input files are read concurrently, filtered to the leaf's region, and merged
//! k-way into Sleeper's key order. Nothing is ever fully sorted or held whole in memory.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::kernels::boolean::and;
use datafusion::arrow::compute::kernels::cmp::gt_eq;
use datafusion::arrow::compute::{cast, filter_record_batch, interleave, prep_null_mask_filter};
use datafusion::arrow::datatypes::{DataType, Schema as ArrowSchema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::row::{OwnedRow, Row, RowConverter, Rows, SortField};
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::arrow::async_reader::{
    ParquetRecordBatchStream, ParquetRecordBatchStreamBuilder,
};
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::errors::{ParquetError, Result as ParquetResult};
use datafusion::parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use datafusion::parquet::file::statistics::Statistics as ParquetStatistics;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::EmptyRecordBatchStream;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning,
    PlanProperties, ReplaceChildrenOptions,
};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use object_store::ObjectStoreExt;
use tokio::sync::mpsc;

use super::aggregate::RowAggregator;
use super::filter::RowFilter;
use crate::error::{Error, Result};
use crate::model::{CompactionRules, KeyOrder, KeyValue, PrimitiveType, Region, Schema};
use crate::storage::Stores;

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

/// Batches read ahead per input file: enough to overlap decoding with merging, small enough
/// that memory stays flat however large the leaf.
const READ_AHEAD_BATCHES: usize = 2;

#[derive(Debug, Clone)]
pub struct LeafMergeExec {
    table_id: String,
    schema: Arc<Schema>,
    /// The order of the table's files, which the merge and the region filter follow.
    order: KeyOrder,
    /// Whether to check, as files are read, that their rows are in that order.
    verify_order: bool,
    /// Positions in `read_schema` of the output columns.
    output_columns: Vec<usize>,
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
    stores: Stores,
    metrics: ExecutionPlanMetricsSet,
    cache: Arc<PlanProperties>,
}

impl LeafMergeExec {
    /// `projection` indexes the table's columns (row keys, sort keys, values), as DataFusion's
    /// scans do; `None` is every column. `rules` are applied as Sleeper's compaction would.
    pub fn new(
        table_id: impl Into<String>,
        schema: Arc<Schema>,
        order: KeyOrder,
        leaves: Vec<LeafInput>,
        projection: Option<&[usize]>,
        rules: CompactionRules,
        stores: Stores,
    ) -> Self {
        let table_schema = schema.arrow_schema();
        let key_count = schema.key_fields().count();
        let projection: Vec<usize> = projection.map_or_else(
            || (0..table_schema.fields().len()).collect(),
            <[usize]>::to_vec,
        );
        let column_index = |name: &str| {
            table_schema
                .index_of(name)
                .expect("validated: filter columns exist")
        };
        let mut read_columns: Vec<usize> = (0..key_count).collect();
        read_columns.extend(projection.iter().copied());
        read_columns.extend(rules.age_offs.iter().map(|a| column_index(&a.column)));
        read_columns.sort_unstable();
        read_columns.dedup();
        let output_columns: Vec<usize> = projection
            .iter()
            .map(|c| {
                read_columns
                    .iter()
                    .position(|r| r == c)
                    .expect("every projected column is read")
            })
            .collect();
        let read_schema = Arc::new(
            table_schema
                .project(&read_columns)
                .expect("read columns exist"),
        );
        let output_schema = Arc::new(
            read_schema
                .project(&output_columns)
                .expect("output columns are read"),
        );
        let cache = Arc::new(Self::compute_properties(
            &schema,
            order,
            &output_schema,
            &output_columns,
            leaves.len(),
        ));
        LeafMergeExec {
            table_id: table_id.into(),
            schema,
            order,
            verify_order: true,
            output_columns,
            read_schema,
            output_schema,
            leaves: Arc::new(leaves),
            pruned_leaves: 0,
            rules: Arc::new(rules),
            age_off_clock: None,
            stores,
            metrics: ExecutionPlanMetricsSet::new(),
            cache,
        }
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

    /// For each age-off filter, its column in the read schema and the oldest time kept, from one
    /// clock read per leaf, which the `age_off_clock_millis` metric records.
    fn age_off_cutoffs(&self, partition: usize) -> Vec<(usize, i64)> {
        if self.rules.age_offs.is_empty() {
            return vec![];
        }
        let now = self.age_off_clock.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        });
        MetricBuilder::new(&self.metrics)
            .gauge("age_off_clock_millis", partition)
            .set(now as usize);
        self.rules
            .age_offs
            .iter()
            .map(|age_off| {
                let column = self
                    .read_schema
                    .index_of(&age_off.column)
                    .expect("age-off columns are read");
                (column, now.saturating_sub(age_off.max_age_millis))
            })
            .collect()
    }

    async fn merge_leaf(&self, partition: usize, batch_size: usize) -> Result<LeafMerge> {
        let leaf = &self.leaves[partition];
        let key_types = self.schema.key_types();
        let converter = Arc::new(
            RowConverter::new(
                key_types
                    .iter()
                    .map(|t| {
                        SortField::new(match t {
                            PrimitiveType::Int => DataType::Int32,
                            PrimitiveType::Long => DataType::Int64,
                            PrimitiveType::String | PrimitiveType::ByteArray => DataType::Binary,
                        })
                    })
                    .collect(),
            )
            .map_err(|source| Error::Arrow {
                context: "creating the key comparator".into(),
                source,
            })?,
        );
        let filter = Arc::new(RowFilter::new(
            &leaf.partition_region,
            &leaf.query_regions,
            &self.schema.row_key_types(),
            self.order,
        ));
        let age_offs = Arc::new(self.age_off_cutoffs(partition));
        let rows_read = MetricBuilder::new(&self.metrics).counter("rows_read", partition);
        let row_groups_pruned =
            MetricBuilder::new(&self.metrics).counter("row_groups_pruned", partition);
        MetricBuilder::new(&self.metrics)
            .counter("input_files", partition)
            .add(leaf.files.len());
        let mut inputs = Vec::with_capacity(leaf.files.len());
        for file in &leaf.files {
            let reader = FileReader {
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
                batch_size,
            };
            let opened = reader.open(&self.stores).await?;
            let (sender, receiver) = mpsc::channel(READ_AHEAD_BATCHES);
            let task = SpawnedTask::spawn(reader.run(opened, sender));
            inputs.push(Input {
                receiver,
                _task: task,
            });
        }
        let aggregator = (!self.rules.aggregations.is_empty()).then(|| {
            RowAggregator::new(
                Arc::clone(&self.read_schema),
                self.schema.key_fields().count(),
                &self.rules.aggregations,
            )
        });
        let mut merge = LeafMerge {
            inputs,
            aggregator,
            cursors: Vec::new(),
            heads: Vec::new(),
            losers: Vec::new(),
            slots: Vec::new(),
            indices: Vec::with_capacity(batch_size),
            read_schema: Arc::clone(&self.read_schema),
            output_columns: self.output_columns.clone(),
            batch_size,
        };
        merge.start().await?;
        Ok(merge)
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
        let batch_size = context.session_config().batch_size();
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        // The merge is opened lazily, on the first poll, because opening reads file footers.
        let stream = futures::stream::try_unfold(None, move |merge: Option<LeafMerge>| {
            let this = this.clone();
            let baseline = baseline.clone();
            async move {
                let mut merge = match merge {
                    Some(merge) => merge,
                    None => this.merge_leaf(partition, batch_size).await?,
                };
                let batch = merge.next_batch().await?;
                Ok(batch.map(|batch| {
                    baseline.record_output(batch.num_rows());
                    (batch, Some(merge))
                }))
            }
        })
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

/// A batch that passed the filters, with its keys in the table's order, as row format.
struct KeyedBatch {
    batch: RecordBatch,
    keys: SortKeys,
}

/// Row-format keys, and the first eight bytes of each kept row's as a big-endian integer:
/// comparing two integers settles almost every comparison without touching the rows.
struct SortKeys {
    /// Every row of the batch as read, kept or not (the order check reads them all).
    rows: Rows,
    /// The position in `rows` of each kept row, when the filters dropped some.
    kept: Option<Vec<u32>>,
    prefixes: Vec<u64>,
}

/// Zero padding only ever makes a shorter row tie with or sort before a longer one, which the
/// full comparison then settles.
fn prefix(row: Row<'_>) -> u64 {
    let bytes = row.as_ref();
    let mut prefix = [0u8; 8];
    let length = bytes.len().min(8);
    prefix[..length].copy_from_slice(&bytes[..length]);
    u64::from_be_bytes(prefix)
}

impl SortKeys {
    fn len(&self) -> usize {
        self.prefixes.len()
    }

    fn row(&self, kept_row: usize) -> Row<'_> {
        match &self.kept {
            Some(kept) => self.rows.row(kept[kept_row] as usize),
            None => self.rows.row(kept_row),
        }
    }

    fn compare(&self, row: usize, other: &SortKeys, other_row: usize) -> Ordering {
        self.prefixes[row]
            .cmp(&other.prefixes[other_row])
            .then_with(|| self.row(row).cmp(&other.row(other_row)))
    }
}

struct FileReader {
    file: String,
    partition_id: String,
    read_schema: SchemaRef,
    key_types: Vec<PrimitiveType>,
    order: KeyOrder,
    verify_order: bool,
    converter: Arc<RowConverter>,
    filter: Arc<RowFilter>,
    /// Age-off filters: a column and the oldest time it may hold.
    age_offs: Arc<Vec<(usize, i64)>>,
    rows_read: Count,
    row_groups_pruned: Count,
    batch_size: usize,
}

/// How to turn a file's batches into the table's columns: which file column feeds each table
/// column, and a cast where the file's type has another shape of the same values (nested field
/// names or nullability, as other writers choose them).
struct ColumnAdapter {
    positions: Vec<usize>,
    casts: Vec<Option<DataType>>,
}

/// Where a file's rows stand in the check that they are in the table's order.
#[derive(Default)]
struct OrderCheck {
    /// The last row read, in row format and as key values (for the message).
    last: Option<(OwnedRow, Vec<KeyValue>)>,
    rows_checked: u64,
    /// The first row number in the file, and the row count, of each row group read.
    row_groups: Vec<(u64, u64)>,
}

impl OrderCheck {
    /// The row number in the file of the `index`th row read.
    fn file_row(&self, index: u64) -> u64 {
        let mut before = 0;
        for &(start, rows) in &self.row_groups {
            if index < before + rows {
                return start + index - before;
            }
            before += rows;
        }
        index
    }
}

type ParquetStream = ParquetRecordBatchStream<ObjectFileReader>;

/// Whether two Arrow types hold the same values, whatever their nested fields are named and
/// whether those are declared nullable (a cast turns one into the other).
fn same_values(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (DataType::List(x), DataType::List(y)) | (DataType::Map(x, _), DataType::Map(y, _)) => {
            same_values(x.data_type(), y.data_type())
        }
        (DataType::Struct(x), DataType::Struct(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(f, g)| same_values(f.data_type(), g.data_type()))
        }
        _ => a == b,
    }
}

/// The bounds a row group's statistics give its first row key, where the table's order is
/// Parquet's own and the bounds are exact (byte-array statistics may be truncated).
fn statistics_bounds(
    statistics: &ParquetStatistics,
    key_type: PrimitiveType,
) -> Option<(KeyValue, KeyValue)> {
    match (statistics, key_type) {
        (ParquetStatistics::Int32(s), PrimitiveType::Int) => {
            Some((KeyValue::Int(*s.min_opt()?), KeyValue::Int(*s.max_opt()?)))
        }
        (ParquetStatistics::Int64(s), PrimitiveType::Long) => {
            Some((KeyValue::Long(*s.min_opt()?), KeyValue::Long(*s.max_opt()?)))
        }
        (ParquetStatistics::ByteArray(s), PrimitiveType::String | PrimitiveType::ByteArray)
            if s.min_is_exact() && s.max_is_exact() =>
        {
            let (min, max) = (s.min_opt()?.data(), s.max_opt()?.data());
            Some(match key_type {
                PrimitiveType::String => (
                    KeyValue::String(std::str::from_utf8(min).ok()?.to_owned()),
                    KeyValue::String(std::str::from_utf8(max).ok()?.to_owned()),
                ),
                _ => (KeyValue::Bytes(min.to_vec()), KeyValue::Bytes(max.to_vec())),
            })
        }
        _ => None,
    }
}

impl FileReader {
    fn mismatch(&self, message: String) -> Error {
        Error::InputSchemaMismatch {
            file: self.file.clone(),
            partition: self.partition_id.clone(),
            message,
        }
    }

    fn arrow_error(&self, source: ArrowError) -> Error {
        Error::Arrow {
            context: format!("reading {} for partition {}", self.file, self.partition_id),
            source,
        }
    }

    fn corrupt(&self, source: datafusion::parquet::errors::ParquetError) -> Error {
        Error::CorruptInputFile {
            file: self.file.clone(),
            partition: self.partition_id.clone(),
            source,
        }
    }

    async fn open(&self, stores: &Stores) -> Result<(ParquetStream, ColumnAdapter, OrderCheck)> {
        let location = stores.resolve(&self.file)?;
        let meta = location
            .store
            .head(&location.prefix)
            .await
            .map_err(|source| match source {
                object_store::Error::NotFound { .. } => Error::MissingInputFile {
                    file: self.file.clone(),
                    partition: self.partition_id.clone(),
                    source,
                },
                other => Error::object_store(&self.file, other),
            })?;
        let reader = ObjectFileReader {
            store: Arc::clone(&location.store),
            path: location.prefix,
            size: meta.size,
        };
        // Column types come from the Parquet schema, not from an Arrow schema its writer embedded:
        // Sleeper's DataFusion compaction declares its strings Utf8View and its byte arrays
        // BinaryView there, and both read as the table's Utf8 and Binary this way.
        let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
        let builder = ParquetRecordBatchStreamBuilder::new_with_options(reader, options)
            .await
            .map_err(|e| self.corrupt(e))?;
        let file_schema = Arc::clone(builder.schema());
        let mut file_columns = Vec::with_capacity(self.read_schema.fields().len());
        let mut casts = Vec::with_capacity(self.read_schema.fields().len());
        for field in self.read_schema.fields() {
            let (index, file_field) = file_schema
                .column_with_name(field.name())
                .ok_or_else(|| self.mismatch(format!("it has no column {:?}", field.name())))?;
            if file_field.data_type() == field.data_type() {
                casts.push(None);
            } else if same_values(file_field.data_type(), field.data_type()) {
                casts.push(Some(field.data_type().clone()));
            } else {
                return Err(self.mismatch(format!(
                    "column {:?} is {} in the file but {} in the table",
                    field.name(),
                    file_field.data_type(),
                    field.data_type()
                )));
            }
            file_columns.push(index);
        }
        let mut selected = file_columns.clone();
        selected.sort_unstable();
        let positions = file_columns
            .iter()
            .map(|c| {
                selected
                    .binary_search(c)
                    .expect("selected holds every file column")
            })
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), selected);
        let row_groups = self.row_groups_in_region(builder.metadata());
        let metadata = builder.metadata();
        let mut starts = Vec::with_capacity(metadata.num_row_groups());
        let mut start = 0u64;
        for group in metadata.row_groups() {
            starts.push(start);
            start += group.num_rows() as u64;
        }
        let check = OrderCheck {
            row_groups: row_groups
                .iter()
                .map(|&g| (starts[g], metadata.row_group(g).num_rows() as u64))
                .collect(),
            ..OrderCheck::default()
        };
        let stream = builder
            .with_projection(mask)
            .with_row_groups(row_groups)
            .with_batch_size(self.batch_size)
            .build()
            .map_err(|e| self.corrupt(e))?;
        Ok((stream, ColumnAdapter { positions, casts }, check))
    }

    /// Row groups that may hold rows the region filter keeps, judged by the statistics of the
    /// first row key where they bound its values in the table's order.
    fn row_groups_in_region(&self, metadata: &ParquetMetaData) -> Vec<usize> {
        let all = 0..metadata.num_row_groups();
        let key_type = self.key_types[0];
        if !self.order.agrees_with_arrow(key_type) {
            return all.collect();
        }
        let ranges = self.filter.first_key_ranges();
        let first_key = self.read_schema.field(0).name();
        let column = metadata
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .position(|c| c.path().parts() == [first_key.as_str()]);
        let Some(column) = column else {
            return all.collect();
        };
        let kept: Vec<usize> = all
            .filter(|&i| {
                let bounds = metadata
                    .row_group(i)
                    .column(column)
                    .statistics()
                    .and_then(|s| statistics_bounds(s, key_type));
                bounds.is_none_or(|(low, high)| {
                    ranges
                        .iter()
                        .any(|range| range.overlaps(&low, &high, self.order))
                })
            })
            .collect();
        self.row_groups_pruned
            .add(metadata.num_row_groups() - kept.len());
        kept
    }

    async fn run(
        self,
        (mut stream, adapter, mut check): (ParquetStream, ColumnAdapter, OrderCheck),
        sender: mpsc::Sender<Result<KeyedBatch>>,
    ) {
        while let Some(batch) = stream.next().await {
            let (keyed, past_end) = match batch
                .map_err(|e| self.corrupt(e))
                .and_then(|b| self.prepare(b, &adapter, &mut check))
            {
                Ok(prepared) => prepared,
                Err(error) => {
                    let _ = sender.send(Err(error)).await;
                    return;
                }
            };
            if let Some(keyed) = keyed {
                if sender.send(Ok(keyed)).await.is_err() {
                    return;
                }
            }
            if past_end {
                return;
            }
        }
    }

    /// Which rows pass the region and the age-off filters; `None` when all do.
    ///
    /// Age-off keeps `t >= now - maxAge`, as Sleeper's DataFusion compaction does (its Java path
    /// keeps `now - t < maxAge`, dropping the row exactly at the boundary): exports follow the
    /// DataFusion path, the one that applies filters. Null times compare as null and are dropped.
    fn keep(&self, batch: &RecordBatch) -> std::result::Result<Option<BooleanArray>, ArrowError> {
        let mut mask = self.filter.evaluate(batch)?;
        for &(column, cutoff) in self.age_offs.iter() {
            let recent = gt_eq(batch.column(column), &Int64Array::new_scalar(cutoff))?;
            mask = Some(match mask {
                Some(previous) => and(&previous, &recent)?,
                None => recent,
            });
        }
        Ok(mask.map(|mask| match mask.null_count() {
            0 => mask,
            _ => prep_null_mask_filter(&mask),
        }))
    }

    /// Adapts, checks the order of, filters and encodes one batch; also says whether the file
    /// has passed the region.
    fn prepare(
        &self,
        batch: RecordBatch,
        adapter: &ColumnAdapter,
        check: &mut OrderCheck,
    ) -> Result<(Option<KeyedBatch>, bool)> {
        let arrow_error = |source| self.arrow_error(source);
        self.rows_read.add(batch.num_rows());
        let columns = adapter
            .positions
            .iter()
            .zip(&adapter.casts)
            .map(|(&position, target)| {
                let column = batch.column(position);
                match target {
                    Some(target) => cast(column, target),
                    None => Ok(Arc::clone(column)),
                }
            })
            .collect::<std::result::Result<Vec<ArrayRef>, _>>()
            .map_err(|e| self.mismatch(format!("its values do not fit the table schema: {e}")))?;
        let batch = RecordBatch::try_new(Arc::clone(&self.read_schema), columns)
            .map_err(|e| self.mismatch(format!("its rows do not fit the table schema: {e}")))?;
        let past_end = self.filter.past_kept_keys(&batch).map_err(arrow_error)?;
        let mask = self
            .keep(&batch)
            .map_err(arrow_error)?
            .filter(|mask| mask.true_count() < batch.num_rows());
        // The order check reads every row, so then every row's key is encoded and the kept rows
        // point into them; without it, only the kept rows' keys are.
        let (mut batch, mask) = match mask {
            Some(mask) if !self.verify_order => (
                filter_record_batch(&batch, &mask).map_err(arrow_error)?,
                None,
            ),
            mask => (batch, mask),
        };
        if batch.num_rows() == 0 {
            return Ok((None, past_end));
        }
        let (rows, prefixes) = self.sort_keys(&batch)?;
        if self.verify_order {
            self.check_order(&batch, &rows, &prefixes, check)?;
        }
        let keys = match mask {
            None => SortKeys {
                rows,
                kept: None,
                prefixes,
            },
            Some(mask) if mask.true_count() == 0 => return Ok((None, past_end)),
            Some(mask) => {
                let kept: Vec<u32> = mask.values().set_indices().map(|i| i as u32).collect();
                batch = filter_record_batch(&batch, &mask).map_err(arrow_error)?;
                SortKeys {
                    prefixes: kept.iter().map(|&i| prefixes[i as usize]).collect(),
                    rows,
                    kept: Some(kept),
                }
            }
        };
        Ok((Some(KeyedBatch { batch, keys }), past_end))
    }

    /// The batch's keys in the table's order, as row format and as their eight-byte prefixes.
    fn sort_keys(&self, batch: &RecordBatch) -> Result<(Rows, Vec<u64>)> {
        let keys: Vec<ArrayRef> = self
            .key_types
            .iter()
            .enumerate()
            .map(|(i, &t)| self.order.ordered_array(t, batch.column(i)))
            .collect();
        let rows = self
            .converter
            .convert_columns(&keys)
            .map_err(|source| self.arrow_error(source))?;
        let prefixes = rows.iter().map(prefix).collect();
        Ok((rows, prefixes))
    }

    /// Fails on the first row that sorts before the row read before it: the merge of files not
    /// in the table's order would be out of order, silently. Every row read is checked; rows a
    /// file holds past the region's end are not read, so not checked.
    fn check_order(
        &self,
        batch: &RecordBatch,
        rows: &Rows,
        prefixes: &[u64],
        check: &mut OrderCheck,
    ) -> Result<()> {
        let Some(last) = prefixes.len().checked_sub(1) else {
            return Ok(());
        };
        if let Some((previous, _)) = &check.last {
            if rows.row(0) < previous.row() {
                return Err(self.unsorted(batch, 0, check));
            }
        }
        // A fold over the prefixes vectorises; rows are compared only where prefixes tie.
        let (descends, ties) = prefixes
            .windows(2)
            .fold((false, false), |(descends, ties), pair| {
                (descends | (pair[1] < pair[0]), ties | (pair[1] == pair[0]))
            });
        if descends || ties {
            let descent = (1..prefixes.len()).find(|&i| match prefixes[i].cmp(&prefixes[i - 1]) {
                Ordering::Less => true,
                Ordering::Equal => rows.row(i) < rows.row(i - 1),
                Ordering::Greater => false,
            });
            if let Some(row) = descent {
                return Err(self.unsorted(batch, row, check));
            }
        }
        check.last = Some((rows.row(last).owned(), self.key_values(batch, last)));
        check.rows_checked += prefixes.len() as u64;
        Ok(())
    }

    fn key_values(&self, batch: &RecordBatch, row: usize) -> Vec<KeyValue> {
        (0..self.key_types.len())
            .filter_map(|column| KeyValue::from_array(batch.column(column), row).ok())
            .collect()
    }

    fn unsorted(&self, batch: &RecordBatch, row: usize, check: &OrderCheck) -> Error {
        let key = self.key_values(batch, row);
        let previous = match row {
            0 => check
                .last
                .as_ref()
                .map(|(_, values)| values.clone())
                .unwrap_or_default(),
            _ => self.key_values(batch, row - 1),
        };
        let other = self.order.other();
        let fits_other = other.compare_keys(&previous, &key) != Ordering::Greater;
        let show = |values: &[KeyValue]| {
            let shown: Vec<String> = values.iter().map(KeyValue::to_string).collect();
            format!("({})", shown.join(", "))
        };
        Error::UnsortedInputFile {
            file: self.file.clone(),
            partition: self.partition_id.clone(),
            row: check.file_row(check.rows_checked + row as u64),
            key: show(&key),
            previous: show(&previous),
            order: self.order,
            other_order_fits: fits_other.then_some(other),
        }
    }
}

/// Reads a Parquet file through `object_store`, with its size already known from the `head`
/// that told a missing file from a corrupt one.
struct ObjectFileReader {
    store: Arc<dyn object_store::ObjectStore>,
    path: object_store::path::Path,
    size: u64,
}

/// Footer bytes fetched in the first request, so most files need one read for their metadata.
const FOOTER_PREFETCH: usize = 64 * 1024;

impl AsyncFileReader for ObjectFileReader {
    fn get_bytes(&mut self, range: std::ops::Range<u64>) -> BoxFuture<'_, ParquetResult<Bytes>> {
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, ParquetResult<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, ParquetResult<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_prefetch_hint(Some(FOOTER_PREFETCH))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

struct Input {
    receiver: mpsc::Receiver<Result<KeyedBatch>>,
    /// Dropping the merge stops the file readers.
    _task: SpawnedTask<()>,
}

struct Cursor {
    keys: SortKeys,
    slot: usize,
    position: usize,
}

/// The k-way merge of one leaf. A loser tree of input indices orders the inputs by their current
/// row (one comparison per level for each row, half a binary heap's); ties go to the earlier
/// input, so equal keys keep the order of the leaf's files.
struct LeafMerge {
    inputs: Vec<Input>,
    /// Collapses equal keys after the merge, when the table aggregates.
    aggregator: Option<RowAggregator>,
    cursors: Vec<Option<Cursor>>,
    /// The key prefix of each input's current row (`u64::MAX` once exhausted), in one flat array
    /// so that most matches are settled without following the cursors' pointers.
    heads: Vec<u64>,
    /// `losers[0]` is the input with the smallest current row; every other node holds the loser
    /// of the match played there. Exhausted inputs lose every match.
    losers: Vec<usize>,
    /// Batches that rows of the output under construction, or live cursors, point into.
    slots: Vec<RecordBatch>,
    indices: Vec<(usize, usize)>,
    read_schema: SchemaRef,
    output_columns: Vec<usize>,
    batch_size: usize,
}

impl LeafMerge {
    async fn start(&mut self) -> Result<()> {
        let inputs = self.inputs.len();
        self.cursors = (0..inputs).map(|_| None).collect();
        self.heads = vec![u64::MAX; inputs];
        for input in 0..inputs {
            self.advance(input).await?;
        }
        const EMPTY: usize = usize::MAX;
        self.losers = vec![EMPTY; inputs.max(1)];
        for input in 0..inputs {
            let mut winner = input;
            let mut node = (input + inputs) / 2;
            while node != 0 && self.losers[node] != EMPTY {
                let challenger = self.losers[node];
                if self.loses_to(winner, challenger) {
                    self.losers[node] = winner;
                    winner = challenger;
                }
                node /= 2;
            }
            self.losers[node] = winner;
        }
        Ok(())
    }

    /// Loads the next batch of `input` into its cursor; false when the input is exhausted.
    async fn advance(&mut self, input: usize) -> Result<bool> {
        match self.inputs[input].receiver.recv().await {
            Some(batch) => {
                let KeyedBatch { batch, keys } = batch?;
                self.slots.push(batch);
                self.heads[input] = keys.prefixes[0];
                self.cursors[input] = Some(Cursor {
                    keys,
                    slot: self.slots.len() - 1,
                    position: 0,
                });
                Ok(true)
            }
            None => {
                self.cursors[input] = None;
                self.heads[input] = u64::MAX;
                Ok(false)
            }
        }
    }

    /// Whether input `a`'s current row comes after input `b`'s (an exhausted input comes after
    /// everything).
    fn loses_to(&self, a: usize, b: usize) -> bool {
        let (head_a, head_b) = (self.heads[a], self.heads[b]);
        if head_a != head_b {
            return head_a > head_b;
        }
        match (&self.cursors[a], &self.cursors[b]) {
            (None, None) => a > b,
            (None, Some(_)) => true,
            (Some(_), None) => false,
            (Some(ca), Some(cb)) => match ca.keys.compare(ca.position, &cb.keys, cb.position) {
                Ordering::Greater => true,
                Ordering::Equal => a > b,
                Ordering::Less => false,
            },
        }
    }

    /// Replays the matches on the path of the last winner, whose current row has changed.
    fn replay(&mut self) {
        let mut winner = self.losers[0];
        let mut node = (winner + self.inputs.len()) / 2;
        while node != 0 {
            let challenger = self.losers[node];
            if self.loses_to(winner, challenger) {
                self.losers[node] = winner;
                winner = challenger;
            }
            node /= 2;
        }
        self.losers[0] = winner;
    }

    /// The next output batch: merged, aggregated when the table aggregates, projected.
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let arrow_error = |source| Error::Arrow {
            context: "aggregating merged rows".into(),
            source,
        };
        loop {
            let merged = self.next_merged().await?;
            let ready = match (&mut self.aggregator, merged) {
                (None, merged) => merged,
                (Some(aggregator), Some(merged)) => {
                    match aggregator.push(merged).map_err(arrow_error)? {
                        Some(ready) => Some(ready),
                        None => continue,
                    }
                }
                (Some(aggregator), None) => aggregator.finish(),
            };
            return ready
                .map(|batch| batch.project(&self.output_columns))
                .transpose()
                .map_err(|source| Error::Arrow {
                    context: "projecting merged rows".into(),
                    source,
                });
        }
    }

    /// The next batch of merged rows, with every column read.
    async fn next_merged(&mut self) -> Result<Option<RecordBatch>> {
        while let Some(winner) = self
            .losers
            .first()
            .copied()
            .filter(|&w| w < self.cursors.len())
        {
            let Some(cursor) = self.cursors[winner].as_mut() else {
                break;
            };
            self.indices.push((cursor.slot, cursor.position));
            cursor.position += 1;
            if cursor.position == cursor.keys.len() {
                self.advance(winner).await?;
            } else {
                self.heads[winner] = cursor.keys.prefixes[cursor.position];
            }
            self.replay();
            if self.indices.len() == self.batch_size {
                return self.emit().map(Some);
            }
        }
        if self.indices.is_empty() {
            Ok(None)
        } else {
            self.emit().map(Some)
        }
    }

    fn emit(&mut self) -> Result<RecordBatch> {
        let arrow_error = |source| Error::Arrow {
            context: "assembling merged rows".into(),
            source,
        };
        let columns = (0..self.read_schema.fields().len())
            .map(|c| {
                let sources: Vec<&dyn Array> =
                    self.slots.iter().map(|b| b.column(c).as_ref()).collect();
                interleave(&sources, &self.indices)
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(arrow_error)?;
        let batch =
            RecordBatch::try_new(Arc::clone(&self.read_schema), columns).map_err(arrow_error)?;
        self.indices.clear();
        self.release_consumed_batches();
        Ok(batch)
    }

    /// Keeps only the batches live cursors still read from, so memory is bounded by one batch per input.
    fn release_consumed_batches(&mut self) {
        let mut kept = Vec::with_capacity(self.inputs.len());
        for cursor in self.cursors.iter_mut().flatten() {
            kept.push(std::mem::replace(
                &mut self.slots[cursor.slot],
                RecordBatch::new_empty(Arc::new(ArrowSchema::empty())),
            ));
            cursor.slot = kept.len() - 1;
        }
        self.slots = kept;
    }
}
