//! Export queries: Sleeper's messages and the splitter that turns a table export into one query
//! per leaf partition.

pub mod cut;
pub mod messages;
pub mod splitter;

pub use cut::cut_leaf_query;
pub use messages::{BulkExportLeafPartitionQuery, BulkExportQuery, TableSelector};
pub use splitter::split_into_leaf_queries;
