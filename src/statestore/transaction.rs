//! Sleeper's state-store transactions (the bodies of its transaction log, as JSON) and the table
//! state they build: partitions, and files with their partition references.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::{FileReference, Partition, Region, Schema};

/// One transaction of a table's file or partition log.
#[derive(Debug, Clone, PartialEq)]
pub enum Transaction {
    AddFiles(Vec<(String, Vec<FileReference>)>),
    /// Assigns compaction jobs to file references (its requests as written): it changes
    /// nothing an export reads.
    AssignJobIds(Value),
    ClearFiles,
    DeleteFiles(Vec<String>),
    InitialisePartitions(Vec<Partition>),
    /// Compaction results: each job's input references on its partition give way to its output.
    ReplaceFileReferences(Vec<(Vec<String>, FileReference)>),
    /// Each old reference is replaced by references on the partition's children.
    SplitFileReferences(Vec<(FileReference, Vec<FileReference>)>),
    SplitPartition {
        parent: Partition,
        children: Vec<Partition>,
    },
    ExtendPartitionTree {
        updated: Vec<Partition>,
        added: Vec<Partition>,
    },
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
struct AssignJobIdsJson {
    requests: Vec<Value>,
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
                        .map(|file| {
                            let references = file
                                .references
                                .into_iter()
                                .map(|r| r.into_file(file.filename.clone()))
                                .collect();
                            (file.filename, references)
                        })
                        .collect(),
                )
            }
            "ASSIGN_JOB_IDS" => Transaction::AssignJobIds(Value::Array(
                parse::<AssignJobIdsJson>(value, &bad)?.requests,
            )),
            "CLEAR_FILES" => Transaction::ClearFiles,
            "DELETE_FILES" => Transaction::DeleteFiles(parse(field("filenames"), &bad)?),
            "INITIALISE_PARTITIONS" => Transaction::InitialisePartitions(partitions_from(
                parse(field("partitions"), &bad)?,
                schema,
            )?),
            "REPLACE_FILE_REFERENCES" => {
                let jobs: Vec<ReplaceJobJson> = parse(field("jobs"), &bad)?;
                Transaction::ReplaceFileReferences(
                    jobs.into_iter()
                        .map(|job| (job.input_files, job.new_reference.into()))
                        .collect(),
                )
            }
            "SPLIT_FILE_REFERENCES" => {
                let requests: Vec<SplitRequestJson> = parse(field("requests"), &bad)?;
                Transaction::SplitFileReferences(
                    requests
                        .into_iter()
                        .map(|r| {
                            (
                                r.old_reference.into(),
                                r.new_references.into_iter().map(Into::into).collect(),
                            )
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

    /// The JSON body Sleeper writes for this transaction (compaction job ids are not kept: each
    /// `REPLACE_FILE_REFERENCES` job is written as `job`).
    pub fn to_json(&self, schema: &Schema) -> String {
        let value = match self {
            Transaction::AddFiles(files) => serde_json::json!({
                "files": files
                    .iter()
                    .map(|(filename, references)| FileJson {
                        filename: filename.clone(),
                        references: references.iter().map(PartitionReferenceJson::of).collect(),
                    })
                    .collect::<Vec<_>>()
            }),
            Transaction::AssignJobIds(requests) => serde_json::json!({ "requests": requests }),
            Transaction::ClearFiles => serde_json::json!({}),
            Transaction::DeleteFiles(filenames) => serde_json::json!({ "filenames": filenames }),
            Transaction::InitialisePartitions(partitions) => {
                serde_json::json!({ "partitions": partitions_json(partitions, schema) })
            }
            Transaction::ReplaceFileReferences(jobs) => serde_json::json!({
                "jobs": jobs
                    .iter()
                    .map(|(inputs, output)| ReplaceJobJson {
                        job_id: "job".into(),
                        task_id: None,
                        job_run_id: None,
                        input_files: inputs.clone(),
                        new_reference: output.into(),
                    })
                    .collect::<Vec<_>>()
            }),
            Transaction::SplitFileReferences(requests) => serde_json::json!({
                "requests": requests
                    .iter()
                    .map(|(old, new)| SplitRequestJson {
                        old_reference: old.into(),
                        new_references: references_json(new),
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

/// Partitions and files of a table, built from a snapshot and the transactions after it. Both
/// keep the order things were added in, as Sleeper's state does: file order breaks ties between
/// equal keys in an export.
#[derive(Debug, Clone, Default)]
pub struct TableState {
    partitions: Vec<Option<Partition>>,
    partition_index: HashMap<String, usize>,
    /// Every file the state knows, with its references (none once replaced, until deleted).
    files: Vec<Option<(String, Vec<FileReference>)>>,
    file_index: HashMap<String, usize>,
}

impl TableState {
    pub fn new(partitions: Vec<Partition>, references: Vec<FileReference>) -> Self {
        let mut state = TableState::default();
        state.set_partitions(partitions);
        for reference in references {
            state.file_entry(&reference.filename).push(reference);
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

    fn file_entry(&mut self, filename: &str) -> &mut Vec<FileReference> {
        let position = match self.file_index.get(filename) {
            Some(&position) => position,
            None => {
                self.file_index
                    .insert(filename.to_owned(), self.files.len());
                self.files.push(Some((filename.to_owned(), Vec::new())));
                self.files.len() - 1
            }
        };
        &mut self.files[position]
            .as_mut()
            .expect("indexed files are present")
            .1
    }

    fn remove_reference(&mut self, filename: &str, partition_id: &str) {
        if let Some(&position) = self.file_index.get(filename) {
            if let Some((_, references)) = &mut self.files[position] {
                references.retain(|r| r.partition_id != partition_id);
            }
        }
    }

    fn remove_file(&mut self, filename: &str) {
        if let Some(position) = self.file_index.remove(filename) {
            self.files[position] = None;
        }
    }

    pub fn apply(&mut self, transaction: Transaction) {
        match transaction {
            Transaction::AddFiles(files) => {
                for (filename, references) in files {
                    *self.file_entry(&filename) = references;
                }
            }
            Transaction::AssignJobIds(_) => {}
            Transaction::ClearFiles => {
                self.files.clear();
                self.file_index.clear();
            }
            Transaction::DeleteFiles(filenames) => {
                for filename in filenames {
                    self.remove_file(&filename);
                }
            }
            Transaction::InitialisePartitions(partitions) => self.set_partitions(partitions),
            Transaction::ReplaceFileReferences(jobs) => {
                for (inputs, output) in jobs {
                    for input in &inputs {
                        self.remove_reference(input, &output.partition_id);
                    }
                    let filename = output.filename.clone();
                    *self.file_entry(&filename) = vec![output];
                }
            }
            Transaction::SplitFileReferences(requests) => {
                for (old, new) in requests {
                    self.remove_reference(&old.filename, &old.partition_id);
                    self.file_entry(&old.filename).extend(new);
                }
            }
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
    }

    pub fn partitions(&self) -> Vec<Partition> {
        self.partitions.iter().flatten().cloned().collect()
    }

    /// Every partition reference of every file, in file order.
    pub fn file_references(&self) -> Vec<FileReference> {
        self.files
            .iter()
            .flatten()
            .flat_map(|(_, references)| references.iter().cloned())
            .collect()
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
    fn every_fixture_parses_and_writes_back_what_it_read() {
        for (name, kind) in FIXTURES {
            let transaction = Transaction::from_json(kind, &fixture(name), &schema())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(transaction.type_name(), kind);
            let again = Transaction::from_json(kind, &transaction.to_json(&schema()), &schema())
                .unwrap_or_else(|e| panic!("{name} written back: {e}"));
            assert_eq!(again, transaction, "{name}");
        }
        let error = Transaction::from_json("MERGE_FILES", "{}", &schema()).unwrap_err();
        assert!(
            error.to_string().contains("EXTEND_PARTITION_TREE"),
            "{error}"
        );
    }

    /// The fixtures in the order Sleeper could have committed them: the tree, files on the root,
    /// a compaction, a split of the root's files to L and R, a split of L, garbage collection.
    #[test]
    fn transactions_fold_into_the_state_they_describe() {
        let mut state = TableState::default();
        state.apply(parsed("InitialisePartitions"));
        let leaves = |state: &TableState| {
            let mut ids: Vec<String> = state
                .partitions()
                .into_iter()
                .filter(|p| p.is_leaf)
                .map(|p| p.id)
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(leaves(&state), ["LL", "LR", "RL", "RR"]);
        let references = |state: &TableState| {
            state
                .file_references()
                .into_iter()
                .map(|r| {
                    let name = r.filename.rsplit('/').next().unwrap().to_owned();
                    format!("{name}@{}", r.partition_id)
                })
                .collect::<Vec<_>>()
        };

        state.apply(parsed("AddFiles"));
        assert_eq!(
            references(&state),
            ["file1.parquet@root", "file2.parquet@root"]
        );
        state.apply(parsed("AssignJobIds"));
        state.apply(parsed("ReplaceFileReferences"));
        assert_eq!(references(&state), ["file3.parquet@root"]);
        state.apply(parsed("DeleteFiles"));
        assert_eq!(references(&state), ["file3.parquet@root"]);

        let mut split = TableState::default();
        split.apply(parsed("AddFiles"));
        split.apply(parsed("SplitFileReferences"));
        // The fixture splits file2 on L, where it is not: nothing to remove there.
        assert_eq!(
            references(&split),
            [
                "file1.parquet@L",
                "file1.parquet@R",
                "file2.parquet@root",
                "file2.parquet@LL",
                "file2.parquet@LR"
            ]
        );
        split.apply(parsed("AddSplitFile"));
        assert_eq!(references(&split).len(), 7);
        split.apply(parsed("ClearFiles"));
        assert!(references(&split).is_empty());

        let mut tree = TableState::default();
        tree.apply(parsed("InitialisePartitions"));
        tree.apply(parsed("SplitPartition"));
        tree.apply(parsed("ExtendPartitionTree"));
        assert_eq!(leaves(&tree), ["LL", "LRL", "LRR", "RL", "RR"]);
        let lr = tree
            .partitions()
            .into_iter()
            .find(|p| p.id == "LR")
            .unwrap();
        assert!(!lr.is_leaf);
        assert_eq!(lr.child_ids, ["LRL", "LRR"]);
    }
}
