//! The `sleeper-export` command line.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use crate::error::Result;
use crate::export::{export_table, ExportOptions, ExportSummary};
use crate::storage::Stores;
use crate::table::SleeperTable;
use crate::tablegen::write_demo_table;

#[derive(Debug, Parser)]
#[command(
    name = "sleeper-export",
    version,
    about = "Bulk-export GCHQ Sleeper tables to sorted Parquet, one file per leaf partition"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Export every leaf partition of a table to <output>/<tableId>/<exportId>/<subExportId>.parquet.
    Export(ExportArgs),
    /// Create a demo Sleeper table on local disk and export it: no AWS, no services.
    Demo(DemoArgs),
    /// Create a demo Sleeper table (Sleeper's layout, random rows) without exporting it.
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The table: a directory or s3://bucket/prefix holding table.properties, data/ and statestore/.
    #[arg(long)]
    pub table: String,
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

pub async fn run(cli: Cli) -> Result<()> {
    let stores = Stores::default();
    match cli.command {
        Command::Export(args) => {
            let table = SleeperTable::open(&args.table, &stores).await?;
            let defaults = ExportOptions::default();
            let options = ExportOptions {
                export_id: args.export_id,
                parallelism: args.parallelism.unwrap_or(defaults.parallelism),
                raw: args.raw,
                ..defaults
            };
            export_with_progress(&table, &args.output, &options, &stores).await?;
        }
        Command::Generate(args) => {
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
        }
        Command::Demo(args) => {
            let table_dir = args.dir.join("table");
            let output_dir = args.dir.join("export");
            if table_dir.exists() {
                std::fs::remove_dir_all(&table_dir).map_err(|e| crate::Error::Location {
                    location: table_dir.display().to_string(),
                    message: format!("cannot clear the old demo table: {e}"),
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
            export_with_progress(&table, &output_dir.to_string_lossy(), &options, &stores).await?;
        }
    }
    Ok(())
}

async fn export_with_progress(
    table: &SleeperTable,
    output: &str,
    options: &ExportOptions,
    stores: &Stores,
) -> Result<ExportSummary> {
    let output = stores.resolve(output)?;
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
    let summary = export_table(table, &output, options, |leaf| {
        rows += leaf.rows_written;
        bytes += leaf.bytes;
        progress.inc(1);
        progress.set_message(format!("{rows} rows, {}", HumanBytes(bytes)));
    })
    .await;
    progress.finish_and_clear();
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
    Ok(summary)
}
