//! The registry of console hubs: one per configured instance, added and
//! retired as reloads change the instances, every hub task tracked.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{ConsoleHub, HubStatus, STATUS_TIMEOUT};
use crate::config::InstanceConfig;

/// The hubs of the configured instances; cheap to clone. Hubs are added
/// and retired as a reload changes the instances; every hub task is
/// tracked, and [`ConsoleHubs::stop`] ends them all.
#[derive(Debug, Clone, Default)]
pub struct ConsoleHubs {
    inner: Arc<HubsInner>,
}

#[derive(Debug, Default)]
struct HubsInner {
    hubs: std::sync::RwLock<std::collections::HashMap<String, ConsoleHub>>,
    tasks: tokio_util::task::TaskTracker,
    shutdown: CancellationToken,
}

impl ConsoleHubs {
    /// Starts one hub per instance; they stop with [`ConsoleHubs::stop`].
    pub fn start(instances: &[InstanceConfig]) -> ConsoleHubs {
        let hubs = ConsoleHubs::default();
        for instance in instances {
            hubs.add(instance.clone());
        }
        hubs
    }

    fn map(&self) -> std::sync::RwLockReadGuard<'_, std::collections::HashMap<String, ConsoleHub>> {
        self.inner
            .hubs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a hub for `instance` (replacing none: retire the old one first).
    pub fn add(&self, instance: InstanceConfig) {
        let id = instance.id.clone();
        let (hub, task) = ConsoleHub::new(instance, self.inner.shutdown.child_token());
        self.inner.tasks.spawn(task);
        self.inner
            .hubs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, hub);
    }

    /// Removes the hub of `instance_id`, ending its sessions with `reason`.
    pub async fn retire(&self, instance_id: &str, reason: String) {
        let hub = self
            .inner
            .hubs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(instance_id);
        if let Some(hub) = hub {
            hub.retire(reason).await;
        }
    }

    /// The hub of `instance_id`.
    pub fn get(&self, instance_id: &str) -> Option<ConsoleHub> {
        self.map().get(instance_id).cloned()
    }

    /// Every hub's status, in instance order. A hub that does not answer
    /// within [`STATUS_TIMEOUT`] (held up by a slow viewer) is left out.
    pub async fn statuses(&self) -> Vec<HubStatus> {
        let mut hubs: Vec<ConsoleHub> = self.map().values().cloned().collect();
        hubs.sort_by(|a, b| a.instance.id.cmp(&b.instance.id));
        let mut out = Vec::with_capacity(hubs.len());
        for hub in hubs {
            if let Ok(Ok(status)) = tokio::time::timeout(STATUS_TIMEOUT, hub.status()).await {
                out.push(status);
            }
        }
        out
    }

    /// Stops every hub and waits until their tasks have ended.
    pub async fn stop(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}
