//! Reading one input file of a leaf: opening it (footer read, schema adaptation, row-group
//! pruning on the region), then, batch by batch, filtering to the region and age-off, encoding
//! sort keys and checking the order.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::kernels::boolean::and;
use datafusion::arrow::compute::kernels::cmp::gt_eq;
use datafusion::arrow::compute::{filter_record_batch, prep_null_mask_filter};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::row::{RowConverter, Rows};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::PageIndexPolicy;
use datafusion::physical_plan::metrics::Count;
use tokio::sync::{mpsc, Semaphore};

use super::adapt::ColumnAdapter;
use super::decode::WindowedStream;
use super::fetch::{pages_fetched, windows, RowGroupRead};
use super::keys::{prefix, KeyedBatch, SortKeys};
use super::object_file::ObjectFileReader;
use super::order_check::OrderCheck;
use super::prune::KeyPruning;
use crate::error::{Error, Result};
use crate::model::{KeyOrder, PrimitiveType};
use crate::plan::filter::RowFilter;
use crate::storage::ObjectAddress;

/// A file whose footer is read and whose row groups are chosen: what it will fetch and decode
/// is known before anything is, so the leaf can size its budgets to its pool.
pub(super) struct OpenedFile {
    reader: ObjectFileReader,
    reader_metadata: ArrowReaderMetadata,
    mask: ProjectionMask,
    row_groups: Vec<RowGroupRead>,
    adapter: ColumnAdapter,
    check: OrderCheck,
}

impl OpenedFile {
    /// Compressed bytes it holds at once, reading windows of about `fetch_budget / 2` bytes:
    /// the window decoded and the next one, fetched meanwhile. A file without an offset index
    /// is read a row group at a time, whatever the budget.
    pub(super) fn fetched_bytes(&self, fetch_budget: usize, batch_rows: usize) -> usize {
        let metadata = self.reader_metadata.metadata();
        let windows = windows(
            metadata,
            &self.row_groups,
            &self.mask,
            fetch_budget / 2,
            batch_rows,
        );
        let largest = windows
            .into_iter()
            .map(|window| {
                pages_fetched(metadata, &self.mask, window)
                    .iter()
                    .map(|range| usize::try_from(range.end - range.start).unwrap_or(usize::MAX))
                    .fold(0, usize::saturating_add)
            })
            .max()
            .unwrap_or(0);
        largest.saturating_mul(2)
    }

    /// Decoded bytes a row of the read columns takes in Arrow, from the footer's sizes of the
    /// row groups read: a byte array's unencoded length (where the writer recorded it, as
    /// Parquet's size statistics do) and its offset, else the column's uncompressed size.
    pub(super) fn decoded_row_bytes(&self) -> usize {
        let metadata = self.reader_metadata.metadata();
        let (mut bytes, mut rows) = (0u64, 0u64);
        for read in &self.row_groups {
            let group = metadata.row_group(read.row_group);
            rows += u64::try_from(group.num_rows()).unwrap_or(0);
            for (leaf, column) in group.columns().iter().enumerate() {
                if !self.mask.leaf_included(leaf) {
                    continue;
                }
                let uncompressed = u64::try_from(column.uncompressed_size()).unwrap_or(0);
                let unencoded = column
                    .unencoded_byte_array_data_bytes()
                    .and_then(|b| u64::try_from(b).ok())
                    .map_or(0, |b| {
                        b + 4 * u64::try_from(column.num_values()).unwrap_or(0)
                    });
                bytes += uncompressed.max(unencoded);
            }
        }
        usize::try_from(bytes.div_ceil(rows.max(1))).unwrap_or(usize::MAX)
    }

    /// Starts reading: windows of about `fetch_budget / 2` compressed bytes, batches of
    /// `batch_rows` rows.
    pub(super) fn read(
        self,
        fetch_budget: usize,
        batch_rows: usize,
    ) -> (WindowedStream, ColumnAdapter, OrderCheck) {
        let windows = windows(
            self.reader_metadata.metadata(),
            &self.row_groups,
            &self.mask,
            fetch_budget / 2,
            batch_rows,
        );
        let stream = WindowedStream::new(
            self.reader,
            self.reader_metadata,
            self.mask,
            windows,
            batch_rows,
        );
        (stream, self.adapter, self.check)
    }
}

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
    /// Requests for windows' bytes the leaf's files may have in flight together.
    pub(super) requests: Arc<Semaphore>,
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

    pub(super) async fn open(&self, runtime: &RuntimeEnv) -> Result<OpenedFile> {
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
        let (adapter, selected) =
            ColumnAdapter::new(Arc::clone(&self.read_schema), reader_metadata.schema())
                .map_err(|message| self.mismatch(message))?;
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
        let check = OrderCheck::new(self.order, self.key_types.len(), metadata, &row_groups);
        Ok(OpenedFile {
            reader,
            mask,
            row_groups,
            adapter,
            check,
            reader_metadata,
        })
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
        let batch = adapter
            .adapt(&batch)
            .map_err(|message| self.mismatch(message))?;
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
            check
                .check(&batch, &rows, &prefixes)
                .map_err(|unsorted| Error::UnsortedInputFile {
                    file: self.file.clone(),
                    partition: self.partition_id.clone(),
                    row: unsorted.row,
                    key: unsorted.key,
                    previous: unsorted.previous,
                    order: self.order,
                    other_order_fits: unsorted.other_order_fits,
                })?;
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
}
