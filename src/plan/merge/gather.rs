//! Assembling a merged batch from the input batches its rows lie in.
//!
//! Arrow's `interleave` copies a column row by row in output order, so with many inputs every
//! row reads another input's memory: at 128 files each value was a cache miss, and the copies
//! cost 0.5 s of CPU per 10 M rows more than at 8 files (`perf`, `benches/scale.rs`). Here each
//! column is copied one input batch at a time: that batch's rows are read in their order (the
//! merge takes them in order, so the reads run forward through memory) and written to their
//! places in the output, which at a batch's size stays in cache.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, BooleanBufferBuilder, GenericByteArray,
    PrimitiveArray, RecordBatch,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::compute::interleave;
use datafusion::arrow::datatypes::{
    ArrowNativeType, BinaryType, ByteArrayType, DataType, Int32Type, Int64Type, SchemaRef, Utf8Type,
};
use datafusion::arrow::error::ArrowError;

/// The rows of one merged batch, grouped by the input batch (slot) they come from.
struct SourceOrder {
    /// (output position, row in its slot), slot by slot; within a slot, in output order.
    rows: Vec<(usize, usize)>,
    /// Where each slot's rows start in `rows`; one more entry than there are slots.
    starts: Vec<usize>,
}

impl SourceOrder {
    fn new(slots: usize, indices: &[(usize, usize)]) -> Self {
        let mut starts = vec![0; slots + 1];
        for &(slot, _) in indices {
            starts[slot + 1] += 1;
        }
        for slot in 0..slots {
            starts[slot + 1] += starts[slot];
        }
        let mut next = starts.clone();
        let mut rows = vec![(0, 0); indices.len()];
        for (position, &(slot, row)) in indices.iter().enumerate() {
            rows[next[slot]] = (position, row);
            next[slot] += 1;
        }
        SourceOrder { rows, starts }
    }

    /// Rows in the merged batch.
    fn len(&self) -> usize {
        self.rows.len()
    }

    /// Each slot with the rows taken from it.
    fn slots(&self) -> impl Iterator<Item = (usize, &[(usize, usize)])> {
        self.starts
            .windows(2)
            .enumerate()
            .map(|(slot, range)| (slot, &self.rows[range[0]..range[1]]))
    }

    fn nulls(&self, sources: &[&dyn Array]) -> Option<NullBuffer> {
        if sources.iter().all(|source| source.null_count() == 0) {
            return None;
        }
        let mut valid = BooleanBufferBuilder::new(self.len());
        valid.append_n(self.len(), true);
        for (slot, rows) in self.slots() {
            let source = sources[slot];
            if source.null_count() == 0 {
                continue;
            }
            for &(position, row) in rows {
                if source.is_null(row) {
                    valid.set_bit(position, false);
                }
            }
        }
        Some(NullBuffer::new(valid.finish()))
    }

    fn primitive<T: ArrowPrimitiveType>(&self, sources: &[&dyn Array]) -> ArrayRef {
        let mut values = vec![T::Native::default(); self.len()];
        for (slot, rows) in self.slots() {
            let source = sources[slot].as_primitive::<T>().values();
            for &(position, row) in rows {
                values[position] = source[row];
            }
        }
        Arc::new(PrimitiveArray::<T>::new(values.into(), self.nulls(sources)))
    }

    fn bytes<T: ByteArrayType>(&self, sources: &[&dyn Array]) -> Result<ArrayRef, ArrowError> {
        let mut lengths = vec![0; self.len()];
        for (slot, rows) in self.slots() {
            let offsets = sources[slot].as_bytes::<T>().value_offsets();
            for &(position, row) in rows {
                lengths[position] = (offsets[row + 1] - offsets[row]).as_usize();
            }
        }
        let mut offsets = Vec::with_capacity(self.len() + 1);
        let mut end = 0;
        offsets.push(T::Offset::usize_as(0));
        for length in lengths {
            end += length;
            offsets.push(T::Offset::from_usize(end).ok_or(ArrowError::OffsetOverflowError(end))?);
        }
        let mut values = vec![0u8; end];
        for (slot, rows) in self.slots() {
            let source = sources[slot].as_bytes::<T>();
            let (from, data) = (source.value_offsets(), source.value_data());
            for &(position, row) in rows {
                let into = offsets[position].as_usize()..offsets[position + 1].as_usize();
                values[into].copy_from_slice(&data[from[row].as_usize()..from[row + 1].as_usize()]);
            }
        }
        let array = GenericByteArray::<T>::try_new(
            OffsetBuffer::new(offsets.into()),
            values.into(),
            self.nulls(sources),
        )?;
        Ok(Arc::new(array))
    }
}

/// Copies the rows `indices` names (slot, row), in that order, out of `slots` into one batch.
pub(super) fn gather(
    schema: &SchemaRef,
    slots: &[RecordBatch],
    indices: &[(usize, usize)],
) -> Result<RecordBatch, ArrowError> {
    let order = SourceOrder::new(slots.len(), indices);
    let columns = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(c, field)| {
            let sources: Vec<&dyn Array> = slots.iter().map(|b| b.column(c).as_ref()).collect();
            match field.data_type() {
                DataType::Int32 => Ok(order.primitive::<Int32Type>(&sources)),
                DataType::Int64 => Ok(order.primitive::<Int64Type>(&sources)),
                DataType::Utf8 => order.bytes::<Utf8Type>(&sources),
                DataType::Binary => order.bytes::<BinaryType>(&sources),
                // Lists and maps, whose rows are rarer and larger: row by row.
                _ => interleave(&sources, indices),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{BinaryArray, Int32Array, Int64Array, ListArray, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("int", DataType::Int32, true),
            Field::new("long", DataType::Int64, true),
            Field::new("string", DataType::Utf8, true),
            Field::new("bytes", DataType::Binary, true),
            Field::new_list("list", Field::new_list_field(DataType::Int64, true), true),
        ]))
    }

    /// A batch of `rows` rows whose values name the batch and the row; every `null_every`th row
    /// is null (none when 0).
    fn slot(batch: usize, rows: usize, null_every: usize) -> RecordBatch {
        let value =
            |row: usize| (null_every == 0 || !row.is_multiple_of(null_every)).then_some(row);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from_iter(
                (0..rows).map(|r| value(r).map(|r| (batch * 1000 + r) as i32)),
            )),
            Arc::new(Int64Array::from_iter(
                (0..rows).map(|r| value(r).map(|r| -((batch * 1000 + r) as i64))),
            )),
            Arc::new(StringArray::from_iter((0..rows).map(|r| {
                value(r).map(|r| format!("{batch}:{}", "é".repeat(r % 7)))
            }))),
            Arc::new(BinaryArray::from_iter(
                (0..rows).map(|r| value(r).map(|r| vec![batch as u8; r % 5])),
            )),
            Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(
                (0..rows).map(|r| {
                    value(r).map(|r| {
                        (0..r % 3)
                            .map(|i| Some((batch + i) as i64))
                            .collect::<Vec<_>>()
                    })
                }),
            )),
        ];
        RecordBatch::try_new(schema(), columns).unwrap()
    }

    /// What Arrow's row-by-row `interleave` makes of the same rows.
    fn interleaved(slots: &[RecordBatch], indices: &[(usize, usize)]) -> RecordBatch {
        let columns = (0..schema().fields().len())
            .map(|c| {
                let sources: Vec<&dyn Array> = slots.iter().map(|b| b.column(c).as_ref()).collect();
                interleave(&sources, indices).unwrap()
            })
            .collect();
        RecordBatch::try_new(schema(), columns).unwrap()
    }

    /// Rows taken from each slot in order, the slots' turns mixed as a merge mixes them, and
    /// some slots not read at all.
    fn merged_order(slots: &[RecordBatch], skipped: &[usize]) -> Vec<(usize, usize)> {
        let mut next = vec![0; slots.len()];
        let mut indices = Vec::new();
        let mut turn = 0usize;
        loop {
            let open: Vec<usize> = (0..slots.len())
                .filter(|s| !skipped.contains(s) && next[*s] < slots[*s].num_rows())
                .collect();
            if open.is_empty() {
                return indices;
            }
            turn = (turn * 7 + 3) % 1009;
            let slot = open[turn % open.len()];
            indices.push((slot, next[slot]));
            next[slot] += 1;
        }
    }

    #[test]
    fn gathers_the_rows_interleave_would_with_and_without_nulls() {
        for null_every in [0, 3] {
            let slots: Vec<RecordBatch> = (0..9)
                .map(|batch| slot(batch, 20 + batch * 3, null_every))
                .collect();
            let indices = merged_order(&slots, &[4]);
            let gathered = gather(&schema(), &slots, &indices).unwrap();
            assert_eq!(gathered.num_rows(), indices.len());
            assert_eq!(
                gathered,
                interleaved(&slots, &indices),
                "null every {null_every}"
            );
        }
    }

    #[test]
    fn gathers_some_rows_of_a_slot_and_no_rows() {
        let slots = vec![slot(0, 10, 4), slot(1, 10, 0)];
        let indices = vec![(1, 2), (0, 5), (1, 3), (1, 9)];
        assert_eq!(
            gather(&schema(), &slots, &indices).unwrap(),
            interleaved(&slots, &indices)
        );
        let empty = gather(&schema(), &slots, &[]).unwrap();
        assert_eq!((empty.num_rows(), empty.schema()), (0, schema()));
    }
}
