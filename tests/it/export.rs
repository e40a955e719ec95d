//! End-to-end exports of local tables, checked against the naive reference export.

use std::sync::Arc;

use crate::common::*;
use datafusion::arrow::array::AsArray;
use datafusion::physical_plan::{displayable, ExecutionPlan};
use proptest::prelude::*;
use sleeper_export::export::export_table;
use sleeper_export::leaf::{leaf_export_plan, run_leaf_query, ExportOptions};
use sleeper_export::model::PartitionTree;
use sleeper_export::model::{Field, KeyOrder, KeyValue, PrimitiveType, Schema, TableProperties};
use sleeper_export::query::split_into_leaf_queries;
use sleeper_export::storage::Stores;
use sleeper_export::tablegen::{RowStyle, TableWriter};
use sleeper_export::Error;

/// Exports every leaf of the table with the given batch size and compares each file with the
/// reference export of the same leaf query.
async fn check_export_matches_reference(random: &RandomTable, batch_size: usize) {
    let table = &random.table;
    let output_dir = tempfile::tempdir().unwrap();
    let output = local(output_dir.path());
    let schema = &table.properties.schema;
    let options = ExportOptions {
        batch_size,
        ..ExportOptions::default()
    };
    for query in split_into_leaf_queries(table, "export-1") {
        let result = run_leaf_query(table, &query, &output, &options)
            .await
            .unwrap();
        let exported = read_parquet(&result.file);
        let expected = reference_export(&table.properties, &query);
        let context = format!(
            "leaf {} of schema {}",
            query.leaf_partition_id,
            schema.to_json()
        );
        assert_same_rows(&exported, &expected, &context);
        assert_eq!(result.rows_written, expected.num_rows() as u64, "{context}");
        assert!(result.rows_read >= result.rows_written, "{context}");
        let on_disk = std::fs::metadata(result.file.strip_prefix("file://").unwrap())
            .unwrap()
            .len();
        assert_eq!(result.bytes, on_disk, "{context}: reported size");
        let bytes = std::fs::read(result.file.strip_prefix("file://").unwrap()).unwrap();
        assert_eq!(
            result.crc32c,
            format!("{:08x}", crc32c::crc32c(&bytes)),
            "{context}: checksum"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn export_equals_the_reference_leaf_by_leaf(seed in any::<u64>(), small_batches in any::<bool>()) {
        let runtime = runtime();
        runtime.block_on(async {
            let random = random_table(seed).await;
            // Small batches put runs of equal keys across batch boundaries.
            check_export_matches_reference(&random, if small_batches { 7 } else { 8192 }).await;
        });
    }
}

async fn export_only_leaf(
    table: &sleeper_export::table::SleeperTable,
) -> Result<datafusion::arrow::array::RecordBatch, Error> {
    let output_dir = tempfile::tempdir().unwrap();
    let summary = export_table(
        table,
        &local(output_dir.path()),
        &ExportOptions::default(),
        |_| {},
    )
    .await?;
    assert_eq!(summary.leaves.len(), 1);
    Ok(read_parquet(&summary.leaves[0].file))
}

fn string_schema() -> Schema {
    Schema::new(
        vec![Field::primitive("key", PrimitiveType::String)],
        vec![Field::primitive("sort", PrimitiveType::Long)],
        vec![Field::primitive("value", PrimitiveType::String)],
    )
    .unwrap()
}

async fn single_leaf_table(
    schema: Schema,
    order: KeyOrder,
    dir: &tempfile::TempDir,
) -> TableWriter {
    let location = local(dir.path());
    let tree = PartitionTree::from_split_points("t1", &schema, &[]).unwrap();
    let mut properties = TableProperties::new("t1", "table one", schema);
    properties.key_order = order;
    TableWriter::new(location, properties, tree, RowStyle::default(), 7)
}

/// A one-leaf table of the engine of `order`, with one file of each batch (written as given),
/// exported.
async fn export_files(
    order: KeyOrder,
    schema: &Schema,
    files: Vec<datafusion::arrow::array::RecordBatch>,
) -> Result<datafusion::arrow::array::RecordBatch, Error> {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = single_leaf_table(schema.clone(), order, &dir).await;
    for batch in files {
        writer
            .write_file("root", vec![batch], &["root"])
            .await
            .unwrap();
    }
    export_only_leaf(&writer.finish().await.unwrap()).await
}

fn string_batch(schema: &Schema, keys: &[&str]) -> datafusion::arrow::array::RecordBatch {
    use datafusion::arrow::array::{Int64Array, StringArray};
    datafusion::arrow::array::RecordBatch::try_new(
        schema.arrow_schema(),
        vec![
            Arc::new(StringArray::from(keys.to_vec())),
            Arc::new(Int64Array::from_iter_values(0..keys.len() as i64)),
            Arc::new(StringArray::from(
                keys.iter().map(|k| format!("v{k}")).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

async fn merged_strings(order: KeyOrder, files: &[&[&str]]) -> Result<Vec<String>, Error> {
    let schema = string_schema();
    let batches = files
        .iter()
        .map(|keys| string_batch(&schema, keys))
        .collect();
    let exported = export_files(order, &schema, batches).await?;
    Ok(exported
        .column(0)
        .as_string::<i32>()
        .iter()
        .map(|k| k.unwrap().to_owned())
        .collect())
}

#[tokio::test]
async fn strings_are_merged_in_the_order_of_the_tables_engine() {
    // Java: U+FF21 (fullwidth A) and U+FFFF after U+10000 and U+1F600 (UTF-16 surrogates).
    let java = merged_strings(
        KeyOrder::Java,
        &[
            &["a", "\u{1f600}", "\u{ff21}"],
            &["b", "\u{10000}", "\u{ffff}"],
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        java,
        ["a", "b", "\u{10000}", "\u{1f600}", "\u{ff21}", "\u{ffff}"]
    );
    // DataFusion, Sleeper's default engine: UTF-8 bytes.
    let datafusion = merged_strings(
        KeyOrder::DataFusion,
        &[
            &["a", "\u{ff21}", "\u{1f600}"],
            &["b", "\u{ffff}", "\u{10000}"],
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        datafusion,
        ["a", "b", "\u{ff21}", "\u{ffff}", "\u{10000}", "\u{1f600}"]
    );
}

#[tokio::test]
async fn a_file_out_of_the_tables_order_fails_naming_the_file_row_keys_and_order() {
    // A file sorted as the Java engine sorts, in a table of the DataFusion engine.
    let error = merged_strings(KeyOrder::DataFusion, &[&["a", "\u{1f600}", "\u{ff21}"]])
        .await
        .unwrap_err();
    let Error::UnsortedInputFile {
        file,
        row,
        key,
        previous,
        order,
        other_order_fits,
        ..
    } = &error
    else {
        panic!("{error:?}");
    };
    assert!(file.contains("/data/partition_root/"), "{file}");
    assert_eq!(*row, 2);
    assert_eq!(key, "(\"\u{ff21}\", 2)");
    assert_eq!(previous, "(\"\u{1f600}\", 1)");
    assert_eq!(
        (*order, *other_order_fits),
        (KeyOrder::DataFusion, Some(KeyOrder::Java))
    );
    let message = error.to_string();
    for expected in [
        "not sorted in the DataFusion engine's order",
        "its row 2",
        "the two rows are in the Java engine's order",
        "sleeper.table.data.engine",
        "--key-order",
    ] {
        assert!(message.contains(expected), "{expected:?} not in: {message}");
    }
    // And the other way round; across batches too (one row per batch).
    let error = merged_strings(KeyOrder::Java, &[&["\u{ff21}", "\u{1f600}"]])
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::UnsortedInputFile {
                row: 1,
                other_order_fits: Some(KeyOrder::DataFusion),
                ..
            }
        ),
        "{error:?}"
    );
    // A file in neither order says nothing of the other.
    let error = merged_strings(KeyOrder::Java, &[&["a", "c", "b"]])
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::UnsortedInputFile {
                row: 2,
                other_order_fits: None,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!error.to_string().contains("two rows are in"), "{error}");
}

#[tokio::test]
async fn the_order_check_spans_batches_and_names_the_row_in_the_file() {
    use datafusion::arrow::array::{Int64Array, StringArray};
    let schema = string_schema();
    let dir = tempfile::tempdir().unwrap();
    let mut properties = TableProperties::new("t1", "t", schema.clone());
    properties.parquet.row_group_rows = 3;
    let tree = PartitionTree::from_split_points("t1", &schema, &[]).unwrap();
    let mut writer = TableWriter::new(local(dir.path()), properties, tree, RowStyle::default(), 7);
    // Row groups of 3 rows, batches of 2: the descent is at row 7, in the third row group.
    let keys = ["a", "b", "c", "d", "e", "f", "g", "a0", "h"];
    let batch = datafusion::arrow::array::RecordBatch::try_new(
        schema.arrow_schema(),
        vec![
            Arc::new(StringArray::from(keys.to_vec())),
            Arc::new(Int64Array::from_iter_values(0..keys.len() as i64)),
            Arc::new(StringArray::from(keys.to_vec())),
        ],
    )
    .unwrap();
    writer
        .write_file("root", vec![batch], &["root"])
        .await
        .unwrap();
    let table = writer.finish().await.unwrap();
    let output = tempfile::tempdir().unwrap();
    for (batch_size, verify_order) in [(2, true), (8192, true), (2, false)] {
        let options = ExportOptions {
            batch_size,
            verify_order,
            ..ExportOptions::default()
        };
        let query = &split_into_leaf_queries(&table, "e")[0];
        let result = run_leaf_query(&table, query, &local(output.path()), &options).await;
        match (verify_order, result) {
            (
                true,
                Err(Error::UnsortedInputFile {
                    row, key, previous, ..
                }),
            ) => {
                assert_eq!(
                    (row, key.as_str(), previous.as_str()),
                    (7, "(\"a0\", 7)", "(\"g\", 6)")
                );
            }
            (false, Ok(written)) => assert_eq!(written.rows_written, keys.len() as u64),
            (_, other) => panic!("batch size {batch_size}, verify {verify_order}: {other:?}"),
        }
    }
}

async fn merged_bytes(order: KeyOrder, files: &[&[&[u8]]]) -> Result<Vec<Vec<u8>>, Error> {
    use datafusion::arrow::array::{BinaryArray, Int64Array, RecordBatch};
    let schema = Schema::new(
        vec![Field::primitive("key", PrimitiveType::ByteArray)],
        vec![],
        vec![Field::primitive("n", PrimitiveType::Long)],
    )
    .unwrap();
    let batches = files
        .iter()
        .map(|keys| {
            RecordBatch::try_new(
                schema.arrow_schema(),
                vec![
                    Arc::new(BinaryArray::from(keys.to_vec())),
                    Arc::new(Int64Array::from_iter_values(0..keys.len() as i64)),
                ],
            )
            .unwrap()
        })
        .collect();
    let exported = export_files(order, &schema, batches).await?;
    Ok(exported
        .column(0)
        .as_binary::<i32>()
        .iter()
        .map(|k| k.unwrap().to_vec())
        .collect())
}

#[tokio::test]
async fn byte_arrays_are_merged_signed_for_java_and_unsigned_for_datafusion() {
    // Signed: 0x80 (-128) < 0xff (-1) < 0x00 < 0x7f.
    let java = merged_bytes(KeyOrder::Java, &[&[&[0x80], &[0x00]], &[&[0xff], &[0x7f]]])
        .await
        .unwrap();
    assert_eq!(java, [vec![0x80u8], vec![0xff], vec![0x00], vec![0x7f]]);
    let datafusion = merged_bytes(
        KeyOrder::DataFusion,
        &[&[&[0x00], &[0x80]], &[&[0x7f], &[0xff]]],
    )
    .await
    .unwrap();
    assert_eq!(
        datafusion,
        [vec![0x00u8], vec![0x7f], vec![0x80], vec![0xff]]
    );
    let error = merged_bytes(KeyOrder::DataFusion, &[&[&[0x80], &[0x00]]])
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            Error::UnsortedInputFile { key, other_order_fits: Some(KeyOrder::Java), .. }
                if key == "(0x00)"
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_empty_leaf_gives_an_empty_file_with_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let schema = string_schema();
    let location = local(dir.path());
    let tree =
        PartitionTree::from_split_points("t1", &schema, &[KeyValue::String("m".into())]).unwrap();
    let mut writer = TableWriter::new(
        location,
        TableProperties::new("t1", "t", schema.clone()),
        tree,
        RowStyle::default(),
        3,
    );
    let left = writer.tree().leaves()[0].id.clone();
    writer
        .write_random_file(&left, 100, &[&left])
        .await
        .unwrap();
    let table = writer.finish().await.unwrap();
    let output_dir = tempfile::tempdir().unwrap();
    let output = local(output_dir.path());
    let summary = export_table(&table, &output, &ExportOptions::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(summary.leaves.len(), 2);
    let empty = read_parquet(&summary.leaves[1].file);
    assert_eq!(empty.num_rows(), 0);
    assert_eq!(empty.schema().fields(), schema.arrow_schema().fields());
    assert_eq!(read_parquet(&summary.leaves[0].file).num_rows(), 100);
}

#[tokio::test]
async fn export_plans_never_sort() {
    let random = random_table(11).await;
    let output = local(&random.dir.path().join("out"));
    for query in split_into_leaf_queries(&random.table, "e") {
        let plan = leaf_export_plan(&random.table, &query, &output, &ExportOptions::default())
            .await
            .unwrap();
        let shown = displayable(plan.as_ref() as &dyn ExecutionPlan)
            .indent(true)
            .to_string();
        assert!(
            shown.contains("LeafExportExec") && shown.contains("LeafMergeExec"),
            "{shown}"
        );
        assert!(!shown.contains("Sort"), "an export plan sorts:\n{shown}");
    }
}

#[tokio::test]
async fn files_land_at_sleepers_paths() {
    let random = random_table(5).await;
    let output_dir = tempfile::tempdir().unwrap();
    let output = local(output_dir.path());
    let options = ExportOptions {
        export_id: Some("my-export".into()),
        ..ExportOptions::default()
    };
    let summary = export_table(&random.table, &output, &options, |_| {})
        .await
        .unwrap();
    let dir = output_dir.path().join("table-1").join("my-export");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".parquet"))
        .collect();
    let mut expected: Vec<String> = summary
        .leaves
        .iter()
        .map(|l| format!("{}.parquet", l.sub_export_id))
        .collect();
    on_disk.sort();
    expected.sort();
    assert_eq!(on_disk, expected);
    assert_eq!(summary.leaves.len(), random.table.partitions.leaves().len());
    let status = sleeper_export::queue::manifest::ExportRecords::new(
        &local(output_dir.path()),
        "table-1",
        "my-export",
    )
    .status()
    .await
    .unwrap();
    assert!(status.is_complete(), "{status:?}");
    assert_eq!(status.done.len(), summary.leaves.len());
}

/// A single-leaf table with two files, for the error tests.
async fn two_file_table(
    dir: &tempfile::TempDir,
) -> (sleeper_export::table::SleeperTable, Vec<String>) {
    let mut writer = single_leaf_table(string_schema(), KeyOrder::default(), dir).await;
    let first = writer
        .write_random_file("root", 1000, &["root"])
        .await
        .unwrap();
    let second = writer
        .write_random_file("root", 1000, &["root"])
        .await
        .unwrap();
    (writer.finish().await.unwrap(), vec![first, second])
}

async fn export_error(table: &sleeper_export::table::SleeperTable) -> (Error, tempfile::TempDir) {
    let output_dir = tempfile::tempdir().unwrap();
    let output = local(output_dir.path());
    let error = export_table(table, &output, &ExportOptions::default(), |_| {})
        .await
        .unwrap_err();
    (error, output_dir)
}

fn parquet_files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test]
async fn a_missing_input_file_is_named_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let (table, files) = two_file_table(&dir).await;
    std::fs::remove_file(files[1].strip_prefix("file://").unwrap()).unwrap();
    let (error, output) = export_error(&table).await;
    assert!(matches!(error, Error::MissingInputFile { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains(&files[1])
            && message.contains("partition root")
            && message.contains("missing"),
        "{message}"
    );
    assert_eq!(
        parquet_files_under(output.path()),
        Vec::<std::path::PathBuf>::new()
    );
    let export_dir = std::fs::read_dir(output.path().join("t1"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let export_id = export_dir.file_name().into_string().unwrap();
    let status = sleeper_export::queue::manifest::ExportRecords::new(
        &local(output.path()),
        "t1",
        &export_id,
    )
    .status()
    .await
    .unwrap();
    assert!(!status.is_complete());
    assert_eq!(status.failed.len(), 1);
    assert!(
        status.failed.first[0].error.contains("is missing"),
        "{:?}",
        status.failed
    );
}

#[tokio::test]
async fn corrupt_parquet_is_named_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let (table, files) = two_file_table(&dir).await;
    let path = files[0].strip_prefix("file://").unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    // Keep the footer but break the data pages, so the failure comes mid-stream.
    for byte in &mut bytes[4..2000] {
        *byte = !*byte;
    }
    std::fs::write(path, bytes).unwrap();
    let (error, output) = export_error(&table).await;
    assert!(matches!(error, Error::CorruptInputFile { .. }), "{error:?}");
    assert!(error.to_string().contains(&files[0]), "{error}");
    assert_eq!(
        parquet_files_under(output.path()),
        Vec::<std::path::PathBuf>::new()
    );

    std::fs::write(path, b"not parquet at all").unwrap();
    let (error, _) = export_error(&table).await;
    assert!(
        matches!(error, Error::CorruptInputFile { .. }) && error.to_string().contains(&files[0]),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_file_with_another_schema_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (table, files) = two_file_table(&dir).await;
    let other = Schema::new(
        vec![Field::primitive("key", PrimitiveType::Long)],
        vec![],
        vec![],
    )
    .unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let mut writer = single_leaf_table(other, KeyOrder::default(), &other_dir).await;
    let wrong = writer
        .write_random_file("root", 10, &["root"])
        .await
        .unwrap();
    std::fs::copy(
        wrong.strip_prefix("file://").unwrap(),
        files[1].strip_prefix("file://").unwrap(),
    )
    .unwrap();
    let (error, _) = export_error(&table).await;
    assert!(
        matches!(error, Error::InputSchemaMismatch { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains(&files[1]) && message.contains("\"key\""),
        "{message}"
    );
}

#[tokio::test]
async fn a_leaf_query_for_another_table_is_rejected() {
    let random = random_table(3).await;
    let mut query = split_into_leaf_queries(&random.table, "e").remove(0);
    query.table_id = "nope".into();
    let output = local(&random.dir.path().join("out"));
    let error = leaf_export_plan(&random.table, &query, &output, &ExportOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        r#"Table could not be found with ID: "nope""#
    );
}

#[tokio::test]
async fn an_unknown_table_location_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let error =
        sleeper_export::table::SleeperTable::open(dir.path().to_str().unwrap(), &Stores::default())
            .await
            .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("no Sleeper table here: table.properties not found"),
        "{error}"
    );
}

#[tokio::test]
async fn integer_keyed_leaves_read_only_the_row_groups_of_their_region() {
    let dir = tempfile::tempdir().unwrap();
    let table = long_key_table(local(dir.path()), 100, 4000).await;
    let output = local(&dir.path().join("out"));
    let options = ExportOptions {
        batch_size: 100,
        ..ExportOptions::default()
    };
    let mut written = 0;
    for query in split_into_leaf_queries(&table, "e") {
        let result = run_leaf_query(&table, &query, &output, &options)
            .await
            .unwrap();
        assert_same_rows(
            &read_parquet(&result.file),
            &reference_export(&table.properties, &query),
            &query.leaf_partition_id,
        );
        // At most one row group of slack at each end of the leaf's range.
        assert!(result.rows_read <= result.rows_written + 200, "{result:?}");
        written += result.rows_written;
    }
    assert_eq!(written, 4000);
}

#[tokio::test]
async fn exported_files_use_the_tables_row_group_size() {
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    let dir = tempfile::tempdir().unwrap();
    let schema = string_schema();
    let mut properties = TableProperties::new("t1", "t", schema.clone());
    properties.parquet.row_group_rows = 100;
    let tree = PartitionTree::from_split_points("t1", &schema, &[]).unwrap();
    let mut writer = TableWriter::new(local(dir.path()), properties, tree, RowStyle::default(), 2);
    writer
        .write_random_file("root", 150, &["root"])
        .await
        .unwrap();
    writer
        .write_random_file("root", 100, &["root"])
        .await
        .unwrap();
    let table = writer.finish().await.unwrap();
    let output_dir = tempfile::tempdir().unwrap();
    let options = ExportOptions {
        batch_size: 64,
        ..ExportOptions::default()
    };
    let summary = export_table(&table, &local(output_dir.path()), &options, |_| {})
        .await
        .unwrap();
    let path = summary.leaves[0].file.strip_prefix("file://").unwrap();
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let sizes: Vec<i64> = reader
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.num_rows())
        .collect();
    assert_eq!(sizes, [100, 100, 50]);
    let codec = reader.metadata().row_group(0).column(0).compression();
    assert!(codec.to_string().starts_with("ZSTD"), "{codec}");
}

/// Sleeper's own file references may be plain paths as well as `file://` URLs: both are files of
/// the table, judged on where they resolve to.
#[tokio::test]
async fn a_table_whose_files_are_named_by_plain_paths_exports_the_same_rows() {
    let random = random_table(23).await;
    assert!(!random.table.files.is_empty());
    let out = tempfile::tempdir().unwrap();
    let expected = exported_rows(&random.table, &local(&out.path().join("urls"))).await;
    let plain = with_files_renamed(&random.table, |name| {
        name.strip_prefix("file://").unwrap().to_owned()
    })
    .await;
    assert!(plain.files.iter().all(|f| f.filename.starts_with('/')));
    assert_eq!(
        exported_rows(&plain, &local(&out.path().join("paths"))).await,
        expected
    );
}

/// One file on the root of a string-keyed table split at "g", "n" and "t", in row groups of
/// 100 rows.
async fn string_key_table(
    dir: &std::path::Path,
    order: KeyOrder,
) -> sleeper_export::table::SleeperTable {
    let schema = string_schema();
    let splits = ["g", "n", "t"].map(|s| KeyValue::String(s.into()));
    let tree = PartitionTree::from_split_points("strings", &schema, &splits).unwrap();
    let mut properties = TableProperties::new("strings", "strings", schema);
    properties.parquet.row_group_rows = 100;
    properties.key_order = order;
    let mut writer = TableWriter::new(local(dir), properties, tree, RowStyle::default(), 9);
    let root = writer.tree().root().id.clone();
    writer
        .write_random_file(&root, 4000, &[&root])
        .await
        .unwrap();
    writer.finish().await.unwrap()
}

/// In the DataFusion engine's order, Parquet's statistics of string keys bound them, so each
/// leaf reads only the row groups of its region; in the Java engine's they do not.
#[tokio::test]
async fn string_keyed_leaves_skip_row_groups_in_the_datafusion_order_only() {
    let dir = tempfile::tempdir().unwrap();
    for order in [KeyOrder::DataFusion, KeyOrder::Java] {
        let table = string_key_table(&dir.path().join(order.data_engine()), order).await;
        let output = local(&dir.path().join(format!("out-{}", order.data_engine())));
        let options = ExportOptions {
            batch_size: 100,
            ..ExportOptions::default()
        };
        let queries = split_into_leaf_queries(&table, "e");
        let mut read_by_last = 0;
        for query in &queries {
            let result = run_leaf_query(&table, query, &output, &options)
                .await
                .unwrap();
            assert_same_rows(
                &read_parquet(&result.file),
                &reference_export(&table.properties, query),
                &query.leaf_partition_id,
            );
            if order == KeyOrder::DataFusion {
                assert!(result.rows_read <= result.rows_written + 200, "{result:?}");
            }
            read_by_last = result.rows_read;
        }
        if order == KeyOrder::Java {
            assert_eq!(
                read_by_last, 4000,
                "the last leaf reads the file from its start"
            );
        }
    }
}
