//! Sleeper's compaction semantics in exports: age-off filters and aggregations, checked against
//! a naive reference that filters and aggregates all rows of a leaf.

use std::sync::Arc;

use crate::common::*;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int32Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::physical_plan::{displayable, ExecutionPlan};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use sleeper_export::export::export_table;
use sleeper_export::leaf::{leaf_export_plan, run_leaf_query, ExportOptions};
use sleeper_export::model::PartitionTree;
use sleeper_export::model::{
    AggregationOp, CompactionRules, Field, FieldType, KeyOrder, KeyValue, PrimitiveType, Schema,
    TableProperties,
};
use sleeper_export::query::split_into_leaf_queries;
use sleeper_export::tablegen::{RowStyle, TableWriter};

/// A value as the reference sees it: maps as their entries, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cell {
    Null,
    Scalar(KeyValue),
    Map(Vec<(KeyValue, KeyValue)>),
}

type Row = (Vec<KeyValue>, Vec<Cell>);

fn cell(column: &ArrayRef, row: usize) -> Cell {
    if column.is_null(row) {
        return Cell::Null;
    }
    match column.as_map_opt() {
        Some(maps) => {
            let entries = maps.value(row);
            let pairs: Vec<(KeyValue, KeyValue)> = (0..entries.len())
                .map(|i| {
                    (
                        KeyValue::from_array(entries.column(0).as_ref(), i).unwrap(),
                        KeyValue::from_array(entries.column(1).as_ref(), i).unwrap(),
                    )
                })
                .collect();
            Cell::Map(pairs)
        }
        None => Cell::Scalar(KeyValue::from_array(column.as_ref(), row).unwrap()),
    }
}

fn rows_of(batch: &RecordBatch, schema: &Schema) -> Vec<Row> {
    let key_count = schema.key_fields().count();
    (0..batch.num_rows())
        .map(|row| {
            let keys = keys_of(batch, schema, row);
            let cells = batch.columns()[key_count..]
                .iter()
                .map(|c| cell(c, row))
                .collect();
            (keys, cells)
        })
        .collect()
}

fn combine(op: AggregationOp, a: &KeyValue, b: &KeyValue) -> KeyValue {
    use KeyValue::*;
    match (op.scalar(), a, b) {
        (AggregationOp::Sum, Int(x), Int(y)) => Int(x.wrapping_add(*y)),
        (AggregationOp::Sum, Long(x), Long(y)) => Long(x.wrapping_add(*y)),
        (AggregationOp::Min, Int(x), Int(y)) => Int(*x.min(y)),
        (AggregationOp::Min, Long(x), Long(y)) => Long(*x.min(y)),
        (AggregationOp::Max, Int(x), Int(y)) => Int(*x.max(y)),
        (AggregationOp::Max, Long(x), Long(y)) => Long(*x.max(y)),
        // Strings and bytes: DataFusion's byte order, whatever the table's key order.
        (AggregationOp::Min, String(x), String(y)) => String(x.min(y).clone()),
        (AggregationOp::Max, String(x), String(y)) => String(x.max(y).clone()),
        (AggregationOp::Min, Bytes(x), Bytes(y)) => Bytes(x.min(y).clone()),
        (AggregationOp::Max, Bytes(x), Bytes(y)) => Bytes(x.max(y).clone()),
        other => panic!("no aggregation for {other:?}"),
    }
}

fn combine_cells(op: AggregationOp, a: &Cell, b: &Cell) -> Cell {
    match (a, b) {
        (Cell::Scalar(a), Cell::Scalar(b)) => Cell::Scalar(combine(op, a, b)),
        // Entries in the order their keys were first seen, as Sleeper's compaction writes them.
        (Cell::Map(a), Cell::Map(b)) => {
            let mut merged = a.clone();
            for (key, value) in b {
                match merged.iter_mut().find(|(k, _)| k == key) {
                    Some((_, existing)) => *existing = combine(op, existing, value),
                    None => merged.push((key.clone(), value.clone())),
                }
            }
            Cell::Map(merged)
        }
        other => panic!("cannot aggregate {other:?}"),
    }
}

/// Region filter and stable sort (the raw reference), then age-off, then equal keys folded.
fn reference(
    properties: &TableProperties,
    query: &sleeper_export::query::BulkExportLeafPartitionQuery,
    rules: &CompactionRules,
    clock: i64,
) -> Vec<Row> {
    let schema = &properties.schema;
    let key_count = schema.key_fields().count();
    let rows = rows_of(&reference_export(properties, query), schema);
    let column_of = |name: &str| schema.all_fields().position(|f| f.name == name).unwrap();
    let kept = rows.into_iter().filter(|(keys, cells)| {
        rules.age_offs.iter().all(|age_off| {
            let index = column_of(&age_off.column);
            let value = if index < key_count {
                Cell::Scalar(keys[index].clone())
            } else {
                cells[index - key_count].clone()
            };
            matches!(value, Cell::Scalar(KeyValue::Long(t)) if t >= clock - age_off.max_age_millis)
        })
    });
    if rules.aggregations.is_empty() {
        return kept.collect();
    }
    let mut folded: Vec<Row> = Vec::new();
    for (keys, cells) in kept {
        match folded.last_mut() {
            Some((last_keys, last_cells)) if *last_keys == keys => {
                for ((last, cell), aggregation) in
                    last_cells.iter_mut().zip(&cells).zip(&rules.aggregations)
                {
                    *last = combine_cells(aggregation.op, last, cell);
                }
            }
            _ => folded.push((keys, cells)),
        }
    }
    folded
}

const CLOCK: i64 = 1_000_000_000_000;

/// Random keys, and values that can all be aggregated, with random operations and, half the
/// time, an age-off on `count` that keeps roughly the non-negative counts.
fn random_aggregating_properties(rng: &mut rand::rngs::StdRng) -> TableProperties {
    let (row_keys, sort_keys) = random_keys(rng);
    let values = vec![
        Field::primitive("count", PrimitiveType::Long),
        Field::primitive("small", PrimitiveType::Int),
        Field::primitive("label", PrimitiveType::String),
        Field::new(
            "counts",
            FieldType::Map {
                key: PrimitiveType::String,
                value: PrimitiveType::Long,
            },
        ),
        Field::new(
            "tally",
            FieldType::Map {
                key: PrimitiveType::Int,
                value: PrimitiveType::Int,
            },
        ),
    ];
    let schema = Schema::new(row_keys, sort_keys, values).unwrap();
    let scalar = ["sum", "min", "max"];
    let any_of =
        |rng: &mut rand::rngs::StdRng, ops: &[&'static str]| ops[rng.random_range(0..ops.len())];
    let aggregations = format!(
        "{}(count), {}(small), {}(label), map_{}(counts), map_{}(tally)",
        any_of(rng, &scalar),
        any_of(rng, &scalar),
        any_of(rng, &["min", "max"]),
        any_of(rng, &scalar),
        any_of(rng, &scalar),
    );
    let mut properties = TableProperties::new("agg-table", "aggregating", schema);
    properties.aggregations = Some(aggregations);
    properties.key_order = if rng.random_bool(0.5) {
        KeyOrder::Java
    } else {
        KeyOrder::DataFusion
    };
    if rng.random_bool(0.5) {
        properties.filters = Some(format!("ageOff(count, {CLOCK})"));
    }
    properties
}

async fn check_against_reference(seed: u64, batch_size: usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let properties = random_aggregating_properties(&mut rng);
    let dir = tempfile::tempdir().unwrap();
    let table = write_random_table(local(dir.path()), &mut rng, properties).await;
    let rules = table.properties.compaction_rules().unwrap();
    let schema = &table.properties.schema;
    let options = ExportOptions {
        batch_size,
        age_off_clock_millis: Some(CLOCK),
        ..ExportOptions::default()
    };
    let output = local(&dir.path().join("out"));
    for query in split_into_leaf_queries(&table, "e") {
        let result = run_leaf_query(&table, &query, &output, &options)
            .await
            .unwrap();
        let exported = rows_of(&read_parquet(&result.file), schema);
        let expected = reference(&table.properties, &query, &rules, CLOCK);
        assert_eq!(
            exported, expected,
            "leaf {} with {:?}",
            query.leaf_partition_id, table.properties.aggregations
        );
        assert_eq!(
            result.age_off_clock_millis,
            (!rules.age_offs.is_empty()).then_some(CLOCK as u64)
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn filtered_and_aggregated_exports_equal_the_reference(seed in any::<u64>(), small_batches in any::<bool>()) {
        // Batches of 3 rows put runs of equal keys across batch boundaries as well as files.
        runtime().block_on(check_against_reference(seed, if small_batches { 3 } else { 8192 }));
    }
}

fn long_schema(values: Vec<Field>) -> Schema {
    Schema::new(
        vec![Field::primitive("k", PrimitiveType::Long)],
        vec![],
        values,
    )
    .unwrap()
}

/// A one-leaf table whose files hold exactly the given batches, one file each.
async fn table_of(
    dir: &tempfile::TempDir,
    schema: &Schema,
    filters: Option<&str>,
    aggregations: Option<&str>,
    files: Vec<RecordBatch>,
) -> sleeper_export::table::SleeperTable {
    let mut properties = TableProperties::new("t", "t", schema.clone());
    properties.filters = filters.map(str::to_owned);
    properties.aggregations = aggregations.map(str::to_owned);
    let tree = PartitionTree::from_split_points("t", schema, &[]).unwrap();
    let mut writer = TableWriter::new(local(dir.path()), properties, tree, RowStyle::default(), 1);
    for batch in files {
        writer
            .write_file("root", vec![batch], &["root"])
            .await
            .unwrap();
    }
    writer.finish().await.unwrap()
}

fn batch(schema: &Schema, columns: Vec<ArrayRef>) -> RecordBatch {
    RecordBatch::try_new(schema.arrow_schema(), columns).unwrap()
}

async fn export_rows(
    table: &sleeper_export::table::SleeperTable,
    options: &ExportOptions,
) -> (RecordBatch, sleeper_export::plan::sink::WrittenLeaf) {
    let dir = tempfile::tempdir().unwrap();
    let summary = export_table(table, &local(dir.path()), options, |_| {})
        .await
        .unwrap();
    let leaf = summary.leaves[0].clone();
    (read_parquet(&leaf.file), leaf)
}

#[tokio::test]
async fn sums_wrap_on_overflow_in_the_columns_width() {
    let dir = tempfile::tempdir().unwrap();
    let schema = long_schema(vec![
        Field::primitive("big", PrimitiveType::Long),
        Field::primitive("small", PrimitiveType::Int),
    ]);
    let row = |big: i64, small: i32| {
        batch(
            &schema,
            vec![
                Arc::new(Int64Array::from(vec![1])),
                Arc::new(Int64Array::from(vec![big])),
                Arc::new(Int32Array::from(vec![small])),
            ],
        )
    };
    let table = table_of(
        &dir,
        &schema,
        None,
        Some("sum(big),sum(small)"),
        vec![row(i64::MAX, i32::MAX), row(1, 1)],
    )
    .await;
    let (exported, _) = export_rows(&table, &ExportOptions::default()).await;
    assert_eq!(exported.num_rows(), 1);
    assert_eq!(
        exported
            .column(1)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .value(0),
        i64::MIN
    );
    assert_eq!(
        exported
            .column(2)
            .as_primitive::<datafusion::arrow::datatypes::Int32Type>()
            .value(0),
        i32::MIN
    );
}

#[tokio::test]
async fn age_off_keeps_the_boundary_and_drops_nulls() {
    let dir = tempfile::tempdir().unwrap();
    let schema = long_schema(vec![Field::primitive("ts", PrimitiveType::Long).nullable()]);
    let rows = batch(
        &schema,
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            Arc::new(Int64Array::from(vec![
                Some(8_999),
                Some(9_000),
                Some(9_001),
                None,
            ])),
        ],
    );
    let table = table_of(&dir, &schema, Some("ageOff(ts,1000)"), None, vec![rows]).await;
    let options = ExportOptions {
        age_off_clock_millis: Some(10_000),
        ..ExportOptions::default()
    };
    let (exported, leaf) = export_rows(&table, &options).await;
    let keys: Vec<i64> = exported
        .column(0)
        .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
        .values()
        .to_vec();
    assert_eq!(
        keys,
        [2, 3],
        "now - ts == maxAge is kept (DataFusion's rule); older and null are dropped"
    );
    assert_eq!(leaf.age_off_clock_millis, Some(10_000));

    let (raw, leaf) = export_rows(
        &table,
        &ExportOptions {
            raw: true,
            ..options
        },
    )
    .await;
    assert_eq!(raw.num_rows(), 4);
    assert_eq!(leaf.age_off_clock_millis, None);
}

#[tokio::test]
async fn the_age_off_clock_is_read_once_per_leaf_when_not_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let schema = long_schema(vec![Field::primitive("ts", PrimitiveType::Long)]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let rows = batch(
        &schema,
        vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(Int64Array::from(vec![now - 3_600_000, now])),
        ],
    );
    let table = table_of(&dir, &schema, Some("ageOff(ts, 60000)"), None, vec![rows]).await;
    let (exported, leaf) = export_rows(&table, &ExportOptions::default()).await;
    assert_eq!(exported.num_rows(), 1);
    let clock = leaf.age_off_clock_millis.expect("the clock is reported") as i64;
    assert!(
        clock >= now && clock - now < 60_000,
        "clock {clock}, now {now}"
    );
}

fn string_long_maps(entries: Vec<Vec<(&str, i64)>>) -> ArrayRef {
    let schema_type = FieldType::Map {
        key: PrimitiveType::String,
        value: PrimitiveType::Long,
    }
    .arrow_type();
    let datafusion::arrow::datatypes::DataType::Map(entry_field, _) = schema_type else {
        unreachable!()
    };
    let datafusion::arrow::datatypes::DataType::Struct(fields) = entry_field.data_type().clone()
    else {
        unreachable!()
    };
    let lengths: Vec<usize> = entries.iter().map(Vec::len).collect();
    let pairs: Vec<(&str, i64)> = entries.iter().flatten().copied().collect();
    let keys = StringArray::from_iter_values(pairs.iter().map(|(k, _)| *k));
    let values = Int64Array::from_iter_values(pairs.iter().map(|(_, v)| *v));
    let structs = datafusion::arrow::array::StructArray::new(
        fields,
        vec![Arc::new(keys), Arc::new(values)],
        None,
    );
    Arc::new(datafusion::arrow::array::MapArray::new(
        entry_field,
        datafusion::arrow::buffer::OffsetBuffer::from_lengths(lengths),
        structs,
        None,
        false,
    ))
}

#[tokio::test]
async fn map_aggregations_combine_per_map_key() {
    let dir = tempfile::tempdir().unwrap();
    let map = |name: &str| {
        Field::new(
            name,
            FieldType::Map {
                key: PrimitiveType::String,
                value: PrimitiveType::Long,
            },
        )
    };
    let schema = long_schema(vec![map("sums"), map("mins"), map("maxes")]);
    let row = |entries: Vec<(&str, i64)>| {
        batch(
            &schema,
            vec![
                Arc::new(Int64Array::from(vec![7])),
                string_long_maps(vec![entries.clone()]),
                string_long_maps(vec![entries.clone()]),
                string_long_maps(vec![entries]),
            ],
        )
    };
    let table = table_of(
        &dir,
        &schema,
        None,
        Some("map_sum(sums), map_min(mins), map_max(maxes)"),
        vec![
            row(vec![("x", 1), ("y", 2)]),
            row(vec![("y", 3), ("z", -4)]),
        ],
    )
    .await;
    let (exported, _) = export_rows(&table, &ExportOptions::default()).await;
    let cells: Vec<Cell> = (1..4).map(|c| cell(exported.column(c), 0)).collect();
    let entries = |pairs: &[(&str, i64)]| {
        Cell::Map(
            pairs
                .iter()
                .map(|(k, v)| (KeyValue::String((*k).into()), KeyValue::Long(*v)))
                .collect(),
        )
    };
    assert_eq!(exported.num_rows(), 1);
    assert_eq!(cells[0], entries(&[("x", 1), ("y", 5), ("z", -4)]));
    assert_eq!(cells[1], entries(&[("x", 1), ("y", 2), ("z", -4)]));
    assert_eq!(cells[2], entries(&[("x", 1), ("y", 3), ("z", -4)]));
}

#[tokio::test]
async fn runs_of_equal_keys_collapse_across_batches_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let schema = long_schema(vec![Field::primitive("count", PrimitiveType::Long)]);
    let file = |keys: Vec<i64>| {
        let counts = vec![1; keys.len()];
        batch(
            &schema,
            vec![
                Arc::new(Int64Array::from(keys)),
                Arc::new(Int64Array::from(counts)),
            ],
        )
    };
    let files = vec![
        file(vec![1, 2, 2, 2, 2]),
        file(vec![2, 2, 2, 2, 3]),
        file(vec![2, 2, 2, 3, 3]),
    ];
    let table = table_of(&dir, &schema, None, Some("sum(count)"), files).await;
    for batch_size in [1, 2, 3, 8192] {
        let (exported, leaf) = export_rows(
            &table,
            &ExportOptions {
                batch_size,
                ..ExportOptions::default()
            },
        )
        .await;
        let keys = exported
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .values()
            .to_vec();
        let counts = exported
            .column(1)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .values()
            .to_vec();
        assert_eq!(
            (keys, counts),
            (vec![1, 2, 3], vec![1, 11, 3]),
            "batch size {batch_size}"
        );
        assert_eq!((leaf.rows_read, leaf.rows_written), (15, 3));
    }
    let (raw, _) = export_rows(
        &table,
        &ExportOptions {
            raw: true,
            ..ExportOptions::default()
        },
    )
    .await;
    assert_eq!(raw.num_rows(), 15);
}

#[tokio::test]
async fn a_table_with_invalid_rules_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let schema = long_schema(vec![Field::primitive("count", PrimitiveType::Long)]);
    let mut properties = TableProperties::new("t", "t", schema.clone());
    properties.aggregations = Some("sum(count), max(k)".into());
    let tree = PartitionTree::from_split_points("t", &schema, &[]).unwrap();
    let error = match TableWriter::new(local(dir.path()), properties, tree, RowStyle::default(), 1)
        .finish()
        .await
    {
        Ok(_) => panic!("the table opened"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("sleeper.table.aggregations")
            && error.contains("max(k)")
            && error.contains("key column"),
        "{error}"
    );
}

/// The aggregation is a node of its own between the merge and what reads it: `EXPLAIN` of a
/// leaf's export shows export → (SQL) → aggregate → merge, and an SQL projection of fewer
/// columns than the table's still aggregates over whole runs of equal keys.
#[tokio::test]
async fn the_aggregation_is_its_own_node_above_the_merge_under_the_sql() {
    let dir = tempfile::tempdir().unwrap();
    let schema = long_schema(vec![
        Field::primitive("a", PrimitiveType::Long),
        Field::primitive("b", PrimitiveType::Long),
    ]);
    let rows = |keys: Vec<i64>, a: Vec<i64>, b: Vec<i64>| {
        batch(
            &schema,
            vec![
                Arc::new(Int64Array::from(keys)),
                Arc::new(Int64Array::from(a)),
                Arc::new(Int64Array::from(b)),
            ],
        )
    };
    let table = table_of(
        &dir,
        &schema,
        None,
        Some("sum(a),max(b)"),
        vec![
            rows(vec![1, 2, 2], vec![1, 10, 20], vec![5, 6, 7]),
            rows(vec![2, 3], vec![100, 1000], vec![1, 9]),
        ],
    )
    .await;
    let plan_of = |sql: Option<&str>| {
        let mut query = split_into_leaf_queries(&table, "e").remove(0);
        query.sql_query = sql.map(str::to_owned);
        let out = local(&dir.path().join("out"));
        let table = table.clone();
        async move {
            let plan = leaf_export_plan(&table, &query, &out, &ExportOptions::default())
                .await
                .unwrap();
            let shown = displayable(plan.as_ref() as &dyn ExecutionPlan)
                .indent(false)
                .to_string();
            shown
                .lines()
                .map(|line| line.trim().split(':').next().unwrap().to_owned())
                // DataFusion's own, above a leaf node that does not yield by itself.
                .filter(|node| node != "CooperativeExec")
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        plan_of(None).await,
        ["LeafExportExec", "LeafAggregateExec", "LeafMergeExec"]
    );
    let with_sql = plan_of(Some("SELECT k, a FROM query_results WHERE a > 15")).await;
    assert_eq!(with_sql.first().map(String::as_str), Some("LeafExportExec"));
    assert_eq!(
        with_sql[with_sql.len() - 2..],
        ["LeafAggregateExec", "LeafMergeExec"],
        "{with_sql:?}"
    );
    let mut query = split_into_leaf_queries(&table, "e").remove(0);
    query.sql_query = Some("SELECT k, a FROM query_results WHERE a > 15".into());
    let written = run_leaf_query(
        &table,
        &query,
        &local(&dir.path().join("sql")),
        &ExportOptions::default(),
    )
    .await
    .unwrap();
    let exported = read_parquet(&written.file);
    let column = |i: usize| {
        exported
            .column(i)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .values()
            .to_vec()
    };
    // Key 2's run spans both files: 10 + 20 + 100; key 1 (a = 1) is filtered out after.
    assert_eq!((column(0), column(1)), (vec![2, 3], vec![130, 1000]));
}
