//! Sleeper's own test JSON, used as it is: our readers and writers must agree with it.

use crate::common::shared;
use sleeper_export::model::{FieldType, KeyValue, PrimitiveType, Range, Region, Schema};
use sleeper_export::query::BulkExportLeafPartitionQuery;

fn fixture(path: &str) -> String {
    std::fs::read_to_string(shared(path)).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

#[test]
fn parses_sleepers_example_schemas() {
    let basic = Schema::from_json(&fixture("sleeper-fixtures/examples/basic-schema.json")).unwrap();
    assert_eq!(basic.row_key_types(), [PrimitiveType::String]);
    assert_eq!(
        basic.key_types(),
        [PrimitiveType::String, PrimitiveType::Long]
    );

    let full = Schema::from_json(&fixture("sleeper-fixtures/examples/full-schema.json")).unwrap();
    assert_eq!(
        full.row_key_types(),
        [PrimitiveType::String, PrimitiveType::Long]
    );
    assert_eq!(
        full.key_types()[2..],
        [PrimitiveType::Int, PrimitiveType::ByteArray]
    );
    assert_eq!(
        full.field("g").unwrap().field_type,
        FieldType::Map {
            key: PrimitiveType::Int,
            value: PrimitiveType::String
        }
    );
    assert_eq!(
        full.field("h").unwrap().field_type,
        FieldType::List {
            element: PrimitiveType::Int
        }
    );
    assert_eq!(Schema::from_json(&full.to_json()).unwrap(), full);
    assert_eq!(full.arrow_schema().fields().len(), 8);
}

fn int_key_schema() -> Schema {
    Schema::from_json(r#"{"rowKeyFields":[{"name":"key","type":"IntType"}]}"#).unwrap()
}

#[test]
fn leaf_partition_queries_round_trip_byte_for_byte() {
    for (name, sql) in [
        ("shouldSerDeBulkExportLeafPartitionQuery", None),
        ("shouldSerDeBulkExportLeafPartitionQueryUsingSchema", None),
        (
            "shouldSerDeBulkExportLeafPartitionQueryWithSqlQuery",
            Some("SELECT * FROM query_results LIMIT 1;"),
        ),
    ] {
        let text = fixture(&format!(
            "sleeper-fixtures/bulk-export/{name}.approved.json"
        ));
        let query = BulkExportLeafPartitionQuery::from_json(&text, |table_id| {
            assert_eq!(table_id, "t-id");
            Ok(int_key_schema())
        })
        .unwrap();
        assert_eq!(query.files, ["/test/file.parquet"]);
        assert_eq!(query.sql_query.as_deref(), sql, "{name}");
        assert_eq!(
            query.regions[0].ranges[0],
            Range {
                min: KeyValue::Int(1),
                min_inclusive: true,
                max: Some(KeyValue::Int(10)),
                max_inclusive: true
            }
        );
        assert_eq!(
            query.partition_region.ranges[0],
            Range::partition(KeyValue::Int(0), Some(KeyValue::Int(1000)))
        );
        assert_eq!(
            query.to_json(&int_key_schema(), true),
            text.trim_end(),
            "{name}"
        );
        let compact = query.to_json(&int_key_schema(), false);
        assert_eq!(
            BulkExportLeafPartitionQuery::from_json(&compact, |_| Ok(int_key_schema())).unwrap(),
            query
        );
    }
}

#[test]
fn leaf_query_validation_uses_sleepers_messages() {
    let text = fixture(
        "sleeper-fixtures/bulk-export/shouldSerDeBulkExportLeafPartitionQuery.approved.json",
    );
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    for field in [
        "subExportId",
        "regions",
        "leafPartitionId",
        "partitionRegion",
        "files",
    ] {
        let mut without = json.clone();
        without.as_object_mut().unwrap().remove(field);
        let error =
            BulkExportLeafPartitionQuery::from_json(&without.to_string(), |_| Ok(int_key_schema()))
                .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(r#"Query validation failed for export "e-id": {field} field must be provided"#)
        );
    }
    json.as_object_mut().unwrap().remove("exportId");
    let error =
        BulkExportLeafPartitionQuery::from_json(&json.to_string(), |_| Ok(int_key_schema()))
            .unwrap_err();
    assert_eq!(
        error.to_string(),
        "Query validation failed: exportId field must be provided"
    );

    // Fields this crate does not know (a future Sleeper's, or a sender's own) are refused by
    // name, as is an SQL filter that is not a string.
    for (field, value, expected) in [
        (
            "rowFilter",
            serde_json::json!("value > 1"),
            r#"unknown field "rowFilter""#,
        ),
        (
            "sqlQuery",
            serde_json::json!(["SELECT 1"]),
            "sqlQuery field must be a string",
        ),
    ] {
        let mut with = json.clone();
        with.as_object_mut().unwrap().insert(field.into(), value);
        with.as_object_mut()
            .unwrap()
            .insert("exportId".into(), "e-id".into());
        let error =
            BulkExportLeafPartitionQuery::from_json(&with.to_string(), |_| Ok(int_key_schema()))
                .unwrap_err();
        assert!(error.is_bad_message(), "{error}");
        assert!(
            error
                .to_string()
                .starts_with(r#"Query validation failed for export "e-id": "#)
                && error.to_string().contains(expected),
            "{error}"
        );
    }

    let unknown = BulkExportLeafPartitionQuery::from_json(&text, |id| {
        Err(sleeper_export::Error::TableNotFound {
            by: "ID",
            value: id.to_owned(),
        })
    })
    .unwrap_err();
    assert_eq!(
        unknown.to_string(),
        r#"Table could not be found with ID: "t-id""#
    );

    let wrong_key = text.replacen("\"key\"", "\"other\"", 1);
    let error =
        BulkExportLeafPartitionQuery::from_json(&wrong_key, |_| Ok(int_key_schema())).unwrap_err();
    assert!(
        error
            .to_string()
            .contains(r#"Key "other" was not a row key field in the table schema"#),
        "{error}"
    );

    let malformed =
        BulkExportLeafPartitionQuery::from_json("{\"tableId\": ", |_| Ok(int_key_schema()))
            .unwrap_err();
    assert!(
        malformed
            .to_string()
            .starts_with("invalid bulk export leaf partition query JSON"),
        "{malformed}"
    );
}

/// The partition regions in Sleeper's transaction fixtures: Base64 strings (written by Gson as
/// `\u003d` for '='), and an absent `max` for unbounded.
#[test]
fn reads_region_json_from_sleepers_transactions() {
    let schema =
        Schema::from_json(r#"{"rowKeyFields":[{"name":"key","type":"StringType"}]}"#).unwrap();
    let text =
        fixture("sleeper-fixtures/transactions/shouldSerDeInitialisePartitions.approved.json");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let regions: Vec<(String, Region)> = json["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partitionId"].as_str().unwrap().to_owned(),
                Region::from_json(&p["region"], &schema).unwrap(),
            )
        })
        .collect();
    let string = |s: &str| KeyValue::String(s.into());
    let range_of = |id: &str| regions.iter().find(|(p, _)| p == id).unwrap().1.ranges[0].clone();
    assert_eq!(range_of("root"), Range::partition(string(""), None));
    assert_eq!(
        range_of("L"),
        Range::partition(string(""), Some(string("p")))
    );
    assert_eq!(
        range_of("LR"),
        Range::partition(string("g"), Some(string("p")))
    );
    assert_eq!(range_of("RR"), Range::partition(string("u"), None));
    for (id, region) in &regions {
        let written = region.to_json(&schema);
        assert_eq!(
            &Region::from_json(&written, &schema).unwrap(),
            region,
            "{id}"
        );
        let original = json["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["partitionId"] == id.as_str())
            .unwrap();
        assert_eq!(
            written, original["region"],
            "{id}: written as Sleeper writes it"
        );
    }
}

/// Files written by Sleeper's own DataFusion compaction (`compact`, from the inputs beside them;
/// see `sleeper-fixtures/compacted/README.md`): their strings and byte arrays are declared
/// `Utf8View` and `BinaryView` in their embedded Arrow schema.
mod compacted {
    use std::path::Path;

    use datafusion::arrow::array::RecordBatch;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    use datafusion::parquet::schema::printer::print_schema;
    use object_store::ObjectStoreExt;
    use sleeper_export::leaf::{run_leaf_query, ExportOptions};
    use sleeper_export::model::{
        FileReference, KeyOrder, KeyValue, Partition, Range, Region, Schema, StateFile,
        TableProperties,
    };
    use sleeper_export::query::BulkExportLeafPartitionQuery;
    use sleeper_export::statestore::{snapshot, SNAPSHOTS_DIR};
    use sleeper_export::table::SleeperTable;
    use sleeper_export::Error;

    use crate::common::{local, read_parquet, shared};

    fn fixture(path: &str) -> std::path::PathBuf {
        shared(&format!("sleeper-fixtures/compacted/{path}"))
    }

    fn schema(json: &str) -> Schema {
        Schema::from_json(json).unwrap()
    }

    fn string_key() -> Schema {
        schema(
            r#"{"rowKeyFields":[{"name":"key","type":"StringType"}],
                "sortKeyFields":[{"name":"ts","type":"LongType"}],
                "valueFields":[{"name":"v_long","type":"LongType"},{"name":"v_str","type":"StringType"}]}"#,
        )
    }

    fn bytes_key() -> Schema {
        schema(
            r#"{"rowKeyFields":[{"name":"key","type":"ByteArrayType"}],
                "sortKeyFields":[{"name":"sk","type":"IntType"}],
                "valueFields":[{"name":"v","type":"LongType"}]}"#,
        )
    }

    fn nested() -> Schema {
        schema(
            r#"{"rowKeyFields":[{"name":"k_int","type":"IntType"},{"name":"k_str","type":"StringType"}],
                "sortKeyFields":[{"name":"ts","type":"LongType"}],
                "valueFields":[
                    {"name":"m","type":{"MapType":{"keyType":"StringType","valueType":"LongType"}}},
                    {"name":"l","type":{"ListType":{"elementType":"LongType"}}},
                    {"name":"v_opt","type":"StringType","nullable":true}]}"#,
        )
    }

    fn aggregated() -> Schema {
        schema(
            r#"{"rowKeyFields":[{"name":"id","type":"LongType"}],
                "sortKeyFields":[{"name":"ts","type":"LongType"}],
                "valueFields":[{"name":"v1","type":"LongType"},{"name":"v2","type":"LongType"},
                    {"name":"v3","type":"IntType"},
                    {"name":"m","type":{"MapType":{"keyType":"StringType","valueType":"LongType"}}}]}"#,
        )
    }

    /// A one-leaf table on local disk whose files are copies of these fixtures, read in the
    /// order given.
    async fn table_of(dir: &Path, properties: TableProperties, files: &[&str]) -> SleeperTable {
        let location = local(dir);
        let data = dir.join("data/partition_root");
        std::fs::create_dir_all(&data).unwrap();
        let mut state = Vec::new();
        for (i, file) in files.iter().enumerate() {
            let target = data.join(format!("{i:02}.parquet"));
            std::fs::copy(fixture(file), &target).unwrap();
            let filename = format!("file://{}", target.display());
            state.push(StateFile {
                references: vec![FileReference {
                    filename: filename.clone(),
                    partition_id: "root".into(),
                    number_of_rows: 10,
                    count_approximate: false,
                    only_contains_data_for_this_partition: true,
                    job_id: None,
                }],
                filename,
            });
        }
        let root = Partition {
            id: "root".into(),
            is_leaf: true,
            parent_id: None,
            child_ids: vec![],
            region: Region::everything(&properties.schema),
            dimension: -1,
        };
        SleeperTable::write_properties(&location, &properties)
            .await
            .unwrap();
        for (kind, bytes) in [
            ("files", snapshot::write_files(&state, 0).unwrap()),
            (
                "partitions",
                snapshot::write_partitions(&[root], &properties.schema).unwrap(),
            ),
        ] {
            let path = location.child(&format!("{SNAPSHOTS_DIR}/1-{kind}.arrow"));
            location.store.put(&path, bytes.into()).await.unwrap();
        }
        SleeperTable::open(dir.to_str().unwrap(), &Default::default())
            .await
            .unwrap()
    }

    fn properties(schema: Schema) -> TableProperties {
        TableProperties::new("compacted", "compacted", schema)
    }

    /// Exports the rows of the table's one leaf inside `region`, as `compact` filters them;
    /// returns the file written.
    async fn export(table: &SleeperTable, region: Region, out: &Path) -> Result<String, Error> {
        let query = BulkExportLeafPartitionQuery {
            table_id: table.id().into(),
            export_id: "e".into(),
            sub_export_id: "s".into(),
            regions: vec![region.clone()],
            leaf_partition_id: "root".into(),
            partition_region: region,
            files: table.files.iter().map(|f| f.filename.clone()).collect(),
            sql_query: None,
        };
        let result = run_leaf_query(table, &query, &local(out), &ExportOptions::default()).await?;
        Ok(result.file)
    }

    fn text(batch: &RecordBatch) -> String {
        pretty_format_batches(std::slice::from_ref(batch))
            .unwrap()
            .to_string()
    }

    fn metadata(path: &str) -> datafusion::parquet::file::metadata::ParquetMetaData {
        let path = path.strip_prefix("file://").unwrap_or(path);
        let file = std::fs::File::open(path).unwrap();
        SerializedFileReader::new(file).unwrap().metadata().clone()
    }

    fn parquet_schema(path: &str) -> String {
        let mut printed = Vec::new();
        print_schema(&mut printed, metadata(path).file_metadata().schema());
        String::from_utf8(printed).unwrap()
    }

    /// Our export of the inputs is Sleeper's output: the same rows in the same order, with the
    /// same Parquet layout (field repetition, map and list groups).
    fn assert_as_sleeper_wrote(ours: &str, sleepers: &str) {
        let theirs = fixture(sleepers);
        let theirs = theirs.to_str().unwrap();
        assert_eq!(
            text(&read_parquet(ours)),
            text(&read_parquet(theirs)),
            "{sleepers}"
        );
        assert_eq!(parquet_schema(ours), parquet_schema(theirs), "{sleepers}");
    }

    fn string_range(min: &str, max: &str) -> Range {
        Range::partition(
            KeyValue::String(min.into()),
            Some(KeyValue::String(max.into())),
        )
    }

    #[tokio::test]
    async fn string_keys_export_as_sleepers_compaction_wrote_them() {
        let dir = tempfile::tempdir().unwrap();
        let inputs = [
            "a_string_key/input/in1.parquet",
            "a_string_key/input/in2.parquet",
            "a_string_key/input/in3.parquet",
        ];
        let table = table_of(&dir.path().join("t"), properties(string_key()), &inputs).await;
        let out = dir.path().join("out");
        let region = |min, max| Region {
            ranges: vec![string_range(min, max)],
        };
        let ours = export(&table, region("a", "\u{1f600}"), &out.join("1"))
            .await
            .unwrap();
        assert_as_sleeper_wrote(&ours, "a_string_key/output/out.parquet");
        let ours = export(&table, region("", "\u{10ffff}"), &out.join("2"))
            .await
            .unwrap();
        assert_as_sleeper_wrote(&ours, "a_string_key/output/out_all.parquet");
        // Our files record what they are sorted by: the row key, then the sort key.
        let sorting: Vec<i32> = metadata(&ours)
            .row_group(0)
            .sorting_columns()
            .unwrap()
            .iter()
            .map(|c| c.column_idx)
            .collect();
        assert_eq!(sorting, [0, 1]);

        let mut four = properties(string_key());
        four.parquet.row_group_rows = 4;
        let table = table_of(&dir.path().join("t4"), four, &inputs).await;
        let ours = export(&table, region("a", "\u{1f600}"), &out.join("3"))
            .await
            .unwrap();
        assert_as_sleeper_wrote(&ours, "a_string_key/output/out_rg4.parquet");
        let groups = |path: &str| {
            metadata(path)
                .row_groups()
                .iter()
                .map(|g| g.num_rows())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            groups(&ours),
            groups(
                fixture("a_string_key/output/out_rg4.parquet")
                    .to_str()
                    .unwrap()
            )
        );
    }

    #[tokio::test]
    async fn byte_array_keys_export_as_sleepers_compaction_wrote_them() {
        let dir = tempfile::tempdir().unwrap();
        let table = table_of(
            &dir.path().join("t"),
            properties(bytes_key()),
            &[
                "b_bytes_key/input/in1.parquet",
                "b_bytes_key/input/in2.parquet",
                "b_bytes_key/input/in3.parquet",
            ],
        )
        .await;
        let region = Region {
            ranges: vec![Range::partition(
                KeyValue::Bytes(vec![0x01]),
                Some(KeyValue::Bytes(vec![0xc2, 0x80])),
            )],
        };
        let ours = export(&table, region, &dir.path().join("out"))
            .await
            .unwrap();
        assert_as_sleeper_wrote(&ours, "b_bytes_key/output/out.parquet");
    }

    #[tokio::test]
    async fn two_row_keys_maps_lists_and_nulls_export_as_sleepers_compaction_wrote_them() {
        let dir = tempfile::tempdir().unwrap();
        let table = table_of(
            &dir.path().join("t"),
            properties(nested()),
            &[
                "c_int_string_keys_nested/input/in1.parquet",
                "c_int_string_keys_nested/input/in2.parquet",
            ],
        )
        .await;
        let region = Region {
            ranges: vec![
                Range::partition(KeyValue::Int(0), Some(KeyValue::Int(9999))),
                string_range("", "o"),
            ],
        };
        let ours = export(&table, region, &dir.path().join("out"))
            .await
            .unwrap();
        assert_as_sleeper_wrote(&ours, "c_int_string_keys_nested/output/out_wide.parquet");
    }

    #[tokio::test]
    async fn aggregations_export_as_sleepers_compaction_wrote_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut aggregating = properties(aggregated());
        aggregating.aggregations = Some("sum(v1), min(v2), max(v3), map_sum(m)".into());
        let table = table_of(
            &dir.path().join("t"),
            aggregating.clone(),
            &[
                "d_aggregation/input/in1.parquet",
                "d_aggregation/input/in2.parquet",
                "d_aggregation/input/in3.parquet",
            ],
        )
        .await;
        let region = Region {
            ranges: vec![Range::partition(KeyValue::Long(1), Some(KeyValue::Long(9)))],
        };
        let ours = export(&table, region, &dir.path().join("out"))
            .await
            .unwrap();
        assert_as_sleeper_wrote(&ours, "d_aggregation/output/out.parquet");

        // Sleeper's aggregated output, as a file of a table, aggregates to itself.
        let table = table_of(
            &dir.path().join("again"),
            aggregating,
            &["d_aggregation/output/out.parquet"],
        )
        .await;
        let everything = Region::everything(&table.properties.schema);
        let again = export(&table, everything, &dir.path().join("out2"))
            .await
            .unwrap();
        assert_as_sleeper_wrote(&again, "d_aggregation/output/out.parquet");
    }

    /// A table made of Sleeper's compacted files (most files of a DataFusion-engine table) reads
    /// them, view types and all, and exports them exactly.
    #[tokio::test]
    async fn tables_of_compacted_files_export_exactly() {
        let dir = tempfile::tempdir().unwrap();
        for (name, schema, file) in [
            ("a", string_key(), "a_string_key/output/out_all.parquet"),
            ("b", bytes_key(), "b_bytes_key/output/out.parquet"),
            (
                "c",
                nested(),
                "c_int_string_keys_nested/output/out_wide.parquet",
            ),
        ] {
            let table = table_of(&dir.path().join(name), properties(schema), &[file]).await;
            let everything = Region::everything(&table.properties.schema);
            let ours = export(&table, everything, &dir.path().join(format!("out-{name}")))
                .await
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_as_sleeper_wrote(&ours, file);
        }
    }

    /// The inputs are sorted as the DataFusion engine sorts: declared as a Java-engine table,
    /// its first file is out of order, and the error says the other order fits.
    #[tokio::test]
    async fn a_table_declared_with_the_wrong_engine_fails_naming_the_right_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut java = properties(string_key());
        java.key_order = KeyOrder::Java;
        let table = table_of(
            &dir.path().join("t"),
            java,
            &["a_string_key/input/in1.parquet"],
        )
        .await;
        let everything = Region::everything(&table.properties.schema);
        let error = export(&table, everything, &dir.path().join("out"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                &error,
                Error::UnsortedInputFile { order: KeyOrder::Java, other_order_fits: Some(KeyOrder::DataFusion), key, .. }
                    if key.contains('\u{1f600}')
            ),
            "{error:?}"
        );
    }
}
