//! Peak memory follows `--memory-limit` (issue 26): one table of 4 leaves of R rows
//! (`MEMORY_LIMIT_ROWS`, default 2,500,000) in 8 files each, 1 M-row row groups, exported with
//! the 4 leaves at once under limits of 256 MiB and 1 GiB (and with no limit: a pool that
//! grants everything, the budgets at their largest). Each limit runs in a process of its own,
//! `MEMORY_LIMIT_RUNS` times (default 3); the bench prints each one's median time, highest
//! peak RSS and the peak the pool granted.
//!
//! ```bash
//! cargo bench --bench memory_limit
//! MEMORY_LIMIT_ROWS=500000 cargo bench --profile dev --bench memory_limit
//! ```

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::{bench_data, env_number, measure, output_dir, peak_rss_reset, print_result, runtime};
use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool, UnboundedMemoryPool};
use sleeper_export::export::export_table;
use sleeper_export::leaf::ExportOptions;
use sleeper_export::model::{KeyValue, PartitionTree, TableProperties};
use sleeper_export::storage::Stores;
use sleeper_export::table::SleeperTable;
use sleeper_export::tablegen::recording_pool::RecordingPool;
use sleeper_export::tablegen::{RowStyle, TableWriter};

const LEAVES: usize = 4;
const FILES: usize = 8;
const LIMITS: [(&str, Option<usize>); 4] = [
    ("256MiB", Some(256 << 20)),
    ("512MiB", Some(512 << 20)),
    ("1GiB", Some(1 << 30)),
    ("none", None),
];

async fn table(rows_per_leaf: usize) -> SleeperTable {
    let dir = bench_data("memory_limit").join(format!("rows-{rows_per_leaf}"));
    let stores = Stores::default();
    if let Ok(table) = SleeperTable::open(dir.to_str().unwrap(), &stores).await {
        return table;
    }
    let schema = common::bench_schema();
    // Keys are 16 random letters: these cut them into quarters, near enough.
    let splits: Vec<KeyValue> = ["g", "n", "t"]
        .map(|split| KeyValue::String(split.into()))
        .into();
    let tree = PartitionTree::from_split_points("memory", &schema, &splits).unwrap();
    let mut properties = TableProperties::new("memory", "memory", schema);
    properties.parquet.row_group_rows = 1_000_000;
    properties.raw = properties.to_java();
    let location = stores.resolve(dir.to_str().unwrap()).unwrap();
    let writer = TableWriter::new(location, properties, tree, RowStyle::default(), 17);
    common::write_leaves(writer, FILES, rows_per_leaf).await
}

/// Runs one limit in this process, `runs` times.
fn run_limit(name: &str, rows_per_leaf: usize, runs: usize) {
    let limit = LIMITS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, limit)| *limit)
        .expect("a limit");
    let runtime = runtime(LEAVES);
    let table = runtime.block_on(table(rows_per_leaf));
    for _ in 0..runs {
        let inner: Arc<dyn MemoryPool> = match limit {
            Some(bytes) => Arc::new(GreedyMemoryPool::new(bytes)),
            None => Arc::new(UnboundedMemoryPool::default()),
        };
        let pool = RecordingPool::new(inner);
        let out = output_dir();
        let output = table.stores.resolve(out.path().to_str().unwrap()).unwrap();
        let options = ExportOptions {
            parallelism: LEAVES,
            memory_limit: limit.unwrap_or(usize::MAX),
            memory_pool: Some(Arc::clone(&pool) as Arc<dyn MemoryPool>),
            ..ExportOptions::default()
        };
        peak_rss_reset();
        let started = Instant::now();
        let summary = runtime
            .block_on(export_table(&table, &output, &options, |_| {}))
            .unwrap();
        println!("POOL {}", pool.peak() as f64 / 1048576.0);
        print_result(started.elapsed().as_secs_f64(), summary.rows_written());
    }
}

fn main() {
    common::allocator::limit_arenas();
    let rows_per_leaf = env_number("MEMORY_LIMIT_ROWS", 2_500_000);
    let runs = env_number("MEMORY_LIMIT_RUNS", 3);
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--variant") {
        let runs = args[at + 2..]
            .iter()
            .skip_while(|a| *a != "--runs")
            .nth(1)
            .and_then(|r| r.parse().ok())
            .unwrap_or(runs);
        run_limit(&args[at + 1], rows_per_leaf, runs);
        return;
    }
    runtime(2).block_on(table(rows_per_leaf));
    println!("{LEAVES} leaves × {rows_per_leaf} rows, {LEAVES} at once:");
    for (name, _) in LIMITS {
        let measured = measure(name, runs);
        assert_eq!(measured.rows, (rows_per_leaf * LEAVES) as u64);
        let pool_peak = measured
            .stdout
            .lines()
            .filter_map(|line| line.strip_prefix("POOL ")?.parse::<f64>().ok())
            .fold(0.0, f64::max);
        println!(
            "limit {name:>6}: {:.2} s, peak RSS {:.0} MiB, pool peak {pool_peak:.0} MiB",
            measured.time.as_secs_f64(),
            measured.peak_rss_mib
        );
    }
}
