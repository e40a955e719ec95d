//! An export's status, found in memory that does not hold the export: its manifest is read as
//! a stream, one sub-export at a time, and each leaf is counted, not kept. What stays is an
//! index of the folder's listing (each name once, the data files with their sizes) and the
//! first few leaves of each kind, for people to read: about 120 bytes a leaf, 6 MiB for an
//! export of 50,000 leaves whose manifest alone is 10 MiB of JSON.

use std::collections::{HashMap, HashSet};

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::stream::ManifestHeader;
use super::{ExportRecords, Failure, SubExport, RECORDS_READ_AT_ONCE};
use crate::error::{Error, Result};
use crate::leaf::ExportObject;
use crate::plan::sink::WrittenLeaf;

/// Leaves of each kind that a status lists by name; the rest it counts.
pub const LISTED_BY_DEFAULT: usize = 100;

/// How many things of one kind there are, and the first of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listing<T> {
    pub count: usize,
    pub first: Vec<T>,
    #[serde(skip)]
    limit: usize,
}

impl<T> Listing<T> {
    fn new(limit: usize) -> Self {
        Listing {
            count: 0,
            first: Vec::new(),
            limit,
        }
    }

    fn push(&mut self, item: T) {
        self.push_with(|| item);
    }

    /// Counts one more, making it only if it is one of the first.
    fn push_with(&mut self, item: impl FnOnce() -> T) {
        self.count += 1;
        if self.first.len() < self.limit {
            self.first.push(item());
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Those not listed.
    pub fn not_listed(&self) -> usize {
        self.count - self.first.len()
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportStatus {
    pub manifest: ManifestHeader,
    /// Leaves whose file is there with the size their completion record gives.
    pub done: Listing<WrittenLeaf>,
    pub rows: u64,
    pub bytes: u64,
    pub pending: Listing<SubExport>,
    /// Leaves whose last attempt failed; they are retried until the queue gives up on them.
    pub failed: Listing<Failure>,
    /// Records that do not match the files: an export with any is not complete.
    pub problems: Listing<String>,
    /// Objects in the export's folder that are not its files or records.
    pub unexpected: Listing<String>,
    /// Uploads under the export's folder started and not finished: running leaves, or leaves
    /// whose runner died (a re-run of the leaf removes those).
    pub unfinished_uploads: Listing<String>,
    /// Whether `_SUCCESS` is there.
    pub success_marker: bool,
}

impl ExportStatus {
    pub fn is_complete(&self) -> bool {
        self.pending.is_empty()
            && self.failed.is_empty()
            && self.problems.is_empty()
            && self.unexpected.is_empty()
            && self.unfinished_uploads.is_empty()
    }
}

/// What the folder's listing says about each sub-export, by id.
#[derive(Default)]
struct FolderIndex {
    data_file_sizes: HashMap<String, u64>,
    completions: HashSet<String>,
    failures: HashSet<String>,
}

/// What one sub-export turned out to be.
enum LeafState {
    Done(WrittenLeaf),
    Pending(SubExport),
    Failed(Failure),
    Problem(String),
}

impl ExportRecords {
    /// The export's state, with [`LISTED_BY_DEFAULT`] leaves of each kind listed.
    pub async fn status(&self) -> Result<ExportStatus> {
        self.status_listing(LISTED_BY_DEFAULT, |_| {}).await
    }

    /// The export's state from one listing of its folder, its manifest read as a stream and a
    /// record read for each leaf done or failed; `listed` leaves of each kind are listed, and
    /// each leaf done goes to `on_done`.
    pub async fn status_listing(
        &self,
        listed: usize,
        mut on_done: impl FnMut(WrittenLeaf),
    ) -> Result<ExportStatus> {
        let mut status = ExportStatus {
            manifest: ManifestHeader::default(),
            done: Listing::new(listed),
            rows: 0,
            bytes: 0,
            pending: Listing::new(listed),
            failed: Listing::new(listed),
            problems: Listing::new(listed),
            unexpected: Listing::new(listed),
            unfinished_uploads: Listing::new(listed),
            success_marker: false,
        };
        let mut index = self.index_folder(&mut status).await?;
        let (sub_exports, header) = self.stream_manifest().await?;
        let mut leaves = sub_exports
            .map(|sub_export| {
                let id = &sub_export.sub_export_id;
                let size = index.data_file_sizes.remove(id);
                let completed = index.completions.remove(id);
                let failed = index.failures.remove(id);
                self.leaf_state(sub_export, size, completed, failed)
            })
            .buffered(RECORDS_READ_AT_ONCE);
        while let Some(leaf) = leaves.try_next().await? {
            match leaf {
                LeafState::Done(done) => {
                    status.rows += done.rows_written;
                    status.bytes += done.bytes;
                    status.done.push_with(|| done.clone());
                    on_done(done);
                }
                LeafState::Pending(sub_export) => status.pending.push(sub_export),
                LeafState::Failed(failure) => status.failed.push(failure),
                LeafState::Problem(problem) => status.problems.push(problem),
            }
        }
        drop(leaves);
        status.manifest = header.await.expect("manifest parser panicked")?;
        let mut strays: Vec<String> = index.data_file_sizes.into_keys().collect();
        strays.sort_unstable();
        for id in strays {
            status
                .unexpected
                .push(self.layout.url_of(&self.layout.data_file(&id)));
        }
        let output = self.layout.output();
        for upload in output.unfinished_uploads(&self.layout.folder()).await? {
            status.unfinished_uploads.push(format!(
                "{} ({})",
                output.url_of(&upload.path),
                upload.upload
            ));
        }
        Ok(status)
    }

    /// Streams the folder's listing into an index by sub-export id; objects that cannot be
    /// the export's go to `status` as unexpected.
    async fn index_folder(&self, status: &mut ExportStatus) -> Result<FolderIndex> {
        let layout = &self.layout;
        let folder = layout.folder();
        let mut index = FolderIndex::default();
        let mut listing = self.store().list(Some(&folder));
        while let Some(meta) = listing
            .try_next()
            .await
            .map_err(|e| Error::object_store(layout.url_of(&folder), e))?
        {
            match layout.object(&meta.location) {
                Some(ExportObject::Manifest | ExportObject::CountToken) => {}
                Some(ExportObject::Success) => status.success_marker = true,
                Some(ExportObject::Failed(id)) => {
                    index.failures.insert(id);
                }
                Some(ExportObject::Done(id)) => {
                    index.completions.insert(id);
                }
                Some(ExportObject::DataFile(id)) => {
                    index.data_file_sizes.insert(id, meta.size);
                }
                None => status.unexpected.push(layout.url_of(&meta.location)),
            }
        }
        Ok(index)
    }

    /// Reads what a sub-export needs read to say what it is.
    async fn leaf_state(
        &self,
        sub_export: SubExport,
        size: Option<u64>,
        completed: bool,
        failed: bool,
    ) -> Result<LeafState> {
        let id = &sub_export.sub_export_id;
        if completed {
            // Gone since the listing: the leaf is being run again.
            if let Some(done) = self
                .get_json::<WrittenLeaf>(&self.layout.done_record(id))
                .await?
            {
                return Ok(match size {
                    Some(size) if size == done.bytes => LeafState::Done(done),
                    Some(size) => LeafState::Problem(format!(
                        "{} has {size} bytes, its completion record says {}",
                        done.file, done.bytes
                    )),
                    None => LeafState::Problem(format!(
                        "{} is recorded done but is not there",
                        done.file
                    )),
                });
            }
        }
        if failed {
            if let Some(failure) = self
                .get_json::<Failure>(&self.layout.failure_record(id))
                .await?
            {
                return Ok(LeafState::Failed(failure));
            }
        }
        Ok(LeafState::Pending(sub_export))
    }
}

#[cfg(test)]
mod tests {
    use object_store::{ObjectStoreExt, PutMode};

    use super::super::tests::records_in;
    use super::super::Manifest;
    use super::*;

    fn sub_export(index: usize) -> SubExport {
        SubExport {
            sub_export_id: format!("s{index:03}"),
            leaf_partition_id: format!("leaf-{index}"),
            file: format!("s{index:03}.parquet"),
            region: None,
        }
    }

    async fn put(records: &ExportRecords, path: &object_store::path::Path, bytes: Vec<u8>) {
        records.store().put(path, bytes.into()).await.unwrap();
    }

    /// Of `sub_exports`, 0..140 done; 140..150 recorded done with the wrong size; 150..160
    /// written but not recorded (running); 200..230 failed; the rest pending.
    async fn write_leaves(records: &ExportRecords, sub_exports: &[SubExport]) {
        for (index, sub_export) in sub_exports.iter().enumerate().take(160) {
            let id = &sub_export.sub_export_id;
            put(records, &records.layout.data_file(id), vec![7; index + 1]).await;
            if index < 150 {
                let recorded_bytes = if index < 140 { index + 1 } else { index + 2 };
                let done = WrittenLeaf {
                    leaf_partition_id: sub_export.leaf_partition_id.clone(),
                    sub_export_id: id.clone(),
                    file: records.layout.url_of(&records.layout.data_file(id)),
                    rows_read: 10,
                    rows_written: index as u64,
                    bytes: recorded_bytes as u64,
                    crc32c: String::new(),
                    age_off_clock_millis: None,
                };
                records.record_completion(&done, 0).await.unwrap();
            }
        }
        for sub_export in &sub_exports[200..230] {
            let failure = Failure {
                sub_export_id: sub_export.sub_export_id.clone(),
                leaf_partition_id: sub_export.leaf_partition_id.clone(),
                error: "boom".into(),
            };
            let path = records.layout.failure_record(&sub_export.sub_export_id);
            records
                .put_json(&path, &failure, PutMode::Create)
                .await
                .unwrap();
        }
    }

    /// 250 leaves of every kind, listed 10 at a time: each kind is counted whole, the first
    /// ten of each named in the manifest's order, and every leaf done reaches the callback.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_status_counts_every_leaf_and_names_the_first_of_each_kind() {
        let dir = tempfile::tempdir().unwrap();
        let records = records_in(&dir);
        let sub_exports: Vec<SubExport> = (0..250).map(sub_export).collect();
        let mut manifest = serde_json::to_value(Manifest {
            table_id: "t".into(),
            export_id: "e".into(),
            split_digest: "d".into(),
            state_version: None,
            sql_query: Some("SELECT * FROM t".into()),
            sub_exports: sub_exports.clone(),
        })
        .unwrap();
        // A field a later version writes is read past, before and after the sub-exports.
        manifest["aLaterField"] = serde_json::json!({"nested": [1, 2, 3]});
        records
            .put_json(&records.layout.manifest(), &manifest, PutMode::Create)
            .await
            .unwrap();
        write_leaves(&records, &sub_exports).await;
        put(&records, &records.layout.data_file("stray"), vec![1]).await;
        put(
            &records,
            &records.layout.output().child("t/e/notes.txt"),
            vec![1],
        )
        .await;

        let mut done_ids = Vec::new();
        let status = records
            .status_listing(10, |done| done_ids.push(done.sub_export_id))
            .await
            .unwrap();

        assert_eq!(status.manifest.sub_exports, 250);
        assert_eq!(
            status.manifest.sql_query.as_deref(),
            Some("SELECT * FROM t")
        );
        assert_eq!(status.done.len(), 140);
        assert_eq!(status.done.first.len(), 10);
        assert_eq!(status.rows, (0..140).sum::<u64>());
        assert_eq!(status.bytes, (1..=140).sum::<u64>());
        let expected_done: Vec<String> = (0..140).map(|i| sub_export(i).sub_export_id).collect();
        assert_eq!(done_ids, expected_done);
        let pending: Vec<usize> = (150..200).chain(230..250).collect();
        assert_eq!(status.pending.count, pending.len());
        assert_eq!(
            status.pending.first,
            pending[..10]
                .iter()
                .map(|&i| sub_export(i))
                .collect::<Vec<_>>()
        );
        assert_eq!(status.pending.not_listed(), pending.len() - 10);
        assert_eq!((status.failed.count, status.failed.first.len()), (30, 10));
        assert_eq!(status.failed.first[0].sub_export_id, "s200");
        assert_eq!(status.problems.count, 10);
        assert!(
            status.problems.first[0]
                .ends_with("s140.parquet has 141 bytes, its completion record says 142"),
            "{:?}",
            status.problems.first
        );
        let mut unexpected = status.unexpected.first.clone();
        unexpected.sort();
        assert_eq!(
            unexpected,
            vec![
                records
                    .layout
                    .url_of(&records.layout.output().child("t/e/notes.txt")),
                records.layout.url_of(&records.layout.data_file("stray")),
            ]
        );
        assert!(!status.is_complete() && !status.success_marker);
    }

    /// A manifest cut short is bad JSON, named as the manifest, not an I/O failure; a missing
    /// one names the export's folder.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_truncated_or_missing_manifest_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let records = records_in(&dir);
        let missing = records.status().await.unwrap_err().to_string();
        assert!(
            missing.contains("no manifest for export e of table t"),
            "{missing}"
        );

        let whole = serde_json::to_string(&Manifest {
            table_id: "t".into(),
            export_id: "e".into(),
            split_digest: "d".into(),
            state_version: None,
            sql_query: None,
            sub_exports: (0..3).map(sub_export).collect(),
        })
        .unwrap();
        let cut = whole.as_bytes()[..whole.len() - 40].to_vec();
        put(&records, &records.layout.manifest(), cut).await;
        let error = records.status().await.unwrap_err();
        assert!(
            matches!(
                error,
                Error::Json {
                    what: "export manifest",
                    ..
                }
            ),
            "{error}"
        );
    }
}
