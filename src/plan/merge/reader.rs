//! Reading one input file of a leaf: opening it (footer read, schema adaptation, row-group
//! pruning on the region), then decoding, filtering to the region and age-off, encoding sort
//! keys and checking the order, batch by batch.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::kernels::boolean::and;
use datafusion::arrow::compute::kernels::cmp::gt_eq;
use datafusion::arrow::compute::{cast, filter_record_batch, prep_null_mask_filter};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::row::{OwnedRow, RowConverter, Rows};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder, RowSelection, RowSelectionPolicy, RowSelector,
};
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::errors::{ParquetError, Result as ParquetResult};
use datafusion::parquet::file::metadata::PageIndexPolicy;
use datafusion::physical_plan::metrics::Count;
use tokio::sync::{mpsc, Semaphore};

use super::fetch::{self, pages_fetched, windows, HeldPages, Pieces, Prefetch, Window};
use super::keys::{prefix, KeyedBatch, SortKeys};
use super::object_file::ObjectFileReader;
use super::prune::KeyPruning;
use crate::error::{Error, Result};
use crate::model::{KeyOrder, KeyValue, PrimitiveType};
use crate::plan::filter::RowFilter;
use crate::storage::ObjectAddress;

pub(super) struct FileReader {
    pub(super) file: String,
    pub(super) partition_id: String,
    pub(super) read_schema: SchemaRef,
    pub(super) key_types: Vec<PrimitiveType>,
    pub(super) order: KeyOrder,
    pub(super) verify_order: bool,
    pub(super) converter: Arc<RowConverter>,
    pub(super) filter: Arc<RowFilter>,
    /// Age-off filters: a column and the oldest time it may hold.
    pub(super) age_offs: Arc<Vec<(usize, i64)>>,
    pub(super) rows_read: Count,
    pub(super) row_groups_pruned: Count,
    pub(super) batch_size: usize,
    /// Compressed bytes this file may fetch at once: its share of the leaf's read budget.
    pub(super) fetch_budget: usize,
    /// Requests for windows' bytes the leaf's files may have in flight together.
    pub(super) requests: Arc<Semaphore>,
}

/// How to turn a file's batches into the table's columns: which file column feeds each table
/// column, and a cast where the file's type has another shape of the same values (nested field
/// names or nullability, as other writers choose them).
pub(super) struct ColumnAdapter {
    positions: Vec<usize>,
    casts: Vec<Option<DataType>>,
}

/// Where a file's rows stand in the check that they are in the table's order.
#[derive(Default)]
pub(super) struct OrderCheck {
    /// The last row read, in row format and as key values (for the message).
    last: Option<(OwnedRow, Vec<KeyValue>)>,
    rows_checked: u64,
    /// The first row number in the file, and the row count, of each row group read.
    row_groups: Vec<(u64, u64)>,
}

impl OrderCheck {
    /// The row number in the file of the `index`th row read.
    fn file_row(&self, index: u64) -> u64 {
        let mut before = 0;
        for &(start, rows) in &self.row_groups {
            if index < before + rows {
                return start + index - before;
            }
            before += rows;
        }
        index
    }
}

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

/// Whether two Arrow types hold the same values, whatever their nested fields are named and
/// whether those are declared nullable (a cast turns one into the other).
fn same_values(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (DataType::List(x), DataType::List(y)) | (DataType::Map(x, _), DataType::Map(y, _)) => {
            same_values(x.data_type(), y.data_type())
        }
        (DataType::Struct(x), DataType::Struct(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(f, g)| same_values(f.data_type(), g.data_type()))
        }
        _ => a == b,
    }
}

impl FileReader {
    fn mismatch(&self, message: String) -> Error {
        Error::InputSchemaMismatch {
            file: self.file.clone(),
            partition: self.partition_id.clone(),
            message,
        }
    }

    fn arrow_error(&self, source: ArrowError) -> Error {
        Error::Arrow {
            context: format!("reading {} for partition {}", self.file, self.partition_id),
            source,
        }
    }

    fn corrupt(&self, source: datafusion::parquet::errors::ParquetError) -> Error {
        Error::CorruptInputFile {
            file: self.file.clone(),
            partition: self.partition_id.clone(),
            source,
        }
    }

    /// The footer's read is the file's first request: a missing file is told from a corrupt
    /// one by the store's answer to it.
    fn open_error(&self, error: ParquetError) -> Error {
        match error {
            ParquetError::External(source) => match source.downcast::<object_store::Error>() {
                Ok(source) => match *source {
                    source @ object_store::Error::NotFound { .. } => Error::MissingInputFile {
                        file: self.file.clone(),
                        partition: self.partition_id.clone(),
                        source,
                    },
                    other => Error::object_store(&self.file, other),
                },
                Err(other) => self.corrupt(ParquetError::External(other)),
            },
            other => self.corrupt(other),
        }
    }

    pub(super) async fn open(
        &self,
        runtime: &RuntimeEnv,
    ) -> Result<(WindowedStream, ColumnAdapter, OrderCheck)> {
        let address = ObjectAddress::parse(&self.file)?;
        let store = runtime.object_store(&address.store_url).map_err(|e| {
            Error::location_from(&self.file, "no object store for it in the session", e)
        })?;
        let local = address.is_local();
        let mut reader = ObjectFileReader::new(store, address.path, Arc::clone(&self.requests))
            .caching_footer(runtime.cache_manager.get_file_metadata_cache(), &self.file);
        if local {
            reader = reader.reading_spans_together();
        }
        // Column types come from the Parquet schema, not from an Arrow schema its writer embedded:
        // Sleeper's DataFusion compaction declares its strings Utf8View and its byte arrays
        // BinaryView there, and both read as the table's Utf8 and Binary this way.
        let ranges = self.filter.first_key_ranges();
        let key_type = self.key_types[0];
        let column_index = if KeyPruning::wants_column_index(ranges, key_type, self.order) {
            PageIndexPolicy::Optional
        } else {
            PageIndexPolicy::Skip
        };
        let options = ArrowReaderOptions::new()
            .with_skip_arrow_metadata(true)
            .with_offset_index_policy(PageIndexPolicy::Optional)
            .with_column_index_policy(column_index);
        let reader_metadata = ArrowReaderMetadata::load_async(&mut reader, options)
            .await
            .map_err(|e| self.open_error(e))?;
        let file_schema = Arc::clone(reader_metadata.schema());
        let mut file_columns = Vec::with_capacity(self.read_schema.fields().len());
        let mut casts = Vec::with_capacity(self.read_schema.fields().len());
        for field in self.read_schema.fields() {
            let (index, file_field) = file_schema
                .column_with_name(field.name())
                .ok_or_else(|| self.mismatch(format!("it has no column {:?}", field.name())))?;
            if file_field.data_type() == field.data_type() {
                casts.push(None);
            } else if same_values(file_field.data_type(), field.data_type()) {
                casts.push(Some(field.data_type().clone()));
            } else {
                return Err(self.mismatch(format!(
                    "column {:?} is {} in the file but {} in the table",
                    field.name(),
                    file_field.data_type(),
                    field.data_type()
                )));
            }
            file_columns.push(index);
        }
        let mut selected = file_columns.clone();
        selected.sort_unstable();
        let positions = file_columns
            .iter()
            .map(|c| {
                selected
                    .binary_search(c)
                    .expect("selected holds every file column")
            })
            .collect();
        let mask = ProjectionMask::roots(reader_metadata.parquet_schema(), selected);
        let metadata = reader_metadata.metadata();
        let first_key = self.read_schema.field(0).name();
        let pruning = KeyPruning::new(metadata, first_key, key_type, self.order, ranges);
        let mut row_groups = pruning.row_groups(metadata);
        pruning
            .narrow_to_kept_rows(&mut row_groups, &reader, &reader_metadata, &self.filter)
            .await
            .map_err(|e| self.corrupt(e))?;
        self.row_groups_pruned
            .add(metadata.num_row_groups() - row_groups.len());
        let mut starts = Vec::with_capacity(metadata.num_row_groups());
        let mut start = 0u64;
        for group in metadata.row_groups() {
            starts.push(start);
            start += group.num_rows() as u64;
        }
        let check = OrderCheck {
            row_groups: row_groups
                .iter()
                .map(|read| {
                    let first = starts[read.row_group] + read.first_row as u64;
                    (first, (read.end_row - read.first_row) as u64)
                })
                .collect(),
            ..OrderCheck::default()
        };
        let stream = WindowedStream {
            fetcher: WindowFetcher {
                // Two windows' pages are held at once: the one decoded and the next.
                windows: windows(
                    metadata,
                    &row_groups,
                    &mask,
                    self.fetch_budget / 2,
                    self.batch_size,
                ),
                reader,
                metadata: reader_metadata.clone(),
                projection: mask,
                in_flight: None,
            },
            batch_size: self.batch_size,
            current: None,
        };
        Ok((stream, ColumnAdapter { positions, casts }, check))
    }

    pub(super) async fn run(
        self,
        (mut stream, adapter, mut check): (WindowedStream, ColumnAdapter, OrderCheck),
        sender: mpsc::Sender<Result<KeyedBatch>>,
    ) {
        loop {
            // A batch is decoded only once the merge has room for it, so a file holds the batch
            // being merged and the one queued behind it, never a third waiting to be queued.
            let Ok(room) = sender.reserve().await else {
                return;
            };
            let Some(batch) = stream.next().await else {
                return;
            };
            let (keyed, past_end) = match batch
                .map_err(|e| self.corrupt(e))
                .and_then(|b| self.prepare(b, &adapter, &mut check))
            {
                Ok(prepared) => prepared,
                Err(error) => {
                    room.send(Err(error));
                    return;
                }
            };
            if let Some(keyed) = keyed {
                room.send(Ok(keyed));
            }
            if past_end {
                return;
            }
        }
    }

    /// Which rows pass the region and the age-off filters; `None` when all do.
    ///
    /// Age-off keeps `t >= now - maxAge`, as Sleeper's DataFusion compaction does (its Java path
    /// keeps `now - t < maxAge`, dropping the row exactly at the boundary): exports follow the
    /// DataFusion path, the one that applies filters. Null times compare as null and are dropped.
    fn keep(&self, batch: &RecordBatch) -> std::result::Result<Option<BooleanArray>, ArrowError> {
        let mut mask = self.filter.evaluate(batch)?;
        for &(column, cutoff) in self.age_offs.iter() {
            let recent = gt_eq(batch.column(column), &Int64Array::new_scalar(cutoff))?;
            mask = Some(match mask {
                Some(previous) => and(&previous, &recent)?,
                None => recent,
            });
        }
        Ok(mask.map(|mask| match mask.null_count() {
            0 => mask,
            _ => prep_null_mask_filter(&mask),
        }))
    }

    /// Adapts, checks the order of, filters and encodes one batch; also says whether the file
    /// has passed the region.
    fn prepare(
        &self,
        batch: RecordBatch,
        adapter: &ColumnAdapter,
        check: &mut OrderCheck,
    ) -> Result<(Option<KeyedBatch>, bool)> {
        let arrow_error = |source| self.arrow_error(source);
        self.rows_read.add(batch.num_rows());
        let columns = adapter
            .positions
            .iter()
            .zip(&adapter.casts)
            .map(|(&position, target)| {
                let column = batch.column(position);
                match target {
                    Some(target) => cast(column, target),
                    None => Ok(Arc::clone(column)),
                }
            })
            .collect::<std::result::Result<Vec<ArrayRef>, _>>()
            .map_err(|e| self.mismatch(format!("its values do not fit the table schema: {e}")))?;
        let batch = RecordBatch::try_new(Arc::clone(&self.read_schema), columns)
            .map_err(|e| self.mismatch(format!("its rows do not fit the table schema: {e}")))?;
        let past_end = self.filter.past_kept_keys(&batch).map_err(arrow_error)?;
        let mask = self
            .keep(&batch)
            .map_err(arrow_error)?
            .filter(|mask| mask.true_count() < batch.num_rows());
        // The order check reads every row, so then every row's key is encoded and the kept rows
        // point into them; without it, only the kept rows' keys are.
        let (mut batch, mask) = match mask {
            Some(mask) if !self.verify_order => (
                filter_record_batch(&batch, &mask).map_err(arrow_error)?,
                None,
            ),
            mask => (batch, mask),
        };
        if batch.num_rows() == 0 {
            return Ok((None, past_end));
        }
        let (rows, prefixes) = self.sort_keys(&batch)?;
        if self.verify_order {
            self.check_order(&batch, &rows, &prefixes, check)?;
        }
        let keys = match mask {
            None => SortKeys {
                rows,
                kept: None,
                prefixes,
            },
            Some(mask) if mask.true_count() == 0 => return Ok((None, past_end)),
            Some(mask) => {
                let kept: Vec<u32> = mask.values().set_indices().map(|i| i as u32).collect();
                batch = filter_record_batch(&batch, &mask).map_err(arrow_error)?;
                SortKeys {
                    prefixes: kept.iter().map(|&i| prefixes[i as usize]).collect(),
                    rows,
                    kept: Some(kept),
                }
            }
        };
        Ok((Some(KeyedBatch { batch, keys }), past_end))
    }

    /// The batch's keys in the table's order, as row format and as their eight-byte prefixes.
    fn sort_keys(&self, batch: &RecordBatch) -> Result<(Rows, Vec<u64>)> {
        let keys: Vec<ArrayRef> = self
            .key_types
            .iter()
            .enumerate()
            .map(|(i, &t)| self.order.ordered_array(t, batch.column(i)))
            .collect();
        let rows = self
            .converter
            .convert_columns(&keys)
            .map_err(|source| self.arrow_error(source))?;
        let prefixes = rows.iter().map(prefix).collect();
        Ok((rows, prefixes))
    }

    /// Fails on the first row that sorts before the row read before it: the merge of files not
    /// in the table's order would be out of order, silently. Every row read is checked; rows a
    /// file holds past the region's end are not read, so not checked.
    fn check_order(
        &self,
        batch: &RecordBatch,
        rows: &Rows,
        prefixes: &[u64],
        check: &mut OrderCheck,
    ) -> Result<()> {
        let Some(last) = prefixes.len().checked_sub(1) else {
            return Ok(());
        };
        if let Some((previous, _)) = &check.last {
            if rows.row(0) < previous.row() {
                return Err(self.unsorted(batch, 0, check));
            }
        }
        // A fold over the prefixes vectorises; rows are compared only where prefixes tie.
        let (descends, ties) = prefixes
            .windows(2)
            .fold((false, false), |(descends, ties), pair| {
                (descends | (pair[1] < pair[0]), ties | (pair[1] == pair[0]))
            });
        if descends || ties {
            let descent = (1..prefixes.len()).find(|&i| match prefixes[i].cmp(&prefixes[i - 1]) {
                Ordering::Less => true,
                Ordering::Equal => rows.row(i) < rows.row(i - 1),
                Ordering::Greater => false,
            });
            if let Some(row) = descent {
                return Err(self.unsorted(batch, row, check));
            }
        }
        check.last = Some((rows.row(last).owned(), self.key_values(batch, last)));
        check.rows_checked += prefixes.len() as u64;
        Ok(())
    }

    fn key_values(&self, batch: &RecordBatch, row: usize) -> Vec<KeyValue> {
        (0..self.key_types.len())
            .filter_map(|column| KeyValue::from_array(batch.column(column), row).ok())
            .collect()
    }

    fn unsorted(&self, batch: &RecordBatch, row: usize, check: &OrderCheck) -> Error {
        let key = self.key_values(batch, row);
        let previous = match row {
            0 => check
                .last
                .as_ref()
                .map(|(_, values)| values.clone())
                .unwrap_or_default(),
            _ => self.key_values(batch, row - 1),
        };
        let other = self.order.other();
        let fits_other = other.compare_keys(&previous, &key) != Ordering::Greater;
        let show = |values: &[KeyValue]| {
            let shown: Vec<String> = values.iter().map(KeyValue::to_string).collect();
            format!("({})", shown.join(", "))
        };
        Error::UnsortedInputFile {
            file: self.file.clone(),
            partition: self.partition_id.clone(),
            row: check.file_row(check.rows_checked + row as u64),
            key: show(&key),
            previous: show(&previous),
            order: self.order,
            other_order_fits: fits_other.then_some(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::merge::prune::tests::sorted_file;
    use crate::plan::merge::prune::RowGroupRead;
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
        WindowedStream {
            fetcher: WindowFetcher {
                reader,
                metadata,
                projection: ProjectionMask::all(),
                windows,
                in_flight: None,
            },
            batch_size,
            current: None,
        }
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
