//! Sleeper's planner rule: one leaf query per leaf partition, reading the leaf's own files and
//! then the files of each ancestor (parent first), because a split leaves a parent's files
//! referenced from above until compaction rewrites them.

use super::messages::BulkExportLeafPartitionQuery;
use crate::table::SleeperTable;

/// Every leaf gets a query, including leaves with no files: each then exports an empty file, so
/// an export always has one file per leaf (Sleeper skips such leaves).
pub fn split_into_leaf_queries(
    table: &SleeperTable,
    export_id: &str,
) -> Vec<BulkExportLeafPartitionQuery> {
    table
        .partitions
        .leaves()
        .into_iter()
        .map(|leaf| BulkExportLeafPartitionQuery {
            table_id: table.id().to_owned(),
            export_id: export_id.to_owned(),
            sub_export_id: uuid::Uuid::new_v4().to_string(),
            regions: vec![leaf.region.clone()],
            leaf_partition_id: leaf.id.clone(),
            partition_region: leaf.region.clone(),
            files: leaf_files(table, &leaf.id),
            sql_query: None,
        })
        .collect()
}

/// The leaf's own files, then each ancestor's, parent first.
pub fn leaf_files(table: &SleeperTable, leaf_id: &str) -> Vec<String> {
    let leaf = table.partitions.get(leaf_id).into_iter();
    leaf.chain(table.partitions.ancestors(leaf_id))
        .flat_map(|partition| table.files_of(&partition.id).map(|f| f.filename.clone()))
        .collect()
}
