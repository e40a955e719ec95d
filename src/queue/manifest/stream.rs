//! An export's manifest read as a stream: a manifest of 50,000 leaves is 10 MiB of JSON, which
//! a status reads one sub-export at a time instead of holding it.

use std::fmt;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes};
use futures::stream::BoxStream;
use futures::{stream, StreamExt};
use object_store::ObjectStoreExt;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use tokio::sync::mpsc;

use super::{ExportRecords, SubExport};
use crate::error::{Error, Result};
use crate::model::StateVersion;

/// Sub-exports parsed ahead of their consumer.
const SUB_EXPORTS_AHEAD: usize = 1024;

/// The manifest without its sub-exports, which are counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestHeader {
    pub table_id: String,
    pub export_id: String,
    pub split_digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_version: Option<StateVersion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql_query: Option<String>,
    pub sub_exports: usize,
}

impl ExportRecords {
    /// The manifest's sub-exports as they are parsed, and its header once it is parsed.
    pub(super) async fn stream_manifest(
        &self,
    ) -> Result<(
        BoxStream<'static, SubExport>,
        tokio::task::JoinHandle<Result<ManifestHeader>>,
    )> {
        let path = self.layout.manifest();
        let url = self.layout.url_of(&path);
        let body = match self.store().get(&path).await {
            Ok(got) => got.into_stream(),
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::location(
                    self.layout.url_of(&self.layout.folder()),
                    format!(
                        "no manifest for export {} of table {}",
                        self.layout.export_id(),
                        self.layout.table_id()
                    ),
                ))
            }
            Err(e) => return Err(Error::object_store(url, e)),
        };
        let (sender, mut receiver) = mpsc::channel(SUB_EXPORTS_AHEAD);
        let read_error = Arc::new(Mutex::new(None));
        let reader = BlockingBody {
            body,
            chunk: Bytes::new(),
            runtime: tokio::runtime::Handle::current(),
            error: read_error.clone(),
        };
        let header = tokio::task::spawn_blocking(move || {
            let mut json = serde_json::Deserializer::from_reader(io::BufReader::new(reader));
            let parsed = ManifestStream { sender }
                .deserialize(&mut json)
                .and_then(|header| json.end().map(|()| header));
            parsed.map_err(|source| {
                match read_error.lock().expect("manifest read error lock").take() {
                    Some(read) => Error::object_store(url, read),
                    None => Error::Json {
                        what: "export manifest",
                        source,
                    },
                }
            })
        });
        let sub_exports = stream::poll_fn(move |cx| receiver.poll_recv(cx)).boxed();
        Ok((sub_exports, header))
    }
}

/// An object's body read by a blocking parser, a chunk at a time; the store's error is kept
/// apart, as the parser only sees that reading failed.
struct BlockingBody {
    body: BoxStream<'static, object_store::Result<Bytes>>,
    chunk: Bytes,
    runtime: tokio::runtime::Handle,
    error: Arc<Mutex<Option<object_store::Error>>>,
}

impl Read for BlockingBody {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.runtime.block_on(self.body.next()) {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => {
                    let message = e.to_string();
                    *self.error.lock().expect("manifest read error lock") = Some(e);
                    return Err(io::Error::other(message));
                }
                None => return Ok(0),
            }
        }
        let length = out.len().min(self.chunk.len());
        out[..length].copy_from_slice(&self.chunk[..length]);
        self.chunk.advance(length);
        Ok(length)
    }
}

/// Parses a manifest into its header, sending each sub-export on as it is parsed.
struct ManifestStream {
    sender: mpsc::Sender<SubExport>,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum ManifestField {
    TableId,
    ExportId,
    SplitDigest,
    StateVersion,
    SqlQuery,
    SubExports,
    /// Fields a later version may add are read past, as [`super::Manifest`] reads them.
    #[serde(other)]
    Other,
}

impl<'de> DeserializeSeed<'de> for ManifestStream {
    type Value = ManifestHeader;

    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<ManifestHeader, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ManifestStream {
    type Value = ManifestHeader;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an export manifest")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ManifestHeader, A::Error> {
        let mut header = ManifestHeader::default();
        let (mut table_id, mut export_id, mut split_digest, mut sub_exports) =
            (None, None, None, None);
        while let Some(field) = map.next_key()? {
            match field {
                ManifestField::TableId => table_id = Some(map.next_value()?),
                ManifestField::ExportId => export_id = Some(map.next_value()?),
                ManifestField::SplitDigest => split_digest = Some(map.next_value()?),
                ManifestField::StateVersion => header.state_version = map.next_value()?,
                ManifestField::SqlQuery => header.sql_query = map.next_value()?,
                ManifestField::SubExports => {
                    sub_exports = Some(map.next_value_seed(SubExportsSent(&self.sender))?)
                }
                ManifestField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        header.table_id = table_id.ok_or_else(|| de::Error::missing_field("tableId"))?;
        header.export_id = export_id.ok_or_else(|| de::Error::missing_field("exportId"))?;
        header.split_digest =
            split_digest.ok_or_else(|| de::Error::missing_field("splitDigest"))?;
        header.sub_exports = sub_exports.ok_or_else(|| de::Error::missing_field("subExports"))?;
        Ok(header)
    }
}

/// The sub-exports array, each sent on as it is parsed; its value is how many there were.
struct SubExportsSent<'a>(&'a mpsc::Sender<SubExport>);

impl<'de> DeserializeSeed<'de> for SubExportsSent<'_> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for SubExportsSent<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of sub-exports")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut count = 0;
        while let Some(sub_export) = seq.next_element::<SubExport>()? {
            self.0
                .blocking_send(sub_export)
                .map_err(|_| de::Error::custom("the status stopped reading the manifest"))?;
            count += 1;
        }
        Ok(count)
    }
}
