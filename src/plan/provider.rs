//! A Sleeper table as a DataFusion table: its scan has one execution partition per leaf
//! partition, each the leaf's merged, region-filtered rows in Sleeper's key order.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use super::merge::{LeafInput, LeafMergeExec};
use crate::error::Result;
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

    /// The merge over every leaf of the table, in leaf order, with the table's filters and
    /// aggregations (what Sleeper's queries and compactions see).
    pub fn merge_plan(&self, projection: Option<&[usize]>) -> Result<LeafMergeExec> {
        let leaves = self
            .table
            .partitions
            .leaves()
            .into_iter()
            .map(|leaf| LeafInput {
                partition_id: leaf.id.clone(),
                partition_region: leaf.region.clone(),
                query_regions: vec![leaf.region.clone()],
                files: leaf_files(&self.table, &leaf.id),
            })
            .collect();
        Ok(LeafMergeExec::new(
            self.table.id(),
            Arc::new(self.table.properties.schema.clone()),
            leaves,
            projection,
            self.table.properties.compaction_rules()?,
            self.table.stores.clone(),
        ))
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

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(self.merge_plan(projection.map(Vec::as_slice))?))
    }
}
