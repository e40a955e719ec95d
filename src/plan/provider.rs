//! A Sleeper table as a DataFusion table: its scan has one execution partition per leaf
//! partition, each the leaf's merged, region-filtered rows in the table's key order.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use super::merge::{LeafInput, LeafMergeExec};
use super::pushdown::{intersect_unions, key_regions};
use crate::error::Result;
use crate::model::{KeyOrder, Region};
use crate::query::splitter::leaf_files;
use crate::table::SleeperTable;

#[derive(Debug, Clone)]
pub struct SleeperTableProvider {
    table: SleeperTable,
    schema: SchemaRef,
}

impl SleeperTableProvider {
    pub fn new(table: SleeperTable) -> Self {
        let schema = table.properties.schema.arrow_schema();
        SleeperTableProvider { table, schema }
    }

    pub fn table(&self) -> &SleeperTable {
        &self.table
    }

    /// The merge over the leaves of the table that rows in `query` may lie in (every leaf when
    /// `None`), in leaf order, with the table's filters and aggregations (what Sleeper's queries
    /// and compactions see).
    pub fn merge_plan(
        &self,
        projection: Option<&[usize]>,
        query: Option<&[Region]>,
    ) -> Result<LeafMergeExec> {
        let all_leaves = self.table.partitions.leaves();
        let leaf_count = all_leaves.len();
        let leaves: Vec<LeafInput> = all_leaves
            .into_iter()
            .filter_map(|leaf| {
                let query_regions = match query {
                    None => vec![leaf.region.clone()],
                    Some(query) => query
                        .iter()
                        .filter_map(|region| leaf.region.intersect(region, self.order()))
                        .collect(),
                };
                (!query_regions.is_empty()).then(|| LeafInput {
                    partition_id: leaf.id.clone(),
                    partition_region: leaf.region.clone(),
                    query_regions,
                    files: leaf_files(&self.table, &leaf.id),
                })
            })
            .collect();
        let pruned = leaf_count - leaves.len();
        Ok(LeafMergeExec::try_new(
            self.table.id(),
            Arc::new(self.table.properties.schema.clone()),
            self.order(),
            leaves,
            projection,
            self.table.properties.compaction_rules()?,
            self.table.stores.clone(),
        )?
        .with_pruned_leaves(pruned))
    }

    fn order(&self) -> KeyOrder {
        self.table.properties.key_order
    }

    /// The regions rows must lie in to pass every filter; `None` when the filters say nothing
    /// about row keys.
    fn query_regions(&self, filters: &[Expr]) -> Option<Vec<Region>> {
        let schema = &self.table.properties.schema;
        filters
            .iter()
            .filter_map(|filter| key_regions(filter, schema, self.order()))
            .reduce(|left, right| intersect_unions(&left, &right, self.order()))
    }
}

#[async_trait]
impl TableProvider for SleeperTableProvider {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Predicates on row keys that translate exactly into regions are applied by the scan: it
    /// reads only the leaves they meet and its region filter drops every other row.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DFResult<Vec<TableProviderFilterPushDown>> {
        let schema = &self.table.properties.schema;
        Ok(filters
            .iter()
            .map(|filter| match key_regions(filter, schema, self.order()) {
                Some(_) => TableProviderFilterPushDown::Exact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let query = self.query_regions(filters);
        Ok(Arc::new(self.merge_plan(
            projection.map(Vec::as_slice),
            query.as_deref(),
        )?))
    }
}
