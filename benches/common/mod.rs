//! Shared by the benchmarks: peak memory of the running process (Linux), runtimes, and running
//! each variant in a process of its own so that its peak memory is its own.

// Each benchmark binary compiles this module and uses part of it.
#![allow(dead_code)]

use std::time::Duration;

use sleeper_export::model::{Field, PrimitiveType, Schema};
use sleeper_export::table::SleeperTable;
use sleeper_export::tablegen::TableWriter;

/// The allocator settings of the `sleeper-export` binary, so that peak memory is the binary's:
/// each benchmark's `main` calls `allocator::limit_arenas()` first.
#[path = "../../src/bin/sleeper-export/allocator.rs"]
pub mod allocator;

/// Starts a new peak as the binary starts a leaf: the memory the last run freed goes back to the
/// system, as the binary hands it back after each leaf, then writing 5 to clear_refs resets the
/// peak resident set size.
pub fn peak_rss_reset() {
    allocator::release_freed_memory();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The peak resident set size since the start or the last reset, in MiB.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A variant's median time over its runs, its highest peak RSS, and the rows it wrote.
pub struct Measured {
    pub time: Duration,
    pub peak_rss_mib: f64,
    pub rows: u64,
    /// All the runs printed, for what a bench reports beyond these.
    pub stdout: String,
}

/// Runs `--variant <variant> --runs <runs>` of this benchmark's own binary, which prints a line
/// `RESULT seconds peak_rss_mib rows` per run (see [`print_result`]).
pub fn measure(variant: &str, runs: usize) -> Measured {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--variant", variant, "--runs", &runs.to_string()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{variant}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut results: Vec<(f64, f64, u64)> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("RESULT "))
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (
                fields[0].parse().unwrap(),
                fields[1].parse().unwrap(),
                fields[2].parse().unwrap(),
            )
        })
        .collect();
    results.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (seconds, _, rows) = results[results.len() / 2];
    Measured {
        time: Duration::from_secs_f64(seconds),
        peak_rss_mib: results.iter().map(|r| r.1).fold(0.0, f64::max),
        rows,
        stdout,
    }
}

/// The line [`measure`] reads, for one run that took `seconds` and wrote `rows`.
pub fn print_result(seconds: f64, rows: u64) {
    println!("RESULT {seconds} {} {rows}", peak_rss_mib());
}

/// A bench's kept data (its tables), in the target directory it was built in: its binary is
/// `<target>/release/deps/<bench>-…`, wherever it is run from (with `CARGO_TARGET_DIR` or
/// `./target`, a binary run directly from another folder wrote its tables again there).
pub fn bench_data(bench: &str) -> std::path::PathBuf {
    let binary = std::env::current_exe().expect("the bench binary's path");
    binary
        .ancestors()
        .nth(3)
        .expect("the bench binary lies in a target directory")
        .join("bench-data")
        .join(bench)
}

/// A fresh output directory in memory where the machine has a tmpfs: the benchmarks measure
/// the engine, not how the local disk's page cache happens to behave (it varies tenfold
/// between runs here).
pub fn output_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .unwrap()
}

/// The benchmarks' table: a 16-char string row key, an i64 sort key, and an i64, a 20-40 byte
/// string and a third i64 as values (Sleeper has no floating-point type).
pub fn bench_schema() -> Schema {
    Schema::new(
        vec![Field::primitive("key", PrimitiveType::String)],
        vec![Field::primitive("timestamp", PrimitiveType::Long)],
        vec![
            Field::primitive("count", PrimitiveType::Long),
            Field::primitive("text", PrimitiveType::String),
            Field::primitive("measure", PrimitiveType::Long),
        ],
    )
    .unwrap()
}

/// DataFusion's own ordered merge and Parquet sink over the table's files (of one partition,
/// `root`), with the order declared and the same Parquet settings as the export: `CREATE
/// EXTERNAL TABLE … WITH ORDER`, then `COPY (SELECT * FROM t <filter> ORDER BY key, timestamp)`.
/// Returns the rows written. `SLEEPER_BENCH_EXPLAIN` prints the plan.
pub fn datafusion_ordered_copy(
    table: &sleeper_export::table::SleeperTable,
    out: &std::path::Path,
    threads: usize,
    filter: &str,
    row_group_rows: usize,
) -> u64 {
    use datafusion::prelude::{SessionConfig, SessionContext};
    runtime(threads).block_on(async {
        let config = SessionConfig::new()
            .with_target_partitions(table.files.len())
            .with_batch_size(8192);
        let ctx = SessionContext::new_with_config(config);
        let data = table
            .location
            .url
            .to_file_path()
            .unwrap()
            .join("data/partition_root");
        ctx.sql(&format!(
            "CREATE EXTERNAL TABLE t STORED AS PARQUET WITH ORDER (key ASC, timestamp ASC) \
             LOCATION '{}/'",
            data.display()
        ))
        .await
        .unwrap();
        let statement = format!(
            "COPY (SELECT * FROM t {filter} ORDER BY key, timestamp) TO '{}' STORED AS PARQUET \
             OPTIONS ('format.compression' 'zstd(3)', 'format.max_row_group_size' \
             '{row_group_rows}', 'format.writer_version' '2.0', 'format.dictionary_enabled' \
             'false')",
            out.join("datafusion.parquet").display()
        );
        if std::env::var_os("SLEEPER_BENCH_EXPLAIN").is_some() {
            let plan = ctx.sql(&format!("EXPLAIN {statement}")).await.unwrap();
            let plan = plan.collect().await.unwrap();
            eprintln!(
                "{}",
                datafusion::arrow::util::pretty::pretty_format_batches(&plan).unwrap()
            );
        }
        let result = ctx.sql(&statement).await.unwrap().collect().await.unwrap();
        result[0]
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::UInt64Array>()
            .unwrap()
            .value(0)
    })
}

/// A fresh queue on the local SQS server (`scripts/local-aws.sh start`), named from `name`.
pub async fn sqs_queue(
    client: &aws_sdk_sqs::Client,
    name: &str,
) -> sleeper_export::queue::sqs::SqsQueue {
    let url = client
        .create_queue()
        .queue_name(format!("{name}-{}", uuid::Uuid::new_v4().simple()))
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "60",
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    sleeper_export::queue::sqs::SqsQueue::new(client.clone(), url)
}

/// Writes `files` random files of `rows_per_leaf / files` rows into each leaf of the writer's
/// tree, and finishes the table.
pub async fn write_leaves(
    mut writer: TableWriter,
    files: usize,
    rows_per_leaf: usize,
) -> SleeperTable {
    let leaf_ids: Vec<String> = writer
        .tree()
        .leaves()
        .iter()
        .map(|l| l.id.clone())
        .collect();
    for leaf in &leaf_ids {
        for _ in 0..files {
            writer
                .write_random_file(leaf, rows_per_leaf / files, &[leaf])
                .await
                .unwrap();
        }
    }
    writer.finish().await.unwrap()
}
