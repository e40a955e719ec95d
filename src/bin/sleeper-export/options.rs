//! What several commands take: the instance, export settings, the queues; and how tables are
//! opened and a stop is signalled.

use std::time::Duration;

use clap::Args;
use sleeper_export::instance::{find_config_bucket, Instance, INSTANCE_PROPERTIES};
use sleeper_export::leaf::{ExportOptions, DEFAULT_MEMORY_LIMIT};
use sleeper_export::model::KeyOrder;
use sleeper_export::queue::config::{parse_size, BulkExportConfig};
use sleeper_export::queue::TableIndex;
use sleeper_export::storage::Stores;
use sleeper_export::table::SleeperTable;
use sleeper_export::Result;

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
    pub async fn bucket(&self, stores: &Stores) -> Result<Option<String>> {
        match (&self.config_bucket, &self.instance) {
            (Some(bucket), _) => Ok(Some(bucket.clone())),
            (None, Some(instance)) => Ok(Some(find_config_bucket(instance, stores).await?)),
            (None, None) => Ok(None),
        }
    }

    pub async fn open(&self, stores: &Stores) -> Result<Option<Instance>> {
        match self.bucket(stores).await? {
            Some(bucket) => Ok(Some(Instance::open(&bucket, stores).await?)),
            None => Ok(None),
        }
    }
}

/// How leaves are exported, where the table's own settings are not what is wanted.
#[derive(Debug, Args, Clone)]
pub struct ExportSettingsArgs {
    /// The order of the table's files: `datafusion` (unsigned bytes) or `java` (UTF-16 strings,
    /// signed bytes), instead of its data engine's (sleeper.table.data.engine).
    #[arg(long, value_name = "ENGINE")]
    pub key_order: Option<KeyOrder>,
    /// The codec to write (uncompressed, snappy, gzip, lz4, brotli, zstd), instead of the
    /// table's (sleeper.table.parquet.compression.codec).
    #[arg(long, value_name = "CODEC")]
    pub compression: Option<String>,
    /// The memory the leaves exported at once share, as one DataFusion pool: what each reads,
    /// decodes and writes, and its SQL's joins, sorts and aggregations. In bytes or with a
    /// unit: 512MiB, 2GiB (default: sleeper-export.memory.limit in instance.properties for
    /// `run`, else 1GiB). A leaf that cannot get the least it needs fails, naming the limit.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory_limit: Option<usize>,
}

impl ExportSettingsArgs {
    pub fn options(&self) -> ExportOptions {
        ExportOptions {
            key_order: self.key_order,
            compression: self.compression.clone(),
            memory_limit: self.memory_limit.unwrap_or(DEFAULT_MEMORY_LIMIT),
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
    pub async fn config(&self, stores: &Stores) -> Result<BulkExportConfig> {
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

/// A table at a location, or with an instance, the instance's table of that name.
pub async fn open_table(
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
pub async fn open_tables(
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

/// Completes on SIGTERM (ECS stopping the task) or Ctrl-C, with the signal's number.
pub async fn shutdown_signal() -> i32 {
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
