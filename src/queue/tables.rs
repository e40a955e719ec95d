//! The tables a planner or runner serves: a registry by id and name, which for a live instance
//! reads a table's state again before each export is planned.

use crate::error::{Error, Result};
use crate::instance::Instance;
use crate::table::SleeperTable;

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
