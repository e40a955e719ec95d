//! How a leaf's plan sizes what it holds from DataFusion's memory pool, as DataFusion's own
//! sorts do: each node reserves from the task context's pool what it fetches, decodes and
//! buffers, so that one limit bounds every leaf running at once.
//!
//! A leaf is told its share of the pool (the limit over the leaves run at once) through the
//! session's config; its merge sizes its read budgets to half of it at most, and its writer
//! holds the rest as it encodes and uploads. Where no share is given (a plan run in a caller's own
//! session) the share is the pool's whole limit.

use datafusion::error::Result as DFResult;
use datafusion::execution::memory_pool::{MemoryLimit, MemoryReservation};
use datafusion::execution::TaskContext;

use super::parquet_writer::ParallelParquetWriter;

/// The bytes of the pool one leaf's plan may count on: set by whoever runs several leaves on
/// one pool ([`crate::leaf`]), as a session config extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafMemoryShare(pub usize);

impl LeafMemoryShare {
    /// The share `context` gives its leaf: its extension, else its pool's limit; `None` for an
    /// unlimited pool, where the nodes hold what they hold at their best speed.
    pub fn of(context: &TaskContext) -> Option<Self> {
        if let Some(share) = context.session_config().get_extension::<LeafMemoryShare>() {
            return Some(*share);
        }
        match context.memory_pool().memory_limit() {
            MemoryLimit::Finite(bytes) => Some(LeafMemoryShare(bytes)),
            MemoryLimit::Infinite | MemoryLimit::Unknown => None,
        }
    }

    /// What the merge's reads may hold: half the share, less where the writer's least would
    /// not fit in the other half.
    pub fn reads(self) -> usize {
        (self.0 / 2).min(
            self.0
                .saturating_sub(ParallelParquetWriter::LEAST_MEMORY_BYTES),
        )
    }

    /// What the writer may hold: the rest.
    pub fn writer(self) -> usize {
        self.0 - self.reads()
    }
}

/// Grows `reservation` by the first of `candidates` (largest first) the pool grants; past the
/// last, the pool's own error, which names the consumer and the limit.
pub fn reserve_first_granted<T: Copy>(
    reservation: &MemoryReservation,
    candidates: impl IntoIterator<Item = T>,
    bytes: impl Fn(T) -> usize,
) -> DFResult<T> {
    let mut refused = None;
    for candidate in candidates {
        match reservation.try_grow(bytes(candidate)) {
            Ok(()) => return Ok(candidate),
            Err(error) => refused = Some(error),
        }
    }
    Err(refused.unwrap_or_else(|| {
        datafusion::error::DataFusionError::Internal("no memory budget to reserve".into())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryConsumer, MemoryPool};
    use std::sync::Arc;

    #[test]
    fn a_share_leaves_the_writer_its_least() {
        let least = ParallelParquetWriter::LEAST_MEMORY_BYTES;
        let large = LeafMemoryShare(1 << 30);
        assert_eq!((large.reads(), large.writer()), (1 << 29, 1 << 29));
        let small = LeafMemoryShare(least + 1000);
        assert_eq!((small.reads(), small.writer()), (1000, least));
        let tiny = LeafMemoryShare(least / 2);
        assert_eq!((tiny.reads(), tiny.writer()), (0, least / 2));
    }

    #[test]
    fn the_largest_candidate_the_pool_grants_is_reserved() {
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(1000));
        let other = MemoryConsumer::new("other").register(&pool);
        other.grow(300);
        let reservation = MemoryConsumer::new("leaf").register(&pool);
        let granted = reserve_first_granted(&reservation, [1000, 800, 600, 400], |b| b).unwrap();
        assert_eq!(
            (granted, reservation.size(), pool.reserved()),
            (600, 600, 900)
        );
        let refused = reserve_first_granted(&reservation, [200, 150], |b| b).unwrap_err();
        assert!(refused.to_string().contains("leaf"), "{refused}");
        assert_eq!(reservation.size(), 600);
    }
}
