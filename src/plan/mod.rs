//! DataFusion plans: the table provider, the leaf merge, a leaf's SQL, and the Parquet export
//! sink.

pub mod aggregate;
pub mod aggregate_exec;
pub mod filter;
pub mod leaf_sql;
pub mod memory;
pub mod merge;
pub mod parquet_writer;
pub mod pushdown;
mod upload;

pub use merge::{LeafInput, LeafMergeExec};
pub mod sink;

pub use sink::{ExportTarget, LeafExportExec};
pub mod provider;
pub use provider::SleeperTableProvider;
