//! Embedding sleeper-export: open a Sleeper table and export every leaf partition.
//!
//! `cargo run --example export_table -- <table dir or s3://…> <output dir or s3://…>`

use sleeper_export::export::export_table;
use sleeper_export::leaf::ExportOptions;
use sleeper_export::storage::Stores;
use sleeper_export::table::SleeperTable;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(table), Some(output)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: export_table <table location> <output location>");
    };
    let stores = Stores::default();
    let table = SleeperTable::open(&table, &stores).await?;
    let output = stores.resolve(&output)?;
    let summary = export_table(&table, &output, &ExportOptions::default(), |leaf| {
        println!(
            "{}: {} rows → {}",
            leaf.leaf_partition_id, leaf.rows_written, leaf.file
        );
    })
    .await?;
    println!(
        "export {}: {} rows in {:?}",
        summary.export_id,
        summary.rows_written(),
        summary.elapsed
    );
    Ok(())
}
