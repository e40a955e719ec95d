//! An opened Sleeper table: its location, properties, and state.

use std::collections::HashMap;
use std::sync::Arc;

use object_store::ObjectStoreExt;

use crate::error::{Error, Result};
use crate::model::{FileReference, PartitionTree, StateVersion, TableProperties};
use crate::statestore::{SnapshotStateStore, StateStore};
use crate::storage::{Location, Stores};

pub const PROPERTIES_FILE: &str = "table.properties";

#[derive(Debug, Clone)]
pub struct SleeperTable {
    pub location: Location,
    pub properties: Arc<TableProperties>,
    pub partitions: Arc<PartitionTree>,
    pub files: Arc<Vec<FileReference>>,
    /// Positions in `files` of each partition's references, so planning is linear in the state size.
    files_by_partition: Arc<HashMap<String, Vec<usize>>>,
    /// The log transactions the state was read at, for a store with a transaction log.
    pub state_version: Option<StateVersion>,
    pub stores: Stores,
}

impl SleeperTable {
    /// Opens the table laid out under `location` (a directory or `s3://bucket/prefix`) with the
    /// embedded snapshot state store.
    ///
    /// ```no_run
    /// # async fn example() -> sleeper_export::error::Result<()> {
    /// use sleeper_export::storage::Stores;
    /// use sleeper_export::table::SleeperTable;
    ///
    /// let table = SleeperTable::open("s3://data-bucket/table-id", &Stores::default()).await?;
    /// println!("table {}: {} file references", table.id(), table.files.len());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn open(location: &str, stores: &Stores) -> Result<Self> {
        let location = stores.resolve(location)?;
        let path = location.child(PROPERTIES_FILE);
        let java = location
            .read_properties(&path, "table properties")
            .await?
            .ok_or_else(|| {
                Error::location(
                    location.to_string(),
                    format!("no Sleeper table here: {PROPERTIES_FILE} not found"),
                )
            })?;
        let properties = TableProperties::from_java(java)?;
        let state = SnapshotStateStore::new(
            &properties.table_id,
            location.clone(),
            properties.schema.clone(),
        );
        Self::from_state(location, properties, &state, stores).await
    }

    pub async fn from_state(
        location: Location,
        properties: TableProperties,
        state: &dyn StateStore,
        stores: &Stores,
    ) -> Result<Self> {
        let partitions = PartitionTree::new(&properties.table_id, state.partitions().await?)?;
        // In Sleeper's order (by filename): the order a partition's files are read in.
        let files: Vec<FileReference> = state
            .files()
            .await?
            .into_iter()
            .flat_map(|file| file.references)
            .collect();
        let state_version = state.version().await?;
        if let Some(orphan) = files
            .iter()
            .find(|f| partitions.get(&f.partition_id).is_none())
        {
            return Err(Error::StateStore {
                table: properties.table_id.clone(),
                message: format!(
                    "file {} is referenced by unknown partition {}",
                    orphan.filename, orphan.partition_id
                ),
            });
        }
        let mut files_by_partition: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            files_by_partition
                .entry(file.partition_id.clone())
                .or_default()
                .push(i);
        }
        Ok(SleeperTable {
            location,
            properties: Arc::new(properties),
            partitions: Arc::new(partitions),
            files: Arc::new(files),
            files_by_partition: Arc::new(files_by_partition),
            state_version,
            stores: stores.clone(),
        })
    }

    /// The same table and state seen with other properties (for instance other filters or
    /// aggregations); the schema must stay the same.
    pub fn with_properties(&self, properties: TableProperties) -> Result<Self> {
        if properties.schema != self.properties.schema {
            return Err(Error::Property {
                property: crate::model::properties::SCHEMA.into(),
                message: format!("table {} cannot change its schema", self.id()),
            });
        }
        properties.compaction_rules()?;
        Ok(SleeperTable {
            properties: Arc::new(properties),
            ..self.clone()
        })
    }

    pub fn id(&self) -> &str {
        &self.properties.table_id
    }

    pub fn name(&self) -> &str {
        &self.properties.table_name
    }

    /// The files a partition references directly, in Sleeper's order (by filename).
    pub fn files_of(&self, partition_id: &str) -> impl Iterator<Item = &FileReference> {
        self.files_by_partition
            .get(partition_id)
            .into_iter()
            .flatten()
            .map(|&i| &self.files[i])
    }

    pub async fn write_properties(location: &Location, properties: &TableProperties) -> Result<()> {
        let path = location.child(PROPERTIES_FILE);
        location
            .store
            .put(&path, properties.to_java().to_text().into())
            .await
            .map_err(|e| Error::object_store(location.url_of(&path), e))?;
        Ok(())
    }
}
