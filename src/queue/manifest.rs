//! Export status, which Sleeper lacks (its issue #5115): the planner writes a manifest of the
//! expected files, each runner records its leaf's completion (rows, bytes, CRC32C) or failure
//! beside it, and anyone can tell whether an export is complete:
//!
//! ```text
//! <output>/<tableId>/<exportId>/manifest.json
//! <output>/<tableId>/<exportId>/status/<subExportId>.json          done
//! <output>/<tableId>/<exportId>/status/<subExportId>.failed.json   last failure, until done
//! ```
//!
//! Complete means every file of the manifest has a completion record and exists with exactly the
//! recorded size: a reader that checks this reads whole files only.

use std::collections::HashMap;

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::export::LeafExportResult;
use crate::query::BulkExportLeafPartitionQuery;
use crate::statestore::{read_all, StateVersion};
use crate::storage::Location;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub table_id: String,
    pub export_id: String,
    pub sub_exports: Vec<SubExport>,
    /// The state-store transactions the split was made from, for a table with a transaction log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_version: Option<StateVersion>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubExport {
    pub sub_export_id: String,
    pub leaf_partition_id: String,
    pub file: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Completion {
    pub sub_export_id: String,
    pub leaf_partition_id: String,
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    pub crc32c: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub sub_export_id: String,
    pub leaf_partition_id: String,
    pub error: String,
}

/// Where one export's files and records live.
#[derive(Debug, Clone)]
pub struct ExportRecords {
    root: Location,
    table_id: String,
    export_id: String,
}

impl ExportRecords {
    pub fn new(output: &Location, table_id: &str, export_id: &str) -> Self {
        ExportRecords {
            root: output.clone(),
            table_id: table_id.into(),
            export_id: export_id.into(),
        }
    }

    fn path(&self, relative: &str) -> Path {
        self.root
            .child(&format!("{}/{}/{relative}", self.table_id, self.export_id))
    }

    async fn put_json(&self, relative: &str, value: &impl Serialize) -> Result<()> {
        let path = self.path(relative);
        let json = serde_json::to_vec_pretty(value).expect("records always serialise");
        self.root
            .store
            .put(&path, PutPayload::from(json))
            .await
            .map_err(|e| Error::object_store(self.root.url_of(&path), e))?;
        Ok(())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &Path) -> Result<Option<T>> {
        let url = self.root.url_of(path);
        match read_all(self.root.store.as_ref(), path).await {
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

    /// Written before any leaf query is sent, so status never misses a leaf.
    pub async fn write_manifest(
        &self,
        queries: &[BulkExportLeafPartitionQuery],
        state_version: Option<StateVersion>,
    ) -> Result<()> {
        let manifest = Manifest {
            state_version,
            table_id: self.table_id.clone(),
            export_id: self.export_id.clone(),
            sub_exports: queries
                .iter()
                .map(|q| SubExport {
                    sub_export_id: q.sub_export_id.clone(),
                    leaf_partition_id: q.leaf_partition_id.clone(),
                    file: self.root.url_of(&crate::export::output_path(
                        &self.root,
                        &q.table_id,
                        &q.export_id,
                        &q.sub_export_id,
                    )),
                })
                .collect(),
        };
        self.put_json("manifest.json", &manifest).await
    }

    pub async fn record_completion(&self, result: &LeafExportResult) -> Result<()> {
        let completion = Completion {
            sub_export_id: result.sub_export_id.clone(),
            leaf_partition_id: result.leaf_partition_id.clone(),
            file: result.file.clone(),
            rows: result.rows_written,
            bytes: result.bytes,
            crc32c: result.crc32c.clone(),
        };
        self.put_json(
            &format!("status/{}.json", result.sub_export_id),
            &completion,
        )
        .await?;
        let failed = self.path(&format!("status/{}.failed.json", result.sub_export_id));
        match self.root.store.delete(&failed).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::object_store(self.root.url_of(&failed), e)),
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
        self.put_json(
            &format!("status/{}.failed.json", query.sub_export_id),
            &failure,
        )
        .await
    }

    /// The export's manifest, if it has been planned.
    pub async fn manifest(&self) -> Result<Option<Manifest>> {
        self.get_json(&self.path("manifest.json")).await
    }

    pub async fn status(&self) -> Result<ExportStatus> {
        let manifest: Manifest = self.manifest().await?.ok_or_else(|| Error::Location {
            location: self.root.url_of(&self.path("")),
            message: format!(
                "no manifest for export {} of table {}",
                self.export_id, self.table_id
            ),
        })?;
        let status_dir = self.path("status");
        let listed = self.root.list(&status_dir).await?;
        let mut completions = HashMap::new();
        let mut failures = HashMap::new();
        for meta in listed {
            let name = meta.location.filename().unwrap_or_default().to_owned();
            if let Some(id) = name.strip_suffix(".failed.json") {
                if let Some(failure) = self.get_json::<Failure>(&meta.location).await? {
                    failures.insert(id.to_owned(), failure);
                }
            } else if let Some(id) = name.strip_suffix(".json") {
                if let Some(completion) = self.get_json::<Completion>(&meta.location).await? {
                    completions.insert(id.to_owned(), completion);
                }
            }
        }
        let mut status = ExportStatus {
            manifest: manifest.clone(),
            ..ExportStatus::default()
        };
        for sub_export in manifest.sub_exports {
            match completions.remove(&sub_export.sub_export_id) {
                Some(completion) => {
                    let file = self
                        .root
                        .store
                        .head(&self.path(&format!("{}.parquet", sub_export.sub_export_id)))
                        .await;
                    match file {
                        Ok(meta) if meta.size == completion.bytes => status.done.push(completion),
                        Ok(meta) => status.problems.push(format!(
                            "{} has {} bytes, its completion record says {}",
                            completion.file, meta.size, completion.bytes
                        )),
                        Err(e) => status.problems.push(format!(
                            "{} is recorded done but cannot be read: {e}",
                            completion.file
                        )),
                    }
                }
                None => match failures.remove(&sub_export.sub_export_id) {
                    Some(failure) => status.failed.push(failure),
                    None => status.pending.push(sub_export),
                },
            }
        }
        Ok(status)
    }
}

#[derive(Debug, Clone, Default)]
pub struct ExportStatus {
    pub manifest: Manifest,
    pub done: Vec<Completion>,
    pub pending: Vec<SubExport>,
    /// Leaves whose last attempt failed; they are retried until the queue gives up on them.
    pub failed: Vec<Failure>,
    /// Records that do not match the files: an export with any is not complete.
    pub problems: Vec<String>,
}

impl ExportStatus {
    pub fn is_complete(&self) -> bool {
        self.pending.is_empty() && self.failed.is_empty() && self.problems.is_empty()
    }
}
