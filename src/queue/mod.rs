//! Scheduling exports through queues, as Sleeper's bulk export does: a planner turns each
//! `BulkExportQuery` into leaf-partition queries on a second queue, and runners execute those.
//! SQS in production, an in-process queue for local exports: one scheduling code path.

pub mod config;
pub mod local;
pub mod manifest;
pub mod planner;
pub mod runner;
pub mod sqs;
pub mod tables;
pub mod trust;
pub mod worker;

use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
pub use tables::TableIndex;

/// A received message: its body, and the handle that deletes it or changes its visibility.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub body: String,
    pub receipt: String,
}

/// The operations of an SQS queue that scheduling needs.
#[async_trait]
pub trait MessageQueue: Send + Sync + std::fmt::Debug {
    /// Sends every body, retrying those a batch send reports as failed.
    async fn send_all(&self, bodies: Vec<String>) -> Result<()>;
    /// Waits up to `wait` for at most `max` messages, which stay invisible for `visibility`.
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Message>>;
    async fn delete(&self, receipt: &str) -> Result<()>;
    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> Result<()>;
}
