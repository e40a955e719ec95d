//! Sleeper's SQL filter (`sqlQuery`): each leaf's export is what the SQL returns over the
//! leaf's rows (`query_results`), checked against the reference export filtered and projected
//! here by hand; SQL that cannot run is refused with nothing written.

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::physical_plan::{displayable, ExecutionPlan};
use sleeper_export::export::export_table;
use sleeper_export::leaf::{leaf_export_plan, run_leaf_query, ExportOptions};
use sleeper_export::model::KeyOrder;
use sleeper_export::query::{split_into_leaf_queries, BulkExportLeafPartitionQuery};
use sleeper_export::table::SleeperTable;
use sleeper_export::Error;

use crate::common::*;

fn with_sql(mut query: BulkExportLeafPartitionQuery, sql: &str) -> BulkExportLeafPartitionQuery {
    query.sql_query = Some(sql.to_owned());
    query
}

/// (id, name) of each row of a batch of the id/name schema, in order.
fn ids_and_names(batch: &RecordBatch, id: &str, name: &str) -> Vec<(i64, Option<String>)> {
    let ids = batch
        .column_by_name(id)
        .unwrap()
        .as_primitive::<Int64Type>();
    let names = batch.column_by_name(name).unwrap();
    let names =
        datafusion::arrow::compute::cast(names, &datafusion::arrow::datatypes::DataType::Utf8)
            .unwrap();
    let names = names.as_string::<i32>();
    (0..batch.num_rows())
        .map(|row| {
            (
                ids.value(row),
                names.is_valid(row).then(|| names.value(row).to_owned()),
            )
        })
        .collect()
}

fn column_names(batch: &RecordBatch) -> Vec<&str> {
    batch
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect()
}

#[tokio::test]
async fn a_filter_and_projection_export_each_leafs_matching_rows_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let table = long_key_table(local(&dir.path().join("table")), 97, 3_000).await;
    let out = tempfile::tempdir().unwrap();
    let output = local(out.path());
    let sql = "SELECT id, upper(name) AS shout FROM query_results \
               WHERE id >= -700 AND id % 3 = 0 AND name IS NOT NULL";
    let mut exported_rows = 0;
    for query in split_into_leaf_queries(&table, "e") {
        let expected: Vec<(i64, Option<String>)> =
            ids_and_names(&reference_export(&table.properties, &query), "id", "name")
                .into_iter()
                .filter(|(id, name)| *id >= -700 && id % 3 == 0 && name.is_some())
                .map(|(id, name)| (id, name.map(|n| n.to_uppercase())))
                .collect();
        let query = with_sql(query, sql);
        let written = run_leaf_query(&table, &query, &output, &ExportOptions::default())
            .await
            .unwrap();
        let batch = read_parquet(&written.file);
        assert_eq!(
            column_names(&batch),
            ["id", "shout"],
            "the file's schema is the SQL's"
        );
        assert_eq!(ids_and_names(&batch, "id", "shout"), expected);
        assert_eq!(written.rows_written, expected.len() as u64);
        exported_rows += expected.len();
    }
    assert!(exported_rows > 100, "the filter kept {exported_rows} rows");
}

/// The physical plans: filters, projections and LIMIT run over the merge in its order, with no
/// sort; ORDER BY of the keys needs none either; ORDER BY of a value sorts.
#[tokio::test]
async fn sql_that_filters_projects_and_limits_keeps_the_merges_order_without_a_sort() {
    let dir = tempfile::tempdir().unwrap();
    let table = long_key_table(local(&dir.path().join("table")), 100, 500).await;
    let output = local(&dir.path().join("out"));
    let query = split_into_leaf_queries(&table, "e").remove(0);
    let shown = |sql: &'static str| {
        let query = with_sql(query.clone(), sql);
        let table = table.clone();
        let output = output.clone();
        async move {
            let plan = leaf_export_plan(&table, &query, &output, &ExportOptions::default())
                .await
                .unwrap();
            let shown = displayable(plan.as_ref() as &dyn ExecutionPlan)
                .indent(true)
                .to_string();
            shown
        }
    };
    for sql in [
        "SELECT name FROM query_results WHERE name LIKE 'a%' LIMIT 10",
        "SELECT id, name FROM query_results ORDER BY id",
        "SELECT * FROM query_results WHERE id > -600 ORDER BY id LIMIT 3",
    ] {
        let plan = shown(sql).await;
        assert!(!plan.contains("SortExec"), "{sql}:\n{plan}");
        assert!(plan.contains("LeafMergeExec"), "{sql}:\n{plan}");
    }
    let plan = shown("SELECT * FROM query_results ORDER BY name").await;
    assert!(plan.contains("SortExec"), "{plan}");
}

#[tokio::test]
async fn sleepers_fixture_sql_exports_each_leafs_first_row() {
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(shared(
            "sleeper-fixtures/bulk-export/shouldSerDeBulkExportLeafPartitionQueryWithSqlQuery.approved.json",
        ))
        .unwrap(),
    )
    .unwrap();
    let sql = fixture["sqlQuery"].as_str().unwrap();
    assert_eq!(sql, "SELECT * FROM query_results LIMIT 1;");
    let dir = tempfile::tempdir().unwrap();
    let table = long_key_table(local(&dir.path().join("table")), 50, 2_000).await;
    let output = local(&dir.path().join("out"));
    let options = ExportOptions {
        sql: Some(sql.to_owned()),
        ..ExportOptions::default()
    };
    let summary = export_table(&table, &output, &options, |_| {})
        .await
        .unwrap();
    assert_eq!(summary.leaves.len(), 4);
    for (leaf, query) in summary
        .leaves
        .iter()
        .zip(split_into_leaf_queries(&table, "e"))
    {
        let reference = reference_export(&table.properties, &query);
        let exported = read_parquet(&leaf.file);
        assert_same_rows(&exported, &reference.slice(0, 1), &query.leaf_partition_id);
        assert!(leaf.rows_read >= 1, "{leaf:?}");
    }
}

/// The file of a leaf without files (written by the planner) has the SQL's schema too, and an
/// aggregate aggregates each leaf alone.
#[tokio::test]
async fn an_aggregate_runs_per_leaf_and_empty_leaves_get_the_sqls_schema() {
    let dir = tempfile::tempdir().unwrap();
    let table = table_with_empty_leaves(local(&dir.path().join("table")), 3).await;
    let output = local(&dir.path().join("out"));
    let options = ExportOptions {
        sql: Some("SELECT count(*) AS n, max(id) AS top FROM query_results".into()),
        ..ExportOptions::default()
    };
    let summary = export_table(&table, &output, &options, |_| {})
        .await
        .unwrap();
    let queries = split_into_leaf_queries(&table, "e");
    assert_eq!(summary.leaves.len(), 3);
    for (leaf, query) in summary.leaves.iter().zip(&queries) {
        let batch = read_parquet(&leaf.file);
        assert_eq!(
            column_names(&batch),
            ["n", "top"],
            "{}",
            query.leaf_partition_id
        );
        let reference = reference_export(&table.properties, query);
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(
            batch.column(0).as_primitive::<Int64Type>().value(0),
            reference.num_rows() as i64,
            "{}",
            query.leaf_partition_id
        );
    }
    assert_eq!(
        summary.leaves.iter().filter(|l| l.rows_read == 0).count(),
        2,
        "two leaves have no files: {:?}",
        summary.leaves
    );
}

/// A Java-engine table keeps its own order (UTF-16 strings, signed bytes), which DataFusion
/// does not know: a filter over it exports the merge's rows in that order, unsorted by SQL.
#[tokio::test]
async fn sql_over_a_java_engine_table_keeps_the_tables_order() {
    let mut checked = 0;
    for seed in 0..40 {
        let random = random_table(seed).await;
        let table = &random.table;
        if table.properties.key_order != KeyOrder::Java || table.files.is_empty() {
            continue;
        }
        let key = &table.properties.schema.row_key_fields[0].name;
        let output = local(&random.dir.path().join("out"));
        for query in split_into_leaf_queries(table, "e") {
            let reference = reference_export(&table.properties, &query);
            let expected = reference.project(&[0]).unwrap();
            let query = with_sql(query, &format!("SELECT \"{key}\" FROM query_results"));
            let written = run_leaf_query(table, &query, &output, &ExportOptions::default())
                .await
                .unwrap();
            assert_same_rows(&read_parquet(&written.file), &expected, key);
        }
        checked += 1;
        if checked == 3 {
            return;
        }
    }
    panic!("only {checked} of the random tables were of the Java engine");
}

async fn refused(table: &SleeperTable, sql: &str, options: &ExportOptions) -> (Error, usize) {
    let out = tempfile::tempdir().unwrap();
    let query = with_sql(split_into_leaf_queries(table, "e").remove(0), sql);
    let error = run_leaf_query(table, &query, &local(out.path()), options)
        .await
        .unwrap_err();
    (error, parquet_files_under(out.path()).len())
}

#[tokio::test]
async fn sql_that_cannot_run_or_would_take_the_runner_down_is_refused_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let table = long_key_table(local(&dir.path().join("table")), 100, 2_000).await;
    let options = ExportOptions::default();
    let mut wrong = Vec::new();
    for (sql, expected) in [
        ("SELEC * FROM query_results", "ParserError"),
        ("SELECT 1; SELECT 2", "single SQL statement"),
        ("SELECT * FROM other_table", "other_table"),
        ("SELECT nope FROM query_results", "nope"),
        (
            "SELECT * FROM 's3://bucket/data.parquet'",
            "s3://bucket/data.parquet",
        ),
        (
            "SELECT * FROM information_schema.tables",
            "information_schema",
        ),
        ("SELECT * FROM range(1000000000000)", "range"),
        (
            "SELECT range(1000000000000) AS r FROM query_results",
            "range is not available",
        ),
        ("DROP TABLE query_results", "only a query"),
        (
            "CREATE TABLE t AS SELECT * FROM query_results",
            "only a query",
        ),
        ("INSERT INTO query_results VALUES (1, 'a')", "only a query"),
        ("COPY query_results TO '/tmp/leak.parquet'", "only a query"),
        ("SET datafusion.execution.batch_size = 1", "only a query"),
        ("EXPLAIN SELECT * FROM query_results", "only a query"),
        (
            "SELECT a.id FROM query_results a, query_results b, query_results c",
            "no equality of columns",
        ),
        (
            "SELECT a.id FROM query_results a JOIN query_results b ON a.id < b.id",
            "no equality of columns",
        ),
        (
            "SELECT repeat('x', 1000000000) AS big FROM query_results",
            "repeat would make",
        ),
        (
            "SELECT lpad(name, 100000000) AS big FROM query_results",
            "lpad would make",
        ),
    ] {
        let (error, files) = refused(&table, sql, &options).await;
        let message = error.to_string();
        let as_expected = matches!(error, Error::Sql(_))
            && error.is_bad_message()
            && message.starts_with("User SQL query failed: ")
            && message.contains(expected);
        if !as_expected || files != 0 {
            wrong.push(format!("{sql}: {message} ({files} files)"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // Bounded, not refused: values a few bytes long each.
    let written = run_leaf_query(
        &table,
        &with_sql(
            split_into_leaf_queries(&table, "e").remove(0),
            "SELECT id, repeat(name, 3) AS thrice, lpad(name, 50, '*') AS padded FROM query_results",
        ),
        &local(&dir.path().join("bounded")),
        &options,
    )
    .await
    .unwrap();
    assert!(written.rows_written > 0);
}

#[tokio::test]
async fn a_join_that_needs_more_memory_than_the_leafs_limit_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let table = long_key_table(local(&dir.path().join("table")), 100, 4_000).await;
    let options = ExportOptions {
        memory_limit: 64 * 1024,
        ..ExportOptions::default()
    };
    let (error, files) = refused(
        &table,
        "SELECT a.id, b.name FROM query_results a JOIN query_results b ON a.name = b.name",
        &options,
    )
    .await;
    assert!(
        matches!(
            &error,
            Error::MemoryLimit {
                limit_bytes: 65536,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("--memory-limit"), "{error}");
    assert_eq!(files, 0);
    // The same join within the default limit.
    let out = tempfile::tempdir().unwrap();
    let query = with_sql(
        split_into_leaf_queries(&table, "e").remove(0),
        "SELECT a.id, b.name FROM query_results a JOIN query_results b ON a.id = b.id",
    );
    run_leaf_query(
        &table,
        &query,
        &local(out.path()),
        &ExportOptions::default(),
    )
    .await
    .unwrap();
}

/// The sorting columns a file declares in its Parquet metadata: the key while the SQL keeps
/// the merge's order, none once it orders the rows by something else.
#[tokio::test]
async fn a_file_declares_the_key_order_only_while_the_sql_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let table = long_key_table(local(&dir.path().join("table")), 100, 1_000).await;
    let query = split_into_leaf_queries(&table, "e").remove(0);
    let declared = |sql: &'static str| {
        let query = with_sql(query.clone(), sql);
        let table = table.clone();
        let output = local(&dir.path().join("out"));
        async move {
            let written = run_leaf_query(&table, &query, &output, &ExportOptions::default())
                .await
                .unwrap();
            let path = written.file.strip_prefix("file://").unwrap().to_owned();
            let file = std::fs::File::open(path).unwrap();
            let reader =
                datafusion::parquet::file::reader::SerializedFileReader::new(file).unwrap();
            use datafusion::parquet::file::reader::FileReader;
            let metadata = reader.metadata();
            (0..metadata.num_row_groups())
                .map(|g| {
                    metadata
                        .row_group(g)
                        .sorting_columns()
                        .map_or(0, |columns| columns.len())
                })
                .collect::<Vec<_>>()
        }
    };
    let kept = declared("SELECT id, name FROM query_results WHERE id % 2 = 0").await;
    assert!(!kept.is_empty() && kept.iter().all(|&n| n == 1), "{kept:?}");
    let reordered = declared("SELECT id, name FROM query_results ORDER BY name").await;
    assert!(reordered.iter().all(|&n| n == 0), "{reordered:?}");
}
