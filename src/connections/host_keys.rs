//! The inner hop's host keys, one per instance: created on first use, kept
//! in the store (so `known_hosts` pins each instance across restarts), and
//! decoded once per process, then shared by the API (for the fingerprints
//! and `known_hosts` lines it shows) and the SSH data plane.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use russh::keys::PrivateKey;

use crate::store::{Store, StoreError};

/// Instance host keys, loaded once and shared; cheap to clone.
#[derive(Debug, Clone)]
pub struct InstanceKeys {
    store: Store,
    loaded: Arc<RwLock<HashMap<String, Arc<PrivateKey>>>>,
}

impl InstanceKeys {
    /// Keys kept in `store`.
    pub fn new(store: Store) -> InstanceKeys {
        InstanceKeys {
            store,
            loaded: Arc::default(),
        }
    }

    /// Instance `id`'s host key, created and stored on first use.
    pub async fn get(&self, id: &str) -> Result<Arc<PrivateKey>, StoreError> {
        if let Some(key) = self
            .loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
        {
            return Ok(key.clone());
        }
        let key = Arc::new(self.store.instance_host_key(id).await?);
        // Two first uses may race: both read the one stored key, either wins.
        self.loaded
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_owned(), key.clone());
        Ok(key)
    }

    /// The keys of `instances`, each loaded (or created) once.
    pub async fn get_all(
        &self,
        instances: &[crate::config::InstanceConfig],
    ) -> Result<HashMap<String, Arc<PrivateKey>>, StoreError> {
        let mut keys = HashMap::new();
        for instance in instances {
            keys.insert(instance.id.clone(), self.get(&instance.id).await?);
        }
        Ok(keys)
    }
}
