//! An opened Sleeper table: its location, properties, and state.

use std::collections::HashMap;
use std::sync::Arc;

use object_store::ObjectStoreExt;

use crate::error::{Error, Result};
use crate::instance::Instance;
use crate::model::{FileReference, JavaProperties, PartitionTree, TableProperties};
use crate::statestore::{read_all, SnapshotStateStore, StateStore, StateVersion};
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
    pub async fn open(location: &str, stores: &Stores) -> Result<Self> {
        let location = stores.resolve(location)?;
        let path = location.child(PROPERTIES_FILE);
        let bytes = read_all(location.store.as_ref(), &path)
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => Error::Location {
                    location: location.to_string(),
                    message: format!("no Sleeper table here: {PROPERTIES_FILE} not found"),
                },
                other => Error::object_store(location.url_of(&path), other),
            })?;
        let text = String::from_utf8(bytes.to_vec()).map_err(|_| Error::Location {
            location: location.url_of(&path),
            message: "table properties are not UTF-8".into(),
        })?;
        let properties = TableProperties::from_java(JavaProperties::parse(&text))?;
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

/// The tables a planner or runner can serve, found by id or name as Sleeper finds them.
#[derive(Debug, Clone, Default)]
pub struct TableIndex {
    tables: Vec<SleeperTable>,
    /// Where the tables' state can be read again, for tables of a live instance.
    instance: Option<Instance>,
}

impl TableIndex {
    pub fn new(tables: Vec<SleeperTable>) -> Self {
        TableIndex {
            tables,
            instance: None,
        }
    }

    /// Tables of a live instance, whose state [`TableIndex::current`] reads again.
    pub fn with_instance(mut self, instance: Option<Instance>) -> Self {
        self.instance = instance;
        self
    }

    /// The table with its state as it is now: a live instance's table changes under a
    /// long-running planner, and an export split from old state reads files already replaced.
    pub async fn current(&self, table: &SleeperTable) -> Result<SleeperTable> {
        match &self.instance {
            Some(instance) => instance.open_table(table.id()).await,
            None => Ok(table.clone()),
        }
    }

    pub fn by_id(&self, table_id: &str) -> Result<&SleeperTable> {
        self.tables
            .iter()
            .find(|t| t.id() == table_id)
            .ok_or_else(|| Error::TableNotFound {
                by: "ID",
                value: table_id.to_owned(),
            })
    }

    pub fn by_name(&self, table_name: &str) -> Result<&SleeperTable> {
        self.tables
            .iter()
            .find(|t| t.name() == table_name)
            .ok_or_else(|| Error::TableNotFound {
                by: "name",
                value: table_name.to_owned(),
            })
    }

    pub fn tables(&self) -> &[SleeperTable] {
        &self.tables
    }
}
