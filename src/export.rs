//! Running exports: one plan per leaf query (the unit a queue runner receives), and whole-table
//! exports that run those plans concurrently.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::UInt64Type;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{collect, ExecutionPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::path::Path;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::model::{CompactionRules, KeyOrder, TableProperties};
use crate::plan::{ExportTarget, LeafExportExec, LeafInput, LeafMergeExec};
use crate::query::{BulkExportLeafPartitionQuery, BulkExportQuery};
use crate::queue::config::BulkExportConfig;
use crate::queue::local::LocalQueue;
use crate::queue::manifest::ExportRecords;
use crate::queue::planner::Planner;
use crate::queue::runner::Runner;
use crate::queue::TableIndex;
use crate::storage::Location;
use crate::table::SleeperTable;

#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Generated (a UUID) when not given, as Sleeper does.
    pub export_id: Option<String>,
    /// Leaves exported at once.
    pub parallelism: usize,
    /// Rows per batch inside the merge.
    pub batch_size: usize,
    /// Export the stored rows as they are: no filters, no aggregation.
    pub raw: bool,
    /// The time age-off filters count back from; the clock at each leaf's start when not given.
    /// Pinning it makes a re-run of a leaf give the same rows.
    pub age_off_clock_millis: Option<i64>,
    /// The order of the table's files, instead of its data engine's (`sleeper.table.data.engine`).
    pub key_order: Option<KeyOrder>,
    /// The codec to write, instead of the table's (`sleeper.table.parquet.compression.codec`),
    /// one of Sleeper's names (e.g. for a table compressed with `lzo`, which cannot be written).
    pub compression: Option<String>,
    /// Check, as files are read, that their rows are in the table's order (on by default).
    pub verify_order: bool,
    /// Cancelling it stops the export: leaves being written abort their uploads and end with
    /// [`Error::Cancelled`]. Clones of the options share it.
    pub cancel: CancellationToken,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            export_id: None,
            parallelism: std::thread::available_parallelism().map_or(2, |n| n.get()),
            batch_size: 8192,
            raw: false,
            age_off_clock_millis: None,
            key_order: None,
            compression: None,
            verify_order: true,
            cancel: CancellationToken::new(),
        }
    }
}

impl ExportOptions {
    /// The table's properties with these options' overrides.
    pub fn table_properties(&self, table: &SleeperTable) -> TableProperties {
        let mut properties = table.properties.as_ref().clone();
        if let Some(order) = self.key_order {
            properties.key_order = order;
        }
        if let Some(codec) = &self.compression {
            properties.parquet.compression = codec.trim().to_ascii_lowercase();
        }
        properties
    }
}

/// A leaf's written file; also its completion record in the export's `_status/`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeafExportResult {
    pub leaf_partition_id: String,
    pub sub_export_id: String,
    pub file: String,
    pub rows_read: u64,
    pub rows_written: u64,
    pub bytes: u64,
    /// CRC32C of the file's bytes, hex.
    pub crc32c: String,
    /// The clock that age-off filters were applied against, when the table has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_off_clock_millis: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub table_id: String,
    pub export_id: String,
    pub leaves: Vec<LeafExportResult>,
    pub elapsed: Duration,
}

impl ExportSummary {
    pub fn rows_written(&self) -> u64 {
        self.leaves.iter().map(|l| l.rows_written).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.leaves.iter().map(|l| l.bytes).sum()
    }
}

/// `<output>/<tableId>/<exportId>/<subExportId>.parquet`, Sleeper's layout (by table id, not name).
pub fn output_path(
    output: &Location,
    table_id: &str,
    export_id: &str,
    sub_export_id: &str,
) -> Path {
    output.child(&format!("{table_id}/{export_id}/{sub_export_id}.parquet"))
}

impl From<&BulkExportLeafPartitionQuery> for LeafInput {
    fn from(query: &BulkExportLeafPartitionQuery) -> Self {
        LeafInput {
            partition_id: query.leaf_partition_id.clone(),
            partition_region: query.partition_region.clone(),
            query_regions: query.regions.clone(),
            files: query.files.clone(),
        }
    }
}

/// The physical plan of one leaf query: the leaf merge feeding the Parquet sink. Unless
/// `options.raw`, the table's filters and aggregations are applied, as Sleeper's DataFusion
/// compaction does.
pub fn leaf_export_plan(
    table: &SleeperTable,
    query: &BulkExportLeafPartitionQuery,
    output: &Location,
    options: &ExportOptions,
) -> Result<Arc<LeafExportExec>> {
    if query.table_id != table.id() {
        return Err(Error::TableNotFound {
            by: "ID",
            value: query.table_id.clone(),
        });
    }
    let properties = options.table_properties(table);
    let merge = LeafMergeExec::new(
        table.id(),
        Arc::new(properties.schema.clone()),
        properties.key_order,
        vec![LeafInput::from(query)],
        None,
        if options.raw {
            CompactionRules::default()
        } else {
            properties.compaction_rules()?
        },
        table.stores.clone(),
    )
    .with_age_off_clock(options.age_off_clock_millis)
    .with_order_check(options.verify_order);
    let writer_properties = properties.writer_properties(&merge.schema())?;
    let path = output_path(
        output,
        &query.table_id,
        &query.export_id,
        &query.sub_export_id,
    );
    let target = ExportTarget {
        partition_id: query.leaf_partition_id.clone(),
        sub_export_id: query.sub_export_id.clone(),
        url: output.url_of(&path),
        path,
    };
    Ok(Arc::new(
        LeafExportExec::try_new(
            Arc::new(merge),
            Arc::clone(&output.store),
            vec![target],
            writer_properties,
        )?
        .with_cancel(options.cancel.clone()),
    ))
}

fn task_context(batch_size: usize) -> Arc<TaskContext> {
    SessionContext::new_with_config(SessionConfig::new().with_batch_size(batch_size)).task_ctx()
}

/// Runs one leaf query to completion: its file is complete at the end, or absent on error.
pub async fn run_leaf_query(
    table: &SleeperTable,
    query: &BulkExportLeafPartitionQuery,
    output: &Location,
    options: &ExportOptions,
) -> Result<LeafExportResult> {
    let plan = leaf_export_plan(table, query, output, options)?;
    let batches = collect(
        Arc::clone(&plan) as Arc<dyn ExecutionPlan>,
        task_context(options.batch_size),
    )
    .await?;
    let summary = batches
        .first()
        .filter(|b| b.num_rows() == 1)
        .ok_or_else(|| Error::Output {
            path: plan.targets()[0].url.clone(),
            message: "the export plan returned no summary".into(),
        })?;
    let number = |column: usize| summary.column(column).as_primitive::<UInt64Type>().value(0);
    let merge_metrics = plan.children()[0].metrics().unwrap_or_default();
    let merge_metric = |name: &str| merge_metrics.sum_by_name(name).map(|v| v.as_usize() as u64);
    Ok(LeafExportResult {
        leaf_partition_id: query.leaf_partition_id.clone(),
        sub_export_id: query.sub_export_id.clone(),
        file: plan.targets()[0].url.clone(),
        rows_read: merge_metric("rows_read").unwrap_or(0),
        rows_written: number(3),
        bytes: number(4),
        crc32c: summary.column(5).as_string::<i32>().value(0).to_owned(),
        age_off_clock_millis: merge_metric("age_off_clock_millis"),
    })
}

/// Exports every leaf of `table` under `output`, `options.parallelism` leaves at a time, calling
/// `on_leaf` as each finishes. It schedules exactly as the distributed export does (the same
/// planner and runner, over an in-process queue), so it also writes the export's manifest and
/// status records, and run again with the same export id it exports only the leaves not done.
/// Every leaf runs; the first failure, if any, is the error returned. Cancelling
/// `options.cancel` stops it with [`Error::Cancelled`] and no partial file left.
pub async fn export_table(
    table: &SleeperTable,
    output: &Location,
    options: &ExportOptions,
    mut on_leaf: impl FnMut(&LeafExportResult),
) -> Result<ExportSummary> {
    let started = Instant::now();
    // A table whose settings cannot be written (a codec nothing here writes) fails before any
    // file is.
    options
        .table_properties(table)
        .writer_properties(&table.properties.schema.arrow_schema())?;
    let export_id = options
        .export_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let records = ExportRecords::new(output, table.id(), &export_id);
    // An earlier run of this export that was killed left these behind.
    remove_unfinished_uploads(output, &records).await;
    let tables = TableIndex::new(vec![table.clone()]);
    // Like Sleeper's queues, a leaf whose export fails is not retried.
    let dead_letters: Arc<LocalQueue> = Arc::default();
    let leaf_queue = Arc::new(LocalQueue::with_dead_letters(Arc::clone(&dead_letters), 1));
    let planner = Planner {
        tables: tables.clone(),
        output: output.clone(),
        export: options.clone(),
    };
    let query = BulkExportQuery::of_table(table.id(), export_id.clone());
    let planned = planner.plan(&query.to_json(), leaf_queue.as_ref()).await?;
    planned
        .empty_leaves
        .iter()
        .chain(&planned.already_done)
        .for_each(&mut on_leaf);
    let runner = Arc::new(
        Runner::new(
            tables,
            output.clone(),
            options.clone(),
            BulkExportConfig {
                wait: LOCAL_QUEUE_WAIT,
                ..BulkExportConfig::default()
            },
        )
        .with_concurrency(options.parallelism)
        .with_idle_exit(Some(Duration::ZERO))
        .with_stop_grace(Duration::ZERO),
    );
    let report = runner
        .run_reporting(
            leaf_queue,
            Some(dead_letters),
            options.cancel.clone().cancelled_owned(),
            on_leaf,
        )
        .await?;
    if options.cancel.is_cancelled() {
        // The writers aborted their uploads; what a dropped one left is removed here.
        remove_unfinished_uploads(output, &records).await;
        return Err(Error::Cancelled);
    }
    if let Some(error) = report.failed.into_iter().chain(report.rejected).next() {
        return Err(error);
    }
    let order: HashMap<&str, usize> = table
        .partitions
        .leaves()
        .into_iter()
        .enumerate()
        .map(|(position, leaf)| (leaf.id.as_str(), position))
        .collect();
    let mut leaves = report.done;
    leaves.extend(planned.empty_leaves);
    leaves.extend(planned.already_done);
    leaves.sort_by_key(|leaf| order.get(leaf.leaf_partition_id.as_str()).copied());
    Ok(ExportSummary {
        table_id: table.id().to_owned(),
        export_id,
        leaves,
        elapsed: started.elapsed(),
    })
}

/// Best effort: an export does not fail for want of tidying (a bucket's lifecycle rule is the
/// backstop on S3), and `status` names what is left.
async fn remove_unfinished_uploads(output: &Location, records: &ExportRecords) {
    match output.abort_unfinished_uploads(&records.folder()).await {
        Ok(removed) if !removed.is_empty() => tracing::info!(
            removed = removed.len(),
            "removed the unfinished uploads of an earlier run of the export"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("could not look for unfinished uploads: {e}"),
    }
}

/// How long an idle local runner waits for work before it sees it has none.
const LOCAL_QUEUE_WAIT: Duration = Duration::from_millis(10);
