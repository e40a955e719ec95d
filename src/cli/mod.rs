//! The `sleeper-export` command line.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::SessionConfig;

use crate::error::{Error, Result};
use crate::export::export_table;
use crate::instance::{find_config_bucket, Instance, INSTANCE_PROPERTIES};
use crate::leaf::ExportOptions;
use crate::model::KeyOrder;
use crate::plan::sink::WrittenLeaf;
use crate::plan::SleeperTableProvider;
use crate::query::BulkExportQuery;
use crate::queue::config::{self as queue_config, BulkExportConfig};
use crate::queue::manifest::{ExportRecords, ExportStatus};
use crate::queue::planner::{Outcome, Planner};
use crate::queue::runner::Runner;
use crate::queue::sqs::SqsQueue;
use crate::queue::MessageQueue;
use crate::queue::TableIndex;
use crate::sql::{sleeper_session, SleeperSessionExt};
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

/// A live Sleeper instance to read tables from: tables are then named by their Sleeper name.
#[derive(Debug, Args, Clone, Default)]
pub struct InstanceArgs {
    /// The Sleeper instance id: its properties come from its config bucket
    /// (sleeper-<id>-config-<AWS account> as Sleeper 0.35 names it, the account from STS; or
    /// sleeper-<id>-config, its name before 0.35), its tables' state from its DynamoDB
    /// transaction logs.
    #[arg(long, env = "SLEEPER_INSTANCE_ID")]
    pub instance: Option<String>,
    /// The instance's config bucket, where it is not Sleeper's for --instance.
    #[arg(long, env = "SLEEPER_CONFIG_BUCKET")]
    pub config_bucket: Option<String>,
}

impl InstanceArgs {
    async fn bucket(&self, stores: &Stores) -> Result<Option<String>> {
        match (&self.config_bucket, &self.instance) {
            (Some(bucket), _) => Ok(Some(bucket.clone())),
            (None, Some(instance)) => Ok(Some(find_config_bucket(instance, stores).await?)),
            (None, None) => Ok(None),
        }
    }

    async fn open(&self, stores: &Stores) -> Result<Option<Instance>> {
        match self.bucket(stores).await? {
            Some(bucket) => Ok(Some(Instance::open(&bucket, stores).await?)),
            None => Ok(None),
        }
    }
}

/// How leaves are exported, where the table's own settings are not what is wanted.
#[derive(Debug, Args, Clone, Default)]
pub struct ExportSettingsArgs {
    /// The order of the table's files: `datafusion` (unsigned bytes) or `java` (UTF-16 strings,
    /// signed bytes), instead of its data engine's (sleeper.table.data.engine).
    #[arg(long, value_name = "ENGINE")]
    pub key_order: Option<KeyOrder>,
    /// The codec to write (uncompressed, snappy, gzip, lz4, brotli, zstd), instead of the
    /// table's (sleeper.table.parquet.compression.codec).
    #[arg(long, value_name = "CODEC")]
    pub compression: Option<String>,
}

impl ExportSettingsArgs {
    fn options(&self) -> ExportOptions {
        ExportOptions {
            key_order: self.key_order,
            compression: self.compression.clone(),
            ..ExportOptions::default()
        }
    }
}

/// Where the queues and the export bucket are: Sleeper's instance properties, overridden by options.
#[derive(Debug, Args)]
pub struct QueueArgs {
    #[command(flatten)]
    pub instance: InstanceArgs,
    /// An instance.properties file (local path or s3://) with Sleeper's bulk-export properties
    /// (default: the one in the config bucket of --instance).
    #[arg(long, env = "SLEEPER_INSTANCE_PROPERTIES")]
    pub instance_properties: Option<String>,
    /// sleeper.bulk.export.queue.url
    #[arg(long, env = "SLEEPER_BULK_EXPORT_QUEUE_URL")]
    pub queue_url: Option<String>,
    /// sleeper.bulk.export.queue.dlq.url
    #[arg(long, env = "SLEEPER_BULK_EXPORT_QUEUE_DLQ_URL")]
    pub queue_dlq_url: Option<String>,
    /// sleeper.bulk.export.leaf.partition.queue.url
    #[arg(long, env = "SLEEPER_BULK_EXPORT_LEAF_PARTITION_QUEUE_URL")]
    pub leaf_queue_url: Option<String>,
    /// sleeper.bulk.export.leaf.partition.queue.dlq.url
    #[arg(long, env = "SLEEPER_BULK_EXPORT_LEAF_PARTITION_QUEUE_DLQ_URL")]
    pub leaf_queue_dlq_url: Option<String>,
    /// Where exports go (default s3://<sleeper.bulk.export.s3.bucket>).
    #[arg(long, env = "SLEEPER_BULK_EXPORT_OUTPUT")]
    pub output: Option<String>,
    /// Long-poll wait in seconds (sleeper.bulk.export.task.wait.time.seconds).
    #[arg(long)]
    pub wait_seconds: Option<u64>,
    /// sleeper.bulk.export.keepalive.period.seconds
    #[arg(long)]
    pub keepalive_seconds: Option<u64>,
    /// sleeper.bulk.export.queue.visibility.timeout.seconds
    #[arg(long)]
    pub visibility_seconds: Option<u64>,
    /// sleeper.bulk.export.job.failed.visibility.timeout.seconds
    #[arg(long)]
    pub failed_visibility_seconds: Option<u64>,
}

impl QueueArgs {
    async fn config(&self, stores: &Stores) -> Result<BulkExportConfig> {
        let properties = match &self.instance_properties {
            Some(location) => Some(location.clone()),
            None => self
                .instance
                .bucket(stores)
                .await?
                .map(|bucket| format!("s3://{bucket}/{INSTANCE_PROPERTIES}")),
        };
        let mut config = match &properties {
            Some(location) => BulkExportConfig::load(location, stores).await?,
            None => BulkExportConfig::default(),
        };
        let overrides = [
            (&self.queue_url, &mut config.queue_url),
            (&self.queue_dlq_url, &mut config.queue_dlq_url),
            (&self.leaf_queue_url, &mut config.leaf_queue_url),
            (&self.leaf_queue_dlq_url, &mut config.leaf_queue_dlq_url),
            (&self.output, &mut config.output),
        ];
        for (given, setting) in overrides {
            if given.is_some() {
                setting.clone_from(given);
            }
        }
        let durations = [
            (self.wait_seconds, &mut config.wait),
            (self.keepalive_seconds, &mut config.keepalive),
            (self.visibility_seconds, &mut config.visibility),
            (
                self.failed_visibility_seconds,
                &mut config.failed_visibility,
            ),
        ];
        for (given, setting) in durations {
            if let Some(seconds) = given {
                *setting = Duration::from_secs(seconds);
            }
        }
        Ok(config)
    }
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub queues: QueueArgs,
    #[arg(
        long,
        conflicts_with = "table_name",
        required_unless_present = "table_name"
    )]
    pub table_id: Option<String>,
    #[arg(long)]
    pub table_name: Option<String>,
    /// The export id (a random UUID when left out).
    #[arg(long)]
    pub export_id: Option<String>,
}

/// What the planner and the runner both take: queues, the tables they serve, when to stop.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub queues: QueueArgs,
    /// The tables messages may name: directories or s3:// prefixes (repeat the option); with
    /// --instance, table names (default: every table of the instance).
    #[arg(
        long = "table",
        required_unless_present_any = ["instance", "config_bucket"],
        env = "SLEEPER_EXPORT_TABLES",
        value_delimiter = ','
    )]
    pub tables: Vec<String>,
    /// Exit after this many seconds with no message and nothing running, so that a scaler can
    /// start tasks by queue depth (default: run until stopped).
    #[arg(long)]
    pub idle_exit_seconds: Option<u64>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// For the leaves without files, whose (empty) files the planner writes.
    #[command(flatten)]
    pub settings: ExportSettingsArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub settings: ExportSettingsArgs,
    /// Leaf queries exported at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// On SIGTERM or Ctrl-C, how long running leaves may take to finish; then they are
    /// cancelled (uploads aborted, messages offered again). Keep it below the ECS task's
    /// stopTimeout (30 seconds by default), after which ECS kills the task.
    #[arg(long, default_value_t = 25)]
    pub stop_grace_seconds: u64,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub queues: QueueArgs,
    #[arg(long)]
    pub table_id: String,
    #[arg(long)]
    pub export_id: String,
    /// Print the whole status as JSON (with "complete": true|false), for scripts.
    #[arg(long)]
    pub json: bool,
}

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
    #[command(flatten)]
    pub settings: ExportSettingsArgs,
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// Statements to run, separated by `;`.
    #[arg(required_unless_present = "file")]
    pub statements: Option<String>,
    /// Run the statements in this file instead.
    #[arg(long, conflicts_with = "statements")]
    pub file: Option<PathBuf>,
    /// Register a Sleeper table first, as NAME=LOCATION (a directory or s3://…), or with
    /// --instance NAME=TABLE or just TABLE (a table of the instance); repeatable.
    /// `CREATE EXTERNAL TABLE name STORED AS SLEEPER LOCATION '…'` does the same in SQL.
    #[arg(long = "table", value_name = "NAME=LOCATION")]
    pub tables: Vec<String>,
    #[command(flatten)]
    pub instance: InstanceArgs,
}

#[derive(Debug, Args)]
pub struct TablesArgs {
    #[command(flatten)]
    pub instance: InstanceArgs,
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

/// Runs a command; the exit code says how it ended (130 after Ctrl-C, 143 after SIGTERM).
pub async fn run(cli: Cli) -> Result<ExitCode> {
    let stores = Stores::default();
    match cli.command {
        Command::Export(args) => {
            let instance = args.instance.open(&stores).await?;
            let table = open_table(&args.table, instance.as_ref(), &stores).await?;
            let defaults = args.settings.options();
            let options = ExportOptions {
                export_id: args.export_id,
                parallelism: args.parallelism.unwrap_or(defaults.parallelism),
                raw: args.raw,
                ..defaults
            };
            return export_with_progress(&table, &args.output, &options, &stores).await;
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
                std::fs::remove_dir_all(&table_dir).map_err(|e| Error::Location {
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
            return export_with_progress(&table, &output_dir.to_string_lossy(), &options, &stores)
                .await;
        }
        Command::Submit(args) => {
            let config = args.queues.config(&stores).await?;
            let url = BulkExportConfig::required(&config.queue_url, queue_config::QUEUE_URL)?;
            let query = BulkExportQuery {
                table_id: args.table_id,
                table_name: args.table_name,
                export_id: args.export_id,
            }
            .with_export_id();
            query.validate()?;
            SqsQueue::new(SqsQueue::client().await, url)
                .send_all(vec![query.to_json()])
                .await?;
            println!("{}", query.export_id.expect("with_export_id sets it"));
        }
        Command::Plan(PlanArgs {
            worker: args,
            settings,
        }) => {
            let config = args.queues.config(&stores).await?;
            let client = SqsQueue::client().await;
            let queue = SqsQueue::new(
                client.clone(),
                BulkExportConfig::required(&config.queue_url, queue_config::QUEUE_URL)?,
            );
            let leaf_queue = SqsQueue::new(
                client.clone(),
                BulkExportConfig::required(&config.leaf_queue_url, queue_config::LEAF_QUEUE_URL)?,
            );
            let dead_letters = config
                .queue_dlq_url
                .as_ref()
                .map(|url| SqsQueue::new(client.clone(), url));
            let planner = Planner {
                tables: open_tables(&args.tables, &args.queues.instance, &stores).await?,
                output: stores.resolve(BulkExportConfig::required(
                    &config.output,
                    queue_config::BUCKET,
                )?)?,
                export: settings.options(),
            };
            let outcomes = planner
                .run(
                    &queue,
                    dead_letters.as_ref().map(|q| q as &dyn MessageQueue),
                    &leaf_queue,
                    config.wait,
                    config.visibility,
                    args.idle_exit_seconds.map(Duration::from_secs),
                )
                .await?;
            println!(
                "planned {} queries",
                outcomes
                    .iter()
                    .filter(|o| matches!(o, Outcome::Done(_)))
                    .count()
            );
        }
        Command::Run(RunArgs {
            worker: args,
            settings,
            concurrency,
            stop_grace_seconds,
        }) => {
            let config = args.queues.config(&stores).await?;
            let client = SqsQueue::client().await;
            let leaf_queue: Arc<dyn MessageQueue> = Arc::new(SqsQueue::new(
                client.clone(),
                BulkExportConfig::required(&config.leaf_queue_url, queue_config::LEAF_QUEUE_URL)?,
            ));
            let dead_letters = config
                .leaf_queue_dlq_url
                .as_ref()
                .map(|url| Arc::new(SqsQueue::new(client.clone(), url)) as Arc<dyn MessageQueue>);
            let output = stores.resolve(BulkExportConfig::required(
                &config.output,
                queue_config::BUCKET,
            )?)?;
            let runner = Arc::new(
                Runner::new(
                    open_tables(&args.tables, &args.queues.instance, &stores).await?,
                    output,
                    settings.options(),
                    config,
                )
                .with_concurrency(concurrency)
                .with_idle_exit(args.idle_exit_seconds.map(Duration::from_secs))
                .with_stop_grace(Duration::from_secs(stop_grace_seconds)),
            );
            let report = runner
                .run(leaf_queue, dead_letters, async {
                    let signal = shutdown_signal().await;
                    tracing::info!(
                        signal,
                        "stopping: no new work is taken; running leaves get {stop_grace_seconds} \
                         seconds to finish"
                    );
                })
                .await?;
            println!(
                "exported {} leaves ({} rows); {} failed, {} rejected, {} interrupted",
                report.done.len(),
                report.done.iter().map(|l| l.rows_written).sum::<u64>(),
                report.failed.len(),
                report.rejected.len(),
                report.interrupted.len()
            );
        }
        Command::Sql(args) => run_sql(args, stores).await?,
        Command::Tables(args) => list_tables(args, stores).await?,
        Command::Status(args) => {
            let config = args.queues.config(&stores).await?;
            let output = stores.resolve(BulkExportConfig::required(
                &config.output,
                queue_config::BUCKET,
            )?)?;
            let status = ExportRecords::new(&output, &args.table_id, &args.export_id)
                .status()
                .await?;
            if args.json {
                #[derive(serde::Serialize)]
                struct StatusJson<'a> {
                    complete: bool,
                    #[serde(flatten)]
                    status: &'a ExportStatus,
                }
                let json = StatusJson {
                    complete: status.is_complete(),
                    status: &status,
                };
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json).expect("status serialises")
                );
            } else {
                print_status(&args, &status);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(args: &StatusArgs, status: &ExportStatus) {
    println!(
        "export {} of table {}: {} leaves, {} done, {} pending, {} failed: {}",
        args.export_id,
        args.table_id,
        status.manifest.sub_exports.len(),
        status.done.len(),
        status.pending.len(),
        status.failed.len(),
        match (status.is_complete(), status.success_marker) {
            (true, true) => "complete (_SUCCESS written)",
            (true, false) => "complete",
            (false, _) => "not complete",
        }
    );
    for failure in &status.failed {
        println!(
            "  failed: leaf {} ({}): {}",
            failure.leaf_partition_id, failure.sub_export_id, failure.error
        );
    }
    for problem in &status.problems {
        println!("  problem: {problem}");
    }
    for object in &status.unexpected {
        println!("  not a file of the export: {object}");
    }
    for upload in &status.unfinished_uploads {
        println!("  unfinished upload: {upload}");
    }
}

async fn run_sql(args: SqlArgs, stores: Stores) -> Result<()> {
    let script = match (&args.statements, &args.file) {
        (_, Some(file)) => std::fs::read_to_string(file).map_err(|e| Error::Location {
            location: file.display().to_string(),
            message: format!("cannot read the SQL file: {e}"),
        })?,
        (Some(statements), None) => statements.clone(),
        (None, None) => unreachable!("clap requires statements or --file"),
    };
    let instance = args.instance.open(&stores).await?;
    let ctx = sleeper_session(stores.clone(), SessionConfig::new())?;
    for table in &args.tables {
        let (name, source) = match (table.split_once('='), &instance) {
            (Some(pair), _) => pair,
            (None, Some(_)) => (table.as_str(), table.as_str()),
            (None, None) => {
                return Err(Error::Location {
                    location: table.clone(),
                    message: "--table takes NAME=LOCATION".into(),
                })
            }
        };
        let opened = open_table(source, instance.as_ref(), &stores).await?;
        ctx.register_table(name, Arc::new(SleeperTableProvider::new(opened)))
            .map_err(Error::from)?;
    }
    for statement in ctx.sleeper_statements(&script)? {
        let batches = ctx
            .run_statement(statement)
            .await?
            .collect()
            .await
            .map_err(Error::from)?;
        print_sql_result(&batches)?;
    }
    Ok(())
}

/// A query's rows as a table; an export's as a summary of what it wrote.
fn print_sql_result(batches: &[RecordBatch]) -> Result<()> {
    let Some(first) = batches.first() else {
        return Ok(());
    };
    if first.schema() == WrittenLeaf::schema() {
        let leaves = WrittenLeaf::from_batches(batches)?;
        let rows: u64 = leaves.iter().map(|l| l.rows_written).sum();
        let bytes: u64 = leaves.iter().map(|l| l.bytes).sum();
        let directory = leaves
            .first()
            .and_then(|leaf| leaf.file.rsplit_once('/'))
            .map_or("", |(directory, _)| directory);
        println!(
            "Exported {} leaf files, {rows} rows, {} to {directory}",
            leaves.len(),
            HumanBytes(bytes)
        );
    } else if first.num_columns() > 0 {
        let table = pretty_format_batches(batches).map_err(|source| Error::Arrow {
            context: "formatting query results".into(),
            source,
        })?;
        println!("{table}");
    }
    Ok(())
}

/// A table at a location, or with an instance, the instance's table of that name.
async fn open_table(
    table: &str,
    instance: Option<&Instance>,
    stores: &Stores,
) -> Result<SleeperTable> {
    match instance {
        Some(instance) => instance.open_table_named(table).await,
        None => SleeperTable::open(table, stores).await,
    }
}

/// The tables given, or with an instance and none given, every table of the instance.
async fn open_tables(
    tables: &[String],
    instance: &InstanceArgs,
    stores: &Stores,
) -> Result<TableIndex> {
    let instance = instance.open(stores).await?;
    let mut opened = Vec::new();
    match (&instance, tables.is_empty()) {
        (Some(instance), true) => {
            for entry in instance.tables().await? {
                opened.push(instance.open_table(&entry.id).await?);
            }
        }
        _ => {
            for table in tables {
                opened.push(open_table(table, instance.as_ref(), stores).await?);
            }
        }
    }
    Ok(TableIndex::new(opened).with_instance(instance))
}

async fn list_tables(args: TablesArgs, stores: Stores) -> Result<()> {
    let instance = args
        .instance
        .open(&stores)
        .await?
        .ok_or_else(|| Error::Property {
            property: "--instance".into(),
            message: "tables lists the tables of an instance: give --instance or --config-bucket"
                .into(),
        })?;
    println!(
        "{:<30} {:<24} {:>10} {:>8} {:>16}  state",
        "table", "id", "partitions", "leaves", "file references"
    );
    for entry in instance.tables().await? {
        let table = instance.open_table(&entry.id).await?;
        println!(
            "{:<30} {:<24} {:>10} {:>8} {:>16}  {}",
            entry.name,
            entry.id,
            table.partitions.all().len(),
            table.partitions.leaves().len(),
            table.files.len(),
            table
                .state_version
                .map_or_else(|| "-".to_owned(), |v| v.to_string())
        );
    }
    Ok(())
}

/// Completes on SIGTERM (ECS stopping the task) or Ctrl-C, with the signal's number.
async fn shutdown_signal() -> i32 {
    const SIGINT: i32 = 2;
    const SIGTERM: i32 = 15;
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => SIGINT,
        () = terminate => SIGTERM,
    }
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
