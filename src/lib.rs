//! sleeper-export: bulk export of GCHQ Sleeper tables to sorted Parquet, one file per leaf
//! partition, with Sleeper's compaction semantics, on DataFusion.
//!
//! The command line is the binary (`src/bin/sleeper-export/`), which uses only this public API.
//! The modules, top layer first; each uses only layers below it (ARCHITECTURE.md; the `layers`
//! test checks it): `export` (a whole table) → `sql` → `queue` (planner, runners, records) →
//! `instance` → `leaf` (one leaf query's plan) → `tablegen` (feature `tablegen`) → `plan`
//! (merge, sink) → `query` (Sleeper's messages) → `table` → `statestore` → `storage` → `model`
//! and `error`.

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
#[cfg(feature = "tablegen")]
pub mod tablegen;

pub use error::{Error, Result};

#[cfg(test)]
mod layers;
