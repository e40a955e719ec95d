//! Bulk-export settings under Sleeper's own property names, with Sleeper's defaults, read from
//! an `instance.properties` file (a local path or `s3://…`).

use std::time::Duration;

use crate::error::{Error, Result};
use crate::model::JavaProperties;
use crate::storage::Stores;

pub const QUEUE_URL: &str = "sleeper.bulk.export.queue.url";
pub const QUEUE_DLQ_URL: &str = "sleeper.bulk.export.queue.dlq.url";
pub const LEAF_QUEUE_URL: &str = "sleeper.bulk.export.leaf.partition.queue.url";
pub const LEAF_QUEUE_DLQ_URL: &str = "sleeper.bulk.export.leaf.partition.queue.dlq.url";
pub const BUCKET: &str = "sleeper.bulk.export.s3.bucket";
/// Ours, not Sleeper's (whose properties all start `sleeper.`): the rows above which the
/// planner cuts a leaf into pieces (`--max-rows-per-file`).
pub const MAX_ROWS_PER_FILE: &str = "sleeper-export.max.rows.per.file";
/// Ours too: the memory a runner's leaves share (`--memory-limit`), a size as [`parse_size`]
/// reads it.
pub const MEMORY_LIMIT: &str = "sleeper-export.memory.limit";
const WAIT_SECONDS: &str = "sleeper.bulk.export.task.wait.time.seconds";
const KEEPALIVE_SECONDS: &str = "sleeper.bulk.export.keepalive.period.seconds";
const VISIBILITY_SECONDS: &str = "sleeper.bulk.export.queue.visibility.timeout.seconds";
const FAILED_VISIBILITY_SECONDS: &str = "sleeper.bulk.export.job.failed.visibility.timeout.seconds";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkExportConfig {
    pub queue_url: Option<String>,
    pub queue_dlq_url: Option<String>,
    pub leaf_queue_url: Option<String>,
    pub leaf_queue_dlq_url: Option<String>,
    /// Where exports are written: `s3://<sleeper.bulk.export.s3.bucket>`, or any location.
    pub output: Option<String>,
    /// Long-poll wait of a receive (SQS allows at most 20 s).
    pub wait: Duration,
    /// How often a runner renews the invisibility of a message it is working on.
    pub keepalive: Duration,
    /// The invisibility a runner asks for when it receives or renews a message.
    pub visibility: Duration,
    /// The invisibility left on a message whose export failed, before it is offered again.
    pub failed_visibility: Duration,
    /// [`MAX_ROWS_PER_FILE`].
    pub max_rows_per_file: Option<u64>,
    /// [`MEMORY_LIMIT`].
    pub memory_limit: Option<usize>,
}

impl Default for BulkExportConfig {
    fn default() -> Self {
        BulkExportConfig {
            queue_url: None,
            queue_dlq_url: None,
            leaf_queue_url: None,
            leaf_queue_dlq_url: None,
            output: None,
            wait: Duration::from_secs(20),
            keepalive: Duration::from_secs(300),
            visibility: Duration::from_secs(900),
            failed_visibility: Duration::from_secs(60),
            max_rows_per_file: None,
            memory_limit: None,
        }
    }
}

impl BulkExportConfig {
    pub fn from_properties(properties: &JavaProperties) -> Result<Self> {
        let defaults = BulkExportConfig::default();
        let seconds = |key: &str, default: Duration| -> Result<Duration> {
            properties.get(key).map_or(Ok(default), |v| {
                v.trim()
                    .parse()
                    .map(Duration::from_secs)
                    .map_err(|_| Error::Property {
                        property: key.into(),
                        message: format!("{v:?} is not a whole number of seconds"),
                    })
            })
        };
        let text = |key: &str| {
            properties
                .get(key)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let wait = seconds(WAIT_SECONDS, defaults.wait)?;
        if wait > Duration::from_secs(20) {
            return Err(Error::Property {
                property: WAIT_SECONDS.into(),
                message: "SQS long polls wait at most 20 seconds".into(),
            });
        }
        Ok(BulkExportConfig {
            queue_url: text(QUEUE_URL),
            queue_dlq_url: text(QUEUE_DLQ_URL),
            leaf_queue_url: text(LEAF_QUEUE_URL),
            leaf_queue_dlq_url: text(LEAF_QUEUE_DLQ_URL),
            output: text(BUCKET).map(|bucket| format!("s3://{bucket}")),
            wait,
            keepalive: seconds(KEEPALIVE_SECONDS, defaults.keepalive)?,
            visibility: seconds(VISIBILITY_SECONDS, defaults.visibility)?,
            failed_visibility: seconds(FAILED_VISIBILITY_SECONDS, defaults.failed_visibility)?,
            max_rows_per_file: text(MAX_ROWS_PER_FILE)
                .map(|v| {
                    v.parse()
                        .ok()
                        .filter(|&rows: &u64| rows > 0)
                        .ok_or_else(|| Error::Property {
                            property: MAX_ROWS_PER_FILE.into(),
                            message: format!("{v:?} is not a number of rows greater than zero"),
                        })
                })
                .transpose()?,
            memory_limit: text(MEMORY_LIMIT)
                .map(|v| {
                    parse_size(&v).map_err(|message| Error::Property {
                        property: MEMORY_LIMIT.into(),
                        message,
                    })
                })
                .transpose()?,
        })
    }

    /// Reads `instance.properties` from a local path or an `s3://` URL.
    pub async fn load(location: &str, stores: &Stores) -> Result<Self> {
        let file = stores.resolve(location)?;
        let properties = file
            .read_properties(&file.prefix, "instance properties")
            .await?
            .ok_or_else(|| Error::location(location, "not found"))?;
        Self::from_properties(&properties)
    }

    pub fn required<'a>(value: &'a Option<String>, property: &str) -> Result<&'a str> {
        value.as_deref().ok_or_else(|| Error::Property {
            property: property.into(),
            message: "is required here: set it in instance.properties or pass it as an option"
                .into(),
        })
    }
}

/// A size in bytes: `1073741824`, `1024MiB`, `1GiB`, `64KiB` (or KB, MB, GB, the same powers
/// of two); more than zero.
pub fn parse_size(text: &str) -> std::result::Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("unknown unit {other:?}: use KiB, MiB or GiB")),
    };
    number
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|&bytes| bytes > 0)
        .ok_or_else(|| format!("{text:?} is not a size in bytes greater than zero"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sleepers_property_names_with_defaults() {
        let properties = JavaProperties::parse(
            "sleeper.bulk.export.queue.url=http://q/1\nsleeper.bulk.export.s3.bucket=exports\n\
             sleeper.bulk.export.keepalive.period.seconds=30\n",
        );
        let config = BulkExportConfig::from_properties(&properties).unwrap();
        assert_eq!(config.queue_url.as_deref(), Some("http://q/1"));
        assert_eq!(config.output.as_deref(), Some("s3://exports"));
        assert_eq!(config.keepalive, Duration::from_secs(30));
        assert_eq!(config.visibility, Duration::from_secs(900));
        assert_eq!(config.failed_visibility, Duration::from_secs(60));
        assert_eq!(config.wait, Duration::from_secs(20));
        let too_long = JavaProperties::parse("sleeper.bulk.export.task.wait.time.seconds=21\n");
        assert!(BulkExportConfig::from_properties(&too_long).is_err());
    }

    #[test]
    fn the_memory_limit_setting_is_a_size_and_a_bad_one_names_itself() {
        let config = |text: &str| {
            BulkExportConfig::from_properties(&JavaProperties::parse(&format!(
                "{MEMORY_LIMIT}={text}\n"
            )))
        };
        assert_eq!(config("512MiB").unwrap().memory_limit, Some(512 << 20));
        assert_eq!(config("3 GiB").unwrap().memory_limit, Some(3 << 30));
        assert_eq!(config("4096").unwrap().memory_limit, Some(4096));
        for bad in ["0", "12 furlongs", "-1GiB", "GiB"] {
            let error = config(bad).unwrap_err().to_string();
            assert!(error.contains(MEMORY_LIMIT), "{bad}: {error}");
        }
        let unset = BulkExportConfig::from_properties(&JavaProperties::parse("")).unwrap();
        assert_eq!(unset.memory_limit, None);
    }
}
