//! Shared by the integration tests: random tables and the naive reference export. The local S3
//! server's helpers are the library's `tablegen::local_s3`, which the benchmarks use too.
#![allow(dead_code)]

pub mod fault_proxy;

pub use sleeper_export::tablegen::local_s3::*;

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take};
use datafusion::arrow::datatypes::{Int32Type, Int64Type, SchemaRef};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::Rng;
use sleeper_export::model::{
    Field, FieldType, KeyOrder, KeyValue, PartitionTree, PrimitiveType, Region, Schema,
    TableProperties,
};
use sleeper_export::query::BulkExportLeafPartitionQuery;
use sleeper_export::storage::Stores;
use sleeper_export::table::SleeperTable;
use sleeper_export::tablegen::{RowStyle, TableWriter};

pub fn shared(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared")
        .join(path)
}

pub fn local(path: &Path) -> sleeper_export::storage::Location {
    Stores::default().resolve(path.to_str().unwrap()).unwrap()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Reads a whole local Parquet file (a `file://` URL or a path) into one batch.
pub fn read_parquet(url_or_path: &str) -> RecordBatch {
    let path = url_or_path.strip_prefix("file://").unwrap_or(url_or_path);
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    parquet_bytes_to_batch(bytes.into())
}

pub fn parquet_bytes_to_batch(bytes: bytes::Bytes) -> RecordBatch {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    let schema = datafusion::arrow::record_batch::RecordBatchReader::schema(&reader);
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    concat_batches(&schema, &batches).unwrap()
}

pub fn key_value(column: &ArrayRef, row: usize, key_type: PrimitiveType) -> KeyValue {
    match key_type {
        PrimitiveType::Int => KeyValue::Int(column.as_primitive::<Int32Type>().value(row)),
        PrimitiveType::Long => KeyValue::Long(column.as_primitive::<Int64Type>().value(row)),
        PrimitiveType::String => KeyValue::String(column.as_string::<i32>().value(row).to_owned()),
        PrimitiveType::ByteArray => KeyValue::Bytes(column.as_binary::<i32>().value(row).to_vec()),
    }
}

pub fn keys_of(batch: &RecordBatch, schema: &Schema, row: usize) -> Vec<KeyValue> {
    schema
        .key_types()
        .into_iter()
        .enumerate()
        .map(|(i, t)| key_value(batch.column(i), row, t))
        .collect()
}

/// The export as the issue defines it, done the slow and obvious way: every row of every file of
/// the leaf, those inside the regions, stably sorted by the keys in the table's order.
pub fn reference_export(
    properties: &TableProperties,
    query: &BulkExportLeafPartitionQuery,
) -> RecordBatch {
    let schema = &properties.schema;
    let order = properties.key_order;
    let arrow_schema: SchemaRef = schema.arrow_schema();
    let batches: Vec<RecordBatch> = query.files.iter().map(|f| read_parquet(f)).collect();
    let all = concat_batches(&arrow_schema, &batches).unwrap();
    let row_keys = schema.row_key_fields.len();
    let mut rows: Vec<(Vec<KeyValue>, u32)> = (0..all.num_rows())
        .map(|row| (keys_of(&all, schema, row), row as u32))
        .filter(|(keys, _)| {
            query.partition_region.contains(&keys[..row_keys], order)
                && query
                    .regions
                    .iter()
                    .any(|r| r.contains(&keys[..row_keys], order))
        })
        .collect();
    rows.sort_by(|a, b| order.compare_keys(&a.0, &b.0));
    let indices = UInt32Array::from_iter_values(rows.iter().map(|(_, row)| *row));
    let columns = all
        .columns()
        .iter()
        .map(|c| take(c, &indices, None).unwrap())
        .collect();
    RecordBatch::try_new(arrow_schema, columns).unwrap()
}

pub fn assert_same_rows(actual: &RecordBatch, expected: &RecordBatch, context: &str) {
    assert_eq!(
        actual.num_rows(),
        expected.num_rows(),
        "{context}: row count"
    );
    assert_eq!(
        actual.num_columns(),
        expected.num_columns(),
        "{context}: column count"
    );
    for (i, (a, e)) in actual.columns().iter().zip(expected.columns()).enumerate() {
        assert_eq!(
            a.to_data(),
            e.to_data(),
            "{context}: column {i} ({})",
            expected.schema().field(i).name()
        );
    }
}

/// 1-2 row keys and 0-1 sort keys, each of a random key type.
pub fn random_keys(rng: &mut impl Rng) -> (Vec<Field>, Vec<Field>) {
    let key_types = [
        PrimitiveType::Int,
        PrimitiveType::Long,
        PrimitiveType::String,
        PrimitiveType::ByteArray,
    ];
    let row_key_count = rng.random_range(1..=2);
    let sort_key_count = rng.random_range(0..=1);
    let mut pick =
        |name: String| Field::primitive(name, key_types[rng.random_range(0..key_types.len())]);
    let row_keys = (0..row_key_count)
        .map(|i| pick(format!("row{i}")))
        .collect();
    let sort_keys = (0..sort_key_count)
        .map(|i| pick(format!("sort{i}")))
        .collect();
    (row_keys, sort_keys)
}

/// A random schema: 1-2 row keys and 0-1 sort keys of any key type, and values including maps,
/// lists and nullable columns.
pub fn random_schema(rng: &mut impl Rng) -> Schema {
    let (row_keys, sort_keys) = random_keys(rng);
    let values = vec![
        Field::primitive("long_value", PrimitiveType::Long),
        Field::primitive("text", PrimitiveType::String).nullable(),
        Field::new(
            "map",
            FieldType::Map {
                key: PrimitiveType::String,
                value: PrimitiveType::Long,
            },
        ),
        Field::new(
            "list",
            FieldType::List {
                element: PrimitiveType::Int,
            },
        )
        .nullable(),
    ];
    Schema::new(row_keys, sort_keys, values).unwrap()
}

/// Splits random leaves on random dimensions, `splits` times, at keys drawn inside each leaf.
pub fn random_tree(
    rng: &mut impl Rng,
    properties: &TableProperties,
    writer_style: &RowStyle,
    splits: usize,
) -> PartitionTree {
    let schema = &properties.schema;
    let mut tree = PartitionTree::from_split_points(&properties.table_id, schema, &[]).unwrap();
    let mut generator = sleeper_export::tablegen::RowGenerator::new(
        schema.clone(),
        properties.key_order,
        writer_style.clone(),
        rng.random(),
    );
    for n in 0..splits {
        let leaves: Vec<_> = tree.leaves().into_iter().cloned().collect();
        let leaf = &leaves[rng.random_range(0..leaves.len())];
        let dimension = rng.random_range(0..schema.row_key_fields.len());
        let key = generator.sorted_keys(&leaf.region, 1).remove(0);
        let _ = tree.split(
            &leaf.id,
            dimension,
            key[dimension].clone(),
            [format!("p{n}l"), format!("p{n}r")],
            properties.key_order,
        );
    }
    tree
}

pub struct RandomTable {
    pub table: SleeperTable,
    pub dir: tempfile::TempDir,
}

/// A random table: a random tree, 0-2 files per leaf, files still on non-leaf partitions, and
/// files referenced by both children of a split, with duplicate keys across files.
pub async fn random_table(seed: u64) -> RandomTable {
    let dir = tempfile::tempdir().unwrap();
    let location = local(dir.path());
    RandomTable {
        table: random_table_at(location, seed).await,
        dir,
    }
}

/// The random table of `seed`, written at any location (the same rows wherever it is written),
/// of either engine's key order.
pub async fn random_table_at(
    location: sleeper_export::storage::Location,
    seed: u64,
) -> SleeperTable {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let schema = random_schema(&mut rng);
    let mut properties = TableProperties::new("table-1", "random", schema);
    properties.key_order = if rng.random_bool(0.5) {
        KeyOrder::Java
    } else {
        KeyOrder::DataFusion
    };
    write_random_table(location, &mut rng, properties).await
}

/// Rows that make merging hard: short keys from characters and bytes where the engines' orders
/// differ, and integer keys from a small span, so keys repeat across files.
pub fn hard_rows() -> RowStyle {
    RowStyle {
        key_length: 0..=3,
        value_length: 0..=6,
        key_span: 20,
        tricky_keys: true,
        null_fraction: 0.3,
    }
}

/// A random tree and random files for a table with the given properties.
pub async fn write_random_table(
    location: sleeper_export::storage::Location,
    rng: &mut rand::rngs::StdRng,
    mut properties: TableProperties,
) -> SleeperTable {
    let style = hard_rows();
    let splits = rng.random_range(0..=6);
    let tree = random_tree(rng, &properties, &style, splits);
    properties.parquet.row_group_rows = 50;
    let mut writer = TableWriter::new(location, properties, tree.clone(), style, rng.random());
    for partition in tree.all() {
        let files = if partition.is_leaf {
            rng.random_range(0..=2)
        } else {
            rng.random_range(0..=1)
        };
        for _ in 0..files {
            let rows = rng.random_range(0..200);
            if !partition.is_leaf && rng.random_bool(0.5) {
                let children: Vec<&str> = partition.child_ids.iter().map(String::as_str).collect();
                writer
                    .write_random_file(&partition.id, rows, &children)
                    .await
                    .unwrap();
            } else {
                writer
                    .write_random_file(&partition.id, rows, &[&partition.id])
                    .await
                    .unwrap();
            }
        }
    }
    writer.finish().await.unwrap()
}

/// A long row key `id` and a string value `name`.
pub fn id_name_schema() -> Schema {
    Schema::new(
        vec![Field::primitive("id", PrimitiveType::Long)],
        vec![],
        vec![Field::primitive("name", PrimitiveType::String)],
    )
    .unwrap()
}

/// A table keyed by a long `id` in -1000..1000, split at -500, 0 and 500, whose rows all sit in
/// one file on the root partition: every leaf reads a slice of that file.
pub async fn long_key_table(
    location: sleeper_export::storage::Location,
    row_group_rows: usize,
    rows: usize,
) -> SleeperTable {
    let schema = id_name_schema();
    let splits = [KeyValue::Long(-500), KeyValue::Long(0), KeyValue::Long(500)];
    let tree = PartitionTree::from_split_points("longs", &schema, &splits).unwrap();
    let mut properties = TableProperties::new("longs", "longs", schema);
    properties.parquet.row_group_rows = row_group_rows;
    let style = RowStyle {
        key_span: 1000,
        ..RowStyle::default()
    };
    let mut writer = TableWriter::new(location, properties, tree, style, 4);
    let root = writer.tree().root().id.clone();
    writer
        .write_random_file(&root, rows, &[&root])
        .await
        .unwrap();
    writer.finish().await.unwrap()
}

/// A table of `leaves` leaves, keyed by a long `id` split at 100, 200, …, with one file, in
/// its first leaf.
pub async fn table_with_empty_leaves(
    location: sleeper_export::storage::Location,
    leaves: i64,
) -> SleeperTable {
    let schema = id_name_schema();
    let splits: Vec<KeyValue> = (1..leaves).map(|i| KeyValue::Long(i * 100)).collect();
    let tree = PartitionTree::from_split_points("sparse", &schema, &splits).unwrap();
    let first = tree.leaves()[0].id.clone();
    let style = RowStyle {
        key_span: 100,
        ..RowStyle::default()
    };
    let mut writer = TableWriter::new(
        location,
        TableProperties::new("sparse", "sparse", schema),
        tree,
        style,
        5,
    );
    writer
        .write_random_file(&first, 50, &[&first])
        .await
        .unwrap();
    writer.finish().await.unwrap()
}

/// A fresh bucket on the local S3 server that `scripts/test.sh` starts.
pub fn everything(schema: &Schema) -> Region {
    Region::everything(schema)
}

pub fn arc<T>(value: T) -> Arc<T> {
    Arc::new(value)
}

/// The table with its file references renamed (a newer files snapshot), as Sleeper or another
/// writer may have named the same files.
pub async fn with_files_renamed(
    table: &SleeperTable,
    rename: impl Fn(&str) -> String,
) -> SleeperTable {
    use object_store::ObjectStoreExt;
    use sleeper_export::model::{FileReference, StateFile};
    let files = StateFile::group(table.files.iter().map(|r| FileReference {
        filename: rename(&r.filename),
        ..r.clone()
    }));
    let path = table.location.child("statestore/snapshots/2-files.arrow");
    let bytes = sleeper_export::statestore::snapshot::write_files(&files, 0).unwrap();
    table.location.store.put(&path, bytes.into()).await.unwrap();
    SleeperTable::open(table.location.url.as_str(), &table.stores)
        .await
        .unwrap()
}

/// Every leaf's exported rows, in leaf order.
pub async fn exported_rows(
    table: &SleeperTable,
    output: &sleeper_export::storage::Location,
) -> Vec<RecordBatch> {
    let summary = sleeper_export::export::export_table(
        table,
        output,
        &sleeper_export::leaf::ExportOptions::default(),
        |_| {},
    )
    .await
    .unwrap();
    let mut rows = Vec::new();
    for leaf in &summary.leaves {
        let location = table.stores.resolve(&leaf.file).unwrap();
        let bytes = sleeper_export::storage::read_all(location.store.as_ref(), &location.prefix)
            .await
            .unwrap();
        rows.push(parquet_bytes_to_batch(bytes));
    }
    rows
}

/// Every Parquet file under `dir`, at any depth.
pub fn parquet_files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                files.push(path);
            }
        }
    }
    files
}
