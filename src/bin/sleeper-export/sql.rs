//! `sql` over Sleeper tables, and `tables` of an instance.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::SessionConfig;
use indicatif::HumanBytes;
use sleeper_export::plan::sink::WrittenLeaf;
use sleeper_export::plan::SleeperTableProvider;
use sleeper_export::sql::{sleeper_session, SleeperSessionExt};
use sleeper_export::storage::Stores;
use sleeper_export::{Error, Result};

use crate::options::{open_table, InstanceArgs};

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// Statements to run, separated by `;`.
    #[arg(required_unless_present = "file")]
    pub statements: Option<String>,
    /// Run the statements in this file instead.
    #[arg(long, conflicts_with = "statements")]
    pub file: Option<PathBuf>,
    /// Register a Sleeper table first, as NAME=LOCATION (a directory or s3://…), or with
    /// --instance NAME=TABLE or just TABLE (a table of the instance); repeatable.
    /// `CREATE EXTERNAL TABLE name STORED AS SLEEPER LOCATION '…'` does the same in SQL.
    #[arg(long = "table", value_name = "NAME=LOCATION")]
    pub tables: Vec<String>,
    #[command(flatten)]
    pub instance: InstanceArgs,
}

#[derive(Debug, Args)]
pub struct TablesArgs {
    #[command(flatten)]
    pub instance: InstanceArgs,
}

pub async fn run(args: SqlArgs, stores: Stores) -> Result<()> {
    let script = match (&args.statements, &args.file) {
        (_, Some(file)) => std::fs::read_to_string(file).map_err(|e| {
            Error::location_from(file.display().to_string(), "cannot read the SQL file", e)
        })?,
        (Some(statements), None) => statements.clone(),
        (None, None) => unreachable!("clap requires statements or --file"),
    };
    let instance = args.instance.open(&stores).await?;
    let ctx = sleeper_session(stores.clone(), SessionConfig::new())?;
    for table in &args.tables {
        let (name, source) = match (table.split_once('='), &instance) {
            (Some(pair), _) => pair,
            (None, Some(_)) => (table.as_str(), table.as_str()),
            (None, None) => {
                return Err(Error::location(
                    table.clone(),
                    "--table takes NAME=LOCATION",
                ))
            }
        };
        let opened = open_table(source, instance.as_ref(), &stores).await?;
        ctx.register_table(name, Arc::new(SleeperTableProvider::new(opened)))
            .map_err(Error::from)?;
    }
    for statement in ctx.sleeper_statements(&script)? {
        let batches = ctx
            .run_statement(statement)
            .await?
            .collect()
            .await
            .map_err(Error::from)?;
        print_sql_result(&batches)?;
    }
    Ok(())
}

/// A query's rows as a table; an export's as a summary of what it wrote.
fn print_sql_result(batches: &[RecordBatch]) -> Result<()> {
    let Some(first) = batches.first() else {
        return Ok(());
    };
    if first.schema() == WrittenLeaf::schema() {
        let leaves = WrittenLeaf::from_batches(batches)?;
        let rows: u64 = leaves.iter().map(|l| l.rows_written).sum();
        let bytes: u64 = leaves.iter().map(|l| l.bytes).sum();
        let directory = leaves
            .first()
            .and_then(|leaf| leaf.file.rsplit_once('/'))
            .map_or("", |(directory, _)| directory);
        println!(
            "Exported {} leaf files, {rows} rows, {} to {directory}",
            leaves.len(),
            HumanBytes(bytes)
        );
    } else if first.num_columns() > 0 {
        let table = pretty_format_batches(batches).map_err(|source| Error::Arrow {
            context: "formatting query results".into(),
            source,
        })?;
        println!("{table}");
    }
    Ok(())
}

pub async fn tables(args: TablesArgs, stores: Stores) -> Result<()> {
    let instance = args
        .instance
        .open(&stores)
        .await?
        .ok_or_else(|| Error::Property {
            property: "--instance".into(),
            message: "tables lists the tables of an instance: give --instance or --config-bucket"
                .into(),
        })?;
    println!(
        "{:<30} {:<24} {:>10} {:>8} {:>16}  state",
        "table", "id", "partitions", "leaves", "file references"
    );
    for entry in instance.tables().await? {
        let table = instance.open_table(&entry.id).await?;
        println!(
            "{:<30} {:<24} {:>10} {:>8} {:>16}  {}",
            entry.name,
            entry.id,
            table.partitions.all().len(),
            table.partitions.leaves().len(),
            table.files.len(),
            table
                .state_version
                .map_or_else(|| "-".to_owned(), |v| v.to_string())
        );
    }
    Ok(())
}
