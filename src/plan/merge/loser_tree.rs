//! The k-way merge of a leaf's sorted input streams by a loser tree.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::common::runtime::SpawnedTask;
use futures::stream::BoxStream;
use futures::StreamExt;

use super::keys::{KeyedBatch, SortKeys};
use crate::error::{Error, Result};

/// One sorted input: a stream of keyed batches (a file's reader, or in tests, batches in memory).
pub(super) type Input = BoxStream<'static, Result<KeyedBatch>>;

struct Cursor {
    keys: SortKeys,
    slot: usize,
    position: usize,
}

/// An input in the tree, with the key prefix of its current row (`u64::MAX` once exhausted).
/// Each node keeps its loser's prefix beside it, so a replay compares prefixes held in the tree
/// and the winner's in a register, rather than looking up each challenger's: a row's matches
/// then wait on one another's comparisons only, not on loads too.
#[derive(Debug, Clone, Copy)]
struct Player {
    head: u64,
    input: usize,
}

/// The k-way merge of one leaf. A loser tree of input indices orders the inputs by their current
/// row (one comparison per level for each row, half a binary heap's); ties go to the earlier
/// input, so equal keys keep the order of the leaf's files.
pub(super) struct LeafMerge {
    inputs: Vec<Input>,
    cursors: Vec<Option<Cursor>>,
    /// `losers[0]` is the input with the smallest current row; every other node holds the loser
    /// of the match played there. Exhausted inputs lose every match.
    losers: Vec<Player>,
    /// Batches that rows of the output under construction, or live cursors, point into.
    slots: Vec<RecordBatch>,
    indices: Vec<(usize, usize)>,
    /// Output batches being gathered on the runtime's workers, in output order.
    gathering: VecDeque<SpawnedTask<Result<RecordBatch>>>,
    /// How many output batches are gathered on workers while the merge orders the next one's
    /// rows. With two workers or more this takes the merge thread off the critical path
    /// (`benches/scale.rs`, 128 files: 3.1–3.4 → 2.8–3.0 s); with one, that worker is already busy
    /// decoding and encoding, and gathering there instead made 128 files 20 % slower.
    gathers_ahead: usize,
    inputs_exhausted: bool,
    read_schema: SchemaRef,
    output_columns: Vec<usize>,
    batch_size: usize,
}

impl LeafMerge {
    /// Merges `inputs`, each sorted; `start` before the first batch.
    pub(super) fn new(
        inputs: Vec<Input>,
        read_schema: SchemaRef,
        output_columns: Vec<usize>,
        batch_size: usize,
    ) -> Self {
        LeafMerge {
            inputs,
            cursors: Vec::new(),
            losers: Vec::new(),
            slots: Vec::new(),
            indices: Vec::with_capacity(batch_size),
            gathering: VecDeque::new(),
            gathers_ahead: match tokio::runtime::Handle::try_current() {
                Ok(runtime) if runtime.metrics().num_workers() > 1 => 1,
                _ => 0,
            },
            inputs_exhausted: false,
            read_schema,
            output_columns,
            batch_size,
        }
    }

    pub(super) async fn start(&mut self) -> Result<()> {
        let inputs = self.inputs.len();
        self.cursors = (0..inputs).map(|_| None).collect();
        for input in 0..inputs {
            self.advance(input).await?;
        }
        const EMPTY: Player = Player {
            head: u64::MAX,
            input: usize::MAX,
        };
        self.losers = vec![EMPTY; inputs.max(1)];
        for input in 0..inputs {
            let mut winner = Player {
                head: self.head(input),
                input,
            };
            let mut node = (input + inputs) / 2;
            while node != 0 && self.losers[node].input != EMPTY.input {
                let challenger = self.losers[node];
                if self.loses_to(winner, challenger) {
                    self.losers[node] = winner;
                    winner = challenger;
                }
                node /= 2;
            }
            self.losers[node] = winner;
        }
        Ok(())
    }

    /// Loads the next batch of `input` into its cursor, or clears it once the input is exhausted.
    async fn advance(&mut self, input: usize) -> Result<()> {
        while let Some(batch) = self.inputs[input].next().await {
            let KeyedBatch { batch, keys } = batch?;
            // A cursor always points at a row.
            if keys.prefixes.is_empty() {
                continue;
            }
            self.slots.push(batch);
            self.cursors[input] = Some(Cursor {
                keys,
                slot: self.slots.len() - 1,
                position: 0,
            });
            return Ok(());
        }
        self.cursors[input] = None;
        Ok(())
    }

    /// The key prefix of `input`'s current row.
    fn head(&self, input: usize) -> u64 {
        self.cursors[input]
            .as_ref()
            .map_or(u64::MAX, |cursor| cursor.keys.prefixes[cursor.position])
    }

    /// Whether input `a`'s current row comes after input `b`'s (an exhausted input comes after
    /// everything).
    ///
    /// Inlined, so that the prefixes settle most matches without a call (the compiler stopped
    /// inlining it on its own, and 128 inputs play seven matches a row).
    #[inline]
    fn loses_to(&self, a: Player, b: Player) -> bool {
        // Prefixes rarely tie, so the branch to the full comparison is predictable; the usual
        // answer is a plain comparison, which `replay` turns into selects.
        let mut loses = a.head > b.head;
        if a.head == b.head {
            loses = self.tie_loses_to(a.input, b.input);
        }
        loses
    }

    /// `loses_to` where the two prefixes are equal.
    #[cold]
    fn tie_loses_to(&self, a: usize, b: usize) -> bool {
        match (&self.cursors[a], &self.cursors[b]) {
            (None, None) => a > b,
            (None, Some(_)) => true,
            (Some(_), None) => false,
            (Some(ca), Some(cb)) => match ca.keys.compare(ca.position, &cb.keys, cb.position) {
                Ordering::Greater => true,
                Ordering::Equal => a > b,
                Ordering::Less => false,
            },
        }
    }

    /// Replays the matches on the path of the last winner, whose current row has changed to
    /// one whose prefix is `head`.
    fn replay(&mut self, head: u64) {
        let mut winner = Player {
            head,
            input: self.losers[0].input,
        };
        let mut node = (winner.input + self.inputs.len()) / 2;
        while node != 0 {
            let challenger = self.losers[node];
            // Which input wins is a coin toss for random keys, so a branch on it is mispredicted
            // half the time: both outcomes are written as selects instead.
            let loses = self.loses_to(winner, challenger);
            self.losers[node] = std::hint::select_unpredictable(loses, winner, challenger);
            winner = std::hint::select_unpredictable(loses, challenger, winner);
            node /= 2;
        }
        self.losers[0] = winner;
    }

    /// The next output batch: merged and projected.
    pub(super) async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        self.next_merged()
            .await?
            .map(|batch| batch.project(&self.output_columns))
            .transpose()
            .map_err(|source| Error::Arrow {
                context: "projecting merged rows".into(),
                source,
            })
    }

    /// The next batch of merged rows, with every column read.
    async fn next_merged(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            let ahead = if self.inputs_exhausted {
                0
            } else {
                self.gathers_ahead
            };
            if self.gathering.len() > ahead {
                let gathered = self.gathering.pop_front().expect("a gather");
                let gathered = gathered.join().await.map_err(|e| Error::Arrow {
                    context: GATHERING.into(),
                    source: ArrowError::ExternalError(Box::new(e)),
                })?;
                return gathered.map(Some);
            }
            if self.inputs_exhausted {
                return Ok(None);
            }
            self.inputs_exhausted = !self.merge_rows().await?;
            if self.indices.is_empty() {
                continue;
            }
            let indices = std::mem::replace(&mut self.indices, Vec::with_capacity(self.batch_size));
            let slots = self.hand_over_slots();
            if self.gathers_ahead == 0 {
                return gather(&self.read_schema, &slots, &indices).map(Some);
            }
            let read_schema = Arc::clone(&self.read_schema);
            self.gathering.push_back(SpawnedTask::spawn(async move {
                gather(&read_schema, &slots, &indices)
            }));
        }
    }

    /// Orders the next `batch_size` rows into `indices`; false when the inputs ran out first.
    async fn merge_rows(&mut self) -> Result<bool> {
        while let Some(winner) = self
            .losers
            .first()
            .map(|winner| winner.input)
            .filter(|&w| w < self.cursors.len())
        {
            let Some(cursor) = self.cursors[winner].as_mut() else {
                break;
            };
            self.indices.push((cursor.slot, cursor.position));
            cursor.position += 1;
            let head = if cursor.position == cursor.keys.len() {
                self.advance(winner).await?;
                self.head(winner)
            } else {
                cursor.keys.prefixes[cursor.position]
            };
            self.replay(head);
            if self.indices.len() == self.batch_size {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The batches the merged rows point into, for their gather; the merge keeps only those live
    /// cursors still read from, so memory is bounded by one batch per input (and a gather in
    /// flight holds the batches it copies from).
    fn hand_over_slots(&mut self) -> Vec<RecordBatch> {
        let mut kept = Vec::with_capacity(self.inputs.len());
        for cursor in self.cursors.iter_mut().flatten() {
            kept.push(self.slots[cursor.slot].clone());
            cursor.slot = kept.len() - 1;
        }
        std::mem::replace(&mut self.slots, kept)
    }
}

const GATHERING: &str = "assembling merged rows";

/// Copies the rows `indices` names (slot, row) out of `slots` into one batch.
fn gather(
    read_schema: &SchemaRef,
    slots: &[RecordBatch],
    indices: &[(usize, usize)],
) -> Result<RecordBatch> {
    super::gather::gather(read_schema, slots, indices).map_err(|source| Error::Arrow {
        context: GATHERING.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{AsArray, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema as ArrowSchema};
    use datafusion::arrow::row::{RowConverter, SortField};

    use super::super::keys::prefix;
    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(ArrowSchema::new(vec![
            Field::new("key", DataType::Int64, false),
            Field::new("input", DataType::Int64, false),
        ]))
    }

    /// A batch of `keys` from input `input`, keyed as the file readers key them.
    fn keyed(keys: &[i64], input: i64) -> KeyedBatch {
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(keys.to_vec())),
                Arc::new(Int64Array::from(vec![input; keys.len()])),
            ],
        )
        .unwrap();
        let converter = RowConverter::new(vec![SortField::new(DataType::Int64)]).unwrap();
        let rows = converter
            .convert_columns(&[Arc::clone(batch.column(0))])
            .unwrap();
        let prefixes = (0..rows.num_rows()).map(|i| prefix(rows.row(i))).collect();
        KeyedBatch {
            batch,
            keys: SortKeys {
                rows,
                kept: None,
                prefixes,
            },
        }
    }

    /// Merges in-memory inputs (each a list of batches of keys) and returns (key, input) pairs,
    /// checking that no output batch exceeds `batch_size`.
    async fn merge(inputs: &[Vec<Vec<i64>>], batch_size: usize) -> Vec<(i64, i64)> {
        let streams: Vec<Input> = inputs
            .iter()
            .enumerate()
            .map(|(input, batches)| {
                let keyed: Vec<Result<KeyedBatch>> = batches
                    .iter()
                    .map(|keys| Ok(keyed(keys, input as i64)))
                    .collect();
                futures::stream::iter(keyed).boxed()
            })
            .collect();
        let mut merge = LeafMerge::new(streams, schema(), vec![0, 1], batch_size);
        // On a runtime of one worker the merge gathers its batches itself.
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        assert_eq!(merge.gathers_ahead, usize::from(workers > 1));
        merge.start().await.unwrap();
        let mut merged = Vec::new();
        while let Some(batch) = merge.next_batch().await.unwrap() {
            assert!(batch.num_rows() <= batch_size && batch.num_rows() > 0);
            let keys = batch.column(0).as_primitive::<Int64Type>();
            let inputs = batch.column(1).as_primitive::<Int64Type>();
            merged.extend((0..batch.num_rows()).map(|i| (keys.value(i), inputs.value(i))));
        }
        merged
    }

    /// What the merge must produce: every row, by key, equal keys in input order.
    fn expected(inputs: &[Vec<Vec<i64>>]) -> Vec<(i64, i64)> {
        let mut rows: Vec<(i64, i64)> = inputs
            .iter()
            .enumerate()
            .flat_map(|(input, batches)| batches.iter().flatten().map(move |&k| (k, input as i64)))
            .collect();
        rows.sort(); // by key, then input: a stable order for equal keys across inputs
        rows
    }

    #[tokio::test]
    async fn inputs_merge_by_key_with_ties_in_input_order() {
        let inputs = vec![
            vec![vec![1, 4, 4], vec![9]],
            vec![vec![-3, 4], vec![], vec![10, 11]],
            vec![],
            vec![vec![i64::MIN, 4, i64::MAX]],
        ];
        for batch_size in [1, 2, 3, 100] {
            assert_eq!(merge(&inputs, batch_size).await, expected(&inputs));
        }
    }

    #[tokio::test]
    async fn many_inputs_of_many_batches_merge_whole() {
        many_inputs_of_many_batches().await;
    }

    /// Batches gathered on workers while the next ones' rows are merged still come out in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_inputs_of_many_batches_merge_whole_when_gathered_on_workers() {
        many_inputs_of_many_batches().await;
    }

    async fn many_inputs_of_many_batches() {
        // A deterministic spread of sorted inputs, with many equal keys across them.
        let mut state = 7u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as i64
        };
        let inputs: Vec<Vec<Vec<i64>>> = (0..37)
            .map(|_| {
                let mut keys: Vec<i64> = (0..(next() % 200)).map(|_| next() % 50).collect();
                keys.sort();
                keys.chunks(7).map(<[i64]>::to_vec).collect()
            })
            .collect();
        assert_eq!(merge(&inputs, 64).await, expected(&inputs));
    }

    #[tokio::test]
    async fn no_inputs_merge_to_nothing() {
        assert_eq!(merge(&[], 8).await, vec![]);
        assert_eq!(merge(&[vec![], vec![vec![]]], 8).await, vec![]);
    }
}
