//! Writes one Parquet file to an object store, encoding each column on its own task: encoding is
//! most of an export's work, and one thread would cap the export at one core however many the
//! runner has. A column's task encodes the column's arrays as they arrive, so what waits for a
//! row group to close is its encoded pages, never its raw rows: memory is bounded by the
//! compressed size of a row group, whatever the row-group setting.
//!
//! The file becomes visible only at `finish`: small files are one PUT, large ones a multipart
//! upload completed at the end (locally, a staged file renamed at the end). `abort` or dropping
//! the writer leaves nothing at the path.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{FieldRef, SchemaRef};
use datafusion::common::runtime::SpawnedTask;
use datafusion::parquet::arrow::arrow_writer::{
    compute_leaves, ArrowColumnChunk, ArrowColumnWriter, ArrowRowGroupWriterFactory,
};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::parquet::file::writer::SerializedFileWriter;
use object_store::path::Path;
use object_store::ObjectStore;
use tokio::sync::mpsc;

use super::upload::{PartSchedule, Upload};
use crate::model::schema::leaf_count;

/// Row groups up to this many rows may finish encoding while the next one fills: the overlap
/// saved 2 % of a one-thread export of 100 k-row row groups (`benches/leaf_export.rs`), while at
/// 1 M-row row groups it was no faster and held a second row group's encoded pages (70 MiB more
/// peak; `benches/scale.rs`).
const OVERLAPPED_ROW_GROUP_ROWS: usize = 256 * 1024;

/// Arrays queued for each column's encoder: enough that encoders and the merge overlap, few
/// enough that raw rows never pile up when an encoder is the slower side.
const ARRAYS_QUEUED_PER_COLUMN: usize = 2;

/// What the Parquet writer writes is cut into blocks of this size on its way to the upload: one
/// buffer growing to hold a column chunk (tens of MiB at 1 M-row row groups) doubled past it and
/// copied itself as it grew, 31 MiB of a K = 128 export's peak (heaptrack).
const WRITTEN_BLOCK_BYTES: usize = 1024 * 1024;

/// The bytes the Parquet writer has written since the upload last took them.
#[derive(Clone, Default)]
struct SharedBuffer(Arc<Mutex<WrittenBlocks>>);

#[derive(Default)]
struct WrittenBlocks {
    full: Vec<Bytes>,
    filling: Vec<u8>,
}

impl SharedBuffer {
    /// The bytes written since the last take, in order. A block still filling is copied out
    /// at its length, so that no part waiting for the upload keeps a whole block's capacity.
    fn take(&self) -> Vec<Bytes> {
        let mut blocks = self.0.lock().expect("buffer lock");
        if !blocks.filling.is_empty() {
            let filled = Bytes::copy_from_slice(&blocks.filling);
            blocks.filling.clear();
            blocks.full.push(filled);
        }
        std::mem::take(&mut blocks.full)
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, mut bytes: &[u8]) -> std::io::Result<usize> {
        let written = bytes.len();
        let mut blocks = self.0.lock().expect("buffer lock");
        while !bytes.is_empty() {
            if blocks.filling.capacity() == 0 {
                blocks.filling.reserve_exact(WRITTEN_BLOCK_BYTES);
            }
            let room = blocks.filling.capacity() - blocks.filling.len();
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            blocks.filling.extend_from_slice(now);
            bytes = later;
            if blocks.filling.len() == blocks.filling.capacity() {
                let full = std::mem::take(&mut blocks.filling);
                blocks.full.push(full.into());
            }
        }
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

type EncodedColumn = SpawnedTask<Result<Vec<ArrowColumnChunk>, ParquetError>>;

/// The row group being filled: one encoder task per column, fed as batches arrive.
struct OpenRowGroup {
    arrays: Vec<mpsc::Sender<ArrayRef>>,
    encoded: Vec<EncodedColumn>,
    rows: usize,
    held: EncodedBytes,
}

/// The bytes a row group's encoders hold (pages encoded, values buffered), as they last said.
type EncodedBytes = Arc<AtomicUsize>;

/// A row group's encoders after its last rows were sent.
struct ClosingRowGroup {
    encoded: Vec<EncodedColumn>,
    held: EncodedBytes,
}

pub struct ParallelParquetWriter {
    schema: SchemaRef,
    file: SerializedFileWriter<SharedBuffer>,
    factory: ArrowRowGroupWriterFactory,
    output: FileOutput,
    row_group_rows: usize,
    open: Option<OpenRowGroup>,
    row_groups_started: usize,
    closing: VecDeque<ClosingRowGroup>,
    footer_written: bool,
}

/// Where the file's bytes go once written: the buffer the Parquet writer writes into, and the
/// upload it is emptied into.
struct FileOutput {
    buffer: SharedBuffer,
    /// Taken by `finish` or `abort`; one still here when the writer is dropped aborts itself.
    upload: Option<Upload>,
    bytes_written: u64,
    crc32c: u32,
}

impl FileOutput {
    /// Sends what the buffer holds on to the upload.
    async fn send_buffered(&mut self) -> Result<(), ParquetError> {
        for block in self.buffer.take() {
            self.bytes_written += block.len() as u64;
            self.crc32c = crc32c::crc32c_append(self.crc32c, &block);
            self.upload_mut()
                .put(block)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))?;
        }
        Ok(())
    }

    fn upload_mut(&mut self) -> &mut Upload {
        self.upload
            .as_mut()
            .expect("the upload lives until finish or abort")
    }
}

/// A finished file: its size and the CRC32C of its bytes (hex), for records a reader can verify.
/// CRC32C rather than a cryptographic hash: it costs a few milliseconds per gigabyte with the
/// processor's instruction (SHA-256 cost a fifth of a two-thread export), and S3 can report the
/// same checksum for stored objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    pub bytes: u64,
    pub crc32c: String,
}

impl ParallelParquetWriter {
    /// The least a writer holds between batches: the bytes filling a part and the part going
    /// up (two S3 parts), the block being written and a batch's encoded pages.
    pub const LEAST_MEMORY_BYTES: usize = 2 * PartSchedule::S3.first_part + 4 * WRITTEN_BLOCK_BYTES;

    pub fn try_new(
        store: Arc<dyn ObjectStore>,
        path: Path,
        schema: SchemaRef,
        properties: WriterProperties,
        upload_bytes: Option<usize>,
    ) -> Result<Self, ParquetError> {
        let row_group_rows = properties
            .max_row_group_row_count()
            .unwrap_or(1024 * 1024)
            .max(1);
        let buffer = SharedBuffer::default();
        // ArrowWriter sets up the file (with the Arrow schema in its metadata, so types such as
        // map and list field names read back exactly); we then write row groups ourselves.
        let (file, factory) =
            ArrowWriter::try_new(buffer.clone(), Arc::clone(&schema), Some(properties))?
                .into_serialized_writer()?;
        Ok(ParallelParquetWriter {
            schema,
            file,
            factory,
            output: FileOutput {
                buffer,
                upload: Some(Upload::with_schedule(
                    store,
                    path,
                    upload_bytes.map_or(PartSchedule::S3, |bytes| {
                        PartSchedule::S3.holding_at_most(bytes)
                    }),
                )),
                bytes_written: 0,
                crc32c: 0,
            },
            row_group_rows,
            open: None,
            row_groups_started: 0,
            closing: VecDeque::new(),
            footer_written: false,
        })
    }

    pub async fn write(&mut self, batch: RecordBatch) -> Result<(), ParquetError> {
        let mut batch = batch;
        while batch.num_rows() > 0 {
            if self.open.is_none() {
                self.open = Some(self.open_row_group()?);
            }
            let open = self.open.as_mut().expect("a row group is open");
            let fits = (self.row_group_rows - open.rows).min(batch.num_rows());
            let part = batch.slice(0, fits);
            batch = batch.slice(fits, batch.num_rows() - fits);
            open.rows += fits;
            let mut encoder_stopped = false;
            for (arrays, column) in open.arrays.iter().zip(part.columns()) {
                if arrays.send(ArrayRef::clone(column)).await.is_err() {
                    encoder_stopped = true;
                    break;
                }
            }
            let full = open.rows == self.row_group_rows;
            if encoder_stopped {
                // An encoder stops early only on an error, which its row group reports.
                self.close_row_group();
                self.write_closed_row_groups().await?;
                return Err(ParquetError::General(
                    "a column encoder stopped before its row group ended".into(),
                ));
            }
            if full {
                self.close_row_group();
                while self.closing.len() > self.row_groups_closing() {
                    self.write_oldest_row_group().await?;
                }
            }
        }
        Ok(())
    }

    /// Closed row groups whose encoders may still be finishing while the next one fills.
    fn row_groups_closing(&self) -> usize {
        usize::from(self.row_group_rows <= OVERLAPPED_ROW_GROUP_ROWS)
    }

    /// Starts one encoding task per column of the next row group.
    fn open_row_group(&mut self) -> Result<OpenRowGroup, ParquetError> {
        let mut writers = self
            .factory
            .create_column_writers(self.row_groups_started)?
            .into_iter();
        self.row_groups_started += 1;
        let mut open = OpenRowGroup {
            arrays: Vec::with_capacity(self.schema.fields().len()),
            encoded: Vec::with_capacity(self.schema.fields().len()),
            rows: 0,
            held: EncodedBytes::default(),
        };
        for field in self.schema.fields() {
            let column_writers: Vec<ArrowColumnWriter> = writers
                .by_ref()
                .take(leaf_count(field.data_type()))
                .collect();
            let (sender, receiver) = mpsc::channel(ARRAYS_QUEUED_PER_COLUMN);
            open.arrays.push(sender);
            open.encoded.push(SpawnedTask::spawn(encode_column(
                FieldRef::clone(field),
                receiver,
                column_writers,
                Arc::clone(&open.held),
            )));
        }
        Ok(open)
    }

    /// Ends the open row group's input: its encoders finish what is queued and close.
    fn close_row_group(&mut self) {
        if let Some(open) = self.open.take() {
            self.closing.push_back(ClosingRowGroup {
                encoded: open.encoded,
                held: open.held,
            });
        }
    }

    async fn write_closed_row_groups(&mut self) -> Result<(), ParquetError> {
        while !self.closing.is_empty() {
            self.write_oldest_row_group().await?;
        }
        Ok(())
    }

    async fn write_oldest_row_group(&mut self) -> Result<(), ParquetError> {
        let Some(closing) = self.closing.front_mut() else {
            return Ok(());
        };
        let tasks = std::mem::take(&mut closing.encoded);
        let mut row_group = self.file.next_row_group()?;
        for task in tasks {
            let chunks = task
                .join()
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))??;
            for chunk in chunks {
                chunk.append_to_row_group(&mut row_group)?;
                // Each column's bytes go on as soon as they are in the file, so a row group is
                // never held twice, encoded and again as the file's bytes.
                self.output.send_buffered().await?;
            }
        }
        row_group.close()?;
        self.closing.pop_front();
        self.output.send_buffered().await
    }

    /// Bytes it holds now: its row groups' encoded pages and the file's bytes on their way up.
    pub fn memory_held(&self) -> usize {
        let encoding = self.open.iter().map(|open| &open.held);
        let closing = self.closing.iter().map(|closing| &closing.held);
        let encoded: usize = encoding.chain(closing).map(|held| held.load(Relaxed)).sum();
        let uploading = self.output.upload.as_ref().map_or(0, Upload::bytes_held);
        encoded + uploading + WRITTEN_BLOCK_BYTES
    }

    /// Ends the row group being filled before its size, and writes it out, so that its pages
    /// stop being held: what the writer does when its memory runs short.
    pub async fn end_row_group(&mut self) -> Result<(), ParquetError> {
        self.close_row_group();
        self.write_closed_row_groups().await
    }

    /// Writes what is left and the footer, and completes the upload.
    pub async fn finish(mut self) -> Result<WrittenFile, ParquetError> {
        if !self.footer_written {
            if let Err(error) = self.write_remaining().await {
                self.abort().await;
                return Err(error);
            }
        }
        // A failed completion leaves nothing behind by itself (a single put writes nothing, a
        // multipart upload that cannot complete is aborted).
        self.output
            .upload
            .take()
            .expect("the upload lives until finish or abort")
            .complete()
            .await
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        Ok(WrittenFile {
            bytes: self.output.bytes_written,
            crc32c: format!("{:08x}", self.output.crc32c),
        })
    }

    /// Encodes and uploads the rows still held and the footer: everything of `finish` but
    /// making the file visible (one request), and unlike that, safe to stop halfway and `abort`.
    pub async fn write_remaining(&mut self) -> Result<(), ParquetError> {
        self.close_row_group();
        self.write_closed_row_groups().await?;
        self.file.finish()?;
        self.output.send_buffered().await?;
        self.output
            .upload_mut()
            .send_all()
            .await
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        self.footer_written = true;
        Ok(())
    }

    pub async fn abort(mut self) {
        self.open = None;
        self.closing.clear();
        if let Some(upload) = self.output.upload.take() {
            if let Err(e) = upload.abort().await {
                tracing::warn!("could not abort an unfinished upload: {e}");
            }
        }
    }
}

async fn encode_column(
    field: FieldRef,
    mut arrays: mpsc::Receiver<ArrayRef>,
    mut writers: Vec<ArrowColumnWriter>,
    held: EncodedBytes,
) -> Result<Vec<ArrowColumnChunk>, ParquetError> {
    let (mut said, mut written) = (0, 0);
    while let Some(array) = arrays.recv().await {
        for (writer, leaf) in writers.iter_mut().zip(compute_leaves(&field, &array)?) {
            writer.write(&leaf)?;
        }
        written += array.to_data().get_slice_memory_size()?;
        // A writer's `memory_size` counts its pages' lengths, but a data page v2 (Sleeper's
        // default) keeps the capacity its compressor reserved, about the page's uncompressed
        // size (parquet's `GenericColumnWriter::add_data_page` shrinks only v1 pages): what a
        // row group holds is then nearer the bytes it was given (heaptrack: 2× at zstd).
        let now = writers
            .iter()
            .map(ArrowColumnWriter::memory_size)
            .sum::<usize>()
            .max(written);
        if now >= said {
            held.fetch_add(now - said, Relaxed);
        } else {
            held.fetch_sub(said - now, Relaxed);
        }
        said = now;
    }
    writers.into_iter().map(ArrowColumnWriter::close).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(sizes: &[usize], first: u8) -> Vec<u8> {
        let total: usize = sizes.iter().sum();
        (0..total).map(|n| (n as u8).wrapping_add(first)).collect()
    }

    #[test]
    fn written_bytes_are_taken_in_order_in_blocks_of_at_most_the_block_size() {
        let mut buffer = SharedBuffer::default();
        let mut taken = Vec::new();
        let mut expected = Vec::new();
        // Pieces inside a block, ending exactly on its edge, and spanning several blocks.
        for (round, sizes) in [
            vec![3, WRITTEN_BLOCK_BYTES - 3, 0, 2],
            vec![2 * WRITTEN_BLOCK_BYTES + 5, 7],
            vec![WRITTEN_BLOCK_BYTES - 14],
        ]
        .into_iter()
        .enumerate()
        {
            let bytes = written(&sizes, round as u8);
            let mut pieces = bytes.as_slice();
            for size in sizes {
                let (piece, rest) = pieces.split_at(size);
                assert_eq!(buffer.write(piece).unwrap(), size);
                pieces = rest;
            }
            expected.extend_from_slice(&bytes);
            let blocks = buffer.take();
            assert!(
                blocks
                    .iter()
                    .all(|b| !b.is_empty() && b.len() <= WRITTEN_BLOCK_BYTES),
                "round {round}: {:?}",
                blocks.iter().map(Bytes::len).collect::<Vec<_>>()
            );
            taken.extend(blocks);
        }
        assert!(buffer.take().is_empty(), "nothing is taken twice");
        let concatenated: Vec<u8> = taken.iter().flat_map(|b| b.iter().copied()).collect();
        assert!(concatenated == expected, "the bytes come back as written");
        // The blocks filled to the edge went on whole; the rest were cut at a take.
        let sizes: Vec<usize> = taken.iter().map(Bytes::len).collect();
        assert_eq!(
            sizes,
            [
                WRITTEN_BLOCK_BYTES,
                2,
                WRITTEN_BLOCK_BYTES,
                WRITTEN_BLOCK_BYTES,
                12,
                WRITTEN_BLOCK_BYTES - 14
            ]
        );
    }
}
