//! The registry of console hubs: one per configured instance, added and
//! retired as reloads change the instances, every hub task tracked.
//!
//! Alone, a gateway holds every console. In a fleet a hub connects to its
//! backend only while this node holds the console's lease: the fleet's
//! lease keeper says so with [`ConsoleHubs::set_held`].

use std::sync::Arc;

use tokio::sync::watch;
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
    hubs: std::sync::RwLock<std::collections::HashMap<String, Entry>>,
    tasks: tokio_util::task::TaskTracker,
    shutdown: CancellationToken,
    /// Whether consoles wait for [`ConsoleHubs::set_held`] (a fleet).
    leased: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    hub: ConsoleHub,
    held: Arc<watch::Sender<bool>>,
}

impl ConsoleHubs {
    /// Starts one hub per instance, each holding its console; they stop
    /// with [`ConsoleHubs::stop`].
    pub fn start(instances: &[InstanceConfig]) -> ConsoleHubs {
        ConsoleHubs::start_with(instances, false)
    }

    /// Starts one hub per instance; with `leased`, a hub connects to its
    /// console only while [`ConsoleHubs::set_held`] says this node holds it.
    pub fn start_with(instances: &[InstanceConfig], leased: bool) -> ConsoleHubs {
        let hubs = ConsoleHubs {
            inner: Arc::new(HubsInner {
                leased,
                ..HubsInner::default()
            }),
        };
        for instance in instances {
            hubs.add(instance.clone());
        }
        hubs
    }

    /// Whether this node holds `instance_id`'s console now.
    pub fn held(&self, instance_id: &str) -> bool {
        self.map()
            .get(instance_id)
            .is_some_and(|e| *e.held.borrow())
    }

    /// Says whether this node holds `instance_id`'s console: the hub
    /// connects to it, or lets go of it at once (its sessions are told the
    /// console moved).
    pub fn set_held(&self, instance_id: &str, held: bool) {
        if let Some(e) = self.map().get(instance_id) {
            e.held
                .send_if_modified(|h| std::mem::replace(h, held) != held);
        }
    }

    /// Lets go of every console at once.
    pub fn let_go_all(&self) {
        for e in self.map().values() {
            e.held.send_if_modified(|h| std::mem::replace(h, false));
        }
    }

    fn map(&self) -> std::sync::RwLockReadGuard<'_, std::collections::HashMap<String, Entry>> {
        self.inner
            .hubs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a hub for `instance` (replacing none: retire the old one first).
    pub fn add(&self, instance: InstanceConfig) {
        let id = instance.id.clone();
        let (held, held_rx) = watch::channel(!self.inner.leased);
        let (hub, task) = ConsoleHub::new(instance, self.inner.shutdown.child_token(), held_rx);
        self.inner.tasks.spawn(task);
        let entry = Entry {
            hub,
            held: Arc::new(held),
        };
        self.inner
            .hubs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, entry);
    }

    /// Removes the hub of `instance_id`, ending its sessions with `reason`.
    pub async fn retire(&self, instance_id: &str, reason: String) {
        let hub = self
            .inner
            .hubs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(instance_id);
        if let Some(e) = hub {
            e.hub.retire(reason).await;
        }
    }

    /// The hub of `instance_id`.
    pub fn get(&self, instance_id: &str) -> Option<ConsoleHub> {
        self.map().get(instance_id).map(|e| e.hub.clone())
    }

    /// Every hub's status, in instance order. A hub that does not answer
    /// within [`STATUS_TIMEOUT`] (held up by a slow viewer) is left out.
    pub async fn statuses(&self) -> Vec<HubStatus> {
        let mut hubs: Vec<ConsoleHub> = self.map().values().map(|e| e.hub.clone()).collect();
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
