//! The receive loop the planner and the runners share: receive up to the free slots, handle
//! each message on a task of its own while renewing its invisibility, and on shutdown take no
//! more, give the work held a grace period, then cancel it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Message, MessageQueue};
use crate::error::{Error, Result};

/// What became of one message.
#[derive(Debug)]
pub enum Outcome<T> {
    Done(T),
    /// The message itself is bad; it went to the dead-letter queue (or, with none, was left to
    /// the queue's redrive policy).
    Rejected(Error),
    /// Something else failed; the message will be offered again.
    Failed(Error),
    /// Stopped by shutdown (the leaf named); the message is offered again at once.
    Interrupted(String),
}

/// How long the messages held at shutdown may take unless told otherwise: ECS sends SIGKILL
/// 30 seconds after SIGTERM by default.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(25);

/// What a planner or a runner does with one message. It settles the message itself: deletes
/// it when done, dead-letters it when bad, or leaves it to be offered again.
#[async_trait]
pub trait MessageHandler: Send + Sync + 'static {
    type Done: Send + 'static;

    async fn handle(
        &self,
        message: &Message,
        queue: &dyn MessageQueue,
        dead_letters: Option<&dyn MessageQueue>,
    ) -> Result<Outcome<Self::Done>>;
}

/// How a worker receives and holds its messages.
#[derive(Debug, Clone)]
pub struct WorkerLoop {
    /// Messages handled at once.
    pub concurrency: usize,
    /// Long-poll wait of a receive.
    pub wait: Duration,
    /// The invisibility asked for on receipt and at each renewal.
    pub visibility: Duration,
    /// How often the invisibility of a message being handled is renewed.
    pub keepalive: Duration,
    /// Stop once no message has arrived, and none has been held, for this long.
    pub idle_exit: Option<Duration>,
    /// On shutdown, how long the messages held may take before `cancel` is cancelled.
    pub stop_grace: Duration,
    /// What the handlers watch to stop their work (a runner's uploads abort).
    pub cancel: CancellationToken,
}

type Handling<T> = JoinSet<Result<Outcome<T>>>;

impl WorkerLoop {
    /// Handles messages from `queue` until idle or until `shutdown` completes, calling
    /// `on_outcome` as each is settled; then it takes no more and finishes those it holds.
    pub async fn run<H: MessageHandler>(
        &self,
        handler: Arc<H>,
        queue: Arc<dyn MessageQueue>,
        dead_letters: Option<Arc<dyn MessageQueue>>,
        shutdown: impl Future<Output = ()>,
        mut on_outcome: impl FnMut(Result<Outcome<H::Done>>),
    ) -> Result<()> {
        tokio::pin!(shutdown);
        let concurrency = self.concurrency.max(1);
        let mut handling: Handling<H::Done> = JoinSet::new();
        let mut idle_since = Instant::now();
        loop {
            while let Some(settled) = handling.try_join_next() {
                on_outcome(joined(settled));
            }
            if handling.len() >= concurrency {
                tokio::select! {
                    settled = handling.join_next() => on_outcome(joined(settled.expect("handling"))),
                    () = &mut shutdown => break,
                }
                continue;
            }
            if !handling.is_empty() {
                idle_since = Instant::now();
            }
            // SQS receives at most 10 messages at once.
            let free = (concurrency - handling.len()).min(10);
            let messages = tokio::select! {
                messages = queue.receive(free, self.wait, self.visibility) => messages?,
                () = &mut shutdown => break,
            };
            if messages.is_empty() {
                let idle = self
                    .idle_exit
                    .is_some_and(|idle| idle_since.elapsed() >= idle);
                if handling.is_empty() && idle {
                    break;
                }
                continue;
            }
            idle_since = Instant::now();
            for message in messages {
                let (handler, queue, dead_letters) = (
                    Arc::clone(&handler),
                    Arc::clone(&queue),
                    dead_letters.clone(),
                );
                let (keepalive, visibility) = (self.keepalive, self.visibility);
                handling.spawn(async move {
                    let handled = handler.handle(&message, queue.as_ref(), dead_letters.as_deref());
                    keeping_alive(handled, &message, queue.as_ref(), keepalive, visibility).await
                });
            }
        }
        self.finish(&mut handling, &mut on_outcome).await;
        Ok(())
    }

    /// Shutting down: the messages still held get until the grace period is over, then are
    /// cancelled. One that has settled is reported before the grace period is looked at, so a
    /// worker with none left cancels nothing: a local export (no grace) that had finished every
    /// leaf was otherwise reported cancelled whenever its timer already counted the grace over.
    async fn finish<T: Send + 'static>(
        &self,
        handling: &mut Handling<T>,
        on_outcome: &mut impl FnMut(Result<Outcome<T>>),
    ) {
        let grace = tokio::time::sleep(self.stop_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                biased;
                settled = handling.join_next() => match settled {
                    Some(settled) => on_outcome(joined(settled)),
                    None => break,
                },
                () = &mut grace, if !self.cancel.is_cancelled() => {
                    tracing::warn!(
                        held = handling.len(),
                        "stop grace period over: cancelling the messages still being handled"
                    );
                    self.cancel.cancel();
                }
            }
        }
    }
}

/// Runs `handled`, renewing `message`'s invisibility every `keepalive` until it is settled.
async fn keeping_alive<T>(
    handled: impl Future<Output = Result<T>>,
    message: &Message,
    queue: &dyn MessageQueue,
    keepalive: Duration,
    visibility: Duration,
) -> Result<T> {
    tokio::pin!(handled);
    let mut renewal = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    loop {
        tokio::select! {
            settled = &mut handled => return settled,
            _ = renewal.tick() => {
                if let Err(e) = queue.change_visibility(&message.receipt, visibility).await {
                    tracing::warn!("could not extend the visibility of a message: {e}");
                }
            }
        }
    }
}

/// A handler's task that stopped (a panic) is a failure, its message left to be offered again.
fn joined<T>(
    settled: std::result::Result<Result<Outcome<T>>, tokio::task::JoinError>,
) -> Result<Outcome<T>> {
    settled.unwrap_or_else(|error| {
        tracing::error!("a message's task stopped: {error}");
        Err(Error::DataFusion(
            datafusion::error::DataFusionError::ExecutionJoin(Box::new(error)),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::sync::watch;

    /// Records each visibility change; nothing else happens on it.
    #[derive(Debug)]
    struct RenewalsSeen {
        changes: Mutex<Vec<(String, Duration)>>,
        count: watch::Sender<usize>,
    }

    #[async_trait]
    impl MessageQueue for RenewalsSeen {
        async fn send_all(&self, _bodies: Vec<String>) -> Result<()> {
            Ok(())
        }
        async fn receive(&self, _: usize, _: Duration, _: Duration) -> Result<Vec<Message>> {
            Ok(vec![])
        }
        async fn delete(&self, _receipt: &str) -> Result<()> {
            Ok(())
        }
        async fn change_visibility(&self, receipt: &str, timeout: Duration) -> Result<()> {
            let mut changes = self.changes.lock().unwrap();
            changes.push((receipt.to_owned(), timeout));
            self.count.send_replace(changes.len());
            Ok(())
        }
    }

    /// A message held longer than the keep-alive period is renewed, with its own receipt and
    /// the worker's visibility, until it is settled.
    #[tokio::test]
    async fn a_message_being_handled_is_renewed_each_keepalive_period() {
        let (count, mut seen) = watch::channel(0);
        let queue = RenewalsSeen {
            changes: Mutex::default(),
            count,
        };
        let message = Message {
            body: "{}".into(),
            receipt: "receipt-1".into(),
        };
        // Settles once it has been renewed three times.
        let handled = async move {
            seen.wait_for(|&renewals| renewals >= 3).await.unwrap();
            Ok(())
        };
        let renewing = keeping_alive(
            handled,
            &message,
            &queue,
            Duration::from_millis(10),
            Duration::from_secs(60),
        );
        tokio::time::timeout(Duration::from_secs(30), renewing)
            .await
            .expect("renewed three times within 30 s")
            .unwrap();
        let changes = queue.changes.lock().unwrap();
        assert!(changes.len() >= 3, "{changes:?}");
        assert!(
            changes
                .iter()
                .all(|change| *change == ("receipt-1".to_owned(), Duration::from_secs(60))),
            "{changes:?}"
        );
    }

    fn stopping_at_once(cancel: &CancellationToken) -> WorkerLoop {
        WorkerLoop {
            concurrency: 1,
            wait: Duration::ZERO,
            visibility: Duration::ZERO,
            keepalive: Duration::from_secs(60),
            idle_exit: None,
            stop_grace: Duration::ZERO,
            cancel: cancel.clone(),
        }
    }

    #[tokio::test]
    async fn a_worker_with_nothing_left_cancels_nothing_when_its_grace_is_over() {
        // A grace period over at once: the race a zero grace period on a busy timer can lose.
        for _ in 0..64 {
            let cancel = CancellationToken::new();
            let mut settled: Vec<Result<Outcome<()>>> = vec![];
            stopping_at_once(&cancel)
                .finish(&mut JoinSet::new(), &mut |outcome| settled.push(outcome))
                .await;
            assert!(!cancel.is_cancelled());
            assert!(settled.is_empty());
        }
    }

    #[tokio::test]
    async fn work_still_held_when_the_grace_is_over_is_cancelled_and_reported() {
        let cancel = CancellationToken::new();
        let mut handling: Handling<()> = JoinSet::new();
        let stopping = cancel.clone();
        handling.spawn(async move {
            stopping.cancelled().await;
            Ok(Outcome::Interrupted("leaf".into()))
        });
        let mut interrupted = vec![];
        stopping_at_once(&cancel)
            .finish(&mut handling, &mut |outcome| {
                if let Ok(Outcome::Interrupted(leaf)) = outcome {
                    interrupted.push(leaf);
                }
            })
            .await;
        assert!(cancel.is_cancelled());
        assert_eq!(interrupted, vec!["leaf".to_owned()]);
    }
}
