//! Where tables, inputs and outputs live: a local directory or an `s3://` prefix, both reached
//! through `object_store` so every code path is the same for both.

mod uploads;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::{HttpConnector, ReqwestConnector};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    ClientConfigKey, ClientOptions, ObjectMeta, ObjectStore, ObjectStoreExt, RetryConfig,
};
use url::Url;

use crate::error::{Error, Result};
use crate::model::JavaProperties;
pub use uploads::UnfinishedUpload;
use uploads::{S3Uploads, Staging};

/// A directory-like place: an object store and a prefix in it.
#[derive(Clone)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    /// The URL the prefix is reached by, e.g. `file:///data/table` or `s3://bucket/table`.
    pub url: Url,
    staging: Staging,
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url.as_str())
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url.as_str())
    }
}

impl Location {
    pub fn child(&self, relative: &str) -> Path {
        relative
            .split('/')
            .filter(|part| !part.is_empty())
            .fold(self.prefix.clone(), |path, part| path.join(part))
    }

    pub fn url_of(&self, path: &Path) -> String {
        let scheme_and_root = match self.url.scheme() {
            "file" => "file:///".to_owned(),
            scheme => format!("{scheme}://{}/", self.url.host_str().unwrap_or_default()),
        };
        format!("{scheme_and_root}{path}")
    }

    /// Every object under `prefix`; an error names the prefix's URL.
    pub async fn list(&self, prefix: &Path) -> Result<Vec<ObjectMeta>> {
        self.store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| Error::object_store(self.url_of(prefix), e))
    }

    /// Whether `other` lies strictly inside this location: in the same store (the same bucket,
    /// `s3a://` being `s3://`; or the local file system), under this prefix segment by segment.
    /// Decided on resolved locations, after every decoding their URLs went through, never on
    /// the strings they were given as.
    pub fn contains(&self, other: &Location) -> bool {
        self.store_identity() == other.store_identity()
            && other.prefix != self.prefix
            && other.prefix.prefix_matches(&self.prefix)
    }

    fn store_identity(&self) -> (&str, Option<&str>) {
        let scheme = match self.url.scheme() {
            "s3a" => "s3",
            scheme => scheme,
        };
        (scheme, self.url.host_str())
    }

    pub fn sub_location(&self, relative: &str) -> Location {
        let prefix = self.child(relative);
        let url = Url::parse(&self.url_of(&prefix)).expect("a child of a valid URL is valid");
        Location {
            store: Arc::clone(&self.store),
            prefix,
            url,
            staging: self.staging.clone(),
        }
    }

    /// The Java properties file at `path` (Sleeper's table and instance properties), or `None`
    /// where there is none; `what` names it in errors.
    pub async fn read_properties(&self, path: &Path, what: &str) -> Result<Option<JavaProperties>> {
        let url = self.url_of(path);
        let bytes = match read_all(self.store.as_ref(), path).await {
            Ok(bytes) => bytes,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Error::object_store(url, e)),
        };
        let text = String::from_utf8(bytes.to_vec()).map_err(|_| Error::Location {
            location: url,
            message: format!("{what} are not UTF-8"),
        })?;
        Ok(Some(JavaProperties::parse(&text)))
    }

    /// Uploads started and never finished, of the object `under` or of anything below it.
    pub async fn unfinished_uploads(&self, under: &Path) -> Result<Vec<UnfinishedUpload>> {
        self.staging.find(under, &self.url_of(under)).await
    }

    /// Aborts (removes) the unfinished uploads of `under`, returning them.
    pub async fn abort_unfinished_uploads(&self, under: &Path) -> Result<Vec<UnfinishedUpload>> {
        let found = self.unfinished_uploads(under).await?;
        for upload in &found {
            self.staging.abort(upload).await?;
        }
        Ok(found)
    }
}

/// An opened bucket: its store, and how its unfinished uploads are found.
type S3Bucket = (Arc<dyn ObjectStore>, Staging);

/// An object's bytes.
pub async fn read_all(store: &dyn ObjectStore, path: &Path) -> object_store::Result<bytes::Bytes> {
    store.get(path).await?.bytes().await
}

/// Changes to how S3 buckets are reached, over what the environment says.
pub type S3Settings = Arc<dyn Fn(AmazonS3Builder) -> AmazonS3Builder + Send + Sync>;

/// Opens object stores for URLs and paths, one per bucket, shared between tables and exports.
#[derive(Clone, Default)]
pub struct Stores {
    s3_buckets: Arc<Mutex<HashMap<String, S3Bucket>>>,
    local: Arc<Mutex<Option<Arc<dyn ObjectStore>>>>,
    s3_settings: Option<S3Settings>,
    s3_retry: RetryConfig,
}

impl fmt::Debug for Stores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Stores")
    }
}

impl Stores {
    /// Stores whose S3 buckets are configured from the environment and then by `settings` (e.g.
    /// another endpoint, or other retries).
    pub fn with_s3_settings(settings: S3Settings) -> Self {
        Stores {
            s3_settings: Some(settings),
            ..Stores::default()
        }
    }

    /// How S3 requests are retried (object_store's default: 10 times, exponential back-off from
    /// 100 ms, within 3 minutes).
    pub fn with_s3_retry(self, retry: RetryConfig) -> Self {
        Stores {
            s3_retry: retry,
            ..self
        }
    }

    /// Resolves `s3://bucket/key`, `s3a://bucket/key`, `file:///path` or a plain local path
    /// (relative paths are taken from the current directory).
    pub fn resolve(&self, location: &str) -> Result<Location> {
        let bad = |message: String| Error::Location {
            location: location.to_owned(),
            message,
        };
        if let Some((scheme, rest)) = location.split_once("://") {
            match scheme {
                "s3" | "s3a" => {
                    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                    if bucket.is_empty() {
                        return Err(bad("no bucket name".into()));
                    }
                    let (store, staging) = self.s3_bucket(bucket)?;
                    let prefix =
                        Path::parse(key.trim_end_matches('/')).map_err(|e| bad(e.to_string()))?;
                    let url = Url::parse(&format!("{scheme}://{bucket}/{prefix}"))
                        .map_err(|e| bad(e.to_string()))?;
                    Ok(Location {
                        store,
                        prefix,
                        url,
                        staging,
                    })
                }
                "file" => {
                    let url = Url::parse(location).map_err(|e| bad(e.to_string()))?;
                    let path = url
                        .to_file_path()
                        .map_err(|_| bad("not a local file URL".into()))?;
                    self.local_path(location, &path)
                }
                other => Err(bad(format!(
                    "unsupported scheme {other:?}: use a local path, file://, s3:// or s3a://"
                ))),
            }
        } else {
            self.local_path(location, std::path::Path::new(location))
        }
    }

    fn local_path(&self, location: &str, path: &std::path::Path) -> Result<Location> {
        let bad = |message: String| Error::Location {
            location: location.to_owned(),
            message,
        };
        // `..` is resolved as a `file://` URL resolves it, so that both forms of a path name the
        // same place.
        let absolute = std::path::absolute(path)
            .map_err(|e| bad(e.to_string()))?
            .components()
            .fold(std::path::PathBuf::new(), |mut path, component| {
                match component {
                    std::path::Component::ParentDir => {
                        path.pop();
                    }
                    other => path.push(other),
                }
                path
            });
        let prefix = Path::from_absolute_path(&absolute).map_err(|e| bad(e.to_string()))?;
        let url = Url::from_file_path(&absolute).map_err(|_| bad("not an absolute path".into()))?;
        let store = Arc::clone(
            self.local
                .lock()
                .expect("store cache lock")
                .get_or_insert_with(|| Arc::new(LocalFileSystem::new())),
        );
        Ok(Location {
            store,
            prefix,
            url,
            staging: Staging::LocalFiles,
        })
    }

    /// Buckets are configured from the standard AWS environment (`AWS_ENDPOINT_URL`,
    /// `AWS_REGION`, credentials, `AWS_ALLOW_HTTP`), so AWS, LocalStack and moto all work unchanged.
    fn s3_bucket(&self, bucket: &str) -> Result<S3Bucket> {
        let mut buckets = self.s3_buckets.lock().expect("store cache lock");
        if let Some((store, staging)) = buckets.get(bucket) {
            return Ok((Arc::clone(store), staging.clone()));
        }
        let bad = |message: String| Error::Location {
            location: format!("s3://{bucket}"),
            message,
        };
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(self.s3_retry.clone());
        if std::env::var_os("AWS_ENDPOINT_URL").is_some()
            || std::env::var_os("AWS_ENDPOINT").is_some()
        {
            builder = builder.with_virtual_hosted_style_request(false);
        }
        if let Some(settings) = &self.s3_settings {
            builder = settings(builder);
        }
        let config = |key| builder.get_config_value(&key);
        let region = config(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into());
        let virtual_hosted =
            config(AmazonS3ConfigKey::VirtualHostedStyleRequest).is_some_and(|v| v == "true");
        let bucket_url = match (config(AmazonS3ConfigKey::Endpoint), virtual_hosted) {
            // object_store's convention: a virtual-hosted endpoint already names the bucket.
            (Some(endpoint), true) => format!("{}/", endpoint.trim_end_matches('/')),
            (Some(endpoint), false) => format!("{}/{bucket}/", endpoint.trim_end_matches('/')),
            (None, true) => format!("https://{bucket}.s3.{region}.amazonaws.com/"),
            (None, false) => format!("https://s3.{region}.amazonaws.com/{bucket}/"),
        };
        let bucket_url = Url::parse(&bucket_url).map_err(|e| bad(e.to_string()))?;
        let allow_http = config(AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp))
            .is_some_and(|v| v == "true");
        let client = ReqwestConnector::default()
            .connect(&ClientOptions::new().with_allow_http(allow_http))
            .map_err(|e| bad(e.to_string()))?;
        let s3 = Arc::new(builder.build().map_err(|e| bad(e.to_string()))?);
        let staging = Staging::S3(Arc::new(S3Uploads {
            store: Arc::clone(&s3),
            client,
            bucket_url,
            region,
            retry: self.s3_retry.clone(),
        }));
        let store: Arc<dyn ObjectStore> = s3;
        buckets.insert(bucket.to_owned(), (Arc::clone(&store), staging.clone()));
        Ok((store, staging))
    }
}
