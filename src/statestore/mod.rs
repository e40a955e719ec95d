//! Where a table's partitions and file references come from.

pub mod snapshot;
pub mod state;
pub mod transaction;
pub mod transaction_log;

use async_trait::async_trait;
use object_store::path::Path;

use crate::error::{Error, Result};
use crate::model::{Partition, Schema, StateFile, StateVersion};
use crate::storage::{read_all, Location};

/// The state of one table as Sleeper's state store holds it.
#[async_trait]
pub trait StateStore: Send + Sync + std::fmt::Debug {
    async fn partitions(&self) -> Result<Vec<Partition>>;
    /// Every file the state holds, referenced or not, in Sleeper's order.
    async fn files(&self) -> Result<Vec<StateFile>>;

    /// The last transactions the state includes, where the store has a log.
    async fn version(&self) -> Result<Option<StateVersion>> {
        Ok(None)
    }
}

pub const SNAPSHOTS_DIR: &str = "statestore/snapshots";

/// The embedded state store: the newest snapshot files under `<table>/statestore/snapshots/`,
/// as Sleeper writes them to its data bucket. A directory and an `s3://` prefix read the same way.
#[derive(Debug, Clone)]
pub struct SnapshotStateStore {
    table_id: String,
    table: Location,
    schema: Schema,
}

impl SnapshotStateStore {
    pub fn new(table_id: impl Into<String>, table: Location, schema: Schema) -> Self {
        SnapshotStateStore {
            table_id: table_id.into(),
            table,
            schema,
        }
    }

    fn error(&self, message: String) -> Error {
        Error::StateStore {
            table: self.table_id.clone(),
            message,
        }
    }

    /// The path of the snapshot of `kind` ("files" or "partitions") with the highest transaction.
    async fn latest(&self, kind: &str) -> Result<Path> {
        let dir = self.table.child(SNAPSHOTS_DIR);
        let suffix = format!("-{kind}.arrow");
        let listed = self.table.list(&dir).await?;
        listed
            .into_iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?.to_owned();
                let transaction: u64 = name.strip_suffix(&suffix)?.parse().ok()?;
                Some((transaction, meta.location))
            })
            .max_by_key(|(transaction, _)| *transaction)
            .map(|(_, path)| path)
            .ok_or_else(|| {
                self.error(format!(
                    "no {kind} snapshot under {}",
                    self.table.url_of(&dir)
                ))
            })
    }

    async fn read(&self, kind: &str) -> Result<(String, bytes::Bytes)> {
        let path = self.latest(kind).await?;
        let url = self.table.url_of(&path);
        let bytes = read_all(self.table.store.as_ref(), &path)
            .await
            .map_err(|e| Error::object_store(&url, e))?;
        Ok((url, bytes))
    }

    fn with_table(&self, error: Error) -> Error {
        match error {
            Error::StateStore { message, .. } => self.error(message),
            other => other,
        }
    }
}

#[async_trait]
impl StateStore for SnapshotStateStore {
    async fn partitions(&self) -> Result<Vec<Partition>> {
        let (url, bytes) = self.read("partitions").await?;
        snapshot::read_partitions(&bytes, &url, &self.schema).map_err(|e| self.with_table(e))
    }

    async fn files(&self) -> Result<Vec<StateFile>> {
        let (url, bytes) = self.read("files").await?;
        let mut files = snapshot::read_files(&bytes, &url).map_err(|e| self.with_table(e))?;
        crate::model::partition::sort_as_sleeper(&mut files);
        Ok(files)
    }
}
