//! Amazon SQS, configured from the standard AWS sources (`AWS_ENDPOINT_URL`, `AWS_REGION`,
//! credentials), so AWS, LocalStack and moto all work unchanged.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use aws_sdk_sqs::Client;
use futures::{StreamExt, TryStreamExt};

use super::{Message, MessageQueue};
use crate::error::{Error, Result};

/// SQS takes at most ten messages per batch send.
const SEND_BATCH: usize = 10;
/// Batch sends under way at once.
const BATCHES_IN_FLIGHT: usize = 8;
/// Tries for a message that a batch send reports as failed (throttled, for instance).
const SEND_TRIES: usize = 5;

#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
}

impl SqsQueue {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        SqsQueue {
            client,
            url: url.into(),
        }
    }

    /// A client from the standard AWS configuration chain.
    pub async fn client() -> Client {
        Client::new(&aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends up to ten messages, retrying those the batch reports as failed.
    async fn send_batch(&self, chunk: &[String]) -> Result<()> {
        let mut pending: Vec<(String, &String)> = chunk
            .iter()
            .enumerate()
            .map(|(i, b)| (i.to_string(), b))
            .collect();
        for attempt in 1..=SEND_TRIES {
            let entries = pending
                .iter()
                .map(|(id, body)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(id)
                        .message_body(*body)
                        .build()
                })
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| self.error("building a batch", e))?;
            let sent = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| self.error("sending messages", e))?;
            let failed: Vec<&str> = sent.failed().iter().map(|f| f.id()).collect();
            if failed.is_empty() {
                break;
            }
            if attempt == SEND_TRIES {
                let reasons: Vec<String> = sent
                    .failed()
                    .iter()
                    .map(|f| format!("{}: {}", f.code(), f.message().unwrap_or_default()))
                    .collect();
                return Err(Error::Queue {
                    queue: self.url.clone(),
                    message: format!(
                        "{} messages not sent after {SEND_TRIES} tries: {}",
                        failed.len(),
                        reasons.join("; ")
                    ),
                });
            }
            pending.retain(|(id, _)| failed.contains(&id.as_str()));
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        Ok(())
    }

    fn error(&self, action: &str, error: impl std::error::Error) -> Error {
        Error::Queue {
            queue: self.url.clone(),
            message: format!("{action}: {}", DisplayErrorContext(error)),
        }
    }
}

#[async_trait]
impl MessageQueue for SqsQueue {
    async fn send_all(&self, bodies: Vec<String>) -> Result<()> {
        // Batches go out a few at a time: each is a round trip, and planning a large table is
        // bounded by their latency, not by SQS.
        let sends: Vec<_> = bodies
            .chunks(SEND_BATCH)
            .map(|chunk| self.send_batch(chunk))
            .collect();
        futures::stream::iter(sends)
            .buffer_unordered(BATCHES_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Message>> {
        let received = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .visibility_timeout(visibility.as_secs() as i32)
            .send()
            .await
            .map_err(|e| self.error("receiving messages", e))?;
        Ok(received
            .messages()
            .iter()
            .filter_map(|m| {
                Some(Message {
                    body: m.body()?.to_owned(),
                    receipt: m.receipt_handle()?.to_owned(),
                })
            })
            .collect())
    }

    async fn delete(&self, receipt: &str) -> Result<()> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| self.error("deleting a message", e))?;
        Ok(())
    }

    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> Result<()> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(timeout.as_secs() as i32)
            .send()
            .await
            .map_err(|e| self.error("changing a message's visibility", e))?;
        Ok(())
    }
}
