//! Sleeper's state-store transactions: the bodies of its transaction logs, as JSON, read and
//! written as Sleeper writes them (`sleeper.core.statestore.transactionlog.transaction`); the
//! state they build is [`super::state::TableState`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
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

impl From<FileJson> for StateFile {
    fn from(file: FileJson) -> Self {
        StateFile {
            references: file
                .references
                .into_iter()
                .map(|r| r.into_file(file.filename.clone()))
                .collect(),
            filename: file.filename,
        }
    }
}

impl From<AssignJobIdJson> for AssignJobIdRequest {
    fn from(request: AssignJobIdJson) -> Self {
        AssignJobIdRequest {
            job_id: request.job_id,
            partition_id: request.partition_id,
            filenames: request.filenames,
        }
    }
}

impl From<ReplaceJobJson> for ReplaceJob {
    fn from(job: ReplaceJobJson) -> Self {
        ReplaceJob {
            job_id: job.job_id,
            task_id: job.task_id,
            job_run_id: job.job_run_id,
            input_files: job.input_files,
            new_reference: job.new_reference.into(),
        }
    }
}

impl From<SplitRequestJson> for SplitRequest {
    fn from(request: SplitRequestJson) -> Self {
        SplitRequest {
            old_reference: request.old_reference.into(),
            new_references: request.new_references.into_iter().map(Into::into).collect(),
        }
    }
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
                Transaction::AddFiles(files.into_iter().map(StateFile::from).collect())
            }
            "ASSIGN_JOB_IDS" => {
                let requests: Vec<AssignJobIdJson> = parse(field("requests"), &bad)?;
                // As `AssignJobIdsTransaction`'s constructor: requests naming no file are dropped.
                Transaction::AssignJobIds(
                    requests
                        .into_iter()
                        .filter(|r| !r.filenames.is_empty())
                        .map(AssignJobIdRequest::from)
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
                let jobs: Vec<ReplaceJob> = jobs.into_iter().map(ReplaceJob::from).collect();
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
                    requests.into_iter().map(SplitRequest::from).collect(),
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::model::{Field, PrimitiveType};

    pub(in crate::statestore) fn schema() -> Schema {
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

    pub(in crate::statestore) fn parsed(name: &str) -> Transaction {
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
}
