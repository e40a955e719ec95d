//! Performance at real sizes (issue 13; run: `cargo bench --bench scale`).
//!
//! One leaf of 10 M rows (`SLEEPER_BENCH_TOTAL_ROWS`) laid out as Sleeper lays it out: K sorted
//! files of the leaf's partition (an un-compacted leaf has many), a 16-char string row key, an
//! i64 sort key and three values, zstd, dictionary off, written with row groups of the table's
//! `sleeper.table.parquet.rowgroup.rows.max`, which the export also writes. Layouts: row groups
//! of 100 k and 1 M rows; K = 8, 32, 128 files at the same total rows. Every variant runs in its
//! own process (median of `SLEEPER_BENCH_RUNS` runs, default 3), and the run prints its time,
//! peak RSS and the ratios issue 13 sets targets for. `--variant NAME --runs N` runs one.
//!
//! Variants are named `<engine>-<threads>-k<files>-rg<rows>`: `ours` is the leaf export,
//! `datafusion` is DataFusion's own ordered merge and Parquet sink over the same files
//! (`CREATE EXTERNAL TABLE … WITH ORDER`, `COPY (… ORDER BY key, timestamp)`).

mod common;

use std::time::Instant;

use common::{env_number, measure, output_dir, peak_rss_reset, print_result, runtime};
use datafusion::prelude::{SessionConfig, SessionContext};
use sleeper_export::leaf::{run_leaf_query, ExportOptions};
use sleeper_export::model::{PartitionTree, TableProperties};
use sleeper_export::query::split_into_leaf_queries;
use sleeper_export::storage::Stores;
use sleeper_export::table::SleeperTable;
use sleeper_export::tablegen::{RowStyle, TableWriter};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy)]
struct Layout {
    files: usize,
    row_group_rows: usize,
}

impl Layout {
    fn name(self) -> String {
        let rows = match self.row_group_rows {
            n if n % 1_000_000 == 0 => format!("{}m", n / 1_000_000),
            n if n % 1_000 == 0 => format!("{}k", n / 1_000),
            n => n.to_string(),
        };
        format!("k{}-rg{rows}", self.files)
    }

    fn parse(name: &str) -> Option<Self> {
        let (files, rows) = name.strip_prefix('k')?.split_once("-rg")?;
        let row_group_rows = match rows.as_bytes().last()? {
            b'm' => rows[..rows.len() - 1].parse::<usize>().ok()? * 1_000_000,
            b'k' => rows[..rows.len() - 1].parse::<usize>().ok()? * 1_000,
            _ => rows.parse().ok()?,
        };
        Some(Layout {
            files: files.parse().ok()?,
            row_group_rows,
        })
    }
}

async fn create_table(layout: Layout, total_rows: usize) -> SleeperTable {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let dir = std::path::Path::new(&target)
        .join("bench-data/scale")
        .join(format!("{}-{total_rows}", layout.name()));
    let stores = Stores::default();
    let table_dir = dir.join("table");
    if dir.join("complete").exists() {
        return SleeperTable::open(table_dir.to_str().unwrap(), &stores)
            .await
            .unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
    let schema = common::bench_schema();
    let tree = PartitionTree::from_split_points("scale", &schema, &[]).unwrap();
    let mut properties = TableProperties::new("scale", "scale", schema);
    properties.parquet.row_group_rows = layout.row_group_rows;
    properties.raw = properties.to_java();
    let location = stores.resolve(table_dir.to_str().unwrap()).unwrap();
    let mut writer = TableWriter::new(location, properties, tree, RowStyle::default(), 13);
    let rows_per_file = total_rows / layout.files;
    eprintln!(
        "writing {}: {} files × {rows_per_file} rows",
        layout.name(),
        layout.files
    );
    for _ in 0..layout.files {
        writer
            .write_random_file("root", rows_per_file, &["root"])
            .await
            .unwrap();
    }
    let table = writer.finish().await.unwrap();
    std::fs::write(dir.join("complete"), "").unwrap();
    table
}

fn ours(table: &SleeperTable, out: &std::path::Path, threads: usize) -> u64 {
    runtime(threads).block_on(async {
        let output = Stores::default().resolve(out.to_str().unwrap()).unwrap();
        let [query] = split_into_leaf_queries(table, "bench")
            .try_into()
            .expect("one leaf");
        run_leaf_query(table, &query, &output, &ExportOptions::default())
            .await
            .unwrap()
            .rows_written
    })
}

fn datafusion(table: &SleeperTable, out: &std::path::Path, threads: usize) -> u64 {
    let files = table.files.len();
    let row_group_rows = table.properties.parquet.row_group_rows;
    runtime(threads).block_on(async {
        let config = SessionConfig::new()
            .with_target_partitions(files)
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
            "COPY (SELECT * FROM t ORDER BY key, timestamp) TO '{}' STORED AS PARQUET OPTIONS \
             ('format.compression' 'zstd(3)', 'format.max_row_group_size' '{row_group_rows}', \
             'format.writer_version' '2.0', 'format.dictionary_enabled' 'false')",
            out.join("datafusion.parquet").display()
        );
        let result = ctx.sql(&statement).await.unwrap().collect().await.unwrap();
        result[0]
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::UInt64Array>()
            .unwrap()
            .value(0)
    })
}

/// Runs one variant in this process, `runs` times.
fn run_variant(name: &str, total_rows: usize, runs: usize) {
    let mut parts = name.splitn(3, '-');
    let (engine, threads, layout) = (
        parts.next().unwrap(),
        parts.next().and_then(|t| t.parse().ok()).expect("threads"),
        parts.next().and_then(Layout::parse).expect("a layout"),
    );
    let table = runtime(2).block_on(create_table(layout, total_rows));
    for _ in 0..runs {
        let out = output_dir();
        peak_rss_reset();
        let started = Instant::now();
        let rows = match engine {
            "ours" => ours(&table, out.path(), threads),
            "datafusion" => datafusion(&table, out.path(), threads),
            other => panic!("unknown engine {other}"),
        };
        print_result(started.elapsed().as_secs_f64(), rows);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let total_rows = env_number("SLEEPER_BENCH_TOTAL_ROWS", 10_000_000);
    let runs = env_number("SLEEPER_BENCH_RUNS", 3);
    if let Some(position) = args.iter().position(|a| a == "--variant") {
        let runs = args
            .get(position + 3)
            .and_then(|r| r.parse().ok())
            .unwrap_or(1);
        run_variant(&args[position + 1], total_rows, runs);
        return;
    }
    let layouts = [
        (8, 100_000),
        (8, 1_000_000),
        (32, 1_000_000),
        (128, 1_000_000),
    ]
    .map(|(files, row_group_rows)| Layout {
        files,
        row_group_rows,
    });
    // Tables are written once, here, so no variant's time or memory includes writing them.
    for layout in layouts {
        runtime(2).block_on(create_table(layout, total_rows));
    }
    let mut variants = Vec::new();
    for layout in layouts {
        variants.push(format!("ours-2-{}", layout.name()));
        variants.push(format!("ours-1-{}", layout.name()));
    }
    for layout in [layouts[1], layouts[3]] {
        variants.push(format!("datafusion-2-{}", layout.name()));
    }
    println!(
        "leaf export at scale: one leaf of {total_rows} rows, median of {runs} runs, each \
         variant in its own process"
    );
    let measured: Vec<(String, common::Measured)> = variants
        .iter()
        .map(|variant| (variant.clone(), measure(variant, runs)))
        .collect();
    for (variant, m) in &measured {
        assert_eq!(m.rows, total_rows as u64, "{variant} writes every row");
        println!(
            "  {variant:<26} {:>8.3} s  peak RSS {:>7.1} MiB",
            m.time.as_secs_f64(),
            m.peak_rss_mib
        );
    }
    let get = |name: &str| &measured.iter().find(|(v, _)| v == name).unwrap().1;
    let ratio = |a: &str, b: &str| get(a).time.as_secs_f64() / get(b).time.as_secs_f64();
    for threads in [1, 2] {
        println!(
            "  K=128 / K=8 per row, {threads} thread(s)  = {:.3} (target ≤ 1.3)",
            ratio(
                &format!("ours-{threads}-k128-rg1m"),
                &format!("ours-{threads}-k8-rg1m")
            )
        );
    }
    println!(
        "  DataFusion / ours, K=8, 1 M row groups = {:.3}",
        ratio("datafusion-2-k8-rg1m", "ours-2-k8-rg1m")
    );
    let peak = measured
        .iter()
        .filter(|(v, _)| v.starts_with("ours"))
        .map(|(_, m)| m.peak_rss_mib)
        .fold(0.0, f64::max);
    println!("  ours peak RSS, every layout         = {peak:.1} MiB (target ≤ 512)");
}
