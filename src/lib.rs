//! sleeper-export: bulk export of GCHQ Sleeper tables to sorted Parquet, one file per leaf
//! partition, with Sleeper's compaction semantics, on DataFusion.
//!
//! The modules, top layer first; each depends only on layers below it (see ARCHITECTURE.md):
//! `cli` → `export` (a whole table) → `queue` (planner, runners, records) and `sql` → `leaf` (one
//! leaf query's plan) → `plan` (merge, sink) → `table`, `instance` → `statestore` → `storage` →
//! `query` (Sleeper's messages) → `model`.

pub mod cli;
pub mod error;
pub mod export;
pub mod instance;
pub mod leaf;
pub mod model;
pub mod plan;
pub mod query;
pub mod queue;
pub mod sql;
pub mod statestore;
pub mod storage;
pub mod table;
pub mod tablegen;

pub use error::{Error, Result};

#[cfg(test)]
mod layers;
