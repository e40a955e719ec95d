//! One file's upload, which can be stopped at any point before it is completed and then leaves
//! nothing: object_store's `BufWriter` uploads its last part only as it completes, so a file could
//! not be abandoned while its parts were still going up.
//!
//! Bytes are held until they fill a part. A file smaller than one part is a single PUT when it
//! is completed; a larger one is a multipart upload (locally, a staging file renamed into place)
//! whose parts go up as they fill, a few at once, and which `complete` finishes. Parts are cut to
//! the part size whatever size the writer hands over (a closed row group is tens of MiB), so the
//! bytes going up at once are bounded.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload};
use tokio::task::JoinSet;

/// How big each part of a file is, and how many go up at once.
///
/// S3 takes parts of 5 MiB to 5 GiB (the last may be smaller), 10,000 of them, and objects of
/// up to 5 TiB. Parts of a fixed 10 MiB (object_store's `BufWriter`'s) stop at 97.7 GiB, which
/// a leaf of 10⁹ Sleeper rows reaches; parts of 5 GiB from the start would hold gigabytes for
/// every file. So parts are 10 MiB up to part 1,000 (files up to 9.8 GiB, most of them), then
/// double every 1,000 parts up to 5 GiB: 10,000 parts then hold 9.98 TiB, past S3's object
/// limit. A file holds four 10 MiB parts' worth, or two parts when they are bigger (the one
/// going up and the one filling): 40 MiB for files up to 29 GiB, 1.25 GiB up to 1.2 TiB,
/// 10 GiB near 5 TiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartSchedule {
    pub first_part: usize,
    /// Parts of each size before the size doubles.
    pub parts_per_size: usize,
    pub largest_part: usize,
    /// Bytes of parts held at once (two parts at least): with the server's latency
    /// overlapped, more only hold more memory (measured in `benches/scale.rs`, S3 variants).
    pub bytes_in_flight: usize,
}

impl PartSchedule {
    /// S3's limits, as above.
    pub const S3: PartSchedule = PartSchedule {
        first_part: 10 * 1024 * 1024,
        parts_per_size: 1000,
        largest_part: 5 * 1024 * 1024 * 1024,
        bytes_in_flight: 40 * 1024 * 1024,
    };

    /// This schedule with at most `bytes` of parts held at once (two parts still go up at once).
    pub fn holding_at_most(self, bytes: usize) -> Self {
        PartSchedule {
            bytes_in_flight: self.bytes_in_flight.min(bytes),
            ..self
        }
    }

    /// The size of part `index` (from 0).
    pub fn part_size(&self, index: usize) -> usize {
        let doublings = (index / self.parts_per_size).min(usize::BITS as usize - 1) as u32;
        self.first_part
            .checked_mul(1 << doublings)
            .map_or(self.largest_part, |size| size.min(self.largest_part))
    }

    /// Parts of `size` held at once: going up, and the one filling after the others wait.
    /// Two at least, so that a file of big parts still fills one while the last goes up.
    fn in_flight(&self, size: usize) -> usize {
        (self.bytes_in_flight / size.max(1)).max(2)
    }
}

pub struct Upload {
    store: Arc<dyn ObjectStore>,
    path: Path,
    /// Bytes not yet sent, in the order they were written.
    held: VecDeque<Bytes>,
    held_bytes: usize,
    multipart: Option<Box<dyn MultipartUpload>>,
    /// Each part going up, answering with its size once stored.
    parts: JoinSet<object_store::Result<usize>>,
    bytes_going_up: usize,
    schedule: PartSchedule,
    parts_sent: usize,
}

impl Upload {
    pub fn with_schedule(store: Arc<dyn ObjectStore>, path: Path, schedule: PartSchedule) -> Self {
        Upload {
            store,
            path,
            held: VecDeque::new(),
            held_bytes: 0,
            multipart: None,
            parts: JoinSet::new(),
            bytes_going_up: 0,
            schedule,
            parts_sent: 0,
        }
    }

    /// Bytes it holds: those waiting to fill a part and the parts going up.
    pub fn bytes_held(&self) -> usize {
        self.held_bytes + self.bytes_going_up
    }

    pub async fn put(&mut self, bytes: Bytes) -> object_store::Result<()> {
        self.held_bytes += bytes.len();
        self.held.push_back(bytes);
        loop {
            let size = self.schedule.part_size(self.parts_sent);
            if self.held_bytes < size {
                return Ok(());
            }
            let part = self.take_held(size);
            self.send_part(part).await?;
        }
    }

    /// The first `size` bytes held (all of them if fewer), without copying them.
    fn take_held(&mut self, size: usize) -> PutPayload {
        let mut part = Vec::new();
        let mut taken = 0;
        while let Some(first) = self.held.front_mut().filter(|_| taken < size) {
            if first.len() <= size - taken {
                taken += first.len();
                part.extend(self.held.pop_front());
            } else {
                part.push(first.split_to(size - taken));
                taken = size;
            }
        }
        self.held_bytes -= taken;
        part.into_iter().collect()
    }

    async fn send_part(&mut self, part: PutPayload) -> object_store::Result<()> {
        if self.multipart.is_none() {
            self.multipart = Some(self.store.put_multipart(&self.path).await?);
        }
        let upload = self.multipart.as_mut().expect("started above");
        let size = part.content_length();
        let in_flight = self.schedule.in_flight(size);
        let stored = upload.put_part(part);
        self.parts.spawn(async move { stored.await.map(|()| size) });
        self.bytes_going_up += size;
        self.parts_sent += 1;
        while self.parts.len() >= in_flight {
            self.next_part_done().await?;
        }
        Ok(())
    }

    async fn next_part_done(&mut self) -> object_store::Result<()> {
        match self.parts.join_next().await {
            Some(Ok(done)) => {
                self.bytes_going_up -= done.as_ref().map_or(0, |size| *size);
                done.map(|_| ())
            }
            Some(Err(join)) => Err(object_store::Error::Generic {
                store: "upload",
                source: Box::new(join),
            }),
            None => Ok(()),
        }
    }

    /// Sends what is held (as the last part of a multipart upload) and waits for every part:
    /// all of the file is then stored, and still invisible until `complete`.
    pub async fn send_all(&mut self) -> object_store::Result<()> {
        if self.multipart.is_some() && self.held_bytes > 0 {
            let part = self.take_held(self.held_bytes);
            self.send_part(part).await?;
        }
        while !self.parts.is_empty() {
            self.next_part_done().await?;
        }
        Ok(())
    }

    /// Makes the file visible: one request, after `send_all`.
    pub async fn complete(mut self) -> object_store::Result<()> {
        self.send_all().await?;
        match self.multipart.take() {
            Some(mut multipart) => {
                if let Err(error) = multipart.complete().await {
                    // Nothing is left at the path; the parts are dropped with the upload.
                    let _ = multipart.abort().await;
                    return Err(error);
                }
            }
            None => {
                let whole = self.take_held(self.held_bytes);
                self.store.put(&self.path, whole).await?;
            }
        }
        Ok(())
    }

    /// Stops the upload and drops what it stored.
    pub async fn abort(mut self) -> object_store::Result<()> {
        self.parts.abort_all();
        while self.parts.join_next().await.is_some() {}
        match self.multipart.take() {
            Some(mut multipart) => multipart.abort().await,
            None => Ok(()),
        }
    }
}

/// An upload dropped mid-file (its plan's stream dropped, e.g. a cancelled query) cannot wait
/// for the abort, so it starts it: on S3 a multipart upload left in progress is stored and
/// billed until a lifecycle rule removes it.
impl Drop for Upload {
    fn drop(&mut self) {
        if let (Some(mut multipart), Ok(runtime)) =
            (self.multipart.take(), tokio::runtime::Handle::try_current())
        {
            self.parts.abort_all();
            runtime.spawn(async move {
                if let Err(e) = multipart.abort().await {
                    tracing::warn!("could not abort an unfinished upload: {e}");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload_of(pieces: &[usize]) -> Upload {
        let store = Arc::new(object_store::memory::InMemory::new());
        let mut upload = Upload::with_schedule(store, Path::from("f"), PartSchedule::S3);
        for (i, &size) in pieces.iter().enumerate() {
            upload.held_bytes += size;
            upload.held.push_back(Bytes::from(vec![i as u8; size]));
        }
        upload
    }

    #[test]
    fn parts_are_cut_to_their_size_across_and_within_written_pieces() {
        let mut upload = upload_of(&[3, 4, 10]);
        let part: Vec<Bytes> = upload.take_held(5).into_iter().collect();
        assert_eq!(part, [Bytes::from(vec![0; 3]), Bytes::from(vec![1; 2])]);
        assert_eq!(upload.held_bytes, 12);
        let part: Vec<Bytes> = upload.take_held(5).into_iter().collect();
        assert_eq!(part, [Bytes::from(vec![1; 2]), Bytes::from(vec![2; 3])]);
        let rest = upload.take_held(100);
        assert_eq!(rest.content_length(), 7);
        assert_eq!(upload.held_bytes, 0);
        assert!(upload.held.is_empty());
    }

    #[test]
    fn the_s3_schedule_reaches_its_object_limit_within_its_part_limit() {
        let s3 = PartSchedule::S3;
        let sizes: Vec<usize> = (0..10_000).map(|i| s3.part_size(i)).collect();
        assert!(sizes
            .iter()
            .all(|&size| (5 << 20..=5 << 30).contains(&size)));
        assert_eq!(
            (sizes[999], sizes[1000], sizes[9999]),
            (10 << 20, 20 << 20, 5 << 30)
        );
        let total: u64 = sizes.iter().map(|&size| size as u64).sum();
        assert!(total >= 5 << 40, "10,000 parts hold {total} bytes");
        assert_eq!((s3.in_flight(10 << 20), s3.in_flight(20 << 20)), (4, 2));
        assert_eq!(s3.in_flight(5 << 30), 2);
    }

    /// Counts the parts an upload sends, their sizes, and the most in flight at once.
    #[derive(Debug, Default)]
    struct Parts {
        sizes: std::sync::Mutex<Vec<usize>>,
        in_flight: std::sync::atomic::AtomicUsize,
        most_in_flight: std::sync::atomic::AtomicUsize,
    }

    #[derive(Debug)]
    struct CountingStore {
        inner: object_store::memory::InMemory,
        parts: Arc<Parts>,
    }

    impl std::fmt::Display for CountingStore {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "CountingStore")
        }
    }

    #[derive(Debug)]
    struct CountingUpload {
        inner: Box<dyn MultipartUpload>,
        parts: Arc<Parts>,
    }

    #[async_trait::async_trait]
    impl MultipartUpload for CountingUpload {
        fn put_part(&mut self, data: PutPayload) -> object_store::UploadPart {
            use std::sync::atomic::Ordering::SeqCst;
            let parts = Arc::clone(&self.parts);
            parts.sizes.lock().unwrap().push(data.content_length());
            let now = parts.in_flight.fetch_add(1, SeqCst) + 1;
            parts.most_in_flight.fetch_max(now, SeqCst);
            let put = self.inner.put_part(data);
            Box::pin(async move {
                // Held a moment, as a server would, so that parts overlap.
                tokio::task::yield_now().await;
                let done = put.await;
                parts.in_flight.fetch_sub(1, SeqCst);
                done
            })
        }

        async fn complete(&mut self) -> object_store::Result<object_store::PutResult> {
            self.inner.complete().await
        }

        async fn abort(&mut self) -> object_store::Result<()> {
            self.inner.abort().await
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for CountingStore {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: object_store::PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            self.inner.put_opts(location, payload, opts).await
        }

        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            Ok(Box::new(CountingUpload {
                inner: self.inner.put_multipart_opts(location, opts).await?,
                parts: Arc::clone(&self.parts),
            }))
        }

        async fn get_opts(
            &self,
            location: &Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.inner.get_opts(location, options).await
        }

        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
            self.inner.delete_stream(locations)
        }

        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.inner.list(prefix)
        }

        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<object_store::ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    /// S3's schedule scaled down a million times (a 10-byte first part): a file of 10,000 parts
    /// goes up in parts of the schedule's sizes, in order, with the bytes in flight bounded, and
    /// is stored whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upload_follows_its_schedule_to_ten_thousand_parts() {
        let schedule = PartSchedule {
            first_part: 10,
            parts_per_size: 1000,
            largest_part: 5 * 1024,
            bytes_in_flight: 40,
        };
        let parts = Arc::new(Parts::default());
        let store = Arc::new(CountingStore {
            inner: object_store::memory::InMemory::new(),
            parts: Arc::clone(&parts),
        });
        let path = Path::from("export/big.parquet");
        let mut upload = Upload::with_schedule(Arc::clone(&store) as _, path.clone(), schedule);
        let file_bytes: usize = (0..10_000).map(|i| schedule.part_size(i)).sum();
        let mut written = Vec::with_capacity(file_bytes);
        // Written in pieces of a column chunk's irregular sizes, not the parts'.
        let mut piece = 0;
        while written.len() < file_bytes {
            let size = (7 + piece * 13 % 997).min(file_bytes - written.len());
            let bytes: Vec<u8> = (0..size).map(|n| (n * 31 + piece) as u8).collect();
            written.extend_from_slice(&bytes);
            upload.put(bytes.into()).await.unwrap();
            piece += 1;
        }
        upload.complete().await.unwrap();
        let sizes = parts.sizes.lock().unwrap().clone();
        let expected: Vec<usize> = (0..10_000).map(|i| schedule.part_size(i)).collect();
        assert_eq!(sizes.len(), 10_000);
        assert!(sizes == expected, "parts follow the schedule");
        let most = parts
            .most_in_flight
            .load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            (1..=4).contains(&most),
            "{most} parts were in flight at once"
        );
        let stored = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert!(stored == written, "the stored bytes are the written ones");
    }

    #[tokio::test]
    async fn a_file_of_many_parts_is_stored_whole_and_in_order() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let path = Path::from("export/leaf.parquet");
        let mut upload =
            Upload::with_schedule(Arc::clone(&store) as _, path.clone(), PartSchedule::S3);
        // A written piece larger than several parts, then small ones.
        let mut written = Vec::new();
        let part = PartSchedule::S3.first_part;
        for (i, size) in [3 * part + 17, 5, part - 3, 1].into_iter().enumerate() {
            let piece: Vec<u8> = (0..size).map(|n| (n + i) as u8).collect();
            written.extend_from_slice(&piece);
            upload.put(piece.into()).await.unwrap();
        }
        upload.complete().await.unwrap();
        let stored = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(stored.len(), written.len());
        assert!(stored == written, "the stored bytes are the written ones");
    }
}
