//! The exact region filter: a file referenced by several partitions holds rows of all of them,
//! so every row is checked against the leaf's region, in the table's key order.

use std::cmp::Ordering;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Datum, Int32Array, Int64Array, Scalar,
};
use datafusion::arrow::compute::kernels::boolean::{and, or};
use datafusion::arrow::compute::kernels::cmp::{gt, gt_eq, lt, lt_eq};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;

use crate::model::{KeyOrder, KeyValue, PrimitiveType, Range, Region};

/// A key value as an Arrow scalar comparable with [`KeyOrder::ordered_array`] output.
fn ordered_scalar(value: &KeyValue, order: KeyOrder) -> Box<dyn Datum + Send + Sync> {
    match value {
        KeyValue::Int(v) => Box::new(Int32Array::new_scalar(*v)),
        KeyValue::Long(v) => Box::new(Int64Array::new_scalar(*v)),
        KeyValue::String(s) => Box::new(Scalar::new(BinaryArray::from_vec(vec![
            &order.ordered_bytes(PrimitiveType::String, s.as_bytes())[..],
        ]))),
        KeyValue::Bytes(b) => Box::new(Scalar::new(BinaryArray::from_vec(vec![
            &order.ordered_bytes(PrimitiveType::ByteArray, b)[..],
        ]))),
    }
}

struct Bound {
    value: Box<dyn Datum + Send + Sync>,
    inclusive: bool,
}

struct DimensionFilter {
    column: usize,
    key_type: PrimitiveType,
    order: KeyOrder,
    min: Option<Bound>,
    max: Option<Bound>,
}

impl DimensionFilter {
    fn new(column: usize, key_type: PrimitiveType, range: &Range, order: KeyOrder) -> Option<Self> {
        let min =
            (range.min != KeyValue::minimum(key_type) || !range.min_inclusive).then(|| Bound {
                value: ordered_scalar(&range.min, order),
                inclusive: range.min_inclusive,
            });
        let max = range.max.as_ref().map(|max| Bound {
            value: ordered_scalar(max, order),
            inclusive: range.max_inclusive,
        });
        (min.is_some() || max.is_some()).then_some(DimensionFilter {
            column,
            key_type,
            order,
            min,
            max,
        })
    }

    fn ordered(&self, batch: &RecordBatch) -> ArrayRef {
        self.order
            .ordered_array(self.key_type, batch.column(self.column))
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<BooleanArray, ArrowError> {
        let column = self.ordered(batch);
        let above_min = self
            .min
            .as_ref()
            .map(|min| {
                if min.inclusive {
                    gt_eq(&column, min.value.as_ref())
                } else {
                    gt(&column, min.value.as_ref())
                }
            })
            .transpose()?;
        let below_max = self.below_max(&column)?;
        Ok(match (above_min, below_max) {
            (Some(a), Some(b)) => and(&a, &b)?,
            (Some(only), None) | (None, Some(only)) => only,
            (None, None) => unreachable!("a dimension filter has at least one bound"),
        })
    }

    fn below_max(&self, ordered: &ArrayRef) -> Result<Option<BooleanArray>, ArrowError> {
        self.max
            .as_ref()
            .map(|max| {
                if max.inclusive {
                    lt_eq(ordered, max.value.as_ref())
                } else {
                    lt(ordered, max.value.as_ref())
                }
            })
            .transpose()
    }
}

struct RegionFilter {
    dimensions: Vec<DimensionFilter>,
}

impl RegionFilter {
    fn new(region: &Region, key_types: &[PrimitiveType], order: KeyOrder) -> Self {
        RegionFilter {
            dimensions: region
                .ranges
                .iter()
                .zip(key_types)
                .enumerate()
                .filter_map(|(column, (range, &key_type))| {
                    DimensionFilter::new(column, key_type, range, order)
                })
                .collect(),
        }
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<Option<BooleanArray>, ArrowError> {
        let mut combined: Option<BooleanArray> = None;
        for dimension in &self.dimensions {
            let mask = dimension.evaluate(batch)?;
            combined = Some(match combined {
                Some(previous) => and(&previous, &mask)?,
                None => mask,
            });
        }
        Ok(combined)
    }
}

/// Keeps rows inside the partition region and inside at least one of the query's regions.
/// Row-key columns must be the first columns of the batches it sees, in schema order.
pub struct RowFilter {
    partition: RegionFilter,
    /// `None` when the query regions add nothing to the partition region (Sleeper's exports).
    query_regions: Option<Vec<RegionFilter>>,
    /// The ranges of the first row key that kept rows can have.
    first_key_ranges: Vec<Range>,
    /// The upper end of those ranges.
    first_key_end: Option<DimensionFilter>,
    /// Those ranges as filters of the first row key alone; `None` where one keeps every key.
    first_key_filters: Option<Vec<DimensionFilter>>,
}

impl RowFilter {
    pub fn new(
        partition: &Region,
        query_regions: &[Region],
        row_key_types: &[PrimitiveType],
        order: KeyOrder,
    ) -> Self {
        let whole_partition = query_regions.iter().any(|r| r == partition);
        let partition_first = &partition.ranges[0];
        let first_key_ranges: Vec<Range> = if whole_partition {
            vec![partition_first.clone()]
        } else {
            query_regions
                .iter()
                .filter_map(|r| r.ranges[0].intersect(partition_first, order))
                .collect()
        };
        let furthest = first_key_ranges
            .iter()
            .max_by(|a, b| match (&a.max, &b.max) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(x), Some(y)) => order
                    .compare(x, y)
                    .then(a.max_inclusive.cmp(&b.max_inclusive)),
            })
            .unwrap_or(partition_first);
        RowFilter {
            partition: RegionFilter::new(partition, row_key_types, order),
            query_regions: (!whole_partition).then(|| {
                query_regions
                    .iter()
                    .map(|r| RegionFilter::new(r, row_key_types, order))
                    .collect()
            }),
            first_key_end: DimensionFilter::new(0, row_key_types[0], furthest, order),
            first_key_filters: first_key_ranges
                .iter()
                .map(|range| DimensionFilter::new(0, row_key_types[0], range, order))
                .collect(),
            first_key_ranges,
        }
    }

    pub fn first_key_ranges(&self) -> &[Range] {
        &self.first_key_ranges
    }

    /// Which values of the first row key lie in [`RowFilter::first_key_ranges`]; `None` when
    /// every value does.
    pub fn first_key_kept(&self, keys: &ArrayRef) -> Result<Option<BooleanArray>, ArrowError> {
        let Some(filters) = &self.first_key_filters else {
            return Ok(None);
        };
        let keys = RecordBatch::try_from_iter([("key", Arc::clone(keys))])?;
        let mut kept: Option<BooleanArray> = None;
        for filter in filters {
            let mask = filter.evaluate(&keys)?;
            kept = Some(match kept {
                Some(previous) => or(&previous, &mask)?,
                None => mask,
            });
        }
        Ok(Some(kept.unwrap_or_else(|| {
            BooleanArray::from(vec![false; keys.num_rows()])
        })))
    }

    /// `None` when every row passes.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<Option<BooleanArray>, ArrowError> {
        let in_partition = self.partition.evaluate(batch)?;
        let Some(query_regions) = &self.query_regions else {
            return Ok(in_partition);
        };
        let mut in_any_query: Option<BooleanArray> = None;
        for region in query_regions {
            let mask = region
                .evaluate(batch)?
                .unwrap_or_else(|| BooleanArray::from(vec![true; batch.num_rows()]));
            in_any_query = Some(match in_any_query {
                Some(previous) => or(&previous, &mask)?,
                None => mask,
            });
        }
        let in_any_query =
            in_any_query.unwrap_or_else(|| BooleanArray::from(vec![false; batch.num_rows()]));
        Ok(Some(match in_partition {
            Some(in_partition) => and(&in_partition, &in_any_query)?,
            None => in_any_query,
        }))
    }

    /// Files are sorted by the first row key, so once a batch ends at or past the upper end of
    /// the first key's ranges, no later row of that file can be kept.
    pub fn past_kept_keys(&self, batch: &RecordBatch) -> Result<bool, ArrowError> {
        let Some(end) = &self.first_key_end else {
            return Ok(false);
        };
        if batch.num_rows() == 0 {
            return Ok(false);
        }
        let last = end.ordered(&batch.slice(batch.num_rows() - 1, 1));
        Ok(end.below_max(&last)?.is_some_and(|below| !below.value(0)))
    }
}
