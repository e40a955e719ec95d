//! Reading and planning the state of a large table (run: `cargo bench --bench state_load`):
//! 100,000 partitions (50,000 leaves) and 1,000,000 file references (20 per leaf), the size
//! issue 25 asks for (`STATE_LOAD_LEAVES=5000` gives issue 6's 100,000 references).
//!
//! It times each step, with the peak RSS of the process during it (everything the steps before
//! left in memory included):
//! - opening the table from its Arrow snapshots on local disk (read, decode, tree, index);
//! - folding the same state from a transaction log alone: an `INITIALISE_PARTITIONS` and 100
//!   `ADD_FILES` transactions of 1,000 files each, parsed from their JSON bodies;
//! - splitting the table into its leaf queries;
//! - planning an export of it (`Planner::plan`: the split, the manifest written once, every
//!   leaf query sent) into the in-process queue, with the manifest's size;
//! - the `status` of that export, every leaf pending (the memory it adds to the process);
//! - every leaf recorded done as a runner records it, then the status that writes `_SUCCESS`.
//!
//! With `STATE_LOAD_SQS=1` the export is planned into a fresh queue of the local SQS server and
//! its manifest written to a fresh bucket of the local S3 server (moto:
//! `eval "$(scripts/local-aws.sh start)"` first; `AWS_ENDPOINT_URL_SQS` sends the queue's
//! requests to another server), and the last step, every leaf done, is left out. moto's SQS
//! slows as its queue fills, so at 100,000 leaves the queue goes to ElasticMQ: the classpath of
//! `org.elasticmq:elasticmq-server_2.13:1.6.14` (`mvn dependency:build-classpath` of a pom
//! naming it), run as `java -Dconfig.file=emq.conf -cp … org.elasticmq.server.Main` with
//! `rest-sqs { bind-hostname = "127.0.0.1", bind-port = 9324 }` in `emq.conf`, and
//! `AWS_ENDPOINT_URL_SQS=http://127.0.0.1:9324`.
//!
//! DynamoDB and S3 round trips come on top of this in a live instance: the log is read in pages
//! of up to 1 MB, and bodies over 350 KB are one S3 GET each.

mod common;

use common::{peak_rss_mib, peak_rss_reset};
use std::time::Instant;

use futures::StreamExt;
use object_store::ObjectStoreExt;
use sleeper_export::leaf::ExportOptions;
use sleeper_export::model::PartitionTree;
use sleeper_export::model::{
    Field, FileReference, KeyValue, PrimitiveType, Schema, StateFile, TableProperties,
};
use sleeper_export::plan::sink::WrittenLeaf;
use sleeper_export::query::{split_into_leaf_queries, BulkExportQuery};
use sleeper_export::queue::local::LocalQueue;
use sleeper_export::queue::manifest::ExportRecords;
use sleeper_export::queue::planner::Planner;
use sleeper_export::queue::sqs::SqsQueue;
use sleeper_export::queue::MessageQueue;
use sleeper_export::queue::TableIndex;
use sleeper_export::statestore::state::TableState;
use sleeper_export::statestore::transaction::Transaction;
use sleeper_export::statestore::{snapshot, SNAPSHOTS_DIR};
use sleeper_export::storage::Stores;
use sleeper_export::table::SleeperTable;

const FILES_PER_LEAF: usize = 20;

fn main() {
    common::allocator::limit_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let leaves = common::env_number("STATE_LOAD_LEAVES", 50_000) as i64;
    runtime.block_on(async {
        let schema = Schema::new(
            vec![Field::primitive("id", PrimitiveType::Long)],
            vec![],
            vec![Field::primitive("value", PrimitiveType::String)],
        )
        .unwrap();
        let splits: Vec<KeyValue> = (1..leaves).map(|i| KeyValue::Long(i * 1_000)).collect();
        let tree = PartitionTree::from_split_points("big", &schema, &splits).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let stores = Stores::default();
        let location = stores.resolve(dir.path().to_str().unwrap()).unwrap();
        let references: Vec<FileReference> = tree
            .leaves()
            .iter()
            .flat_map(|leaf| {
                let location = location.clone();
                (0..FILES_PER_LEAF).map(move |n| FileReference {
                    filename: format!(
                        "{}/data/partition_{}/{n:04}-{}.parquet",
                        location.url, leaf.id, uuid::Uuid::new_v4()
                    ),
                    partition_id: leaf.id.clone(),
                    number_of_rows: 1_000,
                    count_approximate: false,
                    only_contains_data_for_this_partition: true,
                    job_id: None,
                })
            })
            .collect();
        let properties = TableProperties::new("big", "big", schema.clone());
        SleeperTable::write_properties(&location, &properties).await.unwrap();
        for (kind, bytes) in [
            ("files", snapshot::write_files(&StateFile::group(references.clone()), 0).unwrap()),
            ("partitions", snapshot::write_partitions(tree.all(), &schema).unwrap()),
        ] {
            let path = location.child(&format!("{SNAPSHOTS_DIR}/1-{kind}.arrow"));
            println!("{kind} snapshot: {:.1} MiB", bytes.len() as f64 / 1048576.0);
            location.store.put(&path, bytes.into()).await.unwrap();
        }
        let log: Vec<(String, String)> = std::iter::once((
            "INITIALISE_PARTITIONS".to_owned(),
            Transaction::InitialisePartitions(tree.all().to_vec()).to_json(&schema),
        ))
        .chain(references.chunks(1_000).map(|chunk| {
            let files = StateFile::group(chunk.iter().cloned());
            ("ADD_FILES".to_owned(), Transaction::AddFiles(files).to_json(&schema))
        }))
        .collect();
        let log_bytes: usize = log.iter().map(|(_, body)| body.len()).sum();
        println!(
            "{} partitions, {} leaves, {} file references; the log: {} transactions, {:.1} MiB of JSON",
            tree.all().len(),
            tree.leaves().len(),
            references.len(),
            log.len(),
            log_bytes as f64 / 1048576.0
        );
        println!("peak RSS before reading: {:.0} MiB", peak_rss_mib());

        peak_rss_reset();
        let started = Instant::now();
        let table = SleeperTable::open(dir.path().to_str().unwrap(), &stores).await.unwrap();
        println!(
            "open from snapshots:       {:>8.3} s   peak RSS {:.0} MiB",
            started.elapsed().as_secs_f64(),
            peak_rss_mib()
        );
        assert_eq!(table.files.len(), references.len());

        peak_rss_reset();
        let started = Instant::now();
        let mut state = TableState::default();
        for (kind, body) in &log {
            state.apply(Transaction::from_json(kind, body, &schema).unwrap()).unwrap();
        }
        let folded: usize = state.files().iter().map(|f| f.references.len()).sum();
        println!(
            "fold the log alone:        {:>8.3} s   peak RSS {:.0} MiB",
            started.elapsed().as_secs_f64(),
            peak_rss_mib()
        );
        assert_eq!(folded, references.len());

        peak_rss_reset();
        let started = Instant::now();
        let queries = split_into_leaf_queries(&table, "bench");
        println!(
            "split into leaf queries:   {:>8.3} s   peak RSS {:.0} MiB ({} queries)",
            started.elapsed().as_secs_f64(),
            peak_rss_mib(),
            queries.len()
        );

        let local_output = tempfile::tempdir().unwrap();
        let over_sqs = std::env::var("STATE_LOAD_SQS").is_ok();
        let (output, queue): (_, Box<dyn MessageQueue>) = if over_sqs {
            let bucket = sleeper_export::tablegen::local_s3::create_bucket("state-load");
            let client = SqsQueue::client().await;
            let queue = common::sqs_queue(&client, "state-load").await;
            (format!("s3://{bucket}"), Box::new(queue))
        } else {
            let output = local_output.path().to_str().unwrap().to_owned();
            (output, Box::new(LocalQueue::default()))
        };
        let planner = Planner {
            tables: TableIndex::new(vec![table.clone()]),
            output: stores.resolve(&output).unwrap(),
            export: ExportOptions::default(),
        };
        peak_rss_reset();
        let started = Instant::now();
        let planned = planner
            .plan(&BulkExportQuery::of_table(table.id(), "bench").to_json(), queue.as_ref())
            .await
            .unwrap();
        let manifest_path = planner.output.child(&format!("{}/bench/_manifest.json", table.id()));
        let manifest = planner.output.store.head(&manifest_path).await.unwrap().size;
        println!(
            "plan and send{}: {:>8.3} s   peak RSS {:.0} MiB ({} leaf queries sent, manifest {:.1} MiB)",
            if over_sqs { " (local S3 + SQS)" } else { "            " },
            started.elapsed().as_secs_f64(),
            peak_rss_mib(),
            planned.queued,
            manifest as f64 / 1048576.0
        );

        drop(queue);
        peak_rss_reset();
        let before = peak_rss_mib();
        let started = Instant::now();
        let status = ExportRecords::new(&planner.output, table.id(), "bench")
            .status()
            .await
            .unwrap();
        println!(
            "status (every leaf pending): {:>6.3} s   peak RSS {:.0} MiB, {:.0} MiB above before ({} pending)",
            started.elapsed().as_secs_f64(),
            peak_rss_mib(),
            peak_rss_mib() - before,
            status.pending.len()
        );
        assert_eq!(status.pending.len(), planned.queued);
        if over_sqs {
            // Four requests a leaf at moto's tens of milliseconds each: hours at 100,000.
            return;
        }

        // Every leaf recorded done as a runner records it (an empty file, its record, its count
        // token), then the status again: now the listing names 2 objects a leaf.
        let records = ExportRecords::new(&planner.output, table.id(), "bench");
        let manifest = records.manifest().await.unwrap().unwrap();
        futures::stream::iter(&manifest.sub_exports)
            .map(|sub_export| {
                let (records, store) = (&records, &planner.output.store);
                let path = records.layout().data_file(&sub_export.sub_export_id);
                async move {
                    store.put(&path, Vec::new().into()).await.unwrap();
                    let done = WrittenLeaf {
                        leaf_partition_id: sub_export.leaf_partition_id.clone(),
                        sub_export_id: sub_export.sub_export_id.clone(),
                        file: sub_export.file.clone(),
                        rows_read: 0,
                        rows_written: 0,
                        bytes: 0,
                        crc32c: String::new(),
                        age_off_clock_millis: None,
                    };
                    records.record_completion(&done, 0).await.unwrap();
                }
            })
            .buffer_unordered(64)
            .collect::<()>()
            .await;
        drop(manifest);
        peak_rss_reset();
        let before = peak_rss_mib();
        let started = Instant::now();
        let status = records.mark_if_complete().await.unwrap();
        println!(
            "status (every leaf done, _SUCCESS written): {:>6.3} s   peak RSS {:.0} MiB, {:.0} MiB above before ({} done)",
            started.elapsed().as_secs_f64(),
            peak_rss_mib(),
            peak_rss_mib() - before,
            status.done.len()
        );
        assert!(status.is_complete() && status.success_marker, "{status:?}");
    });
}
