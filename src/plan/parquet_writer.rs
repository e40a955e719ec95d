//! Writes one Parquet file to an object store, encoding the columns of each row group on
//! separate tasks: encoding is most of an export's work, and one thread would cap the export at
//! one core however many the runner has.
//!
//! The file becomes visible only at `finish`: small files are one PUT, large ones a multipart
//! upload completed at the end (locally, a staged file renamed at the end). `abort` or dropping
//! the writer leaves nothing at the path.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

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

use super::upload::Upload;
use crate::model::schema::leaf_count;

/// Row groups encoding at once: one being filled while up to this many encode keeps every core
/// busy without holding more than a few row groups in memory.
const ROW_GROUPS_IN_FLIGHT: usize = 2;

#[derive(Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    /// The bytes written so far; the buffer starts again at the same capacity, since the next
    /// row group is about as large and growing to it would copy it several times.
    fn take(&self) -> Vec<u8> {
        let mut buffer = self.0.lock().expect("buffer lock");
        let capacity = buffer.capacity();
        std::mem::replace(&mut *buffer, Vec::with_capacity(capacity))
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("buffer lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

type EncodedColumns = SpawnedTask<Result<Vec<ArrowColumnChunk>, ParquetError>>;

pub struct ParallelParquetWriter {
    schema: SchemaRef,
    file: SerializedFileWriter<SharedBuffer>,
    factory: ArrowRowGroupWriterFactory,
    buffer: SharedBuffer,
    /// Taken by `finish` or `abort`; one still here when the writer is dropped aborts itself.
    upload: Option<Upload>,
    row_group_rows: usize,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    row_groups_started: usize,
    in_flight: VecDeque<Vec<EncodedColumns>>,
    bytes_written: u64,
    crc32c: u32,
    footer_written: bool,
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
    pub fn try_new(
        store: Arc<dyn ObjectStore>,
        path: Path,
        schema: SchemaRef,
        properties: WriterProperties,
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
            buffer,
            upload: Some(Upload::new(store, path)),
            row_group_rows,
            pending: Vec::new(),
            pending_rows: 0,
            row_groups_started: 0,
            in_flight: VecDeque::new(),
            bytes_written: 0,
            crc32c: 0,
            footer_written: false,
        })
    }

    pub async fn write(&mut self, batch: RecordBatch) -> Result<(), ParquetError> {
        let mut batch = batch;
        while self.pending_rows + batch.num_rows() >= self.row_group_rows {
            let fits = self.row_group_rows - self.pending_rows;
            self.pending.push(batch.slice(0, fits));
            batch = batch.slice(fits, batch.num_rows() - fits);
            self.pending_rows = self.row_group_rows;
            self.start_row_group()?;
            while self.in_flight.len() > ROW_GROUPS_IN_FLIGHT {
                self.write_oldest_row_group().await?;
            }
        }
        if batch.num_rows() > 0 {
            self.pending_rows += batch.num_rows();
            self.pending.push(batch);
        }
        Ok(())
    }

    /// Hands the pending rows to one encoding task per column.
    fn start_row_group(&mut self) -> Result<(), ParquetError> {
        let batches = std::mem::take(&mut self.pending);
        self.pending_rows = 0;
        let mut writers = self
            .factory
            .create_column_writers(self.row_groups_started)?
            .into_iter();
        self.row_groups_started += 1;
        let mut tasks = Vec::with_capacity(self.schema.fields().len());
        for (index, field) in self.schema.fields().iter().enumerate() {
            let column_writers: Vec<ArrowColumnWriter> = writers
                .by_ref()
                .take(leaf_count(field.data_type()))
                .collect();
            let columns: Vec<ArrayRef> = batches
                .iter()
                .map(|b| ArrayRef::clone(b.column(index)))
                .collect();
            let field = FieldRef::clone(field);
            tasks.push(SpawnedTask::spawn(async move {
                encode_column(&field, &columns, column_writers)
            }));
        }
        self.in_flight.push_back(tasks);
        Ok(())
    }

    async fn write_oldest_row_group(&mut self) -> Result<(), ParquetError> {
        let Some(tasks) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let mut row_group = self.file.next_row_group()?;
        for task in tasks {
            let chunks = task
                .join()
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))??;
            for chunk in chunks {
                chunk.append_to_row_group(&mut row_group)?;
            }
        }
        row_group.close()?;
        self.upload_buffered().await
    }

    async fn upload_buffered(&mut self) -> Result<(), ParquetError> {
        let bytes = self.buffer.take();
        self.bytes_written += bytes.len() as u64;
        self.crc32c = crc32c::crc32c_append(self.crc32c, &bytes);
        self.upload_mut()
            .put(bytes.into())
            .await
            .map_err(|e| ParquetError::External(Box::new(e)))
    }

    fn upload_mut(&mut self) -> &mut Upload {
        self.upload
            .as_mut()
            .expect("the upload lives until finish or abort")
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
        self.upload
            .take()
            .expect("the upload lives until finish or abort")
            .complete()
            .await
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        Ok(WrittenFile {
            bytes: self.bytes_written,
            crc32c: format!("{:08x}", self.crc32c),
        })
    }

    /// Encodes and uploads the rows still held and the footer: everything of `finish` but
    /// making the file visible (one request), and unlike that, safe to stop halfway and `abort`.
    pub async fn write_remaining(&mut self) -> Result<(), ParquetError> {
        if self.pending_rows > 0 {
            self.start_row_group()?;
        }
        while !self.in_flight.is_empty() {
            self.write_oldest_row_group().await?;
        }
        self.file.finish()?;
        self.upload_buffered().await?;
        self.upload_mut()
            .send_all()
            .await
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        self.footer_written = true;
        Ok(())
    }

    pub async fn abort(mut self) {
        self.in_flight.clear();
        if let Some(upload) = self.upload.take() {
            if let Err(e) = upload.abort().await {
                tracing::warn!("could not abort an unfinished upload: {e}");
            }
        }
    }
}

fn encode_column(
    field: &FieldRef,
    columns: &[ArrayRef],
    mut writers: Vec<ArrowColumnWriter>,
) -> Result<Vec<ArrowColumnChunk>, ParquetError> {
    for column in columns {
        for (writer, leaf) in writers.iter_mut().zip(compute_leaves(field, column)?) {
            writer.write(&leaf)?;
        }
    }
    writers.into_iter().map(ArrowColumnWriter::close).collect()
}
