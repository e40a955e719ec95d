//! The table provider: one execution partition per leaf, usable from DataFusion SQL.

use std::sync::Arc;

use crate::common::{local, long_key_table};
use datafusion::physical_plan::{displayable, ExecutionPlanProperties};
use datafusion::prelude::SessionContext;
use sleeper_export::plan::SleeperTableProvider;

#[tokio::test]
async fn the_scan_has_one_partition_per_leaf_and_sql_sees_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let table = long_key_table(local(dir.path()), 100_000, 2000).await;
    let provider = SleeperTableProvider::new(table.clone());
    let plan = provider.merge_plan(None, None).unwrap();
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

/// A key range reads only the row groups it can meet, and stops reading a file past its end.
#[tokio::test]
async fn key_predicates_skip_row_groups_and_stop_early() {
    use datafusion::physical_plan::{collect, ExecutionPlan};
    use sleeper_export::plan::LeafMergeExec;

    let dir = tempfile::tempdir().unwrap();
    // One file of 4000 rows with ids in -1000..1000, in row groups of 100.
    let table = long_key_table(local(dir.path()), 100, 4000).await;
    let ctx = SessionContext::new();
    ctx.register_table("t", Arc::new(SleeperTableProvider::new(table)))
        .unwrap();
    let frame = ctx
        .sql("SELECT id FROM t WHERE id >= 100 AND id < 150")
        .await
        .unwrap();
    let plan = frame.create_physical_plan().await.unwrap();
    let rows: usize = collect(Arc::clone(&plan), ctx.task_ctx())
        .await
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    let mut merge: &Arc<dyn ExecutionPlan> = &plan;
    while !merge.is::<LeafMergeExec>() {
        merge = merge.children()[0];
    }
    let metrics = merge.metrics().unwrap();
    let metric = |name: &str| metrics.sum_by_name(name).unwrap().as_usize();
    assert_eq!(
        merge.output_partitioning().partition_count(),
        1,
        "one leaf meets the range"
    );
    assert!(rows > 0 && rows < 150, "{rows} rows");
    // About 40 row groups of ~50 ids each; the leaf alone would keep the 10 in 0..500.
    assert!(metric("row_groups_pruned") >= 36, "{metrics}");
    // What was read is a few row groups around the range, not the leaf's half of the file.
    assert!(metric("rows_read") < 500, "{metrics}");
}

/// A file's reader decodes a batch only once the merge has room for it: while the merge works on
/// one batch of a file, the file holds one more decoded, never a third (at 128 files each is
/// another batch per file held).
#[tokio::test]
async fn a_file_is_decoded_at_most_one_batch_ahead_of_the_merge() {
    use datafusion::execution::TaskContext;
    use datafusion::prelude::SessionConfig;
    use futures::StreamExt;

    const BATCH: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    // One row group, so batches are cut by the batch size alone; leaf 0 holds about 10,000 rows,
    // the first of the file.
    let table = long_key_table(local(dir.path()), 100_000, 40_000).await;
    let merge = SleeperTableProvider::new(table)
        .merge_plan(None, None)
        .unwrap();
    let context =
        TaskContext::default().with_session_config(SessionConfig::new().with_batch_size(BATCH));
    let mut leaf = merge.execute(0, Arc::new(context)).unwrap();
    assert_eq!(leaf.next().await.unwrap().unwrap().num_rows(), BATCH);
    let rows_read = || {
        merge
            .metrics()
            .unwrap()
            .sum_by_name("rows_read")
            .unwrap()
            .as_usize()
    };
    // The first batch is merged and the second taken, so the reader may decode the third.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while rows_read() < 3 * BATCH && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(rows_read(), 3 * BATCH);
}
