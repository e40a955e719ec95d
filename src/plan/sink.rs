//! `LeafExportExec`: writes each input partition (one leaf) as one Parquet file through
//! `object_store`, and returns one summary row per leaf.
//!
//! A file becomes visible only when it is complete (see [`ParallelParquetWriter`]); on any
//! failure the upload is aborted, so no partial file is ever at the final path.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::UInt64Type;
use datafusion::arrow::datatypes::{DataType, Field, Schema as ArrowSchema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties,
    Partitioning, PlanProperties, ReplaceChildrenOptions,
};
use futures::StreamExt;
use object_store::path::Path;
use object_store::ObjectStore;
use tokio_util::sync::CancellationToken;

use super::memory::LeafMemoryShare;
use super::merge::LeafMergeExec;
use super::parquet_writer::ParallelParquetWriter;
use crate::error::{BoxError, Error, Result};

/// Where one leaf's file goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportTarget {
    pub partition_id: String,
    pub sub_export_id: String,
    pub path: Path,
    /// The full URL of the file, for messages and summaries.
    pub url: String,
}

pub struct LeafExportExec {
    input: Arc<dyn ExecutionPlan>,
    store: Arc<dyn ObjectStore>,
    targets: Arc<Vec<ExportTarget>>,
    writer_properties: WriterProperties,
    /// Stops the writers, which abort their uploads; dropping the plan's streams does the same
    /// but cannot wait for the aborts to finish.
    cancel: Option<CancellationToken>,
    metrics: ExecutionPlanMetricsSet,
    cache: Arc<PlanProperties>,
}

impl fmt::Debug for LeafExportExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeafExportExec")
            .field("targets", &self.targets)
            .finish()
    }
}

/// A leaf's written file: the row the sink returns for it, and its completion record in an
/// export's `_status/`. Converted to and from both here only.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WrittenLeaf {
    pub leaf_partition_id: String,
    pub sub_export_id: String,
    pub file: String,
    /// Rows the merge read from the leaf's files (row groups pruned away are not read).
    pub rows_read: u64,
    pub rows_written: u64,
    pub bytes: u64,
    /// CRC32C of the file's bytes, hex.
    pub crc32c: String,
    /// The clock that age-off filters were applied against, when the table has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_off_clock_millis: Option<u64>,
}

impl WrittenLeaf {
    /// The sink's output: one row per leaf.
    pub fn schema() -> SchemaRef {
        Arc::new(ArrowSchema::new(vec![
            Field::new("leaf_partition_id", DataType::Utf8, false),
            Field::new("sub_export_id", DataType::Utf8, false),
            Field::new("file", DataType::Utf8, false),
            Field::new("rows_read", DataType::UInt64, false),
            Field::new("rows_written", DataType::UInt64, false),
            Field::new("bytes", DataType::UInt64, false),
            Field::new("crc32c", DataType::Utf8, false),
            Field::new("age_off_clock_millis", DataType::UInt64, true),
        ]))
    }

    fn to_batch(&self) -> Result<RecordBatch> {
        RecordBatch::try_new(
            WrittenLeaf::schema(),
            vec![
                Arc::new(StringArray::from(vec![self.leaf_partition_id.as_str()])),
                Arc::new(StringArray::from(vec![self.sub_export_id.as_str()])),
                Arc::new(StringArray::from(vec![self.file.as_str()])),
                Arc::new(UInt64Array::from(vec![self.rows_read])),
                Arc::new(UInt64Array::from(vec![self.rows_written])),
                Arc::new(UInt64Array::from(vec![self.bytes])),
                Arc::new(StringArray::from(vec![self.crc32c.as_str()])),
                Arc::new(UInt64Array::from(vec![self.age_off_clock_millis])),
            ],
        )
        .map_err(|source| Error::Arrow {
            context: "building the export summary".into(),
            source,
        })
    }

    /// The leaves of the sink's output batches.
    pub fn from_batches(batches: &[RecordBatch]) -> Result<Vec<WrittenLeaf>> {
        let mut leaves = Vec::new();
        for batch in batches {
            let column = |name: &str| {
                batch.column_by_name(name).ok_or_else(|| Error::Arrow {
                    context: "reading the export summary".into(),
                    source: ArrowError::SchemaError(format!("no column {name}")),
                })
            };
            let (partitions, sub_exports, files, crc32c) = (
                column("leaf_partition_id")?.as_string::<i32>(),
                column("sub_export_id")?.as_string::<i32>(),
                column("file")?.as_string::<i32>(),
                column("crc32c")?.as_string::<i32>(),
            );
            let (rows_read, rows_written, bytes, clock) = (
                column("rows_read")?.as_primitive::<UInt64Type>(),
                column("rows_written")?.as_primitive::<UInt64Type>(),
                column("bytes")?.as_primitive::<UInt64Type>(),
                column("age_off_clock_millis")?.as_primitive::<UInt64Type>(),
            );
            for row in 0..batch.num_rows() {
                leaves.push(WrittenLeaf {
                    leaf_partition_id: partitions.value(row).to_owned(),
                    sub_export_id: sub_exports.value(row).to_owned(),
                    file: files.value(row).to_owned(),
                    rows_read: rows_read.value(row),
                    rows_written: rows_written.value(row),
                    bytes: bytes.value(row),
                    crc32c: crc32c.value(row).to_owned(),
                    age_off_clock_millis: clock.is_valid(row).then(|| clock.value(row)),
                });
            }
        }
        Ok(leaves)
    }
}

impl LeafExportExec {
    /// `targets[i]` receives input partition `i`.
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        store: Arc<dyn ObjectStore>,
        targets: Vec<ExportTarget>,
        writer_properties: WriterProperties,
    ) -> Result<Self> {
        let partitions = input.output_partitioning().partition_count();
        if partitions != targets.len() {
            // Only a plan that splits or joins leaves gets here, e.g. a round-robin repartition
            // that DataFusion adds for parallelism unless told not to.
            return Err(Error::DataFusion(DataFusionError::Plan(format!(
                "export plan has {partitions} partitions but {} leaves to write: each leaf must \
                 stay one partition (is datafusion.optimizer.enable_round_robin_repartition on?)",
                targets.len()
            ))));
        }
        let cache = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(WrittenLeaf::schema()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Ok(LeafExportExec {
            input,
            store,
            targets: Arc::new(targets),
            writer_properties,
            cancel: None,
            metrics: ExecutionPlanMetricsSet::new(),
            cache,
        })
    }

    pub fn with_cancel(self, cancel: CancellationToken) -> Self {
        LeafExportExec {
            cancel: Some(cancel),
            ..self
        }
    }

    pub fn targets(&self) -> &[ExportTarget] {
        &self.targets
    }
}

impl DisplayAs for LeafExportExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                // Every file of an export is in one directory.
                let directory = self
                    .targets
                    .first()
                    .and_then(|t| t.url.rsplit_once('/'))
                    .map_or("", |(directory, _)| directory);
                write!(
                    f,
                    "LeafExportExec: files={}, to={directory}",
                    self.targets.len()
                )
            }
            DisplayFormatType::TreeRender => write!(f, "files={}", self.targets.len()),
        }
    }
}

impl ExecutionPlan for LeafExportExec {
    fn name(&self) -> &'static str {
        "LeafExportExec"
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

    /// Each leaf's stream must reach its file as it is: no repartitioning, no re-ordering.
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
            .ok_or_else(|| DataFusionError::Internal("LeafExportExec needs its input".into()))?;
        Ok(Arc::new(LeafExportExec {
            cancel: self.cancel.clone(),
            ..LeafExportExec::try_new(
                input,
                Arc::clone(&self.store),
                self.targets.to_vec(),
                self.writer_properties.clone(),
            )?
        }))
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
        let target = self.targets.get(partition).cloned().ok_or_else(|| {
            DataFusionError::Internal(format!(
                "LeafExportExec has no output file for partition {partition}"
            ))
        })?;
        let share = LeafMemoryShare::of(&context);
        let reservation = MemoryConsumer::new(format!("LeafExportExec[{}]", target.partition_id))
            .register(context.memory_pool());
        let input = self.input.execute(partition, context)?;
        let writer = LeafWriter {
            plan_input: Arc::clone(&self.input),
            partition,
            store: Arc::clone(&self.store),
            target,
            writer_properties: self.writer_properties.clone(),
            cancel: self.cancel.clone().unwrap_or_default(),
            // Of the writer's share, its upload's parts may hold half.
            upload_bytes: share.map(|share| share.writer() / 2),
            reservation,
            rows_written: MetricBuilder::new(&self.metrics).counter("rows_written", partition),
            bytes_written: MetricBuilder::new(&self.metrics).counter("bytes_written", partition),
        };
        let summary = futures::stream::once(async move {
            writer.write(input).await.map_err(DataFusionError::from)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            WrittenLeaf::schema(),
            summary,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

struct LeafWriter {
    /// For the merge's metrics, once the leaf is written.
    plan_input: Arc<dyn ExecutionPlan>,
    partition: usize,
    store: Arc<dyn ObjectStore>,
    target: ExportTarget,
    writer_properties: WriterProperties,
    cancel: CancellationToken,
    upload_bytes: Option<usize>,
    /// What the writer holds, from the plan's memory pool.
    reservation: MemoryReservation,
    rows_written: Count,
    bytes_written: Count,
}

impl LeafWriter {
    async fn write_rows(
        &self,
        writer: &mut ParallelParquetWriter,
        input: &mut SendableRecordBatchStream,
    ) -> Result<u64> {
        let mut rows = 0u64;
        while let Some(batch) = input.next().await {
            let batch = batch?;
            rows += batch.num_rows() as u64;
            writer
                .write(batch)
                .await
                .map_err(|e| self.output_error(e))?;
            self.fit_in_reservation(writer).await?;
        }
        writer
            .write_remaining()
            .await
            .map_err(|e| self.output_error(e))?;
        Ok(rows)
    }

    /// Keeps what the writer holds inside its reservation: short of memory, it ends its row
    /// group early (the file then has smaller row groups); still short, the leaf fails with
    /// the pool's error, which names the limit.
    async fn fit_in_reservation(&self, writer: &mut ParallelParquetWriter) -> Result<()> {
        if self.reservation.try_resize(writer.memory_held()).is_ok() {
            return Ok(());
        }
        writer
            .end_row_group()
            .await
            .map_err(|e| self.output_error(e))?;
        Ok(self.reservation.try_resize(writer.memory_held())?)
    }

    fn output_error(&self, source: impl Into<BoxError>) -> Error {
        Error::output(self.target.url.clone(), source)
    }

    async fn write(self, mut input: SendableRecordBatchStream) -> Result<RecordBatch> {
        let mut writer = ParallelParquetWriter::try_new(
            Arc::clone(&self.store),
            self.target.path.clone(),
            input.schema(),
            self.writer_properties.clone(),
            self.upload_bytes,
        )
        .map_err(|e| self.output_error(e))?;
        // Cancellable until the upload is being completed, which cannot be stopped halfway
        // (and takes one request).
        let streamed = tokio::select! {
            streamed = self.write_rows(&mut writer, &mut input) => streamed,
            () = self.cancel.cancelled() => Err(Error::Cancelled),
        };
        let rows = match streamed {
            Ok(rows) => rows,
            Err(error) => {
                writer.abort().await;
                return Err(error);
            }
        };
        let written = writer.finish().await.map_err(|e| self.output_error(e))?;
        self.rows_written.add(rows as usize);
        self.bytes_written.add(written.bytes as usize);
        let counts = LeafMergeExec::counts_in(&self.plan_input, self.partition).unwrap_or_default();
        WrittenLeaf {
            leaf_partition_id: self.target.partition_id.clone(),
            sub_export_id: self.target.sub_export_id.clone(),
            file: self.target.url.clone(),
            rows_read: counts.rows_read,
            rows_written: rows,
            bytes: written.bytes,
            crc32c: written.crc32c,
            age_off_clock_millis: counts.age_off_clock_millis,
        }
        .to_batch()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::compute::concat_batches;
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool, UnboundedMemoryPool};
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use datafusion::parquet::basic::Compression;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::SessionConfig;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    const ROWS: usize = 600_000;
    const BATCH_ROWS: usize = 10_000;
    /// Each row's string: 100 bytes, so a row group of every row is about 60 MiB encoded.
    const VALUE_BYTES: usize = 100;

    fn batches() -> Vec<RecordBatch> {
        let schema = Arc::new(ArrowSchema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("value", DataType::Utf8, false),
        ]));
        (0..ROWS / BATCH_ROWS)
            .map(|batch| {
                let ids = (batch * BATCH_ROWS..(batch + 1) * BATCH_ROWS).map(|id| id as i64);
                let values = ids
                    .clone()
                    .map(|id| format!("{id:0width$}", width = VALUE_BYTES));
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(Int64Array::from_iter_values(ids)),
                        Arc::new(StringArray::from_iter_values(values)),
                    ],
                )
                .unwrap()
            })
            .collect()
    }

    /// Writes [`batches`] as one leaf's file, in row groups of every row unless memory runs
    /// short, with `pool`; the row groups' sizes of what it wrote, and the rows read back.
    async fn write_with(pool: Arc<dyn MemoryPool>) -> Result<(Vec<i64>, Vec<RecordBatch>)> {
        let input = batches();
        let schema = input[0].schema();
        let source = MemorySourceConfig::try_new_exec(&[input], schema, None)?;
        let store = Arc::new(InMemory::new());
        let target = ExportTarget {
            partition_id: "leaf".into(),
            sub_export_id: "leaf".into(),
            path: Path::from("out/leaf.parquet"),
            url: "memory:///out/leaf.parquet".into(),
        };
        let properties = WriterProperties::builder()
            .set_compression(Compression::UNCOMPRESSED)
            .set_dictionary_enabled(false)
            .set_max_row_group_row_count(Some(ROWS))
            .build();
        let plan = LeafExportExec::try_new(
            source,
            Arc::clone(&store) as Arc<dyn ObjectStore>,
            vec![target],
            properties,
        )?;
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::clone(&pool))
            .build_arc()?;
        let context = TaskContext::default()
            .with_session_config(SessionConfig::new())
            .with_runtime(runtime);
        collect(Arc::new(plan), Arc::new(context)).await?;
        assert_eq!(pool.reserved(), 0, "the writer's reservation is freed");
        let bytes = store
            .get(&Path::from("out/leaf.parquet"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        let row_groups = reader
            .metadata()
            .row_groups()
            .iter()
            .map(|group| group.num_rows())
            .collect();
        let read = reader.build().unwrap().collect::<Result<_, _>>().unwrap();
        Ok((row_groups, read))
    }

    /// With memory to spare the file is one row group; with a pool too small to hold one, the
    /// writer ends row groups early and writes the same rows; with less than its upload's part,
    /// the leaf fails with the pool's error, naming the writer.
    #[tokio::test]
    async fn short_of_memory_the_writer_ends_row_groups_early_and_writes_the_same_rows() {
        let written = |batches: &[RecordBatch]| {
            let all = concat_batches(&batches[0].schema(), batches).unwrap();
            all.columns()
                .iter()
                .map(|c| c.to_data())
                .collect::<Vec<_>>()
        };
        let input = written(&batches());
        let (whole, rows) = write_with(Arc::new(UnboundedMemoryPool::default()))
            .await
            .unwrap();
        assert_eq!(whole, vec![ROWS as i64]);
        assert!(written(&rows) == input);
        let (squeezed, squeezed_rows) = write_with(Arc::new(GreedyMemoryPool::new(32 << 20)))
            .await
            .unwrap();
        assert!(squeezed.len() > 1, "{squeezed:?}");
        assert_eq!(squeezed.iter().sum::<i64>(), ROWS as i64);
        assert!(written(&squeezed_rows) == input);
        let refused = write_with(Arc::new(GreedyMemoryPool::new(4 << 20)))
            .await
            .unwrap_err();
        let refused = DataFusionError::from(refused);
        assert!(
            matches!(refused.find_root(), DataFusionError::ResourcesExhausted(message)
                if message.contains("LeafExportExec[leaf]")),
            "{refused}"
        );
    }
}
