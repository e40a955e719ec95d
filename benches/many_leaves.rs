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
//!
//! Against the local S3 server (moto, table and output in a fresh bucket), counting the
//! requests the export made from the server's log:
//!
//! ```bash
//! eval "$(scripts/local-aws.sh start)"
//! MANY_LEAVES=500,2000 MANY_LEAVES_S3_LOG=~/.cache/sleeper-export/local-aws/moto-5055.log \
//!     cargo bench --bench many_leaves
//! ```

mod common;

use std::collections::BTreeMap;
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

/// `leaves` leaves split on a long key, each with one file of its own, at `location` (kept
/// between runs on local disk).
async fn wide_table(location: &str, leaves: usize) -> SleeperTable {
    let stores = Stores::default();
    if let Ok(table) = SleeperTable::open(location, &stores).await {
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
    let location = stores.resolve(location).unwrap();
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

/// The requests the server logged since `from` lines, by method.
fn requests_logged(log: &str, from: usize) -> (usize, BTreeMap<String, usize>) {
    let text = std::fs::read_to_string(log).expect("the S3 server's log");
    let lines: Vec<&str> = text.lines().collect();
    let mut methods = BTreeMap::new();
    for line in &lines[from.min(lines.len())..] {
        // The server colours the lines of answers other than 200 with ANSI escapes.
        let line: String = line
            .split('\u{1b}')
            .enumerate()
            .map(|(i, part)| {
                if i == 0 {
                    part
                } else {
                    part.split_once('m').map_or("", |(_, rest)| rest)
                }
            })
            .collect();
        if let Some(method) = line
            .split_once("] \"")
            .and_then(|(_, request)| request.split_whitespace().next())
        {
            *methods.entry(method.to_owned()).or_default() += 1;
        }
    }
    (lines.len(), methods)
}

fn main() {
    common::allocator::limit_arenas();
    let sizes: Vec<usize> = std::env::var("MANY_LEAVES")
        .unwrap_or_else(|_| "1000,4000,16000".into())
        .split(',')
        .map(|n| n.trim().parse().expect("MANY_LEAVES: numbers of leaves"))
        .collect();
    let s3_log = std::env::var("MANY_LEAVES_S3_LOG").ok();
    let bucket = s3_log
        .as_ref()
        .map(|_| sleeper_export::tablegen::local_s3::create_bucket("many-leaves"));
    let runtime = runtime(2);
    let mut first: Option<f64> = None;
    for leaves in sizes {
        let (table_location, out) = match &bucket {
            Some(bucket) => (format!("s3://{bucket}/tables/wide-{leaves}"), None),
            None => {
                let dir = bench_data("many_leaves").join(format!("leaves-{leaves}"));
                (dir.to_string_lossy().into_owned(), Some(output_dir()))
            }
        };
        let table = runtime.block_on(wide_table(&table_location, leaves));
        let output = match (&bucket, &out) {
            (Some(bucket), _) => format!("s3://{bucket}/exports"),
            (None, Some(dir)) => dir.path().to_string_lossy().into_owned(),
            (None, None) => unreachable!("a local run has an output directory"),
        };
        let output = table.stores.resolve(&output).unwrap();
        let options = ExportOptions {
            parallelism: 2,
            ..ExportOptions::default()
        };
        let logged_before = s3_log.as_ref().map(|log| requests_logged(log, 0).0);
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
        if let (Some(log), Some(before)) = (&s3_log, logged_before) {
            let (_, methods) = requests_logged(log, before);
            let total: usize = methods.values().sum();
            println!(
                "  S3 requests: {total} ({:.2} a leaf): {}",
                total as f64 / leaves as f64,
                methods
                    .iter()
                    .map(|(method, n)| format!("{method} {:.2}", *n as f64 / leaves as f64))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
}
