//! A table's state, built from snapshots and the transactions after them, applied exactly as
//! Sleeper applies them (`TransactionLogHead` and each
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

use super::transaction::{AssignJobIdRequest, Log, ReplaceJob, Transaction};
use crate::error::{Error, Result};
use crate::model::partition::sort_as_sleeper;
use crate::model::{FileReference, Partition, StateFile};

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

    /// Gives each request's files, on its partition, its job.
    fn assign_job_ids(&mut self, requests: Vec<AssignJobIdRequest>) -> Result<()> {
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
        Ok(())
    }

    /// Applies each compaction commit that still applies; Sleeper skips the others too.
    fn replace_file_references(&mut self, jobs: Vec<ReplaceJob>) {
        for job in jobs {
            if let Err(reason) = self.replacement_applies(&job) {
                tracing::debug!("skipping compaction commit of job {}: {reason}", job.job_id);
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
            Transaction::AssignJobIds(requests) => self.assign_job_ids(requests)?,
            Transaction::ClearFiles => self.files.clear(),
            Transaction::DeleteFiles(filenames) => {
                for filename in filenames {
                    self.files.remove(&filename);
                }
            }
            Transaction::ReplaceFileReferences(jobs) => self.replace_file_references(jobs),
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
    use super::super::transaction::tests::{parsed, schema};
    use super::super::transaction::SplitRequest;
    use super::*;

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
