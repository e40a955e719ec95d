//! The crate's one error type. Every variant names what it was working on (table, file, partition,
//! field) so that a failed export says what to fix without a debugger.

use datafusion::error::DataFusionError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The cause of an error, kept so that callers can walk the chain and match on it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid Sleeper schema: {0}")]
    Schema(String),

    #[error("invalid {what} JSON: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error("invalid region: {0}")]
    Region(String),

    /// Sleeper's wording, so that users see the same message whichever implementation ran.
    #[error("Query validation failed{}: {message}", export_id.as_ref().map(|id| format!(" for export \"{id}\"")).unwrap_or_default())]
    QueryValidation {
        export_id: Option<String>,
        message: String,
    },

    /// `by` is "ID" or "name", as in Sleeper's message.
    #[error("Table could not be found with {by}: \"{value}\"")]
    TableNotFound { by: &'static str, value: String },

    #[error("property {property}: {message}")]
    Property { property: String, message: String },

    #[error("invalid partition tree of table {table}: {message}")]
    PartitionTree { table: String, message: String },

    /// `context` is the transaction type, and where known the table and transaction number.
    #[error("invalid state-store transaction ({context}): {message}")]
    Transaction { context: String, message: String },

    #[error("Sleeper instance {instance_id}: {message}")]
    InstanceNotFound {
        instance_id: String,
        message: String,
    },

    /// The DynamoDB table in which a Sleeper instance indexes its tables by name.
    #[error("table index {index} of the Sleeper instance: {message}")]
    TableIndex { index: String, message: String },

    #[error("state store of table {table}: {message}")]
    StateStore { table: String, message: String },

    #[error("invalid location {location:?}: {message}")]
    Location {
        location: String,
        message: String,
        #[source]
        source: Option<BoxError>,
    },

    #[error("input file {file} of partition {partition} is missing")]
    MissingInputFile {
        file: String,
        partition: String,
        #[source]
        source: object_store::Error,
    },

    /// An input file gone since the export was planned: what Sleeper's garbage collector does to
    /// the inputs of a compaction once the compaction has replaced them.
    #[error(
        "input file {file} of partition {partition} is gone: export {export_id} of table \
         {table_id} was planned from the table's state at {planned_at}, and Sleeper's garbage \
         collector deletes files that compactions have replaced (sleeper.table.gc.delay.minutes \
         after, 15 by default). Plan the export again from the current state: submit it again \
         (`sleeper-export submit --table-id {table_id}`), or run `sleeper-export export` again"
    )]
    InputGone {
        file: String,
        partition: String,
        export_id: String,
        table_id: String,
        planned_at: crate::model::StateVersion,
    },

    #[error("input file {file} of partition {partition} is not readable Parquet: {source}")]
    CorruptInputFile {
        file: String,
        partition: String,
        #[source]
        source: datafusion::parquet::errors::ParquetError,
    },

    #[error(
        "input file {file} of partition {partition} does not match the table schema: {message}"
    )]
    InputSchemaMismatch {
        file: String,
        partition: String,
        message: String,
    },

    /// A file not in the order of the table's data engine: merged, it would come out unsorted.
    #[error(
        "input file {file} of partition {partition} is not sorted in {order}: its row {row} \
         (counting from 0) has key {key}, which sorts before the previous row's {previous}{}",
        other_order_fits
            .map(|other| format!(
                "; the two rows are in {other}: check that sleeper.table.data.engine names the \
                 engine that wrote the table's files (`--key-order` overrides it)"
            ))
            .unwrap_or_default()
    )]
    UnsortedInputFile {
        file: String,
        partition: String,
        row: u64,
        key: String,
        previous: String,
        order: crate::model::KeyOrder,
        other_order_fits: Option<crate::model::KeyOrder>,
    },

    /// A second planning pass of an export (SQS delivers at least once; `export` may be run again
    /// with the same id) found the table changed since the first: re-planning would mix two
    /// states in one export.
    #[error(
        "export {export_id} of table {table_id} was planned from another state of the table \
         ({}) and is not complete: the leaves queued then complete it if their input files \
         are still there (`sleeper-export status` tells); to export the table as it is now, \
         use a new export id",
        match (planned_at, now) {
            (Some(planned_at), Some(now)) => format!("planned at {planned_at}, now at {now}"),
            _ => "its partitions or files differ".to_owned(),
        }
    )]
    ExportPlannedFromOtherState {
        table_id: String,
        export_id: String,
        planned_at: Option<crate::model::StateVersion>,
        now: Option<crate::model::StateVersion>,
    },

    /// The export was cancelled (Ctrl-C, SIGTERM past the grace period, or the caller's token):
    /// the leaves it was writing aborted their uploads.
    #[error("the export was cancelled; no partial file was left")]
    Cancelled,

    /// A leaf's SQL filter (`sqlQuery`) that cannot run, in Sleeper's wording (`add_sql_stage`).
    #[error("User SQL query failed: {0}")]
    Sql(String),

    /// A leaf's plan (its reads and writer at their least, its SQL's joins, sorts and
    /// aggregations) needed more of DataFusion's memory pool than it could get.
    #[error(
        "leaf {partition} needs more memory than it can get within the limit of {limit_bytes} \
         bytes that the leaves running at once share (--memory-limit, \
         ExportOptions::memory_limit): {message}"
    )]
    MemoryLimit {
        partition: String,
        limit_bytes: usize,
        message: String,
    },

    /// A message asked for something it may not: a path outside the table, an unsafe id.
    #[error("rejected: {0}")]
    Untrusted(String),

    #[error("queue {queue}: {message}")]
    Queue { queue: String, message: String },

    #[error("writing export file {path}: {message}")]
    Output {
        path: String,
        message: String,
        #[source]
        source: Option<BoxError>,
    },

    #[error("object store at {path}: {source}")]
    ObjectStore {
        path: String,
        #[source]
        source: object_store::Error,
    },

    #[error("{context}: {source}")]
    Arrow {
        context: String,
        #[source]
        source: datafusion::arrow::error::ArrowError,
    },

    #[error(transparent)]
    DataFusion(DataFusionError),
}

impl Error {
    pub fn validation(export_id: Option<&str>, message: impl Into<String>) -> Self {
        Error::QueryValidation {
            export_id: export_id.map(str::to_owned),
            message: message.into(),
        }
    }

    /// Errors that retrying the same message cannot fix: the message goes to the dead-letter queue.
    pub fn is_bad_message(&self) -> bool {
        matches!(
            self,
            Error::Json { .. }
                | Error::QueryValidation { .. }
                | Error::TableNotFound { .. }
                | Error::Region(_)
                | Error::Untrusted(_)
                | Error::Sql(_)
                | Error::ExportPlannedFromOtherState { .. }
        )
    }

    /// A location that is wrong in itself (not found, not a table), with no cause to keep.
    pub fn location(location: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Location {
            location: location.into(),
            message: message.into(),
            source: None,
        }
    }

    /// A location that failed with `source` while `doing` something ("" for nothing more to say).
    pub fn location_from(
        location: impl Into<String>,
        doing: &str,
        source: impl Into<BoxError>,
    ) -> Self {
        let source = source.into();
        Error::Location {
            location: location.into(),
            message: if doing.is_empty() {
                source.to_string()
            } else {
                format!("{doing}: {source}")
            },
            source: Some(source),
        }
    }

    /// Writing the export file at `path` failed with `source`.
    pub fn output(path: impl Into<String>, source: impl Into<BoxError>) -> Self {
        let source = source.into();
        Error::Output {
            path: path.into(),
            message: source.to_string(),
            source: Some(source),
        }
    }

    pub fn object_store(path: impl std::fmt::Display, source: object_store::Error) -> Self {
        Error::ObjectStore {
            path: path.to_string(),
            source,
        }
    }
}

impl From<Error> for DataFusionError {
    fn from(error: Error) -> Self {
        match error {
            Error::DataFusion(inner) => inner,
            other => DataFusionError::External(Box::new(other)),
        }
    }
}

/// Errors of ours that travelled through DataFusion come back as themselves, so callers can match
/// on them and messages are not wrapped in "External error: …".
impl From<DataFusionError> for Error {
    fn from(error: DataFusionError) -> Self {
        match error {
            DataFusionError::External(boxed) => match boxed.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(other) => Error::DataFusion(DataFusionError::External(other)),
            },
            DataFusionError::Context(context, inner) => match Error::from(*inner) {
                Error::DataFusion(inner) => {
                    Error::DataFusion(DataFusionError::Context(context, Box::new(inner)))
                }
                ours => ours,
            },
            other => Error::DataFusion(other),
        }
    }
}
