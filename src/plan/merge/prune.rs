//! Which rows of an input file a leaf reads, judged from the file's metadata on the first row
//! key: the row groups whose statistics reach the ranges the filter keeps, and in each of them
//! the rows from the first to the last page whose column index reaches those ranges. A piece
//! of a cut leaf, or a leaf of a file that several partitions share, starts and ends inside its
//! files' row groups; the rows of the pages outside are never fetched nor decoded. Pages of
//! sorted keys are long (delta-encoded longs put tens of thousands in Sleeper's 128 KiB), so
//! where the reading starts or ends on a page that also holds rows outside the ranges, that
//! page of the first row key alone is decoded to start and end at exactly the rows kept.

use datafusion::arrow::array::Array;
use datafusion::arrow::compute::prep_null_mask_filter;
use datafusion::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ParquetRecordBatchReaderBuilder, RowSelection, RowSelectionPolicy,
    RowSelector,
};
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::errors::{ParquetError, Result as ParquetResult};
use datafusion::parquet::file::metadata::ParquetMetaData;
use datafusion::parquet::file::page_index::offset_index::PageLocation;

use super::fetch::{self, HeldPages, RowGroupRead, Window};
use super::object_file::ObjectFileReader;
use crate::model::{KeyOrder, KeyValue, PrimitiveType, Range};
use crate::plan::filter::RowFilter;

/// The first row key's place in a file, and the ranges of it that the filter keeps.
pub(super) struct KeyPruning<'a> {
    ranges: &'a [Range],
    key_type: PrimitiveType,
    order: KeyOrder,
    /// The first row key's leaf column; `None` where its metadata cannot bound it in the table's
    /// order.
    column: Option<usize>,
}

impl<'a> KeyPruning<'a> {
    pub(super) fn new(
        metadata: &ParquetMetaData,
        first_key: &str,
        key_type: PrimitiveType,
        order: KeyOrder,
        ranges: &'a [Range],
    ) -> Self {
        let column = order
            .agrees_with_arrow(key_type)
            .then(|| {
                metadata
                    .file_metadata()
                    .schema_descr()
                    .columns()
                    .iter()
                    .position(|c| c.path().parts() == [first_key])
            })
            .flatten();
        KeyPruning {
            ranges,
            key_type,
            order,
            column,
        }
    }

    /// Whether a column index can drop pages: only when no kept range is all of the keys.
    pub(super) fn wants_column_index(
        ranges: &[Range],
        key_type: PrimitiveType,
        order: KeyOrder,
    ) -> bool {
        let minimum = KeyValue::minimum(key_type);
        order.agrees_with_arrow(key_type)
            && !ranges
                .iter()
                .any(|range| range.min_inclusive && range.min == minimum && range.max.is_none())
    }

    fn reaches(&self, bounds: Option<(KeyValue, KeyValue)>) -> bool {
        bounds.is_none_or(|(low, high)| {
            self.ranges
                .iter()
                .any(|range| range.overlaps(&low, &high, self.order))
        })
    }

    /// The row groups to read, in file order, each from its first to its last page that may
    /// hold kept rows; row groups with none are left out.
    pub(super) fn row_groups(&self, metadata: &ParquetMetaData) -> Vec<RowGroupRead> {
        let all = 0..metadata.num_row_groups();
        let Some(column) = self.column else {
            return all.map(|g| RowGroupRead::whole(metadata, g)).collect();
        };
        all.filter(|&row_group| {
            let bounds = metadata
                .row_group(row_group)
                .column(column)
                .statistics()
                .and_then(|s| KeyValue::bounds_from_statistics(s, self.key_type));
            self.reaches(bounds)
        })
        .filter_map(|row_group| self.pages_reaching(metadata, row_group, column))
        .collect()
    }

    /// The rows of `row_group` from the first to the last page that may hold kept rows (all of
    /// them without a column and an offset index that agree); `None` where no page does.
    fn pages_reaching(
        &self,
        metadata: &ParquetMetaData,
        row_group: usize,
        column: usize,
    ) -> Option<RowGroupRead> {
        let whole = RowGroupRead::whole(metadata, row_group);
        let index = metadata
            .column_index()
            .and_then(|index| index.get(row_group)?.get(column));
        let (Some(index), Some(pages)) = (index, trusted_pages(metadata, row_group, column)) else {
            return Some(whole);
        };
        if index.num_pages() != pages.len() as u64 {
            return Some(whole);
        }
        let rows = whole.end_row as i64;
        let reaches = |page: &usize| {
            self.reaches(KeyValue::bounds_from_column_index(
                index,
                *page,
                self.key_type,
            ))
        };
        let first = (0..pages.len()).find(reaches)?;
        let last = (first..pages.len()).rev().find(reaches)?;
        let end_row = pages
            .get(last + 1)
            .map_or(rows, |next| next.first_row_index);
        Some(RowGroupRead {
            row_group,
            first_row: pages[first].first_row_index as usize,
            end_row: end_row as usize,
        })
    }
}

impl KeyPruning<'_> {
    /// Whether page `page` of the key column's index lies wholly inside one kept range.
    fn page_inside(&self, metadata: &ParquetMetaData, row_group: usize, page: usize) -> bool {
        let bounds = self.column.and_then(|column| {
            let index = metadata.column_index()?.get(row_group)?.get(column)?;
            KeyValue::bounds_from_column_index(index, page, self.key_type)
        });
        bounds.is_some_and(|(low, high)| {
            self.ranges.iter().any(|range| {
                range.overlaps(&low, &low, self.order) && range.overlaps(&high, &high, self.order)
            })
        })
    }

    /// Narrows the first row group read to start at the first row the filter keeps, and the
    /// last to end after the last, by decoding the key column's page each starts or ends on
    /// (where that page is not wholly kept). Only rows known to be outside the ranges are
    /// dropped, so this holds whether or not the file is sorted.
    pub(super) async fn narrow_to_kept_rows(
        &self,
        reads: &mut Vec<RowGroupRead>,
        file: &ObjectFileReader,
        metadata: &ArrowReaderMetadata,
        filter: &RowFilter,
    ) -> ParquetResult<()> {
        let Some(column) = self.column else {
            return Ok(());
        };
        for at_start in [true, false] {
            let edge = if at_start {
                reads.first()
            } else {
                reads.last()
            };
            let Some(&read) = edge else {
                return Ok(());
            };
            let Some(narrowed) = self
                .narrow_edge(read, at_start, column, file, metadata, filter)
                .await?
            else {
                continue;
            };
            if narrowed.first_row < narrowed.end_row {
                let slot = if at_start {
                    reads.first_mut()
                } else {
                    reads.last_mut()
                };
                *slot.expect("the edge read above") = narrowed;
            } else if at_start {
                // The page held the row group's only kept rows, and none are: it is not read.
                reads.remove(0);
            } else {
                reads.pop();
            }
        }
        Ok(())
    }

    /// `read` narrowed at its start (or end) to the rows the filter keeps of the key page it
    /// starts (or ends) on; `None` where that page is wholly kept or cannot be found.
    async fn narrow_edge(
        &self,
        read: RowGroupRead,
        at_start: bool,
        column: usize,
        file: &ObjectFileReader,
        metadata: &ArrowReaderMetadata,
        filter: &RowFilter,
    ) -> ParquetResult<Option<RowGroupRead>> {
        let Some(pages) = trusted_pages(metadata.metadata(), read.row_group, column) else {
            return Ok(None);
        };
        let page = if at_start {
            pages
                .iter()
                .position(|p| p.first_row_index == read.first_row as i64)
        } else {
            pages
                .iter()
                .rposition(|p| (p.first_row_index as usize) < read.end_row)
        };
        let Some(page) =
            page.filter(|&page| !self.page_inside(metadata.metadata(), read.row_group, page))
        else {
            return Ok(None);
        };
        let page_rows = pages[page].first_row_index as usize
            ..pages
                .get(page + 1)
                .map_or(read.end_row, |next| next.first_row_index as usize);
        let kept = kept_rows_of_page(
            file,
            metadata,
            read.row_group,
            column,
            page_rows.clone(),
            filter,
        )
        .await?;
        Ok(Some(match (kept, at_start) {
            (Some(kept), true) => RowGroupRead {
                first_row: kept.start.max(read.first_row),
                ..read
            },
            (Some(kept), false) => RowGroupRead {
                end_row: kept.end.min(read.end_row),
                ..read
            },
            (None, true) => RowGroupRead {
                first_row: page_rows.end,
                ..read
            },
            (None, false) => RowGroupRead {
                end_row: page_rows.start,
                ..read
            },
        }))
    }
}

/// The key column's pages in `row_group`, from its offset index, where their first rows run
/// in order through the row group: an index from a hostile or broken writer is trusted no
/// further than its shape.
fn trusted_pages(
    metadata: &ParquetMetaData,
    row_group: usize,
    column: usize,
) -> Option<&[PageLocation]> {
    let pages = metadata
        .offset_index()?
        .get(row_group)?
        .get(column)?
        .page_locations();
    let rows = metadata.row_group(row_group).num_rows();
    let in_order = pages.first().is_some_and(|page| page.first_row_index == 0)
        && pages
            .windows(2)
            .all(|pair| pair[0].first_row_index < pair[1].first_row_index)
        && pages.last().is_some_and(|page| page.first_row_index < rows);
    in_order.then_some(pages)
}

/// The rows of `rows` (one page of the key column of `row_group`) from the first to the last
/// one the filter keeps; `None` when it keeps none.
async fn kept_rows_of_page(
    file: &ObjectFileReader,
    metadata: &ArrowReaderMetadata,
    row_group: usize,
    column: usize,
    rows: std::ops::Range<usize>,
    filter: &RowFilter,
) -> ParquetResult<Option<std::ops::Range<usize>>> {
    let key_column = ProjectionMask::leaves(metadata.parquet_schema(), [column]);
    let window = Window {
        row_group,
        first_row: rows.start,
        rows: rows.len(),
        opens_row_group: true,
        read_end_row: rows.end,
    };
    let pieces = fetch::pages_fetched(metadata.metadata(), &key_column, window);
    let pages = HeldPages::new(metadata.metadata(), row_group);
    pages.insert(fetch::join(fetch::fetch(file, pieces)).await?);
    let decoder = ParquetRecordBatchReaderBuilder::new_with_metadata(pages, metadata.clone())
        .with_projection(key_column)
        .with_row_groups(vec![row_group])
        .with_row_selection(RowSelection::from(vec![
            RowSelector::skip(rows.start),
            RowSelector::select(rows.len()),
        ]))
        .with_row_selection_policy(RowSelectionPolicy::Selectors)
        .with_batch_size(rows.len().max(1))
        .build()?;
    let (mut first, mut last) = (None, None);
    let mut row = rows.start;
    for batch in decoder {
        let keys = batch?.column(0).clone();
        if keys.is_empty() {
            continue;
        }
        let kept = filter
            .first_key_kept(&keys)
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        match kept {
            None => {
                first.get_or_insert(row);
                last = Some(row + keys.len() - 1);
            }
            Some(kept) => {
                let kept = match kept.null_count() {
                    0 => kept,
                    _ => prep_null_mask_filter(&kept),
                };
                let mut set = kept.values().set_indices();
                if let Some(i) = set.next() {
                    first.get_or_insert(row + i);
                    last = Some(row + set.last().unwrap_or(i));
                }
            }
        }
        row += keys.len();
    }
    Ok(first.zip(last).map(|(first, last)| first..last + 1))
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::metadata::PageIndexPolicy;
    use datafusion::parquet::file::properties::WriterProperties;

    use super::*;

    /// A file of `row_groups` row groups of `row_group_rows` rows with pages of `page_rows`:
    /// keys 0, 1, 2… and a string value for each.
    pub(in crate::plan::merge) fn sorted_file(
        row_groups: usize,
        row_group_rows: usize,
        page_rows: usize,
    ) -> bytes::Bytes {
        let schema = Arc::new(Schema::new(vec![
            Field::new("key", DataType::Int64, false),
            Field::new("value", DataType::Utf8, false),
        ]));
        let keys: Vec<i64> = (0..(row_groups * row_group_rows) as i64).collect();
        let values: StringArray = keys.iter().map(|k| Some(format!("value {k}"))).collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from(keys)), Arc::new(values)],
        )
        .unwrap();
        let properties = WriterProperties::builder()
            .set_max_row_group_row_count(Some(row_group_rows))
            .set_data_page_row_count_limit(page_rows)
            .set_write_batch_size(page_rows)
            .build();
        let mut bytes = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut bytes, schema, Some(properties)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        bytes.into()
    }

    /// Keys 0..3,000 in row groups of 1,000 rows and pages of 100.
    pub(in crate::plan::merge) fn file() -> bytes::Bytes {
        sorted_file(3, 1000, 100)
    }

    fn metadata(page_index: PageIndexPolicy) -> Arc<ParquetMetaData> {
        let options = ArrowReaderOptions::new().with_page_index_policy(page_index);
        let metadata = ArrowReaderMetadata::load(&file(), options).unwrap();
        Arc::clone(metadata.metadata())
    }

    fn reads(metadata: &ParquetMetaData, ranges: &[Range]) -> Vec<(usize, usize, usize)> {
        let pruning = KeyPruning::new(
            metadata,
            "key",
            PrimitiveType::Long,
            KeyOrder::default(),
            ranges,
        );
        pruning
            .row_groups(metadata)
            .into_iter()
            .map(|r| (r.row_group, r.first_row, r.end_row))
            .collect()
    }

    fn from(min: i64, max: Option<i64>) -> Range {
        Range::partition(KeyValue::Long(min), max.map(KeyValue::Long))
    }

    #[test]
    fn reading_starts_and_ends_at_the_pages_holding_kept_keys() {
        let metadata = metadata(PageIndexPolicy::Required);
        assert!(metadata.column_index().is_some());
        // Key 1,250 is on the third page of row group 1.
        assert_eq!(
            reads(&metadata, &[from(1250, None)]),
            [(1, 200, 1000), (2, 0, 1000)]
        );
        // Page boundaries: key 1,300 starts the fourth page, 1,299 is on the third; an
        // exclusive end at 2,100 ends the reading with the first page of row group 2.
        assert_eq!(reads(&metadata, &[from(1300, None)])[0], (1, 300, 1000));
        assert_eq!(reads(&metadata, &[from(1299, None)])[0], (1, 200, 1000));
        assert_eq!(
            reads(&metadata, &[from(1299, Some(2100))]),
            [(1, 200, 1000), (2, 0, 100)]
        );
        assert_eq!(
            reads(&metadata, &[from(1299, Some(2101))]),
            [(1, 200, 1000), (2, 0, 200)]
        );
        // Of two ranges, each row group is read from the first to the last page either reaches.
        assert_eq!(
            reads(&metadata, &[from(2500, Some(2550)), from(2250, Some(2300))]),
            [(2, 200, 600)]
        );
        // All keys: every row is read.
        let everything = Range::partition(KeyValue::minimum(PrimitiveType::Long), None);
        assert_eq!(
            reads(&metadata, std::slice::from_ref(&everything)),
            [(0, 0, 1000), (1, 0, 1000), (2, 0, 1000)]
        );
        assert!(!KeyPruning::wants_column_index(
            &[everything],
            PrimitiveType::Long,
            KeyOrder::default()
        ));
        let below = Range::partition(
            KeyValue::minimum(PrimitiveType::Long),
            Some(KeyValue::Long(5)),
        );
        for range in [from(5, None), below] {
            assert!(KeyPruning::wants_column_index(
                &[range],
                PrimitiveType::Long,
                KeyOrder::default()
            ));
        }
    }

    #[test]
    fn without_a_column_index_row_groups_are_read_whole() {
        let metadata = metadata(PageIndexPolicy::Skip);
        assert!(metadata.column_index().is_none());
        assert_eq!(reads(&metadata, &[from(1250, Some(1500))]), [(1, 0, 1000)]);
    }

    #[test]
    fn a_page_index_out_of_shape_is_not_trusted() {
        let metadata = metadata(PageIndexPolicy::Required);
        let mut offsets = metadata.offset_index().unwrap().clone();
        offsets[1][0].page_locations.swap(2, 3);
        let bent = metadata
            .as_ref()
            .clone()
            .into_builder()
            .set_offset_index(Some(offsets))
            .build();
        assert_eq!(reads(&bent, &[from(1250, None)])[0], (1, 0, 1000));
    }
}

#[cfg(test)]
mod narrowing_tests {
    use std::sync::Arc;

    use datafusion::parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
    use datafusion::parquet::file::metadata::PageIndexPolicy;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;
    use tokio::sync::Semaphore;

    use super::tests::file;
    use super::*;
    use crate::model::Region;

    /// The rows of the 3,000-key file read for a leaf of keys `min..max`, after narrowing.
    async fn narrowed(min: i64, max: i64) -> Vec<(usize, usize, usize)> {
        let store = Arc::new(InMemory::new());
        let path = object_store::path::Path::from("f.parquet");
        store.put(&path, file().into()).await.unwrap();
        let reader = ObjectFileReader::new(store, path, Arc::new(Semaphore::new(2)));
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required);
        let metadata = ArrowReaderMetadata::load_async(&mut reader.clone(), options)
            .await
            .unwrap();
        let region = Region {
            ranges: vec![Range::partition(
                KeyValue::Long(min),
                Some(KeyValue::Long(max)),
            )],
        };
        let order = KeyOrder::default();
        let filter = RowFilter::new(
            &region,
            std::slice::from_ref(&region),
            &[PrimitiveType::Long],
            order,
        );
        let pruning = KeyPruning::new(
            metadata.metadata(),
            "key",
            PrimitiveType::Long,
            order,
            filter.first_key_ranges(),
        );
        let mut reads = pruning.row_groups(metadata.metadata());
        pruning
            .narrow_to_kept_rows(&mut reads, &reader, &metadata, &filter)
            .await
            .unwrap();
        reads
            .into_iter()
            .map(|r| (r.row_group, r.first_row, r.end_row))
            .collect()
    }

    #[tokio::test]
    async fn reading_starts_and_ends_at_exactly_the_rows_kept() {
        assert_eq!(narrowed(1250, 2150).await, [(1, 250, 1000), (2, 0, 150)]);
        assert_eq!(narrowed(1250, 1260).await, [(1, 250, 260)]);
        // On page boundaries nothing is decoded, and nothing changes.
        assert_eq!(narrowed(1300, 2100).await, [(1, 300, 1000), (2, 0, 100)]);
        assert_eq!(
            narrowed(0, 3000).await,
            [(0, 0, 1000), (1, 0, 1000), (2, 0, 1000)]
        );
        // Keys past the file's last one.
        assert_eq!(narrowed(2999, 5000).await, [(2, 999, 1000)]);
        assert_eq!(narrowed(3000, 5000).await, []);
    }
}
