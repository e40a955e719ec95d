//! Reading a Parquet file through `object_store`: its footer in one request, and its pages in
//! the spans a window asks for. A file's decoded footer is kept in DataFusion's file-metadata
//! cache, whose limit (`datafusion.runtime.metadata_cache_limit`, 50 MiB by default) bounds what
//! it holds: the pieces of a cut leaf open the same files one after another, and decoding the
//! footer and page index of a file of many row groups for each piece cost a tenth of the
//! pieces' time (`benches/cut_pieces.rs`).

use std::any::Any;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::common::HashMap;
use datafusion::execution::cache::cache_manager::{
    CachedFileMetadataEntry, FileMetadata, FileMetadataCache,
};
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::errors::{ParquetError, Result as ParquetResult};
use datafusion::parquet::file::metadata::{
    PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStoreExt};
use tokio::sync::Semaphore;

/// Reads a Parquet file through `object_store`. Its size is never asked for: the first request
/// reads the file's last bytes, whose answer gives the size, so opening a file is one request
/// (two where its metadata and page index reach further back), not a HEAD and then a read.
#[derive(Clone)]
pub(super) struct ObjectFileReader {
    store: Arc<dyn object_store::ObjectStore>,
    path: object_store::path::Path,
    requests: Arc<Semaphore>,
    /// Whether a window's spans are asked for in one call (see `get_spans`).
    spans_together: bool,
    footers: Option<FooterCache>,
}

/// Where a file's decoded footer is cached, and under which key: the file's URL and the page
/// indexes decoded with it.
#[derive(Clone)]
struct FooterCache {
    cache: Arc<FileMetadataCache>,
    url: String,
}

impl FooterCache {
    fn key(&self, options: Option<&ArrowReaderOptions>) -> Path {
        let policy = |p: PageIndexPolicy| match p {
            PageIndexPolicy::Skip => "skip",
            PageIndexPolicy::Optional => "optional",
            PageIndexPolicy::Required => "required",
        };
        let (offsets, columns) = options.map_or(("skip", "skip"), |o| {
            (
                policy(o.offset_index_policy()),
                policy(o.column_index_policy()),
            )
        });
        Path::from_iter([
            "sleeper-export-footer",
            &format!("offsets-{offsets}-columns-{columns}"),
            &self.url,
        ])
    }
}

/// A decoded footer, as the cache holds it.
struct Footer(Arc<ParquetMetaData>);

impl FileMetadata for Footer {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn memory_size(&self) -> usize {
        self.0.memory_size()
    }

    fn extra_info(&self) -> HashMap<String, String> {
        HashMap::new()
    }
}

impl ObjectFileReader {
    pub(super) fn new(
        store: Arc<dyn object_store::ObjectStore>,
        path: object_store::path::Path,
        requests: Arc<Semaphore>,
    ) -> Self {
        ObjectFileReader {
            store,
            path,
            requests,
            spans_together: false,
            footers: None,
        }
    }

    /// Keeps the file's decoded footer in `cache` under its `url`, and takes it from there
    /// while the file's size and modification time are those it was decoded at (Sleeper never
    /// rewrites a file, but a store could hold another under the same name).
    pub(super) fn caching_footer(mut self, cache: Arc<FileMetadataCache>, url: &str) -> Self {
        self.footers = Some(FooterCache {
            cache,
            url: url.to_owned(),
        });
        self
    }

    /// For a file on local disk, whose store reads the ranges of one call exactly, one after
    /// another (object_store's local store: one blocking task per call, where each range asked
    /// for alone is two, its open and its read; at 128 files that was 9,000 tasks handed to
    /// the blocking pool per 10 M rows, each waking a thread).
    pub(super) fn reading_spans_together(mut self) -> Self {
        self.spans_together = true;
        self
    }

    /// Exactly `spans`, each in one piece. A remote store gets a request per span, all at once
    /// and each once one of the leaf's requests is free: its `get_ranges` would merge ranges
    /// less than 1 MiB apart (see `fetch::fetch`).
    pub(super) async fn get_spans(
        &self,
        spans: &[std::ops::Range<u64>],
    ) -> ParquetResult<Vec<Bytes>> {
        let external = |e: object_store::Error| ParquetError::External(Box::new(e));
        if self.spans_together {
            let _permit = self.request().await?;
            return self
                .store
                .get_ranges(&self.path, spans)
                .await
                .map_err(external);
        }
        futures::future::try_join_all(spans.iter().map(|span| async move {
            let _permit = self.request().await?;
            self.store
                .get_range(&self.path, span.clone())
                .await
                .map_err(external)
        }))
        .await
    }

    async fn request(&self) -> ParquetResult<tokio::sync::SemaphorePermit<'_>> {
        self.requests
            .acquire()
            .await
            .map_err(|e| ParquetError::External(Box::new(e)))
    }
}

/// The file's last bytes, fetched in its first request: most footers and offset indexes fit.
const FOOTER_PREFETCH: u64 = 64 * 1024;

impl AsyncFileReader for ObjectFileReader {
    fn get_bytes(&mut self, range: std::ops::Range<u64>) -> BoxFuture<'_, ParquetResult<Bytes>> {
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, ParquetResult<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, ParquetResult<Arc<ParquetMetaData>>> {
        async move {
            let external = |e| ParquetError::External(Box::new(e));
            let options_of_tail = GetOptions {
                range: Some(GetRange::Suffix(FOOTER_PREFETCH)),
                ..GetOptions::default()
            };
            let tail = self
                .store
                .get_opts(&self.path, options_of_tail)
                .await
                .map_err(external)?;
            let size = tail.meta.size;
            let object = tail.meta.clone();
            let key = self.footers.as_ref().map(|footers| footers.key(options));
            if let (Some(footers), Some(key)) = (&self.footers, &key) {
                let cached = footers
                    .cache
                    .get(key)
                    .filter(|entry| entry.is_valid_for(&object));
                let footer = cached.as_ref().and_then(|entry| {
                    let footer = entry.file_metadata.as_any().downcast_ref::<Footer>()?;
                    Some(Arc::clone(&footer.0))
                });
                if let Some(footer) = footer {
                    return Ok(footer);
                }
            }
            let range = tail.range.clone();
            let mut reader = TailReader {
                file: self.clone(),
                start: range.start,
                tail: tail.bytes().await.map_err(external)?,
            };
            let offset_index = options.map_or(PageIndexPolicy::Skip, |o| o.offset_index_policy());
            let column_index = options.map_or(PageIndexPolicy::Skip, |o| o.column_index_policy());
            let metadata = ParquetMetaDataReader::new()
                .with_offset_index_policy(offset_index)
                .with_column_index_policy(column_index)
                .load_and_finish(&mut reader, size)
                .await?;
            let metadata = Arc::new(metadata);
            if let (Some(footers), Some(key)) = (&self.footers, &key) {
                let footer = Arc::new(Footer(Arc::clone(&metadata)));
                footers
                    .cache
                    .put(key, CachedFileMetadataEntry::new(object, footer));
            }
            Ok(metadata)
        }
        .boxed()
    }
}

/// A file read through its last bytes, held while its footer is read; anything before them
/// (a page index that reaches further back) comes from the file itself.
struct TailReader {
    file: ObjectFileReader,
    start: u64,
    tail: Bytes,
}

impl TailReader {
    fn held(&self, range: &std::ops::Range<u64>) -> Option<Bytes> {
        let end = self.start + self.tail.len() as u64;
        (self.start <= range.start && range.end <= end).then(|| {
            self.tail
                .slice((range.start - self.start) as usize..(range.end - self.start) as usize)
        })
    }
}

impl AsyncFileReader for TailReader {
    fn get_bytes(&mut self, range: std::ops::Range<u64>) -> BoxFuture<'_, ParquetResult<Bytes>> {
        match self.held(&range) {
            Some(bytes) => futures::future::ready(Ok(bytes)).boxed(),
            None => self.file.get_bytes(range),
        }
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, ParquetResult<Arc<ParquetMetaData>>> {
        self.file.get_metadata(options)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::execution::cache::cache_manager::{CacheManager, CacheManagerConfig};
    use datafusion::parquet::arrow::arrow_reader::ArrowReaderMetadata;
    use object_store::memory::InMemory;

    use super::*;
    use crate::plan::merge::prune::tests::file;

    #[tokio::test]
    async fn a_footer_is_decoded_once_while_its_file_is_unchanged() {
        let store = Arc::new(InMemory::new());
        let path = Path::from("f.parquet");
        store.put(&path, file().into()).await.unwrap();
        let cache = CacheManager::try_new(&CacheManagerConfig::default())
            .unwrap()
            .get_file_metadata_cache();
        let open = |options: ArrowReaderOptions| {
            let store = Arc::clone(&store) as Arc<dyn object_store::ObjectStore>;
            let mut reader =
                ObjectFileReader::new(store, path.clone(), Arc::new(Semaphore::new(1)))
                    .caching_footer(Arc::clone(&cache), "memory:///f.parquet");
            async move {
                ArrowReaderMetadata::load_async(&mut reader, options)
                    .await
                    .unwrap()
                    .metadata()
                    .clone()
            }
        };
        let with_columns = || {
            ArrowReaderOptions::new()
                .with_offset_index_policy(PageIndexPolicy::Optional)
                .with_column_index_policy(PageIndexPolicy::Optional)
        };
        let offsets_only =
            || ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Optional);
        let first = open(with_columns()).await;
        assert!(Arc::ptr_eq(&first, &open(with_columns()).await));
        // Other page indexes are another entry.
        let without = open(offsets_only()).await;
        assert!(without.column_index().is_none() && first.column_index().is_some());
        assert!(Arc::ptr_eq(&without, &open(offsets_only()).await));
        // A file written again under the same name (a later modification time) is decoded again.
        store.put(&path, file().into()).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &open(with_columns()).await));
    }
}
