//! One file's upload, which can be stopped at any point before it is completed and then leaves
//! nothing: object_store's `BufWriter` uploads its last part only as it completes, so a file could
//! not be abandoned while its parts were still going up.
//!
//! Bytes are held until they fill a part. A file smaller than one part is a single PUT when it
//! is completed; a larger one is a multipart upload (locally, a staging file renamed into place)
//! whose parts go up as they fill, a few at once, and which `complete` finishes.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayloadMut};
use tokio::task::JoinSet;

/// S3 takes parts of 5 MiB to 5 GiB (the last may be smaller); object_store's `BufWriter` uses
/// 10 MiB.
const PART_SIZE: usize = 10 * 1024 * 1024;
/// Parts going up at once: enough to keep a connection's worth of bandwidth busy per file.
const PARTS_IN_FLIGHT: usize = 8;

pub struct Upload {
    store: Arc<dyn ObjectStore>,
    path: Path,
    held: PutPayloadMut,
    multipart: Option<Box<dyn MultipartUpload>>,
    parts: JoinSet<object_store::Result<()>>,
}

impl Upload {
    pub fn new(store: Arc<dyn ObjectStore>, path: Path) -> Self {
        Upload {
            store,
            path,
            held: PutPayloadMut::new(),
            multipart: None,
            parts: JoinSet::new(),
        }
    }

    pub async fn put(&mut self, bytes: Bytes) -> object_store::Result<()> {
        self.held.push(bytes);
        if self.held.content_length() >= PART_SIZE {
            self.send_held_part().await?;
        }
        Ok(())
    }

    async fn send_held_part(&mut self) -> object_store::Result<()> {
        if self.multipart.is_none() {
            self.multipart = Some(self.store.put_multipart(&self.path).await?);
        }
        let part = std::mem::take(&mut self.held).freeze();
        let upload = self.multipart.as_mut().expect("started above");
        self.parts.spawn(upload.put_part(part));
        while self.parts.len() > PARTS_IN_FLIGHT {
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
        if self.multipart.is_some() && self.held.content_length() > 0 {
            self.send_held_part().await?;
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
                let held = std::mem::take(&mut self.held).freeze();
                self.store.put(&self.path, held).await?;
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
