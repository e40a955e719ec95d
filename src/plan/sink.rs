//! `LeafExportExec`: writes each input partition (one leaf) as one Parquet file through
//! `object_store`, and returns one summary row per leaf.
//!
//! A file becomes visible only when it is complete (see [`ParallelParquetWriter`]); on any
//! failure the upload is aborted, so no partial file is ever at the final path.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema as ArrowSchema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DFResult};
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

use super::parquet_writer::ParallelParquetWriter;
use crate::error::{Error, Result};

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

pub fn summary_schema() -> SchemaRef {
    Arc::new(ArrowSchema::new(vec![
        Field::new("leaf_partition_id", DataType::Utf8, false),
        Field::new("sub_export_id", DataType::Utf8, false),
        Field::new("file", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("crc32c", DataType::Utf8, false),
    ]))
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
            EquivalenceProperties::new(summary_schema()),
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
        let input = self.input.execute(partition, context)?;
        let writer = LeafWriter {
            store: Arc::clone(&self.store),
            target,
            writer_properties: self.writer_properties.clone(),
            cancel: self.cancel.clone().unwrap_or_default(),
            rows_written: MetricBuilder::new(&self.metrics).counter("rows_written", partition),
            bytes_written: MetricBuilder::new(&self.metrics).counter("bytes_written", partition),
        };
        let summary = futures::stream::once(async move {
            writer.write(input).await.map_err(DataFusionError::from)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            summary_schema(),
            summary,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

struct LeafWriter {
    store: Arc<dyn ObjectStore>,
    target: ExportTarget,
    writer_properties: WriterProperties,
    cancel: CancellationToken,
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
        }
        writer
            .write_remaining()
            .await
            .map_err(|e| self.output_error(e))?;
        Ok(rows)
    }

    fn output_error(&self, message: impl fmt::Display) -> Error {
        Error::Output {
            path: self.target.url.clone(),
            message: message.to_string(),
        }
    }

    async fn write(self, mut input: SendableRecordBatchStream) -> Result<RecordBatch> {
        let mut writer = ParallelParquetWriter::try_new(
            Arc::clone(&self.store),
            self.target.path.clone(),
            input.schema(),
            self.writer_properties.clone(),
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
        RecordBatch::try_new(
            summary_schema(),
            vec![
                Arc::new(StringArray::from(vec![self.target.partition_id.as_str()])),
                Arc::new(StringArray::from(vec![self.target.sub_export_id.as_str()])),
                Arc::new(StringArray::from(vec![self.target.url.as_str()])),
                Arc::new(UInt64Array::from(vec![rows])),
                Arc::new(UInt64Array::from(vec![written.bytes])),
                Arc::new(StringArray::from(vec![written.crc32c])),
            ],
        )
        .map_err(|source| Error::Arrow {
            context: "building the export summary".into(),
            source,
        })
    }
}
