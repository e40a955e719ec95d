//! Sleeper's state-store snapshot files: Arrow IPC *stream* files holding every partition
//! (`<txn>-partitions.arrow`) and every file with its references (`<txn>-files.arrow`).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Int32Array, Int64Array, ListArray,
    RecordBatch, StringArray, StructArray, TimestampMillisecondArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::{
    DataType, Field, Fields, Schema as ArrowSchema, SchemaRef, TimeUnit,
};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;

use crate::error::{Error, Result};
use crate::model::{FileReference, KeyValue, Partition, PrimitiveType, Range, Region, Schema};

/// Sleeper writes snapshots in batches; so do we, to keep memory flat for large tables.
const ROWS_PER_BATCH: usize = 10_000;

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

fn reference_fields() -> Fields {
    Fields::from(vec![
        Field::new("partitionId", DataType::Utf8, false),
        Field::new("updateTime", timestamp(), false),
        Field::new("jobId", DataType::Utf8, true),
        Field::new("numberOfRows", DataType::UInt64, false),
        Field::new("countApproximate", DataType::Boolean, false),
        Field::new("onlyContainsDataForThisPartition", DataType::Boolean, false),
    ])
}

fn files_schema() -> SchemaRef {
    Arc::new(ArrowSchema::new(vec![
        Field::new("filename", DataType::Utf8, false),
        Field::new("updateTime", timestamp(), false),
        Field::new(
            "partitionReferences",
            DataType::List(Arc::new(Field::new(
                "reference",
                DataType::Struct(reference_fields()),
                false,
            ))),
            false,
        ),
    ]))
}

fn key_value_fields() -> Fields {
    Fields::from(vec![
        Field::new("string", DataType::Utf8, true),
        Field::new("long", DataType::Int64, true),
        Field::new("int", DataType::Int32, true),
        Field::new("bytes", DataType::Binary, true),
    ])
}

fn range_fields() -> Fields {
    Fields::from(vec![
        Field::new("fieldName", DataType::Utf8, false),
        Field::new("fieldType", DataType::Utf8, false),
        Field::new("min", DataType::Struct(key_value_fields()), false),
        Field::new("max", DataType::Struct(key_value_fields()), true),
    ])
}

fn partitions_schema() -> SchemaRef {
    Arc::new(ArrowSchema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("parentId", DataType::Utf8, true),
        Field::new(
            "childIds",
            DataType::List(Arc::new(Field::new("childId", DataType::Utf8, false))),
            false,
        ),
        Field::new("isLeaf", DataType::Boolean, false),
        Field::new("dimension", DataType::UInt32, true),
        Field::new(
            "region",
            DataType::List(Arc::new(Field::new(
                "range",
                DataType::Struct(range_fields()),
                false,
            ))),
            false,
        ),
    ]))
}

fn list(item: Field, lengths: impl IntoIterator<Item = usize>, values: ArrayRef) -> ArrayRef {
    Arc::new(ListArray::new(
        Arc::new(item),
        OffsetBuffer::from_lengths(lengths),
        values,
        None,
    ))
}

fn write_stream(
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

pub fn write_files(files: &[FileReference], update_time_millis: i64) -> Result<Vec<u8>> {
    // One row per file, with all of its references.
    let mut by_file: Vec<(&str, Vec<&FileReference>)> = Vec::new();
    for reference in files {
        match by_file
            .iter_mut()
            .find(|(name, _)| *name == reference.filename)
        {
            Some((_, refs)) => refs.push(reference),
            None => by_file.push((&reference.filename, vec![reference])),
        }
    }
    let schema = files_schema();
    let batches = by_file.chunks(ROWS_PER_BATCH).map(|chunk| {
        let refs: Vec<&FileReference> = chunk
            .iter()
            .flat_map(|(_, refs)| refs.iter().copied())
            .collect();
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
                Arc::new(StringArray::from(vec![None::<&str>; refs.len()])),
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
                    chunk.iter().map(|(name, _)| *name),
                )),
                Arc::new(TimestampMillisecondArray::from(vec![
                    update_time_millis;
                    chunk.len()
                ])),
                list(
                    Field::new("reference", DataType::Struct(reference_fields()), false),
                    chunk.iter().map(|(_, refs)| refs.len()),
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

fn key_values(values: &[Option<&KeyValue>]) -> StructArray {
    let pick = |f: fn(&KeyValue) -> bool| values.iter().map(move |v| v.filter(|v| f(v)));
    let strings =
        StringArray::from_iter(pick(|v| matches!(v, KeyValue::String(_))).map(|v| match v {
            Some(KeyValue::String(s)) => Some(s.as_str()),
            _ => None,
        }));
    let longs = Int64Array::from_iter(pick(|v| matches!(v, KeyValue::Long(_))).map(|v| match v {
        Some(KeyValue::Long(l)) => Some(*l),
        _ => None,
    }));
    let ints = Int32Array::from_iter(pick(|v| matches!(v, KeyValue::Int(_))).map(|v| match v {
        Some(KeyValue::Int(i)) => Some(*i),
        _ => None,
    }));
    let bytes =
        BinaryArray::from_iter(pick(|v| matches!(v, KeyValue::Bytes(_))).map(|v| match v {
            Some(KeyValue::Bytes(b)) => Some(b.as_slice()),
            _ => None,
        }));
    let nulls = NullBuffer::from_iter(values.iter().map(Option::is_some));
    StructArray::new(
        key_value_fields(),
        vec![
            Arc::new(strings),
            Arc::new(longs),
            Arc::new(ints),
            Arc::new(bytes),
        ],
        nulls.null_count().gt(&0).then_some(nulls),
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

/// Reads snapshot columns by name, so that extra columns or field order changes in a later
/// Sleeper version do not break us; a missing column is an error naming the file.
struct Columns<'a> {
    batch: &'a RecordBatch,
    file: &'a str,
}

impl<'a> Columns<'a> {
    fn get(&self, name: &str) -> Result<&'a ArrayRef> {
        self.batch
            .column_by_name(name)
            .ok_or_else(|| self.error(format!("no column {name:?}")))
    }

    fn error(&self, message: String) -> Error {
        Error::StateStore {
            table: String::new(),
            message: format!("snapshot {}: {message}", self.file),
        }
    }

    fn strings(&self, name: &str) -> Result<&'a StringArray> {
        self.get(name)?
            .as_string_opt::<i32>()
            .ok_or_else(|| self.error(format!("column {name:?} is not utf8")))
    }

    fn list(&self, name: &str) -> Result<&'a ListArray> {
        self.get(name)?
            .as_list_opt::<i32>()
            .ok_or_else(|| self.error(format!("column {name:?} is not a list")))
    }
}

fn struct_child<'a>(parent: &'a StructArray, name: &str, file: &str) -> Result<&'a ArrayRef> {
    parent
        .column_by_name(name)
        .ok_or_else(|| Error::StateStore {
            table: String::new(),
            message: format!("snapshot {file}: no field {name:?}"),
        })
}

fn read_stream(bytes: &[u8], file: &str) -> Result<Vec<RecordBatch>> {
    let arrow_error = |source| Error::Arrow {
        context: format!("reading snapshot {file}"),
        source,
    };
    StreamReader::try_new(bytes, None)
        .map_err(arrow_error)?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(arrow_error)
}

pub fn read_files(bytes: &[u8], file: &str) -> Result<Vec<FileReference>> {
    let mut references = Vec::new();
    for batch in read_stream(bytes, file)? {
        let columns = Columns {
            batch: &batch,
            file,
        };
        let filenames = columns.strings("filename")?;
        let lists = columns.list("partitionReferences")?;
        let refs = lists
            .values()
            .as_struct_opt()
            .ok_or_else(|| columns.error("references are not structs".into()))?;
        let partition_ids = struct_child(refs, "partitionId", file)?.as_string::<i32>();
        let rows = struct_child(refs, "numberOfRows", file)?
            .as_primitive::<datafusion::arrow::datatypes::UInt64Type>();
        let approximate = struct_child(refs, "countApproximate", file)?.as_boolean();
        let only_this = struct_child(refs, "onlyContainsDataForThisPartition", file)?.as_boolean();
        for row in 0..batch.num_rows() {
            let offsets = lists.value_offsets();
            for i in offsets[row] as usize..offsets[row + 1] as usize {
                references.push(FileReference {
                    filename: filenames.value(row).to_owned(),
                    partition_id: partition_ids.value(i).to_owned(),
                    number_of_rows: rows.value(i),
                    count_approximate: approximate.value(i),
                    only_contains_data_for_this_partition: only_this.value(i),
                });
            }
        }
    }
    Ok(references)
}

fn read_key_value(
    values: &StructArray,
    i: usize,
    key_type: PrimitiveType,
    file: &str,
) -> Result<Option<KeyValue>> {
    if values.is_null(i) {
        return Ok(None);
    }
    let child = |name| struct_child(values, name, file);
    let missing = || Error::StateStore {
        table: String::new(),
        message: format!("snapshot {file}: region value {i} has no {key_type:?}"),
    };
    let value = match key_type {
        PrimitiveType::String => {
            let column = child("string")?.as_string::<i32>();
            column
                .is_valid(i)
                .then(|| KeyValue::String(column.value(i).to_owned()))
        }
        PrimitiveType::Long => {
            let column = child("long")?.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            column.is_valid(i).then(|| KeyValue::Long(column.value(i)))
        }
        PrimitiveType::Int => {
            let column = child("int")?.as_primitive::<datafusion::arrow::datatypes::Int32Type>();
            column.is_valid(i).then(|| KeyValue::Int(column.value(i)))
        }
        PrimitiveType::ByteArray => {
            let column = child("bytes")?.as_binary::<i32>();
            column
                .is_valid(i)
                .then(|| KeyValue::Bytes(column.value(i).to_vec()))
        }
    };
    value.map(Some).ok_or_else(missing)
}

pub fn read_partitions(bytes: &[u8], file: &str, schema: &Schema) -> Result<Vec<Partition>> {
    let mut partitions = Vec::new();
    for batch in read_stream(bytes, file)? {
        let columns = Columns {
            batch: &batch,
            file,
        };
        let ids = columns.strings("id")?;
        let parents = columns.strings("parentId")?;
        let children = columns.list("childIds")?;
        let child_names = children.values().as_string::<i32>();
        let is_leaf = columns.get("isLeaf")?.as_boolean();
        let dimension = columns
            .get("dimension")?
            .as_primitive::<datafusion::arrow::datatypes::UInt32Type>();
        let regions = columns.list("region")?;
        let ranges = regions.values().as_struct();
        let field_names = struct_child(ranges, "fieldName", file)?.as_string::<i32>();
        let mins = struct_child(ranges, "min", file)?.as_struct();
        let maxes = struct_child(ranges, "max", file)?.as_struct();
        for row in 0..batch.num_rows() {
            let id = ids.value(row).to_owned();
            let mut region = Region::everything(schema);
            let offsets = regions.value_offsets();
            for i in offsets[row] as usize..offsets[row + 1] as usize {
                let name = field_names.value(i);
                let index = schema.row_key_index(name).ok_or_else(|| Error::StateStore {
                    table: String::new(),
                    message: format!("snapshot {file}: partition {id} has a range for {name:?}, which is not a row key"),
                })?;
                let key_type = schema.row_key_types()[index];
                region.ranges[index] = Range::partition(
                    read_key_value(mins, i, key_type, file)?
                        .unwrap_or_else(|| KeyValue::minimum(key_type)),
                    read_key_value(maxes, i, key_type, file)?,
                );
            }
            let child_offsets = children.value_offsets();
            partitions.push(Partition {
                parent_id: parents.is_valid(row).then(|| parents.value(row).to_owned()),
                child_ids: (child_offsets[row] as usize..child_offsets[row + 1] as usize)
                    .map(|i| child_names.value(i).to_owned())
                    .collect(),
                is_leaf: is_leaf.value(row),
                dimension: if dimension.is_valid(row) {
                    dimension.value(row) as i32
                } else {
                    -1
                },
                region,
                id,
            });
        }
    }
    Ok(partitions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Field, PartitionTree};
    use crate::tablegen::tree_from_split_points;

    fn schema() -> Schema {
        Schema::new(
            vec![
                Field::primitive("s", PrimitiveType::String),
                Field::primitive("b", PrimitiveType::ByteArray),
            ],
            vec![],
            vec![],
        )
        .unwrap()
    }

    #[test]
    fn partitions_round_trip() {
        let schema = schema();
        let splits: Vec<KeyValue> = ["d", "h", "p", "t"]
            .iter()
            .map(|s| KeyValue::String((*s).into()))
            .collect();
        let mut tree = tree_from_split_points("t", &schema, &splits).unwrap();
        let leaf = tree.leaves()[0].id.clone();
        tree.split(
            &leaf,
            1,
            KeyValue::Bytes(vec![0x80]),
            ["x".into(), "y".into()],
        )
        .unwrap();
        let bytes = write_partitions(tree.all(), &schema).unwrap();
        let read = read_partitions(&bytes, "test", &schema).unwrap();
        assert_eq!(read, tree.all());
        PartitionTree::new("t", read).unwrap();
    }

    #[test]
    fn files_round_trip_with_several_references() {
        let reference = |file: &str, partition: &str, split: bool| FileReference {
            filename: file.into(),
            partition_id: partition.into(),
            number_of_rows: 50,
            count_approximate: split,
            only_contains_data_for_this_partition: !split,
        };
        let files = vec![
            reference("f1", "root", false),
            reference("f2", "L", true),
            reference("f2", "R", true),
        ];
        let bytes = write_files(&files, 1_700_000_000_000).unwrap();
        assert_eq!(read_files(&bytes, "test").unwrap(), files);
    }

    #[test]
    fn a_missing_column_names_the_snapshot() {
        let file = FileReference {
            filename: "f".into(),
            partition_id: "root".into(),
            number_of_rows: 1,
            count_approximate: false,
            only_contains_data_for_this_partition: true,
        };
        let bytes = write_files(&[file], 0).unwrap();
        let error = read_partitions(
            &bytes,
            "s3://b/t/statestore/snapshots/7-partitions.arrow",
            &schema(),
        )
        .unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("7-partitions.arrow") && message.contains("\"id\""),
            "{message}"
        );
    }
}
