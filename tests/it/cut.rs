//! Big leaves cut into key ranges (`--max-rows-per-file`): the pieces' files, in the manifest's
//! order, are exactly the leaf's export; their ranges are contiguous and disjoint; their sizes
//! are near the target on unskewed keys.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use sleeper_export::export::export_table;
use sleeper_export::leaf::ExportOptions;
use sleeper_export::model::{KeyValue, PartitionTree, Region, TableProperties};
use sleeper_export::query::split_into_leaf_queries;
use sleeper_export::queue::manifest::ExportRecords;
use sleeper_export::table::SleeperTable;
use sleeper_export::tablegen::{RowStyle, TableWriter};

use crate::common::*;

/// One leaf (the root) of `files` files of `rows_per_file` uniformly spread long keys, in row
/// groups of 500 rows.
async fn one_big_leaf(dir: &std::path::Path, files: usize, rows_per_file: usize) -> SleeperTable {
    let schema = id_name_schema();
    let tree = PartitionTree::from_split_points("big", &schema, &[]).unwrap();
    let mut properties = TableProperties::new("big", "big", schema);
    properties.parquet.row_group_rows = 500;
    let style = RowStyle {
        key_span: 1_000_000,
        ..RowStyle::default()
    };
    let mut writer = TableWriter::new(local(dir), properties, tree, style, 9);
    for _ in 0..files {
        writer
            .write_random_file("root", rows_per_file, &["root"])
            .await
            .unwrap();
    }
    writer.finish().await.unwrap()
}

/// The export's pieces in the manifest's order: each file's rows and its region.
async fn pieces(
    table: &SleeperTable,
    output: &sleeper_export::storage::Location,
    export_id: &str,
) -> Vec<(RecordBatch, Option<Region>)> {
    let manifest = ExportRecords::new(output, table.id(), export_id)
        .manifest()
        .await
        .unwrap()
        .unwrap();
    manifest
        .sub_exports
        .iter()
        .map(|sub_export| {
            let region = sub_export
                .region
                .as_ref()
                .map(|json| Region::from_json(json, &table.properties.schema).unwrap());
            (read_parquet(&sub_export.file), region)
        })
        .collect()
}

#[tokio::test]
async fn a_big_leaf_is_cut_into_contiguous_ranges_of_about_the_rows_asked_whose_files_are_its_export(
) {
    let dir = tempfile::tempdir().unwrap();
    let table = one_big_leaf(&dir.path().join("table"), 4, 10_000).await;
    let output = local(&dir.path().join("out"));
    let max_rows = 8_000;
    let options = ExportOptions {
        export_id: Some("cut".into()),
        max_rows_per_file: Some(max_rows),
        ..ExportOptions::default()
    };
    let summary = export_table(&table, &output, &options, |_| {})
        .await
        .unwrap();
    let pieces = pieces(&table, &output, "cut").await;
    assert_eq!(pieces.len(), 5, "40,000 rows in pieces of about 8,000");
    assert_eq!(summary.leaves.len(), 5);

    let leaf = split_into_leaf_queries(&table, "whole").remove(0);
    let expected = reference_export(&table.properties, &leaf);
    let batches: Vec<RecordBatch> = pieces.iter().map(|(rows, _)| rows.clone()).collect();
    let exported = concat_batches(&expected.schema(), &batches).unwrap();
    assert_same_rows(&exported, &expected, "the pieces in order are the leaf");

    let regions: Vec<&Region> = pieces.iter().map(|(_, r)| r.as_ref().unwrap()).collect();
    let whole = &leaf.partition_region.ranges[0];
    assert_eq!(
        (
            &regions[0].ranges[0].min,
            regions[0].ranges[0].min_inclusive
        ),
        (&whole.min, true)
    );
    assert_eq!(regions.last().unwrap().ranges[0].max, whole.max);
    for pair in regions.windows(2) {
        let (before, after) = (&pair[0].ranges[0], &pair[1].ranges[0]);
        assert_eq!(before.max.as_ref(), Some(&after.min), "contiguous");
        assert!(!before.max_inclusive && after.min_inclusive, "disjoint");
    }
    for (rows, region) in &pieces {
        let n = rows.num_rows() as u64;
        assert!(
            (max_rows * 6 / 10..=max_rows * 14 / 10).contains(&n),
            "a piece of {n} rows ({})",
            region.as_ref().unwrap()
        );
    }

    // Run again with the same export id: the same pieces, nothing to do.
    let again = export_table(&table, &output, &options, |_| {})
        .await
        .unwrap();
    assert_eq!(again.leaves, summary.leaves);
}

#[tokio::test]
async fn a_leaf_of_one_key_stays_one_file_and_small_leaves_are_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    let schema = id_name_schema();
    let tree = PartitionTree::from_split_points("skew", &schema, &[KeyValue::Long(0)]).unwrap();
    let leaves: Vec<String> = tree.leaves().iter().map(|l| l.id.clone()).collect();
    let mut properties = TableProperties::new("skew", "skew", schema);
    properties.parquet.row_group_rows = 100;
    let mut writer = TableWriter::new(
        local(&dir.path().join("table")),
        properties,
        tree,
        RowStyle::default(),
        3,
    );
    // The right leaf: 3,000 rows of one key. The left: 50 rows.
    let one_key = vec![vec![KeyValue::Long(7)]; 3_000];
    let batch = writer.generator().batch(&one_key).unwrap();
    writer
        .write_file(&leaves[1], vec![batch], &[&leaves[1]])
        .await
        .unwrap();
    writer
        .write_random_file(&leaves[0], 50, &[&leaves[0]])
        .await
        .unwrap();
    let table = writer.finish().await.unwrap();
    let output = local(&dir.path().join("out"));
    let options = ExportOptions {
        export_id: Some("skew".into()),
        max_rows_per_file: Some(1_000),
        ..ExportOptions::default()
    };
    let summary = export_table(&table, &output, &options, |_| {})
        .await
        .unwrap();
    let rows: Vec<u64> = summary.leaves.iter().map(|l| l.rows_written).collect();
    assert_eq!(rows, [50, 3_000]);
    assert!(pieces(&table, &output, "skew")
        .await
        .iter()
        .all(|(_, region)| region.is_none()));
}

#[tokio::test]
async fn each_piece_of_a_cut_leaf_runs_the_exports_sql() {
    let dir = tempfile::tempdir().unwrap();
    let table = one_big_leaf(&dir.path().join("table"), 2, 5_000).await;
    let output = local(&dir.path().join("out"));
    let options = ExportOptions {
        export_id: Some("counted".into()),
        max_rows_per_file: Some(2_500),
        sql: Some("SELECT count(*) AS n, min(id) AS first FROM query_results".into()),
        ..ExportOptions::default()
    };
    export_table(&table, &output, &options, |_| {})
        .await
        .unwrap();
    let pieces = pieces(&table, &output, "counted").await;
    assert!(pieces.len() >= 3, "{} pieces", pieces.len());
    let leaf = split_into_leaf_queries(&table, "whole").remove(0);
    let expected = reference_export(&table.properties, &leaf);
    let mut counted = 0;
    for (rows, region) in &pieces {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::Int64Type;
        assert_eq!(rows.num_rows(), 1, "an aggregate per piece");
        let n = rows.column(0).as_primitive::<Int64Type>().value(0);
        let first = rows.column(1).as_primitive::<Int64Type>().value(0);
        let region = region.as_ref().unwrap();
        assert!(
            region.contains(&[KeyValue::Long(first)], table.properties.key_order),
            "{first} in {region}"
        );
        counted += n as usize;
    }
    assert_eq!(counted, expected.num_rows());
}
