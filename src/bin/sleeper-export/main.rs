//! The `sleeper-export` command line: one module per group of commands, over the library's
//! public API.

mod allocator;
mod local;
mod options;
mod queues;
mod sql;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sleeper_export::storage::Stores;
use sleeper_export::Result;
use tracing_subscriber::EnvFilter;

use local::{DemoArgs, ExportArgs, GenerateArgs};
use queues::{PlanArgs, RunArgs, StatusArgs, SubmitArgs};
use sql::{SqlArgs, TablesArgs};

#[derive(Debug, Parser)]
#[command(
    name = "sleeper-export",
    version,
    about = "Bulk-export GCHQ Sleeper tables to sorted Parquet, one file per leaf partition"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// How logs are written to stderr: `text`, or `json` (one object a line, for CloudWatch).
    /// Which are written: RUST_LOG (default: warnings, and the queue workers' progress).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        env = "SLEEPER_EXPORT_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Cli {
    /// The log filter when RUST_LOG is not set: the planner and runner report each message they
    /// settle; interactive commands only warn.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Plan(_) | Command::Run(_) => "warn,sleeper_export=info",
            _ => "warn",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Export every leaf partition of a table to <output>/<tableId>/<exportId>/<subExportId>.parquet.
    Export(ExportArgs),
    /// Create a demo Sleeper table on local disk and export it: no AWS, no services.
    Demo(DemoArgs),
    /// Create a demo Sleeper table (Sleeper's layout, random rows) without exporting it.
    Generate(GenerateArgs),
    /// Send a bulk export query to the export queue; prints the export id.
    Submit(SubmitArgs),
    /// The planner: split bulk export queries into leaf-partition queries.
    Plan(PlanArgs),
    /// The runner (an ECS task): export leaf partitions taken from the leaf-partition queue.
    Run(RunArgs),
    /// Which leaves of an export are done, pending or failed, and whether it is complete.
    Status(StatusArgs),
    /// Run SQL over Sleeper tables: queries print a table, `COPY t TO '<dir>'` exports.
    Sql(SqlArgs),
    /// List the tables of a Sleeper instance, with their partition and file counts.
    Tables(TablesArgs),
}

fn main() -> ExitCode {
    allocator::limit_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    runtime.block_on(logged_run())
}

async fn logged_run() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(cli.default_log_filter()));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    match run(cli).await.map_err(anyhow::Error::from) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command; the exit code says how it ended (130 after Ctrl-C, 143 after SIGTERM).
async fn run(cli: Cli) -> Result<ExitCode> {
    let stores = Stores::default();
    match cli.command {
        Command::Export(args) => return local::export(args, &stores).await,
        Command::Demo(args) => return local::demo(args, &stores).await,
        Command::Generate(args) => local::generate(args, &stores).await?,
        Command::Submit(args) => queues::submit(args, &stores).await?,
        Command::Plan(args) => queues::plan(args, &stores).await?,
        Command::Run(args) => queues::run(args, &stores).await?,
        Command::Status(args) => queues::status(args, &stores).await?,
        Command::Sql(args) => sql::run(args, stores).await?,
        Command::Tables(args) => sql::tables(args, stores).await?,
    }
    Ok(ExitCode::SUCCESS)
}
