//! Snapshot files written as Sleeper writes them, in batches of [`super::ROWS_PER_BATCH`].

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Int32Array, Int64Array, ListArray, RecordBatch,
    StringArray, StructArray, TimestampMillisecondArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef};
use datafusion::arrow::ipc::writer::StreamWriter;

use super::{
    files_schema, key_value_fields, partitions_schema, range_fields, reference_fields,
    ROWS_PER_BATCH,
};
use crate::error::{Error, Result};
use crate::model::{FileReference, KeyValue, Partition, PrimitiveType, Range, Schema, StateFile};

fn list(item: Field, lengths: impl IntoIterator<Item = usize>, values: ArrayRef) -> ArrayRef {
    Arc::new(ListArray::new(
        Arc::new(item),
        OffsetBuffer::from_lengths(lengths),
        values,
        None,
    ))
}

pub(super) fn write_stream(
    schema: SchemaRef,
    batches: impl Iterator<Item = Result<RecordBatch>>,
    what: &str,
) -> Result<Vec<u8>> {
    let arrow_error = |source| Error::Arrow {
        context: format!("writing {what} snapshot"),
        source,
    };
    let mut writer = StreamWriter::try_new(Vec::new(), &schema).map_err(arrow_error)?;
    for batch in batches {
        writer.write(&batch?).map_err(arrow_error)?;
    }
    writer.into_inner().map_err(arrow_error)
}

/// Writes every file of the state, referenced or not, as Sleeper's `StateStoreFilesArrowFormat`
/// does: one row per file, a batch ending once it holds `ROWS_PER_BATCH` references (a file with
/// none counting as one).
pub fn write_files(files: &[StateFile], update_time_millis: i64) -> Result<Vec<u8>> {
    let schema = files_schema();
    let mut chunks: Vec<&[StateFile]> = Vec::new();
    let (mut start, mut elements) = (0, 0);
    for (i, file) in files.iter().enumerate() {
        elements += file.references.len().max(1);
        if elements >= ROWS_PER_BATCH || i + 1 == files.len() {
            chunks.push(&files[start..=i]);
            (start, elements) = (i + 1, 0);
        }
    }
    let batches = chunks.into_iter().map(|chunk| {
        let refs: Vec<&FileReference> = chunk.iter().flat_map(|f| &f.references).collect();
        let references = StructArray::new(
            reference_fields(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    refs.iter().map(|r| &r.partition_id),
                )) as ArrayRef,
                Arc::new(TimestampMillisecondArray::from(vec![
                    update_time_millis;
                    refs.len()
                ])),
                Arc::new(StringArray::from_iter(
                    refs.iter().map(|r| r.job_id.as_deref()),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    refs.iter().map(|r| r.number_of_rows),
                )),
                Arc::new(BooleanArray::from_iter(
                    refs.iter().map(|r| Some(r.count_approximate)),
                )),
                Arc::new(BooleanArray::from_iter(
                    refs.iter()
                        .map(|r| Some(r.only_contains_data_for_this_partition)),
                )),
            ],
            None,
        );
        RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from_iter_values(
                    chunk.iter().map(|f| &f.filename),
                )),
                Arc::new(TimestampMillisecondArray::from(vec![
                    update_time_millis;
                    chunk.len()
                ])),
                list(
                    Field::new("reference", DataType::Struct(reference_fields()), false),
                    chunk.iter().map(|f| f.references.len()),
                    Arc::new(references),
                ),
            ],
        )
        .map_err(|source| Error::Arrow {
            context: "building files snapshot".into(),
            source,
        })
    });
    write_stream(Arc::clone(&schema), batches, "files")
}

/// Key values as Sleeper's `StateStorePartitionsArrowFormat.writeRowKeyValue` writes them: always
/// a valid struct, with only the child of the key's type set, and none set for an unbounded max.
fn key_values(values: &[Option<&KeyValue>]) -> StructArray {
    let strings = StringArray::from_iter(values.iter().map(|v| match v {
        Some(KeyValue::String(s)) => Some(s.as_str()),
        _ => None,
    }));
    let longs = Int64Array::from_iter(values.iter().map(|v| match v {
        Some(KeyValue::Long(l)) => Some(*l),
        _ => None,
    }));
    let ints = Int32Array::from_iter(values.iter().map(|v| match v {
        Some(KeyValue::Int(i)) => Some(*i),
        _ => None,
    }));
    let bytes = BinaryArray::from_iter(values.iter().map(|v| match v {
        Some(KeyValue::Bytes(b)) => Some(b.as_slice()),
        _ => None,
    }));
    StructArray::new(
        key_value_fields(),
        vec![
            Arc::new(strings),
            Arc::new(longs),
            Arc::new(ints),
            Arc::new(bytes),
        ],
        None,
    )
}

fn type_name(key_type: PrimitiveType) -> &'static str {
    match key_type {
        PrimitiveType::Int => "IntType",
        PrimitiveType::Long => "LongType",
        PrimitiveType::String => "StringType",
        PrimitiveType::ByteArray => "ByteArrayType",
    }
}

pub fn write_partitions(partitions: &[Partition], schema: &Schema) -> Result<Vec<u8>> {
    let arrow_schema = partitions_schema();
    let batches = partitions.chunks(ROWS_PER_BATCH).map(|chunk| {
        let ranges: Vec<(&crate::model::Field, &Range)> = chunk
            .iter()
            .flat_map(|p| schema.row_key_fields.iter().zip(&p.region.ranges))
            .collect();
        let region = StructArray::new(
            range_fields(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    ranges.iter().map(|(f, _)| &f.name),
                )) as ArrayRef,
                Arc::new(StringArray::from_iter_values(
                    ranges.iter().map(|(_, r)| type_name(r.min.key_type())),
                )),
                Arc::new(key_values(
                    &ranges.iter().map(|(_, r)| Some(&r.min)).collect::<Vec<_>>(),
                )),
                Arc::new(key_values(
                    &ranges
                        .iter()
                        .map(|(_, r)| r.max.as_ref())
                        .collect::<Vec<_>>(),
                )),
            ],
            None,
        );
        let children: Vec<&str> = chunk
            .iter()
            .flat_map(|p| p.child_ids.iter().map(String::as_str))
            .collect();
        RecordBatch::try_new(
            Arc::clone(&arrow_schema),
            vec![
                Arc::new(StringArray::from_iter_values(chunk.iter().map(|p| &p.id))),
                Arc::new(StringArray::from_iter(
                    chunk.iter().map(|p| p.parent_id.as_deref()),
                )),
                list(
                    Field::new("childId", DataType::Utf8, false),
                    chunk.iter().map(|p| p.child_ids.len()),
                    Arc::new(StringArray::from_iter_values(children)),
                ),
                Arc::new(BooleanArray::from_iter(
                    chunk.iter().map(|p| Some(p.is_leaf)),
                )),
                Arc::new(UInt32Array::from_iter(
                    chunk.iter().map(|p| u32::try_from(p.dimension).ok()),
                )),
                list(
                    Field::new("range", DataType::Struct(range_fields()), false),
                    chunk.iter().map(|p| p.region.ranges.len()),
                    Arc::new(region),
                ),
            ],
        )
        .map_err(|source| Error::Arrow {
            context: "building partitions snapshot".into(),
            source,
        })
    });
    write_stream(Arc::clone(&arrow_schema), batches, "partitions")
}
