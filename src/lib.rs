//! sleeper-export: bulk export of GCHQ Sleeper tables to sorted Parquet, one file per leaf
//! partition, with Sleeper's compaction semantics, on DataFusion.

pub mod error;
pub mod model;

pub use error::{Error, Result};
pub mod cli;
pub mod export;
pub mod instance;
pub mod plan;
pub mod query;
pub mod queue;
pub mod sql;
pub mod statestore;
pub mod storage;
pub mod table;
pub mod tablegen;
