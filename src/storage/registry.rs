//! The bridge from DataFusion's runtime env to the crate's stores, so that DataFusion's own
//! readers and writers and the crate's plans reach a bucket through one configuration.

use std::sync::Arc;

use datafusion::error::Result as DFResult;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use object_store::ObjectStore;
use url::Url;

use super::OpenedStores;
use crate::error::{Error, Result};

pub(super) fn runtime_env(stores: Arc<OpenedStores>) -> Result<Arc<RuntimeEnv>> {
    RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(StoresRegistry {
            stores,
            others: DefaultObjectStoreRegistry::new(),
        }))
        .build_arc()
        .map_err(Error::from)
}

/// `s3://` and `s3a://` buckets come from the crate's stores unless one was registered for them;
/// other URLs from DataFusion's default registry (which knows `file://`).
struct StoresRegistry {
    stores: Arc<OpenedStores>,
    others: DefaultObjectStoreRegistry,
}

impl std::fmt::Debug for StoresRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoresRegistry")
            .field("others", &self.others)
            .finish_non_exhaustive()
    }
}

impl ObjectStoreRegistry for StoresRegistry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.others.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> DFResult<Arc<dyn ObjectStore>> {
        self.others.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> DFResult<Arc<dyn ObjectStore>> {
        let registered = self.others.get_store(url);
        match url.scheme() {
            "s3" | "s3a" if registered.is_err() => Ok(self.stores.open(url)?.0),
            _ => registered,
        }
    }
}
