//! Sleeper's state-store transactions (the bodies of its transaction logs, as JSON) and the table
//! state they build, applied exactly as Sleeper applies them (`TransactionLogHead` and each
//! transaction's `apply` in `sleeper.core.statestore.transactionlog`):
//! - a log holds only its own kind: Sleeper skips, with a warning, a transaction of the other
//!   log's kind (`TransactionLogHead.applyTransaction`);
//! - some transactions stay in the log but change nothing when applied: an `ADD_FILES` naming a
//!   file the state already holds is skipped whole (`AddFilesTransaction.apply`), and a
//!   `REPLACE_FILE_REFERENCES` job whose inputs are not all referenced on its partition and
//!   assigned to it, or whose output already exists, is skipped
//!   (`ReplaceFileReferencesRequest.validateStateChange`);
//! - a file whose references are all gone stays in the state, and counts as existing, until a
//!   `DELETE_FILES` (garbage collection) removes it;
//! - files are held by filename, and each file's references by partition id (`StateStoreFiles`,
//!   `StateStoreFile`: Java `TreeMap`s), which is the order a leaf's files are read in, and so
//!   decides the order of rows with equal keys.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::partition::sort_as_sleeper;
use crate::model::{FileReference, Partition, Region, Schema, StateFile};

/// One transaction of a table's file or partition log.
#[derive(Debug, Clone, PartialEq)]
pub enum Transaction {
    AddFiles(Vec<StateFile>),
    /// Assigns file references to compaction jobs, which their commits then require.
    AssignJobIds(Vec<AssignJobIdRequest>),
    ClearFiles,
    DeleteFiles(Vec<String>),
    InitialisePartitions(Vec<Partition>),
    /// Compaction results: each job's input references on its partition give way to its output.
    ReplaceFileReferences(Vec<ReplaceJob>),
    /// Each old reference is replaced by references on the partition's children.
    SplitFileReferences(Vec<SplitRequest>),
    SplitPartition {
        parent: Partition,
        children: Vec<Partition>,
    },
    ExtendPartitionTree {
        updated: Vec<Partition>,
        added: Vec<Partition>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignJobIdRequest {
    pub job_id: String,
    pub partition_id: String,
    pub filenames: Vec<String>,
}

/// One compaction job's commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplaceJob {
    pub job_id: String,
    pub task_id: Option<String>,
    pub job_run_id: Option<String>,
    pub input_files: Vec<String>,
    /// The output file, referenced on the job's partition.
    pub new_reference: FileReference,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitRequest {
    pub old_reference: FileReference,
    pub new_references: Vec<FileReference>,
}

/// The two logs of a table, each holding its own kind of transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Log {
    Files,
    Partitions,
}

/// The transaction types, as the log's `TYPE` attribute names them.
pub const TRANSACTION_TYPES: [&str; 9] = [
    "ADD_FILES",
    "ASSIGN_JOB_IDS",
    "CLEAR_FILES",
    "DELETE_FILES",
    "INITIALISE_PARTITIONS",
    "REPLACE_FILE_REFERENCES",
    "SPLIT_FILE_REFERENCES",
    "SPLIT_PARTITION",
    "EXTEND_PARTITION_TREE",
];

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileJson {
    filename: String,
    references: Vec<PartitionReferenceJson>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PartitionReferenceJson {
    partition_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    job_id: Option<String>,
    number_of_rows: u64,
    count_approximate: bool,
    only_contains_data_for_this_partition: bool,
}

/// A reference with its file's name, as replacements and splits write one.
#[derive(Debug, Serialize, Deserialize)]
struct ReferenceJson {
    filename: String,
    #[serde(flatten)]
    reference: PartitionReferenceJson,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PartitionJson {
    partition_id: String,
    is_leaf_partition: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parent_partition_id: Option<String>,
    #[serde(default)]
    child_partition_ids: Vec<String>,
    region: Value,
    dimension: i32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AssignJobIdJson {
    job_id: String,
    partition_id: String,
    filenames: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReplaceJobJson {
    job_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    job_run_id: Option<String>,
    input_files: Vec<String>,
    new_reference: ReferenceJson,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SplitRequestJson {
    old_reference: ReferenceJson,
    new_references: Vec<ReferenceJson>,
}

impl PartitionReferenceJson {
    fn of(reference: &FileReference) -> Self {
        PartitionReferenceJson {
            partition_id: reference.partition_id.clone(),
            job_id: reference.job_id.clone(),
            number_of_rows: reference.number_of_rows,
            count_approximate: reference.count_approximate,
            only_contains_data_for_this_partition: reference.only_contains_data_for_this_partition,
        }
    }

    fn into_file(self, filename: String) -> FileReference {
        FileReference {
            filename,
            partition_id: self.partition_id,
            number_of_rows: self.number_of_rows,
            count_approximate: self.count_approximate,
            only_contains_data_for_this_partition: self.only_contains_data_for_this_partition,
            job_id: self.job_id,
        }
    }
}

impl From<ReferenceJson> for FileReference {
    fn from(json: ReferenceJson) -> Self {
        json.reference.into_file(json.filename)
    }
}

impl From<&FileReference> for ReferenceJson {
    fn from(reference: &FileReference) -> Self {
        ReferenceJson {
            filename: reference.filename.clone(),
            reference: PartitionReferenceJson::of(reference),
        }
    }
}

impl PartitionJson {
    fn from_partition(partition: &Partition, schema: &Schema) -> Self {
        PartitionJson {
            partition_id: partition.id.clone(),
            is_leaf_partition: partition.is_leaf,
            parent_partition_id: partition.parent_id.clone(),
            child_partition_ids: partition.child_ids.clone(),
            region: partition.region.to_json(schema),
            dimension: partition.dimension,
        }
    }

    fn into_partition(self, schema: &Schema) -> Result<Partition> {
        Ok(Partition {
            region: Region::from_json(&self.region, schema)?,
            id: self.partition_id,
            is_leaf: self.is_leaf_partition,
            parent_id: self.parent_partition_id,
            child_ids: self.child_partition_ids,
            dimension: self.dimension,
        })
    }
}

fn partitions_from(json: Vec<PartitionJson>, schema: &Schema) -> Result<Vec<Partition>> {
    json.into_iter().map(|p| p.into_partition(schema)).collect()
}

fn partitions_json(partitions: &[Partition], schema: &Schema) -> Vec<PartitionJson> {
    partitions
        .iter()
        .map(|p| PartitionJson::from_partition(p, schema))
        .collect()
}

fn references_json(references: &[FileReference]) -> Vec<ReferenceJson> {
    references.iter().map(ReferenceJson::from).collect()
}

impl Transaction {
    /// A transaction from its log entry: the `TYPE` and the JSON `BODY`.
    pub fn from_json(transaction_type: &str, body: &str, schema: &Schema) -> Result<Transaction> {
        let bad = |message: String| Error::Transaction {
            context: transaction_type.to_owned(),
            message,
        };
        let value: Value = serde_json::from_str(body).map_err(|e| bad(e.to_string()))?;
        let field = |name: &str| value.get(name).cloned().unwrap_or(Value::Null);
        fn parse<T: serde::de::DeserializeOwned>(
            value: Value,
            bad: &dyn Fn(String) -> Error,
        ) -> Result<T> {
            serde_json::from_value(value).map_err(|e| bad(e.to_string()))
        }
        Ok(match transaction_type {
            "ADD_FILES" => {
                let files: Vec<FileJson> = parse(field("files"), &bad)?;
                Transaction::AddFiles(
                    files
                        .into_iter()
                        .map(|file| StateFile {
                            references: file
                                .references
                                .into_iter()
                                .map(|r| r.into_file(file.filename.clone()))
                                .collect(),
                            filename: file.filename,
                        })
                        .collect(),
                )
            }
            "ASSIGN_JOB_IDS" => {
                let requests: Vec<AssignJobIdJson> = parse(field("requests"), &bad)?;
                // As `AssignJobIdsTransaction`'s constructor: requests naming no file are dropped.
                Transaction::AssignJobIds(
                    requests
                        .into_iter()
                        .filter(|r| !r.filenames.is_empty())
                        .map(|r| AssignJobIdRequest {
                            job_id: r.job_id,
                            partition_id: r.partition_id,
                            filenames: r.filenames,
                        })
                        .collect(),
                )
            }
            "CLEAR_FILES" => Transaction::ClearFiles,
            "DELETE_FILES" => Transaction::DeleteFiles(parse(field("filenames"), &bad)?),
            "INITIALISE_PARTITIONS" => Transaction::InitialisePartitions(partitions_from(
                parse(field("partitions"), &bad)?,
                schema,
            )?),
            "REPLACE_FILE_REFERENCES" => {
                let jobs: Vec<ReplaceJobJson> = parse(field("jobs"), &bad)?;
                let jobs: Vec<ReplaceJob> = jobs
                    .into_iter()
                    .map(|job| ReplaceJob {
                        job_id: job.job_id,
                        task_id: job.task_id,
                        job_run_id: job.job_run_id,
                        input_files: job.input_files,
                        new_reference: job.new_reference.into(),
                    })
                    .collect();
                // Sleeper refuses to build such a transaction (`validateNewReference`), so a log
                // holding one cannot be read by Sleeper either.
                if let Some(job) = jobs
                    .iter()
                    .find(|job| job.input_files.contains(&job.new_reference.filename))
                {
                    return Err(bad(format!(
                        "job {} replaces file {} with itself",
                        job.job_id, job.new_reference.filename
                    )));
                }
                Transaction::ReplaceFileReferences(jobs)
            }
            "SPLIT_FILE_REFERENCES" => {
                let requests: Vec<SplitRequestJson> = parse(field("requests"), &bad)?;
                Transaction::SplitFileReferences(
                    requests
                        .into_iter()
                        .map(|r| SplitRequest {
                            old_reference: r.old_reference.into(),
                            new_references: r.new_references.into_iter().map(Into::into).collect(),
                        })
                        .collect(),
                )
            }
            "SPLIT_PARTITION" => Transaction::SplitPartition {
                parent: parse::<PartitionJson>(field("parent"), &bad)?.into_partition(schema)?,
                children: partitions_from(parse(field("newChildren"), &bad)?, schema)?,
            },
            "EXTEND_PARTITION_TREE" => Transaction::ExtendPartitionTree {
                updated: partitions_from(parse(field("updatePartitions"), &bad)?, schema)?,
                added: partitions_from(parse(field("newPartitions"), &bad)?, schema)?,
            },
            other => {
                return Err(bad(format!(
                    "unknown transaction type {other:?}; Sleeper's are {}",
                    TRANSACTION_TYPES.join(", ")
                )))
            }
        })
    }

    /// The log's `TYPE` of this transaction.
    pub fn type_name(&self) -> &'static str {
        match self {
            Transaction::AddFiles(_) => "ADD_FILES",
            Transaction::AssignJobIds(_) => "ASSIGN_JOB_IDS",
            Transaction::ClearFiles => "CLEAR_FILES",
            Transaction::DeleteFiles(_) => "DELETE_FILES",
            Transaction::InitialisePartitions(_) => "INITIALISE_PARTITIONS",
            Transaction::ReplaceFileReferences(_) => "REPLACE_FILE_REFERENCES",
            Transaction::SplitFileReferences(_) => "SPLIT_FILE_REFERENCES",
            Transaction::SplitPartition { .. } => "SPLIT_PARTITION",
            Transaction::ExtendPartitionTree { .. } => "EXTEND_PARTITION_TREE",
        }
    }

    /// The log this kind of transaction belongs in.
    pub fn log(&self) -> Log {
        match self {
            Transaction::InitialisePartitions(_)
            | Transaction::SplitPartition { .. }
            | Transaction::ExtendPartitionTree { .. } => Log::Partitions,
            _ => Log::Files,
        }
    }

    /// The JSON body Sleeper writes for this transaction.
    pub fn to_json(&self, schema: &Schema) -> String {
        let value = match self {
            Transaction::AddFiles(files) => serde_json::json!({
                "files": files
                    .iter()
                    .map(|file| FileJson {
                        filename: file.filename.clone(),
                        references: file.references.iter().map(PartitionReferenceJson::of).collect(),
                    })
                    .collect::<Vec<_>>()
            }),
            Transaction::AssignJobIds(requests) => serde_json::json!({
                "requests": requests
                    .iter()
                    .map(|r| AssignJobIdJson {
                        job_id: r.job_id.clone(),
                        partition_id: r.partition_id.clone(),
                        filenames: r.filenames.clone(),
                    })
                    .collect::<Vec<_>>()
            }),
            Transaction::ClearFiles => serde_json::json!({}),
            Transaction::DeleteFiles(filenames) => serde_json::json!({ "filenames": filenames }),
            Transaction::InitialisePartitions(partitions) => {
                serde_json::json!({ "partitions": partitions_json(partitions, schema) })
            }
            Transaction::ReplaceFileReferences(jobs) => serde_json::json!({
                "jobs": jobs
                    .iter()
                    .map(|job| ReplaceJobJson {
                        job_id: job.job_id.clone(),
                        task_id: job.task_id.clone(),
                        job_run_id: job.job_run_id.clone(),
                        input_files: job.input_files.clone(),
                        new_reference: (&job.new_reference).into(),
                    })
                    .collect::<Vec<_>>()
            }),
            Transaction::SplitFileReferences(requests) => serde_json::json!({
                "requests": requests
                    .iter()
                    .map(|r| SplitRequestJson {
                        old_reference: (&r.old_reference).into(),
                        new_references: references_json(&r.new_references),
                    })
                    .collect::<Vec<_>>()
            }),
            Transaction::SplitPartition { parent, children } => serde_json::json!({
                "parent": PartitionJson::from_partition(parent, schema),
                "newChildren": partitions_json(children, schema),
            }),
            Transaction::ExtendPartitionTree { updated, added } => serde_json::json!({
                "updatePartitions": partitions_json(updated, schema),
                "newPartitions": partitions_json(added, schema),
            }),
        };
        value.to_string()
    }
}

/// Partitions and files of a table, built from snapshots and the transactions after them.
#[derive(Debug, Clone, Default)]
pub struct TableState {
    partitions: Vec<Option<Partition>>,
    partition_index: HashMap<String, usize>,
    /// Every file the state holds, with its references (a file has one per partition, and
    /// rarely more than two).
    files: HashMap<String, Vec<FileReference>>,
}

impl TableState {
    pub fn new(partitions: Vec<Partition>, files: Vec<StateFile>) -> Self {
        let mut state = TableState::default();
        state.set_partitions(partitions);
        for file in files {
            state.add_file(file);
        }
        state
    }

    fn set_partitions(&mut self, partitions: Vec<Partition>) {
        self.partitions.clear();
        self.partition_index.clear();
        for partition in partitions {
            self.put_partition(partition);
        }
    }

    fn put_partition(&mut self, partition: Partition) {
        match self.partition_index.get(&partition.id) {
            Some(&position) => self.partitions[position] = Some(partition),
            None => {
                self.partition_index
                    .insert(partition.id.clone(), self.partitions.len());
                self.partitions.push(Some(partition));
            }
        }
    }

    fn add_file(&mut self, file: StateFile) {
        self.files.insert(file.filename, Vec::new());
        for reference in file.references {
            self.put_reference(reference);
        }
    }

    /// Adds a reference, in place of the file's reference on the same partition, if any.
    fn put_reference(&mut self, reference: FileReference) {
        let references = self
            .files
            .get_mut(&reference.filename)
            .expect("the file is in the state");
        match references
            .iter_mut()
            .find(|r| r.partition_id == reference.partition_id)
        {
            Some(existing) => *existing = reference,
            None => references.push(reference),
        }
    }

    /// The references of a file the transaction needs to exist. Sleeper cannot apply such a
    /// transaction either (it fails on the missing file), so neither can we.
    fn existing(
        &mut self,
        transaction: &'static str,
        filename: &str,
    ) -> Result<&mut Vec<FileReference>> {
        self.files
            .get_mut(filename)
            .ok_or_else(|| Error::Transaction {
                context: transaction.into(),
                message: format!(
                    "it names file {filename}, which the state does not hold (Sleeper fails to \
                     apply it too)"
                ),
            })
    }

    /// Applies a transaction read from `log`. One of the other log's kind is skipped, as
    /// Sleeper skips it (with a warning); returns whether it was applied.
    pub fn apply_from_log(&mut self, log: Log, transaction: Transaction) -> Result<bool> {
        if transaction.log() != log {
            return Ok(false);
        }
        self.apply(transaction)?;
        Ok(true)
    }

    /// Applies one transaction with Sleeper's rules (see the module's notes).
    pub fn apply(&mut self, transaction: Transaction) -> Result<()> {
        match transaction {
            Transaction::AddFiles(files) => {
                if let Some(existing) = files.iter().find(|f| self.files.contains_key(&f.filename))
                {
                    tracing::debug!(
                        "skipping ADD_FILES: file {} is already in the state",
                        existing.filename
                    );
                    return Ok(());
                }
                for file in files {
                    self.add_file(file);
                }
            }
            Transaction::AssignJobIds(requests) => {
                for request in requests {
                    for filename in &request.filenames {
                        let reference = self
                            .existing("ASSIGN_JOB_IDS", filename)?
                            .iter_mut()
                            .find(|r| r.partition_id == request.partition_id)
                            .ok_or_else(|| Error::Transaction {
                                context: "ASSIGN_JOB_IDS".into(),
                                message: format!(
                                    "it assigns file {filename} on partition {}, where the file \
                                     is not referenced (Sleeper fails to apply it too)",
                                    request.partition_id
                                ),
                            })?;
                        reference.job_id = Some(request.job_id.clone());
                    }
                }
            }
            Transaction::ClearFiles => self.files.clear(),
            Transaction::DeleteFiles(filenames) => {
                for filename in filenames {
                    self.files.remove(&filename);
                }
            }
            Transaction::ReplaceFileReferences(jobs) => {
                for job in jobs {
                    if let Err(reason) = self.replacement_applies(&job) {
                        tracing::debug!(
                            "skipping compaction commit of job {}: {reason}",
                            job.job_id
                        );
                        continue;
                    }
                    let partition = &job.new_reference.partition_id;
                    for input in &job.input_files {
                        if let Some(references) = self.files.get_mut(input) {
                            references.retain(|r| &r.partition_id != partition);
                        }
                    }
                    self.add_file(StateFile {
                        filename: job.new_reference.filename.clone(),
                        references: vec![job.new_reference],
                    });
                }
            }
            Transaction::SplitFileReferences(requests) => {
                for request in requests {
                    let old = &request.old_reference;
                    self.existing("SPLIT_FILE_REFERENCES", &old.filename)?
                        .retain(|r| r.partition_id != old.partition_id);
                    for new in request.new_references {
                        self.put_reference(FileReference {
                            filename: old.filename.clone(),
                            ..new
                        });
                    }
                }
            }
            Transaction::InitialisePartitions(partitions) => self.set_partitions(partitions),
            Transaction::SplitPartition { parent, children } => {
                self.put_partition(parent);
                for child in children {
                    self.put_partition(child);
                }
            }
            Transaction::ExtendPartitionTree { updated, added } => {
                for partition in updated.into_iter().chain(added) {
                    self.put_partition(partition);
                }
            }
        }
        Ok(())
    }

    /// Sleeper's `ReplaceFileReferencesRequest.validateStateChange`: every input referenced on
    /// the job's partition and assigned to the job, and no file yet by the output's name.
    fn replacement_applies(&self, job: &ReplaceJob) -> std::result::Result<(), String> {
        let partition = &job.new_reference.partition_id;
        for input in &job.input_files {
            let reference = self
                .files
                .get(input)
                .ok_or_else(|| format!("input {input} is not in the state"))?
                .iter()
                .find(|r| &r.partition_id == partition)
                .ok_or_else(|| {
                    format!("input {input} is not referenced on partition {partition}")
                })?;
            if reference.job_id.as_deref() != Some(job.job_id.as_str()) {
                return Err(format!(
                    "input {input} on partition {partition} is not assigned to the job"
                ));
            }
        }
        if self.files.contains_key(&job.new_reference.filename) {
            return Err(format!(
                "output {} already exists",
                job.new_reference.filename
            ));
        }
        Ok(())
    }

    pub fn partitions(&self) -> Vec<Partition> {
        self.partitions.iter().flatten().cloned().collect()
    }

    /// Every file, referenced or not, in Sleeper's order.
    pub fn files(&self) -> Vec<StateFile> {
        let mut files: Vec<StateFile> = self
            .files
            .iter()
            .map(|(filename, references)| StateFile {
                filename: filename.clone(),
                references: references.clone(),
            })
            .collect();
        sort_as_sleeper(&mut files);
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Field, PrimitiveType};

    fn schema() -> Schema {
        Schema::new(
            vec![Field::primitive("key", PrimitiveType::String)],
            vec![],
            vec![],
        )
        .unwrap()
    }

    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/sleeper-fixtures/transactions")
            .join(format!("shouldSerDe{name}.approved.json"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    const FIXTURES: [(&str, &str); 11] = [
        ("AddFiles", "ADD_FILES"),
        ("AddSplitFile", "ADD_FILES"),
        ("AssignJobIds", "ASSIGN_JOB_IDS"),
        ("ClearFiles", "CLEAR_FILES"),
        ("DeleteFiles", "DELETE_FILES"),
        ("ExtendPartitionTree", "EXTEND_PARTITION_TREE"),
        ("InitialisePartitions", "INITIALISE_PARTITIONS"),
        ("ReplaceFileReferences", "REPLACE_FILE_REFERENCES"),
        (
            "ReplaceFileReferencesWithTrackingIds",
            "REPLACE_FILE_REFERENCES",
        ),
        ("SplitFileReferences", "SPLIT_FILE_REFERENCES"),
        ("SplitPartition", "SPLIT_PARTITION"),
    ];

    fn parsed(name: &str) -> Transaction {
        let (_, kind) = FIXTURES.iter().find(|(n, _)| *n == name).unwrap();
        Transaction::from_json(kind, &fixture(name), &schema()).unwrap()
    }

    #[test]
    fn every_fixture_parses_and_writes_back_the_json_sleeper_wrote() {
        for (name, kind) in FIXTURES {
            let text = fixture(name);
            let transaction = Transaction::from_json(kind, &text, &schema())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(transaction.type_name(), kind);
            let written: Value = serde_json::from_str(&transaction.to_json(&schema())).unwrap();
            let sleepers: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(written, sleepers, "{name}");
        }
        let error = Transaction::from_json("MERGE_FILES", "{}", &schema()).unwrap_err();
        assert!(
            error.to_string().contains("EXTEND_PARTITION_TREE"),
            "{error}"
        );
    }

    fn reference(file: &str, partition: &str) -> FileReference {
        FileReference {
            filename: file.into(),
            partition_id: partition.into(),
            number_of_rows: 10,
            count_approximate: false,
            only_contains_data_for_this_partition: true,
            job_id: None,
        }
    }

    fn add(files: &[&str]) -> Transaction {
        Transaction::AddFiles(
            files
                .iter()
                .map(|f| StateFile {
                    filename: (*f).into(),
                    references: vec![reference(f, "root")],
                })
                .collect(),
        )
    }

    fn assign(job: &str, files: &[&str]) -> Transaction {
        Transaction::AssignJobIds(vec![AssignJobIdRequest {
            job_id: job.into(),
            partition_id: "root".into(),
            filenames: files.iter().map(|f| (*f).into()).collect(),
        }])
    }

    fn replace(job: &str, inputs: &[&str], output: &str) -> Transaction {
        Transaction::ReplaceFileReferences(vec![ReplaceJob {
            job_id: job.into(),
            task_id: None,
            job_run_id: None,
            input_files: inputs.iter().map(|f| (*f).into()).collect(),
            new_reference: reference(output, "root"),
        }])
    }

    /// Each file with its references' partitions and jobs, as `file:partition/job`.
    fn summary(state: &TableState) -> Vec<String> {
        state
            .files()
            .iter()
            .map(|file| {
                let references: Vec<String> = file
                    .references
                    .iter()
                    .map(|r| format!("{}/{}", r.partition_id, r.job_id.as_deref().unwrap_or("-")))
                    .collect();
                format!("{}:{}", file.filename, references.join(","))
            })
            .collect()
    }

    #[test]
    fn transactions_apply_with_sleepers_rules() {
        let mut state = TableState::default();
        state.apply(parsed("InitialisePartitions")).unwrap();
        state.apply(add(&["f2", "f1"])).unwrap();
        assert_eq!(summary(&state), ["f1:root/-", "f2:root/-"]);

        // A duplicate commit is skipped whole, with the new file it also names.
        state.apply(add(&["f9", "f2"])).unwrap();
        assert_eq!(summary(&state), ["f1:root/-", "f2:root/-"]);

        // A compaction whose inputs were never assigned to it changes nothing.
        state.apply(replace("job-a", &["f1", "f2"], "f3")).unwrap();
        assert_eq!(summary(&state), ["f1:root/-", "f2:root/-"]);

        state.apply(assign("job-a", &["f1", "f2"])).unwrap();
        state.apply(replace("job-a", &["f1", "f2"], "f3")).unwrap();
        // The inputs stay, unreferenced, until garbage collection deletes them.
        assert_eq!(summary(&state), ["f1:", "f2:", "f3:root/-"]);

        // The same commit again, and an ingest commit of a replaced file, are both skipped.
        state.apply(replace("job-a", &["f1", "f2"], "f3")).unwrap();
        state.apply(add(&["f1"])).unwrap();
        assert_eq!(summary(&state), ["f1:", "f2:", "f3:root/-"]);

        state
            .apply(Transaction::DeleteFiles(vec!["f1".into(), "f2".into()]))
            .unwrap();
        state.apply(add(&["f1"])).unwrap();
        // A compaction whose output already exists is skipped; its assignment stays.
        state.apply(assign("job-b", &["f3"])).unwrap();
        state.apply(replace("job-b", &["f3"], "f1")).unwrap();
        assert_eq!(summary(&state), ["f1:root/-", "f3:root/job-b"]);

        // Each log applies only its own kind of transaction.
        let split = parsed("SplitPartition");
        assert!(!state.apply_from_log(Log::Files, split.clone()).unwrap());
        assert!(!state.apply_from_log(Log::Partitions, add(&["f7"])).unwrap());
        assert_eq!(summary(&state), ["f1:root/-", "f3:root/job-b"]);
        assert!(state.apply_from_log(Log::Partitions, split).unwrap());

        state.apply(Transaction::ClearFiles).unwrap();
        assert!(summary(&state).is_empty());
    }

    #[test]
    fn transactions_sleeper_cannot_apply_are_errors_naming_the_file() {
        let mut state = TableState::default();
        state.apply(add(&["f1"])).unwrap();
        let error = state
            .apply(assign("job", &["gone"]))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("ASSIGN_JOB_IDS") && error.contains("gone"),
            "{error}"
        );
        let mut on_other_partition = assign("job", &["f1"]);
        if let Transaction::AssignJobIds(requests) = &mut on_other_partition {
            requests[0].partition_id = "L".into();
        }
        let error = state.apply(on_other_partition).unwrap_err().to_string();
        assert!(error.contains("partition L"), "{error}");
        let split = Transaction::SplitFileReferences(vec![SplitRequest {
            old_reference: reference("gone", "root"),
            new_references: vec![reference("gone", "L")],
        }]);
        let error = state.apply(split).unwrap_err().to_string();
        assert!(
            error.contains("SPLIT_FILE_REFERENCES") && error.contains("gone"),
            "{error}"
        );
        let body = replace("job", &["f1"], "f1").to_json(&schema());
        let error = Transaction::from_json("REPLACE_FILE_REFERENCES", &body, &schema())
            .unwrap_err()
            .to_string();
        assert!(error.contains("with itself"), "{error}");
    }

    #[test]
    fn files_are_in_javas_order_of_filenames_and_partition_ids() {
        // Java's TreeMap orders strings by UTF-16 code units: U+FFFF after U+10000.
        let mut state = TableState::default();
        state
            .apply(Transaction::AddFiles(vec![
                StateFile {
                    filename: "f\u{ffff}".into(),
                    references: vec![reference("f\u{ffff}", "root")],
                },
                StateFile {
                    filename: "f\u{10000}".into(),
                    references: vec![reference("f\u{10000}", "R"), reference("f\u{10000}", "L")],
                },
            ]))
            .unwrap();
        assert_eq!(summary(&state), ["f\u{10000}:L/-,R/-", "f\u{ffff}:root/-"]);
    }

    #[test]
    fn splits_move_references_to_the_children() {
        let mut state = TableState::default();
        state.apply(parsed("AddFiles")).unwrap();
        let on_l = "s3a://sleeper-instanceid-table-data-test-account/933cd595/data/partition_L/file2.parquet";
        state
            .apply(Transaction::AddFiles(vec![StateFile {
                filename: on_l.into(),
                references: vec![reference(on_l, "L")],
            }]))
            .unwrap();
        state.apply(parsed("SplitFileReferences")).unwrap();
        let partitions: Vec<String> = state
            .files()
            .iter()
            .map(|f| {
                let ids: Vec<&str> = f
                    .references
                    .iter()
                    .map(|r| r.partition_id.as_str())
                    .collect();
                ids.join(",")
            })
            .collect();
        assert_eq!(partitions, ["LL,LR", "L,R", "root"]);
    }
}
