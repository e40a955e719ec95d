//! What a leaf's merge holds while it reads, sized to its share of the memory pool: the pages
//! its files fetch and the batches they decode. The leaf's files share one budget, so memory
//! does not grow with their number (an un-compacted leaf has hundreds), and the budget is
//! reserved from the pool, with what it costs measured from the files' own footers.

use super::reader::OpenedFile;
use super::READ_AHEAD_BATCHES;

/// Compressed bytes a leaf's files fetch at once at most: each file reads its row groups a
/// window of pages at a time (1 M-row row groups are tens of MiB per file).
const LEAF_FETCH_BUDGET_BYTES: usize = 64 * 1024 * 1024;

/// Decoded rows a leaf's files hold in batches at most, shared between them: with many files
/// each decodes smaller batches (never fewer rows than `MIN_FILE_BATCH_ROWS` while memory
/// allows, nor more than the session's batch size).
const LEAF_DECODED_ROWS: usize = 128 * 1024;

/// Each batch a file decodes costs the same whatever its rows (the decoder's set-up, string
/// buffers grown from empty, keys encoded, a wake-up): at 128 files, 2,048 rows rather than
/// 1,024 took 0.13 s off 2.78 s per 10 M rows for 20 MiB more, and 4,096 only 0.05 s more for
/// 60 MiB more (`benches/scale.rs`).
const MIN_FILE_BATCH_ROWS: usize = 2048;

/// The least a file may be given when the pool is short: smaller windows and batches are
/// slower, not wrong; below these a leaf fails, naming the limit.
const LEAST_FILE_FETCH_BYTES: usize = 64 * 1024;
const LEAST_FILE_BATCH_ROWS: usize = 128;

/// Batches of a file alive at once: the one the merge reads, those queued behind it, and the
/// one being decoded.
const BATCHES_HELD_PER_FILE: usize = READ_AHEAD_BATCHES + 2;

/// Output batches alive at once: the one being gathered and the one the next node holds.
const OUTPUT_BATCHES_HELD: usize = 2;

/// Each file's budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReadBudget {
    pub(super) file_fetch_bytes: usize,
    pub(super) file_batch_rows: usize,
}

impl ReadBudget {
    /// The budgets to try with what each holds, the fastest first, each half the one before,
    /// down to the least; with the `reads` share of the pool, only those that fit it, and
    /// always the least.
    pub(super) fn candidates(
        files: &[OpenedFile],
        batch_size: usize,
        reads: Option<usize>,
    ) -> Vec<(ReadBudget, usize)> {
        let count = files.len().max(1);
        let mut budget = ReadBudget {
            file_fetch_bytes: LEAF_FETCH_BUDGET_BYTES / count,
            file_batch_rows: (LEAF_DECODED_ROWS / count)
                .max(MIN_FILE_BATCH_ROWS)
                .min(batch_size)
                .max(1),
        };
        let least = ReadBudget {
            file_fetch_bytes: LEAST_FILE_FETCH_BYTES.min(budget.file_fetch_bytes),
            file_batch_rows: LEAST_FILE_BATCH_ROWS.min(budget.file_batch_rows),
        };
        // A row's decoded size is the footers' and the same for every budget.
        let row_bytes: Vec<usize> = files.iter().map(OpenedFile::decoded_row_bytes).collect();
        let held = |budget: ReadBudget| (budget, budget.bytes(files, &row_bytes, batch_size));
        let mut candidates = vec![];
        while budget != least {
            candidates.push(held(budget));
            budget = ReadBudget {
                file_fetch_bytes: (budget.file_fetch_bytes / 2).max(least.file_fetch_bytes),
                file_batch_rows: (budget.file_batch_rows / 2).max(least.file_batch_rows),
            };
        }
        if let Some(reads) = reads {
            candidates.retain(|&(_, bytes)| bytes <= reads);
        }
        candidates.push(held(least));
        candidates
    }

    /// What the leaf holds reading its `files` (whose rows decode to `row_bytes` each) with
    /// this budget: each file's two windows of pages and its batches, and the merge's output
    /// batches.
    fn bytes(&self, files: &[OpenedFile], row_bytes: &[usize], batch_size: usize) -> usize {
        let mut bytes = 0usize;
        for (file, &row) in files.iter().zip(row_bytes) {
            bytes = bytes
                .saturating_add(file.fetched_bytes(self.file_fetch_bytes, self.file_batch_rows))
                .saturating_add(row.saturating_mul(self.file_batch_rows * BATCHES_HELD_PER_FILE));
        }
        let widest_row = row_bytes.iter().copied().max().unwrap_or(0);
        bytes.saturating_add(widest_row.saturating_mul(batch_size * OUTPUT_BATCHES_HELD))
    }
}
