//! The leaf-export benchmark of issue 2 (run: `cargo bench --bench leaf_export`).
//!
//! One leaf of 8 sorted files × 2.5 M rows (16-char string row key, i64 sort key, i64, 20-40
//! byte string and a third i64 value, since Sleeper has no floating-point type; zstd), whose
//! region keeps about 80 % of the rows. In one run it times, on the same files:
//! - ours, on a 1-thread and a 2-thread runtime;
//! - (a) DataFusion's own plan: Parquet scan with the order declared, region filter,
//!   `SortPreservingMergeExec`, Parquet sink (`COPY … TO`), 2 threads;
//! - (b) the floor: the same rows filtered and copied file after file, no merge, 1 thread;
//!
//! - ours with Sleeper aggregations (sum, max, min) on every value column, 1 and 2 threads;
//! - ours without the check that input files are in the table's order, 1 and 2 threads, to
//!   measure what the check costs;
//! - reading and filtering alone, to show how the floor's time splits;
//!
//! each variant in its own process, and prints the ratios the issues set targets for, with the
//! peak RSS of each variant.
//! `SLEEPER_BENCH_ROWS` overrides the rows per file (default 2,500,000); `SLEEPER_BENCH_RUNS`
//! the runs per variant (default 3, the median is reported).

mod common;

use common::{env_number, measure, output_dir, peak_rss_reset, print_result, runtime};
use std::time::Instant;

use sleeper_export::leaf::{run_leaf_query, ExportOptions};
use sleeper_export::model::PartitionTree;
use sleeper_export::model::{KeyValue, TableProperties};
use sleeper_export::plan::filter::RowFilter;
use sleeper_export::query::split_into_leaf_queries;
use sleeper_export::storage::Stores;
use sleeper_export::table::SleeperTable;
use sleeper_export::tablegen::{RowStyle, TableWriter};

const FILES: usize = 8;
/// About 80 % of uniformly random lowercase keys sort below this.
const SPLIT: &str = "uuuu";

async fn create_table(dir: &std::path::Path, rows_per_file: usize) -> SleeperTable {
    let marker = dir.join(format!("complete-{rows_per_file}"));
    let stores = Stores::default();
    if marker.exists() {
        return SleeperTable::open(dir.join("table").to_str().unwrap(), &stores)
            .await
            .unwrap();
    }
    let _ = std::fs::remove_dir_all(dir);
    let schema = common::bench_schema();
    let tree =
        PartitionTree::from_split_points("bench", &schema, &[KeyValue::String(SPLIT.into())])
            .unwrap();
    let location = stores.resolve(dir.join("table").to_str().unwrap()).unwrap();
    let mut writer = TableWriter::new(
        location,
        TableProperties::new("bench", "bench", schema),
        tree,
        RowStyle::default(),
        1,
    );
    for i in 0..FILES {
        eprintln!(
            "writing input file {}/{FILES} ({rows_per_file} rows)",
            i + 1
        );
        writer
            .write_random_file("root", rows_per_file, &["root"])
            .await
            .unwrap();
    }
    let table = writer.finish().await.unwrap();
    std::fs::write(marker, "").unwrap();
    table
}

fn ours(table: &SleeperTable, out: &std::path::Path, threads: usize, verify_order: bool) -> u64 {
    runtime(threads).block_on(async {
        let output = Stores::default().resolve(out.to_str().unwrap()).unwrap();
        let query = split_into_leaf_queries(table, "bench")
            .into_iter()
            .find(|q| q.partition_region.ranges[0].max.is_some())
            .expect("the 80 % leaf");
        let options = ExportOptions {
            verify_order,
            ..ExportOptions::default()
        };
        run_leaf_query(table, &query, &output, &options)
            .await
            .unwrap()
            .rows_written
    })
}

/// Filter-and-copy with no merge: the cost of reading, filtering and (when `write`) writing the
/// same rows.
fn floor(table: &SleeperTable, out: &std::path::Path, write: bool) -> u64 {
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use datafusion::parquet::arrow::ArrowWriter;
    let query = split_into_leaf_queries(table, "bench")
        .into_iter()
        .find(|q| q.partition_region.ranges[0].max.is_some())
        .unwrap();
    let schema = &table.properties.schema;
    let filter = RowFilter::new(
        &query.partition_region,
        &query.regions,
        &schema.row_key_types(),
        table.properties.key_order,
    );
    let file = std::fs::File::create(out.join("floor.parquet")).unwrap();
    let mut writer = ArrowWriter::try_new(
        file,
        schema.arrow_schema(),
        Some(
            table
                .properties
                .writer_properties(&schema.arrow_schema())
                .unwrap(),
        ),
    )
    .unwrap();
    let mut rows = 0;
    for input in &query.files {
        let path = input.strip_prefix("file://").unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
            .unwrap()
            .with_batch_size(8192)
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let batch = match filter.evaluate(&batch).unwrap() {
                Some(mask) => {
                    datafusion::arrow::compute::filter_record_batch(&batch, &mask).unwrap()
                }
                None => batch,
            };
            rows += batch.num_rows() as u64;
            if write {
                writer.write(&batch).unwrap();
            }
        }
    }
    writer.close().unwrap();
    rows
}

/// Runs one variant in this process, `runs` times, printing `RESULT seconds peak_rss_mib rows`
/// per run. Each variant runs in its own process so that its peak RSS is its own.
fn run_variant(name: &str, table: &SleeperTable, runs: usize) {
    for _ in 0..runs {
        let out = output_dir();
        peak_rss_reset();
        let started = Instant::now();
        let rows = match name {
            "floor" => floor(table, out.path(), true),
            "read" => floor(table, out.path(), false),
            "ours-1" => ours(table, out.path(), 1, true),
            "ours-2" => ours(table, out.path(), 2, true),
            "ours-unchecked-1" => ours(table, out.path(), 1, false),
            "ours-unchecked-2" => ours(table, out.path(), 2, false),
            "ours-agg-1" => ours(&aggregating(table), out.path(), 1, true),
            "ours-agg-2" => ours(&aggregating(table), out.path(), 2, true),
            "datafusion-2" => common::datafusion_ordered_copy(
                table,
                out.path(),
                2,
                &format!("WHERE key < '{SPLIT}'"),
                100_000,
            ),
            other => panic!("unknown variant {other}"),
        };
        print_result(started.elapsed().as_secs_f64(), rows);
    }
}

/// The same table with Sleeper aggregations on every value column.
fn aggregating(table: &SleeperTable) -> SleeperTable {
    let mut properties = (*table.properties).clone();
    properties.aggregations = Some("sum(count), max(text), min(measure)".into());
    table.with_properties(properties).unwrap()
}

fn main() {
    common::allocator::limit_arenas();
    let args: Vec<String> = std::env::args().collect();
    let rows_per_file = env_number("SLEEPER_BENCH_ROWS", 2_500_000);
    let runs = env_number("SLEEPER_BENCH_RUNS", 3);
    let dir = common::bench_data("leaf_export");
    let table = runtime(2).block_on(create_table(&dir, rows_per_file));
    if let Some(position) = args.iter().position(|a| a == "--variant") {
        let runs = args
            .get(position + 3)
            .and_then(|r| r.parse().ok())
            .unwrap_or(1);
        run_variant(&args[position + 1], &table, runs);
        return;
    }
    let variants = [
        "floor",
        "read",
        "ours-1",
        "ours-2",
        "ours-unchecked-1",
        "ours-unchecked-2",
        "ours-agg-1",
        "ours-agg-2",
        "datafusion-2",
    ];
    let measured: Vec<(&str, common::Measured)> =
        variants.iter().map(|v| (*v, measure(v, runs))).collect();
    let get = |name: &str| &measured.iter().find(|(v, _)| *v == name).unwrap().1;
    for name in ["ours-1", "ours-2", "ours-unchecked-2", "datafusion-2"] {
        assert_eq!(
            get(name).rows,
            get("floor").rows,
            "{name} and the floor export the same rows"
        );
    }
    let input_rows = rows_per_file * FILES;
    println!(
        "leaf export: {FILES} files × {rows_per_file} rows, {} rows kept ({:.1} %), median of {runs} runs, each variant in its own process",
        get("floor").rows,
        100.0 * get("floor").rows as f64 / input_rows as f64
    );
    let described = [
        ("floor", "(b) floor: filter + copy, no merge, 1 thread"),
        ("read", "     read + filter only, 1 thread"),
        ("ours-1", "ours, 1 thread"),
        ("ours-2", "ours, 2 threads"),
        ("ours-unchecked-1", "ours without the order check, 1 thread"),
        (
            "ours-unchecked-2",
            "ours without the order check, 2 threads",
        ),
        ("ours-agg-1", "ours, sum/max/min aggregation, 1 thread"),
        ("ours-agg-2", "ours, sum/max/min aggregation, 2 threads"),
        (
            "datafusion-2",
            "(a) DataFusion SPM + Parquet sink, 2 threads",
        ),
    ];
    for (name, description) in described {
        let m = get(name);
        println!(
            "  {description:<48} {:>8.3} s  peak RSS {:>7.1} MiB  {:>9} rows out",
            m.time.as_secs_f64(),
            m.peak_rss_mib,
            m.rows
        );
    }
    let ratio = |a: &str, b: &str| get(a).time.as_secs_f64() / get(b).time.as_secs_f64();
    println!(
        "  ours 1 thread / floor            = {:.3} (target ≤ 1.05)",
        ratio("ours-1", "floor")
    );
    println!(
        "  DataFusion / ours 2 threads      = {:.3} (target ≥ 1.3)",
        ratio("datafusion-2", "ours-2")
    );
    println!(
        "  aggregated / plain, 1 thread     = {:.3} (target < 1.15)",
        ratio("ours-agg-1", "ours-1")
    );
    println!(
        "  aggregated / plain, 2 threads    = {:.3} (target < 1.15)",
        ratio("ours-agg-2", "ours-2")
    );
    println!(
        "  order check: checked / unchecked = {:.3} (1 thread), {:.3} (2 threads) (budget ≤ 1.03)",
        ratio("ours-1", "ours-unchecked-1"),
        ratio("ours-2", "ours-unchecked-2")
    );
    let peak = ["ours-1", "ours-2", "ours-agg-1", "ours-agg-2"]
        .iter()
        .map(|v| get(v).peak_rss_mib)
        .fold(0.0, f64::max);
    println!("  ours peak RSS                    = {peak:.1} MiB (target < 512)");
}
