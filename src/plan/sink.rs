//! `LeafExportExec`: writes each input partition (one leaf) as one Parquet file through
//! `object_store`, and returns one summary row per leaf.
//!
//! A file becomes visible only when it is complete: small files are a single PUT, large ones a
//! multipart upload completed at the end (on a local disk, a staging file renamed at the end).
//! On any failure the upload is aborted, so no partial file is ever at the final path.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema as ArrowSchema, SchemaRef};
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::parquet::arrow::AsyncArrowWriter;
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
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::ObjectStore;
use tokio::sync::mpsc;

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

/// Batches queued between the merge and the encoder: the two run on different threads.
const ENCODE_QUEUE_BATCHES: usize = 4;

pub struct LeafExportExec {
    input: Arc<dyn ExecutionPlan>,
    store: Arc<dyn ObjectStore>,
    targets: Arc<Vec<ExportTarget>>,
    writer_properties: WriterProperties,
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
            return Err(Error::DataFusion(DataFusionError::Plan(format!(
                "export plan has {partitions} leaves but {} output files",
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
            metrics: ExecutionPlanMetricsSet::new(),
            cache,
        })
    }

    pub fn targets(&self) -> &[ExportTarget] {
        &self.targets
    }
}

impl DisplayAs for LeafExportExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                let files: Vec<&str> = self.targets.iter().map(|t| t.url.as_str()).collect();
                write!(f, "LeafExportExec: files=[{}]", files.join(", "))
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
        Ok(Arc::new(LeafExportExec::try_new(
            input,
            Arc::clone(&self.store),
            self.targets.to_vec(),
            self.writer_properties.clone(),
        )?))
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
    rows_written: Count,
    bytes_written: Count,
}

enum Encode {
    Batch(RecordBatch),
    /// Sent once the input ended cleanly; without it the upload is aborted.
    Commit,
}

impl LeafWriter {
    fn output_error(&self, message: impl fmt::Display) -> Error {
        Error::Output {
            path: self.target.url.clone(),
            message: message.to_string(),
        }
    }

    async fn write(self, mut input: SendableRecordBatchStream) -> Result<RecordBatch> {
        let (sender, receiver) = mpsc::channel(ENCODE_QUEUE_BATCHES);
        let schema = input.schema();
        let upload = BufWriter::new(Arc::clone(&self.store), self.target.path.clone());
        let writer =
            AsyncArrowWriter::try_new(upload, schema, Some(self.writer_properties.clone()))
                .map_err(|e| self.output_error(e))?;
        let encoder = SpawnedTask::spawn(encode(writer, receiver));
        let mut rows = 0u64;
        let mut failure = None;
        while let Some(batch) = input.next().await {
            match batch {
                Ok(batch) => {
                    rows += batch.num_rows() as u64;
                    if sender.send(Encode::Batch(batch)).await.is_err() {
                        break;
                    }
                }
                Err(error) => {
                    failure = Some(Error::from(error));
                    break;
                }
            }
        }
        if failure.is_none() {
            let _ = sender.send(Encode::Commit).await;
        }
        drop(sender);
        let encoded = encoder
            .join()
            .await
            .map_err(|e| self.output_error(format!("the encoder stopped: {e}")))?;
        if let Some(failure) = failure {
            return Err(failure);
        }
        let bytes = encoded.map_err(|e| self.output_error(e))?;
        self.rows_written.add(rows as usize);
        self.bytes_written.add(bytes as usize);
        RecordBatch::try_new(
            summary_schema(),
            vec![
                Arc::new(StringArray::from(vec![self.target.partition_id.as_str()])),
                Arc::new(StringArray::from(vec![self.target.sub_export_id.as_str()])),
                Arc::new(StringArray::from(vec![self.target.url.as_str()])),
                Arc::new(UInt64Array::from(vec![rows])),
                Arc::new(UInt64Array::from(vec![bytes])),
            ],
        )
        .map_err(|source| Error::Arrow {
            context: "building the export summary".into(),
            source,
        })
    }
}

/// Encodes and uploads batches until told to commit; returns the file size. Any other ending
/// (an error here, the input failing, the export being cancelled) aborts the upload.
async fn encode(
    mut writer: AsyncArrowWriter<BufWriter>,
    mut receiver: mpsc::Receiver<Encode>,
) -> std::result::Result<u64, String> {
    let mut committed = false;
    let mut failure = None;
    while let Some(message) = receiver.recv().await {
        match message {
            Encode::Batch(batch) => {
                if let Err(e) = writer.write(&batch).await {
                    failure = Some(e.to_string());
                    break;
                }
            }
            Encode::Commit => {
                committed = true;
                break;
            }
        }
    }
    if committed && failure.is_none() {
        return match writer.finish().await {
            Ok(_) => Ok(writer.bytes_written() as u64),
            Err(e) => {
                abort(writer).await;
                Err(e.to_string())
            }
        };
    }
    abort(writer).await;
    Err(failure.unwrap_or_else(|| "the export was stopped before the file was complete".into()))
}

async fn abort(writer: AsyncArrowWriter<BufWriter>) {
    let mut upload = writer.into_inner();
    if let Err(e) = upload.abort().await {
        log::warn!("could not abort an unfinished upload: {e}");
    }
}
