//! What a leaf's merge counts as it runs, for its metrics and its export's record: rows read,
//! and the clock its age-off filters compared with.

use std::sync::Arc;

use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet, Gauge, MetricBuilder};
use datafusion::physical_plan::ExecutionPlan;

use super::LeafMergeExec;

/// The merge's metrics that its export records too (through [`LeafMergeExec::counts_in`]).
const ROWS_READ: &str = "rows_read";
const AGE_OFF_CLOCK: &str = "age_off_clock_millis";

/// What one leaf's merge counts as it runs: metrics of the node, and what its export records,
/// read through these handles rather than found among the metrics by name.
#[derive(Debug, Clone)]
pub(super) struct LeafCounters {
    pub(super) rows_read: Count,
    pub(super) age_off_clock: Gauge,
}

impl LeafCounters {
    /// The counters of `partitions` leaves, registered in the node's `metrics`.
    pub(super) fn register(metrics: &ExecutionPlanMetricsSet, partitions: usize) -> Vec<Self> {
        (0..partitions)
            .map(|partition| LeafCounters {
                rows_read: MetricBuilder::new(metrics).counter(ROWS_READ, partition),
                age_off_clock: MetricBuilder::new(metrics).gauge(AGE_OFF_CLOCK, partition),
            })
            .collect()
    }
}

/// What a leaf's merge counted, for its export's record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeCounts {
    pub rows_read: u64,
    /// The clock its age-off filters compared with, where the table has any.
    pub age_off_clock_millis: Option<u64>,
}

impl LeafMergeExec {
    /// The counts of partition `partition` of the leaf merge in `plan`, which may be below
    /// projections, filters and a leaf's SQL; `None` where `plan` holds no merge.
    pub fn counts_in(plan: &Arc<dyn ExecutionPlan>, partition: usize) -> Option<MergeCounts> {
        let Some(merge) = plan.downcast_ref::<LeafMergeExec>() else {
            return plan
                .children()
                .into_iter()
                .find_map(|child| Self::counts_in(child, partition));
        };
        let counters = merge.counters.get(partition)?;
        Some(MergeCounts {
            rows_read: counters.rows_read.value() as u64,
            age_off_clock_millis: (!merge.rules.age_offs.is_empty())
                .then(|| counters.age_off_clock.value() as u64),
        })
    }

    /// For each age-off filter, its column in the read schema and the oldest time kept, from one
    /// clock read per leaf, which [`MergeCounts`] reports.
    pub(super) fn age_off_cutoffs(&self, partition: usize) -> Vec<(usize, i64)> {
        if self.rules.age_offs.is_empty() {
            return vec![];
        }
        let now = self.age_off_clock.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        });
        self.counters[partition].age_off_clock.set(now as usize);
        self.rules
            .age_offs
            .iter()
            .map(|age_off| {
                let column = self
                    .read_schema
                    .index_of(&age_off.column)
                    .expect("age-off columns are read");
                (column, now.saturating_sub(age_off.max_age_millis))
            })
            .collect()
    }
}
