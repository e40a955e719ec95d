//! The runner (Sleeper's ECS bulk-export task): executes leaf queries from the queue, keeping
//! each message invisible while its export runs, deleting it on success, and leaving it to be
//! offered again (and, after the queue's receive limit, dead-lettered) on failure.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::config::BulkExportConfig;
use super::manifest::{ExportRecords, Manifest};
use super::planner::reject;
use super::trust::check_leaf_query;
use super::worker::{MessageHandler, Outcome, WorkerLoop, DEFAULT_STOP_GRACE};
use super::{Message, MessageQueue};
use crate::error::{Error, Result};
use crate::leaf::{check_leaf_sql, run_leaf_query, ExportLayout, ExportOptions};
use crate::plan::sink::WrittenLeaf;
use crate::query::BulkExportLeafPartitionQuery;
use crate::queue::TableIndex;
use crate::storage::Location;
use crate::table::SleeperTable;

#[derive(Debug)]
pub struct Runner {
    tables: TableIndex,
    output: Location,
    /// Cancelling `export.cancel` stops the leaves running: they abort their uploads and their
    /// messages are offered again at once. `export.parallelism` is the leaves run at once,
    /// over which the memory pool is shared.
    export: ExportOptions,
    config: BulkExportConfig,
    idle_exit: Option<Duration>,
    stop_grace: Duration,
    /// Per export: its leaves, from its manifest (read once per export rather than once per
    /// leaf), and the completions last counted, where the next count starts looking.
    exports: Mutex<HashMap<(String, String), ExportProgress>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct ExportProgress {
    leaves: Option<usize>,
    counted: usize,
}

/// What a runner did before it stopped.
#[derive(Debug, Default)]
pub struct RunnerReport {
    pub done: Vec<WrittenLeaf>,
    /// Exports that failed; their messages are offered again (or dead-lettered by the queue).
    pub failed: Vec<Error>,
    /// Messages that were bad, and went to the dead-letter queue.
    pub rejected: Vec<Error>,
    /// Leaves stopped by shutdown, their uploads aborted; their messages are offered again.
    pub interrupted: Vec<String>,
}

impl Runner {
    /// A runner of one leaf at a time, that runs until stopped and on stopping gives running
    /// leaves 25 seconds (ECS sends SIGKILL 30 seconds after SIGTERM by default).
    pub fn new(
        tables: TableIndex,
        output: Location,
        export: ExportOptions,
        config: BulkExportConfig,
    ) -> Self {
        Runner {
            tables,
            output,
            export: ExportOptions {
                parallelism: 1,
                ..export.sharing_one_pool()
            },
            config,
            idle_exit: None,
            stop_grace: DEFAULT_STOP_GRACE,
            exports: Mutex::default(),
        }
    }

    /// Leaf queries run at once, each with its share of the export options' memory pool.
    pub fn with_concurrency(self, concurrency: usize) -> Self {
        Runner {
            export: ExportOptions {
                parallelism: concurrency.max(1),
                ..self.export
            },
            ..self
        }
    }

    /// Exit once no message has arrived, and none has been running, for this long.
    pub fn with_idle_exit(self, idle_exit: Option<Duration>) -> Self {
        Runner { idle_exit, ..self }
    }

    /// How long leaves running at shutdown may take to finish before they are cancelled.
    pub fn with_stop_grace(self, stop_grace: Duration) -> Self {
        Runner { stop_grace, ..self }
    }

    /// Receives and runs leaf queries until idle or until `shutdown` completes; then it takes no
    /// more work, finishes what it holds, and returns.
    pub async fn run(
        self: Arc<Self>,
        queue: Arc<dyn MessageQueue>,
        dead_letters: Option<Arc<dyn MessageQueue>>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<RunnerReport> {
        self.run_reporting(queue, dead_letters, shutdown, |_| {})
            .await
    }

    /// As [`Runner::run`], calling `on_done` as each leaf finishes (for progress displays).
    pub async fn run_reporting(
        self: Arc<Self>,
        queue: Arc<dyn MessageQueue>,
        dead_letters: Option<Arc<dyn MessageQueue>>,
        shutdown: impl std::future::Future<Output = ()>,
        mut on_done: impl FnMut(&WrittenLeaf),
    ) -> Result<RunnerReport> {
        let worker = WorkerLoop {
            concurrency: self.export.parallelism,
            wait: self.config.wait,
            visibility: self.config.visibility,
            keepalive: self.config.keepalive,
            idle_exit: self.idle_exit,
            stop_grace: self.stop_grace,
            cancel: self.export.cancel.clone(),
        };
        let mut report = RunnerReport::default();
        worker
            .run(self, queue, dead_letters, shutdown, |settled| {
                record(&mut report, settled, &mut on_done)
            })
            .await?;
        Ok(report)
    }

    /// The leaf query of a message, checked (its SQL too: the planner checked it, but the
    /// message may not come from a planner), and the table it names.
    async fn decode(&self, body: &str) -> Result<(BulkExportLeafPartitionQuery, &SleeperTable)> {
        let table_id = BulkExportLeafPartitionQuery::table_id_of(body)?;
        let table = self.tables.by_id(&table_id)?;
        let query =
            BulkExportLeafPartitionQuery::from_json(body, |_| Ok(table.properties.schema.clone()))?;
        check_leaf_query(&query, table)?;
        if let Some(sql) = &query.sql_query {
            check_leaf_sql(table, sql, &self.export).await?;
        }
        Ok((query, table))
    }
}

#[async_trait]
impl MessageHandler for Runner {
    type Done = WrittenLeaf;

    /// Runs one leaf query and settles its message.
    async fn handle(
        &self,
        message: &Message,
        queue: &dyn MessageQueue,
        dead_letters: Option<&dyn MessageQueue>,
    ) -> Result<Outcome<WrittenLeaf>> {
        let (query, table) = match self.decode(&message.body).await {
            Ok(decoded) => decoded,
            Err(error) => {
                reject(message, &error, queue, dead_letters).await?;
                return Ok(Outcome::Rejected(error));
            }
        };
        let records = ExportRecords::new(&self.output, &query.table_id, &query.export_id);
        self.abort_earlier_uploads(&query).await;
        let exported = run_leaf_query(table, &query, &self.output, &self.export).await;
        match exported {
            Ok(result) => {
                let key = (query.table_id.clone(), query.export_id.clone());
                let counted = records
                    .record_completion(&result, self.progress(&key).counted)
                    .await?;
                self.mark_export_if_complete(&records, &query, counted)
                    .await?;
                queue.delete(&message.receipt).await?;
                tracing::info!(
                    "exported leaf {} of export {}: {} rows to {}",
                    result.leaf_partition_id,
                    query.export_id,
                    result.rows_written,
                    result.file
                );
                Ok(Outcome::Done(result))
            }
            Err(error) if error.is_bad_message() => {
                // A message refused as it ran (its SQL, by what it made) was decoded and checked
                // first, so its export's records may say why, for `status`.
                records.record_failure(&query, &error).await?;
                reject(message, &error, queue, dead_letters).await?;
                Ok(Outcome::Rejected(error))
            }
            Err(Error::Cancelled) => {
                queue
                    .change_visibility(&message.receipt, Duration::ZERO)
                    .await?;
                tracing::warn!(
                    leaf = query.leaf_partition_id,
                    export = query.export_id,
                    "leaf cancelled: its upload was aborted and its message offered again"
                );
                Ok(Outcome::Interrupted(query.leaf_partition_id))
            }
            Err(error) => {
                let error = explain_missing_input(error, &records).await;
                tracing::error!(
                    "leaf {} of export {} failed: {error}",
                    query.leaf_partition_id,
                    query.export_id
                );
                records.record_failure(&query, &error).await?;
                queue
                    .change_visibility(&message.receipt, self.config.failed_visibility)
                    .await?;
                Ok(Outcome::Failed(error))
            }
        }
    }
}

impl Runner {
    /// A runner that died while writing this leaf left its upload unfinished: abort it before
    /// writing the leaf again. Best effort: the bucket's lifecycle rule is the backstop.
    async fn abort_earlier_uploads(&self, query: &BulkExportLeafPartitionQuery) {
        let file = ExportLayout::new(&self.output, &query.table_id, &query.export_id)
            .data_file(&query.sub_export_id);
        match self.output.abort_unfinished_uploads(&file).await {
            Ok(aborted) if !aborted.is_empty() => tracing::info!(
                leaf = query.leaf_partition_id,
                aborted = aborted.len(),
                "aborted the unfinished uploads of an earlier attempt at the leaf"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                leaf = query.leaf_partition_id,
                "could not look for earlier unfinished uploads: {e}"
            ),
        }
    }

    fn progress(&self, key: &(String, String)) -> ExportProgress {
        self.exports
            .lock()
            .expect("export progress lock")
            .get(key)
            .copied()
            .unwrap_or_default()
    }

    /// After a leaf is recorded and counted (`counted` completions): if that count is the
    /// export's number of leaves, look whether every leaf is done and if so write `_SUCCESS`.
    /// Only the last leaf's runner lists the export, so a leaf costs the same however many the
    /// export has.
    async fn mark_export_if_complete(
        &self,
        records: &ExportRecords,
        query: &BulkExportLeafPartitionQuery,
        counted: usize,
    ) -> Result<()> {
        let key = (query.table_id.clone(), query.export_id.clone());
        let leaves = match self.progress(&key).leaves {
            Some(leaves) => leaves,
            None => match records.manifest().await? {
                Some(manifest) => manifest.sub_exports.len(),
                None => return Ok(()),
            },
        };
        {
            let mut exports = self.exports.lock().expect("export progress lock");
            let progress = exports.entry(key).or_default();
            progress.leaves = Some(leaves);
            progress.counted = progress.counted.max(counted);
        }
        if counted < leaves {
            return Ok(());
        }
        let status = records.mark_if_complete().await?;
        if status.is_complete() {
            tracing::info!(
                export = query.export_id,
                table = query.table_id,
                "export complete: _SUCCESS written"
            );
        }
        Ok(())
    }
}

/// A missing input of an export planned from a transaction log: say which state it was planned
/// from, and how to plan it again.
async fn explain_missing_input(error: Error, records: &ExportRecords) -> Error {
    let Error::MissingInputFile {
        file, partition, ..
    } = &error
    else {
        return error;
    };
    match records.manifest().await {
        Ok(Some(Manifest {
            table_id,
            export_id,
            state_version: Some(planned_at),
            ..
        })) => Error::InputGone {
            file: file.clone(),
            partition: partition.clone(),
            export_id,
            table_id,
            planned_at,
        },
        _ => error,
    }
}

fn record(
    report: &mut RunnerReport,
    settled: Result<Outcome<WrittenLeaf>>,
    on_done: &mut impl FnMut(&WrittenLeaf),
) {
    match settled {
        Ok(Outcome::Done(result)) => {
            on_done(&result);
            report.done.push(result);
        }
        Ok(Outcome::Rejected(error)) => report.rejected.push(error),
        Ok(Outcome::Interrupted(leaf)) => report.interrupted.push(leaf),
        Ok(Outcome::Failed(error)) => report.failed.push(error),
        Err(error) => {
            tracing::error!("a leaf query could not be settled: {error}");
            report.failed.push(error);
        }
    }
}
