//! Writes Sleeper tables laid out exactly as Sleeper lays them out, with deterministic random
//! rows: for the demo, the tests and the benchmarks.

#[cfg(feature = "test-util")]
pub mod local_s3;
#[cfg(feature = "test-util")]
pub mod recording_pool;

use std::ops::RangeInclusive;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, ListArray, MapArray, RecordBatch, StructArray};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::DataType;
use object_store::ObjectStoreExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::model::{
    Field, FieldType, FileReference, KeyOrder, KeyValue, Partition, PartitionTree, PrimitiveType,
    Range, Region, Schema, StateFile, TableProperties,
};
use crate::plan::parquet_writer::ParallelParquetWriter;
use crate::statestore::{snapshot, SNAPSHOTS_DIR};
use crate::storage::Location;
use crate::table::SleeperTable;

/// What random rows look like.
#[derive(Debug, Clone)]
pub struct RowStyle {
    /// Length of string and byte-array *key* values.
    pub key_length: RangeInclusive<usize>,
    /// Length of string and byte-array *value* values.
    pub value_length: RangeInclusive<usize>,
    /// Integer keys are drawn from `-key_span..key_span` (clipped to the region), so that small
    /// spans give duplicate keys across files.
    pub key_span: i64,
    /// Use characters and bytes where Sleeper's order differs from Arrow's: U+E000..=U+FFFF,
    /// characters above U+FFFF, and bytes >= 0x80.
    pub tricky_keys: bool,
    /// Chance that a nullable value is null.
    pub null_fraction: f64,
}

impl Default for RowStyle {
    fn default() -> Self {
        RowStyle {
            key_length: 16..=16,
            value_length: 20..=40,
            key_span: i64::MAX,
            tricky_keys: false,
            null_fraction: 0.1,
        }
    }
}

const PLAIN_CHARS: &[char] = &[
    'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', 'p', 'q', 'r', 's',
    't', 'u', 'v', 'w', 'x', 'y', 'z',
];
const TRICKY_CHARS: &[char] = &[
    'a',
    'm',
    'z',
    '\u{e9}',
    '\u{4e2d}',
    '\u{e000}',
    '\u{ff21}',
    '\u{ffff}',
    '\u{10000}',
    '\u{1f600}',
];
const TRICKY_BYTES: &[u8] = &[0x00, 0x01, 0x41, 0x7f, 0x80, 0x81, 0xc0, 0xfe, 0xff];

/// Deterministic random rows for a schema, sorted in a table's key order.
pub struct RowGenerator {
    schema: Schema,
    order: KeyOrder,
    style: RowStyle,
    rng: StdRng,
}

impl RowGenerator {
    pub fn new(schema: Schema, order: KeyOrder, style: RowStyle, seed: u64) -> Self {
        RowGenerator {
            schema,
            order,
            style,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    fn random_key(&mut self, key_type: PrimitiveType) -> KeyValue {
        let length = self.rng.random_range(self.style.key_length.clone());
        match key_type {
            PrimitiveType::Int => {
                let span = self.style.key_span.min(i32::MAX as i64) as i32;
                KeyValue::Int(self.rng.random_range(-span..=span))
            }
            PrimitiveType::Long => {
                let span = self.style.key_span;
                KeyValue::Long(self.rng.random_range(-span..=span))
            }
            PrimitiveType::String => {
                let chars = if self.style.tricky_keys {
                    TRICKY_CHARS
                } else {
                    PLAIN_CHARS
                };
                KeyValue::String(
                    (0..length)
                        .map(|_| chars[self.rng.random_range(0..chars.len())])
                        .collect(),
                )
            }
            PrimitiveType::ByteArray if self.style.tricky_keys => KeyValue::Bytes(
                (0..length)
                    .map(|_| TRICKY_BYTES[self.rng.random_range(0..TRICKY_BYTES.len())])
                    .collect(),
            ),
            PrimitiveType::ByteArray => {
                KeyValue::Bytes((0..length).map(|_| self.rng.random()).collect())
            }
        }
    }

    /// A key inside `range`: random when a random draw lands in it, otherwise the minimum
    /// extended by a random suffix, otherwise the minimum itself.
    fn key_in(&mut self, key_type: PrimitiveType, range: &Range) -> KeyValue {
        if let (KeyValue::Long(_) | KeyValue::Int(_), true) =
            (&range.min, self.style.key_span < i64::MAX)
        {
            return self.integer_in(range);
        }
        for _ in 0..32 {
            let candidate = self.random_key(key_type);
            if range.contains(&candidate, self.order) {
                return candidate;
            }
        }
        for _ in 0..32 {
            let candidate = match (&range.min, self.random_key(key_type)) {
                (KeyValue::String(min), KeyValue::String(suffix)) => {
                    KeyValue::String(format!("{min}{suffix}"))
                }
                (KeyValue::Bytes(min), KeyValue::Bytes(suffix)) => {
                    KeyValue::Bytes([min.as_slice(), &suffix].concat())
                }
                (KeyValue::Int(min), _) => {
                    KeyValue::Int(min.saturating_add(self.rng.random_range(0..1000)))
                }
                (KeyValue::Long(min), _) => {
                    KeyValue::Long(min.saturating_add(self.rng.random_range(0..1000)))
                }
                (_, other) => other,
            };
            if range.contains(&candidate, self.order) {
                return candidate;
            }
        }
        range.min.clone()
    }

    fn integer_in(&mut self, range: &Range) -> KeyValue {
        let as_i64 = |v: &KeyValue| match v {
            KeyValue::Int(i) => *i as i64,
            KeyValue::Long(l) => *l,
            _ => unreachable!("integer ranges hold integers"),
        };
        let span = self.style.key_span;
        let low = as_i64(&range.min).max(-span);
        let high = range.max.as_ref().map_or(span, |m| as_i64(m).min(span));
        let value = if low < high {
            self.rng.random_range(low..high)
        } else {
            as_i64(&range.min)
        };
        match range.min {
            KeyValue::Int(_) => KeyValue::Int(value as i32),
            _ => KeyValue::Long(value),
        }
    }

    /// `count` keys (row keys then sort keys) inside `region`, sorted in the table's order.
    pub fn sorted_keys(&mut self, region: &Region, count: usize) -> Vec<Vec<KeyValue>> {
        let row_key_types = self.schema.row_key_types();
        let sort_key_types: Vec<PrimitiveType> =
            self.schema.key_types()[row_key_types.len()..].to_vec();
        let mut keys: Vec<Vec<KeyValue>> = (0..count)
            .map(|_| {
                let mut key: Vec<KeyValue> = row_key_types
                    .iter()
                    .zip(&region.ranges)
                    .map(|(&t, range)| self.key_in(t, range))
                    .collect();
                key.extend(sort_key_types.iter().map(|&t| self.random_key(t)));
                key
            })
            .collect();
        keys.sort_by(|a, b| self.order.compare_keys(a, b));
        keys
    }

    /// A batch with the given keys and random values.
    pub fn batch(&mut self, keys: &[Vec<KeyValue>]) -> Result<RecordBatch> {
        let key_count = self.schema.key_fields().count();
        let mut columns: Vec<ArrayRef> = (0..key_count)
            .map(|i| {
                KeyValue::array_of(
                    keys.iter().map(|k| Some(k[i].clone())),
                    self.schema.key_types()[i],
                )
            })
            .collect();
        let value_fields = self.schema.value_fields.clone();
        for field in &value_fields {
            columns.push(self.value_column(field, keys.len()));
        }
        RecordBatch::try_new(self.schema.arrow_schema(), columns).map_err(|source| Error::Arrow {
            context: "generating rows".into(),
            source,
        })
    }

    fn random_value(&mut self, value_type: PrimitiveType) -> KeyValue {
        let length = self.rng.random_range(self.style.value_length.clone());
        match value_type {
            PrimitiveType::Int => KeyValue::Int(self.rng.random_range(-1_000_000..1_000_000)),
            PrimitiveType::Long => {
                KeyValue::Long(self.rng.random_range(-1_000_000_000..1_000_000_000))
            }
            PrimitiveType::String => KeyValue::String(
                (0..length)
                    .map(|_| PLAIN_CHARS[self.rng.random_range(0..PLAIN_CHARS.len())])
                    .collect(),
            ),
            PrimitiveType::ByteArray => {
                KeyValue::Bytes((0..length).map(|_| self.rng.random()).collect())
            }
        }
    }

    fn nulls(&mut self, field: &Field, rows: usize) -> Option<NullBuffer> {
        field.nullable.then(|| {
            let fraction = self.style.null_fraction;
            NullBuffer::from_iter((0..rows).map(|_| !self.rng.random_bool(fraction)))
        })
    }

    fn value_column(&mut self, field: &Field, rows: usize) -> ArrayRef {
        let nulls = self.nulls(field, rows);
        let is_valid = |i: usize| nulls.as_ref().is_none_or(|n| n.is_valid(i));
        match &field.field_type {
            FieldType::Primitive(t) => {
                let values: Vec<Option<KeyValue>> = (0..rows)
                    .map(|i| Some(self.random_value(*t)).filter(|_| is_valid(i)))
                    .collect();
                KeyValue::array_of(values, *t)
            }
            FieldType::List { element } => {
                let lengths: Vec<usize> = (0..rows)
                    .map(|i| {
                        if is_valid(i) {
                            self.rng.random_range(0..4)
                        } else {
                            0
                        }
                    })
                    .collect();
                let total = lengths.iter().sum();
                let values = KeyValue::array_of(
                    (0..total).map(|_| Some(self.random_value(*element))),
                    *element,
                );
                let DataType::List(item) = field.field_type.arrow_type() else {
                    unreachable!("a list type")
                };
                Arc::new(ListArray::new(
                    item,
                    OffsetBuffer::from_lengths(lengths),
                    values,
                    nulls,
                ))
            }
            FieldType::Map { key, value } => {
                let mut keys = Vec::new();
                let mut lengths = Vec::with_capacity(rows);
                for i in 0..rows {
                    let mut entry_keys: Vec<KeyValue> = if is_valid(i) {
                        (0..self.rng.random_range(0..4))
                            .map(|_| self.random_value(*key))
                            .collect()
                    } else {
                        vec![]
                    };
                    // Distinct keys, in any order that is the same on every run.
                    entry_keys.sort_by(|a, b| KeyOrder::DataFusion.compare(a, b));
                    entry_keys.dedup();
                    lengths.push(entry_keys.len());
                    keys.extend(entry_keys);
                }
                let values = KeyValue::array_of(
                    (0..keys.len()).map(|_| Some(self.random_value(*value))),
                    *value,
                );
                let keys = KeyValue::array_of(keys.into_iter().map(Some), *key);
                let DataType::Map(entries, _) = field.field_type.arrow_type() else {
                    unreachable!("a map type")
                };
                let DataType::Struct(entry_fields) = entries.data_type().clone() else {
                    unreachable!("map entries are structs")
                };
                let entries_array = StructArray::new(entry_fields, vec![keys, values], None);
                Arc::new(MapArray::new(
                    entries,
                    OffsetBuffer::from_lengths(lengths),
                    entries_array,
                    nulls,
                    false,
                ))
            }
        }
    }
}

/// Writes a table: its properties, sorted Parquet data files referenced by partitions, and the
/// state-store snapshots, all under one location as Sleeper lays them out in its data bucket.
pub struct TableWriter {
    location: Location,
    properties: TableProperties,
    tree: PartitionTree,
    files: Vec<FileReference>,
    generator: RowGenerator,
    batch_size: usize,
}

impl TableWriter {
    pub fn new(
        location: Location,
        properties: TableProperties,
        tree: PartitionTree,
        style: RowStyle,
        seed: u64,
    ) -> Self {
        let generator =
            RowGenerator::new(properties.schema.clone(), properties.key_order, style, seed);
        TableWriter {
            location,
            properties,
            tree,
            files: Vec::new(),
            generator,
            batch_size: 8192,
        }
    }

    pub fn tree(&self) -> &PartitionTree {
        &self.tree
    }

    pub fn generator(&mut self) -> &mut RowGenerator {
        &mut self.generator
    }

    /// Writes `rows` random rows from partition `data_partition`'s region as one sorted file,
    /// referenced by each partition of `referenced_by` (several after a split). Returns its URL.
    pub async fn write_random_file(
        &mut self,
        data_partition: &str,
        rows: usize,
        referenced_by: &[&str],
    ) -> Result<String> {
        let region = self.partition(data_partition)?.region.clone();
        let keys = self.generator.sorted_keys(&region, rows);
        let mut batches = Vec::new();
        for chunk in keys.chunks(self.batch_size) {
            batches.push(self.generator.batch(chunk)?);
        }
        self.write_file(data_partition, batches, referenced_by)
            .await
    }

    fn partition(&self, id: &str) -> Result<&Partition> {
        self.tree.get(id).ok_or_else(|| Error::PartitionTree {
            table: self.properties.table_id.clone(),
            message: format!("no partition {id}"),
        })
    }

    /// Writes the given batches (which must already be in the table's order) as one data file.
    pub async fn write_file(
        &mut self,
        data_partition: &str,
        batches: Vec<RecordBatch>,
        referenced_by: &[&str],
    ) -> Result<String> {
        let uuid = uuid::Builder::from_random_bytes(self.generator.rng().random()).into_uuid();
        let path = self
            .location
            .child(&format!("data/partition_{data_partition}/{uuid}.parquet"));
        let url = self.location.url_of(&path);
        let output_error = |e| Error::output(url.clone(), e);
        let mut writer = ParallelParquetWriter::try_new(
            Arc::clone(&self.location.store),
            path,
            self.properties.schema.arrow_schema(),
            self.properties
                .writer_properties(&self.properties.schema.arrow_schema())?,
            None,
        )
        .map_err(output_error)?;
        let mut rows = 0;
        for batch in batches {
            rows += batch.num_rows() as u64;
            writer.write(batch).await.map_err(output_error)?;
        }
        writer.finish().await.map_err(output_error)?;
        for partition_id in referenced_by {
            self.partition(partition_id)?;
            self.files.push(FileReference {
                filename: url.clone(),
                partition_id: (*partition_id).to_owned(),
                number_of_rows: rows / referenced_by.len() as u64,
                count_approximate: referenced_by.len() > 1,
                only_contains_data_for_this_partition: referenced_by.len() == 1,
                job_id: None,
            });
        }
        Ok(url)
    }

    /// Writes the properties and the snapshots (transaction 1), and opens the finished table.
    pub async fn finish(self) -> Result<SleeperTable> {
        SleeperTable::write_properties(&self.location, &self.properties).await?;
        let snapshots = [
            (
                "files",
                snapshot::write_files(&StateFile::group(self.files.clone()), 0)?,
            ),
            (
                "partitions",
                snapshot::write_partitions(self.tree.all(), &self.properties.schema)?,
            ),
        ];
        for (kind, bytes) in snapshots {
            let path = self
                .location
                .child(&format!("{SNAPSHOTS_DIR}/1-{kind}.arrow"));
            self.location
                .store
                .put(&path, bytes.into())
                .await
                .map_err(|e| Error::object_store(self.location.url_of(&path), e))?;
        }
        SleeperTable::open(
            self.location.url.as_str(),
            &crate::storage::Stores::default(),
        )
        .await
    }
}

/// The demo table: Sleeper's basic example schema (string key, long timestamp, string value),
/// `leaves` leaves under a balanced tree, two files per leaf, a file still on the root, and a
/// file on one parent referenced by both of its children, as a partition split leaves it.
pub async fn write_demo_table(
    location: Location,
    leaves: usize,
    rows_per_file: usize,
    seed: u64,
) -> Result<SleeperTable> {
    let schema = Schema::new(
        vec![Field::primitive("key", PrimitiveType::String)],
        vec![Field::primitive("timestamp", PrimitiveType::Long)],
        vec![Field::primitive("value", PrimitiveType::String)],
    )?;
    let split_points: Vec<KeyValue> = (1..leaves.max(1))
        .map(|i| {
            let position = i * 26 * 26 / leaves.max(1);
            let chars = [b'a' + (position / 26) as u8, b'a' + (position % 26) as u8];
            KeyValue::String(String::from_utf8(chars.to_vec()).expect("ASCII"))
        })
        .collect();
    let table_id = "demo0001";
    let tree = PartitionTree::from_split_points(table_id, &schema, &split_points)?;
    let properties = TableProperties::new(table_id, "demo", schema);
    let style = RowStyle {
        key_length: 8..=8,
        ..RowStyle::default()
    };
    let mut writer = TableWriter::new(location, properties, tree, style, seed);
    let leaf_ids: Vec<String> = writer
        .tree()
        .leaves()
        .iter()
        .map(|p| p.id.clone())
        .collect();
    for leaf in &leaf_ids {
        for _ in 0..2 {
            writer
                .write_random_file(leaf, rows_per_file, &[leaf])
                .await?;
        }
    }
    let root = writer.tree().root().clone();
    writer
        .write_random_file(&root.id, rows_per_file, &[&root.id])
        .await?;
    if let Some(split_parent) = writer
        .tree()
        .all()
        .iter()
        .find(|p| !p.is_leaf && p.id != root.id)
        .cloned()
    {
        let children: Vec<&str> = split_parent.child_ids.iter().map(String::as_str).collect();
        writer
            .write_random_file(&split_parent.id, rows_per_file, &children)
            .await?;
    }
    writer.finish().await
}
