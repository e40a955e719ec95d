//! The `sleeper-export` binary as a user runs it.

use std::process::Command;

fn sleeper_export() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sleeper-export"))
}

#[test]
fn demo_writes_one_file_per_leaf_and_export_re_exports_it() {
    let dir = tempfile::tempdir().unwrap();
    let demo = sleeper_export()
        .args(["demo", "--leaves", "5", "--rows-per-file", "500", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&demo.stdout);
    assert!(
        demo.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    // 5 leaves × 2 files, one root file and one split file, each of 500 rows.
    assert!(stdout.contains("5 leaf files, 6000 rows"), "{stdout}");
    let export_root = dir.path().join("export/demo0001");
    let exports: Vec<_> = std::fs::read_dir(&export_root).unwrap().collect();
    assert_eq!(exports.len(), 1);
    let export_dir = exports[0].as_ref().unwrap().path();
    let parquet_files = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".parquet")
            })
            .count()
    };
    assert_eq!(parquet_files(&export_dir), 5);
    assert!(export_dir.join("manifest.json").exists());

    let again = sleeper_export()
        .args(["export", "--export-id", "second", "--table"])
        .arg(dir.path().join("table"))
        .arg("--output")
        .arg(dir.path().join("export"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{stdout}");
    assert!(
        stdout.contains("as export second: 5 leaf files, 6000 rows"),
        "{stdout}"
    );
    assert_eq!(parquet_files(&export_root.join("second")), 5);
}

#[test]
fn a_bad_table_location_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let output = sleeper_export()
        .args(["export", "--table"])
        .arg(dir.path())
        .args(["--output", "/tmp/unused"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error: invalid location"), "{stderr}");
    assert!(
        stderr.contains("no Sleeper table here: table.properties not found"),
        "{stderr}"
    );
}

#[test]
fn raw_exports_skip_the_tables_aggregation() {
    use sleeper_export::model::{Field, PrimitiveType, Schema, TableProperties};
    use sleeper_export::storage::Stores;
    use sleeper_export::tablegen::{tree_from_split_points, RowStyle, TableWriter};
    let dir = tempfile::tempdir().unwrap();
    let table_dir = dir.path().join("table");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let schema = Schema::new(
            vec![Field::primitive("k", PrimitiveType::Long)],
            vec![],
            vec![Field::primitive("count", PrimitiveType::Long)],
        )
        .unwrap();
        let mut properties = TableProperties::new("agg", "agg", schema.clone());
        properties.aggregations = Some("sum(count)".into());
        let tree = tree_from_split_points("agg", &schema, &[]).unwrap();
        let location = Stores::default()
            .resolve(table_dir.to_str().unwrap())
            .unwrap();
        let style = RowStyle {
            key_span: 10,
            ..RowStyle::default()
        };
        let mut writer = TableWriter::new(location, properties, tree, style, 5);
        writer
            .write_random_file("root", 1000, &["root"])
            .await
            .unwrap();
        writer.finish().await.unwrap();
    });
    let export = |extra: &[&str]| {
        let output = sleeper_export()
            .args(["export", "--table"])
            .arg(&table_dir)
            .arg("--output")
            .arg(dir.path().join("out"))
            .args(extra)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    // Keys come from -10..10: 1000 rows hold all 20 of them, one row each once summed.
    let aggregated = export(&[]);
    assert!(aggregated.contains("1 leaf files, 20 rows"), "{aggregated}");
    let raw = export(&["--raw"]);
    assert!(raw.contains("1 leaf files, 1000 rows"), "{raw}");
}

#[test]
fn sql_prints_query_results_and_export_summaries() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("table");
    let generate = sleeper_export()
        .args([
            "generate",
            "--leaves",
            "3",
            "--rows-per-file",
            "100",
            "--table",
        ])
        .arg(&table)
        .output()
        .unwrap();
    assert!(generate.status.success());
    let script = dir.path().join("script.sql");
    std::fs::write(
        &script,
        format!(
            "CREATE EXTERNAL TABLE t STORED AS SLEEPER LOCATION '{}';\n\
             SELECT count(*) AS total FROM t;\n\
             COPY t TO '{}' OPTIONS ('sleeper.export_id' 'by-sql');",
            table.display(),
            dir.path().join("out").display()
        ),
    )
    .unwrap();
    let run = sleeper_export()
        .arg("sql")
        .arg("--file")
        .arg(&script)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // 3 leaves × 2 files, one root file and one split file, each of 100 rows.
    assert!(
        stdout.contains("| total |") && stdout.contains("| 800   |"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Exported 3 leaf files, 800 rows"),
        "{stdout}"
    );
    assert!(stdout.contains("/out/demo0001/by-sql"), "{stdout}");

    let bad = sleeper_export()
        .args(["sql", "--table"])
        .arg(format!("t={}", table.display()))
        .arg("SELECT nope FROM t")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("nope"));
}
