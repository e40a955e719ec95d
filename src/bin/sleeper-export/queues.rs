//! The distributed export: `submit`, `plan`, `run` and `status`.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use sleeper_export::leaf::{ExportOptions, DEFAULT_MEMORY_LIMIT};
use sleeper_export::query::BulkExportQuery;
use sleeper_export::queue::config::{self as queue_config, BulkExportConfig};
use sleeper_export::queue::manifest::{ExportRecords, ExportStatus, Listing, LISTED_BY_DEFAULT};
use sleeper_export::queue::planner::Planner;
use sleeper_export::queue::runner::Runner;
use sleeper_export::queue::sqs::SqsQueue;
use sleeper_export::queue::worker::Outcome;
use sleeper_export::queue::MessageQueue;
use sleeper_export::storage::Stores;
use sleeper_export::Result;

use crate::allocator;
use crate::options::{open_tables, shutdown_signal, ExportSettingsArgs, QueueArgs};

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
    /// SQL over each leaf's rows, which are the view query_results (Sleeper's sqlQuery).
    #[arg(long, value_name = "QUERY")]
    pub sql: Option<String>,
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
    /// Cut a leaf whose files hold more rows than this into key ranges of about this many rows,
    /// a leaf query each (default: sleeper-export.max.rows.per.file in instance.properties; a
    /// leaf is one file without either).
    #[arg(long, value_name = "ROWS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_rows_per_file: Option<u64>,
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
    /// How many leaves of each kind (pending, failed, problems, …) to name; the rest are
    /// counted, so that the status of any export fits in memory.
    #[arg(long, default_value_t = LISTED_BY_DEFAULT)]
    pub list: usize,
}

pub async fn submit(args: SubmitArgs, stores: &Stores) -> Result<()> {
    let config = args.queues.config(stores).await?;
    let url = BulkExportConfig::required(&config.queue_url, queue_config::QUEUE_URL)?;
    let query = BulkExportQuery {
        table_id: args.table_id,
        table_name: args.table_name,
        export_id: args.export_id,
        sql_query: args.sql,
    }
    .with_export_id();
    query.validate()?;
    SqsQueue::new(SqsQueue::client().await, url)
        .send_all(vec![query.to_json()])
        .await?;
    println!("{}", query.export_id.expect("with_export_id sets it"));
    Ok(())
}

pub async fn plan(
    PlanArgs {
        worker: args,
        settings,
        max_rows_per_file,
    }: PlanArgs,
    stores: &Stores,
) -> Result<()> {
    let config = args.queues.config(stores).await?;
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
        tables: open_tables(&args.tables, &args.queues.instance, stores).await?,
        output: stores.resolve(BulkExportConfig::required(
            &config.output,
            queue_config::BUCKET,
        )?)?,
        export: ExportOptions {
            max_rows_per_file: max_rows_per_file.or(config.max_rows_per_file),
            ..settings.options()
        },
    };
    let stopped = async {
        let signal = shutdown_signal().await;
        tracing::info!(
            signal,
            "stopping: no new query is taken; the one being planned is finished"
        );
    };
    let outcomes = planner
        .run(
            Arc::new(queue),
            dead_letters.map(|q| Arc::new(q) as Arc<dyn MessageQueue>),
            Arc::new(leaf_queue),
            &config,
            args.idle_exit_seconds.map(Duration::from_secs),
            stopped,
        )
        .await?;
    println!(
        "planned {} queries",
        outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Done(_)))
            .count()
    );
    Ok(())
}

pub async fn run(
    RunArgs {
        worker: args,
        settings,
        concurrency,
        stop_grace_seconds,
    }: RunArgs,
    stores: &Stores,
) -> Result<()> {
    let config = args.queues.config(stores).await?;
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
            open_tables(&args.tables, &args.queues.instance, stores).await?,
            output,
            ExportOptions {
                memory_limit: settings
                    .memory_limit
                    .or(config.memory_limit)
                    .unwrap_or(DEFAULT_MEMORY_LIMIT),
                ..settings.options()
            },
            config,
        )
        .with_concurrency(concurrency)
        .with_idle_exit(args.idle_exit_seconds.map(Duration::from_secs))
        .with_stop_grace(Duration::from_secs(stop_grace_seconds)),
    );
    let stopped = async {
        let signal = shutdown_signal().await;
        tracing::info!(
            signal,
            "stopping: no new work is taken; running leaves get {stop_grace_seconds} \
             seconds to finish"
        );
    };
    let report = runner
        .run_reporting(leaf_queue, dead_letters, stopped, |_| {
            allocator::release_freed_memory();
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
    Ok(())
}

pub async fn status(args: StatusArgs, stores: &Stores) -> Result<()> {
    let config = args.queues.config(stores).await?;
    let output = stores.resolve(BulkExportConfig::required(
        &config.output,
        queue_config::BUCKET,
    )?)?;
    let status = ExportRecords::new(&output, &args.table_id, &args.export_id)
        .status_listing(args.list, |_| {})
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
    Ok(())
}

fn print_status(args: &StatusArgs, status: &ExportStatus) {
    println!(
        "export {} of table {}: {} leaves, {} done, {} pending, {} failed: {}",
        args.export_id,
        args.table_id,
        status.manifest.sub_exports,
        status.done.len(),
        status.pending.len(),
        status.failed.len(),
        match (status.is_complete(), status.success_marker) {
            (true, true) => "complete (_SUCCESS written)",
            (true, false) => "complete",
            (false, _) => "not complete",
        }
    );
    if let Some(sql) = &status.manifest.sql_query {
        println!("  each leaf's rows through the SQL: {sql}");
    }
    print_listing(&status.failed, |failure| {
        format!(
            "failed: leaf {} ({}): {}",
            failure.leaf_partition_id, failure.sub_export_id, failure.error
        )
    });
    print_listing(&status.problems, |problem| format!("problem: {problem}"));
    print_listing(&status.unexpected, |object| {
        format!("not a file of the export: {object}")
    });
    print_listing(&status.unfinished_uploads, |upload| {
        format!("unfinished upload: {upload}")
    });
}

fn print_listing<T>(listing: &Listing<T>, line: impl Fn(&T) -> String) {
    for item in &listing.first {
        println!("  {}", line(item));
    }
    if listing.not_listed() > 0 {
        println!(
            "  … and {} more (--list N names more)",
            listing.not_listed()
        );
    }
}
