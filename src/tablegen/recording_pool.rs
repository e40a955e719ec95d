//! A memory pool for tests and benches that says what the plans it served reserved.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use datafusion::error::Result as DFResult;
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};

/// Wraps a pool, remembering the names of the consumers that registered with it and the most
/// it had granted at once.
#[derive(Debug)]
pub struct RecordingPool {
    inner: Arc<dyn MemoryPool>,
    consumers: Mutex<BTreeSet<String>>,
    peak: AtomicUsize,
}

impl RecordingPool {
    pub fn new(inner: Arc<dyn MemoryPool>) -> Arc<Self> {
        Arc::new(RecordingPool {
            inner,
            consumers: Mutex::default(),
            peak: AtomicUsize::new(0),
        })
    }

    pub fn consumers(&self) -> BTreeSet<String> {
        self.consumers.lock().expect("consumers lock").clone()
    }

    /// The most reserved at once, in bytes.
    pub fn peak(&self) -> usize {
        self.peak.load(Relaxed)
    }
}

impl fmt::Display for RecordingPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordingPool({})", self.inner)
    }
}

impl MemoryPool for RecordingPool {
    fn name(&self) -> &str {
        "RecordingPool"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.consumers
            .lock()
            .expect("consumers lock")
            .insert(consumer.name().to_owned());
        self.inner.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.inner.grow(reservation, additional);
        self.peak.fetch_max(self.inner.reserved(), Relaxed);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> DFResult<()> {
        self.inner.try_grow(reservation, additional)?;
        self.peak.fetch_max(self.inner.reserved(), Relaxed);
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.inner.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.inner.memory_limit()
    }
}
