//! An in-process queue with SQS's semantics (visibility timeouts, receive counts, a dead-letter
//! queue after `max_receives`), for local exports and for unit tests of the scheduling logic.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{Message, MessageQueue};
use crate::error::Result;

#[derive(Debug)]
struct Entry {
    body: String,
    visible_at: Instant,
    receives: u32,
    receipt: u64,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    entries: BTreeMap<u64, Entry>,
}

#[derive(Debug, Clone)]
pub struct LocalQueue {
    state: Arc<Mutex<State>>,
    arrived: Arc<Notify>,
    dead_letters: Option<(Arc<LocalQueue>, u32)>,
}

impl Default for LocalQueue {
    fn default() -> Self {
        LocalQueue {
            state: Arc::default(),
            arrived: Arc::new(Notify::new()),
            dead_letters: None,
        }
    }
}

impl LocalQueue {
    /// Messages received `max_receives` times without being deleted move to `dead_letters`.
    pub fn with_dead_letters(dead_letters: Arc<LocalQueue>, max_receives: u32) -> Self {
        LocalQueue {
            dead_letters: Some((dead_letters, max_receives)),
            ..LocalQueue::default()
        }
    }

    pub fn len(&self) -> usize {
        self.state.lock().expect("queue lock").entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bodies(&self) -> Vec<String> {
        self.state
            .lock()
            .expect("queue lock")
            .entries
            .values()
            .map(|e| e.body.clone())
            .collect()
    }

    fn take_visible(&self, max: usize, visibility: Duration) -> Vec<Message> {
        let now = Instant::now();
        let mut state = self.state.lock().expect("queue lock");
        let mut moved = Vec::new();
        let mut taken = Vec::new();
        let State { next_id, entries } = &mut *state;
        for (id, entry) in entries.iter_mut() {
            if taken.len() == max {
                break;
            }
            if entry.visible_at > now {
                continue;
            }
            if let Some((_, max_receives)) = &self.dead_letters {
                if entry.receives >= *max_receives {
                    moved.push(*id);
                    continue;
                }
            }
            entry.receives += 1;
            entry.visible_at = now + visibility;
            *next_id += 1;
            entry.receipt = *next_id;
            taken.push(Message {
                body: entry.body.clone(),
                receipt: format!("{id}:{}", entry.receipt),
            });
        }
        let moved: Vec<String> = moved
            .into_iter()
            .filter_map(|id| entries.remove(&id))
            .map(|e| e.body)
            .collect();
        drop(state);
        if let (Some((dead_letters, _)), false) = (&self.dead_letters, moved.is_empty()) {
            dead_letters.push(moved);
        }
        taken
    }

    fn push(&self, bodies: Vec<String>) {
        let mut state = self.state.lock().expect("queue lock");
        for body in bodies {
            state.next_id += 1;
            let id = state.next_id;
            state.entries.insert(
                id,
                Entry {
                    body,
                    visible_at: Instant::now(),
                    receives: 0,
                    receipt: 0,
                },
            );
        }
        drop(state);
        self.arrived.notify_waiters();
    }

    /// The entry a receipt names, if the receipt is still the entry's latest.
    fn with_receipt<T>(&self, receipt: &str, f: impl FnOnce(&mut State, u64) -> T) -> Option<T> {
        let (id, version) = receipt.split_once(':')?;
        let (id, version): (u64, u64) = (id.parse().ok()?, version.parse().ok()?);
        let mut state = self.state.lock().expect("queue lock");
        (state.entries.get(&id)?.receipt == version).then(|| f(&mut state, id))
    }
}

#[async_trait]
impl MessageQueue for LocalQueue {
    async fn send_all(&self, bodies: Vec<String>) -> Result<()> {
        self.push(bodies);
        Ok(())
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Message>> {
        let deadline = Instant::now() + wait;
        loop {
            let arrived = self.arrived.notified();
            let taken = self.take_visible(max, visibility);
            let now = Instant::now();
            if !taken.is_empty() || now >= deadline {
                return Ok(taken);
            }
            // Woken by a send, or soon enough to see a visibility timeout run out.
            let _ = tokio::time::timeout((deadline - now).min(Duration::from_millis(50)), arrived)
                .await;
        }
    }

    async fn delete(&self, receipt: &str) -> Result<()> {
        self.with_receipt(receipt, |state, id| state.entries.remove(&id));
        Ok(())
    }

    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> Result<()> {
        self.with_receipt(receipt, |state, id| {
            if let Some(entry) = state.entries.get_mut(&id) {
                entry.visible_at = Instant::now() + timeout;
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_come_back_after_their_visibility_timeout_then_go_to_the_dead_letters() {
        let dead_letters = Arc::new(LocalQueue::default());
        let queue = LocalQueue::with_dead_letters(Arc::clone(&dead_letters), 2);
        queue.send_all(vec!["m".into()]).await.unwrap();
        let short = Duration::from_millis(20);
        assert_eq!(
            queue.receive(1, Duration::ZERO, short).await.unwrap().len(),
            1
        );
        assert!(
            queue
                .receive(1, Duration::ZERO, short)
                .await
                .unwrap()
                .is_empty(),
            "invisible while held"
        );
        let again = queue
            .receive(1, Duration::from_secs(1), short)
            .await
            .unwrap();
        assert_eq!(again.len(), 1, "visible again once the timeout ran out");
        tokio::time::sleep(short * 2).await;
        assert!(queue
            .receive(1, Duration::ZERO, short)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(dead_letters.bodies(), ["m"]);
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn a_stale_receipt_deletes_nothing() {
        let queue = LocalQueue::default();
        queue.send_all(vec!["m".into()]).await.unwrap();
        let first = queue
            .receive(1, Duration::ZERO, Duration::ZERO)
            .await
            .unwrap()
            .remove(0);
        let second = queue
            .receive(1, Duration::ZERO, Duration::from_secs(60))
            .await
            .unwrap()
            .remove(0);
        queue.delete(&first.receipt).await.unwrap();
        assert_eq!(queue.len(), 1);
        queue.delete(&second.receipt).await.unwrap();
        assert!(queue.is_empty());
    }
}
