//! A live Sleeper instance: its properties in the config bucket, its table index and state-store
//! logs in DynamoDB, its tables' data in the data bucket.

use std::collections::HashMap;

use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use crate::error::{Error, Result};
use crate::model::{JavaProperties, TableProperties};
use crate::statestore::transaction_log::{LogTables, TransactionLogStateStore};
use crate::storage::{Location, Stores};
use crate::table::SleeperTable;

pub const INSTANCE_PROPERTIES: &str = "instance.properties";
const DATA_BUCKET: &str = "sleeper.data.bucket";
const TABLE_NAME_INDEX: &str = "sleeper.tables.name.index.dynamo.table";
const FILES_LOG: &str = "sleeper.statestore.transactionlog.dynamo.file.log.table";
const PARTITIONS_LOG: &str = "sleeper.statestore.transactionlog.dynamo.partition.log.table";
const LATEST_SNAPSHOTS: &str = "sleeper.statestore.transactionlog.dynamo.latest.snapshots.table";

/// The config bucket Sleeper 0.35 and later creates for an instance id in an AWS account
/// (`InstanceProperties.getConfigBucketFromAccountAndInstanceId`): lower case, the id's dots
/// made dashes.
pub fn config_bucket(instance_id: &str, account: &str) -> String {
    format!("sleeper-{}-config-{account}", instance_id.replace('.', "-")).to_lowercase()
}

/// The config bucket of an instance created by Sleeper before 0.35.
pub fn legacy_config_bucket(instance_id: &str) -> String {
    format!("sleeper-{}-config", instance_id.to_lowercase())
}

/// A table of the instance, as its name index lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableEntry {
    pub name: String,
    pub id: String,
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub properties: JavaProperties,
    config: Location,
    data: Location,
    dynamo: Client,
    stores: Stores,
}

impl Instance {
    /// Opens the instance whose config bucket is `config_bucket` (see [`config_bucket`]).
    /// DynamoDB is reached through the standard AWS configuration, as S3 and SQS are.
    pub async fn open(config_bucket: &str, stores: &Stores) -> Result<Instance> {
        let config = stores.resolve(&format!("s3://{config_bucket}"))?;
        let properties = read_properties(&config, INSTANCE_PROPERTIES).await?;
        let data_bucket = required(&properties, DATA_BUCKET)?;
        let data = stores.resolve(&format!("s3://{data_bucket}"))?;
        let dynamo = Client::new(&aws_settings().await);
        Ok(Instance {
            properties,
            config,
            data,
            dynamo,
            stores: stores.clone(),
        })
    }

    /// Opens the instance with this id, from the config bucket [`find_config_bucket`] finds.
    pub async fn open_by_id(instance_id: &str, stores: &Stores) -> Result<Instance> {
        Self::open(&find_config_bucket(instance_id, stores).await?, stores).await
    }

    /// Every table, by name, from the instance's table index.
    pub async fn tables(&self) -> Result<Vec<TableEntry>> {
        let index = required(&self.properties, TABLE_NAME_INDEX)?;
        let mut tables = Vec::new();
        let mut start = None;
        loop {
            let response = self
                .dynamo
                .scan()
                .table_name(index)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.index_error(index, e))?;
            tables.extend(response.items.unwrap_or_default().iter().filter_map(entry));
            match response.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        tables.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(tables)
    }

    /// The id of the table called `name`, looked up in the name index as Sleeper does.
    pub async fn table_id(&self, name: &str) -> Result<String> {
        let index = required(&self.properties, TABLE_NAME_INDEX)?;
        let response = self
            .dynamo
            .query()
            .table_name(index)
            .key_condition_expression("TableName = :name")
            .expression_attribute_values(":name", AttributeValue::S(name.to_owned()))
            .send()
            .await
            .map_err(|e| self.index_error(index, e))?;
        response
            .items
            .unwrap_or_default()
            .iter()
            .find_map(entry)
            .map(|table| table.id)
            .ok_or_else(|| Error::TableNotFound {
                by: "name",
                value: name.to_owned(),
            })
    }

    /// Opens a table by id: its properties from the config bucket, its state from the
    /// transaction logs, its data under `s3://<dataBucket>/<tableId>`.
    pub async fn open_table(&self, table_id: &str) -> Result<SleeperTable> {
        let properties =
            read_properties(&self.config, &format!("tables/table-{table_id}.properties"))
                .await
                .map_err(|e| match e {
                    Error::Location { .. } => Error::TableNotFound {
                        by: "ID",
                        value: table_id.to_owned(),
                    },
                    other => other,
                })?;
        let properties = TableProperties::from_java_with_defaults(properties, &self.properties)?;
        let state = TransactionLogStateStore::new(
            table_id,
            properties.schema.clone(),
            self.dynamo.clone(),
            LogTables {
                files: required(&self.properties, FILES_LOG)?.to_owned(),
                partitions: required(&self.properties, PARTITIONS_LOG)?.to_owned(),
                latest_snapshots: required(&self.properties, LATEST_SNAPSHOTS)?.to_owned(),
            },
            self.data.clone(),
            self.stores.clone(),
        );
        let location = self.data.sub_location(table_id);
        SleeperTable::from_state(location, properties, &state, &self.stores).await
    }

    /// Opens the table called `name`.
    pub async fn open_table_named(&self, name: &str) -> Result<SleeperTable> {
        let id = self.table_id(name).await?;
        self.open_table(&id).await
    }

    fn index_error(&self, index: &str, error: impl std::error::Error) -> Error {
        Error::TableIndex {
            index: index.to_owned(),
            message: DisplayErrorContext(error).to_string(),
        }
    }
}

async fn aws_settings() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// The config bucket of the instance with this id: Sleeper 0.35's name, with the AWS account STS
/// says the credentials belong to, where that bucket holds the instance's properties; otherwise
/// the name Sleeper gave it before 0.35.
pub async fn find_config_bucket(instance_id: &str, stores: &Stores) -> Result<String> {
    let account = aws_sdk_sts::Client::new(&aws_settings().await)
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| DisplayErrorContext(e).to_string())
        .and_then(|identity| {
            identity
                .account
                .ok_or_else(|| "STS named no account".into())
        });
    let mut tried = Vec::new();
    let named_by_account = account
        .as_ref()
        .ok()
        .map(|account| config_bucket(instance_id, account));
    for bucket in named_by_account
        .into_iter()
        .chain([legacy_config_bucket(instance_id)])
    {
        let config = stores.resolve(&format!("s3://{bucket}"))?;
        match read_properties(&config, INSTANCE_PROPERTIES).await {
            Ok(_) => return Ok(bucket),
            Err(Error::Location { .. }) => tried.push(bucket),
            Err(other) => return Err(other),
        }
    }
    let account_note = match &account {
        Ok(_) => String::new(),
        Err(e) => format!(" (the account for Sleeper 0.35's name could not be found: STS: {e})"),
    };
    Err(Error::InstanceNotFound {
        instance_id: instance_id.to_owned(),
        message: format!(
            "no config bucket holds its {INSTANCE_PROPERTIES}; tried {}{account_note}. Give the \
             bucket with --config-bucket",
            tried.join(" and ")
        ),
    })
}

fn entry(item: &HashMap<String, AttributeValue>) -> Option<TableEntry> {
    match (item.get("TableName"), item.get("TableId")) {
        (Some(AttributeValue::S(name)), Some(AttributeValue::S(id))) => Some(TableEntry {
            name: name.clone(),
            id: id.clone(),
        }),
        _ => None,
    }
}

fn required<'a>(properties: &'a JavaProperties, name: &str) -> Result<&'a str> {
    properties.get(name).ok_or_else(|| Error::Property {
        property: name.to_owned(),
        message: "not set in the instance properties".into(),
    })
}

async fn read_properties(bucket: &Location, key: &str) -> Result<JavaProperties> {
    let path = bucket.child(key);
    bucket
        .read_properties(&path, "properties")
        .await?
        .ok_or_else(|| Error::location(bucket.url_of(&path), "not found"))
}
