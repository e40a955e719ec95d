//! Which state of a table something was made from.

/// Which transactions of a table's logs a view of its state includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateVersion {
    pub files_transaction: u64,
    pub partitions_transaction: u64,
}

impl std::fmt::Display for StateVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "files transaction {}, partitions transaction {}",
            self.files_transaction, self.partitions_transaction
        )
    }
}
