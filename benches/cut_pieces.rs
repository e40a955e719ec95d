//! A big leaf cut into pieces against as many leaves of the same rows (issue 25): one leaf of
//! 64 × R rows in 8 files, exported with `max_rows_per_file = R`, against 64 leaves of R rows in
//! 8 files each; both with 2 leaves at once, row groups of R / 10 rows and pages of
//! 128 KiB × R / 1,000,000 (Sleeper's 100,000 rows and 128 KiB for R = 1,000,000: a smaller R
//! keeps the pages a row group has, on which a piece's start inside it depends). Alternating
//! rounds, medians.
//!
//! ```bash
//! cargo bench --bench cut_pieces                           # R = 1,000,000 (64 M rows a table)
//! CUT_PIECES_ROWS=100000 cargo bench --profile dev --bench cut_pieces
//! ```

mod common;

use std::time::Instant;

use common::{bench_data, env_number, output_dir, runtime};
use sleeper_export::export::export_table;
use sleeper_export::leaf::ExportOptions;
use sleeper_export::model::TableProperties;
use sleeper_export::model::{Field, KeyValue, PartitionTree, PrimitiveType, Schema};
use sleeper_export::storage::Stores;
use sleeper_export::table::SleeperTable;
use sleeper_export::tablegen::{RowStyle, TableWriter};

const PIECES: usize = 64;
const FILES: usize = 8;
/// `sleeper.table.parquet.page.size`'s default.
const SLEEPER_PAGE_SIZE: usize = 131_072;
/// Keys of leaf `i` of the split table lie in `[i * SPAN, (i + 1) * SPAN)`.
const SPAN: i64 = 1 << 40;

/// The table of `leaves` leaves (1, or `PIECES`), each of `rows` rows in `FILES` files.
async fn table(leaves: usize, rows_per_leaf: usize) -> SleeperTable {
    let rows = rows_per_leaf * leaves / PIECES;
    let page_size = (SLEEPER_PAGE_SIZE as u64 * rows as u64 / 1_000_000).max(1024) as usize;
    let dir = bench_data("cut_pieces").join(format!(
        "leaves-{leaves}-rows-{rows_per_leaf}-page-{page_size}"
    ));
    let stores = Stores::default();
    if let Ok(table) = SleeperTable::open(dir.to_str().unwrap(), &stores).await {
        return table;
    }
    let schema = Schema::new(
        vec![Field::primitive("id", PrimitiveType::Long)],
        vec![],
        vec![
            Field::primitive("value", PrimitiveType::String),
            Field::primitive("count", PrimitiveType::Long),
        ],
    )
    .unwrap();
    let splits: Vec<KeyValue> = (1..leaves as i64)
        .map(|i| KeyValue::Long(i * SPAN))
        .collect();
    let tree = PartitionTree::from_split_points("pieces", &schema, &splits).unwrap();
    let mut properties = TableProperties::new("pieces", "pieces", schema);
    properties.parquet.row_group_rows = (rows / 10).max(1);
    properties.parquet.page_size = page_size;
    let style = RowStyle {
        key_span: SPAN * PIECES as i64,
        ..RowStyle::default()
    };
    let location = stores.resolve(dir.to_str().unwrap()).unwrap();
    let writer = TableWriter::new(location, properties, tree, style, 11);
    common::write_leaves(writer, FILES, rows_per_leaf).await
}

fn main() {
    common::allocator::limit_arenas();
    let rows = env_number("CUT_PIECES_ROWS", 1_000_000);
    let rounds = env_number("CUT_PIECES_ROUNDS", 3);
    let runtime = runtime(2);
    let cut = runtime.block_on(table(1, rows * PIECES));
    let split = runtime.block_on(table(PIECES, rows));
    let export = |table: &SleeperTable, max_rows: Option<u64>| {
        let out = output_dir();
        let output = table.stores.resolve(out.path().to_str().unwrap()).unwrap();
        let options = ExportOptions {
            parallelism: 2,
            max_rows_per_file: max_rows,
            ..ExportOptions::default()
        };
        common::peak_rss_reset();
        let started = Instant::now();
        let summary = runtime
            .block_on(export_table(table, &output, &options, |_| {}))
            .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(summary.rows_written(), (rows * PIECES) as u64);
        let read: u64 = summary.leaves.iter().map(|leaf| leaf.rows_read).sum();
        (seconds, summary.leaves.len(), common::peak_rss_mib(), read)
    };
    let (mut cut_times, mut split_times) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (cut_seconds, pieces, cut_rss, cut_read) = export(&cut, Some(rows as u64));
        let (split_seconds, leaves, split_rss, split_read) = export(&split, None);
        println!(
            "round {round}: one leaf cut into {pieces} pieces {cut_seconds:.2} s ({cut_rss:.0} MiB, \
             {cut_read} rows read), {leaves} leaves {split_seconds:.2} s ({split_rss:.0} MiB, \
             {split_read} rows read)"
        );
        cut_times.push(cut_seconds);
        split_times.push(split_seconds);
    }
    let median = |times: &mut Vec<f64>| {
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    };
    let (cut_median, split_median) = (median(&mut cut_times), median(&mut split_times));
    println!(
        "{} rows: cut {cut_median:.2} s, leaves {split_median:.2} s: cut / leaves = {:.3}",
        rows * PIECES,
        cut_median / split_median
    );
}
