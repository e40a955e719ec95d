//! A Sleeper table as a DataFusion table: its scan has one execution partition per leaf
//! partition, each the leaf's merged, region-filtered rows in the table's key order.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result as DFResult;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use super::merge::{LeafInput, LeafMergeExec};
use super::pushdown::{filters_pushed_down, filters_regions};
use crate::error::Result;
use crate::model::{KeyOrder, Region};
use crate::query::splitter::leaf_files;
use crate::storage::ObjectAddress;
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
    ) -> Result<Arc<dyn ExecutionPlan>> {
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
        )?
        .with_pruned_leaves(pruned)
        .into_plan())
    }

    /// Lets a session not made for Sleeper tables (a plain `SessionContext`)
    /// reach the table's files: each store they lie in that the session cannot reach gets the
    /// table's own, as delta-rs registers a table's store when it is scanned. A file name that
    /// does not parse is left for the merge to report when it reads it.
    fn register_stores(&self, runtime: &RuntimeEnv) -> Result<()> {
        let store_urls: HashSet<ObjectStoreUrl> = self
            .table
            .files
            .iter()
            .filter_map(|file| ObjectAddress::parse(&file.filename).ok())
            .map(|address| address.store_url)
            .collect();
        for url in store_urls {
            if runtime.object_store(&url).is_err() {
                let store = self.table.stores.resolve(url.as_str())?.store;
                runtime.register_object_store(url.as_ref(), store);
            }
        }
        Ok(())
    }

    fn order(&self) -> KeyOrder {
        self.table.properties.key_order
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
        Ok(filters_pushed_down(
            filters,
            &self.table.properties.schema,
            self.order(),
        ))
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        self.register_stores(state.runtime_env())?;
        let query = filters_regions(filters, &self.table.properties.schema, self.order());
        Ok(self.merge_plan(projection.map(Vec::as_slice), query.as_deref())?)
    }
}
