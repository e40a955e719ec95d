//! The table provider: one execution partition per leaf, usable from DataFusion SQL.

mod common;

use std::sync::Arc;

use common::{local, long_key_table};
use datafusion::physical_plan::{displayable, ExecutionPlanProperties};
use datafusion::prelude::SessionContext;
use sleeper_export::plan::SleeperTableProvider;

#[tokio::test]
async fn the_scan_has_one_partition_per_leaf_and_sql_sees_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let table = long_key_table(local(dir.path()), 100_000, 2000).await;
    let provider = SleeperTableProvider::new(table.clone());
    let plan: Arc<dyn datafusion::physical_plan::ExecutionPlan> =
        Arc::new(provider.merge_plan(None, None).unwrap());
    assert_eq!(plan.output_partitioning().partition_count(), 4);

    let ctx = SessionContext::new();
    ctx.register_table("t", Arc::new(provider)).unwrap();
    let counted = ctx
        .sql("SELECT count(*) AS n, count(DISTINCT name) AS d FROM t")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let n = counted[0]
        .column(0)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(n, 2000);
}

#[tokio::test]
async fn ordering_by_integer_row_keys_needs_no_sort() {
    let dir = tempfile::tempdir().unwrap();
    let table = long_key_table(local(dir.path()), 100_000, 2000).await;
    let ctx = SessionContext::new();
    ctx.register_table("t", Arc::new(SleeperTableProvider::new(table)))
        .unwrap();
    let frame = ctx.sql("SELECT id, name FROM t ORDER BY id").await.unwrap();
    let plan = frame.clone().create_physical_plan().await.unwrap();
    let shown = displayable(plan.as_ref()).indent(true).to_string();
    assert!(!shown.contains("SortExec"), "{shown}");
    assert!(shown.contains("LeafMergeExec"), "{shown}");
    let batches = frame.collect().await.unwrap();
    let ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(ids.len(), 2000);
    assert!(
        ids.windows(2).all(|w| w[0] <= w[1]),
        "ORDER BY id returned unsorted rows"
    );
}
