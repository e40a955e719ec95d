//! Big leaves cut into key ranges (Sleeper's epic #1393 asks for exports "in chunks independent
//! of partitions"). A leaf of 10⁹ rows is one file written by one runner for hours; cut at keys
//! of its first row key into pieces of about `max_rows` rows, it is many ordinary leaf queries,
//! each with its own `subExportId` and a `regions` entry narrowed to its range, that runners
//! (Sleeper's too) export in parallel, and whose files, in range order, hold exactly the leaf's
//! export.
//!
//! The cut keys come from the files' Parquet row-group statistics: one read of each file's
//! footer, no data. Each row group counts its rows at its largest key, so the pieces are about
//! `max_rows` rows on unskewed data; any keys give a correct cut, since the pieces' ranges
//! together are exactly the leaf's, in the table's order.

use std::cmp::Ordering;

use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use futures::{stream, StreamExt, TryStreamExt};
use object_store::{GetOptions, GetRange, ObjectStoreExt};

use super::messages::BulkExportLeafPartitionQuery;
use crate::error::{Error, Result};
use crate::model::{KeyOrder, KeyValue, PrimitiveType, Range, Region};
use crate::table::SleeperTable;

/// Footers read at once.
const FOOTERS_AT_ONCE: usize = 16;
/// Enough for the footer of a file of thousands of row groups in one read.
const FOOTER_HINT: u64 = 256 * 1024;

/// Rows of one row group, at its largest first-key value.
#[derive(Debug, Clone)]
struct RowGroupRows {
    min: KeyValue,
    max: KeyValue,
    rows: u64,
}

/// `query` as it is, or cut into pieces of about `max_rows` rows when its file references say
/// it holds more: pieces in key order, the first taking the query's sub-export id.
pub async fn cut_leaf_query(
    table: &SleeperTable,
    query: BulkExportLeafPartitionQuery,
    max_rows: u64,
) -> Result<Vec<BulkExportLeafPartitionQuery>> {
    if referenced_rows(table, &query.leaf_partition_id) <= max_rows {
        return Ok(vec![query]);
    }
    let schema = &table.properties.schema;
    let order = table.properties.key_order;
    let key = &schema.row_key_fields[0];
    let key_type = schema.row_key_types()[0];
    let leaf_range = &query.partition_region.ranges[0];
    // Owned names: a stream of references is not provably `Send` to a spawned planner's task
    // (rust-lang/rust#102211).
    let mut files: Vec<String> = query.files.clone();
    files.sort();
    files.dedup();
    let groups: Vec<Vec<RowGroupRows>> = stream::iter(files)
        .map(|file| async move {
            let metadata = read_footer(table, &file).await?;
            Ok::<_, Error>(row_groups(&metadata, &key.name, key_type))
        })
        .buffer_unordered(FOOTERS_AT_ONCE)
        .try_collect()
        .await?;
    let mut groups: Vec<RowGroupRows> = groups
        .into_iter()
        .flatten()
        // As the merge prunes: by statistics only where they are in the table's order.
        .filter(|g| {
            !order.agrees_with_arrow(key_type) || leaf_range.overlaps(&g.min, &g.max, order)
        })
        .collect();
    let rows: u64 = groups.iter().map(|g| g.rows).sum();
    let pieces = rows.div_ceil(max_rows.max(1));
    if pieces <= 1 {
        return Ok(vec![query]);
    }
    // A cut at or below the lowest key would leave its piece before empty.
    let lowest = groups
        .iter()
        .map(|g| &g.min)
        .min_by(|a, b| order.compare(a, b))
        .cloned()
        .expect("rows come from row groups");
    groups.sort_by(|a, b| order.compare(&a.max, &b.max));
    let mut cuts: Vec<KeyValue> = Vec::new();
    let mut counted = 0;
    let mut next_piece = 1;
    for group in &groups {
        counted += group.rows;
        while next_piece < pieces
            && u128::from(counted) * u128::from(pieces) >= u128::from(next_piece) * u128::from(rows)
        {
            let inside = order.compare(&group.max, &leaf_range.min) == Ordering::Greater
                && order.compare(&group.max, &lowest) == Ordering::Greater
                && leaf_range
                    .max
                    .as_ref()
                    .is_none_or(|max| order.compare(&group.max, max) == Ordering::Less);
            let after_last = cuts
                .last()
                .is_none_or(|last| order.compare(&group.max, last) == Ordering::Greater);
            if inside && after_last {
                cuts.push(group.max.clone());
            }
            next_piece += 1;
        }
    }
    if cuts.is_empty() {
        tracing::warn!(
            leaf = query.leaf_partition_id,
            rows,
            "the leaf holds more rows than a file may, but its first row key cannot be cut \
             (one value): it stays one file"
        );
        return Ok(vec![query]);
    }
    Ok(pieces_at(query, &cuts, order))
}

/// The rows the leaf's file references (its own and its ancestors') say they hold.
fn referenced_rows(table: &SleeperTable, leaf_id: &str) -> u64 {
    table
        .partitions
        .get(leaf_id)
        .into_iter()
        .chain(table.partitions.ancestors(leaf_id))
        .flat_map(|partition| table.files_of(&partition.id))
        .map(|reference| reference.number_of_rows)
        .sum()
}

/// The file's metadata from a read of its last bytes (and, for a footer bigger than that, one
/// more of exactly the footer).
async fn read_footer(table: &SleeperTable, file: &str) -> Result<ParquetMetaData> {
    let location = table.stores.resolve(file)?;
    let path = &location.prefix;
    let missing = |source| Error::MissingInputFile {
        file: file.to_owned(),
        partition: "(cutting its leaf)".into(),
        source,
    };
    let corrupt = |source| Error::CorruptInputFile {
        file: file.to_owned(),
        partition: "(cutting its leaf)".into(),
        source,
    };
    let tail = location
        .store
        .get_opts(
            path,
            GetOptions {
                range: Some(GetRange::Suffix(FOOTER_HINT)),
                ..GetOptions::default()
            },
        )
        .await
        .map_err(missing)?;
    let size = tail.meta.size;
    let mut bytes = tail.bytes().await.map_err(missing)?;
    let mut reader = ParquetMetaDataReader::new();
    loop {
        match reader.try_parse_sized(&bytes, size) {
            Ok(()) => return reader.finish().map_err(corrupt),
            Err(ParquetError::NeedMoreData(needed)) if (needed as u64) > bytes.len() as u64 => {
                let needed = (needed as u64).min(size);
                bytes = location
                    .store
                    .get_range(path, size - needed..size)
                    .await
                    .map_err(missing)?;
            }
            Err(error) => return Err(corrupt(error)),
        }
    }
}

/// Each row group's rows and the range of the column `key`, where its statistics give them
/// exactly.
fn row_groups(metadata: &ParquetMetaData, key: &str, key_type: PrimitiveType) -> Vec<RowGroupRows> {
    let columns = metadata.file_metadata().schema_descr();
    let Some(column) =
        (0..columns.num_columns()).find(|&c| columns.column(c).path().string() == key)
    else {
        return Vec::new();
    };
    metadata
        .row_groups()
        .iter()
        .filter_map(|group| {
            let statistics = group.column(column).statistics()?;
            let (min, max) = KeyValue::bounds_from_statistics(statistics, key_type)?;
            Some(RowGroupRows {
                min,
                max,
                rows: group.num_rows().max(0) as u64,
            })
        })
        .collect()
}

/// The query cut at `cuts` (increasing, inside the leaf's first key range): piece `i` takes the
/// rows from cut `i - 1` (inclusive) to cut `i` (exclusive).
fn pieces_at(
    query: BulkExportLeafPartitionQuery,
    cuts: &[KeyValue],
    order: KeyOrder,
) -> Vec<BulkExportLeafPartitionQuery> {
    let leaf = &query.partition_region;
    let bounds: Vec<(KeyValue, bool)> =
        std::iter::once((leaf.ranges[0].min.clone(), leaf.ranges[0].min_inclusive))
            .chain(cuts.iter().map(|cut| (cut.clone(), true)))
            .collect();
    let mut pieces = Vec::with_capacity(bounds.len());
    for (index, (min, min_inclusive)) in bounds.iter().enumerate() {
        let (max, max_inclusive) = match cuts.get(index) {
            Some(cut) => (Some(cut.clone()), false),
            None => (leaf.ranges[0].max.clone(), leaf.ranges[0].max_inclusive),
        };
        let mut range_region = leaf.clone();
        range_region.ranges[0] = Range {
            min: min.clone(),
            min_inclusive: *min_inclusive,
            max,
            max_inclusive,
        };
        let regions: Vec<Region> = query
            .regions
            .iter()
            .filter_map(|region| region.intersect(&range_region, order))
            .collect();
        if regions.is_empty() {
            continue;
        }
        pieces.push(BulkExportLeafPartitionQuery {
            sub_export_id: if pieces.is_empty() {
                query.sub_export_id.clone()
            } else {
                uuid::Uuid::new_v4().to_string()
            },
            regions,
            ..query.clone()
        });
    }
    pieces
}
