//! The planner: turns each `BulkExportQuery` into one leaf query per leaf partition.

use std::time::Duration;

use futures::{stream, StreamExt, TryStreamExt};

use super::manifest::ExportRecords;
use super::trust::check_id;
use super::{Message, MessageQueue};
use crate::error::{Error, Result};
use crate::export::{run_leaf_query, ExportOptions, LeafExportResult};
use crate::query::{split_into_leaf_queries, BulkExportQuery, TableSelector};
use crate::storage::Location;
use crate::table::TableIndex;

/// Empty files written at once: a freshly split table can have thousands of empty leaves, and
/// each file and its status record is a round trip to the store.
const EMPTY_LEAVES_AT_ONCE: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedExport {
    pub table_id: String,
    pub export_id: String,
    pub leaves: usize,
    /// The leaves without files, whose (empty) files the planner wrote itself.
    pub empty_leaves: Vec<LeafExportResult>,
}

/// What became of one message.
#[derive(Debug)]
pub enum Outcome<T> {
    Done(T),
    /// The message itself is bad; it went to the dead-letter queue (or, with none, was left to
    /// the queue's redrive policy).
    Rejected(Error),
    /// Something else failed; the message will be offered again.
    Failed(Error),
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
    pub async fn plan(&self, body: &str, leaf_queue: &dyn MessageQueue) -> Result<PlannedExport> {
        let query = BulkExportQuery::from_json(body)?.with_export_id();
        let export_id = query.export_id.clone().expect("with_export_id sets it");
        check_id("exportId", &export_id)?;
        let table = match query.validate()? {
            TableSelector::Id(id) => self.tables.by_id(id)?,
            TableSelector::Name(name) => self.tables.by_name(name)?,
        };
        let table = &self.tables.current(table).await?;
        let leaf_queries = split_into_leaf_queries(table, &export_id);
        let records = ExportRecords::new(&self.output, table.id(), &export_id);
        records
            .write_manifest(&leaf_queries, table.state_version)
            .await?;
        let empty_leaves: Vec<LeafExportResult> =
            stream::iter(leaf_queries.iter().filter(|q| q.files.is_empty()))
                .map(|query| async {
                    let written = run_leaf_query(table, query, &self.output, &self.export).await?;
                    records.record_completion(&written).await?;
                    Ok::<_, Error>(written)
                })
                .buffer_unordered(EMPTY_LEAVES_AT_ONCE)
                .try_collect()
                .await?;
        let schema = &table.properties.schema;
        let bodies = leaf_queries
            .iter()
            .filter(|q| !q.files.is_empty())
            .map(|q| q.to_json(schema, false))
            .collect();
        leaf_queue.send_all(bodies).await?;
        Ok(PlannedExport {
            table_id: table.id().to_owned(),
            export_id,
            leaves: leaf_queries.len(),
            empty_leaves,
        })
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
                log::info!(
                    "planned export {} of table {}: {} leaves, {} queued, {} without files \
                     written",
                    planned.export_id,
                    planned.table_id,
                    planned.leaves,
                    planned.leaves - planned.empty_leaves.len(),
                    planned.empty_leaves.len()
                );
                queue.delete(&message.receipt).await?;
                Ok(Outcome::Done(planned))
            }
            Err(error) if error.is_bad_message() => {
                reject(message, &error, queue, dead_letters).await?;
                Ok(Outcome::Rejected(error))
            }
            Err(error) => {
                log::warn!("planning failed, the query will be retried: {error}");
                Ok(Outcome::Failed(error))
            }
        }
    }

    /// Receives and plans queries until `idle` passes with none (forever when `None`).
    pub async fn run(
        &self,
        queue: &dyn MessageQueue,
        dead_letters: Option<&dyn MessageQueue>,
        leaf_queue: &dyn MessageQueue,
        wait: Duration,
        visibility: Duration,
        idle: Option<Duration>,
    ) -> Result<Vec<Outcome<PlannedExport>>> {
        let mut outcomes = Vec::new();
        let mut idle_since = std::time::Instant::now();
        loop {
            let messages = queue.receive(10, wait, visibility).await?;
            if messages.is_empty() {
                if idle.is_some_and(|idle| idle_since.elapsed() >= idle) {
                    return Ok(outcomes);
                }
                continue;
            }
            for message in &messages {
                outcomes.push(
                    self.handle(message, queue, dead_letters, leaf_queue)
                        .await?,
                );
            }
            idle_since = std::time::Instant::now();
        }
    }
}

/// Moves a bad message to the dead-letter queue with the reason logged. With no dead-letter
/// queue configured the message is left alone, for the queue's own redrive policy: never lost.
pub async fn reject(
    message: &Message,
    error: &Error,
    queue: &dyn MessageQueue,
    dead_letters: Option<&dyn MessageQueue>,
) -> Result<()> {
    log::error!("rejected message: {error}; message body: {}", message.body);
    if let Some(dead_letters) = dead_letters {
        dead_letters.send_all(vec![message.body.clone()]).await?;
        queue.delete(&message.receipt).await?;
    }
    Ok(())
}
