//! Sleeper's SQL filter of a leaf (`sqlQuery`, Sleeper's `rust/query_sql/src/lib.rs`
//! `add_sql_stage`): the leaf's rows, after its region filter and the table's filters and
//! aggregations, are the view `query_results`, and what the SQL returns is what the leaf
//! exports. Sleeper runs it with `SQLOptions` allowing no DDL, DML or statements and reports a
//! failure as `User SQL query failed: …`; so does this.
//!
//! The SQL comes from a queue message, so its session holds nothing else: no other table, no
//! URL tables, no `information_schema`, no table functions, and scalar functions whose output
//! size an argument sets are bounded (see [`functions`]). It runs in one partition, so that
//! `LIMIT` and aggregates apply per leaf as in Sleeper, and under the leaf's memory pool.
//!
//! Sleeper sorts by the keys again below the SQL's first non-filter node
//! (`rust/query_sql/src/sql_sort_fix.rs` `inject_sort_stage`), because its scan does not tell
//! DataFusion the rows are sorted. The merge does, so filters, projections and `LIMIT` keep the
//! key order with no sort, and an `ORDER BY` of the keys costs nothing.

mod functions;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::context::SQLOptions;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::{SessionState, SessionStateBuilder, SessionStateDefaults};
use datafusion::logical_expr::{Expr, LogicalPlan, TableProviderFilterPushDown};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion::prelude::SessionConfig;
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast;

pub use functions::MAX_FUNCTION_OUTPUT_BYTES;

use super::merge::LeafMergeExec;
use super::pushdown::{filters_pushed_down, filters_regions};
use crate::error::{Error, Result};

/// The name Sleeper gives a leaf's rows in its SQL.
pub const QUERY_RESULTS: &str = "query_results";

/// Plans `sql` over `merge` (one leaf) in a session of its own on `runtime`: the plan whose
/// rows the leaf exports. Every way the SQL can be wrong when planned is an [`Error::Sql`],
/// found here, before anything runs; what its joins, sorts and aggregations hold when it runs
/// is bounded by the memory pool of the context it runs in.
pub async fn plan_leaf_sql(
    sql: &str,
    merge: LeafMergeExec,
    runtime: Arc<RuntimeEnv>,
    batch_size: usize,
) -> Result<Arc<dyn ExecutionPlan>> {
    let state = leaf_session(merge, runtime, batch_size)?;
    let failed = |e: DataFusionError| Error::Sql(e.to_string());
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state.sql_to_statement(sql, &dialect).map_err(failed)?;
    if !matches!(&statement, Statement::Statement(s) if matches!(**s, ast::Statement::Query(_))) {
        return Err(Error::Sql(format!(
            "only a query (SELECT …) may filter an export, not {statement}"
        )));
    }
    let logical = state.statement_to_plan(statement).await.map_err(failed)?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&logical)
        .map_err(failed)?;
    let logical = state.optimize(&logical).map_err(failed)?;
    refuse_joins_without_keys(&logical)?;
    let plan = DefaultPhysicalPlanner::default()
        .create_physical_plan(&logical, &state)
        .await
        .map_err(failed)?;
    let partitions = plan.output_partitioning().partition_count();
    if partitions != 1 {
        return Err(Error::DataFusion(DataFusionError::Internal(format!(
            "a leaf's SQL was planned in {partitions} partitions, not one"
        ))));
    }
    Ok(plan)
}

/// A join with no equality of columns pairs every row with every other: of a leaf with itself
/// (the only table there is) that is the square of its rows, or their cube, with no memory to
/// stop it, since such joins stream.
fn refuse_joins_without_keys(plan: &LogicalPlan) -> Result<()> {
    let mut refused = None;
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::Join(join) = node {
            if join.on.is_empty() {
                refused = Some(Error::Sql(format!(
                    "a join of {QUERY_RESULTS} with no equality of columns (a {} join{}) pairs \
                     each row with every other, so its output grows as a power of the leaf's \
                     rows; join on equal columns",
                    join.join_type,
                    if join.filter.is_some() {
                        " on a condition"
                    } else {
                        ", a cross join"
                    }
                )));
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(Error::from)?;
    refused.map_or(Ok(()), Err)
}

/// The session of one leaf's SQL: `query_results` and DataFusion's functions, nothing more.
fn leaf_session(
    merge: LeafMergeExec,
    runtime: Arc<RuntimeEnv>,
    batch_size: usize,
) -> Result<SessionState> {
    let mut config = SessionConfig::new()
        .with_target_partitions(1)
        .with_batch_size(batch_size)
        .with_information_schema(false);
    config
        .options_mut()
        .optimizer
        .enable_round_robin_repartition = false;
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_expr_planners(SessionStateDefaults::default_expr_planners())
        .with_scalar_functions(functions::leaf_sql_functions())
        .with_aggregate_functions(SessionStateDefaults::default_aggregate_functions())
        .with_window_functions(SessionStateDefaults::default_window_functions())
        .with_table_functions(HashMap::new())
        .build();
    state
        .schema_for_ref(QUERY_RESULTS)
        .and_then(|schema| {
            schema.register_table(QUERY_RESULTS.into(), Arc::new(LeafRows { merge }))
        })
        .map_err(Error::from)?;
    Ok(state)
}

/// The leaf's rows as a table: each scan is a merge of the leaf's files reading the columns and
/// key ranges the SQL needs, so `WHERE key BETWEEN …` reads only the row groups it can meet.
#[derive(Debug)]
struct LeafRows {
    merge: LeafMergeExec,
}

#[async_trait]
impl TableProvider for LeafRows {
    fn schema(&self) -> SchemaRef {
        self.merge.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    /// Exact, as the Sleeper table's scan: the merge's region filter drops every row outside.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DFResult<Vec<TableProviderFilterPushDown>> {
        let (schema, order) = self.merge.table();
        Ok(filters_pushed_down(filters, schema, order))
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let (schema, order) = self.merge.table();
        let query = filters_regions(filters, schema, order);
        Ok(self
            .merge
            .narrowed(projection.map(Vec::as_slice), query.as_deref())?
            .into_plan())
    }
}

/// How many of `keys` (column names, in key order) the rows of `plan` are known to be sorted
/// by, ascending: what an export of them may declare in its Parquet file.
pub fn sorted_key_prefix<'a>(
    plan: &Arc<dyn ExecutionPlan>,
    keys: impl IntoIterator<Item = &'a str>,
) -> usize {
    let schema = plan.schema();
    let mut ordering = Vec::new();
    for key in keys {
        let Ok(column) = Column::new_with_schema(key, &schema) else {
            break;
        };
        ordering.push(PhysicalSortExpr::new_default(
            Arc::new(column) as Arc<dyn PhysicalExpr>
        ));
        if !plan
            .equivalence_properties()
            .ordering_satisfy(ordering.clone())
            .unwrap_or(false)
        {
            ordering.pop();
            break;
        }
    }
    ordering.len()
}
