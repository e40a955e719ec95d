//! What a leaf costs as exports grow wide: a local export (the embedded default: the planner
//! and runner over the in-process queue) of tables of 1,000, 4,000 and 16,000 leaves of one
//! small file each, timed per leaf; the cost of a leaf should not grow with the leaves.
//!
//! ```bash
//! cargo bench --bench many_leaves                       # 1,000, 4,000 and 16,000 leaves
//! MANY_LEAVES=1000,2000 cargo bench --bench many_leaves
//! ```
//!
//! Tables are kept in the target directory between runs (`bench_data`).

mod common;

use std::time::Instant;

use common::{bench_data, output_dir, runtime};
use sleeper_export::export::export_table;
use sleeper_export::leaf::ExportOptions;
use sleeper_export::model::TableProperties;
use sleeper_export::model::{Field, KeyValue, PartitionTree, PrimitiveType, Schema};
use sleeper_export::storage::Stores;
use sleeper_export::table::SleeperTable;
use sleeper_export::tablegen::{RowStyle, TableWriter};

const ROWS_PER_LEAF: usize = 20;

/// `leaves` leaves split on a long key, each with one file of its own.
async fn wide_table(leaves: usize) -> SleeperTable {
    let dir = bench_data("many_leaves").join(format!("leaves-{leaves}"));
    let stores = Stores::default();
    if let Ok(table) = SleeperTable::open(dir.to_str().unwrap(), &stores).await {
        return table;
    }
    let schema = Schema::new(
        vec![Field::primitive("id", PrimitiveType::Long)],
        vec![],
        vec![Field::primitive("value", PrimitiveType::String)],
    )
    .unwrap();
    let splits: Vec<KeyValue> = (1..leaves as i64)
        .map(|i| KeyValue::Long(i * 1000))
        .collect();
    let tree = PartitionTree::from_split_points("wide", &schema, &splits).unwrap();
    let leaf_ids: Vec<String> = tree.leaves().iter().map(|l| l.id.clone()).collect();
    let style = RowStyle {
        key_span: leaves as i64 * 1000,
        ..RowStyle::default()
    };
    let location = stores.resolve(dir.to_str().unwrap()).unwrap();
    let mut writer = TableWriter::new(
        location,
        TableProperties::new("wide", "wide", schema),
        tree,
        style,
        7,
    );
    for leaf in &leaf_ids {
        writer
            .write_random_file(leaf, ROWS_PER_LEAF, &[leaf])
            .await
            .unwrap();
    }
    writer.finish().await.unwrap()
}

fn main() {
    common::allocator::limit_arenas();
    let sizes: Vec<usize> = std::env::var("MANY_LEAVES")
        .unwrap_or_else(|_| "1000,4000,16000".into())
        .split(',')
        .map(|n| n.trim().parse().expect("MANY_LEAVES: numbers of leaves"))
        .collect();
    let runtime = runtime(2);
    let mut first: Option<f64> = None;
    for leaves in sizes {
        let table = runtime.block_on(wide_table(leaves));
        let out = output_dir();
        let output = table.stores.resolve(out.path().to_str().unwrap()).unwrap();
        let options = ExportOptions {
            parallelism: 2,
            ..ExportOptions::default()
        };
        let started = Instant::now();
        let summary = runtime
            .block_on(export_table(&table, &output, &options, |_| {}))
            .unwrap();
        let per_leaf = started.elapsed().as_secs_f64() / leaves as f64;
        assert_eq!(summary.leaves.len(), leaves);
        let ratio = *first.get_or_insert(per_leaf);
        println!(
            "{leaves} leaves: {:.2} ms a leaf ({:.2} × the first size's), {} rows",
            per_leaf * 1000.0,
            per_leaf / ratio,
            summary.rows_written()
        );
    }
}
