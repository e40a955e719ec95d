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
    let files = std::fs::read_dir(exports[0].as_ref().unwrap().path())
        .unwrap()
        .count();
    assert_eq!(files, 5);

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
    assert_eq!(
        std::fs::read_dir(export_root.join("second"))
            .unwrap()
            .count(),
        5
    );
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
