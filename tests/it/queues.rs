//! The distributed export over real SQS and S3 (the local moto server `scripts/test.sh` starts):
//! planner, runners, dead-letter queues and export status.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use aws_sdk_sqs::types::QueueAttributeName;
use sleeper_export::leaf::ExportOptions;
use sleeper_export::query::BulkExportQuery;
use sleeper_export::queue::config::BulkExportConfig;
use sleeper_export::queue::manifest::ExportRecords;
use sleeper_export::queue::planner::Planner;
use sleeper_export::queue::runner::Runner;
use sleeper_export::queue::sqs::SqsQueue;
use sleeper_export::queue::worker::Outcome;
use sleeper_export::queue::MessageQueue;
use sleeper_export::queue::TableIndex;
use sleeper_export::storage::Stores;
use sleeper_export::table::SleeperTable;
use sleeper_export::tablegen::write_demo_table;

/// A queue and its dead-letter queue, with a redrive policy after `max_receives`.
async fn queue_pair(
    client: &aws_sdk_sqs::Client,
    name: &str,
    max_receives: u32,
    visibility_seconds: u32,
) -> (SqsQueue, SqsQueue) {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let dlq_url = client
        .create_queue()
        .queue_name(format!("{name}-dlq-{unique}"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dlq_arn = client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    let redrive =
        format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"{max_receives}"}}"#);
    let url = client
        .create_queue()
        .queue_name(format!("{name}-{unique}"))
        .attributes(QueueAttributeName::RedrivePolicy, redrive)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_seconds.to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    (
        SqsQueue::new(client.clone(), url),
        SqsQueue::new(client.clone(), dlq_url),
    )
}

async fn drain(queue: &SqsQueue) -> Vec<String> {
    let mut bodies = Vec::new();
    loop {
        let messages = queue
            .receive(10, Duration::from_secs(1), Duration::from_secs(30))
            .await
            .unwrap();
        if messages.is_empty() {
            return bodies;
        }
        bodies.extend(messages.into_iter().map(|m| m.body));
    }
}

struct Setup {
    client: aws_sdk_sqs::Client,
    stores: Stores,
    bucket: String,
    table: SleeperTable,
}

async fn setup(leaves: usize) -> Setup {
    let bucket = create_bucket("queues");
    let stores = Stores::default();
    let location = stores
        .resolve(&format!("s3://{bucket}/tables/demo"))
        .unwrap();
    let table = write_demo_table(location, leaves, 300, 3).await.unwrap();
    Setup {
        client: SqsQueue::client().await,
        stores,
        bucket,
        table,
    }
}

impl Setup {
    /// Fresh export and leaf queues, with their DLQs: a query is dead-lettered at once, a leaf
    /// after three receives.
    async fn queues(&self) -> (SqsQueue, SqsQueue, SqsQueue, SqsQueue) {
        let (queue, dead_letters) = queue_pair(&self.client, "export", 1, 30).await;
        let (leaf_queue, leaf_dead_letters) = queue_pair(&self.client, "leaf", 3, 30).await;
        (queue, dead_letters, leaf_queue, leaf_dead_letters)
    }

    fn output(&self) -> sleeper_export::storage::Location {
        self.stores
            .resolve(&format!("s3://{}/exports", self.bucket))
            .unwrap()
    }

    fn planner(&self) -> Planner {
        Planner {
            tables: TableIndex::new(vec![self.table.clone()]),
            output: self.output(),
            export: ExportOptions::default(),
        }
    }

    /// Plans every query on `queue` until a second passes with none.
    async fn plan_until_idle(
        &self,
        queue: &SqsQueue,
        dead_letters: &SqsQueue,
        leaf_queue: &SqsQueue,
    ) -> Vec<Outcome<sleeper_export::queue::planner::PlannedExport>> {
        let config = BulkExportConfig {
            wait: Duration::from_secs(1),
            visibility: Duration::from_secs(30),
            ..BulkExportConfig::default()
        };
        self.planner()
            .run(
                Arc::new(queue.clone()),
                Some(Arc::new(dead_letters.clone())),
                Arc::new(leaf_queue.clone()),
                &config,
                Some(Duration::from_secs(1)),
                std::future::pending(),
            )
            .await
            .unwrap()
    }

    fn runner(&self, idle_seconds: u64) -> Arc<Runner> {
        Arc::new(
            Runner::new(
                TableIndex::new(vec![self.table.clone()]),
                self.output(),
                ExportOptions {
                    parallelism: 1,
                    ..ExportOptions::default()
                },
                BulkExportConfig {
                    wait: Duration::from_secs(1),
                    keepalive: Duration::from_secs(2),
                    visibility: Duration::from_secs(30),
                    failed_visibility: Duration::from_secs(1),
                    ..BulkExportConfig::default()
                },
            )
            .with_concurrency(2)
            .with_idle_exit(Some(Duration::from_secs(idle_seconds))),
        )
    }

    /// One runner over `leaf_queue` until it has been idle for `idle_seconds`.
    async fn run_leaves(
        &self,
        idle_seconds: u64,
        leaf_queue: SqsQueue,
        dead_letters: &SqsQueue,
    ) -> sleeper_export::queue::runner::RunnerReport {
        self.runner(idle_seconds)
            .run(
                Arc::new(leaf_queue),
                Some(Arc::new(dead_letters.clone())),
                std::future::pending(),
            )
            .await
            .unwrap()
    }

    async fn parquet_objects(&self, export_id: &str) -> Vec<String> {
        list_parquet(&self.output(), self.table.id(), export_id).await
    }
}

fn rejections<T>(outcomes: &[Outcome<T>]) -> Vec<String> {
    outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Rejected(e) => Some(e.to_string()),
            _ => None,
        })
        .collect()
}

fn total_rows(table: &SleeperTable) -> u64 {
    // Demo tables: every row of every file falls in exactly one leaf.
    table.files.iter().map(|f| f.number_of_rows).sum::<u64>()
}

#[tokio::test]
async fn submitted_queries_are_planned_and_exported_by_two_runners() {
    let setup = setup(5).await;
    let (queue, dead_letters, leaf_queue, leaf_dead_letters) = setup.queues().await;
    let query = BulkExportQuery {
        table_id: None,
        table_name: Some("demo".into()),
        export_id: Some("e1".into()),
        sql_query: None,
    };
    queue.send_all(vec![query.to_json()]).await.unwrap();

    let outcomes = setup
        .plan_until_idle(&queue, &dead_letters, &leaf_queue)
        .await;
    assert!(
        matches!(outcomes.as_slice(), [Outcome::Done(planned)] if planned.leaves == 5),
        "{outcomes:?}"
    );

    let leaf_queue: Arc<dyn MessageQueue> = Arc::new(leaf_queue);
    let dlq: Arc<dyn MessageQueue> = Arc::new(leaf_dead_letters.clone());
    let first = setup.runner(2).run(
        Arc::clone(&leaf_queue),
        Some(Arc::clone(&dlq)),
        std::future::pending(),
    );
    let second = setup.runner(2).run(
        Arc::clone(&leaf_queue),
        Some(Arc::clone(&dlq)),
        std::future::pending(),
    );
    let (first, second) = tokio::join!(first, second);
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(
        first.done.len() + second.done.len(),
        5,
        "{first:?} {second:?}"
    );
    let rows: u64 = first
        .done
        .iter()
        .chain(&second.done)
        .map(|l| l.rows_written)
        .sum();
    assert_eq!(rows, total_rows(&setup.table));

    let status = ExportRecords::new(&setup.output(), setup.table.id(), "e1")
        .status()
        .await
        .unwrap();
    assert!(status.is_complete(), "{status:?}");
    assert_eq!(status.done.len(), 5);
    assert_eq!(setup.parquet_objects("e1").await.len(), 5);
    assert!(drain(&dead_letters).await.is_empty());
    assert!(drain(&leaf_dead_letters).await.is_empty());
}

#[tokio::test]
async fn bad_messages_go_to_the_dead_letter_queues_and_good_ones_still_run() {
    let setup = setup(2).await;
    let (queue, dead_letters, leaf_queue, leaf_dead_letters) = setup.queues().await;
    let good = BulkExportQuery::of_table(setup.table.id(), "good");
    let unknown = r#"{"tableName":"no-such-table","exportId":"x"}"#;
    queue
        .send_all(vec![
            "this is not JSON".into(),
            unknown.into(),
            good.to_json(),
        ])
        .await
        .unwrap();
    let outcomes = setup
        .plan_until_idle(&queue, &dead_letters, &leaf_queue)
        .await;
    let rejected = rejections(&outcomes);
    assert_eq!(rejected.len(), 2, "{outcomes:?}");
    assert!(
        rejected
            .iter()
            .any(|e| e.contains(r#"Table could not be found with name: "no-such-table""#)),
        "{rejected:?}"
    );
    let mut dead = drain(&dead_letters).await;
    dead.sort();
    let mut expected = vec![unknown.to_owned(), "this is not JSON".to_owned()];
    expected.sort();
    assert_eq!(dead, expected);

    // A leaf query reading outside its table, and one with an unsafe id, are rejected too.
    let planned = drain(&leaf_queue).await;
    assert_eq!(planned.len(), 2);
    let outside = planned[0].replace("tables/demo/data/", "tables/other/data/");
    let unsafe_id = planned[0].replacen("\"exportId\":\"good\"", "\"exportId\":\"../escape\"", 1);
    leaf_queue
        .send_all(vec![
            outside,
            unsafe_id,
            planned[0].clone(),
            planned[1].clone(),
        ])
        .await
        .unwrap();
    let report = setup.run_leaves(2, leaf_queue, &leaf_dead_letters).await;
    assert_eq!(
        (report.done.len(), report.rejected.len()),
        (2, 2),
        "{report:?}"
    );
    assert_eq!(drain(&leaf_dead_letters).await.len(), 2);
    assert!(
        ExportRecords::new(&setup.output(), setup.table.id(), "good")
            .status()
            .await
            .unwrap()
            .is_complete()
    );
}

#[tokio::test]
async fn a_duplicate_delivery_leaves_one_file() {
    let setup = setup(1).await;
    let (leaf_queue, leaf_dead_letters) = queue_pair(&setup.client, "leaf", 3, 30).await;
    let planner = setup.planner();
    let query = BulkExportQuery::of_table(setup.table.id(), "dup");
    let planned = planner.plan(&query.to_json(), &leaf_queue).await.unwrap();
    assert_eq!(planned.leaves, 1);
    let body = drain(&leaf_queue).await.remove(0);
    leaf_queue.send_all(vec![body.clone(), body]).await.unwrap();
    let leaf_queue: Arc<dyn MessageQueue> = Arc::new(leaf_queue);
    let report = setup
        .runner(2)
        .run(
            leaf_queue,
            Some(Arc::new(leaf_dead_letters)),
            std::future::pending(),
        )
        .await
        .unwrap();
    assert_eq!(report.done.len(), 2, "both deliveries ran");
    assert_eq!(report.done[0].file, report.done[1].file);
    assert_eq!(setup.parquet_objects("dup").await.len(), 1);
    let status = ExportRecords::new(&setup.output(), setup.table.id(), "dup")
        .status()
        .await
        .unwrap();
    assert!(status.is_complete(), "{status:?}");
}

async fn in_flight(client: &aws_sdk_sqs::Client, queue: &SqsQueue) -> usize {
    let attributes = client
        .get_queue_attributes()
        .queue_url(queue.url())
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap();
    attributes[&QueueAttributeName::ApproximateNumberOfMessagesNotVisible]
        .parse()
        .unwrap()
}

/// A table of one leaf of three files of 300,000 rows (long enough to stop a runner in the
/// middle of its export), its export planned onto a fresh leaf queue.
struct PlannedBigLeaf {
    bucket: String,
    table: SleeperTable,
    client: aws_sdk_sqs::Client,
    leaf_queue: SqsQueue,
    leaf_dead_letters: SqsQueue,
    output: sleeper_export::storage::Location,
}

async fn planned_big_leaf(
    name: &str,
    seed: u64,
    visibility_seconds: u32,
    export_id: &str,
) -> PlannedBigLeaf {
    let bucket = create_bucket(name);
    let stores = Stores::default();
    let location = stores
        .resolve(&format!("s3://{bucket}/tables/big"))
        .unwrap();
    let table = write_demo_table(location, 1, 300_000, seed).await.unwrap();
    let client = SqsQueue::client().await;
    let (leaf_queue, leaf_dead_letters) = queue_pair(&client, "leaf", 3, visibility_seconds).await;
    let output = stores.resolve(&format!("s3://{bucket}/exports")).unwrap();
    let planner = Planner {
        tables: TableIndex::new(vec![table.clone()]),
        output: output.clone(),
        export: ExportOptions::default(),
    };
    let query = BulkExportQuery::of_table(table.id(), export_id);
    planner.plan(&query.to_json(), &leaf_queue).await.unwrap();
    PlannedBigLeaf {
        bucket,
        table,
        client,
        leaf_queue,
        leaf_dead_letters,
        output,
    }
}

/// Starts the `run` command on the planned leaf and returns once it holds the message.
/// `s3_through`: a proxy the runner reaches S3 (and SQS) through.
async fn runner_holding_the_leaf(
    big: &PlannedBigLeaf,
    extra: &[&str],
    s3_through: Option<&fault_proxy::FaultProxy>,
) -> std::process::Child {
    let runner = std::process::Command::new(env!("CARGO_BIN_EXE_sleeper-export"))
        .envs(s3_through.map(|proxy| ("AWS_ENDPOINT_URL", &proxy.url)))
        .args([
            "run",
            "--table",
            &format!("s3://{}/tables/big", big.bucket),
            "--output",
            &format!("s3://{}/exports", big.bucket),
        ])
        .args([
            "--leaf-queue-url",
            big.leaf_queue.url(),
            "--wait-seconds",
            "1",
        ])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while in_flight(&big.client, &big.leaf_queue).await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the runner never took the message"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    runner
}

/// Sends SIGTERM and waits for the runner to exit.
fn terminated(runner: std::process::Child) -> std::process::Output {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &runner.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    runner.wait_with_output().unwrap()
}

/// Holds back the parts of the runner's upload, so that it is caught with one in progress.
async fn slow_parts() -> fault_proxy::FaultProxy {
    fault_proxy::FaultProxy::slow_parts(&local_s3_address(), Duration::from_secs(2)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_runners_leaf_is_redelivered_and_exported_once() {
    let big = planned_big_leaf("killed", 9, 3, "k").await;
    let proxy = slow_parts().await;
    let mut runner = runner_holding_the_leaf(
        &big,
        &["--visibility-seconds", "3", "--keepalive-seconds", "1"],
        Some(&proxy),
    )
    .await;
    // Killed mid-upload: SIGKILL gives it no chance to abort.
    until_an_upload_is_in_progress(&big.bucket).await;
    runner.kill().unwrap();
    runner.wait().unwrap();
    assert_eq!(multipart_uploads_in_progress(&big.bucket).len(), 1);
    let PlannedBigLeaf {
        bucket,
        table,
        leaf_queue,
        leaf_dead_letters,
        output,
        ..
    } = big;
    let records = ExportRecords::new(&output, table.id(), "k");
    let status = records.status().await.unwrap();
    assert_eq!(
        (status.done.len(), status.pending.len()),
        (0, 1),
        "killed mid-export: {status:?}"
    );
    assert_eq!(status.unfinished_uploads.len(), 1, "{status:?}");
    assert!(
        list_parquet(&output, table.id(), "k").await.is_empty(),
        "a killed export leaves no file"
    );

    let runner = Arc::new(
        Runner::new(
            TableIndex::new(vec![table.clone()]),
            output.clone(),
            ExportOptions::default(),
            BulkExportConfig {
                wait: Duration::from_secs(1),
                visibility: Duration::from_secs(30),
                ..BulkExportConfig::default()
            },
        )
        .with_idle_exit(Some(Duration::from_secs(6))),
    );
    let report = runner
        .run(
            Arc::new(leaf_queue),
            Some(Arc::new(leaf_dead_letters)),
            std::future::pending(),
        )
        .await
        .unwrap();
    assert_eq!(report.done.len(), 1, "{report:?}");
    assert_eq!(report.done[0].rows_written, total_rows(&table));
    assert_eq!(list_parquet(&output, table.id(), "k").await.len(), 1);
    assert_eq!(
        multipart_uploads_in_progress(&bucket),
        Vec::<String>::new(),
        "redoing the leaf aborted the killed runner's upload"
    );
    assert!(records.status().await.unwrap().is_complete());
}

async fn list_parquet(
    output: &sleeper_export::storage::Location,
    table_id: &str,
    export_id: &str,
) -> Vec<String> {
    let prefix = output.child(&format!("{table_id}/{export_id}"));
    let listed = output.list(&prefix).await.unwrap();
    listed
        .into_iter()
        .map(|m| m.location.to_string())
        .filter(|p| p.ends_with(".parquet"))
        .collect()
}

fn sleeper_export(args: &[&str]) -> std::process::Output {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sleeper-export"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[tokio::test]
async fn the_commands_submit_plan_run_and_report_an_export() {
    let setup = setup(3).await;
    let (queue, dead_letters, leaf_queue, leaf_dead_letters) = setup.queues().await;
    let dir = tempfile::tempdir().unwrap();
    let properties = dir.path().join("instance.properties");
    std::fs::write(
        &properties,
        format!(
            "sleeper.bulk.export.queue.url={}\nsleeper.bulk.export.queue.dlq.url={}\n\
             sleeper.bulk.export.leaf.partition.queue.url={}\nsleeper.bulk.export.leaf.partition.queue.dlq.url={}\n\
             sleeper.bulk.export.s3.bucket={}/exports\nsleeper.bulk.export.task.wait.time.seconds=1\n",
            queue.url(),
            dead_letters.url(),
            leaf_queue.url(),
            leaf_dead_letters.url(),
            setup.bucket
        ),
    )
    .unwrap();
    let properties = properties.to_str().unwrap();
    let table = format!("s3://{}/tables/demo", setup.bucket);
    let submitted = sleeper_export(&[
        "submit",
        "--instance-properties",
        properties,
        "--table-name",
        "demo",
        "--sql",
        "SELECT * FROM query_results WHERE key IS NOT NULL",
    ]);
    let export_id = String::from_utf8(submitted.stdout)
        .unwrap()
        .trim()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&export_id).is_ok(), "{export_id}");

    let planned = sleeper_export(&[
        "plan",
        "--instance-properties",
        properties,
        "--table",
        &table,
        "--idle-exit-seconds",
        "1",
    ]);
    assert!(String::from_utf8_lossy(&planned.stdout).contains("planned 1 queries"));
    let status_args = [
        "status",
        "--instance-properties",
        properties,
        "--table-id",
        setup.table.id(),
        "--export-id",
        &export_id,
    ];
    let status_line = || String::from_utf8(sleeper_export(&status_args).stdout).unwrap();
    let status = status_line();
    assert!(
        status.contains("3 leaves, 0 done, 3 pending, 0 failed: not complete")
            && status.contains(
                "each leaf's rows through the SQL: SELECT * FROM query_results WHERE key IS NOT NULL"
            ),
        "{status}"
    );

    let ran = sleeper_export(&[
        "run",
        "--instance-properties",
        properties,
        "--table",
        &table,
        "--concurrency",
        "2",
        "--idle-exit-seconds",
        "1",
    ]);
    let ran = String::from_utf8(ran.stdout).unwrap();
    assert!(
        ran.contains(&format!(
            "exported 3 leaves ({} rows); 0 failed, 0 rejected",
            total_rows(&setup.table)
        )),
        "{ran}"
    );
    let status = status_line();
    assert!(
        status.contains("3 leaves, 3 done, 0 pending, 0 failed: complete (_SUCCESS written)"),
        "{status}"
    );
    let json = sleeper_export(&[status_args.as_slice(), &["--json"]].concat());
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["complete"], true, "{json}");
    assert_eq!(json["successMarker"], true, "{json}");
    assert_eq!(json["done"]["count"], 3, "{json}");
    let rows: u64 = json["done"]["first"]
        .as_array()
        .unwrap()
        .iter()
        .map(|leaf| leaf["rowsWritten"].as_u64().unwrap())
        .sum();
    assert_eq!(rows, total_rows(&setup.table));
    assert_eq!(json["rows"], rows, "{json}");
    // Named leaves are limited, counts never are.
    let one = sleeper_export(&[status_args.as_slice(), &["--json", "--list", "1"]].concat());
    let one: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    assert_eq!(
        (
            &one["done"]["count"],
            one["done"]["first"].as_array().unwrap().len()
        ),
        (&serde_json::json!(3), 1),
        "{one}"
    );
}

#[tokio::test]
async fn a_runner_stopped_with_sigterm_finishes_its_leaf_and_exits() {
    let big = planned_big_leaf("sigterm", 11, 30, "t").await;
    let runner = runner_holding_the_leaf(&big, &[], None).await;
    let PlannedBigLeaf {
        table,
        leaf_queue,
        output,
        ..
    } = big;
    let finished = terminated(runner);
    assert!(
        finished.status.success(),
        "the runner exits cleanly on SIGTERM"
    );
    assert!(
        String::from_utf8_lossy(&finished.stdout).contains("exported 1 leaves"),
        "it finished the leaf it held"
    );
    assert!(ExportRecords::new(&output, table.id(), "t")
        .status()
        .await
        .unwrap()
        .is_complete());
    assert!(
        drain(&leaf_queue).await.is_empty(),
        "its message was deleted"
    );
}

/// Sleeper's runner rejects a leaf query without files ("No input paths supplied"), and its
/// planner sends none: ours writes those leaves' empty files itself, so that a Sleeper runner
/// on the same queue has nothing to dead-letter, and the export still has a file per leaf.
#[tokio::test]
async fn leaves_without_files_are_written_by_the_planner_and_not_queued() {
    let bucket = create_bucket("sparse");
    let stores = Stores::default();
    let table = table_with_empty_leaves(
        stores
            .resolve(&format!("s3://{bucket}/tables/sparse"))
            .unwrap(),
        3,
    )
    .await;
    let setup = Setup {
        client: SqsQueue::client().await,
        stores,
        bucket,
        table,
    };
    let (leaf_queue, leaf_dead_letters) = queue_pair(&setup.client, "leaf", 3, 30).await;
    let planned = setup
        .planner()
        .plan(
            &BulkExportQuery::of_table("sparse", "e").to_json(),
            &leaf_queue,
        )
        .await
        .unwrap();
    assert_eq!((planned.leaves, planned.empty_leaves.len()), (3, 2));
    let records = ExportRecords::new(&setup.output(), "sparse", "e");
    let status = records.status().await.unwrap();
    assert_eq!(
        (status.done.len(), status.pending.len()),
        (2, 1),
        "{status:?}"
    );

    let queued = drain(&leaf_queue).await;
    assert_eq!(queued.len(), 1);
    let query = sleeper_export::query::BulkExportLeafPartitionQuery::from_json(&queued[0], |_| {
        Ok(setup.table.properties.schema.clone())
    })
    .unwrap();
    assert_eq!(
        query.leaf_partition_id,
        setup.table.partitions.leaves()[0].id
    );
    assert!(!query.files.is_empty());
    leaf_queue.send_all(queued).await.unwrap();
    let report = setup.run_leaves(1, leaf_queue, &leaf_dead_letters).await;
    assert_eq!(report.done.len(), 1, "{report:?}");
    let status = records.status().await.unwrap();
    assert!(status.is_complete(), "{status:?}");
    assert_eq!(status.done.len(), 3);
    assert_eq!(setup.parquet_objects("e").await.len(), 3);
    for empty in &planned.empty_leaves {
        let location = setup.stores.resolve(&empty.file).unwrap();
        let bytes = sleeper_export::storage::read_all(location.store.as_ref(), &location.prefix)
            .await
            .unwrap();
        let rows = parquet_bytes_to_batch(bytes);
        assert_eq!(rows.num_rows(), 0);
        assert_eq!(
            rows.schema().fields(),
            setup.table.properties.schema.arrow_schema().fields()
        );
    }
    assert!(drain(&leaf_dead_letters).await.is_empty());
}

/// Whether a leaf query naming `file` passes the trust check of `table`.
fn admits(table: &SleeperTable, file: &str) -> sleeper_export::Result<()> {
    let mut query = sleeper_export::query::split_into_leaf_queries(table, "e").remove(0);
    query.files = vec![file.to_owned()];
    sleeper_export::queue::trust::check_leaf_query(&query, table)
}

/// Files are judged on where they resolve to, after every decoding a URL goes through: any way
/// of writing a file of the table is accepted, and no way of writing one outside it is.
#[tokio::test]
async fn leaf_queries_read_only_their_tables_files_however_they_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let table_dir = dir.path().join("srv/t");
    let table = table_with_empty_leaves(local(&table_dir), 2).await;
    let file = table.files[0].filename.clone();
    let path = file.strip_prefix("file://").unwrap().to_owned();
    let (data, name) = path.rsplit_once('/').unwrap();
    let secret_dir = dir.path().join("srv/secret");
    std::fs::create_dir_all(&secret_dir).unwrap();
    std::fs::copy(&path, secret_dir.join("secret.parquet")).unwrap();
    let root = table_dir.to_str().unwrap();
    for inside in [
        file.clone(),
        path.clone(),
        format!("file://{data}/./{name}"),
        format!("{data}/../{}/{name}", data.rsplit('/').next().unwrap()),
        format!(
            "file://{data}/%2e%2e/{}/{name}",
            data.rsplit('/').next().unwrap()
        ),
        path.replace('/', "//"),
    ] {
        admits(&table, &inside).unwrap_or_else(|e| panic!("{inside}: {e}"));
    }
    for outside in [
        format!("file://{root}/data/%2e%2e/%2e%2e/secret/secret.parquet"),
        format!("file://{root}/data/%2E%2E/%2E%2E/secret/secret.parquet"),
        format!("file://{root}/data/.%2e/.%2E/secret/secret.parquet"),
        format!("file://{root}/data/..%2F..%2Fsecret%2Fsecret.parquet"),
        format!("file://{root}/data/..\\..\\secret\\secret.parquet"),
        format!("file://{root}/data/.\t./.\n./secret/secret.parquet"),
        format!("{root}/data/../../secret/secret.parquet"),
        format!("{root}/data/partition_x/../../../secret/secret.parquet"),
        format!("{root}/database/x.parquet"),
        format!("{root}/data"),
        format!("{root}/table.properties"),
        format!("file://otherhost{path}"),
        format!("s3://bucket{path}"),
        format!("http://localhost{path}"),
        "relative/data/x.parquet".to_owned(),
    ] {
        let error = admits(&table, &outside)
            .err()
            .unwrap_or_else(|| panic!("{outside:?} was admitted"));
        let message = error.to_string();
        assert!(
            matches!(error, sleeper_export::Error::Untrusted(_))
                && message.contains("under table sparse's data location")
                && !message.contains("missing")
                && !message.contains("not readable"),
            "{outside:?}: {message}"
        );
    }
}

#[tokio::test]
async fn s3_leaf_queries_read_only_their_tables_files_however_they_are_written() {
    let setup = setup(1).await;
    let file = setup.table.files[0].filename.clone();
    let key = file
        .strip_prefix(&format!("s3://{}/", setup.bucket))
        .unwrap();
    let bucket = &setup.bucket;
    for inside in [
        file.clone(),
        format!("s3a://{bucket}/{key}"),
        format!("s3://{bucket}//{key}"),
    ] {
        admits(&setup.table, &inside).unwrap_or_else(|e| panic!("{inside}: {e}"));
    }
    for outside in [
        format!("s3://other-{bucket}/{key}"),
        format!("s3://{bucket}/tables/demo/data/../../secret.parquet"),
        format!("s3://{bucket}/tables/demo/data%2F..%2F..%2Fsecret.parquet"),
        format!("s3://{bucket}/tables/demo/database/x.parquet"),
        format!("s3://{bucket}/tables/other/data/x.parquet"),
        "file:///tables/demo/data/x.parquet".to_owned(),
    ] {
        let error = admits(&setup.table, &outside)
            .err()
            .unwrap_or_else(|| panic!("{outside:?} was admitted"));
        assert!(
            matches!(error, sleeper_export::Error::Untrusted(_)),
            "{outside}: {error}"
        );
    }
}

async fn read_object(
    location: &sleeper_export::storage::Location,
    relative: &str,
) -> Option<String> {
    use object_store::ObjectStoreExt;
    match location.store.get(&location.child(relative)).await {
        Ok(got) => Some(String::from_utf8(got.bytes().await.unwrap().to_vec()).unwrap()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("{e}"),
    }
}

/// SQS delivers at least once, and a planner that dies between sending the leaf queries and
/// deleting the query gets it again: the second pass sends the same leaf queries.
#[tokio::test]
async fn an_export_query_delivered_twice_exports_each_leaf_once() {
    let setup = setup(4).await;
    let (queue, dead_letters, leaf_queue, leaf_dead_letters) = setup.queues().await;
    let query = BulkExportQuery::of_table(setup.table.id(), "twice");
    queue
        .send_all(vec![query.to_json(), query.to_json()])
        .await
        .unwrap();
    let outcomes = setup
        .plan_until_idle(&queue, &dead_letters, &leaf_queue)
        .await;
    assert!(
        matches!(
            outcomes.as_slice(),
            [Outcome::Done(first), Outcome::Done(second)]
                if first.queued == 4 && second.queued == 4
        ),
        "{outcomes:?}"
    );
    let folder = setup
        .output()
        .sub_location(&format!("{}/twice", setup.table.id()));
    assert_eq!(read_object(&folder, "_SUCCESS").await, None);

    let leaf_queue: Arc<dyn MessageQueue> = Arc::new(leaf_queue);
    let dlq: Arc<dyn MessageQueue> = Arc::new(leaf_dead_letters.clone());
    let (first, second) = tokio::join!(
        setup.runner(2).run(
            Arc::clone(&leaf_queue),
            Some(Arc::clone(&dlq)),
            std::future::pending()
        ),
        setup.runner(2).run(
            Arc::clone(&leaf_queue),
            Some(Arc::clone(&dlq)),
            std::future::pending()
        ),
    );
    let done: Vec<_> = first
        .unwrap()
        .done
        .into_iter()
        .chain(second.unwrap().done)
        .collect();
    assert_eq!(done.len(), 8, "every delivery ran");
    let files: std::collections::BTreeSet<&str> = done.iter().map(|d| d.file.as_str()).collect();
    assert_eq!(files.len(), 4, "both passes named the same files");
    assert_eq!(setup.parquet_objects("twice").await.len(), 4);

    let records = ExportRecords::new(&setup.output(), setup.table.id(), "twice");
    let status = records.status().await.unwrap();
    assert!(status.is_complete() && status.success_marker, "{status:?}");
    let success: serde_json::Value =
        serde_json::from_str(&read_object(&folder, "_SUCCESS").await.unwrap()).unwrap();
    assert_eq!(success["files"], 4);
    assert_eq!(success["rows"], total_rows(&setup.table));

    // A third delivery, after the export is complete, finds nothing to do.
    let (leaf_queue, _) = queue_pair(&setup.client, "leaf", 3, 30).await;
    let again = setup
        .planner()
        .plan(&query.to_json(), &leaf_queue)
        .await
        .unwrap();
    assert_eq!((again.queued, again.already_done.len()), (0, 4));
    assert!(drain(&leaf_queue).await.is_empty());

    // The folder reads as a dataset of exactly the exported rows: everything else is named `_…`.
    let ctx = sleeper_export::sql::sleeper_session(
        setup.stores.clone(),
        datafusion::prelude::SessionConfig::new(),
    )
    .unwrap();
    let rows = ctx
        .read_parquet(
            format!("{}/", folder.url),
            datafusion::prelude::ParquetReadOptions::default(),
        )
        .await
        .unwrap()
        .count()
        .await
        .unwrap();
    assert_eq!(rows as u64, total_rows(&setup.table));
    let manifest_files: std::collections::BTreeSet<String> = records
        .manifest()
        .await
        .unwrap()
        .unwrap()
        .sub_exports
        .iter()
        .map(|s| s.file.clone())
        .collect();
    for object in folder.list(&folder.prefix).await.unwrap() {
        let relative = object.location.as_ref()[folder.prefix.as_ref().len() + 1..].to_owned();
        assert!(
            relative.starts_with('_') || manifest_files.contains(&folder.url_of(&object.location)),
            "{relative} is neither data nor named as a record"
        );
    }

    // A stray object makes the export incomplete, and status names it.
    use object_store::ObjectStoreExt;
    let stray = folder.child("stray.parquet");
    folder.store.put(&stray, "x".into()).await.unwrap();
    let status = records.status().await.unwrap();
    assert!(!status.is_complete());
    assert_eq!(status.unexpected.first, vec![folder.url_of(&stray)]);
}

/// A second planning pass over a changed table would mix two states in one export: refused
/// while the export is incomplete, a no-op once it is complete.
#[tokio::test]
async fn an_export_replanned_after_the_table_changed_is_refused_until_complete() {
    let setup = setup(2).await;
    let (leaf_queue, leaf_dead_letters) = queue_pair(&setup.client, "leaf", 3, 30).await;
    let query = BulkExportQuery::of_table(setup.table.id(), "moved");
    setup
        .planner()
        .plan(&query.to_json(), &leaf_queue)
        .await
        .unwrap();
    // The same table (the same id) with other files.
    let changed = write_demo_table(
        setup
            .stores
            .resolve(&format!("s3://{}/tables/changed", setup.bucket))
            .unwrap(),
        2,
        300,
        4,
    )
    .await
    .unwrap();
    assert_eq!(changed.id(), setup.table.id());
    let changed_planner = Planner {
        tables: TableIndex::new(vec![changed]),
        ..setup.planner()
    };
    let error = changed_planner
        .plan(&query.to_json(), &leaf_queue)
        .await
        .unwrap_err();
    assert!(error.is_bad_message(), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("was planned from another state of the table")
            && error.to_string().contains("use a new export id"),
        "{error}"
    );

    let report = setup.run_leaves(1, leaf_queue, &leaf_dead_letters).await;
    assert_eq!(
        report.done.len(),
        2,
        "the first pass's leaves ran once each"
    );
    let (leaf_queue, _) = queue_pair(&setup.client, "leaf", 3, 30).await;
    let replanned = changed_planner
        .plan(&query.to_json(), &leaf_queue)
        .await
        .unwrap();
    assert_eq!((replanned.queued, replanned.already_done.len()), (0, 2));
    assert_eq!(setup.parquet_objects("moved").await.len(), 2);
}

/// Waits until the runner writing the big leaf has a multipart upload in progress.
async fn until_an_upload_is_in_progress(bucket: &str) {
    let started = std::time::Instant::now();
    while multipart_uploads_in_progress(bucket).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no multipart upload started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runner_stopped_past_its_grace_period_aborts_its_upload_and_releases_its_leaf() {
    let big = planned_big_leaf("grace", 12, 30, "g").await;
    let proxy = slow_parts().await;
    let runner = runner_holding_the_leaf(&big, &["--stop-grace-seconds", "0"], Some(&proxy)).await;
    until_an_upload_is_in_progress(&big.bucket).await;
    let finished = terminated(runner);
    assert!(finished.status.success());
    let stdout = String::from_utf8_lossy(&finished.stdout);
    assert!(
        stdout.contains("exported 0 leaves (0 rows); 0 failed, 0 rejected, 1 interrupted"),
        "{stdout}"
    );
    assert_eq!(
        multipart_uploads_in_progress(&big.bucket),
        Vec::<String>::new()
    );
    assert!(list_parquet(&big.output, big.table.id(), "g")
        .await
        .is_empty());
    assert_eq!(
        drain(&big.leaf_queue).await.len(),
        1,
        "the message is offered again at once"
    );
}

#[tokio::test]
async fn a_runner_logs_json_with_bounded_messages_and_no_credentials() {
    let setup = setup(1).await;
    let (leaf_queue, leaf_dead_letters) = queue_pair(&setup.client, "leaf", 3, 30).await;
    let hostile = format!(
        "{{\"tableId\":\"{}\",\"junk\":\"{}\"}}",
        setup.table.id(),
        "x".repeat(200_000)
    );
    // A well-formed leaf query whose SQL names a table of 100,000 characters, which the
    // reason it is rejected for quotes.
    let mut long_sql: serde_json::Value = serde_json::from_str(
        &sleeper_export::query::split_into_leaf_queries(&setup.table, "e")
            .remove(0)
            .to_json(&setup.table.properties.schema, false),
    )
    .unwrap();
    long_sql["sqlQuery"] = format!("SELECT * FROM t{}", "y".repeat(100_000)).into();
    let long_sql = long_sql.to_string();
    leaf_queue
        .send_all(vec![hostile.clone(), long_sql.clone()])
        .await
        .unwrap();
    let secret = format!("secret-{}", uuid::Uuid::new_v4().simple());
    let ran = std::process::Command::new(env!("CARGO_BIN_EXE_sleeper-export"))
        .args([
            "run",
            "--log-format",
            "json",
            "--table",
            &format!("s3://{}/tables/demo", setup.bucket),
            "--output",
            &format!("s3://{}/exports", setup.bucket),
            "--leaf-queue-url",
            leaf_queue.url(),
            "--leaf-queue-dlq-url",
            leaf_dead_letters.url(),
            "--wait-seconds",
            "1",
            "--idle-exit-seconds",
            "1",
        ])
        .env("AWS_SECRET_ACCESS_KEY", &secret)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(ran.status.success());
    let stderr = String::from_utf8(ran.stderr).unwrap();
    assert!(!stderr.contains(&secret), "a credential was logged");
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let rejected: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("rejected message"))
        })
        .collect();
    assert_eq!(rejected.len(), 2, "{stderr:.2000}");
    for event in &rejected {
        assert_eq!(event["level"], "ERROR");
        assert!(event.to_string().len() < 2_000, "{event}");
    }
    let mut sizes: Vec<&serde_json::Value> = rejected.iter().map(|e| &e["body_bytes"]).collect();
    sizes.sort_by_key(|size| size.as_u64());
    assert_eq!(sizes, [long_sql.len(), hostile.len()]);
    assert!(
        rejected.iter().any(|e| e["message"]
            .as_str()
            .unwrap()
            .contains("User SQL query failed")),
        "{rejected:?}"
    );
    assert!(stderr.len() < hostile.len(), "a body was logged whole");
    let mut dead = drain(&leaf_dead_letters).await;
    dead.sort_by_key(String::len);
    assert_eq!(dead, vec![long_sql, hostile]);
}

/// Sleeper's SQL filter over the real queues: a query's SQL reaches every leaf query, each
/// leaf exports what it returns, and the export completes; SQL that cannot run (checked by the
/// planner, again by the runner for leaf queries sent by anyone else, and when it runs) is
/// dead-lettered with nothing written, while good messages beside it still run.
#[tokio::test]
async fn sql_exports_run_over_the_queues_and_bad_sql_is_dead_lettered_with_nothing_written() {
    let setup = setup(3).await;
    let (queue, dead_letters, leaf_queue, leaf_dead_letters) = setup.queues().await;
    let sql = "SELECT key, value FROM query_results WHERE value LIKE 'a%'";
    let good = BulkExportQuery::of_table(setup.table.id(), "filtered").with_sql(Some(sql.into()));
    let hostile = [
        "SELECT * FROM query_results a, query_results b, query_results c",
        "SELECT * FROM range(1000000000000)",
        "SELECT * FROM 's3://elsewhere/secret.parquet'",
        "SELECT 1; SELECT 2",
        "DROP TABLE query_results",
    ];
    let mut bodies: Vec<String> = hostile
        .iter()
        .enumerate()
        .map(|(i, sql)| {
            BulkExportQuery::of_table(setup.table.id(), format!("bad-{i}"))
                .with_sql(Some((*sql).into()))
                .to_json()
        })
        .collect();
    bodies.push(good.to_json());
    queue.send_all(bodies).await.unwrap();
    let outcomes = setup
        .plan_until_idle(&queue, &dead_letters, &leaf_queue)
        .await;
    let rejected = rejections(&outcomes);
    assert_eq!(rejected.len(), hostile.len(), "{outcomes:?}");
    assert!(
        rejected
            .iter()
            .all(|e| e.starts_with("User SQL query failed: ")),
        "{rejected:?}"
    );
    assert_eq!(drain(&dead_letters).await.len(), hostile.len());
    for i in 0..hostile.len() {
        let folder = setup
            .output()
            .child(&format!("{}/bad-{i}", setup.table.id()));
        assert!(setup.output().list(&folder).await.unwrap().is_empty());
    }

    // Leaf queries carry the SQL; ones carrying bad SQL, or an unknown field, are dead-lettered
    // by the runner, and the good ones are exported.
    let planned = drain(&leaf_queue).await;
    assert_eq!(planned.len(), 3);
    assert!(planned
        .iter()
        .all(|body| body.contains(r#""sqlQuery":"SELECT key, value"#)));
    let with_sql = |sql: &str| {
        let mut leaf: serde_json::Value = serde_json::from_str(&planned[0]).unwrap();
        leaf["exportId"] = "bad-leaf".into();
        leaf["sqlQuery"] = sql.into();
        leaf.to_string()
    };
    let mut unknown: serde_json::Value = serde_json::from_str(&planned[1]).unwrap();
    unknown["exportId"] = "bad-leaf".into();
    unknown["rowFilter"] = "value > 'b'".into();
    let mut leaves = vec![
        with_sql("SELECT * FROM query_results a CROSS JOIN query_results b"),
        with_sql("SELECT repeat(value, 1000000000) FROM query_results"),
        unknown.to_string(),
    ];
    leaves.extend(planned.iter().cloned());
    leaf_queue.send_all(leaves).await.unwrap();
    let report = setup.run_leaves(2, leaf_queue, &leaf_dead_letters).await;
    assert_eq!(
        (
            report.done.len(),
            report.rejected.len(),
            report.failed.len()
        ),
        (3, 3, 0),
        "{report:?}"
    );
    assert_eq!(drain(&leaf_dead_letters).await.len(), 3);
    // Of the leaf refused as it ran, only the reason is left, for `status`; no data.
    let bad_folder = setup
        .output()
        .child(&format!("{}/bad-leaf", setup.table.id()));
    let left = setup.output().list(&bad_folder).await.unwrap();
    assert!(
        left.len() == 1 && left[0].location.as_ref().ends_with(".failed.json"),
        "{left:?}"
    );
    let output = setup.output();
    let reason = sleeper_export::storage::read_all(output.store.as_ref(), &left[0].location)
        .await
        .unwrap();
    let reason = String::from_utf8_lossy(&reason);
    assert!(reason.contains("repeat would make"), "{reason}");

    let records = ExportRecords::new(&setup.output(), setup.table.id(), "filtered");
    let status = records.status().await.unwrap();
    assert!(status.is_complete() && status.success_marker, "{status:?}");
    assert_eq!(status.manifest.sql_query.as_deref(), Some(sql));
    let mut rows = 0;
    for leaf in &report.done {
        let location = setup.stores.resolve(&leaf.file).unwrap();
        let bytes = sleeper_export::storage::read_all(location.store.as_ref(), &location.prefix)
            .await
            .unwrap();
        let batch = parquet_bytes_to_batch(bytes);
        assert_eq!(batch.schema().fields().len(), 2);
        let values = datafusion::arrow::compute::cast(
            batch.column(1),
            &datafusion::arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let values = datafusion::arrow::array::AsArray::as_string::<i32>(&values);
        let values: Vec<&str> = values.iter().map(|v| v.unwrap_or_default()).collect();
        assert!(values.iter().all(|v| v.starts_with('a')), "{values:?}");
        rows += batch.num_rows() as u64;
        assert!(leaf.rows_read >= leaf.rows_written);
    }
    assert!(rows > 0 && rows < total_rows(&setup.table), "{rows}");
    let success: serde_json::Value = serde_json::from_str(
        &read_object(&records_folder(&setup, "filtered"), "_SUCCESS")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(success["rows"], rows);
}

fn records_folder(setup: &Setup, export_id: &str) -> sleeper_export::storage::Location {
    setup
        .output()
        .sub_location(&format!("{}/{export_id}", setup.table.id()))
}
