//! What scheduling through queues costs (issue 4's figures), against the local S3 + SQS server:
//!
//! ```bash
//! eval "$(scripts/local-aws.sh start)"; cargo bench --bench queue_overhead; scripts/local-aws.sh stop
//! ```
//!
//! - planning: leaf queries planned per second for a table of 1,000 leaves (manifest written,
//!   queries sent in batches of ten), over SQS and over the in-process queue;
//! - runner overhead per leaf: the same leaves exported directly (`run_leaf_query`) and through a
//!   runner taking them from SQS (receive, keep-alive, completion record, delete), one at a time.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sleeper_export::leaf::{run_leaf_query, ExportOptions};
use sleeper_export::model::PartitionTree;
use sleeper_export::model::{Field, KeyValue, PrimitiveType, Schema, TableProperties};
use sleeper_export::query::{split_into_leaf_queries, BulkExportQuery};
use sleeper_export::queue::config::BulkExportConfig;
use sleeper_export::queue::local::LocalQueue;
use sleeper_export::queue::planner::Planner;
use sleeper_export::queue::runner::Runner;
use sleeper_export::queue::sqs::SqsQueue;
use sleeper_export::queue::MessageQueue;
use sleeper_export::queue::TableIndex;
use sleeper_export::storage::{Location, Stores};
use sleeper_export::table::SleeperTable;
use sleeper_export::tablegen::{write_demo_table, RowStyle, TableWriter};

async fn thousand_leaf_table(location: Location) -> SleeperTable {
    let schema = Schema::new(
        vec![Field::primitive("id", PrimitiveType::Long)],
        vec![],
        vec![],
    )
    .unwrap();
    let splits: Vec<KeyValue> = (1..1000).map(|i| KeyValue::Long(i * 1000)).collect();
    let tree = PartitionTree::from_split_points("wide", &schema, &splits).unwrap();
    let mut writer = TableWriter::new(
        location,
        TableProperties::new("wide", "wide", schema),
        tree,
        RowStyle::default(),
        1,
    );
    let root = writer.tree().root().id.clone();
    writer
        .write_random_file(&root, 10_000, &[&root])
        .await
        .unwrap();
    writer.finish().await.unwrap()
}

async fn planning_rate(planner: &Planner, queue: &dyn MessageQueue, export_id: &str) -> f64 {
    let query = BulkExportQuery::of_table("wide", export_id);
    let started = Instant::now();
    let planned = planner.plan(&query.to_json(), queue).await.unwrap();
    planned.leaves as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let stores = Stores::default();
    let bucket = sleeper_export::tablegen::local_s3::create_bucket("bench");
    let client = SqsQueue::client().await;
    let output = stores.resolve(&format!("s3://{bucket}/exports")).unwrap();

    let wide = thousand_leaf_table(
        stores
            .resolve(&format!("s3://{bucket}/tables/wide"))
            .unwrap(),
    )
    .await;
    let planner = Planner {
        tables: TableIndex::new(vec![wide]),
        output: output.clone(),
        export: ExportOptions::default(),
    };
    let over_sqs = planning_rate(
        &planner,
        &common::sqs_queue(&client, "plan").await,
        "plan-sqs",
    )
    .await;
    let in_process = planning_rate(&planner, &LocalQueue::default(), "plan-local").await;
    println!("planning a 1,000-leaf table: {over_sqs:.0} leaf queries/s over SQS (moto, loopback), {in_process:.0}/s in process");

    let leaves = 20;
    let table = write_demo_table(
        stores
            .resolve(&format!("s3://{bucket}/tables/demo"))
            .unwrap(),
        leaves,
        20_000,
        2,
    )
    .await
    .unwrap();
    let options = ExportOptions {
        parallelism: 1,
        ..ExportOptions::default()
    };
    let started = Instant::now();
    for query in split_into_leaf_queries(&table, "direct") {
        run_leaf_query(&table, &query, &output, &options)
            .await
            .unwrap();
    }
    let direct = started.elapsed() / leaves as u32;

    let leaf_queue = common::sqs_queue(&client, "leaves").await;
    let planner = Planner {
        tables: TableIndex::new(vec![table.clone()]),
        output: output.clone(),
        export: ExportOptions::default(),
    };
    let query = BulkExportQuery::of_table(table.id(), "queued");
    planner.plan(&query.to_json(), &leaf_queue).await.unwrap();
    let runner = Arc::new(
        Runner::new(
            TableIndex::new(vec![table]),
            output,
            options,
            BulkExportConfig {
                wait: Duration::from_secs(1),
                ..BulkExportConfig::default()
            },
        )
        .with_idle_exit(Some(Duration::ZERO)),
    );
    let started = Instant::now();
    let report = runner
        .run(Arc::new(leaf_queue), None, std::future::pending())
        .await
        .unwrap();
    assert_eq!(report.done.len(), leaves);
    // The runner's last receive waits out its long poll before it sees the queue is empty.
    let queued = (started.elapsed() - Duration::from_secs(1)) / leaves as u32;
    println!(
        "per leaf of {} rows: {direct:.1?} exported directly, {queued:.1?} through the runner over SQS: {:.1?} overhead ({:.0} %)",
        20_000 * 2,
        queued.saturating_sub(direct),
        100.0 * (queued.as_secs_f64() / direct.as_secs_f64() - 1.0)
    );
}
