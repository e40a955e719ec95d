//! Where tables, inputs and outputs live: a local directory or an `s3://` prefix, both reached
//! through `object_store` so every code path is the same for both.

mod registry;
mod uploads;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::{HttpConnector, ReqwestConnector};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    ClientConfigKey, ClientOptions, ObjectMeta, ObjectStore, ObjectStoreExt, RetryConfig,
};
use url::Url;

use crate::error::{BoxError, Error, Result};
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
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|e| Error::location_from(url, &format!("{what} are not UTF-8"), e))?;
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

/// Changes to how S3 buckets are reached, over what the environment says. They see the
/// builder with payload signing already chosen for the environment's endpoint (see
/// `unsigned_payload_over_tls`): one that sets another endpoint sets that too if it matters.
pub type S3Settings = Arc<dyn Fn(AmazonS3Builder) -> AmazonS3Builder + Send + Sync>;

/// Where an object or prefix is, decoded from its URL or local path without opening a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectAddress {
    /// What a registry of stores (DataFusion's runtime env) is asked for: `s3://bucket`
    /// (`s3a://` names the same bucket) or `file:///`.
    pub store_url: ObjectStoreUrl,
    pub path: Path,
    /// As given, made absolute: `s3a://bucket/key`, `file:///data/table`.
    pub url: Url,
}

impl ObjectAddress {
    /// Whether it is a file on local disk (`file://`, or a plain path).
    pub fn is_local(&self) -> bool {
        self.url.scheme() == "file"
    }

    /// Decodes `s3://bucket/key`, `s3a://bucket/key`, `file:///path` or a plain local path
    /// (relative paths are taken from the current directory).
    pub fn parse(location: &str) -> Result<Self> {
        let bad = |source: BoxError| Error::location_from(location, "", source);
        let Some((scheme, rest)) = location.split_once("://") else {
            return local_address(location, std::path::Path::new(location));
        };
        match scheme {
            "s3" | "s3a" => {
                let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(Error::location(location, "no bucket name"));
                }
                let path = Path::parse(key.trim_end_matches('/')).map_err(|e| bad(e.into()))?;
                Ok(ObjectAddress {
                    store_url: ObjectStoreUrl::parse(format!("s3://{bucket}"))
                        .map_err(|e| bad(e.into()))?,
                    url: Url::parse(&format!("{scheme}://{bucket}/{path}"))
                        .map_err(|e| bad(e.into()))?,
                    path,
                })
            }
            "file" => {
                let url = Url::parse(location).map_err(|e| bad(e.into()))?;
                let path = url
                    .to_file_path()
                    .map_err(|_| Error::location(location, "not a local file URL"))?;
                local_address(location, &path)
            }
            other => Err(Error::location(
                location,
                format!("unsupported scheme {other:?}: use a local path, file://, s3:// or s3a://"),
            )),
        }
    }
}

fn local_address(location: &str, path: &std::path::Path) -> Result<ObjectAddress> {
    let bad = |source: BoxError| Error::location_from(location, "", source);
    // `..` is resolved as a `file://` URL resolves it, so that both forms of a path name the
    // same place.
    let absolute = std::path::absolute(path)
        .map_err(|e| bad(e.into()))?
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
    Ok(ObjectAddress {
        store_url: ObjectStoreUrl::local_filesystem(),
        path: Path::from_absolute_path(&absolute).map_err(|e| bad(e.into()))?,
        url: Url::from_file_path(&absolute)
            .map_err(|_| Error::location(location, "not an absolute path"))?,
    })
}

/// Opens object stores for URLs and paths, one per bucket, shared between tables, exports and
/// the DataFusion plans that read them (through [`Stores::runtime_env`]).
#[derive(Clone, Default)]
pub struct Stores {
    opened: Arc<OpenedStores>,
    runtime: Arc<OnceLock<Arc<RuntimeEnv>>>,
}

/// The stores opened so far, and how to open more.
#[derive(Default)]
struct OpenedStores {
    s3_buckets: Mutex<HashMap<String, S3Bucket>>,
    local: Mutex<Option<Arc<dyn ObjectStore>>>,
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
        Stores::opening(OpenedStores {
            s3_settings: Some(settings),
            ..OpenedStores::default()
        })
    }

    /// How S3 requests are retried (object_store's default: 10 times, exponential back-off from
    /// 100 ms, within 3 minutes). Buckets opened before are opened again.
    pub fn with_s3_retry(self, retry: RetryConfig) -> Self {
        Stores::opening(OpenedStores {
            s3_retry: retry,
            s3_settings: self.opened.s3_settings.clone(),
            ..OpenedStores::default()
        })
    }

    fn opening(opened: OpenedStores) -> Self {
        Stores {
            opened: Arc::new(opened),
            runtime: Arc::default(),
        }
    }

    /// Resolves `s3://bucket/key`, `s3a://bucket/key`, `file:///path` or a plain local path
    /// (relative paths are taken from the current directory).
    pub fn resolve(&self, location: &str) -> Result<Location> {
        let address = ObjectAddress::parse(location)?;
        let (store, staging) = self.opened.open(address.store_url.as_ref())?;
        Ok(Location {
            store,
            prefix: address.path,
            url: address.url,
            staging,
        })
    }

    /// The runtime env DataFusion plans run in to reach these stores: `s3://` buckets open as
    /// [`Stores::resolve`] opens them unless a store was registered for them, other URLs come
    /// from DataFusion's default registry. One for all clones of these stores.
    pub fn runtime_env(&self) -> Result<Arc<RuntimeEnv>> {
        if let Some(runtime) = self.runtime.get() {
            return Ok(Arc::clone(runtime));
        }
        let runtime = registry::runtime_env(Arc::clone(&self.opened))?;
        Ok(Arc::clone(self.runtime.get_or_init(|| runtime)))
    }
}

impl OpenedStores {
    /// The store of an [`ObjectAddress::store_url`].
    fn open(&self, store_url: &Url) -> Result<S3Bucket> {
        match store_url.scheme() {
            "file" => {
                let store = Arc::clone(
                    self.local
                        .lock()
                        .expect("store cache lock")
                        .get_or_insert_with(|| Arc::new(LocalFileSystem::new())),
                );
                Ok((store, Staging::LocalFiles))
            }
            "s3" | "s3a" => self.s3_bucket(store_url.host_str().unwrap_or_default()),
            other => Err(Error::location(
                store_url.as_str(),
                format!("no store for scheme {other:?}"),
            )),
        }
    }

    /// Buckets are configured from the standard AWS environment (`AWS_ENDPOINT_URL`,
    /// `AWS_REGION`, credentials, `AWS_ALLOW_HTTP`), so AWS, LocalStack and moto all work unchanged.
    fn s3_bucket(&self, bucket: &str) -> Result<S3Bucket> {
        let mut buckets = self.s3_buckets.lock().expect("store cache lock");
        if let Some((store, staging)) = buckets.get(bucket) {
            return Ok((Arc::clone(store), staging.clone()));
        }
        let bad = |source: BoxError| Error::location_from(format!("s3://{bucket}"), "", source);
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(self.s3_retry.clone());
        if std::env::var_os("AWS_ENDPOINT_URL").is_some()
            || std::env::var_os("AWS_ENDPOINT").is_some()
        {
            builder = builder.with_virtual_hosted_style_request(false);
        }
        if std::env::var_os("AWS_UNSIGNED_PAYLOAD").is_none() {
            builder = unsigned_payload_over_tls(builder);
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
        let bucket_url = Url::parse(&bucket_url).map_err(|e| bad(e.into()))?;
        let allow_http = config(AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp))
            .is_some_and(|v| v == "true");
        let client = ReqwestConnector::default()
            .connect(&ClientOptions::new().with_allow_http(allow_http))
            .map_err(|e| bad(e.into()))?;
        let s3 = Arc::new(builder.build().map_err(|e| bad(e.into()))?);
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

/// Over HTTPS, as the AWS SDKs do for S3, request bodies are not hashed into the signature: TLS
/// already guards them, and hashing costs a SHA-256 pass over every byte uploaded, on the client
/// and again on the server (`benches/scale.rs`: a 10 M-row leaf's S3 → S3 export took 5–10 %
/// less time without it, one PUT of the same bytes a fifth less). A plain HTTP endpoint keeps
/// object_store's signed payloads unless `AWS_UNSIGNED_PAYLOAD` says otherwise.
fn unsigned_payload_over_tls(builder: AmazonS3Builder) -> AmazonS3Builder {
    let over_tls = builder
        .get_config_value(&AmazonS3ConfigKey::Endpoint)
        .is_none_or(|endpoint| endpoint.starts_with("https://"));
    builder.with_unsigned_payload(over_tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeper_and_plain_urls_of_a_bucket_share_one_store_url() {
        let s3a = ObjectAddress::parse("s3a://bucket/table/data/f.parquet").unwrap();
        let s3 = ObjectAddress::parse("s3://bucket/table/data/f.parquet").unwrap();
        assert_eq!(s3a.store_url, s3.store_url);
        assert_eq!(s3a.store_url.as_str(), "s3://bucket/");
        assert_eq!(s3a.path, s3.path);
        assert_eq!(s3a.url.as_str(), "s3a://bucket/table/data/f.parquet");
        let local = ObjectAddress::parse("/data/t/../f.parquet").unwrap();
        assert_eq!(local.store_url, ObjectStoreUrl::local_filesystem());
        assert_eq!(local.url.as_str(), "file:///data/f.parquet");
        assert!(local.is_local() && ObjectAddress::parse("file:///data/f").unwrap().is_local());
        assert!(!s3.is_local() && !s3a.is_local());
    }

    #[test]
    fn a_bad_location_keeps_the_error_that_rejected_it() {
        let error = ObjectAddress::parse("s3://bucket/a/../b").unwrap_err();
        let Error::Location {
            location, source, ..
        } = &error
        else {
            panic!("{error:?}");
        };
        assert_eq!(location, "s3://bucket/a/../b");
        let source = source.as_deref().expect("a source");
        assert!(
            source.downcast_ref::<object_store::path::Error>().is_some(),
            "{source:?}"
        );
        assert!(std::error::Error::source(&error).is_some());
    }

    #[test]
    fn payloads_are_signed_only_where_no_tls_guards_them() {
        let unsigned = |builder: AmazonS3Builder| {
            unsigned_payload_over_tls(builder)
                .get_config_value(&AmazonS3ConfigKey::UnsignedPayload)
                .unwrap()
        };
        assert_eq!(unsigned(AmazonS3Builder::new()), "true");
        let endpoint = |url: &str| AmazonS3Builder::new().with_endpoint(url);
        assert_eq!(unsigned(endpoint("https://s3.example.com")), "true");
        assert_eq!(unsigned(endpoint("http://127.0.0.1:9000")), "false");
    }
}
