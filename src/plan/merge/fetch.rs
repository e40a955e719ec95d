//! A file's bytes, fetched a window ahead of its decoding: while one window of rows is decoded,
//! the pages of the next are already on their way, so the merge does not wait a round trip to
//! the store at every window (on S3, tens of milliseconds each). Pages two windows share (the
//! page a window boundary splits, dictionary pages) are fetched once and carried over.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::common::runtime::SpawnedTask;
use datafusion::parquet::arrow::arrow_reader::{ArrowReaderOptions, RowSelection};
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::errors::{ParquetError, Result as ParquetResult};
use datafusion::parquet::file::metadata::ParquetMetaData;
use futures::future::BoxFuture;
use futures::FutureExt;

use super::reader::ObjectFileReader;

/// The byte ranges Parquet's reader asks for to decode `selection` of `row_group` (all of it
/// where `selection` is None), as it computes them: per projected column, the dictionary page
/// if there is one and the data pages holding selected rows (the whole column chunk without a
/// selection or an offset index).
pub(super) fn ranges_read(
    metadata: &ParquetMetaData,
    projection: &ProjectionMask,
    row_group: usize,
    selection: Option<&RowSelection>,
) -> Vec<Range<u64>> {
    let offsets = metadata.offset_index().map(|index| &index[row_group]);
    let mut ranges = Vec::new();
    let columns = metadata.row_group(row_group).columns().iter().enumerate();
    for (leaf, column) in columns.filter(|(leaf, _)| projection.leaf_included(*leaf)) {
        let (start, length) = column.byte_range();
        match selection.zip(offsets) {
            Some((selection, offsets)) => {
                let pages = offsets[leaf].page_locations();
                match pages.first() {
                    Some(first) if first.offset as u64 != start => {
                        ranges.push(start..first.offset as u64);
                    }
                    _ => {}
                }
                ranges.extend(selection.scan_ranges(pages));
            }
            None => ranges.push(start..start + length),
        }
    }
    ranges
}

/// Sorted, with touching and overlapping ranges merged: one request per run of adjacent pages.
fn coalesce(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.sort_unstable_by_key(|range| range.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    merged
}

/// Bytes of one file held for a window: spans of the file, each with its bytes.
#[derive(Default, Clone)]
pub(super) struct HeldBytes {
    spans: Vec<(Range<u64>, Bytes)>,
}

impl HeldBytes {
    /// `range` without a copy, where one span holds all of it.
    fn slice(&self, range: &Range<u64>) -> Option<Bytes> {
        self.spans
            .iter()
            .find(|(span, _)| span.start <= range.start && range.end <= span.end)
            .map(|(span, bytes)| {
                bytes.slice((range.start - span.start) as usize..(range.end - span.start) as usize)
            })
    }

    /// The spans to fetch for `ranges`: those not held, with adjacent pages merged.
    pub(super) fn missing(&self, ranges: &[Range<u64>]) -> Vec<Range<u64>> {
        coalesce(
            ranges
                .iter()
                .filter(|range| self.slice(range).is_none())
                .cloned()
                .collect(),
        )
    }

    /// Copies of the held parts of `ranges`, so that carrying a shared page into the next
    /// window does not keep this window's spans alive.
    pub(super) fn carried_into(&self, ranges: &[Range<u64>]) -> HeldBytes {
        HeldBytes {
            spans: ranges
                .iter()
                .filter_map(|range| {
                    let bytes = self.slice(range)?;
                    Some((range.clone(), Bytes::copy_from_slice(&bytes)))
                })
                .collect(),
        }
    }

    pub(super) fn span(range: Range<u64>, bytes: Bytes) -> Self {
        HeldBytes {
            spans: vec![(range, bytes)],
        }
    }

    pub(super) fn extend(&mut self, other: HeldBytes) {
        self.spans.extend(other.spans);
    }

    /// Fetches `spans` of `file`, a request each, all at once, on a task of its own so that
    /// the fetch goes on while the caller decodes. Not object_store's `get_ranges`: that merges
    /// ranges less than 1 MiB apart, so with many files, whose windows are a page or two of each
    /// column, each request read most of a row group to keep a few pages of it (1.1 GiB peak at
    /// 128 files on S3).
    pub(super) fn fetch(file: &ObjectFileReader, spans: Vec<Range<u64>>) -> Prefetch {
        let file = file.clone();
        SpawnedTask::spawn(async move {
            let fetched =
                futures::future::try_join_all(spans.iter().map(|span| file.get_span(span))).await?;
            Ok(HeldBytes {
                spans: spans.into_iter().zip(fetched).collect(),
            })
        })
    }
}

pub(super) type Prefetch = SpawnedTask<ParquetResult<HeldBytes>>;

pub(super) async fn join(prefetch: Prefetch) -> ParquetResult<HeldBytes> {
    prefetch
        .join()
        .await
        .map_err(|e| ParquetError::External(Box::new(e)))?
}

/// A file read through bytes already held: a window's pages, or the file's last bytes while its
/// footer is read. Anything else comes from the file itself (the ranges above leave nothing
/// else for a window, but a reader must not fail on it).
#[derive(Clone)]
pub(super) struct HeldReader {
    pub(super) file: ObjectFileReader,
    pub(super) held: Arc<HeldBytes>,
}

impl AsyncFileReader for HeldReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, ParquetResult<Bytes>> {
        match self.held.slice(&range) {
            Some(bytes) => futures::future::ready(Ok(bytes)).boxed(),
            None => self.file.get_bytes(range),
        }
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, ParquetResult<Vec<Bytes>>> {
        async move {
            let mut bytes: Vec<Option<Bytes>> =
                ranges.iter().map(|range| self.held.slice(range)).collect();
            let unheld: Vec<Range<u64>> = ranges
                .iter()
                .zip(&bytes)
                .filter(|(_, held)| held.is_none())
                .map(|(range, _)| range.clone())
                .collect();
            if !unheld.is_empty() {
                let mut fetched = self.file.get_byte_ranges(unheld).await?.into_iter();
                for slot in bytes.iter_mut().filter(|slot| slot.is_none()) {
                    *slot = fetched.next();
                }
            }
            Ok(bytes.into_iter().map(Option::unwrap_or_default).collect())
        }
        .boxed()
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
    use super::*;

    fn held(spans: &[(u64, &[u8])]) -> HeldBytes {
        HeldBytes {
            spans: spans
                .iter()
                .map(|(start, bytes)| {
                    (
                        *start..*start + bytes.len() as u64,
                        Bytes::copy_from_slice(bytes),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn adjacent_and_overlapping_ranges_are_fetched_as_one() {
        assert_eq!(
            coalesce(vec![10..20, 0..5, 5..8, 15..25, 30..31]),
            vec![0..8, 10..25, 30..31]
        );
    }

    #[test]
    fn held_pages_are_served_and_only_the_rest_fetched() {
        let bytes = held(&[(100, b"abcdef"), (200, b"xyz")]);
        assert_eq!(
            bytes.slice(&(101..104)).unwrap(),
            Bytes::from_static(b"bcd")
        );
        assert_eq!(
            bytes.slice(&(200..203)).unwrap(),
            Bytes::from_static(b"xyz")
        );
        assert!(bytes.slice(&(104..108)).is_none(), "past a span's end");
        assert_eq!(
            bytes.missing(&[100..103, 103..106, 106..110, 110..120, 300..301]),
            vec![106..120, 300..301]
        );
    }

    #[tokio::test]
    async fn a_window_reads_its_held_bytes_without_asking_the_store() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let mut reader = HeldReader {
            file: ObjectFileReader::new(
                store,
                "absent.parquet".into(),
                Arc::new(tokio::sync::Semaphore::new(1)),
            ),
            held: Arc::new(held(&[(100, b"abcdef")])),
        };
        let read = reader
            .get_byte_ranges(vec![100..102, 102..106])
            .await
            .unwrap();
        assert_eq!(
            read,
            [Bytes::from_static(b"ab"), Bytes::from_static(b"cdef")]
        );
        // Bytes not held come from the store, here a missing file.
        assert!(reader.get_bytes(0..4).await.is_err());
    }

    #[test]
    fn a_carried_page_is_a_copy_of_its_bytes_alone() {
        let bytes = held(&[(100, b"abcdef")]);
        let carried = bytes.carried_into(&[104..106, 500..501]);
        assert_eq!(carried.spans.len(), 1);
        assert_eq!(carried.spans[0].0, 104..106);
        assert_eq!(carried.spans[0].1, Bytes::from_static(b"ef"));
        // A copy, not a slice: the window's own span can be freed.
        let original = bytes.spans[0].1.as_ptr() as usize;
        assert!(!(original..original + 6).contains(&(carried.spans[0].1.as_ptr() as usize)));
    }
}
