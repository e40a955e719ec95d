//! A live Sleeper instance on the local AWS server (S3 + DynamoDB) that `scripts/test.sh` starts:
//! properties in the config bucket, the table index and transaction logs in DynamoDB, snapshots
//! and large transaction bodies in the data bucket.

use std::collections::HashMap;

use crate::common::*;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_dynamodb::Client;
use object_store::ObjectStoreExt;
use sleeper_export::export::{export_table, ExportSummary};
use sleeper_export::instance::{config_bucket, legacy_config_bucket, Instance, TableEntry};
use sleeper_export::leaf::ExportOptions;
use sleeper_export::model::StateVersion;
use sleeper_export::model::{FileReference, JavaProperties, KeyOrder, Partition, StateFile};
use sleeper_export::query::BulkExportQuery;
use sleeper_export::queue::local::LocalQueue;
use sleeper_export::queue::manifest::ExportRecords;
use sleeper_export::queue::planner::Planner;
use sleeper_export::queue::TableIndex;
use sleeper_export::statestore::snapshot;
use sleeper_export::statestore::transaction::{
    AssignJobIdRequest, ReplaceJob, SplitRequest, Transaction,
};
use sleeper_export::statestore::transaction_log::{LogTables, TransactionLogStateStore};
use sleeper_export::statestore::StateStore;
use sleeper_export::storage::{Location, Stores};
use sleeper_export::table::SleeperTable;
use sleeper_export::tablegen::write_demo_table;

/// The DynamoDB tables of one test instance, named as Sleeper's properties name them.
struct LocalInstance {
    id: String,
    /// Its config bucket, named as Sleeper 0.35 names it (or as before 0.35).
    config_bucket: String,
    dynamo: Client,
    data: Location,
    tables: HashMap<&'static str, String>,
}

/// The AWS account the local server's STS names (moto's is 123456789012).
async fn account() -> String {
    aws_sdk_sts::Client::new(
        &aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await,
    )
    .get_caller_identity()
    .send()
    .await
    .unwrap()
    .account
    .unwrap()
}

/// How the test names an instance's config bucket.
#[derive(Clone, Copy)]
enum Naming {
    /// Sleeper 0.35 and later: `sleeper-<id>-config-<account>`.
    WithAccount,
    /// Before 0.35: `sleeper-<id>-config`.
    Legacy,
}

const NAME_INDEX: &str = "sleeper.tables.name.index.dynamo.table";
const FILES_LOG: &str = "sleeper.statestore.transactionlog.dynamo.file.log.table";
const PARTITIONS_LOG: &str = "sleeper.statestore.transactionlog.dynamo.partition.log.table";
const LATEST_SNAPSHOTS: &str = "sleeper.statestore.transactionlog.dynamo.latest.snapshots.table";

impl LocalInstance {
    async fn create(stores: &Stores) -> LocalInstance {
        Self::create_with(stores, Naming::WithAccount, JavaProperties::default()).await
    }

    /// An instance with these instance properties (table defaults) besides its own.
    async fn create_with(
        stores: &Stores,
        naming: Naming,
        mut properties: JavaProperties,
    ) -> LocalInstance {
        // Upper case and a dot, which Sleeper's bucket name lower-cases and makes a dash.
        let id = format!("Test.{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let config_bucket = match naming {
            Naming::WithAccount => config_bucket(&id, &account().await),
            Naming::Legacy => legacy_config_bucket(&id),
        };
        create_named_bucket(&config_bucket);
        let data_bucket = create_bucket("data");
        let dynamo =
            Client::new(&aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await);
        let mut tables = HashMap::new();
        for (property, hash, range) in [
            (NAME_INDEX, "TableName", None),
            (FILES_LOG, "TABLE_ID", Some("TRANSACTION_NUMBER")),
            (PARTITIONS_LOG, "TABLE_ID", Some("TRANSACTION_NUMBER")),
            (LATEST_SNAPSHOTS, "TABLE_ID", None),
        ] {
            let name = format!(
                "sleeper-{}-{}",
                id.replace('.', "-"),
                property.trim_start_matches("sleeper.").replace('.', "-")
            );
            let attribute = |name: &str, kind| {
                AttributeDefinition::builder()
                    .attribute_name(name)
                    .attribute_type(kind)
                    .build()
                    .unwrap()
            };
            let key = |name: &str, kind| {
                KeySchemaElement::builder()
                    .attribute_name(name)
                    .key_type(kind)
                    .build()
                    .unwrap()
            };
            let mut request = dynamo
                .create_table()
                .table_name(&name)
                .billing_mode(BillingMode::PayPerRequest)
                .attribute_definitions(attribute(hash, ScalarAttributeType::S))
                .key_schema(key(hash, KeyType::Hash));
            if let Some(range) = range {
                request = request
                    .attribute_definitions(attribute(range, ScalarAttributeType::N))
                    .key_schema(key(range, KeyType::Range));
            }
            request.send().await.unwrap();
            tables.insert(property, name);
        }
        properties.set("sleeper.id", &id);
        properties.set("sleeper.data.bucket", &data_bucket);
        for (property, name) in &tables {
            properties.set(*property, name);
        }
        let config = stores.resolve(&format!("s3://{config_bucket}")).unwrap();
        config
            .store
            .put(
                &config.child("instance.properties"),
                properties.to_text().into(),
            )
            .await
            .unwrap();
        LocalInstance {
            id,
            config_bucket,
            dynamo,
            data: stores.resolve(&format!("s3://{data_bucket}")).unwrap(),
            tables,
        }
    }

    /// Adds a table written under `s3://<dataBucket>/<tableId>` to the index and config bucket.
    async fn register(&self, table: &SleeperTable, stores: &Stores) {
        self.register_with(table, table.properties.to_java(), stores)
            .await;
    }

    /// As `register`, with these table properties in the config bucket.
    async fn register_with(
        &self,
        table: &SleeperTable,
        properties: JavaProperties,
        stores: &Stores,
    ) {
        let config = stores
            .resolve(&format!("s3://{}", self.config_bucket))
            .unwrap();
        config
            .store
            .put(
                &config.child(&format!("tables/table-{}.properties", table.id())),
                properties.to_text().into(),
            )
            .await
            .unwrap();
        self.dynamo
            .put_item()
            .table_name(&self.tables[NAME_INDEX])
            .item("TableName", AttributeValue::S(table.name().into()))
            .item("TableId", AttributeValue::S(table.id().into()))
            .item("Online", AttributeValue::S("true".into()))
            .send()
            .await
            .unwrap();
    }

    async fn write_snapshot(&self, table: &SleeperTable, kind: &str, number: u64, bytes: Vec<u8>) {
        let key = format!("{}/statestore/snapshots/{number}-{kind}.arrow", table.id());
        self.data
            .store
            .put(&self.data.child(&key), bytes.into())
            .await
            .unwrap();
        let upper = kind.to_uppercase();
        self.dynamo
            .update_item()
            .table_name(&self.tables[LATEST_SNAPSHOTS])
            .key("TABLE_ID", AttributeValue::S(table.id().into()))
            .update_expression("SET #path = :path, #number = :number")
            .expression_attribute_names("#path", format!("{upper}_SNAPSHOT_PATH"))
            .expression_attribute_names("#number", format!("{upper}_TRANSACTION_NUMBER"))
            // Sleeper writes the full URL of the snapshot, with its s3a scheme.
            .expression_attribute_values(
                ":path",
                AttributeValue::S(format!("s3a://{}/{key}", self.data.url.host_str().unwrap())),
            )
            .expression_attribute_values(":number", AttributeValue::N(number.to_string()))
            .send()
            .await
            .unwrap();
    }

    /// The state store Sleeper would read the table's state from.
    fn state_store(&self, table: &SleeperTable, stores: &Stores) -> TransactionLogStateStore {
        TransactionLogStateStore::new(
            table.id(),
            table.properties.schema.clone(),
            self.dynamo.clone(),
            LogTables {
                files: self.tables[FILES_LOG].clone(),
                partitions: self.tables[PARTITIONS_LOG].clone(),
                latest_snapshots: self.tables[LATEST_SNAPSHOTS].clone(),
            },
            self.data.clone(),
            stores.clone(),
        )
    }

    /// Appends transactions to a log from `first` on; bodies go to S3 where `in_s3` says so.
    async fn append(
        &self,
        table: &SleeperTable,
        log: &str,
        first: u64,
        transactions: Vec<(Transaction, bool)>,
    ) {
        let schema = &table.properties.schema;
        for (offset, (transaction, in_s3)) in transactions.into_iter().enumerate() {
            let number = first + offset as u64;
            let body = transaction.to_json(schema);
            let mut put = self
                .dynamo
                .put_item()
                .table_name(&self.tables[log])
                .item("TABLE_ID", AttributeValue::S(table.id().into()))
                .item("TRANSACTION_NUMBER", AttributeValue::N(number.to_string()))
                .item("UPDATE_TIME", AttributeValue::N("0".into()))
                .item("TYPE", AttributeValue::S(transaction.type_name().into()));
            put = if in_s3 {
                let key = format!("{}/statestore/transactions/{number}-body.json", table.id());
                self.data
                    .store
                    .put(&self.data.child(&key), body.into())
                    .await
                    .unwrap();
                put.item("BODY_S3_KEY", AttributeValue::S(key))
            } else {
                put.item("BODY", AttributeValue::S(body))
            };
            put.send().await.unwrap();
        }
    }
}

/// A partition as it is just after its parent splits: a leaf.
fn as_new_leaf(partition: &Partition) -> Partition {
    Partition {
        is_leaf: true,
        child_ids: vec![],
        dimension: -1,
        ..partition.clone()
    }
}

/// The splits that grow the root into the table's tree, parents first; the last one as an
/// `EXTEND_PARTITION_TREE`.
fn partition_log(table: &SleeperTable) -> Vec<(Transaction, bool)> {
    let tree = &table.partitions;
    let mut pending = vec![tree.root().clone()];
    let mut log = Vec::new();
    while let Some(parent) = pending.pop() {
        if parent.is_leaf {
            continue;
        }
        let children: Vec<Partition> = parent
            .child_ids
            .iter()
            .map(|id| tree.get(id).unwrap().clone())
            .collect();
        log.push((
            Transaction::SplitPartition {
                parent: parent.clone(),
                children: children.iter().map(as_new_leaf).collect(),
            },
            false,
        ));
        pending.extend(children);
    }
    if let Some((Transaction::SplitPartition { parent, children }, _)) = log.pop() {
        log.push((
            Transaction::ExtendPartitionTree {
                updated: vec![parent],
                added: children,
            },
            false,
        ));
    }
    log
}

/// The table's files with their references.
fn files_of(table: &SleeperTable) -> Vec<StateFile> {
    StateFile::group(table.files.iter().cloned())
}

async fn export(table: &SleeperTable) -> (ExportSummary, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let summary = export_table(table, &local(dir.path()), &ExportOptions::default(), |_| {})
        .await
        .unwrap();
    (summary, dir)
}

/// The message of an export of `table` into `dir` that fails.
async fn export_error(table: &SleeperTable, dir: &tempfile::TempDir) -> String {
    export_table(table, &local(dir.path()), &ExportOptions::default(), |_| {})
        .await
        .unwrap_err()
        .to_string()
}

/// The instance's table reads as the reference table and exports the same rows, leaf by leaf.
async fn assert_same_table(from_instance: &SleeperTable, reference: &SleeperTable) {
    let mut partitions = from_instance.partitions.all().to_vec();
    let mut expected = reference.partitions.all().to_vec();
    partitions.sort_by(|a, b| a.id.cmp(&b.id));
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(partitions, expected);
    // Job assignments change nothing an export reads.
    let sorted = |table: &SleeperTable| {
        let mut files: Vec<FileReference> = table
            .files
            .iter()
            .map(|r| FileReference {
                job_id: None,
                ..r.clone()
            })
            .collect();
        files.sort_by(|a, b| (&a.filename, &a.partition_id).cmp(&(&b.filename, &b.partition_id)));
        files
    };
    assert_eq!(sorted(from_instance), sorted(reference));
    let (ours, _ours_dir) = export(from_instance).await;
    let (theirs, _theirs_dir) = export(reference).await;
    assert_eq!(ours.leaves.len(), theirs.leaves.len());
    for (a, b) in ours.leaves.iter().zip(&theirs.leaves) {
        assert_eq!(a.leaf_partition_id, b.leaf_partition_id);
        assert_eq!(
            read_parquet(&a.file),
            read_parquet(&b.file),
            "leaf {}",
            a.leaf_partition_id
        );
    }
}

#[tokio::test]
async fn an_instance_table_reads_from_snapshots_and_logs_as_sleeper_folds_them() {
    let stores = Stores::default();
    let instance = LocalInstance::create(&stores).await;

    // The demo table: a tree of 7 partitions, a file on the root, a file referenced by both
    // children of a split, two files per leaf. Its snapshot-only form is the reference.
    let reference = write_demo_table(instance.data.sub_location("demo0001"), 4, 200, 7)
        .await
        .unwrap();
    instance.register(&reference, &stores).await;

    // Snapshots at transaction 1: the unsplit root, and a file that is cleared later.
    let root = as_new_leaf(reference.partitions.root());
    let schema = &reference.properties.schema;
    instance
        .write_snapshot(
            &reference,
            "partitions",
            1,
            snapshot::write_partitions(std::slice::from_ref(&root), schema).unwrap(),
        )
        .await;
    let stale = format!(
        "{}/data/partition_root/stale.parquet",
        reference.location.url
    );
    let stale = StateFile {
        references: vec![FileReference {
            filename: stale.clone(),
            partition_id: root.id.clone(),
            number_of_rows: 1,
            count_approximate: false,
            only_contains_data_for_this_partition: true,
            job_id: None,
        }],
        filename: stale,
    };
    instance
        .write_snapshot(
            &reference,
            "files",
            1,
            snapshot::write_files(&[stale], 0).unwrap(),
        )
        .await;
    instance
        .append(&reference, PARTITIONS_LOG, 2, partition_log(&reference))
        .await;

    // Files: cleared, then added (the split file on its parent, the body in S3); a compaction
    // replaces a file that is then garbage-collected; the split file's reference is split.
    let mut files = files_of(&reference);
    let compacted = files.iter().rposition(|f| f.references.len() == 1).unwrap();
    let StateFile {
        filename: last_name,
        references: last_references,
    } = files.remove(compacted);
    let split_position = files.iter().position(|f| f.references.len() == 2).unwrap();
    let split_references = files[split_position].references.clone();
    let parent_id = reference
        .partitions
        .get(&split_references[0].partition_id)
        .unwrap()
        .parent_id
        .clone()
        .unwrap();
    let on_parent = FileReference {
        partition_id: parent_id,
        only_contains_data_for_this_partition: true,
        ..split_references[0].clone()
    };
    files[split_position].references = vec![on_parent.clone()];
    let compacted_away = FileReference {
        filename: last_name.replace(".parquet", "-input.parquet"),
        ..last_references[0].clone()
    };
    let job = vec![AssignJobIdRequest {
        job_id: "job-1".into(),
        partition_id: compacted_away.partition_id.clone(),
        filenames: vec![compacted_away.filename.clone()],
    }];
    instance
        .append(
            &reference,
            FILES_LOG,
            2,
            vec![
                (Transaction::ClearFiles, false),
                (Transaction::AddFiles(files), true),
                (
                    Transaction::AddFiles(StateFile::group([compacted_away.clone()])),
                    false,
                ),
                (Transaction::AssignJobIds(job), false),
                (
                    Transaction::ReplaceFileReferences(vec![ReplaceJob {
                        job_id: "job-1".into(),
                        task_id: None,
                        job_run_id: None,
                        input_files: vec![compacted_away.filename.clone()],
                        new_reference: last_references[0].clone(),
                    }]),
                    false,
                ),
                (
                    Transaction::SplitFileReferences(vec![SplitRequest {
                        old_reference: on_parent,
                        new_references: split_references,
                    }]),
                    false,
                ),
                (
                    Transaction::DeleteFiles(vec![compacted_away.filename]),
                    false,
                ),
            ],
        )
        .await;

    let opened = Instance::open_by_id(&instance.id, &stores).await.unwrap();
    assert_eq!(
        opened.tables().await.unwrap(),
        [TableEntry {
            name: "demo".into(),
            id: "demo0001".into()
        }]
    );
    let table = opened.open_table_named("demo").await.unwrap();
    let splits = partition_log(&reference).len() as u64;
    assert_eq!(
        table.state_version,
        Some(StateVersion {
            files_transaction: 8,
            partitions_transaction: 1 + splits,
        })
    );
    assert_same_table(&table, &reference).await;

    // The command line names the instance and the table by name.
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_sleeper-export"))
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{args:?}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let listed = run(&["tables", "--instance", &instance.id]);
    let row = listed
        .lines()
        .find(|l| l.starts_with("demo "))
        .unwrap_or_else(|| panic!("{listed}"));
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        columns[..5],
        [
            "demo",
            "demo0001",
            &reference.partitions.all().len().to_string(),
            &reference.partitions.leaves().len().to_string(),
            &reference.files.len().to_string()
        ],
        "{listed}"
    );
    let out = tempfile::tempdir().unwrap();
    let exported = run(&[
        "export",
        "--instance",
        &instance.id,
        "--table",
        "demo",
        "--export-id",
        "cli",
        "--output",
        out.path().to_str().unwrap(),
    ]);
    let rows = exported
        .split("as export cli: 4 leaf files, ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("{exported}"));
    let counted = run(&[
        "sql",
        "--instance",
        &instance.id,
        "--table",
        "demo",
        "SELECT count(*) AS n FROM demo",
    ]);
    assert!(
        counted.contains(&format!("| {rows} ")),
        "{rows} rows: {counted}"
    );
}

#[tokio::test]
async fn a_table_with_no_snapshot_is_read_from_its_logs_alone() {
    let stores = Stores::default();
    let instance = LocalInstance::create(&stores).await;
    let reference = random_table_at(instance.data.sub_location("table-1"), 41).await;
    instance.register(&reference, &stores).await;
    instance
        .append(
            &reference,
            PARTITIONS_LOG,
            1,
            vec![(
                Transaction::InitialisePartitions(reference.partitions.all().to_vec()),
                false,
            )],
        )
        .await;
    instance
        .append(
            &reference,
            FILES_LOG,
            1,
            vec![(Transaction::AddFiles(files_of(&reference)), false)],
        )
        .await;
    let opened = Instance::open_by_id(&instance.id, &stores).await.unwrap();
    let table = opened.open_table_named("random").await.unwrap();
    assert_eq!(
        table.state_version,
        Some(StateVersion {
            files_transaction: 1,
            partitions_transaction: 1,
        })
    );
    assert_same_table(&table, &reference).await;

    // A long-running planner splits each query from the state as it is when it plans it.
    instance
        .append(
            &reference,
            FILES_LOG,
            2,
            vec![(Transaction::AssignJobIds(vec![]), false)],
        )
        .await;
    let plans = tempfile::tempdir().unwrap();
    let planner = Planner {
        tables: TableIndex::new(vec![table.clone()]).with_instance(Some(opened.clone())),
        output: local(plans.path()),
        export: ExportOptions::default(),
    };
    let leaf_queue = LocalQueue::default();
    planner
        .plan(
            &BulkExportQuery::of_table(table.id(), "fresh").to_json(),
            &leaf_queue,
        )
        .await
        .unwrap();
    let manifest = ExportRecords::new(&local(plans.path()), table.id(), "fresh")
        .manifest()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        manifest.state_version,
        Some(StateVersion {
            files_transaction: 2,
            partitions_transaction: 1,
        })
    );

    // A compaction's garbage collector deletes an input after the export was planned.
    let gone = table.files[0].filename.clone();
    let location = stores.resolve(&gone).unwrap();
    location.store.delete(&location.prefix).await.unwrap();
    let error = export_error(&table, &tempfile::tempdir().unwrap()).await;
    for expected in [
        gone.as_str(),
        "is gone",
        "files transaction 1, partitions transaction 1",
        "garbage collector",
        "sleeper-export submit --table-id table-1",
    ] {
        assert!(error.contains(expected), "{expected:?} not in: {error}");
    }

    let unknown = opened.open_table_named("nope").await.unwrap_err();
    assert_eq!(
        unknown.to_string(),
        "Table could not be found with name: \"nope\""
    );
}

#[tokio::test]
async fn an_instance_is_found_by_the_config_bucket_of_its_sleeper_version() {
    let stores = Stores::default();
    let account = account().await;
    let current = LocalInstance::create(&stores).await;
    let suffix = current.id.to_lowercase().replace('.', "-");
    assert_eq!(
        current.config_bucket,
        format!("sleeper-{suffix}-config-{account}")
    );
    let legacy =
        LocalInstance::create_with(&stores, Naming::Legacy, JavaProperties::default()).await;
    for instance in [&current, &legacy] {
        let opened = Instance::open_by_id(&instance.id, &stores).await.unwrap();
        assert_eq!(
            opened.properties.get("sleeper.id"),
            Some(instance.id.as_str())
        );
    }
    let error = Instance::open_by_id("Nowhere.1", &stores)
        .await
        .unwrap_err()
        .to_string();
    for tried in [
        format!("sleeper-nowhere-1-config-{account}"),
        "sleeper-nowhere.1-config".to_owned(),
        "--config-bucket".to_owned(),
    ] {
        assert!(error.contains(&tried), "{tried:?} not in: {error}");
    }
}

/// Copies a data file, as another file of the table holding the same rows.
async fn copy_file(from: &str, to: &str, stores: &Stores) {
    let (from, to) = (stores.resolve(from).unwrap(), stores.resolve(to).unwrap());
    from.store.copy(&from.prefix, &to.prefix).await.unwrap();
}

fn single(reference: &FileReference, filename: &str, partition: &str) -> StateFile {
    StateFile {
        filename: filename.to_owned(),
        references: vec![FileReference {
            filename: filename.to_owned(),
            partition_id: partition.to_owned(),
            job_id: None,
            ..reference.clone()
        }],
    }
}

fn replace(job: &str, inputs: &[&str], output: FileReference) -> Transaction {
    Transaction::ReplaceFileReferences(vec![ReplaceJob {
        job_id: job.into(),
        task_id: None,
        job_run_id: None,
        input_files: inputs.iter().map(|f| (*f).to_owned()).collect(),
        new_reference: output,
    }])
}

fn assign(job: &str, partition: &str, files: &[&str]) -> Transaction {
    Transaction::AssignJobIds(vec![AssignJobIdRequest {
        job_id: job.into(),
        partition_id: partition.into(),
        filenames: files.iter().map(|f| (*f).to_owned()).collect(),
    }])
}

/// A log holding what Sleeper keeps but discards when applying: a duplicate commit after a
/// compaction, a compaction whose input was never assigned to it, one whose output exists, a
/// transaction of the other log's kind, and a gap in the numbers. Applied naively, each would
/// change the rows exported (duplicates, or rows lost).
#[tokio::test]
async fn a_log_applies_as_sleeper_applies_it() {
    let stores = Stores::default();
    let instance = LocalInstance::create(&stores).await;
    // The state Sleeper's rules leave.
    let expected = write_demo_table(instance.data.sub_location("demo0001"), 4, 200, 11)
        .await
        .unwrap();
    instance.register(&expected, &stores).await;
    instance
        .append(
            &expected,
            PARTITIONS_LOG,
            1,
            vec![(
                Transaction::InitialisePartitions(expected.partitions.all().to_vec()),
                false,
            )],
        )
        .await;
    let mut files = files_of(&expected);
    let leaf_ids: Vec<String> = expected
        .partitions
        .leaves()
        .iter()
        .map(|p| p.id.clone())
        .collect();
    let on_a_leaf =
        |f: &StateFile| f.references.len() == 1 && leaf_ids.contains(&f.references[0].partition_id);
    let position = files.iter().position(on_a_leaf).unwrap();
    // A compaction's output, whose rows its two inputs held.
    let output = files.remove(position);
    let output_reference = output.references[0].clone();
    let partition = output_reference.partition_id.clone();
    let input = |n: u32| {
        output
            .filename
            .replace(".parquet", &format!("-input{n}.parquet"))
    };
    for n in 1..=3 {
        copy_file(&output.filename, &input(n), &stores).await;
    }
    let unassigned = files.iter().find(|f| on_a_leaf(f)).unwrap().references[0].clone();
    let assigned = files
        .iter()
        .rev()
        .find(|f| on_a_leaf(f))
        .unwrap()
        .references[0]
        .clone();
    assert_ne!(unassigned.filename, assigned.filename);
    let (input1, input2, input3) = (input(1), input(2), input(3));
    instance
        .append(
            &expected,
            FILES_LOG,
            1,
            vec![
                (Transaction::AddFiles(files.clone()), true),
                (
                    Transaction::AddFiles(vec![
                        single(&output_reference, &input1, &partition),
                        single(&output_reference, &input2, &partition),
                    ]),
                    false,
                ),
                (assign("job-1", &partition, &[&input1, &input2]), false),
                (
                    replace("job-1", &[&input1, &input2], output_reference.clone()),
                    false,
                ),
                // 5: the ingest commit again, after the compaction replaced its file.
                (
                    Transaction::AddFiles(vec![single(&output_reference, &input1, &partition)]),
                    false,
                ),
                // 6: a compaction whose input was never assigned to it.
                (
                    replace(
                        "job-2",
                        &[&unassigned.filename],
                        single(&output_reference, &input3, &unassigned.partition_id).references[0]
                            .clone(),
                    ),
                    false,
                ),
                (
                    assign("job-3", &assigned.partition_id, &[&assigned.filename]),
                    false,
                ),
                // 8: a compaction whose output already exists.
                (
                    replace(
                        "job-3",
                        &[&assigned.filename],
                        FileReference {
                            partition_id: assigned.partition_id.clone(),
                            ..output_reference.clone()
                        },
                    ),
                    false,
                ),
                // 9: a partition transaction in the file log.
                (partition_log(&expected).remove(0).0, false),
            ],
        )
        .await;
    // 11, after a gap: garbage collection of the second input.
    instance
        .append(
            &expected,
            FILES_LOG,
            11,
            vec![(Transaction::DeleteFiles(vec![input2.clone()]), false)],
        )
        .await;

    let state = instance.state_store(&expected, &stores);
    let held = state.files().await.unwrap();
    let held_file = |name: &str| held.iter().find(|f| f.filename == name);
    assert_eq!(
        held_file(&input1).map(|f| f.references.len()),
        Some(0),
        "the replaced input stays, unreferenced"
    );
    assert!(held_file(&input2).is_none() && held_file(&input3).is_none());
    assert_eq!(
        held_file(&assigned.filename).unwrap().references[0]
            .job_id
            .as_deref(),
        Some("job-3")
    );
    assert_eq!(
        held_file(&unassigned.filename).unwrap().references[0].job_id,
        None
    );
    assert_eq!(
        state.version().await.unwrap(),
        Some(StateVersion {
            files_transaction: 11,
            partitions_transaction: 1,
        })
    );
    let opened = Instance::open_by_id(&instance.id, &stores).await.unwrap();
    let table = opened.open_table_named("demo").await.unwrap();
    assert_same_table(&table, &expected).await;
}

/// A table's properties file that sets only what a table must have.
fn bare_properties(table: &SleeperTable) -> JavaProperties {
    let mut properties = JavaProperties::default();
    properties.set("sleeper.table.id", table.id());
    properties.set("sleeper.table.name", table.name());
    properties.set("sleeper.table.schema", table.properties.schema.to_json());
    properties
}

#[tokio::test]
async fn unset_table_properties_take_the_instances_defaults() {
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    let stores = Stores::default();
    let mut defaults = JavaProperties::default();
    defaults.set("sleeper.default.table.parquet.compression.codec", "lzo");
    defaults.set("sleeper.default.table.data.engine", "JAVA");
    defaults.set("sleeper.default.table.parquet.rowgroup.rows.max", "70");
    let instance = LocalInstance::create_with(&stores, Naming::Legacy, defaults).await;
    let reference = write_demo_table(instance.data.sub_location("demo0001"), 2, 200, 3)
        .await
        .unwrap();
    instance
        .register_with(&reference, bare_properties(&reference), &stores)
        .await;
    let schema = &reference.properties.schema;
    instance
        .write_snapshot(
            &reference,
            "partitions",
            1,
            snapshot::write_partitions(reference.partitions.all(), schema).unwrap(),
        )
        .await;
    instance
        .write_snapshot(
            &reference,
            "files",
            1,
            snapshot::write_files(&files_of(&reference), 0).unwrap(),
        )
        .await;

    // A codec Sleeper allows but nothing here writes does not stop the table opening.
    let opened = Instance::open_by_id(&instance.id, &stores).await.unwrap();
    let table = opened.open_table_named("demo").await.unwrap();
    assert_eq!(table.properties.key_order, KeyOrder::Java);
    assert_eq!(table.properties.parquet.row_group_rows, 70);
    assert_eq!(table.properties.parquet.compression, "lzo");
    assert_eq!(table.properties.parquet.page_size, 131_072);

    // An export of it fails before writing anything, naming the property and the override.
    let dir = tempfile::tempdir().unwrap();
    let error = export_error(&table, &dir).await;
    for expected in [
        "sleeper.table.parquet.compression.codec",
        "lzo",
        "--compression",
    ] {
        assert!(error.contains(expected), "{expected:?} not in: {error}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // The command line: `tables` lists it, `export` needs another codec and takes it.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sleeper-export"))
            .args(args)
            .output()
            .unwrap()
    };
    let listed = cli(&["tables", "--instance", &instance.id]);
    assert!(listed.status.success(), "{listed:?}");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("demo0001"));
    let out = dir.path().join("cli");
    let out = out.to_str().unwrap();
    let export_args = [
        "export",
        "--instance",
        &instance.id,
        "--table",
        "demo",
        "--output",
        out,
    ];
    let refused = cli(&export_args);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("--compression"),
        "{stderr}"
    );
    let exported = cli(&[
        &export_args[..],
        &["--compression", "snappy", "--key-order", "datafusion"],
    ]
    .concat());
    assert!(exported.status.success(), "{exported:?}");

    let options = ExportOptions {
        compression: Some("zstd".into()),
        ..ExportOptions::default()
    };
    let summary = export_table(&table, &local(dir.path()), &options, |_| {})
        .await
        .unwrap();
    let (theirs, _theirs_dir) = export(&reference).await;
    for (leaf, reference_leaf) in summary.leaves.iter().zip(&theirs.leaves) {
        assert_eq!(read_parquet(&leaf.file), read_parquet(&reference_leaf.file));
        let bytes = std::fs::read(leaf.file.strip_prefix("file://").unwrap()).unwrap();
        let metadata = SerializedFileReader::new(bytes::Bytes::from(bytes))
            .unwrap()
            .metadata()
            .clone();
        for group in metadata.row_groups() {
            assert!(group.num_rows() <= 70);
            assert_eq!(
                group.column(0).compression(),
                datafusion::parquet::basic::Compression::ZSTD(Default::default())
            );
        }
    }
}
