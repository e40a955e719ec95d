//! Uploads that were started and never finished: a runner killed mid-file leaves one behind.
//! Locally that is a staging file `<file>#<n>` beside the final path (object_store's local
//! store renames it into place on completion), which listings through object_store do not show
//! but Spark or a shell would read; on S3 it is a multipart upload in progress, invisible to
//! readers but stored (and billed) until it is aborted.

use std::path::PathBuf;
use std::sync::Arc;

use http::{Method, Request};
use object_store::aws::{AmazonS3, AwsAuthorizer};
use object_store::client::{HttpClient, HttpRequestBody};
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::RetryConfig;
use serde::Deserialize;
use url::Url;

use crate::error::{BoxError, Error, Result};

/// One unfinished upload: the object it was writing, and what names the upload itself (the
/// staging file, or the S3 upload id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnfinishedUpload {
    pub path: Path,
    pub upload: String,
}

/// How a location's store keeps uploads in progress.
#[derive(Clone)]
pub(crate) enum Staging {
    LocalFiles,
    S3(Arc<S3Uploads>),
}

/// What ListMultipartUploads needs, which object_store does not offer: the bucket's endpoint, a
/// signing key and an HTTP client configured as the bucket's store is.
pub(crate) struct S3Uploads {
    pub store: Arc<AmazonS3>,
    pub client: HttpClient,
    /// The bucket's URL, ending in `/`.
    pub bucket_url: Url,
    pub region: String,
    /// As the bucket's store retries its own requests.
    pub retry: RetryConfig,
}

impl Staging {
    /// `url` is `under`'s URL, which for a local store gives its file-system path.
    pub async fn find(&self, under: &Path, url: &str) -> Result<Vec<UnfinishedUpload>> {
        let location = url;
        match self {
            Staging::LocalFiles => {
                let (under, file) = (under.clone(), local_file_path(url)?);
                tokio::task::spawn_blocking(move || Ok(local_staging_files(&under, &file)))
                    .await
                    .map_err(|e| Error::location_from(location, "looking for staging files", e))?
            }
            Staging::S3(s3) => s3.list(under, location).await,
        }
    }

    pub async fn abort(&self, upload: &UnfinishedUpload) -> Result<()> {
        match self {
            Staging::LocalFiles => match tokio::fs::remove_file(&upload.upload).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::location_from(
                    upload.upload.clone(),
                    "cannot remove the staging file",
                    e,
                )),
                _ => Ok(()),
            },
            Staging::S3(s3) => s3
                .store
                .abort_multipart(&upload.path, &upload.upload)
                .await
                .map_err(|e| Error::object_store(&upload.path, e)),
        }
    }
}

/// The staging files of the object `under`, or of every object below the directory `under`.
/// For one object, the names `#1`, `#2`, … are tried in turn (object_store takes the first that
/// is free), which costs a few `stat`s instead of reading a directory of thousands of leaves.
fn local_staging_files(under: &Path, file: &std::path::Path) -> Vec<UnfinishedUpload> {
    if file.is_dir() {
        let mut found = Vec::new();
        walk_staging_files(file, &mut found);
        return found;
    }
    (1..)
        .map(|n| PathBuf::from(format!("{}#{n}", file.display())))
        .take_while(|staging| staging.exists())
        .map(|staging| UnfinishedUpload {
            path: under.clone(),
            upload: staging.display().to_string(),
        })
        .collect()
}

fn local_file_path(url: &str) -> Result<PathBuf> {
    Url::parse(url)
        .ok()
        .and_then(|url| url.to_file_path().ok())
        .ok_or_else(|| Error::location(url, "not a local file URL"))
}

fn walk_staging_files(directory: &std::path::Path, found: &mut Vec<UnfinishedUpload>) {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk_staging_files(&path, found);
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((target, number)) = name.rsplit_once('#') else {
            continue;
        };
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(object) = Path::from_absolute_path(directory.join(target)) {
            found.push(UnfinishedUpload {
                path: object,
                upload: path.display().to_string(),
            });
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListMultipartUploadsResult {
    #[serde(default)]
    upload: Vec<ListedUpload>,
    #[serde(default)]
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedUpload {
    key: String,
    upload_id: String,
}

impl S3Uploads {
    /// Multipart uploads in progress for the key `under` or for keys below `under/`.
    async fn list(&self, under: &Path, location: &str) -> Result<Vec<UnfinishedUpload>> {
        let failed = |source: BoxError| {
            Error::location_from(location, "listing unfinished multipart uploads", source)
        };
        let credential = self
            .store
            .credentials()
            .get_credential()
            .await
            .map_err(|e| failed(e.into()))?;
        let mut found = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut url = self.bucket_url.clone();
            {
                let mut query = url.query_pairs_mut();
                query.append_key_only("uploads");
                query.append_pair("prefix", under.as_ref());
                if let Some((key, upload)) = &markers {
                    query.append_pair("key-marker", key);
                    query.append_pair("upload-id-marker", upload);
                }
            }
            let body = self
                .get_with_retries(&url, &credential)
                .await
                .map_err(|e| failed(e.into()))?;
            let page: ListMultipartUploadsResult =
                quick_xml::de::from_reader(body.as_ref()).map_err(|e| failed(e.into()))?;
            let below = format!("{under}/");
            found.extend(
                page.upload
                    .into_iter()
                    .filter(|u| u.key == under.as_ref() || u.key.starts_with(&below))
                    .filter_map(|u| {
                        Some(UnfinishedUpload {
                            path: Path::parse(&u.key).ok()?,
                            upload: u.upload_id,
                        })
                    }),
            );
            match (
                page.is_truncated,
                page.next_key_marker,
                page.next_upload_id_marker,
            ) {
                (true, Some(key), Some(upload)) => markers = Some((key, upload)),
                _ => return Ok(found),
            }
        }
    }

    /// A signed GET, retried on server errors and failed connections as object_store retries.
    async fn get_with_retries(
        &self,
        url: &Url,
        credential: &object_store::aws::AwsCredential,
    ) -> std::result::Result<bytes::Bytes, String> {
        let started = std::time::Instant::now();
        let mut backoff = self.retry.backoff.init_backoff;
        for attempt in 0.. {
            let mut request = Request::builder()
                .method(Method::GET)
                .uri(url.as_str())
                .body(HttpRequestBody::empty())
                .map_err(|e| e.to_string())?;
            AwsAuthorizer::new(credential, "s3", &self.region).authorize(&mut request, None);
            let answer = match self.client.execute(request).await {
                Ok(response) => {
                    let status = response.status();
                    match response.into_body().bytes().await {
                        Ok(body) if status.is_success() => return Ok(body),
                        Ok(body) if !status.is_server_error() => {
                            let text = String::from_utf8_lossy(&body).trim().to_owned();
                            return Err(format!("HTTP {status}: {text}"));
                        }
                        Ok(body) => {
                            format!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim())
                        }
                        Err(e) => e.to_string(),
                    }
                }
                Err(e) => e.to_string(),
            };
            if attempt >= self.retry.max_retries || started.elapsed() >= self.retry.retry_timeout {
                return Err(format!("after {attempt} retries: {answer}"));
            }
            tokio::time::sleep(backoff).await;
            backoff = backoff
                .mul_f64(self.retry.backoff.base)
                .min(self.retry.backoff.max_backoff);
        }
        unreachable!("the loop returns")
    }
}
