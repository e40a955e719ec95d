//! Export status, which Sleeper lacks (its issue #5115): the planner writes a manifest of the
//! expected files, each runner records its leaf's completion (rows, bytes, CRC32C) or failure
//! beside it, and whichever runner records the last leaf writes a completion marker, each where
//! [`ExportLayout`] puts it.
//!
//! Complete means every file of the manifest has a completion record and exists with exactly the
//! recorded size, and the folder holds nothing else: a reader that checks this reads whole files
//! only, and all of them.

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::leaf::ExportLayout;
use crate::model::{Schema, StateVersion};
use crate::plan::sink::WrittenLeaf;
use crate::query::BulkExportLeafPartitionQuery;
use crate::storage::{read_all, Location};

mod status;
mod stream;
pub use status::{ExportStatus, Listing, LISTED_BY_DEFAULT};
pub use stream::ManifestHeader;

/// Status records read at once: each is a round trip to the store.
const RECORDS_READ_AT_ONCE: usize = 32;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub table_id: String,
    pub export_id: String,
    /// What the leaf queries were made from (each leaf and its files): a second planning pass
    /// of the export repeats the first only if the table still splits the same way.
    pub split_digest: String,
    /// The state-store transactions the split was made from, for a table with a transaction log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_version: Option<StateVersion>,
    /// The SQL each leaf's rows went through, if any (`sqlQuery`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql_query: Option<String>,
    pub sub_exports: Vec<SubExport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubExport {
    pub sub_export_id: String,
    pub leaf_partition_id: String,
    pub file: String,
    /// For a piece of a leaf cut into key ranges (`--max-rows-per-file`), its range, as
    /// Sleeper's Region JSON: a leaf's files, read in the manifest's order, are its export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub sub_export_id: String,
    pub leaf_partition_id: String,
    pub error: String,
}

/// What `_SUCCESS` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportSuccess {
    pub table_id: String,
    pub export_id: String,
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_version: Option<StateVersion>,
}

/// Whether a leaf query exports part of its leaf, not the whole.
fn is_piece(query: &BulkExportLeafPartitionQuery) -> bool {
    query.regions != [query.partition_region.clone()]
}

/// Each leaf and its input files, in order, hashed: equal for two splits of the same state.
pub fn split_digest(queries: &[BulkExportLeafPartitionQuery]) -> String {
    let mut hash = Sha256::new();
    for query in queries {
        // Lengths first, so that no two different splits hash the same bytes.
        hash.update((query.leaf_partition_id.len() as u64).to_le_bytes());
        hash.update(&query.leaf_partition_id);
        hash.update((query.files.len() as u64).to_le_bytes());
        for file in &query.files {
            hash.update((file.len() as u64).to_le_bytes());
            hash.update(file);
        }
        if is_piece(query) {
            // Marked apart from a next leaf's length; a whole leaf hashes as it always has.
            hash.update(u64::MAX.to_le_bytes());
            for region in &query.regions {
                let text = region.to_string();
                hash.update((text.len() as u64).to_le_bytes());
                hash.update(text);
            }
        }
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// One export's records, read and written where its layout puts them.
#[derive(Debug, Clone)]
pub struct ExportRecords {
    layout: ExportLayout,
}

impl ExportRecords {
    pub fn new(output: &Location, table_id: &str, export_id: &str) -> Self {
        ExportRecords {
            layout: ExportLayout::new(output, table_id, export_id),
        }
    }

    pub fn layout(&self) -> &ExportLayout {
        &self.layout
    }

    fn store(&self) -> &dyn ObjectStore {
        self.layout.output().store.as_ref()
    }

    async fn put_json(&self, path: &Path, value: &impl Serialize, mode: PutMode) -> Result<()> {
        let json = serde_json::to_vec_pretty(value).expect("records always serialise");
        self.store()
            .put_opts(path, PutPayload::from(json), PutOptions::from(mode))
            .await
            .map_err(|e| Error::object_store(self.layout.url_of(path), e))?;
        Ok(())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &Path) -> Result<Option<T>> {
        let url = self.layout.url_of(path);
        match read_all(self.store(), path).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| Error::Json {
                    what: "export record",
                    source,
                }),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::object_store(url, e)),
        }
    }

    /// The manifest of `queries`.
    pub fn manifest_of(
        &self,
        queries: &[BulkExportLeafPartitionQuery],
        schema: &Schema,
        state_version: Option<StateVersion>,
    ) -> Manifest {
        Manifest {
            table_id: self.layout.table_id().to_owned(),
            export_id: self.layout.export_id().to_owned(),
            split_digest: split_digest(queries),
            state_version,
            // One query's SQL is every leaf's.
            sql_query: queries.first().and_then(|q| q.sql_query.clone()),
            sub_exports: queries
                .iter()
                .map(|q| SubExport {
                    sub_export_id: q.sub_export_id.clone(),
                    leaf_partition_id: q.leaf_partition_id.clone(),
                    file: self.layout.url_of(&self.layout.data_file(&q.sub_export_id)),
                    region: is_piece(q).then(|| match q.regions.as_slice() {
                        [region] => region.to_json(schema),
                        regions => regions.iter().map(|r| r.to_json(schema)).collect(),
                    }),
                })
                .collect(),
        }
    }

    /// Writes `manifest` unless the export already has one, which it then returns: of two
    /// planning passes of the same export, however close together, one manifest wins.
    /// Written before any leaf query is sent, so status never misses a leaf.
    pub async fn create_manifest(&self, manifest: &Manifest) -> Result<Option<Manifest>> {
        match self
            .put_json(&self.layout.manifest(), manifest, PutMode::Create)
            .await
        {
            Ok(()) => Ok(None),
            Err(Error::ObjectStore {
                source: object_store::Error::AlreadyExists { .. },
                ..
            }) => self.manifest().await?.map(Some).ok_or_else(|| {
                Error::location(
                    self.layout.url_of(&self.layout.manifest()),
                    "the manifest exists but cannot be read back",
                )
            }),
            Err(e) => Err(e),
        }
    }

    /// Records a leaf done, then counts it: returns how many completions are counted now, so
    /// that whoever counts the manifest's last leaf looks whether the export is complete, and
    /// nobody else lists anything. `hint` is a count seen before (0 when none was).
    ///
    /// The count comes after the record, so that the caller whose count reaches the number of
    /// leaves finds every leaf's record. A caller that dies between the two leaves its message
    /// undeleted: the leaf is delivered again and counted then. One that dies after counting,
    /// before deleting its message, counts its leaf twice when it is delivered again: the count
    /// then reaches the number of leaves early, and each leaf recorded after that looks at the
    /// whole export until it is complete, which costs listings but never a wrong `_SUCCESS`.
    pub async fn record_completion(&self, result: &WrittenLeaf, hint: usize) -> Result<usize> {
        let done = self.layout.done_record(&result.sub_export_id);
        self.put_json(&done, result, PutMode::Overwrite).await?;
        let failed = self.layout.failure_record(&result.sub_export_id);
        match self.store().delete(&failed).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::object_store(self.layout.url_of(&failed), e)),
        }
        self.count_completion(hint).await
    }

    /// One more completion, counted as the first missing token of `_status/_count/0, 1, 2, …`,
    /// created with a conditional put (the only kind every store offers: S3, local disks): the
    /// tokens are always `0..count`, so the first missing one is found by galloping from `hint`
    /// and bisecting, about 2·log₂ of the completions since `hint` requests, and a runner that
    /// keeps its hint pays a constant few per leaf however many leaves the export has.
    async fn count_completion(&self, hint: usize) -> Result<usize> {
        let mut known = hint;
        loop {
            let missing = self.first_missing_token(known).await?;
            let token = self.layout.count_token(missing);
            match self
                .store()
                .put_opts(&token, PutPayload::new(), PutOptions::from(PutMode::Create))
                .await
            {
                Ok(_) => return Ok(missing + 1),
                // Another leaf took it: ours is a later one.
                Err(object_store::Error::AlreadyExists { .. }) => known = missing + 1,
                Err(e) => return Err(Error::object_store(self.layout.url_of(&token), e)),
            }
        }
    }

    /// The first count token missing, given that those below `from` exist.
    async fn first_missing_token(&self, from: usize) -> Result<usize> {
        let (mut present, mut step) = (from, 1);
        let mut missing = from;
        while self.token_exists(missing).await? {
            present = missing + 1;
            missing = present + step;
            step *= 2;
        }
        // Tokens below `present` exist, `missing` does not: bisect between them.
        while present < missing {
            let middle = present + (missing - present) / 2;
            if self.token_exists(middle).await? {
                present = middle + 1;
            } else {
                missing = middle;
            }
        }
        Ok(missing)
    }

    async fn token_exists(&self, index: usize) -> Result<bool> {
        let token = self.layout.count_token(index);
        match self.store().head(&token).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Error::object_store(self.layout.url_of(&token), e)),
        }
    }

    pub async fn record_failure(
        &self,
        query: &BulkExportLeafPartitionQuery,
        error: &Error,
    ) -> Result<()> {
        let failure = Failure {
            sub_export_id: query.sub_export_id.clone(),
            leaf_partition_id: query.leaf_partition_id.clone(),
            error: error.to_string(),
        };
        let path = self.layout.failure_record(&query.sub_export_id);
        self.put_json(&path, &failure, PutMode::Overwrite).await
    }

    /// The export's manifest, if it has been planned.
    pub async fn manifest(&self) -> Result<Option<Manifest>> {
        self.get_json(&self.layout.manifest()).await
    }

    /// Writes `_SUCCESS` if the export is complete and it is not there yet; whichever caller
    /// gets there first writes it, once. Returns the status it decided on.
    pub async fn mark_if_complete(&self) -> Result<ExportStatus> {
        self.mark_if_complete_with(|_| {}).await
    }

    /// As [`Self::mark_if_complete`], with each leaf done going to `on_done`.
    pub async fn mark_if_complete_with(
        &self,
        on_done: impl FnMut(WrittenLeaf),
    ) -> Result<ExportStatus> {
        let mut status = self.status_listing(LISTED_BY_DEFAULT, on_done).await?;
        if status.is_complete() && !status.success_marker {
            let success = ExportSuccess {
                table_id: self.layout.table_id().to_owned(),
                export_id: self.layout.export_id().to_owned(),
                files: status.done.len(),
                rows: status.rows,
                bytes: status.bytes,
                state_version: status.manifest.state_version,
            };
            match self
                .put_json(&self.layout.success(), &success, PutMode::Create)
                .await
            {
                Ok(())
                | Err(Error::ObjectStore {
                    source: object_store::Error::AlreadyExists { .. },
                    ..
                }) => status.success_marker = true,
                Err(e) => return Err(e),
            }
        }
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records of export `e` of table `t` in `dir`.
    pub(super) fn records_in(dir: &tempfile::TempDir) -> ExportRecords {
        let output = crate::storage::Stores::default()
            .resolve(dir.path().to_str().unwrap())
            .unwrap();
        ExportRecords::new(&output, "t", "e")
    }

    fn leaf(sub_export_id: String) -> WrittenLeaf {
        WrittenLeaf {
            leaf_partition_id: format!("leaf-{sub_export_id}"),
            file: format!("{sub_export_id}.parquet"),
            sub_export_id,
            rows_read: 0,
            rows_written: 0,
            bytes: 0,
            crc32c: String::new(),
            age_off_clock_millis: None,
        }
    }

    /// Runners counting at once, each keeping its last count as its hint: every completion gets
    /// its own count, the counts are exactly 1..=n, and so exactly one runner sees n.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn completions_counted_at_once_are_each_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let records = records_in(&dir);
        let (runners, leaves_each) = (6, 20);
        let mut running = tokio::task::JoinSet::new();
        for runner in 0..runners {
            let records = records.clone();
            running.spawn(async move {
                let mut hint = 0;
                let mut counts = Vec::new();
                for leaf_index in 0..leaves_each {
                    let done = leaf(format!("{runner}-{leaf_index}"));
                    hint = records.record_completion(&done, hint).await.unwrap();
                    counts.push(hint);
                }
                counts
            });
        }
        let mut counts: Vec<usize> = running.join_all().await.into_iter().flatten().collect();
        counts.sort_unstable();
        assert_eq!(counts, (1..=runners * leaves_each).collect::<Vec<_>>());
        // A runner that starts with no hint finds the count from the tokens alone.
        let fresh = records
            .record_completion(&leaf("late".into()), 0)
            .await
            .unwrap();
        assert_eq!(fresh, runners * leaves_each + 1);
    }
}
