//! The planner: turns each `BulkExportQuery` into one leaf query per leaf partition.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{stream, StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use super::config::BulkExportConfig;
use super::manifest::{ExportRecords, Manifest, SubExport, LISTED_BY_DEFAULT};
use super::trust::check_id;
use super::worker::{MessageHandler, Outcome, WorkerLoop, DEFAULT_STOP_GRACE};
use super::{Message, MessageQueue};
use crate::error::{Error, Result};
use crate::leaf::{check_leaf_sql, run_leaf_query, ExportOptions};
use crate::plan::sink::WrittenLeaf;
use crate::query::{
    cut_leaf_query, split_into_leaf_queries, BulkExportLeafPartitionQuery, BulkExportQuery,
    TableSelector,
};
use crate::queue::TableIndex;
use crate::storage::Location;
use crate::table::SleeperTable;

/// Empty files written at once: a freshly split table can have thousands of empty leaves, and
/// each file and its status record is a round trip to the store.
const EMPTY_LEAVES_AT_ONCE: usize = 16;
/// Leaves whose files' footers are read at once to cut them (each reads its files' at once too).
const LEAVES_CUT_AT_ONCE: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedExport {
    pub table_id: String,
    pub export_id: String,
    pub leaves: usize,
    /// Leaf queries sent to the leaf queue.
    pub queued: usize,
    /// The leaves without files, whose (empty) files the planner wrote itself.
    pub empty_leaves: Vec<WrittenLeaf>,
    /// Leaves done by an earlier planning pass of the same export, which this one left alone.
    pub already_done: Vec<WrittenLeaf>,
}

#[derive(Debug, Clone)]
pub struct Planner {
    pub tables: TableIndex,
    pub output: Location,
    /// How the planner writes the files of leaves without input files.
    pub export: ExportOptions,
}

impl Planner {
    /// Validates and splits one query, writes the export's manifest, writes the files of the
    /// leaves that have no input files, then sends the other leaves' queries.
    ///
    /// Every leaf gets a file, but only leaves with files go on the queue: Sleeper's planner sends
    /// no query for a leaf without files and Sleeper's runner rejects one ("No input paths
    /// supplied"), so a Sleeper runner on the same queue would dead-letter it.
    ///
    /// Planning is idempotent per (table, export id): a query delivered twice, or an export run
    /// again with the same id, finds the first pass's manifest and re-sends the same leaf queries
    /// (the same sub-export ids, so the same files) for the leaves not yet done, as long as the
    /// table still splits as it did. If it does not, the query is refused, unless the export is
    /// already complete.
    pub async fn plan(&self, body: &str, leaf_queue: &dyn MessageQueue) -> Result<PlannedExport> {
        let query = BulkExportQuery::from_json(body)?.with_export_id();
        let export_id = query.export_id.clone().expect("with_export_id sets it");
        check_id("exportId", &export_id)?;
        let table = match query.validate()? {
            TableSelector::Id(id) => self.tables.by_id(id)?,
            TableSelector::Name(name) => self.tables.by_name(name)?,
        };
        let table = &self.tables.current(table).await?;
        if let Some(sql) = &query.sql_query {
            // Checked once here, so that a query whose SQL cannot run sends no leaf query.
            check_leaf_sql(table, sql, &self.export).await?;
        }
        let records = ExportRecords::new(&self.output, table.id(), &export_id);
        let mut leaf_queries = self
            .leaf_queries(table, &export_id, &query.sql_query)
            .await?;
        let ours =
            records.manifest_of(&leaf_queries, &table.properties.schema, table.state_version);
        let already_done = match records.create_manifest(&ours).await? {
            Some(earlier) => {
                self.resume(table, &records, &earlier, &ours, &mut leaf_queries)
                    .await?
            }
            None => Vec::new(),
        };
        let empty_leaves = self
            .write_empty_leaves(table, &records, &leaf_queries)
            .await?;
        let schema = &table.properties.schema;
        let bodies: Vec<String> = leaf_queries
            .iter()
            .filter(|q| !q.files.is_empty())
            .map(|q| q.to_json(schema, false))
            .collect();
        let queued = bodies.len();
        leaf_queue.send_all(bodies).await?;
        if queued == 0 {
            // No runner will record a last leaf.
            records.mark_if_complete().await?;
        }
        Ok(PlannedExport {
            table_id: table.id().to_owned(),
            export_id,
            leaves: ours.sub_exports.len(),
            queued,
            empty_leaves,
            already_done,
        })
    }

    /// The table's leaf queries for the export, each with the export's SQL, and cut into key
    /// ranges where the options ask for it.
    async fn leaf_queries(
        &self,
        table: &SleeperTable,
        export_id: &str,
        sql_query: &Option<String>,
    ) -> Result<Vec<BulkExportLeafPartitionQuery>> {
        let mut leaf_queries = split_into_leaf_queries(table, export_id);
        for leaf_query in &mut leaf_queries {
            leaf_query.sql_query.clone_from(sql_query);
        }
        let Some(max_rows) = self.export.max_rows_per_file else {
            return Ok(leaf_queries);
        };
        Ok(stream::iter(leaf_queries)
            .map(|leaf_query| cut_leaf_query(table, leaf_query, max_rows))
            .buffered(LEAVES_CUT_AT_ONCE)
            .try_collect::<Vec<_>>()
            .await?
            .into_iter()
            .flatten()
            .collect())
    }

    /// A second planning pass over the export planned as `earlier`: `leaf_queries` keep the
    /// first pass's sub-export ids and lose the leaves already done, which are returned.
    async fn resume(
        &self,
        table: &SleeperTable,
        records: &ExportRecords,
        earlier: &Manifest,
        ours: &Manifest,
        leaf_queries: &mut Vec<BulkExportLeafPartitionQuery>,
    ) -> Result<Vec<WrittenLeaf>> {
        let export_id = &ours.export_id;
        if earlier.sql_query != ours.sql_query {
            return Err(Error::validation(
                Some(export_id),
                format!(
                    "export {export_id} of table {} was planned with {}, not {}: an \
                     export's files come from one query; use a new export id",
                    table.id(),
                    describe_sql(earlier.sql_query.as_deref()),
                    describe_sql(ours.sql_query.as_deref())
                ),
            ));
        }
        let mut already_done = Vec::new();
        if earlier.split_digest != ours.split_digest {
            let status = records
                .mark_if_complete_with(|done| already_done.push(done))
                .await?;
            if !status.is_complete() {
                return Err(Error::ExportPlannedFromOtherState {
                    table_id: table.id().to_owned(),
                    export_id: export_id.clone(),
                    planned_at: earlier.state_version,
                    now: table.state_version,
                });
            }
            leaf_queries.clear();
            return Ok(already_done);
        }
        // A leaf's pieces, cut the same way from the same files, come in the same order.
        let planned: HashMap<(&str, usize), &str> = pieces(&earlier.sub_exports)
            .map(|(piece, s)| (piece, s.sub_export_id.as_str()))
            .collect();
        let ours_pieces: Vec<(&str, usize)> =
            pieces(&ours.sub_exports).map(|(piece, _)| piece).collect();
        for (query, piece) in leaf_queries.iter_mut().zip(ours_pieces) {
            // The same digest means the same leaves, unless the manifest was edited.
            let id = planned.get(&piece).ok_or_else(|| {
                Error::location(
                    records.layout().url_of(&records.layout().manifest()),
                    format!(
                        "export {export_id} has no sub-export for leaf {}",
                        query.leaf_partition_id
                    ),
                )
            })?;
            query.sub_export_id = (*id).to_owned();
        }
        records
            .status_listing(LISTED_BY_DEFAULT, |done| already_done.push(done))
            .await?;
        let done: HashSet<&str> = already_done
            .iter()
            .map(|d| d.sub_export_id.as_str())
            .collect();
        leaf_queries.retain(|q| !done.contains(q.sub_export_id.as_str()));
        Ok(already_done)
    }

    /// Writes the (empty) files of the leaves without input files, which go on no queue, and
    /// records each.
    async fn write_empty_leaves(
        &self,
        table: &SleeperTable,
        records: &ExportRecords,
        leaf_queries: &[BulkExportLeafPartitionQuery],
    ) -> Result<Vec<WrittenLeaf>> {
        // The completions counted so far, where each next count starts looking.
        let counted = AtomicUsize::new(0);
        // By position, not by reference: a stream of references is not provably `Send` to the
        // worker loop's task (rust-lang/rust#102211).
        let empty: Vec<usize> = (0..leaf_queries.len())
            .filter(|&i| leaf_queries[i].files.is_empty())
            .collect();
        let counted = &counted;
        stream::iter(empty)
            .map(|i| async move {
                let query = &leaf_queries[i];
                let written = run_leaf_query(table, query, &self.output, &self.export).await?;
                let hint = counted.load(AtomicOrdering::Relaxed);
                let count = records.record_completion(&written, hint).await?;
                counted.fetch_max(count, AtomicOrdering::Relaxed);
                Ok::<_, Error>(written)
            })
            .buffer_unordered(EMPTY_LEAVES_AT_ONCE)
            .try_collect()
            .await
    }

    /// Plans one received message and settles it: deleted when planned, dead-lettered when bad.
    pub async fn handle(
        &self,
        message: &Message,
        queue: &dyn MessageQueue,
        dead_letters: Option<&dyn MessageQueue>,
        leaf_queue: &dyn MessageQueue,
    ) -> Result<Outcome<PlannedExport>> {
        match self.plan(&message.body, leaf_queue).await {
            Ok(planned) => {
                tracing::info!(
                    "planned export {} of table {}: {} leaves, {} queued, {} without files \
                     written, {} done before",
                    planned.export_id,
                    planned.table_id,
                    planned.leaves,
                    planned.queued,
                    planned.empty_leaves.len(),
                    planned.already_done.len()
                );
                queue.delete(&message.receipt).await?;
                Ok(Outcome::Done(planned))
            }
            Err(error) if error.is_bad_message() => {
                reject(message, &error, queue, dead_letters).await?;
                Ok(Outcome::Rejected(error))
            }
            Err(error) => {
                tracing::warn!("planning failed, the query will be retried: {error}");
                Ok(Outcome::Failed(error))
            }
        }
    }

    /// Plans the export queries of `queue`, one at a time, renewing each one's invisibility
    /// while it is planned, until idle for `idle` or until `shutdown` completes (the query being
    /// planned is finished first).
    pub async fn run(
        &self,
        queue: Arc<dyn MessageQueue>,
        dead_letters: Option<Arc<dyn MessageQueue>>,
        leaf_queue: Arc<dyn MessageQueue>,
        config: &BulkExportConfig,
        idle: Option<Duration>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Vec<Outcome<PlannedExport>>> {
        let worker = WorkerLoop {
            concurrency: 1,
            wait: config.wait,
            visibility: config.visibility,
            keepalive: config.keepalive,
            idle_exit: idle,
            stop_grace: DEFAULT_STOP_GRACE,
            cancel: CancellationToken::new(),
        };
        let handler = Arc::new(Planning {
            planner: self.clone(),
            leaf_queue,
        });
        let mut outcomes = Vec::new();
        worker
            .run(
                handler,
                queue,
                dead_letters,
                shutdown,
                |settled| match settled {
                    Ok(outcome) => outcomes.push(outcome),
                    Err(error) => outcomes.push(Outcome::Failed(error)),
                },
            )
            .await?;
        Ok(outcomes)
    }
}

/// The planner as the worker loop's handler: each export query planned onto `leaf_queue`.
struct Planning {
    planner: Planner,
    leaf_queue: Arc<dyn MessageQueue>,
}

#[async_trait]
impl MessageHandler for Planning {
    type Done = PlannedExport;

    async fn handle(
        &self,
        message: &Message,
        queue: &dyn MessageQueue,
        dead_letters: Option<&dyn MessageQueue>,
    ) -> Result<Outcome<PlannedExport>> {
        self.planner
            .handle(message, queue, dead_letters, self.leaf_queue.as_ref())
            .await
    }
}

/// Each sub-export with its leaf and its position among the leaf's pieces.
fn pieces(sub_exports: &[SubExport]) -> impl Iterator<Item = ((&str, usize), &SubExport)> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    sub_exports.iter().map(move |sub_export| {
        let leaf = sub_export.leaf_partition_id.as_str();
        let count = seen.entry(leaf).or_default();
        *count += 1;
        ((leaf, *count - 1), sub_export)
    })
}

fn describe_sql(sql: Option<&str>) -> String {
    sql.map_or_else(|| "no SQL".to_owned(), |sql| format!("the SQL {sql:?}"))
}

/// Moves a bad message to the dead-letter queue with the reason logged. With no dead-letter
/// queue configured the message is left alone, for the queue's own redrive policy: never lost.
pub async fn reject(
    message: &Message,
    error: &Error,
    queue: &dyn MessageQueue,
    dead_letters: Option<&dyn MessageQueue>,
) -> Result<()> {
    // A hostile body can be megabytes: its size and a start are enough to find it in the DLQ.
    // So can the reason, which may quote it (an SQL error quotes the SQL).
    let reason = error.to_string();
    tracing::error!(
        body_bytes = message.body.len(),
        body_start = start_of(&message.body, LOGGED_BODY_CHARS),
        "rejected message: {}{}",
        start_of(&reason, LOGGED_REASON_CHARS),
        if reason.len() > LOGGED_REASON_CHARS {
            " …"
        } else {
            ""
        }
    );
    if let Some(dead_letters) = dead_letters {
        dead_letters.send_all(vec![message.body.clone()]).await?;
        queue.delete(&message.receipt).await?;
    }
    Ok(())
}

/// Characters of a rejected message logged, and of the reason it was rejected.
const LOGGED_BODY_CHARS: usize = 200;
const LOGGED_REASON_CHARS: usize = 1000;

fn start_of(text: &str, chars: usize) -> &str {
    text.char_indices()
        .nth(chars)
        .map_or(text, |(end, _)| &text[..end])
}
