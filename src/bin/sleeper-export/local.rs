//! Exports on this machine: `export`, `demo` and `generate`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use sleeper_export::export::export_table;
use sleeper_export::leaf::ExportOptions;
use sleeper_export::storage::Stores;
use sleeper_export::table::SleeperTable;
use sleeper_export::tablegen::write_demo_table;
use sleeper_export::{Error, Result};

use crate::allocator;
use crate::options::{open_table, shutdown_signal, ExportSettingsArgs, InstanceArgs};

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The table: a directory or s3://bucket/prefix holding table.properties, data/ and
    /// statestore/; with --instance, the table's name.
    #[arg(long)]
    pub table: String,
    #[command(flatten)]
    pub instance: InstanceArgs,
    /// Where exports go: a directory or s3://bucket/prefix.
    #[arg(long)]
    pub output: String,
    /// The export id (a random UUID when left out).
    #[arg(long)]
    pub export_id: Option<String>,
    /// Leaves exported at once (default: the number of cores).
    #[arg(long)]
    pub parallelism: Option<usize>,
    /// Export the stored rows as they are, without the table's filters and aggregations.
    #[arg(long)]
    pub raw: bool,
    /// SQL over each leaf's rows, which are the view query_results (Sleeper's sqlQuery): each
    /// leaf's file holds what it returns, e.g. "SELECT key, value FROM query_results WHERE
    /// value > 10".
    #[arg(long, value_name = "QUERY")]
    pub sql: Option<String>,
    /// Cut a leaf whose files hold more rows than this into key ranges of about this many rows,
    /// a file each (exported in parallel); by default a leaf is one file.
    #[arg(long, value_name = "ROWS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_rows_per_file: Option<u64>,
    #[command(flatten)]
    pub settings: ExportSettingsArgs,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Where to write the table: a directory or s3://bucket/prefix.
    #[arg(long)]
    pub table: String,
    #[arg(long, default_value_t = 16)]
    pub leaves: usize,
    #[arg(long, default_value_t = 50_000)]
    pub rows_per_file: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Working directory for the demo table (`table/`) and its export (`export/`).
    #[arg(long, default_value = "target/demo")]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 16)]
    pub leaves: usize,
    #[arg(long, default_value_t = 50_000)]
    pub rows_per_file: usize,
    #[arg(long)]
    pub parallelism: Option<usize>,
}

pub async fn export(args: ExportArgs, stores: &Stores) -> Result<ExitCode> {
    let instance = args.instance.open(stores).await?;
    let table = open_table(&args.table, instance.as_ref(), stores).await?;
    let defaults = args.settings.options();
    let options = ExportOptions {
        export_id: args.export_id,
        parallelism: args.parallelism.unwrap_or(defaults.parallelism),
        raw: args.raw,
        sql: args.sql,
        max_rows_per_file: args.max_rows_per_file,
        ..defaults
    };
    export_with_progress(&table, &args.output, &options, stores).await
}

pub async fn generate(args: GenerateArgs, stores: &Stores) -> Result<()> {
    let table = write_demo_table(
        stores.resolve(&args.table)?,
        args.leaves,
        args.rows_per_file,
        args.seed,
    )
    .await?;
    println!(
        "Created table {} ({}) at {}: {} leaves, {} file references",
        table.name(),
        table.id(),
        table.location,
        table.partitions.leaves().len(),
        table.files.len()
    );
    Ok(())
}

pub async fn demo(args: DemoArgs, stores: &Stores) -> Result<ExitCode> {
    let table_dir = args.dir.join("table");
    let output_dir = args.dir.join("export");
    if table_dir.exists() {
        std::fs::remove_dir_all(&table_dir).map_err(|e| {
            Error::location_from(
                table_dir.display().to_string(),
                "cannot clear the old demo table",
                e,
            )
        })?;
    }
    let location = stores.resolve(&table_dir.to_string_lossy())?;
    eprintln!(
        "Writing a demo table with {} leaves to {}",
        args.leaves, location
    );
    let table = write_demo_table(location, args.leaves, args.rows_per_file, 42).await?;
    let defaults = ExportOptions::default();
    let options = ExportOptions {
        parallelism: args.parallelism.unwrap_or(defaults.parallelism),
        ..defaults
    };
    export_with_progress(&table, &output_dir.to_string_lossy(), &options, stores).await
}

/// Exports with a progress bar. Ctrl-C or SIGTERM cancels the export: the leaves being written
/// abort their uploads, and the command exits 128 + the signal's number.
async fn export_with_progress(
    table: &SleeperTable,
    output: &str,
    options: &ExportOptions,
    stores: &Stores,
) -> Result<ExitCode> {
    let output = stores.resolve(output)?;
    // Chosen here, so that an interrupted export can be told how to finish.
    let mut options = options.clone();
    let export_id = options
        .export_id
        .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
        .clone();
    let options = &options;
    let leaves = table.partitions.leaves().len() as u64;
    let progress = if std::io::stderr().is_terminal() {
        ProgressBar::new(leaves)
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} leaves  {msg}",
        )
        .expect("a valid progress template"),
    );
    let (mut rows, mut bytes) = (0u64, 0u64);
    let export = export_table(table, &output, options, |leaf| {
        allocator::release_freed_memory();
        rows += leaf.rows_written;
        bytes += leaf.bytes;
        progress.inc(1);
        progress.set_message(format!("{rows} rows, {}", HumanBytes(bytes)));
    });
    tokio::pin!(export);
    let (summary, signal) = tokio::select! {
        summary = &mut export => (summary, None),
        signal = shutdown_signal() => {
            options.cancel.cancel();
            (export.await, Some(signal))
        }
    };
    progress.finish_and_clear();
    if let (Some(signal), Err(Error::Cancelled)) = (signal, &summary) {
        eprintln!(
            "interrupted: the export stopped and aborted its unfinished uploads; run it again \
             with --export-id {export_id} to finish it"
        );
        return Ok(ExitCode::from(128 + signal as u8));
    }
    let summary = summary?;
    let seconds = summary.elapsed.as_secs_f64();
    println!(
        "Exported table {} ({}) as export {}: {} leaf files, {} rows, {} in {:.2}s ({:.0} rows/s)",
        table.name(),
        summary.table_id,
        summary.export_id,
        summary.leaves.len(),
        summary.rows_written(),
        HumanBytes(summary.bytes()),
        seconds,
        summary.rows_written() as f64 / seconds.max(1e-9),
    );
    println!(
        "Files are under {}",
        output.sub_location(&format!("{}/{}", summary.table_id, summary.export_id))
    );
    Ok(ExitCode::SUCCESS)
}
