//! Sleeper's aggregation, streaming: rows with equal row and sort keys are adjacent in merge
//! order, so each run of equal keys collapses into one row as it passes, with no hash table and
//! no more than one batch held back (the last run of a batch may continue in the next).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, MapArray, PrimitiveArray, RecordBatch,
    StructArray, UInt32Array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::kernels::cmp::eq;
use datafusion::arrow::compute::{concat_batches, partition, take};
use datafusion::arrow::datatypes::{ArrowNativeTypeOp, DataType, Int32Type, Int64Type, SchemaRef};
use datafusion::arrow::error::ArrowError;

use crate::model::{Aggregation, AggregationOp, KeyValue, PrimitiveType};

/// Collapses runs of equal keys in a sorted stream of batches whose key columns come first.
pub struct RowAggregator {
    schema: SchemaRef,
    key_count: usize,
    /// The operation of each value column of the batches, in column order.
    value_ops: Vec<AggregationOp>,
    held: Option<RecordBatch>,
}

impl RowAggregator {
    /// `aggregations` name the value columns; every value column of `schema` must have one.
    pub fn new(schema: SchemaRef, key_count: usize, aggregations: &[Aggregation]) -> Self {
        let value_ops = schema.fields()[key_count..]
            .iter()
            .map(|field| {
                aggregations
                    .iter()
                    .find(|a| &a.column == field.name())
                    .map(|a| a.op)
                    .expect("validated: every value column has an aggregation")
            })
            .collect();
        RowAggregator {
            schema,
            key_count,
            value_ops,
            held: None,
        }
    }

    /// Aggregates `batch`; returns the rows whose groups are complete.
    pub fn push(&mut self, batch: RecordBatch) -> Result<Option<RecordBatch>, ArrowError> {
        if batch.num_rows() == 0 {
            return Ok(None);
        }
        let ranges = partition(&batch.columns()[..self.key_count])?.ranges();
        let aggregated = self.aggregate(&batch, &ranges)?;
        let Some(held) = self.held.take() else {
            self.held = Some(aggregated);
            return Ok(None);
        };
        let last = held.num_rows() - 1;
        if !self.same_keys(&held.slice(last, 1), &aggregated.slice(0, 1))? {
            self.held = Some(aggregated);
            return Ok(Some(held));
        }
        // A run crosses the batch boundary: fold the held row into the first row of this batch.
        let both = concat_batches(&self.schema, [&held.slice(last, 1), &aggregated])?;
        let ranges: Vec<Range<usize>> = std::iter::once(0..2)
            .chain((2..both.num_rows()).map(|row| row..row + 1))
            .collect();
        self.held = Some(self.aggregate(&both, &ranges)?);
        Ok((last > 0).then(|| held.slice(0, last)))
    }

    /// The last group, once the input has ended.
    pub fn finish(&mut self) -> Option<RecordBatch> {
        self.held.take()
    }

    fn same_keys(&self, a: &RecordBatch, b: &RecordBatch) -> Result<bool, ArrowError> {
        for column in 0..self.key_count {
            if !eq(a.column(column), b.column(column))?.value(0) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// One row per range: the keys of its first row, and each value column aggregated.
    fn aggregate(
        &self,
        batch: &RecordBatch,
        ranges: &[Range<usize>],
    ) -> Result<RecordBatch, ArrowError> {
        if ranges.len() == batch.num_rows() {
            return Ok(batch.clone());
        }
        let starts = UInt32Array::from_iter_values(ranges.iter().map(|r| r.start as u32));
        let mut columns = Vec::with_capacity(batch.num_columns());
        for key in &batch.columns()[..self.key_count] {
            columns.push(take(key, &starts, None)?);
        }
        for (column, &op) in batch.columns()[self.key_count..]
            .iter()
            .zip(&self.value_ops)
        {
            columns.push(aggregate_column(column, op, ranges)?);
        }
        RecordBatch::try_new(Arc::clone(&self.schema), columns)
    }
}

fn aggregate_column(
    column: &ArrayRef,
    op: AggregationOp,
    ranges: &[Range<usize>],
) -> Result<ArrayRef, ArrowError> {
    match (op, column.data_type()) {
        (
            AggregationOp::MapSum | AggregationOp::MapMin | AggregationOp::MapMax,
            DataType::Map(_, _),
        ) => aggregate_maps(column.as_map(), op.scalar(), ranges),
        (AggregationOp::Min | AggregationOp::Max, DataType::Utf8) => {
            take_extremes(column, ranges, op, |row| {
                column.as_string::<i32>().value(row).as_bytes()
            })
        }
        (AggregationOp::Min | AggregationOp::Max, DataType::Binary) => {
            take_extremes(column, ranges, op, |row| {
                column.as_binary::<i32>().value(row)
            })
        }
        (_, DataType::Int32) => Ok(Arc::new(aggregate_primitive(
            column.as_primitive::<Int32Type>(),
            op,
            ranges,
        ))),
        (_, DataType::Int64) => Ok(Arc::new(aggregate_primitive(
            column.as_primitive::<Int64Type>(),
            op,
            ranges,
        ))),
        (op, other) => Err(ArrowError::InvalidArgumentError(format!(
            "{op} cannot aggregate a {other} column"
        ))),
    }
}

/// Sums wrap on overflow, in the column's own width: Java's int and long addition, and
/// DataFusion's sum in Sleeper's compactions, do the same.
fn combine<T: ArrowNativeTypeOp + Ord>(op: AggregationOp, a: T, b: T) -> T {
    match op {
        AggregationOp::Min => a.min(b),
        AggregationOp::Max => a.max(b),
        _ => a.add_wrapping(b),
    }
}

fn aggregate_primitive<T: ArrowPrimitiveType>(
    values: &PrimitiveArray<T>,
    op: AggregationOp,
    ranges: &[Range<usize>],
) -> PrimitiveArray<T>
where
    T::Native: Ord,
{
    let values = values.values();
    PrimitiveArray::<T>::from_iter_values(ranges.iter().map(|range| {
        values[range.start + 1..range.end]
            .iter()
            .fold(values[range.start], |acc, &v| combine(op, acc, v))
    }))
    .with_data_type(T::DATA_TYPE)
}

/// Min and max of strings and byte arrays compare bytes unsigned, as DataFusion's `min` and
/// `max` do in Sleeper's compactions (keys, unlike values, follow Sleeper's Java order).
fn take_extremes<'a>(
    column: &'a ArrayRef,
    ranges: &[Range<usize>],
    op: AggregationOp,
    bytes: impl Fn(usize) -> &'a [u8],
) -> Result<ArrayRef, ArrowError> {
    let picks = UInt32Array::from_iter_values(ranges.iter().map(|range| {
        range
            .clone()
            .reduce(|best, row| {
                let better = match op {
                    AggregationOp::Min => bytes(row) < bytes(best),
                    _ => bytes(row) > bytes(best),
                };
                if better {
                    row
                } else {
                    best
                }
            })
            .expect("ranges are not empty") as u32
    }));
    take(column, &picks, None)
}

/// Each group's maps merged key by key; keys come out in the order they were first seen, as
/// Sleeper's DataFusion compaction writes them (`d_aggregation` of its fixtures).
fn aggregate_maps(
    maps: &MapArray,
    op: AggregationOp,
    ranges: &[Range<usize>],
) -> Result<ArrayRef, ArrowError> {
    let keys = maps.keys();
    let values = maps.values();
    let offsets = maps.value_offsets();
    let mut merged_keys = Vec::new();
    let mut merged_values: Vec<i64> = Vec::new();
    let mut lengths = Vec::with_capacity(ranges.len());
    for range in ranges {
        let group_start = merged_keys.len();
        let mut positions: HashMap<KeyValue, usize> = HashMap::new();
        for entry in offsets[range.start] as usize..offsets[range.end] as usize {
            let key = KeyValue::from_array(keys, entry)?;
            let value = match values.data_type() {
                DataType::Int32 => values.as_primitive::<Int32Type>().value(entry) as i64,
                _ => values.as_primitive::<Int64Type>().value(entry),
            };
            match positions.get(&key) {
                Some(&position) => {
                    let acc = &mut merged_values[position];
                    *acc = match values.data_type() {
                        DataType::Int32 => combine(op, *acc as i32, value as i32) as i64,
                        _ => combine(op, *acc, value),
                    };
                }
                None => {
                    positions.insert(key.clone(), merged_keys.len());
                    merged_keys.push(key);
                    merged_values.push(value);
                }
            }
        }
        lengths.push(merged_keys.len() - group_start);
    }
    let DataType::Map(entries_field, sorted) = maps.data_type() else {
        unreachable!("a map array has a map type")
    };
    let DataType::Struct(entry_fields) = entries_field.data_type() else {
        unreachable!("map entries are structs")
    };
    let value_array: ArrayRef = match values.data_type() {
        DataType::Int32 => Arc::new(PrimitiveArray::<Int32Type>::from_iter_values(
            merged_values.iter().map(|&v| v as i32),
        )),
        _ => Arc::new(PrimitiveArray::<Int64Type>::from_iter_values(merged_values)),
    };
    let key_type = PrimitiveType::from_arrow(keys.data_type()).ok_or_else(|| {
        ArrowError::InvalidArgumentError(format!(
            "map keys of type {} are not a Sleeper type",
            keys.data_type()
        ))
    })?;
    let key_array = KeyValue::array_of(merged_keys.into_iter().map(Some), key_type);
    let entries = StructArray::try_new(entry_fields.clone(), vec![key_array, value_array], None)?;
    Ok(Arc::new(MapArray::try_new(
        Arc::clone(entries_field),
        OffsetBuffer::from_lengths(lengths),
        entries,
        None,
        *sorted,
    )?))
}
