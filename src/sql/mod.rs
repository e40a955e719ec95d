//! SQL over Sleeper tables. A session made by [`sleeper_session`] knows
//! `CREATE EXTERNAL TABLE t STORED AS SLEEPER LOCATION '…'`, runs `COPY` of a Sleeper table as a
//! bulk export (one sorted Parquet file per leaf, the same plan as `sleeper-export export`), and
//! reaches `s3://` through the same stores as the rest of the crate.

mod copy;

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{Session, TableProviderFactory};
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::CreateExternalTable;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::dialect::GenericDialect;

pub use copy::{ExportNode, SleeperQueryPlanner, EXPORT_ID_OPTION};

use crate::error::{Error, Result};
use crate::plan::SleeperTableProvider;
use crate::storage::Stores;
use crate::table::SleeperTable;

/// The `STORED AS` name of Sleeper tables.
pub const SLEEPER_FORMAT: &str = "SLEEPER";

/// A session for SQL over Sleeper tables, with `config` as given except that DataFusion may not
/// add round-robin repartitions: they would mix the rows of leaves that a `COPY` writes apart.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use datafusion::prelude::SessionConfig;
/// use sleeper_export::sql::sleeper_session;
/// use sleeper_export::storage::Stores;
///
/// let ctx = sleeper_session(Stores::default(), SessionConfig::new())?;
/// ctx.sql("CREATE EXTERNAL TABLE t STORED AS SLEEPER LOCATION 's3://data-bucket/table-id'")
///     .await?;
/// // One file per leaf, as a bulk export writes them; the rows returned say what was written.
/// let written = ctx.sql("COPY t TO 's3://export-bucket'").await?.collect().await?;
/// println!("{} leaves written", written.iter().map(|b| b.num_rows()).sum::<usize>());
/// # Ok(())
/// # }
/// ```
pub fn sleeper_session(stores: Stores, config: SessionConfig) -> Result<SessionContext> {
    let mut config = config.with_extension(Arc::new(stores.clone()));
    config
        .options_mut()
        .optimizer
        .enable_round_robin_repartition = false;
    let runtime = stores.runtime_env()?;
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_table_factory(SLEEPER_FORMAT.into(), Arc::new(SleeperTableFactory))
        .with_query_planner(Arc::new(SleeperQueryPlanner))
        .build();
    Ok(SessionContext::new_with_state(state))
}

/// The stores a session reaches tables and outputs through (fresh ones outside a Sleeper session).
pub(crate) fn session_stores(session: &dyn Session) -> Stores {
    session
        .config()
        .get_extension::<Stores>()
        .map_or_else(Stores::default, |stores| (*stores).clone())
}

#[async_trait]
pub trait SleeperSessionExt {
    /// Registers the Sleeper table at `location` (a directory or `s3://…`) as `name`.
    async fn register_sleeper_table(&self, name: &str, location: &str) -> Result<()>;

    /// The statements of a script, each ready for [`SleeperSessionExt::run_statement`]. A
    /// `COPY` to a location without a file extension, and no format given, is a Parquet export.
    fn sleeper_statements(&self, sql: &str) -> Result<Vec<Statement>>;

    async fn run_statement(&self, statement: Statement) -> Result<DataFrame>;

    /// One statement, as [`SleeperSessionExt::sleeper_statements`] reads it.
    async fn sleeper_sql(&self, sql: &str) -> Result<DataFrame>;
}

#[async_trait]
impl SleeperSessionExt for SessionContext {
    async fn register_sleeper_table(&self, name: &str, location: &str) -> Result<()> {
        let table = SleeperTable::open(location, &session_stores(&self.state())).await?;
        self.register_table(name, Arc::new(SleeperTableProvider::new(table)))
            .map_err(Error::from)?;
        Ok(())
    }

    fn sleeper_statements(&self, sql: &str) -> Result<Vec<Statement>> {
        let statements =
            DFParser::parse_sql_with_dialect(sql, &GenericDialect {}).map_err(Error::from)?;
        Ok(statements
            .into_iter()
            .map(|mut statement| {
                default_copy_to_parquet(&mut statement);
                statement
            })
            .collect())
    }

    async fn run_statement(&self, statement: Statement) -> Result<DataFrame> {
        let plan = self
            .state()
            .statement_to_plan(statement)
            .await
            .map_err(Error::from)?;
        self.execute_logical_plan(plan).await.map_err(Error::from)
    }

    async fn sleeper_sql(&self, sql: &str) -> Result<DataFrame> {
        let mut statements = self.sleeper_statements(sql)?;
        if statements.len() != 1 {
            return Err(Error::DataFusion(DataFusionError::Plan(format!(
                "expected one SQL statement, found {}",
                statements.len()
            ))));
        }
        self.run_statement(statements.remove(0)).await
    }
}

/// Exports are Parquet, so a `COPY` (explained or not) to a directory needs no `STORED AS`.
fn default_copy_to_parquet(statement: &mut Statement) {
    match statement {
        Statement::CopyTo(copy) => {
            let format_given = copy.stored_as.is_some()
                || copy
                    .options
                    .iter()
                    .any(|(key, _)| key.eq_ignore_ascii_case("format"));
            let has_extension = std::path::Path::new(&copy.target).extension().is_some();
            if !format_given && !has_extension {
                copy.stored_as = Some("PARQUET".into());
            }
        }
        Statement::Explain(explain) => default_copy_to_parquet(&mut explain.statement),
        _ => {}
    }
}

/// `CREATE EXTERNAL TABLE … STORED AS SLEEPER LOCATION '…'`.
#[derive(Debug)]
struct SleeperTableFactory;

#[async_trait]
impl TableProviderFactory for SleeperTableFactory {
    async fn create(
        &self,
        state: &dyn Session,
        command: &CreateExternalTable,
    ) -> DFResult<Arc<dyn TableProvider>> {
        let [location] = command.locations.as_slice() else {
            return Err(DataFusionError::Plan(format!(
                "a Sleeper table has one location, {} were given for {}",
                command.locations.len(),
                command.name
            )));
        };
        let table = SleeperTable::open(location, &session_stores(state)).await?;
        let provider = SleeperTableProvider::new(table);
        let declared = command.schema.fields();
        if !declared.is_empty() {
            let actual = provider.schema();
            let same = declared.len() == actual.fields().len()
                && declared.iter().zip(actual.fields()).all(|(d, a)| {
                    d.name() == a.name() && d.data_type().equals_datatype(a.data_type())
                });
            if !same {
                return Err(DataFusionError::Plan(format!(
                    "the columns declared for {} do not match the Sleeper table at {}, which \
                     has {}; leave the columns out to take the table's own",
                    command.name,
                    location,
                    actual
                        .fields()
                        .iter()
                        .map(|f| format!("{} {}", f.name(), f.data_type()))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        Ok(Arc::new(provider))
    }
}
