//! One leaf query's export: the unit a queue runner receives, `COPY` plans per leaf, and a
//! library user can run alone. Below the queues: nothing here schedules.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryLimit, MemoryPool, TrackConsumersPool,
};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{collect, ExecutionPlan};
use datafusion::prelude::SessionConfig;
use object_store::path::Path;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::model::{CompactionRules, KeyOrder, TableProperties};
use crate::plan::leaf_sql::{plan_leaf_sql, sorted_key_prefix};
use crate::plan::memory::LeafMemoryShare;
use crate::plan::sink::WrittenLeaf;
use crate::plan::{ExportTarget, LeafExportExec, LeafInput, LeafMergeExec};
use crate::query::BulkExportLeafPartitionQuery;
use crate::storage::Location;
use crate::table::SleeperTable;

#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Generated (a UUID) when not given, as Sleeper does.
    pub export_id: Option<String>,
    /// Leaves exported at once.
    pub parallelism: usize,
    /// Rows per batch inside the merge.
    pub batch_size: usize,
    /// Export the stored rows as they are: no filters, no aggregation.
    pub raw: bool,
    /// The time age-off filters count back from; the clock at each leaf's start when not given.
    /// Pinning it makes a re-run of a leaf give the same rows.
    pub age_off_clock_millis: Option<i64>,
    /// The order of the table's files, instead of its data engine's (`sleeper.table.data.engine`).
    pub key_order: Option<KeyOrder>,
    /// The codec to write, instead of the table's (`sleeper.table.parquet.compression.codec`),
    /// one of Sleeper's names (e.g. for a table compressed with `lzo`, which cannot be written).
    pub compression: Option<String>,
    /// Check, as files are read, that their rows are in the table's order (on by default).
    pub verify_order: bool,
    /// SQL over each leaf's rows (Sleeper's `sqlQuery`, the leaf's rows being the view
    /// `query_results`) for whole-table exports (`export::export_table`); a
    /// leaf query carries its own.
    pub sql: Option<String>,
    /// The memory the leaves run at once share, as one DataFusion memory pool (1 GiB by
    /// default): each leaf's fetched pages, decoded batches and writer buffers, sized to its
    /// share (this over `parallelism`), and what its SQL's joins, sorts and aggregations keep.
    /// A leaf that cannot get its least fails, naming this limit.
    pub memory_limit: usize,
    /// The pool the leaves reserve from, shared by every clone of these options; `None` until
    /// a runner makes one of `memory_limit` bytes ([`ExportOptions::sharing_one_pool`]), or a
    /// caller's own (a session's, say) to share with other work.
    pub memory_pool: Option<Arc<dyn MemoryPool>>,
    /// Planning only: a leaf whose file references hold more rows than this is cut into
    /// pieces of about this many rows, a file each (`query::cut`); `None` keeps a file a leaf.
    pub max_rows_per_file: Option<u64>,
    /// Cancelling it stops the export: leaves being written abort their uploads and end with
    /// [`Error::Cancelled`]. Clones of the options share it.
    pub cancel: CancellationToken,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            export_id: None,
            parallelism: std::thread::available_parallelism().map_or(2, |n| n.get()),
            batch_size: 8192,
            raw: false,
            age_off_clock_millis: None,
            key_order: None,
            compression: None,
            verify_order: true,
            sql: None,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            memory_pool: None,
            max_rows_per_file: None,
            cancel: CancellationToken::new(),
        }
    }
}

/// The memory the leaves run at once share unless told otherwise.
pub const DEFAULT_MEMORY_LIMIT: usize = 1 << 30;

/// Consumers of a pool that its error names when a reservation is refused.
const CONSUMERS_NAMED: usize = 4;

impl ExportOptions {
    /// These options with a pool of `memory_limit` bytes, where they have none: the leaves run
    /// with them, and with their clones, then reserve from the one pool.
    pub fn sharing_one_pool(self) -> Self {
        if self.memory_pool.is_some() {
            return self;
        }
        let pool = TrackConsumersPool::new(
            GreedyMemoryPool::new(self.memory_limit),
            NonZeroUsize::new(CONSUMERS_NAMED).expect("not zero"),
        );
        ExportOptions {
            memory_pool: Some(Arc::new(pool)),
            ..self
        }
    }

    /// The limit of the pool the leaves share.
    fn pool_limit(&self) -> usize {
        match self.memory_pool.as_ref().map(|pool| pool.memory_limit()) {
            Some(MemoryLimit::Finite(bytes)) => bytes,
            _ => self.memory_limit,
        }
    }

    /// The table's properties with these options' overrides.
    pub fn table_properties(&self, table: &SleeperTable) -> TableProperties {
        let mut properties = table.properties.as_ref().clone();
        if let Some(order) = self.key_order {
            properties.key_order = order;
        }
        if let Some(codec) = &self.compression {
            properties.parquet.compression = codec.trim().to_ascii_lowercase();
        }
        properties
    }
}

/// Every path of one export, in Sleeper's layout (by table id, not name): under
/// `<output>/<tableId>/<exportId>/`, a data file `<subExportId>.parquet` per sub-export, and
/// the records `_manifest.json`, `_status/<subExportId>.json` (done),
/// `_status/<subExportId>.failed.json`, `_status/_count/<n>` (count tokens) and `_SUCCESS`, all
/// named `_…` so that Spark, Hive, Athena and pyarrow read the folder as a dataset of exactly
/// the exported rows.
#[derive(Debug, Clone)]
pub struct ExportLayout {
    output: Location,
    table_id: String,
    export_id: String,
}

/// What an object in an export's folder is, by its exact path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportObject {
    DataFile(String),
    Manifest,
    Done(String),
    Failed(String),
    CountToken,
    Success,
}

const STATUS: &str = "_status";
const COUNT: &str = "_status/_count";

impl ExportLayout {
    pub fn new(output: &Location, table_id: &str, export_id: &str) -> Self {
        ExportLayout {
            output: output.clone(),
            table_id: table_id.to_owned(),
            export_id: export_id.to_owned(),
        }
    }

    /// Where the export's table folders are.
    pub fn output(&self) -> &Location {
        &self.output
    }

    pub fn table_id(&self) -> &str {
        &self.table_id
    }

    pub fn export_id(&self) -> &str {
        &self.export_id
    }

    fn path(&self, relative: &str) -> Path {
        self.output
            .child(&format!("{}/{}/{relative}", self.table_id, self.export_id))
    }

    /// The export's folder.
    pub fn folder(&self) -> Path {
        self.path("")
    }

    pub fn data_file(&self, sub_export_id: &str) -> Path {
        self.path(&format!("{sub_export_id}.parquet"))
    }

    pub fn manifest(&self) -> Path {
        self.path("_manifest.json")
    }

    pub fn done_record(&self, sub_export_id: &str) -> Path {
        self.path(&format!("{STATUS}/{sub_export_id}.json"))
    }

    pub fn failure_record(&self, sub_export_id: &str) -> Path {
        self.path(&format!("{STATUS}/{sub_export_id}.failed.json"))
    }

    pub fn count_token(&self, index: usize) -> Path {
        self.path(&format!("{COUNT}/{index}"))
    }

    pub fn success(&self) -> Path {
        self.path("_SUCCESS")
    }

    pub fn url_of(&self, path: &Path) -> String {
        self.output.url_of(path)
    }

    /// Where the sink writes a sub-export of leaf `partition_id`.
    pub fn target(&self, partition_id: &str, sub_export_id: &str) -> ExportTarget {
        let path = self.data_file(sub_export_id);
        ExportTarget {
            partition_id: partition_id.to_owned(),
            sub_export_id: sub_export_id.to_owned(),
            url: self.url_of(&path),
            path,
        }
    }

    /// What `location` is; `None` for an object the export does not write.
    pub fn object(&self, location: &Path) -> Option<ExportObject> {
        if location.prefix_matches(&self.path(COUNT)) {
            return Some(ExportObject::CountToken);
        }
        if *location == self.manifest() {
            return Some(ExportObject::Manifest);
        }
        if *location == self.success() {
            return Some(ExportObject::Success);
        }
        let name = location.filename()?;
        let id = |suffix: &str, path: fn(&Self, &str) -> Path| {
            name.strip_suffix(suffix)
                .filter(|id| *location == path(self, id))
                .map(str::to_owned)
        };
        id(".failed.json", Self::failure_record)
            .map(ExportObject::Failed)
            .or_else(|| id(".json", Self::done_record).map(ExportObject::Done))
            .or_else(|| id(".parquet", Self::data_file).map(ExportObject::DataFile))
    }
}

impl From<&BulkExportLeafPartitionQuery> for LeafInput {
    fn from(query: &BulkExportLeafPartitionQuery) -> Self {
        LeafInput {
            partition_id: query.leaf_partition_id.clone(),
            partition_region: query.partition_region.clone(),
            query_regions: query.regions.clone(),
            files: query.files.clone(),
        }
    }
}

/// The physical plan of one leaf query: the leaf merge, under the query's SQL if it has any,
/// feeding the Parquet sink. Unless `options.raw`, the table's filters and aggregations are
/// applied, as Sleeper's DataFusion compaction does.
pub async fn leaf_export_plan(
    table: &SleeperTable,
    query: &BulkExportLeafPartitionQuery,
    output: &Location,
    options: &ExportOptions,
) -> Result<Arc<LeafExportExec>> {
    if query.table_id != table.id() {
        return Err(Error::TableNotFound {
            by: "ID",
            value: query.table_id.clone(),
        });
    }
    let properties = options.table_properties(table);
    let merge = leaf_merge(table, &properties, vec![LeafInput::from(query)], options)?;
    let input: Arc<dyn ExecutionPlan> = match &query.sql_query {
        None => merge.into_plan(),
        Some(sql) => {
            plan_leaf_sql(sql, merge, table.stores.runtime_env()?, options.batch_size).await?
        }
    };
    let mut writer_properties = properties.writer_properties(&input.schema())?;
    // A file declares only the order its rows are known to have: an SQL's ORDER BY or GROUP BY
    // gives its own.
    let sorted = sorted_key_prefix(
        &input,
        properties.schema.key_fields().map(|f| f.name.as_str()),
    );
    if let Some(declared) = writer_properties.sorting_columns() {
        let kept = declared[..declared.len().min(sorted)].to_vec();
        writer_properties = writer_properties
            .into_builder()
            .set_sorting_columns(Some(kept))
            .build();
    }
    let target = ExportLayout::new(output, &query.table_id, &query.export_id)
        .target(&query.leaf_partition_id, &query.sub_export_id);
    Ok(Arc::new(
        LeafExportExec::try_new(
            input,
            Arc::clone(&output.store),
            vec![target],
            writer_properties,
        )?
        .with_cancel(options.cancel.clone()),
    ))
}

/// Checks that `sql` plans over the table's leaves: the planner and the runner refuse a query
/// whose SQL cannot run before anything is read or written.
pub async fn check_leaf_sql(
    table: &SleeperTable,
    sql: &str,
    options: &ExportOptions,
) -> Result<()> {
    let properties = options.table_properties(table);
    let merge = leaf_merge(table, &properties, Vec::new(), options)?;
    plan_leaf_sql(sql, merge, table.stores.runtime_env()?, options.batch_size).await?;
    Ok(())
}

fn leaf_merge(
    table: &SleeperTable,
    properties: &TableProperties,
    leaves: Vec<LeafInput>,
    options: &ExportOptions,
) -> Result<LeafMergeExec> {
    Ok(LeafMergeExec::try_new(
        table.id(),
        Arc::new(properties.schema.clone()),
        properties.key_order,
        leaves,
        None,
        if options.raw {
            CompactionRules::default()
        } else {
            properties.compaction_rules()?
        },
    )?
    .with_age_off_clock(options.age_off_clock_millis)
    .with_order_check(options.verify_order))
}

/// The context a leaf plan runs in: the runtime env of the table's stores, so that the merge
/// reaches the leaf's files through the same object stores as everything else (one per bucket,
/// created once), with the pool the leaves run at once share, and the leaf's share of it; and
/// no session: the SQL of a leaf was planned in its own.
fn task_context(table: &SleeperTable, options: &ExportOptions) -> Result<Arc<TaskContext>> {
    let options = options.clone().sharing_one_pool();
    let pool = options
        .memory_pool
        .clone()
        .expect("sharing_one_pool sets it");
    let runtime = RuntimeEnvBuilder::from_runtime_env(table.stores.runtime_env()?.as_ref())
        .with_memory_pool(pool)
        .build_arc()?;
    let share = LeafMemoryShare(options.pool_limit() / options.parallelism.max(1));
    Ok(Arc::new(TaskContext::new(
        None,
        String::new(),
        SessionConfig::new()
            .with_batch_size(options.batch_size)
            .with_extension(Arc::new(share)),
        HashMap::new(),
        HashMap::new(),
        HashMap::new(),
        HashMap::new(),
        runtime,
    )))
}

/// Runs one leaf query to completion: its file is complete at the end, or absent on error.
///
/// ```no_run
/// # async fn example(message_body: &str) -> sleeper_export::error::Result<()> {
/// use sleeper_export::leaf::{run_leaf_query, ExportOptions};
/// use sleeper_export::query::BulkExportLeafPartitionQuery;
/// use sleeper_export::storage::Stores;
/// use sleeper_export::table::SleeperTable;
///
/// let stores = Stores::default();
/// let table = SleeperTable::open("s3://data-bucket/table-id", &stores).await?;
/// let query = BulkExportLeafPartitionQuery::from_json(message_body, |_| {
///     Ok(table.properties.schema.clone())
/// })?;
/// let output = stores.resolve("s3://export-bucket")?;
/// let written = run_leaf_query(&table, &query, &output, &ExportOptions::default()).await?;
/// println!("{}: {} rows, CRC32C {}", written.file, written.rows_written, written.crc32c);
/// # Ok(())
/// # }
/// ```
pub async fn run_leaf_query(
    table: &SleeperTable,
    query: &BulkExportLeafPartitionQuery,
    output: &Location,
    options: &ExportOptions,
) -> Result<WrittenLeaf> {
    let plan = leaf_export_plan(table, query, output, options).await?;
    let batches = collect(
        Arc::clone(&plan) as Arc<dyn ExecutionPlan>,
        task_context(table, options)?,
    )
    .await
    .map_err(|error| match error.find_root() {
        DataFusionError::ResourcesExhausted(message) => Error::MemoryLimit {
            partition: query.leaf_partition_id.clone(),
            limit_bytes: options.pool_limit(),
            message: message.clone(),
        },
        _ => Error::from(error),
    })?;
    WrittenLeaf::from_batches(&batches)?
        .pop()
        .ok_or_else(|| Error::Output {
            path: plan.targets()[0].url.clone(),
            message: "the export plan returned no summary".into(),
            source: None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Stores;

    /// Each object the export writes is known by its exact path; a name that only looks like
    /// one (in another folder, one level too deep, of another export) is not the export's.
    #[test]
    fn an_export_knows_its_objects_by_their_exact_paths() {
        let output = Stores::default().resolve("/tmp/out").unwrap();
        let layout = ExportLayout::new(&output, "t", "e");
        let at = |relative: &str| output.child(relative);
        let cases = [
            ("t/e/s1.parquet", Some(ExportObject::DataFile("s1".into()))),
            ("t/e/_manifest.json", Some(ExportObject::Manifest)),
            ("t/e/_SUCCESS", Some(ExportObject::Success)),
            ("t/e/_status/s1.json", Some(ExportObject::Done("s1".into()))),
            (
                "t/e/_status/s1.failed.json",
                Some(ExportObject::Failed("s1".into())),
            ),
            ("t/e/_status/_count/7", Some(ExportObject::CountToken)),
            ("t/e/sub/s1.parquet", None),
            ("t/e/_status/s1.parquet", None),
            ("t/e/s1.json", None),
            ("t/other/s1.parquet", None),
            ("t/e/_status/deeper/s1.json", None),
            ("t/e/notes.txt", None),
        ];
        for (relative, expected) in cases {
            assert_eq!(layout.object(&at(relative)), expected, "{relative}");
        }
        assert_eq!(layout.data_file("s1"), at("t/e/s1.parquet"));
        let target = layout.target("leaf", "s1");
        assert_eq!(
            (target.path, target.url),
            (
                at("t/e/s1.parquet"),
                "file:///tmp/out/t/e/s1.parquet".to_owned()
            )
        );
    }
}
