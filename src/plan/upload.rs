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

/// S3 takes parts of 5 MiB to 5 GiB (the last may be smaller) and 10,000 of them, so 10 MiB
/// parts (object_store's `BufWriter` uses the same) allow files of up to 97 GiB.
const PART_SIZE: usize = 10 * 1024 * 1024;
/// Parts going up at once, per file: with the server's latency overlapped, more only hold more
/// bytes (measured in `benches/scale.rs`, S3 variants).
const PARTS_IN_FLIGHT: usize = 4;

pub struct Upload {
    store: Arc<dyn ObjectStore>,
    path: Path,
    /// Bytes not yet sent, in the order they were written.
    held: VecDeque<Bytes>,
    held_bytes: usize,
    multipart: Option<Box<dyn MultipartUpload>>,
    parts: JoinSet<object_store::Result<()>>,
}

impl Upload {
    pub fn new(store: Arc<dyn ObjectStore>, path: Path) -> Self {
        Upload {
            store,
            path,
            held: VecDeque::new(),
            held_bytes: 0,
            multipart: None,
            parts: JoinSet::new(),
        }
    }

    pub async fn put(&mut self, bytes: Bytes) -> object_store::Result<()> {
        self.held_bytes += bytes.len();
        self.held.push_back(bytes);
        while self.held_bytes >= PART_SIZE {
            let part = self.take_held(PART_SIZE);
            self.send_part(part).await?;
        }
        Ok(())
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
        self.parts.spawn(upload.put_part(part));
        while self.parts.len() >= PARTS_IN_FLIGHT {
            self.next_part_done().await?;
        }
        Ok(())
    }

    async fn next_part_done(&mut self) -> object_store::Result<()> {
        match self.parts.join_next().await {
            Some(Ok(done)) => done,
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
        let mut upload = Upload::new(store, Path::from("f"));
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

    #[tokio::test]
    async fn a_file_of_many_parts_is_stored_whole_and_in_order() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let path = Path::from("export/leaf.parquet");
        let mut upload = Upload::new(Arc::clone(&store) as _, path.clone());
        // A written piece larger than several parts, then small ones.
        let mut written = Vec::new();
        for (i, size) in [3 * PART_SIZE + 17, 5, PART_SIZE - 3, 1]
            .into_iter()
            .enumerate()
        {
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
