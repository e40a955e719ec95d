//! Tables and exports on S3, against the real local S3 server that `scripts/test.sh` starts.

use crate::common::*;
use object_store::ObjectStoreExt;
use sleeper_export::export::export_table;
use sleeper_export::leaf::{run_leaf_query, ExportOptions};
use sleeper_export::storage::Stores;
use sleeper_export::Error;

async fn read_s3_parquet(stores: &Stores, url: &str) -> datafusion::arrow::array::RecordBatch {
    let location = stores.resolve(url).unwrap();
    let bytes = location
        .store
        .get(&location.prefix)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    parquet_bytes_to_batch(bytes)
}

async fn objects_under(stores: &Stores, url: &str) -> Vec<String> {
    let location = stores.resolve(url).unwrap();
    let listed = location.list(&location.prefix).await.unwrap();
    listed
        .into_iter()
        .map(|meta| meta.location.to_string())
        .collect()
}

#[tokio::test]
async fn a_table_on_s3_exports_to_s3_as_the_same_table_does_locally() {
    let bucket = create_bucket("export");
    let stores = Stores::default();
    let on_s3 = random_table_at(
        stores.resolve(&format!("s3://{bucket}/tables/t1")).unwrap(),
        77,
    )
    .await;
    let local = random_table(77).await;
    assert!(!on_s3.files.is_empty());
    assert!(on_s3.files.iter().all(|f| f
        .filename
        .starts_with(&format!("s3://{bucket}/tables/t1/data/"))));

    let options = ExportOptions {
        export_id: Some("e1".into()),
        ..ExportOptions::default()
    };
    let s3_output = stores.resolve(&format!("s3://{bucket}/exports")).unwrap();
    let s3_summary = export_table(&on_s3, &s3_output, &options, |_| {})
        .await
        .unwrap();
    let local_output_dir = tempfile::tempdir().unwrap();
    let local_output = stores
        .resolve(local_output_dir.path().to_str().unwrap())
        .unwrap();
    let local_summary = export_table(&local.table, &local_output, &options, |_| {})
        .await
        .unwrap();

    assert_eq!(s3_summary.leaves.len(), local_summary.leaves.len());
    let mut expected_keys = Vec::new();
    for (s3_leaf, local_leaf) in s3_summary.leaves.iter().zip(&local_summary.leaves) {
        assert_eq!(s3_leaf.leaf_partition_id, local_leaf.leaf_partition_id);
        assert_eq!(
            s3_leaf.file,
            format!(
                "s3://{bucket}/exports/table-1/e1/{}.parquet",
                s3_leaf.sub_export_id
            )
        );
        expected_keys.push(format!(
            "exports/table-1/e1/{}.parquet",
            s3_leaf.sub_export_id
        ));
        let from_s3 = read_s3_parquet(&stores, &s3_leaf.file).await;
        assert_same_rows(
            &from_s3,
            &read_parquet(&local_leaf.file),
            &s3_leaf.leaf_partition_id,
        );
    }
    let mut listed: Vec<String> = objects_under(&stores, &format!("s3://{bucket}/exports"))
        .await
        .into_iter()
        .filter(|key| key.ends_with(".parquet"))
        .collect();
    listed.sort();
    expected_keys.sort();
    assert_eq!(listed, expected_keys, "exactly one Parquet object per leaf");
}

#[tokio::test]
async fn a_missing_input_on_s3_fails_the_export_and_leaves_no_object() {
    let bucket = create_bucket("missing");
    let stores = Stores::default();
    let location = stores
        .resolve(&format!("s3://{bucket}/tables/demo"))
        .unwrap();
    let table = sleeper_export::tablegen::write_demo_table(location, 4, 200, 1)
        .await
        .unwrap();
    let victim = table
        .files
        .last()
        .expect("the demo table has files")
        .filename
        .clone();
    let location = stores.resolve(&victim).unwrap();
    location.store.delete(&location.prefix).await.unwrap();

    let query = sleeper_export::query::split_into_leaf_queries(&table, "e2")
        .into_iter()
        .find(|q| q.files.contains(&victim))
        .expect("a leaf reads the deleted file");
    let output = stores.resolve(&format!("s3://{bucket}/exports")).unwrap();
    let error = run_leaf_query(
        &table,
        &query,
        &output,
        &ExportOptions {
            batch_size: 16,
            ..ExportOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(error, Error::MissingInputFile { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains(&victim) && message.contains(&query.leaf_partition_id),
        "{message}"
    );
    let parquet: Vec<String> = objects_under(&stores, &format!("s3://{bucket}/exports"))
        .await
        .into_iter()
        .filter(|key| key.ends_with(".parquet"))
        .collect();
    assert_eq!(parquet, Vec::<String>::new());
}

/// SQL reaches S3 with the crate's settings: a Sleeper table created over an `s3://` location,
/// a `COPY` export to S3, and DataFusion's own Parquet reader over the exported files.
#[tokio::test]
async fn sql_creates_copies_and_reads_tables_on_s3() {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    use datafusion::prelude::SessionConfig;
    use sleeper_export::sql::{sleeper_session, SleeperSessionExt};

    let bucket = create_bucket("sql");
    let stores = Stores::default();
    let table = random_table_at(
        stores.resolve(&format!("s3://{bucket}/tables/t")).unwrap(),
        77,
    )
    .await;
    let ctx = sleeper_session(stores.clone(), SessionConfig::new()).unwrap();
    let count = |sql: String| {
        let ctx = ctx.clone();
        async move {
            let batches = ctx
                .sleeper_sql(&sql)
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            batches[0].column(0).as_primitive::<Int64Type>().value(0)
        }
    };
    for statement in [
        format!("CREATE EXTERNAL TABLE t STORED AS SLEEPER LOCATION 's3://{bucket}/tables/t'"),
        format!("COPY t TO 's3://{bucket}/out' OPTIONS ('sleeper.export_id' 'sql')"),
        format!(
            "CREATE EXTERNAL TABLE exported STORED AS PARQUET LOCATION 's3://{bucket}/out/{}/sql/'",
            table.id()
        ),
    ] {
        ctx.sleeper_sql(&statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"))
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let files = objects_under(&stores, &format!("s3://{bucket}/out/{}/sql", table.id())).await;
    assert_eq!(files.len(), table.partitions.leaves().len());
    let in_table = count("SELECT count(*) FROM t".into()).await;
    assert!(in_table > 0);
    assert_eq!(
        count("SELECT count(*) FROM exported".into()).await,
        in_table
    );
}

/// The merge reads through the object stores of the session it runs in, as DataFusion's own
/// scans do: a plain `SessionContext` reaches the table's bucket through the table's stores
/// (registered on scan), and a store the session already has for the bucket is the one read.
#[tokio::test]
async fn the_merge_reads_through_the_sessions_object_stores() {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    use datafusion::prelude::SessionContext;
    use sleeper_export::plan::SleeperTableProvider;
    use std::sync::Arc;

    let bucket = create_bucket("session-stores");
    let stores = Stores::default();
    let table = random_table_at(
        stores.resolve(&format!("s3://{bucket}/tables/t")).unwrap(),
        77,
    )
    .await;
    let count = |ctx: SessionContext| async move {
        let batches = ctx.sql("SELECT count(*) FROM t").await?.collect().await?;
        Ok::<_, datafusion::error::DataFusionError>(
            batches[0].column(0).as_primitive::<Int64Type>().value(0),
        )
    };
    let sleeper = sleeper_export::sql::sleeper_session(stores.clone(), Default::default()).unwrap();
    sleeper
        .register_table("t", Arc::new(SleeperTableProvider::new(table.clone())))
        .unwrap();
    let expected = count(sleeper).await.unwrap();
    assert!(expected > 0);

    let plain = SessionContext::new();
    plain
        .register_table("t", Arc::new(SleeperTableProvider::new(table.clone())))
        .unwrap();
    assert_eq!(count(plain).await.unwrap(), expected);

    let elsewhere = SessionContext::new();
    let bucket_url = url::Url::parse(&format!("s3://{bucket}")).unwrap();
    elsewhere.register_object_store(&bucket_url, Arc::new(object_store::memory::InMemory::new()));
    elsewhere
        .register_table("t", Arc::new(SleeperTableProvider::new(table)))
        .unwrap();
    let error = count(elsewhere).await.unwrap_err();
    assert!(
        matches!(Error::from(error), Error::MissingInputFile { .. }),
        "the session's empty store for s3://{bucket} was not the one read"
    );
}

/// Sleeper names its files `s3a://…`: they are the table's files as much as `s3://` ones.
#[tokio::test]
async fn a_table_whose_files_are_named_s3a_exports_the_same_rows() {
    let bucket = create_bucket("s3a");
    let stores = Stores::default();
    let table = random_table_at(
        stores.resolve(&format!("s3://{bucket}/tables/t")).unwrap(),
        5,
    )
    .await;
    let expected = exported_rows(
        &table,
        &stores.resolve(&format!("s3://{bucket}/out/s3")).unwrap(),
    )
    .await;
    let renamed = with_files_renamed(&table, |name| name.replacen("s3://", "s3a://", 1)).await;
    assert!(renamed
        .files
        .iter()
        .all(|f| f.filename.starts_with("s3a://")));
    assert_eq!(
        exported_rows(
            &renamed,
            &stores.resolve(&format!("s3://{bucket}/out/s3a")).unwrap()
        )
        .await,
        expected
    );
}

/// Stores whose S3 requests go through `proxy`, retrying quickly at most `max_retries` times.
fn stores_through(proxy: &fault_proxy::FaultProxy, max_retries: usize) -> Stores {
    let endpoint = proxy.url.clone();
    Stores::with_s3_settings(std::sync::Arc::new(move |builder| {
        builder.with_endpoint(endpoint.clone())
    }))
    .with_s3_retry(object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: std::time::Duration::from_millis(5),
            max_backoff: std::time::Duration::from_millis(100),
            base: 2.0,
        },
        max_retries,
        retry_timeout: std::time::Duration::from_secs(60),
    })
}

#[tokio::test]
async fn exports_survive_transient_s3_faults_and_fail_clearly_when_retries_run_out() {
    let bucket = create_bucket("faults");
    let direct = Stores::default();
    let table_url = format!("s3://{bucket}/tables/t");
    let written = random_table_at(direct.resolve(&table_url).unwrap(), 91).await;
    let options = |export_id: &str| ExportOptions {
        export_id: Some(export_id.into()),
        age_off_clock_millis: Some(1_700_000_000_000),
        ..ExportOptions::default()
    };
    let clean = export_table(
        &written,
        &direct.resolve(&format!("s3://{bucket}/clean")).unwrap(),
        &options("e"),
        |_| {},
    )
    .await
    .unwrap();

    // Every fifth request fails: the table's state, its input files and the export's uploads
    // and records all go through the proxy.
    let proxy = fault_proxy::FaultProxy::start(&local_s3_address(), 5).await;
    let faulty = stores_through(&proxy, 10);
    let table = sleeper_export::table::SleeperTable::open(&table_url, &faulty)
        .await
        .unwrap();
    let output = faulty.resolve(&format!("s3://{bucket}/faulty")).unwrap();
    let survived = export_table(&table, &output, &options("e"), |_| {})
        .await
        .unwrap();
    assert!(
        proxy.faults() >= 5,
        "{} faults in {} requests",
        proxy.faults(),
        proxy.requests()
    );
    assert_eq!(survived.leaves.len(), clean.leaves.len());
    for (leaf, clean_leaf) in survived.leaves.iter().zip(&clean.leaves) {
        assert_eq!(leaf.leaf_partition_id, clean_leaf.leaf_partition_id);
        assert_same_rows(
            &read_s3_parquet(&direct, &leaf.file).await,
            &read_s3_parquet(&direct, &clean_leaf.file).await,
            &leaf.leaf_partition_id,
        );
    }
    let records = sleeper_export::queue::manifest::ExportRecords::new(
        &direct.resolve(&format!("s3://{bucket}/faulty")).unwrap(),
        table.id(),
        "e",
    );
    let status = records.status().await.unwrap();
    assert!(status.is_complete() && status.success_marker, "{status:?}");

    // Every request fails: the export stops with an error naming the file it could not write,
    // and leaves nothing behind.
    let broken = fault_proxy::FaultProxy::start(&local_s3_address(), 1).await;
    let output = stores_through(&broken, 2)
        .resolve(&format!("s3://{bucket}/broken"))
        .unwrap();
    let error = export_table(&written, &output, &options("e"), |_| {})
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains(&format!("s3://{bucket}/broken/{}/e/", table.id())),
        "{message}"
    );
    assert!(
        message.contains("SlowDown")
            || message.contains("InternalError")
            || message.contains("retries"),
        "the error says what S3 answered: {message}"
    );
    assert!(broken.faults() >= 3, "{}", broken.faults());
    assert_eq!(
        objects_under(&direct, &format!("s3://{bucket}/broken")).await,
        Vec::<String>::new()
    );
}
