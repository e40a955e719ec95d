//! The memory the leaves of an export hold, through DataFusion's pool (`--memory-limit`).

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool};
use sleeper_export::export::export_table;
use sleeper_export::leaf::ExportOptions;
use sleeper_export::tablegen::recording_pool::RecordingPool;
use sleeper_export::Error;

use crate::common::*;

/// Four leaves at once reserve their reads and their writers from the one pool given, each
/// under its own name, and give all of it back.
#[tokio::test]
async fn the_leaves_run_at_once_reserve_from_one_pool_and_give_it_all_back() {
    let dir = tempfile::tempdir().unwrap();
    let table = long_key_table(local(&dir.path().join("table")), 1_000, 20_000).await;
    let pool = RecordingPool::new(Arc::new(GreedyMemoryPool::new(256 << 20)));
    let options = ExportOptions {
        parallelism: 4,
        memory_pool: Some(Arc::clone(&pool) as Arc<dyn MemoryPool>),
        ..ExportOptions::default()
    };
    let output = local(&dir.path().join("out"));
    let summary = export_table(&table, &output, &options, |_| {})
        .await
        .unwrap();
    assert_eq!(summary.rows_written(), 20_000);
    let expected: BTreeSet<String> = table
        .partitions
        .leaves()
        .iter()
        .flat_map(|leaf| {
            [
                format!("LeafMergeExec[{}]", leaf.id),
                format!("LeafExportExec[{}]", leaf.id),
            ]
        })
        .collect();
    assert_eq!(expected.len(), 8);
    assert_eq!(pool.consumers(), expected);
    assert!(pool.peak() > 0);
    assert_eq!(pool.reserved(), 0);
}

/// A limit below what a leaf needs at its least fails the leaf before anything is written,
/// naming the limit and what could not get its memory.
#[tokio::test]
async fn a_limit_below_a_leafs_least_fails_it_naming_the_limit_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let table = long_key_table(local(&dir.path().join("table")), 1_000, 20_000).await;
    let options = ExportOptions {
        parallelism: 1,
        memory_limit: 256 * 1024,
        ..ExportOptions::default()
    };
    let output_dir = dir.path().join("out");
    let error = export_table(&table, &local(&output_dir), &options, |_| {})
        .await
        .unwrap_err();
    let Error::MemoryLimit {
        limit_bytes,
        message,
        ..
    } = &error
    else {
        panic!("{error:?}");
    };
    assert_eq!(*limit_bytes, 256 * 1024);
    assert!(message.contains("LeafMergeExec["), "{message}");
    assert!(error.to_string().contains("--memory-limit"), "{error}");
    assert_eq!(
        parquet_files_under(&output_dir),
        Vec::<std::path::PathBuf>::new()
    );
}
