//! Sleeper's transaction-log state store, as a live instance keeps it: the latest snapshot of each
//! log in the data bucket, pointed to from DynamoDB, then every later transaction of the file
//! and partition logs (DynamoDB items, large bodies in the data bucket).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use tokio::sync::OnceCell;

use super::state::TableState;
use super::transaction::{Log, Transaction};
use super::{snapshot, StateStore};
use crate::error::{Error, Result};
use crate::model::StateVersion;
use crate::model::{Partition, Schema, StateFile};
use crate::storage::read_all;
use crate::storage::{Location, Stores};

/// The DynamoDB tables of an instance's transaction logs (Sleeper's instance properties
/// `sleeper.statestore.transactionlog.dynamo.*`).
#[derive(Debug, Clone)]
pub struct LogTables {
    pub files: String,
    pub partitions: String,
    pub latest_snapshots: String,
}

#[derive(Debug)]
pub struct TransactionLogStateStore {
    table_id: String,
    schema: Schema,
    dynamo: Client,
    tables: LogTables,
    /// `s3://<dataBucket>`: snapshot paths and transaction bodies are relative to it.
    data: Location,
    stores: Stores,
    loaded: OnceCell<(TableState, StateVersion)>,
}

type Item = HashMap<String, AttributeValue>;

impl TransactionLogStateStore {
    pub fn new(
        table_id: impl Into<String>,
        schema: Schema,
        dynamo: Client,
        tables: LogTables,
        data: Location,
        stores: Stores,
    ) -> Self {
        TransactionLogStateStore {
            table_id: table_id.into(),
            schema,
            dynamo,
            tables,
            data,
            stores,
            loaded: OnceCell::new(),
        }
    }

    fn error(&self, message: String) -> Error {
        Error::StateStore {
            table: self.table_id.clone(),
            message,
        }
    }

    async fn loaded(&self) -> Result<&(TableState, StateVersion)> {
        self.loaded.get_or_try_init(|| self.load()).await
    }

    /// The latest snapshots, then the transactions after each: one consistent state, with the
    /// numbers of the last transactions it includes.
    async fn load(&self) -> Result<(TableState, StateVersion)> {
        let latest = self.latest_snapshots().await?;
        let text = |name: &str| latest.as_ref().and_then(|item| string(item, name));
        let number = |name: &str| latest.as_ref().and_then(|item| number(item, name));
        let partitions = match text("PARTITIONS_SNAPSHOT_PATH") {
            Some(path) => {
                let (url, bytes) = self.read(&path).await?;
                snapshot::read_partitions(&bytes, &url, &self.schema)?
            }
            None => vec![],
        };
        let files = match text("FILES_SNAPSHOT_PATH") {
            Some(path) => {
                let (url, bytes) = self.read(&path).await?;
                snapshot::read_files(&bytes, &url)?
            }
            None => vec![],
        };
        let mut state = TableState::new(partitions, files);
        let partitions_transaction = self
            .apply_log(
                Log::Partitions,
                number("PARTITIONS_TRANSACTION_NUMBER").unwrap_or(0),
                &mut state,
            )
            .await?;
        let files_transaction = self
            .apply_log(
                Log::Files,
                number("FILES_TRANSACTION_NUMBER").unwrap_or(0),
                &mut state,
            )
            .await?;
        Ok((
            state,
            StateVersion {
                files_transaction,
                partitions_transaction,
            },
        ))
    }

    async fn latest_snapshots(&self) -> Result<Option<Item>> {
        let response = self
            .dynamo
            .query()
            .table_name(&self.tables.latest_snapshots)
            .key_condition_expression("TABLE_ID = :table_id")
            .expression_attribute_values(":table_id", AttributeValue::S(self.table_id.clone()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.dynamo_error(&self.tables.latest_snapshots, e))?;
        Ok(response.items.and_then(|items| items.into_iter().next()))
    }

    /// Applies every transaction of `log` after `after`, as Sleeper's `TransactionLogHead` reads
    /// a log: in order, whatever the numbers (Sleeper does not look for gaps), skipping
    /// with a warning a transaction of the other log's kind. Returns the number of the last one
    /// applied, which is where Sleeper's head stands after reading.
    async fn apply_log(&self, log: Log, after: u64, state: &mut TableState) -> Result<u64> {
        let table = match log {
            Log::Files => &self.tables.files,
            Log::Partitions => &self.tables.partitions,
        };
        let mut last = after;
        let mut read = after;
        let mut start: Option<Item> = None;
        loop {
            let response = self
                .dynamo
                .query()
                .table_name(table)
                .key_condition_expression("TABLE_ID = :table_id AND TRANSACTION_NUMBER > :number")
                .expression_attribute_values(":table_id", AttributeValue::S(self.table_id.clone()))
                .expression_attribute_values(":number", AttributeValue::N(after.to_string()))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.dynamo_error(table, e))?;
            for item in response.items.unwrap_or_default() {
                let transaction_number = number(&item, "TRANSACTION_NUMBER").ok_or_else(|| {
                    self.error(format!("an item of {table} has no TRANSACTION_NUMBER"))
                })?;
                if transaction_number != read + 1 {
                    tracing::warn!(
                        "table {}: {table} goes from transaction {read} to {transaction_number}; \
                         applying what is there, as Sleeper does",
                        self.table_id
                    );
                }
                read = transaction_number;
                let context = |kind: &str| {
                    format!(
                        "table {}, {table} transaction {transaction_number}, {kind}",
                        self.table_id
                    )
                };
                let kind = string(&item, "TYPE").unwrap_or_default();
                let body = self.body_of(&item, table, transaction_number).await?;
                let in_context = |error: Error| match error {
                    Error::Transaction {
                        context: kind,
                        message,
                    } => Error::Transaction {
                        context: context(&kind),
                        message,
                    },
                    other => other,
                };
                let transaction =
                    Transaction::from_json(&kind, &body, &self.schema).map_err(in_context)?;
                if state.apply_from_log(log, transaction).map_err(in_context)? {
                    last = transaction_number;
                } else {
                    tracing::warn!(
                        "table {}: skipping {kind} transaction {transaction_number} found in {table}, \
                         the log of the other kind, as Sleeper does",
                        self.table_id
                    );
                }
            }
            match response.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(last),
            }
        }
    }

    /// A transaction's JSON body: in its item, or in the data bucket where it is too big.
    async fn body_of(&self, item: &Item, table: &str, transaction_number: u64) -> Result<String> {
        match (string(item, "BODY"), string(item, "BODY_S3_KEY")) {
            (Some(body), _) => Ok(body),
            (None, Some(key)) => {
                let (url, bytes) = self.read(&key).await?;
                String::from_utf8(bytes.to_vec())
                    .map_err(|_| self.error(format!("transaction body {url} is not UTF-8")))
            }
            (None, None) => Err(self.error(format!(
                "transaction {transaction_number} of {table} has neither BODY nor BODY_S3_KEY"
            ))),
        }
    }

    /// A snapshot path or transaction body key: a full URL, or a key in the data bucket.
    async fn read(&self, path: &str) -> Result<(String, bytes::Bytes)> {
        let location = if path.contains("://") {
            self.stores.resolve(path)?
        } else {
            self.data.sub_location(path)
        };
        let url = location.url.to_string();
        let bytes = read_all(location.store.as_ref(), &location.prefix)
            .await
            .map_err(|e| Error::object_store(&url, e))?;
        Ok((url, bytes))
    }

    fn dynamo_error(&self, table: &str, error: impl std::error::Error) -> Error {
        self.error(format!(
            "reading DynamoDB table {table}: {}",
            DisplayErrorContext(error)
        ))
    }
}

fn string(item: &Item, name: &str) -> Option<String> {
    match item.get(name) {
        Some(AttributeValue::S(value)) => Some(value.clone()),
        _ => None,
    }
}

fn number(item: &Item, name: &str) -> Option<u64> {
    match item.get(name) {
        Some(AttributeValue::N(value)) => value.parse().ok(),
        _ => None,
    }
}

#[async_trait]
impl StateStore for TransactionLogStateStore {
    async fn partitions(&self) -> Result<Vec<Partition>> {
        Ok(self.loaded().await?.0.partitions())
    }

    async fn files(&self) -> Result<Vec<StateFile>> {
        Ok(self.loaded().await?.0.files())
    }

    async fn version(&self) -> Result<Option<StateVersion>> {
        Ok(Some(self.loaded().await?.1))
    }
}
