//! A file's pages, fetched a window of rows ahead of their decoding: while one window is
//! decoded, the pages of the next are already on their way, so the merge does not wait a round
//! trip to the store at every window (on S3, tens of milliseconds each).
//!
//! Each page is fetched once, by the window holding its first row, and decoded once: Parquet's
//! synchronous reader takes a row group's pages one by one as it reaches them, from the pages
//! held, which let each go as it is taken. (Its asynchronous reader fetches every page a stream
//! selects before decoding any, so a window was a stream of its own, and every page a window
//! boundary split was decompressed and decoded again to skip the rows already read: a fifth of
//! the reading at 128 files.)

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Buf, Bytes};
use datafusion::common::runtime::SpawnedTask;
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::errors::{ParquetError, Result as ParquetResult};
use datafusion::parquet::file::metadata::ParquetMetaData;
use datafusion::parquet::file::page_index::offset_index::OffsetIndexMetaData;
use datafusion::parquet::file::reader::{ChunkReader, Length};

use super::object_file::ObjectFileReader;

/// A row group to read, rows `first_row..end_row` of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RowGroupRead {
    pub(super) row_group: usize,
    pub(super) first_row: usize,
    pub(super) end_row: usize,
}

impl RowGroupRead {
    pub(super) fn whole(metadata: &ParquetMetaData, row_group: usize) -> Self {
        RowGroupRead {
            row_group,
            first_row: 0,
            end_row: usize::try_from(metadata.row_group(row_group).num_rows()).unwrap_or(0),
        }
    }
}

/// Some rows of one row group, whose pages are fetched together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Window {
    pub(super) row_group: usize,
    pub(super) first_row: usize,
    pub(super) rows: usize,
    /// The first window read of its row group, which also fetches the dictionary pages and the
    /// pages that begin before its first row.
    pub(super) opens_row_group: bool,
    /// Where the reading of its row group ends.
    pub(super) read_end_row: usize,
}

impl Window {
    pub(super) fn end_row(&self) -> usize {
        self.first_row + self.rows
    }
}

/// The row group's offset index, where the file has one: without it a page's place is known
/// only by reading the page before it, so a row group is read as whole column chunks.
fn page_locations(metadata: &ParquetMetaData, row_group: usize) -> Option<&[OffsetIndexMetaData]> {
    metadata
        .offset_index()
        .map(|index| index[row_group].as_slice())
        .filter(|columns| !columns.is_empty())
}

/// The windows that read the rows `row_groups` name, fetching about `budget` compressed bytes
/// at a time (never fewer than `min_rows` rows); a row group without an offset index is read
/// whole, as one window.
pub(super) fn windows(
    metadata: &ParquetMetaData,
    row_groups: &[RowGroupRead],
    projection: &ProjectionMask,
    budget: usize,
    min_rows: usize,
) -> VecDeque<Window> {
    let mut windows = VecDeque::new();
    for &RowGroupRead {
        row_group,
        first_row,
        end_row,
    } in row_groups
    {
        let group = metadata.row_group(row_group);
        let row_group_rows = usize::try_from(group.num_rows()).unwrap_or(0);
        let bytes: usize = group
            .columns()
            .iter()
            .enumerate()
            .filter(|(leaf, _)| projection.leaf_included(*leaf))
            .map(|(_, column)| usize::try_from(column.compressed_size()).unwrap_or(0))
            .sum();
        let paged = page_locations(metadata, row_group).is_some();
        let window_rows = if paged && bytes > budget {
            (row_group_rows * budget / bytes).max(min_rows)
        } else {
            row_group_rows
        }
        .max(1);
        let (mut first_row, end_row) = if paged {
            (first_row, end_row.min(row_group_rows))
        } else {
            (0, row_group_rows)
        };
        let mut opens_row_group = true;
        while first_row < end_row {
            let rows = window_rows.min(end_row - first_row);
            windows.push_back(Window {
                row_group,
                first_row,
                rows,
                opens_row_group,
                read_end_row: end_row,
            });
            first_row += rows;
            opens_row_group = false;
        }
    }
    windows
}

/// The byte ranges `window` fetches, each a piece Parquet's reader later asks for whole: per
/// projected column, the pages whose first row the window holds, and in the window that opens
/// a row group, the dictionary page and the page its first row is on; without an offset
/// index, the whole column chunk.
pub(super) fn pages_fetched(
    metadata: &ParquetMetaData,
    projection: &ProjectionMask,
    window: Window,
) -> Vec<Range<u64>> {
    let locations = page_locations(metadata, window.row_group);
    let rows = window.first_row as i64..window.end_row() as i64;
    let mut pages = Vec::new();
    let columns = metadata.row_group(window.row_group).columns().iter();
    for (leaf, column) in columns.enumerate() {
        if !projection.leaf_included(leaf) {
            continue;
        }
        let (start, length) = column.byte_range();
        let Some(locations) = locations else {
            pages.push(start..start.saturating_add(length));
            continue;
        };
        let data_pages = locations[leaf].page_locations();
        let first_data_page = data_pages
            .first()
            .and_then(|first| u64::try_from(first.offset).ok());
        match first_data_page {
            Some(first) if window.opens_row_group && first > start => pages.push(start..first),
            _ => {}
        }
        let page_ends = data_pages
            .iter()
            .skip(1)
            .map(|page| page.first_row_index)
            .chain([i64::MAX]);
        pages.extend(
            data_pages
                .iter()
                .zip(page_ends)
                .filter(|(page, end)| {
                    rows.contains(&page.first_row_index)
                        || (window.opens_row_group
                            && page.first_row_index < rows.start
                            && *end > rows.start)
                })
                .map(|(page, _)| {
                    // A hostile file's negative sizes and offsets become empty or unfetchable
                    // ranges here, and Parquet's reader then rejects the page.
                    let offset = u64::try_from(page.offset).unwrap_or(u64::MAX);
                    let length = u64::try_from(page.compressed_page_size).unwrap_or(0);
                    offset..offset.saturating_add(length)
                }),
        );
    }
    pages
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

/// Pieces of a file, each with the offset it starts at.
pub(super) type Pieces = Vec<(u64, Bytes)>;

pub(super) type Prefetch = SpawnedTask<ParquetResult<Pieces>>;

/// Fetches `pieces` of `file`, a span per run of adjacent pieces, all at once, on a task of its
/// own so that the fetch goes on while the caller decodes; each piece is a slice of its span's
/// bytes. On a remote store each span is a request of its own: object_store's `get_ranges`
/// there merges ranges less than 1 MiB apart, so with many files, whose windows are a page or
/// two of each column, each request read most of a row group to keep a few pages of it (1.1 GiB
/// peak at 128 files on S3).
pub(super) fn fetch(file: &ObjectFileReader, mut pieces: Vec<Range<u64>>) -> Prefetch {
    let file = file.clone();
    SpawnedTask::spawn(async move {
        pieces.sort_unstable_by_key(|piece| piece.start);
        let spans = coalesce(pieces.clone());
        let fetched = file.get_spans(&spans).await?;
        // A store answers a range past an object's end with the bytes there are.
        for (span, bytes) in spans.iter().zip(&fetched) {
            if (bytes.len() as u64) < span.end - span.start {
                return Err(ParquetError::EOF(format!(
                    "the file ends at byte {} but its metadata places pages up to byte {}",
                    span.start + bytes.len() as u64,
                    span.end
                )));
            }
        }
        let mut spans = spans.iter().zip(fetched).peekable();
        let mut sliced = Vec::with_capacity(pieces.len());
        for piece in pieces {
            while let Some((span, _)) = spans.peek() {
                if span.end >= piece.end {
                    break;
                }
                spans.next();
            }
            let (span, bytes) = spans.peek().expect("every piece lies in a span");
            let offset = (piece.start - span.start) as usize;
            let length = (piece.end - piece.start) as usize;
            sliced.push((piece.start, bytes.slice(offset..offset + length)));
        }
        Ok(sliced)
    })
}

pub(super) async fn join(prefetch: Prefetch) -> ParquetResult<Pieces> {
    prefetch
        .join()
        .await
        .map_err(|e| ParquetError::External(Box::new(e)))?
}

/// The fetched pieces of one row group, which Parquet's reader reads as its file. A page goes
/// once Parquet's reader has taken it (it asks for each page once, whole); whole column chunks,
/// read where there is no offset index, stay until the row group is done.
#[derive(Clone)]
pub(super) struct HeldPages {
    held: Arc<Mutex<BTreeMap<u64, Bytes>>>,
    whole_chunks: bool,
}

impl HeldPages {
    pub(super) fn new(metadata: &ParquetMetaData, row_group: usize) -> Self {
        HeldPages {
            held: Arc::default(),
            whole_chunks: page_locations(metadata, row_group).is_none(),
        }
    }

    pub(super) fn insert(&self, pieces: Pieces) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(pieces);
    }

    /// Bytes `start..start + length` (to the end of their piece where `length` is None); a page
    /// asked for whole is let go.
    fn take(&self, start: u64, length: Option<usize>) -> ParquetResult<Bytes> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let found = held
            .range(..=start)
            .next_back()
            .and_then(|(&piece_start, bytes)| {
                let offset = (start - piece_start) as usize;
                let end = length.map_or(bytes.len(), |length| offset + length);
                (end <= bytes.len()).then(|| (piece_start, bytes.slice(offset..end)))
            });
        let Some((piece_start, bytes)) = found else {
            let end = length.map_or_else(
                || "its piece's end".to_string(),
                |l| start.saturating_add(l as u64).to_string(),
            );
            return Err(ParquetError::General(format!(
                "bytes {start}..{end} of the file were not fetched before Parquet's reader asked for them"
            )));
        };
        if !self.whole_chunks && piece_start == start && length.is_some() {
            held.remove(&piece_start);
        }
        Ok(bytes)
    }

    #[cfg(test)]
    fn held_offsets(&self) -> Vec<u64> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }
}

impl Length for HeldPages {
    /// Parquet's reader asks a file's length only to find its footer, which it never reads here.
    fn len(&self) -> u64 {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_key_value()
            .map_or(0, |(start, bytes)| start + bytes.len() as u64)
    }
}

impl ChunkReader for HeldPages {
    type T = bytes::buf::Reader<Bytes>;

    /// Where there is no offset index, Parquet's reader reads each page header from here.
    fn get_read(&self, start: u64) -> ParquetResult<Self::T> {
        Ok(self.take(start, None)?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> ParquetResult<Bytes> {
        self.take(start, Some(length))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;
    use tokio::sync::Semaphore;

    use super::*;

    fn held(whole_chunks: bool, pieces: &[(u64, &'static [u8])]) -> HeldPages {
        let held = HeldPages {
            held: Arc::default(),
            whole_chunks,
        };
        held.insert(
            pieces
                .iter()
                .map(|&(start, bytes)| (start, Bytes::from_static(bytes)))
                .collect(),
        );
        held
    }

    #[test]
    fn adjacent_and_overlapping_ranges_are_fetched_as_one() {
        assert_eq!(
            coalesce(vec![10..20, 0..5, 5..8, 15..25, 30..31]),
            vec![0..8, 10..25, 30..31]
        );
    }

    #[test]
    fn a_page_is_let_go_once_taken() {
        let pages = held(false, &[(100, b"abcdef"), (200, b"xyz")]);
        assert_eq!(pages.get_bytes(200, 3).unwrap(), Bytes::from_static(b"xyz"));
        assert_eq!(pages.held_offsets(), [100]);
        let error = pages.get_bytes(200, 3).unwrap_err().to_string();
        assert!(error.contains("bytes 200..203"), "{error}");
        assert!(pages.get_bytes(104, 4).is_err(), "past a page's end");
        assert_eq!(pages.held_offsets(), [100]);
    }

    #[test]
    fn a_whole_column_chunk_is_read_as_often_as_asked() {
        let chunks = held(true, &[(100, b"abcdef")]);
        let mut header = String::new();
        chunks
            .get_read(102)
            .unwrap()
            .read_to_string(&mut header)
            .unwrap();
        assert_eq!(header, "cdef");
        assert_eq!(chunks.get_bytes(103, 2).unwrap(), Bytes::from_static(b"de"));
        assert_eq!(
            chunks.get_bytes(100, 6).unwrap(),
            Bytes::from_static(b"abcdef")
        );
        assert_eq!(chunks.held_offsets(), [100]);
        assert_eq!(chunks.len(), 106);
    }

    #[tokio::test]
    async fn fetched_pieces_are_cut_from_their_spans() {
        let store = Arc::new(InMemory::new());
        let path = object_store::path::Path::from("f");
        let content: Vec<u8> = (0..=255).collect();
        store.put(&path, content.clone().into()).await.unwrap();
        let file = ObjectFileReader::new(store, path, Arc::new(Semaphore::new(1)));
        let pieces = join(fetch(&file, vec![50..60, 0..10, 10..30, 200..256]))
            .await
            .unwrap();
        let starts: Vec<u64> = pieces.iter().map(|(start, _)| *start).collect();
        assert_eq!(starts, [0, 10, 50, 200]);
        for (start, bytes) in pieces {
            let start = start as usize;
            assert_eq!(bytes, content[start..start + bytes.len()]);
        }
        let error = join(fetch(&file, vec![240..250, 250..300]))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("ends at byte 256"), "{error}");
    }
}
