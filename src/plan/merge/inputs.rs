//! A leaf's inputs: its files opened together, then each read on a task of its own within
//! the budget the leaf reserved.

use datafusion::common::runtime::SpawnedTask;
use datafusion::execution::runtime_env::RuntimeEnv;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use super::budget::ReadBudget;
use super::loser_tree::Input;
use super::reader::{FileReader, OpenedFile};
use super::{FILES_OPENED_AT_ONCE, READ_AHEAD_BATCHES};
use crate::error::Result;

/// Opens the leaf's files: their footers are read and their row groups chosen.
pub(super) async fn open_files(
    readers: &[FileReader],
    runtime: &RuntimeEnv,
) -> Result<Vec<OpenedFile>> {
    // Opening reads each file's footer: on S3 a round trip per file, so they overlap, in the
    // leaf's file order.
    let opening: Vec<_> = readers.iter().map(|reader| reader.open(runtime)).collect();
    futures::stream::iter(opening)
        .buffered(FILES_OPENED_AT_ONCE)
        .try_collect()
        .await
}

/// Starts reading each file on a task of its own, which its input stream owns: dropping the
/// merge stops the readers.
pub(super) fn start_inputs(
    readers: Vec<FileReader>,
    opened: Vec<OpenedFile>,
    budget: ReadBudget,
) -> Vec<Input> {
    readers
        .into_iter()
        .zip(opened)
        .map(|(reader, opened)| {
            let (sender, receiver) = mpsc::channel(READ_AHEAD_BATCHES);
            let reading = opened.read(budget.file_fetch_bytes, budget.file_batch_rows);
            let task = SpawnedTask::spawn(reader.run(reading, sender));
            futures::stream::unfold((receiver, task), |(mut receiver, task)| async move {
                let batch = receiver.recv().await?;
                Some((batch, (receiver, task)))
            })
            .boxed()
        })
        .collect()
}
