//! Sleeper's own test JSON, used as it is: our readers and writers must agree with it.

mod common;

use common::shared;
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
    for name in [
        "shouldSerDeBulkExportLeafPartitionQuery",
        "shouldSerDeBulkExportLeafPartitionQueryUsingSchema",
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
