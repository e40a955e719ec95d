//! The `sleeper-export` binary as a user runs it.

use sleeper_export::model::PartitionTree;
use std::process::Command;

fn sleeper_export() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sleeper-export"))
}

/// Runs `command`, which must succeed, and returns its stdout.
fn succeeded(command: &mut Command) -> String {
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `export` of the table `dir/table` to `dir/export` as export `export_id`.
fn export_command(dir: &std::path::Path, export_id: &str) -> Command {
    let mut command = sleeper_export();
    command
        .args(["export", "--export-id", export_id, "--table"])
        .arg(dir.join("table"))
        .arg("--output")
        .arg(dir.join("export"));
    command
}

#[test]
fn demo_writes_one_file_per_leaf_and_export_re_exports_it() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = succeeded(
        sleeper_export()
            .args(["demo", "--leaves", "5", "--rows-per-file", "500", "--dir"])
            .arg(dir.path()),
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
    assert!(export_dir.join("_manifest.json").exists());

    let again = export_command(dir.path(), "second").output().unwrap();
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
fn raw_and_sql_exports_choose_the_rows_that_leave() {
    use sleeper_export::model::{Field, PrimitiveType, Schema, TableProperties};
    use sleeper_export::storage::Stores;
    use sleeper_export::tablegen::{RowStyle, TableWriter};
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
        let tree = PartitionTree::from_split_points("agg", &schema, &[]).unwrap();
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
    // The SQL sees the aggregated rows: the 10 keys from 0.
    let filtered = export(&[
        "--sql",
        "SELECT k, count FROM query_results WHERE k >= 0",
        "--memory-limit",
        "64MiB",
    ]);
    assert!(filtered.contains("1 leaf files, 10 rows"), "{filtered}");
    // One file of one row group, keys -10 to 9: cut at its largest key, the only one known.
    let cut = export(&["--max-rows-per-file", "500"]);
    assert!(cut.contains("2 leaf files, 20 rows"), "{cut}");

    let failed = |extra: &[&str]| {
        let output = sleeper_export()
            .args(["export", "--table"])
            .arg(&table_dir)
            .arg("--output")
            .arg(dir.path().join("refused"))
            .args(extra)
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let bad_sql = failed(&["--sql", "SELECT a.k FROM query_results a, query_results b"]);
    assert!(
        bad_sql.contains("User SQL query failed: a join of query_results with no equality"),
        "{bad_sql}"
    );
    assert!(
        !dir.path().join("refused").exists(),
        "a refused export writes nothing, not even its manifest"
    );
    let bad_size = failed(&["--memory-limit", "12 furlongs"]);
    assert!(bad_size.contains("unknown unit \"furlongs\""), "{bad_size}");
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

/// The names in `dir` that `wanted` accepts (none when `dir` is not there yet).
fn names_in(dir: &std::path::Path, wanted: impl Fn(&str) -> bool) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| wanted(name))
                .collect()
        })
        .unwrap_or_default()
}

/// The staging files (`<file>#<n>`) in `dir`: object_store's local uploads in progress.
fn staging_files(dir: &std::path::Path) -> Vec<String> {
    names_in(dir, |name| name.contains(".parquet#"))
}

fn parquet_files(dir: &std::path::Path) -> Vec<String> {
    names_in(dir, |name| name.ends_with(".parquet"))
}

/// Starts `export` of the table in `dir` as export `again`, and returns once it is writing.
fn export_caught_writing(
    dir: &std::path::Path,
    export_dir: &std::path::Path,
) -> std::process::Child {
    let child = export_command(dir, "again")
        .args(["--parallelism", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while staging_files(export_dir).is_empty() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "the export never started writing"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child
}

/// The rows of the folder `dir` read as a pyarrow dataset, which skips names starting with `_`
/// or `.`, as Spark, Hive and Athena do.
fn pyarrow_dataset_rows(dir: &std::path::Path) -> u64 {
    let python = std::env::var("SLEEPER_TEST_PYTHON").expect(
        "SLEEPER_TEST_PYTHON is not set: run the tests with scripts/test.sh, which installs pyarrow",
    );
    let counted = succeeded(
        Command::new(python)
            .args([
                "-c",
                "import sys, pyarrow.dataset as ds; \
                 print(ds.dataset(sys.argv[1], format='parquet').count_rows())",
            ])
            .arg(dir),
    );
    counted.trim().parse().unwrap()
}

fn signal(child: &std::process::Child, signal: &str) {
    let sent = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[test]
fn an_interrupted_export_leaves_no_staging_files_and_runs_again_to_completion() {
    let dir = tempfile::tempdir().unwrap();
    let generated = sleeper_export()
        .args([
            "generate",
            "--leaves",
            "4",
            "--rows-per-file",
            "300000",
            "--table",
        ])
        .arg(dir.path().join("table"))
        .output()
        .unwrap();
    assert!(generated.status.success());
    let export_dir = dir.path().join("export/demo0001/again");

    let interrupted = export_caught_writing(dir.path(), &export_dir);
    signal(&interrupted, "-INT");
    let interrupted = interrupted.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&interrupted.stderr);
    assert_eq!(interrupted.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted") && stderr.contains("--export-id again"),
        "{stderr}"
    );
    assert_eq!(staging_files(&export_dir), Vec::<String>::new());
    // Leaves finished before the signal are whole, and recorded done; the rest are not there.
    let finished = parquet_files(&export_dir);
    assert!(finished.len() < 4, "{finished:?}");
    for file in &finished {
        let sub_export_id = file.trim_end_matches(".parquet");
        assert!(export_dir
            .join(format!("_status/{sub_export_id}.json"))
            .exists());
    }

    // SIGKILL leaves no chance to tidy up: the staging file stays until the export runs again.
    // (A kill that lands just after the file was renamed into place leaves none: try again.)
    for _ in 0..3 {
        let mut killed = export_caught_writing(dir.path(), &export_dir);
        signal(&killed, "-KILL");
        killed.wait().unwrap();
        if !staging_files(&export_dir).is_empty() {
            break;
        }
    }
    assert!(!staging_files(&export_dir).is_empty());

    let finish = || {
        let finished = export_command(dir.path(), "again").output().unwrap();
        let stdout = String::from_utf8_lossy(&finished.stdout).into_owned();
        assert!(finished.status.success(), "{stdout}");
        stdout
    };
    let finished = finish();
    assert!(
        finished.contains("as export again: 4 leaf files"),
        "{finished}"
    );
    assert_eq!(staging_files(&export_dir), Vec::<String>::new());
    let files = parquet_files(&export_dir);
    assert_eq!(files.len(), 4);
    // The folder, records and marker included, reads as a dataset of exactly the export's rows.
    let exported: u64 = finished
        .split(" rows,")
        .next()
        .and_then(|start| start.rsplit(' ').next())
        .and_then(|rows| rows.parse().ok())
        .unwrap_or_else(|| panic!("no row count in {finished}"));
    assert_eq!(pyarrow_dataset_rows(&export_dir), exported);
    assert!(export_dir.join("_SUCCESS").exists());
    let status = sleeper_export()
        .args([
            "status",
            "--table-id",
            "demo0001",
            "--export-id",
            "again",
            "--output",
        ])
        .arg(dir.path().join("export"))
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("4 leaves, 4 done, 0 pending, 0 failed: complete (_SUCCESS written)"),
        "{status}"
    );

    // Run again once complete, it exports nothing new.
    let finished = finish();
    assert!(
        finished.contains("as export again: 4 leaf files"),
        "{finished}"
    );
    let mut again = parquet_files(&export_dir);
    again.sort();
    let mut files = files;
    files.sort();
    assert_eq!(again, files);
}

#[test]
fn a_missing_input_during_copy_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("table");
    succeeded(
        sleeper_export()
            .args([
                "generate",
                "--leaves",
                "2",
                "--rows-per-file",
                "100",
                "--table",
            ])
            .arg(&table),
    );
    let victim = std::fs::read_dir(table.join("data"))
        .unwrap()
        .flat_map(|partition| std::fs::read_dir(partition.unwrap().path()).unwrap())
        .map(|file| file.unwrap().path())
        .find(|file| file.extension().is_some_and(|e| e == "parquet"))
        .expect("a data file");
    std::fs::remove_file(&victim).unwrap();
    let copied = sleeper_export()
        .args(["sql", "--table"])
        .arg(format!("t={}", table.display()))
        .arg(format!("COPY t TO '{}'", dir.path().join("out").display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&copied.stderr);
    assert!(!copied.status.success());
    assert!(
        stderr.contains("is missing")
            && stderr.contains(victim.file_name().unwrap().to_str().unwrap()),
        "{stderr}"
    );
    assert!(!stderr.contains("External error"), "{stderr}");
}
