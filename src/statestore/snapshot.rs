//! Sleeper's state-store snapshot files: Arrow IPC *stream* files holding every partition
//! (`<txn>-partitions.arrow`) and every file with its references (`<txn>-files.arrow`).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, ListArray, RecordBatch, StringArray, StructArray,
};
use datafusion::arrow::datatypes::{
    DataType, Field, Fields, Schema as ArrowSchema, SchemaRef, TimeUnit,
};
use datafusion::arrow::ipc::reader::StreamReader;

use crate::error::{Error, Result};
use crate::model::{
    FileReference, KeyValue, Partition, PrimitiveType, Range, Region, Schema, StateFile,
};

/// Sleeper writes snapshots in batches; so do we, to keep memory flat for large tables.
const ROWS_PER_BATCH: usize = 10_000;

mod write;
pub use write::{write_files, write_partitions};

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

/// Every file of a files snapshot, with its references (none for a file awaiting garbage
/// collection).
pub fn read_files(bytes: &[u8], file: &str) -> Result<Vec<StateFile>> {
    let mut files = Vec::new();
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
        let job_ids = struct_child(refs, "jobId", file)?.as_string::<i32>();
        let rows = struct_child(refs, "numberOfRows", file)?
            .as_primitive::<datafusion::arrow::datatypes::UInt64Type>();
        let approximate = struct_child(refs, "countApproximate", file)?.as_boolean();
        let only_this = struct_child(refs, "onlyContainsDataForThisPartition", file)?.as_boolean();
        let offsets = lists.value_offsets();
        for row in 0..batch.num_rows() {
            let filename = filenames.value(row);
            files.push(StateFile {
                filename: filename.to_owned(),
                references: (offsets[row] as usize..offsets[row + 1] as usize)
                    .map(|i| FileReference {
                        filename: filename.to_owned(),
                        partition_id: partition_ids.value(i).to_owned(),
                        number_of_rows: rows.value(i),
                        count_approximate: approximate.value(i),
                        only_contains_data_for_this_partition: only_this.value(i),
                        job_id: job_ids.is_valid(i).then(|| job_ids.value(i).to_owned()),
                    })
                    .collect(),
            });
        }
    }
    Ok(files)
}

/// A region bound; `None` (unbounded) when the struct is null, or valid with its typed child
/// null, as Sleeper's Java writes an unbounded max.
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
    Ok(match key_type {
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
    })
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
    use super::write::write_stream;
    use super::*;
    use crate::model::{Field, KeyOrder, PartitionTree};
    use datafusion::arrow::buffer::NullBuffer;

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

    fn tree() -> PartitionTree {
        let splits: Vec<KeyValue> = ["d", "h", "p", "t"]
            .iter()
            .map(|s| KeyValue::String((*s).into()))
            .collect();
        let mut tree = PartitionTree::from_split_points("t", &schema(), &splits).unwrap();
        let leaf = tree.leaves()[0].id.clone();
        tree.split(
            &leaf,
            1,
            KeyValue::Bytes(vec![0x80]),
            ["x".into(), "y".into()],
            KeyOrder::DataFusion,
        )
        .unwrap();
        tree
    }

    /// The `max` bounds of every range of a partitions snapshot.
    fn max_bounds(bytes: &[u8]) -> StructArray {
        let batch = &read_stream(bytes, "test").unwrap()[0];
        let ranges = batch
            .column_by_name("region")
            .unwrap()
            .as_list::<i32>()
            .values();
        ranges
            .as_struct()
            .column_by_name("max")
            .unwrap()
            .as_struct()
            .clone()
    }

    #[test]
    fn partitions_round_trip_with_unbounded_maxima_written_as_sleeper_writes_them() {
        let schema = schema();
        let tree = tree();
        let bytes = write_partitions(tree.all(), &schema).unwrap();
        let read = read_partitions(&bytes, "test", &schema).unwrap();
        assert_eq!(read, tree.all());
        PartitionTree::new("t", read).unwrap();
        // `writeRowKeyValue` starts the struct, then writes null into the typed child.
        let maxima = max_bounds(&bytes);
        assert_eq!(maxima.null_count(), 0);
        let unbounded = (0..maxima.len())
            .filter(|&i| (0..4).all(|c| maxima.column(c).is_null(i)))
            .count();
        let expected = tree
            .all()
            .iter()
            .flat_map(|p| &p.region.ranges)
            .filter(|r| r.max.is_none())
            .count();
        assert!(expected > 0);
        assert_eq!(unbounded, expected);
    }

    #[test]
    fn a_null_max_struct_also_reads_as_unbounded() {
        let schema = schema();
        let tree = tree();
        let batches = read_stream(&write_partitions(tree.all(), &schema).unwrap(), "t").unwrap();
        let rewritten = batches.into_iter().map(|batch| {
            let region = batch.column_by_name("region").unwrap().as_list::<i32>();
            let (field_names, types, min, max) = {
                let ranges = region.values().as_struct();
                (
                    Arc::clone(ranges.column(0)),
                    Arc::clone(ranges.column(1)),
                    Arc::clone(ranges.column(2)),
                    ranges.column(3).as_struct().clone(),
                )
            };
            let valid: NullBuffer = (0..max.len())
                .map(|i| (0..4).any(|c| max.column(c).is_valid(i)))
                .collect();
            let (fields, children, _) = max.into_parts();
            let max = StructArray::new(fields, children, Some(valid));
            let ranges = StructArray::new(
                range_fields(),
                vec![field_names, types, min, Arc::new(max)],
                None,
            );
            let (item, offsets, _, nulls) = region.clone().into_parts();
            let region = ListArray::new(item, offsets, Arc::new(ranges), nulls);
            let mut columns = batch.columns().to_vec();
            columns[5] = Arc::new(region);
            Ok(RecordBatch::try_new(batch.schema(), columns).unwrap())
        });
        let bytes = write_stream(partitions_schema(), rewritten, "partitions").unwrap();
        assert!(max_bounds(&bytes).null_count() > 0);
        assert_eq!(read_partitions(&bytes, "t", &schema).unwrap(), tree.all());
    }

    #[test]
    fn files_round_trip_with_job_ids_and_unreferenced_files() {
        let reference = |file: &str, partition: &str, job: Option<&str>| FileReference {
            filename: file.into(),
            partition_id: partition.into(),
            number_of_rows: 50,
            count_approximate: job.is_some(),
            only_contains_data_for_this_partition: job.is_none(),
            job_id: job.map(str::to_owned),
        };
        let files = vec![
            StateFile {
                filename: "compacted-away".into(),
                references: vec![],
            },
            StateFile {
                filename: "f1".into(),
                references: vec![reference("f1", "root", None)],
            },
            StateFile {
                filename: "f2".into(),
                references: vec![
                    reference("f2", "L", Some("job-1")),
                    reference("f2", "R", None),
                ],
            },
        ];
        let bytes = write_files(&files, 1_700_000_000_000).unwrap();
        assert_eq!(read_files(&bytes, "test").unwrap(), files);
    }

    #[test]
    fn a_missing_column_names_the_snapshot() {
        let file = StateFile {
            filename: "f".into(),
            references: vec![],
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
