//! Whole-table exports: every leaf of a table through the same planner and runner as the
//! distributed export, over an in-process queue.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::leaf::ExportOptions;
use crate::plan::sink::WrittenLeaf;
use crate::query::BulkExportQuery;
use crate::queue::config::BulkExportConfig;
use crate::queue::local::LocalQueue;
use crate::queue::manifest::ExportRecords;
use crate::queue::planner::Planner;
use crate::queue::runner::Runner;
use crate::queue::TableIndex;
use crate::storage::Location;
use crate::table::SleeperTable;

#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub table_id: String,
    pub export_id: String,
    pub leaves: Vec<WrittenLeaf>,
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

/// Exports every leaf of `table` under `output`, `options.parallelism` leaves at a time, calling
/// `on_leaf` as each finishes. It schedules exactly as the distributed export does (the same
/// planner and runner, over an in-process queue), so it also writes the export's manifest and
/// status records, and run again with the same export id it exports only the leaves not done.
/// Every leaf runs; the first failure, if any, is the error returned. Cancelling
/// `options.cancel` stops it with [`Error::Cancelled`] and no partial file left.
///
/// ```no_run
/// # async fn example() -> sleeper_export::error::Result<()> {
/// use sleeper_export::export::export_table;
/// use sleeper_export::leaf::ExportOptions;
/// use sleeper_export::storage::Stores;
/// use sleeper_export::table::SleeperTable;
///
/// let stores = Stores::default();
/// let table = SleeperTable::open("s3://data-bucket/table-id", &stores).await?;
/// let output = stores.resolve("s3://export-bucket")?;
/// let summary = export_table(&table, &output, &ExportOptions::default(), |leaf| {
///     println!("{}: {} rows", leaf.file, leaf.rows_written)
/// })
/// .await?;
/// println!("{} rows in {} files", summary.rows_written(), summary.leaves.len());
/// # Ok(())
/// # }
/// ```
pub async fn export_table(
    table: &SleeperTable,
    output: &Location,
    options: &ExportOptions,
    mut on_leaf: impl FnMut(&WrittenLeaf),
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
    let query =
        BulkExportQuery::of_table(table.id(), export_id.clone()).with_sql(options.sql.clone());
    let planned = planner.plan(&query.to_json(), leaf_queue.as_ref()).await?;
    planned
        .empty_leaves
        .iter()
        .chain(&planned.already_done)
        .for_each(&mut on_leaf);
    let runner = Arc::new(local_runner(tables, output, options));
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
    let mut leaves = report.done;
    leaves.extend(planned.empty_leaves);
    leaves.extend(planned.already_done);
    in_manifest_order(&records, &mut leaves).await?;
    Ok(ExportSummary {
        table_id: table.id().to_owned(),
        export_id,
        leaves,
        elapsed: started.elapsed(),
    })
}

/// The runner of a local export: every leaf once, until the queue is empty, stopped at once.
fn local_runner(tables: TableIndex, output: &Location, options: &ExportOptions) -> Runner {
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
    .with_stop_grace(Duration::ZERO)
}

/// Sorts `leaves` in the manifest's order: leaves in key order, and a cut leaf's pieces in
/// theirs.
async fn in_manifest_order(records: &ExportRecords, leaves: &mut [WrittenLeaf]) -> Result<()> {
    let layout = records.layout();
    let manifest = records.manifest().await?.ok_or_else(|| {
        Error::location(
            layout.url_of(&layout.folder()),
            "the export's manifest is gone",
        )
    })?;
    let order: HashMap<&str, usize> = manifest
        .sub_exports
        .iter()
        .enumerate()
        .map(|(position, sub_export)| (sub_export.sub_export_id.as_str(), position))
        .collect();
    leaves.sort_by_key(|leaf| order.get(leaf.sub_export_id.as_str()).copied());
    Ok(())
}

/// Best effort: an export does not fail for want of tidying (a bucket's lifecycle rule is the
/// backstop on S3), and `status` names what is left.
async fn remove_unfinished_uploads(output: &Location, records: &ExportRecords) {
    match output
        .abort_unfinished_uploads(&records.layout().folder())
        .await
    {
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
