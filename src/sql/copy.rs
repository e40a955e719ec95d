//! `COPY` of a Sleeper table as a bulk export. A `COPY` to Parquet whose query keeps each leaf's
//! rows apart and in order (a table, or projections and filters over it) is planned as the
//! export plan: the leaf merges under [`LeafExportExec`], one file per leaf at
//! `<target>/<tableId>/<exportId>/<subExportId>.parquet`. Any other `COPY` (an ordering, an
//! aggregation, a join, another format, `PARTITIONED BY`) is DataFusion's own.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::Schema as ArrowSchema;
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::datasource::source_as_provider;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::dml::CopyTo;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use datafusion::parquet::schema::types::ColumnPath;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};

use super::session_stores;
use crate::error::{Error, Result};
use crate::leaf::ExportLayout;
use crate::plan::sink::WrittenLeaf;
use crate::plan::{LeafExportExec, LeafMergeExec, SleeperTableProvider};
use crate::queue::trust::check_id;
use crate::table::SleeperTable;

/// The `COPY` option naming the export (a fresh UUID when not given), as `exportId` does.
pub const EXPORT_ID_OPTION: &str = "sleeper.export_id";

const PARQUET_OPTIONS: [&str; 6] = [
    "format.compression",
    "format.max_row_group_size",
    "format.data_pagesize_limit",
    "format.writer_version",
    "format.dictionary_enabled",
    "format.statistics_enabled",
];

/// Plans `COPY` of Sleeper tables as exports (also under `EXPLAIN` and `EXPLAIN ANALYZE`), and
/// everything else as DataFusion does.
#[derive(Debug)]
pub struct SleeperQueryPlanner;

#[async_trait]
impl QueryPlanner for SleeperQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let plan = logical_plan
            .clone()
            .transform_up(|node| match node {
                LogicalPlan::Copy(copy) => Ok(match ExportNode::from_copy(&copy)? {
                    Some(export) => Transformed::yes(LogicalPlan::Extension(Extension {
                        node: Arc::new(export),
                    })),
                    None => Transformed::no(LogicalPlan::Copy(copy)),
                }),
                other => Ok(Transformed::no(other)),
            })?
            .data;
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(ExportPlanner)])
            .create_physical_plan(&plan, session)
            .await
    }
}

/// The logical form of an export: its input query, where it goes, and its options.
#[derive(Debug, Clone)]
pub struct ExportNode {
    input: LogicalPlan,
    target: String,
    options: BTreeMap<String, String>,
    table: SleeperTable,
    schema: DFSchemaRef,
}

impl ExportNode {
    /// The export a `COPY` is, or `None` when it is not one (see the module's notes).
    fn from_copy(copy: &CopyTo) -> DFResult<Option<ExportNode>> {
        let parquet = copy.file_type.get_ext().eq_ignore_ascii_case("parquet");
        let table = match sleeper_table(&copy.input) {
            Some(table) if parquet && copy.partition_by.is_empty() => table,
            _ => return Ok(None),
        };
        let node = ExportNode {
            input: copy.input.as_ref().clone(),
            target: copy.output_url.clone(),
            options: copy.options.clone().into_iter().collect(),
            table,
            schema: Arc::new(DFSchema::try_from(WrittenLeaf::schema())?),
        };
        // Bad options are reported when the statement is planned, before anything runs.
        node.writer_properties(node.input.schema().as_arrow())?;
        Ok(Some(node))
    }

    fn export_id(&self) -> Result<String> {
        let export_id = self
            .options
            .get(EXPORT_ID_OPTION)
            .cloned()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        check_id("exportId", &export_id)?;
        Ok(export_id)
    }

    /// The table's Parquet settings for a file of `columns`, with those the `COPY` options change.
    fn writer_properties(&self, columns: &ArrowSchema) -> Result<WriterProperties> {
        let mut properties = self.table.properties.as_ref().clone();
        if self.options.contains_key("format.compression") {
            // Replaced below; the table's own codec may be one nothing here writes (lzo).
            properties.parquet.compression = "uncompressed".into();
        }
        let mut builder = properties.writer_properties(columns)?.into_builder();
        for (key, value) in &self.options {
            let bad = |message: String| Error::Property {
                property: key.clone(),
                message,
            };
            let number = || {
                value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad(format!("{value:?} is not a positive whole number")))
            };
            builder = match key.as_str() {
                EXPORT_ID_OPTION => builder,
                "format.compression" => builder
                    .set_compression(Compression::from_str(value).map_err(|e| bad(e.to_string()))?),
                "format.max_row_group_size" => builder.set_max_row_group_row_count(Some(number()?)),
                "format.data_pagesize_limit" => builder.set_data_page_size_limit(number()?),
                "format.writer_version" => builder.set_writer_version(match value.as_str() {
                    "1.0" => WriterVersion::PARQUET_1_0,
                    "2.0" => WriterVersion::PARQUET_2_0,
                    other => return Err(bad(format!("{other:?} is neither 1.0 nor 2.0"))),
                }),
                "format.dictionary_enabled" => {
                    let enabled = value
                        .parse::<bool>()
                        .map_err(|_| bad(format!("{value:?} is neither true nor false")))?;
                    // The table sets dictionaries per column, which a global setting would not override.
                    self.table
                        .properties
                        .schema
                        .all_fields()
                        .fold(builder, |builder, field| {
                            builder.set_column_dictionary_enabled(
                                ColumnPath::from(field.name.as_str()),
                                enabled,
                            )
                        })
                }
                "format.statistics_enabled" => {
                    builder.set_statistics_enabled(EnabledStatistics::from_str(value).map_err(bad)?)
                }
                _ => {
                    return Err(bad(format!(
                        "not an option of a Sleeper export; the options are {EXPORT_ID_OPTION} \
                         and {}",
                        PARQUET_OPTIONS.join(", ")
                    )))
                }
            };
        }
        Ok(builder.build())
    }

    fn key(&self) -> (&str, &BTreeMap<String, String>, &str) {
        (&self.target, &self.options, self.table.id())
    }
}

/// The Sleeper table under a query whose every step keeps each leaf's rows apart and in order.
fn sleeper_table(plan: &LogicalPlan) -> Option<SleeperTable> {
    match plan {
        LogicalPlan::Projection(projection) => sleeper_table(&projection.input),
        LogicalPlan::Filter(filter) => sleeper_table(&filter.input),
        LogicalPlan::SubqueryAlias(alias) => sleeper_table(&alias.input),
        LogicalPlan::TableScan(scan) if scan.fetch.is_none() => source_as_provider(&scan.source)
            .ok()?
            .downcast_ref::<SleeperTableProvider>()
            .map(|provider| provider.table().clone()),
        _ => None,
    }
}

impl PartialEq for ExportNode {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key() && self.input == other.input
    }
}

impl Eq for ExportNode {}

impl PartialOrd for ExportNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.key().cmp(&other.key()) {
            Ordering::Equal => (self == other).then_some(Ordering::Equal),
            order => Some(order),
        }
    }
}

impl Hash for ExportNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
        self.input.hash(state);
    }
}

impl UserDefinedLogicalNodeCore for ExportNode {
    fn name(&self) -> &str {
        "SleeperExport"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "SleeperExport: table={}, to={}",
            self.table.id(),
            self.target
        )
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> DFResult<Self> {
        let input = inputs
            .into_iter()
            .next()
            .ok_or_else(|| DataFusionError::Internal("SleeperExport needs its input".into()))?;
        Ok(ExportNode {
            input,
            ..self.clone()
        })
    }
}

/// Turns an [`ExportNode`] into the export plan over its input's leaf merge.
#[derive(Debug)]
struct ExportPlanner;

#[async_trait]
impl ExtensionPlanner for ExportPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> DFResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(export) = node.as_any().downcast_ref::<ExportNode>() else {
            return Ok(None);
        };
        let input = Arc::clone(&physical_inputs[0]);
        let merge = leaf_merge_under(&input).ok_or_else(|| {
            DataFusionError::Plan(format!(
                "the query exported to {} does not keep the leaves of table {} apart",
                export.target,
                export.table.name()
            ))
        })?;
        if merge.leaves().is_empty() {
            // No leaf meets the query: an export of no files.
            return Ok(Some(Arc::new(EmptyExec::new(WrittenLeaf::schema()))));
        }
        let output = session_stores(session).resolve(&export.target)?;
        let export_id = export.export_id()?;
        let table_id = export.table.id();
        let layout = ExportLayout::new(&output, table_id, &export_id);
        let targets = merge
            .leaves()
            .iter()
            .map(|leaf| layout.target(&leaf.partition_id, &uuid::Uuid::new_v4().to_string()))
            .collect();
        let writer_properties = export.writer_properties(&input.schema())?;
        Ok(Some(Arc::new(LeafExportExec::try_new(
            input,
            Arc::clone(&output.store),
            targets,
            writer_properties,
        )?)))
    }
}

/// The leaf merge at the bottom of a chain of steps that each keep their input's partitions and
/// order (filters, projections).
fn leaf_merge_under(plan: &Arc<dyn ExecutionPlan>) -> Option<&LeafMergeExec> {
    if let Some(merge) = plan.downcast_ref::<LeafMergeExec>() {
        return Some(merge);
    }
    match plan.children().as_slice() {
        [child]
            if plan.maintains_input_order() == [true]
                && plan.output_partitioning().partition_count()
                    == child.output_partitioning().partition_count() =>
        {
            leaf_merge_under(child)
        }
        _ => None,
    }
}
