//! A file's pages decoded into batches: Parquet's synchronous reader decodes a row group from
//! the pages its windows fetched, each page fetched once and decoded once, the next window's
//! pages on their way while this one is decoded.

use std::collections::VecDeque;

use datafusion::arrow::array::RecordBatch;
use datafusion::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelectionPolicy, RowSelector,
};
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::errors::{ParquetError, Result as ParquetResult};

use super::fetch::{self, pages_fetched, HeldPages, Pieces, Prefetch, Window};
use super::object_file::ObjectFileReader;

/// A file's rows, decoded a row group at a time by Parquet's reader from the pages held for
/// it, which arrive a window of rows at a time: with the file's offset index, a window fetches
/// only its own pages; without one, a window is a whole row group. The next window's pages are
/// fetched while this one is decoded.
pub(super) struct WindowedStream {
    fetcher: WindowFetcher,
    batch_size: usize,
    current: Option<RowGroupDecoder>,
}

/// Fetches a file's windows in order, one ahead of the one last received.
struct WindowFetcher {
    reader: ObjectFileReader,
    metadata: ArrowReaderMetadata,
    projection: ProjectionMask,
    windows: VecDeque<Window>,
    in_flight: Option<(Window, Prefetch)>,
}

impl WindowFetcher {
    fn start(&self, window: Window) -> Prefetch {
        fetch::fetch(
            &self.reader,
            pages_fetched(self.metadata.metadata(), &self.projection, window),
        )
    }

    /// The next window's pages, once they have arrived; the window after it is then on its way.
    async fn receive(&mut self) -> Option<ParquetResult<(Window, Pieces)>> {
        let (window, prefetch) = match self.in_flight.take() {
            Some(in_flight) => in_flight,
            None => {
                let window = self.windows.pop_front()?;
                (window, self.start(window))
            }
        };
        let pieces = fetch::join(prefetch).await;
        if let Some(next) = self.windows.pop_front() {
            self.in_flight = Some((next, self.start(next)));
        }
        Some(pieces.map(|pieces| (window, pieces)))
    }
}

struct RowGroupDecoder {
    row_group: usize,
    /// The row its reading ends at (its row count, unless its last pages hold no kept rows).
    end_row: usize,
    next_row: usize,
    /// Rows before this one have all their pages held (or already taken by the decoder).
    fetched_rows: usize,
    pages: HeldPages,
    decoder: ParquetRecordBatchReader,
}

impl WindowedStream {
    /// The stream of `windows` of the file `reader` reads, in order, in batches of
    /// `batch_size` rows of the `projection`'s columns.
    pub(super) fn new(
        reader: ObjectFileReader,
        metadata: ArrowReaderMetadata,
        projection: ProjectionMask,
        windows: VecDeque<Window>,
        batch_size: usize,
    ) -> Self {
        WindowedStream {
            fetcher: WindowFetcher {
                reader,
                metadata,
                projection,
                windows,
                in_flight: None,
            },
            batch_size,
            current: None,
        }
    }

    pub(super) async fn next(&mut self) -> Option<ParquetResult<RecordBatch>> {
        loop {
            let Some(current) = &mut self.current else {
                let first = match self.fetcher.receive().await? {
                    Ok(first) => first,
                    Err(e) => return Some(Err(e)),
                };
                match self.decoder(first) {
                    Ok(decoder) => self.current = Some(decoder),
                    Err(e) => return Some(Err(e)),
                }
                continue;
            };
            if current.next_row == current.end_row {
                self.current = None;
                continue;
            }
            // Parquet's reader takes a page when it reaches the page's first row, so a batch
            // decodes from what is held once every row it covers has been fetched.
            let batch_end = (current.next_row + self.batch_size).min(current.end_row);
            while current.fetched_rows < batch_end {
                match self.fetcher.receive().await {
                    Some(Ok((window, pieces))) if window.row_group == current.row_group => {
                        current.pages.insert(pieces);
                        current.fetched_rows = window.end_row();
                    }
                    Some(Err(e)) => return Some(Err(e)),
                    _ => {
                        return Some(Err(ParquetError::General(format!(
                            "the windows of row group {} end at row {}, before row {}",
                            current.row_group, current.fetched_rows, current.end_row
                        ))))
                    }
                }
            }
            return match current.decoder.next() {
                Some(Ok(batch)) => {
                    current.next_row += batch.num_rows();
                    Some(Ok(batch))
                }
                Some(Err(e)) => Some(Err(ParquetError::External(Box::new(e)))),
                None => Some(Err(ParquetError::EOF(format!(
                    "row group {} ended at row {}, before row {} that its metadata gives",
                    current.row_group, current.next_row, current.end_row
                )))),
            };
        }
    }

    /// The decoder of the row group whose first window is `first`, which reads its rows up to
    /// the last window's end.
    fn decoder(&self, (first, pieces): (Window, Pieces)) -> ParquetResult<RowGroupDecoder> {
        let file = &self.fetcher.metadata;
        let metadata = file.metadata();
        let pages = HeldPages::new(metadata, first.row_group);
        pages.insert(pieces);
        let end_row = first.read_end_row;
        let mut builder =
            ParquetRecordBatchReaderBuilder::new_with_metadata(pages.clone(), file.clone())
                .with_projection(self.fetcher.projection.clone())
                .with_row_groups(vec![first.row_group])
                .with_batch_size(self.batch_size);
        let row_group_rows =
            usize::try_from(metadata.row_group(first.row_group).num_rows()).unwrap_or(0);
        if first.first_row > 0 || end_row < row_group_rows {
            // With the offset index, Parquet's reader passes over the pages of the rows it
            // skips without asking for them: they were never fetched.
            builder = builder
                .with_row_selection(RowSelection::from(vec![
                    RowSelector::skip(first.first_row),
                    RowSelector::select(end_row - first.first_row),
                ]))
                .with_row_selection_policy(RowSelectionPolicy::Selectors);
        }
        Ok(RowGroupDecoder {
            row_group: first.row_group,
            end_row,
            next_row: first.first_row,
            fetched_rows: first.end_row(),
            pages,
            decoder: builder.build()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
    use datafusion::parquet::file::metadata::PageIndexPolicy;
    use tokio::sync::Semaphore;

    use super::super::fetch::windows;
    use super::*;
    use crate::plan::merge::fetch::RowGroupRead;
    use crate::plan::merge::prune::tests::sorted_file;
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    use datafusion::parquet::file::metadata::ParquetMetaData;
    use datafusion::parquet::file::page_index::offset_index::PageLocation;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    const ROW_GROUP_ROWS: usize = 10_000;

    /// A file of three 10,000-row row groups with 500-row pages, keys 0..30,000, through an
    /// in-memory store.
    async fn file_with_pages() -> (ObjectFileReader, ArrowReaderMetadata) {
        let bytes = sorted_file(3, ROW_GROUP_ROWS, 500);
        let store = Arc::new(InMemory::new());
        let path = object_store::path::Path::from("f.parquet");
        store.put(&path, bytes.into()).await.unwrap();
        let mut reader = ObjectFileReader::new(store, path, Arc::new(Semaphore::new(4)));
        let options = ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Optional);
        let metadata = ArrowReaderMetadata::load_async(&mut reader, options)
            .await
            .unwrap();
        (reader, metadata)
    }

    fn whole(metadata: &ParquetMetaData, row_groups: &[usize]) -> Vec<RowGroupRead> {
        row_groups
            .iter()
            .map(|&row_group| RowGroupRead::whole(metadata, row_group))
            .collect()
    }

    async fn keys_read(stream: &mut WindowedStream) -> Vec<i64> {
        let mut keys = Vec::new();
        while let Some(batch) = stream.next().await {
            keys.extend(
                batch
                    .unwrap()
                    .column(0)
                    .as_primitive::<Int64Type>()
                    .values(),
            );
        }
        keys
    }

    /// Reads `windows` in batches that end inside windows, on their boundaries (of 500-row
    /// pages) and span several, and checks the keys read.
    async fn assert_reads(
        reader: &ObjectFileReader,
        metadata: &ArrowReaderMetadata,
        windows: &VecDeque<Window>,
        expected: &[i64],
        context: &str,
    ) {
        for batch_size in [700, 500, 2500, 6000] {
            let mut stream = stream(
                reader.clone(),
                metadata.clone(),
                windows.clone(),
                batch_size,
            );
            assert_eq!(
                keys_read(&mut stream).await,
                expected,
                "{context}, batch size {batch_size}"
            );
        }
    }

    fn stream(
        reader: ObjectFileReader,
        metadata: ArrowReaderMetadata,
        windows: VecDeque<Window>,
        batch_size: usize,
    ) -> WindowedStream {
        WindowedStream::new(reader, metadata, ProjectionMask::all(), windows, batch_size)
    }

    #[tokio::test]
    async fn a_file_read_in_windows_gives_every_row_once_in_order() {
        let (reader, metadata) = file_with_pages().await;
        assert!(metadata.metadata().offset_index().is_some());
        let all = ProjectionMask::all();
        let row_group_bytes = metadata.metadata().row_group(0).compressed_size() as usize;
        let windows = windows(
            metadata.metadata(),
            &whole(metadata.metadata(), &[0, 2]),
            &all,
            row_group_bytes / 4,
            1000,
        );
        let listed: Vec<Window> = windows.iter().copied().collect();
        // Row group 0 in quarters; row group 2's longer strings in a few more windows.
        assert!(listed[..4]
            .iter()
            .all(|w| w.row_group == 0 && w.rows == ROW_GROUP_ROWS / 4));
        assert!((4..=6).contains(&(listed.len() - 4)), "{listed:?}");
        for pair in listed.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let next = if a.end_row() == ROW_GROUP_ROWS {
                0
            } else {
                a.end_row()
            };
            assert_eq!(b.first_row, next, "{listed:?}");
        }
        let expected: Vec<i64> = (0..ROW_GROUP_ROWS as i64)
            .chain(2 * ROW_GROUP_ROWS as i64..3 * ROW_GROUP_ROWS as i64)
            .collect();
        // Batches that end inside windows, on their boundaries, and span several; a window's
        // spans fetched a request each, and in one call.
        for (together, reader) in [
            (false, reader.clone()),
            (true, reader.reading_spans_together()),
        ] {
            let context = format!("spans together: {together}");
            assert_reads(&reader, &metadata, &windows, &expected, &context).await;
        }
    }

    #[tokio::test]
    async fn row_groups_read_from_and_to_inside_pages_give_those_rows() {
        let (reader, metadata) = file_with_pages().await;
        let all = ProjectionMask::all();
        let row_group_bytes = metadata.metadata().row_group(0).compressed_size() as usize;
        // Rows 2,250 and 6,100 are inside pages of every column; 7,000 starts one.
        let reads = [
            RowGroupRead {
                row_group: 0,
                first_row: 2250,
                end_row: 6100,
            },
            RowGroupRead {
                row_group: 2,
                first_row: 7000,
                end_row: ROW_GROUP_ROWS,
            },
        ];
        let expected: Vec<i64> = (2250..6100)
            .chain(2 * ROW_GROUP_ROWS as i64 + 7000..3 * ROW_GROUP_ROWS as i64)
            .collect();
        // Everything but the pages wholly outside the rows read.
        let offsets = metadata.metadata().offset_index().unwrap();
        let outside: u64 = reads
            .iter()
            .flat_map(|read| {
                offsets[read.row_group].iter().flat_map(move |column| {
                    let pages = column.page_locations();
                    let ends = pages[1..]
                        .iter()
                        .map(|p| p.first_row_index)
                        .chain([ROW_GROUP_ROWS as i64]);
                    pages.iter().zip(ends).filter_map(move |(page, end)| {
                        (end <= read.first_row as i64
                            || page.first_row_index >= read.end_row as i64)
                            .then_some(page.compressed_page_size as u64)
                    })
                })
            })
            .sum();
        let whole_bytes: u64 = [0, 2]
            .iter()
            .map(|&g| metadata.metadata().row_group(g).compressed_size() as u64)
            .sum();
        for budget in [row_group_bytes / 4, 1 << 30] {
            let windows = windows(metadata.metadata(), &reads, &all, budget, 1000);
            assert_eq!(windows[0].first_row, 2250);
            let fetched: u64 = windows
                .iter()
                .flat_map(|&window| pages_fetched(metadata.metadata(), &all, window))
                .map(|page| page.end - page.start)
                .sum();
            assert!(outside > 0);
            assert_eq!(fetched, whole_bytes - outside, "budget {budget}");
            let context = format!("budget {budget}");
            assert_reads(&reader, &metadata, &windows, &expected, &context).await;
        }
    }

    #[tokio::test]
    async fn a_file_without_an_offset_index_is_read_a_row_group_at_a_time() {
        let (reader, _) = file_with_pages().await;
        let options = ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Skip);
        let metadata = ArrowReaderMetadata::load_async(&mut reader.clone(), options)
            .await
            .unwrap();
        let windows = windows(
            metadata.metadata(),
            &whole(metadata.metadata(), &[1, 2]),
            &ProjectionMask::all(),
            1,
            1,
        );
        assert_eq!(windows.len(), 2);
        let mut stream = stream(reader, metadata, windows, 700);
        let expected: Vec<i64> = (ROW_GROUP_ROWS as i64..3 * ROW_GROUP_ROWS as i64).collect();
        assert_eq!(keys_read(&mut stream).await, expected);
    }

    /// Page places come from the file: negative ones must end in an error, not in an overflow
    /// or a panic.
    #[tokio::test]
    async fn a_hostile_offset_index_is_an_error() {
        let (reader, metadata) = file_with_pages().await;
        let bends: [fn(&mut PageLocation); 3] = [
            |page| page.offset = -5,
            |page| page.compressed_page_size = -1,
            |page| page.offset = i64::MAX,
        ];
        for (bend, page) in bends.iter().zip([1, 2, 0]) {
            let mut index = metadata.metadata().offset_index().unwrap().clone();
            bend(&mut index[0][1].page_locations[page]);
            let hostile = metadata
                .metadata()
                .as_ref()
                .clone()
                .into_builder()
                .set_offset_index(Some(index))
                .build();
            let hostile =
                ArrowReaderMetadata::try_new(Arc::new(hostile), ArrowReaderOptions::new()).unwrap();
            let windows = windows(
                hostile.metadata(),
                &whole(hostile.metadata(), &[0]),
                &ProjectionMask::all(),
                20_000,
                1,
            );
            for reader in [reader.clone(), reader.clone().reading_spans_together()] {
                let mut stream = stream(reader, hostile.clone(), windows.clone(), 700);
                let mut failed = false;
                while let Some(batch) = stream.next().await {
                    if batch.is_err() {
                        failed = true;
                        break;
                    }
                }
                assert!(
                    failed,
                    "page {page} of a bent offset index read without an error"
                );
            }
        }
    }

    #[tokio::test]
    async fn every_page_is_fetched_by_one_window_only() {
        let (_, metadata) = file_with_pages().await;
        let metadata = metadata.metadata();
        let all = ProjectionMask::all();
        let mut every_page: Vec<std::ops::Range<u64>> = Vec::new();
        for row_group in 0..3 {
            for column in metadata.row_group(row_group).columns() {
                let (start, length) = column.byte_range();
                every_page.push(start..start + length);
            }
        }
        for budget in [1, 20_000, 50_000, 1 << 30] {
            let mut fetched: Vec<std::ops::Range<u64>> =
                windows(metadata, &whole(metadata, &[0, 1, 2]), &all, budget, 700)
                    .into_iter()
                    .flat_map(|window| pages_fetched(metadata, &all, window))
                    .collect();
            fetched.sort_unstable_by_key(|page| page.start);
            for pair in fetched.windows(2) {
                assert!(pair[0].end <= pair[1].start, "{pair:?} fetched twice");
            }
            // Each column chunk, dictionary page and all, is fetched piece by piece and whole.
            let mut chunks = every_page.iter();
            let mut chunk = chunks.next().unwrap().clone();
            for page in fetched {
                assert_eq!(page.start, chunk.start, "budget {budget}");
                chunk.start = page.end;
                if chunk.is_empty() {
                    chunk = chunks.next().cloned().unwrap_or(0..0);
                }
            }
            assert!(
                chunks.next().is_none() && chunk.is_empty(),
                "budget {budget}"
            );
        }
    }

    #[tokio::test]
    async fn windows_are_whole_row_groups_within_the_budget() {
        let (_, metadata) = file_with_pages().await;
        let all = ProjectionMask::all();
        let metadata = metadata.metadata();
        let row_group_bytes = metadata
            .row_groups()
            .iter()
            .map(|group| group.compressed_size() as usize)
            .max()
            .unwrap();
        let every_row = whole(metadata, &[0, 1, 2]);
        let windows_of = |budget| windows(metadata, &every_row, &all, budget, 1);
        assert_eq!(windows_of(row_group_bytes).len(), 3);
        assert!(windows_of(1).len() > 3 * 100, "at least a page a window");
        // The window never drops below the minimum rows, however small the budget.
        let floor = windows(metadata, &whole(metadata, &[0]), &all, 1, 2500);
        assert_eq!(floor.len(), 4);
    }
}
