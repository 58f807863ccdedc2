//! A fleet of gateways on one PostgreSQL store: which node holds which
//! console.
//!
//! A serial console serves one client, so exactly one node of a fleet holds
//! an instance's backend connection: the node holding the instance's
//! console lease (see [`Store::acquire_lease`]). This module is that node's
//! side of it:
//!
//! - the **lease keeper** ([`Fleet::keep`]): every quarter of the lease
//!   time it renews every lease this node holds in one statement, reads the
//!   live nodes and leases, takes the free leases that fall to it, and hands
//!   back idle ones that belong to a node that (re)joined. It opens a hub's
//!   backend only once its lease is taken ([`ConsoleHubs::set_held`]), and
//!   lets go of it at once when a renewal shows the lease lost, or when this
//!   node's own monotonic clock says the lease may lapse before it can be
//!   renewed: a quarter of the lease time before its database expiry. So
//!   two nodes never talk to one chardev at once, whatever the store does.
//! - the **directory** ([`Fleet::owner_of`], [`Fleet::wait_owner`]): where
//!   a session finds the console it asks for: here, or on which peer (its
//!   node-link address and key, as the peer registered them).
//!
//! Ownership is spread by rendezvous hashing: of the live nodes, the one
//! whose hash with the instance id is highest takes a free lease; any node
//! takes a lease that stays free for a whole round (its preferred node is
//! gone or does not serve that instance). A node that rejoins gets its share
//! back as those consoles fall idle: a console with sessions attached does
//! not move for balance.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use russh::keys::PublicKey;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{ClusterConfig, StoreLost};
use crate::console::hub::ConsoleHubs;
use crate::store::{Lease, NodeRecord, Store, StoreError};

/// Consoles handed back for balance in one round at most, so that a node
/// rejoining a large fleet gets its share over several rounds and no round
/// runs long.
const HAND_BACK_PER_ROUND: usize = 64;

/// Where an instance's console is held.
#[derive(Debug, Clone, PartialEq)]
pub enum Owner {
    /// On this node.
    Here,
    /// On another node, reached over the node link.
    Peer(Peer),
    /// Nowhere yet (its lease is free, or held by a node that cannot be
    /// reached): ask again after the next round.
    Nobody,
}

/// Another node, as the node link reaches it.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    /// Its `node_id`.
    pub node_id: String,
    /// Its node-link address (`host:port`).
    pub advertise: String,
    /// Its node-link key: the only key its end of a link may show.
    pub key: PublicKey,
}

/// What a node needs to reach the others: the fleet's directory and this
/// node's node-link key.
#[derive(Debug, Clone)]
pub struct FleetLink {
    /// Where consoles are held.
    pub fleet: Fleet,
    /// This node's link key.
    pub key: Arc<russh::keys::PrivateKey>,
}

/// This node's view of the fleet; cheap to clone.
#[derive(Debug, Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node_id: String,
    /// The owner this process writes into leases: `node_id/incarnation`,
    /// so that a lease of an earlier (or a rogue second) process under the
    /// same name is never taken for this one's.
    owner: String,
    store: Store,
    hubs: ConsoleHubs,
    lease: Duration,
    node_timeout: Duration,
    /// The configured instances, as the last reload left them.
    instances: RwLock<Vec<String>>,
    /// What the last round read.
    view: RwLock<View>,
    /// Leases this node holds, with the moment it must let go of each.
    held: std::sync::Mutex<HashMap<String, Held>>,
    /// Woken after every round.
    round_done: Notify,
    /// What to do with sessions once the store is lost.
    store_lost: StoreLost,
    /// How long without the store counts as lost.
    store_lost_after: Duration,
    /// Whether the store has been unreachable for `store_lost_after`.
    lost: tokio::sync::watch::Sender<bool>,
    /// When a renewal last succeeded: the store answered.
    last_renewed: std::sync::Mutex<Instant>,
}

#[derive(Debug, Default)]
struct View {
    /// Live leases by instance.
    leases: HashMap<String, Lease>,
    /// Live nodes by id.
    nodes: HashMap<String, NodeRecord>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    epoch: i64,
    /// Since when (a console is handed back for balance only after four
    /// lease times, so that fleets whose nodes disagree on the instances do
    /// not pass idle consoles back and forth every round).
    since: Instant,
    /// Let go by then unless renewed (this node's monotonic clock).
    deadline: Instant,
}

impl Fleet {
    /// This node's view of the fleet `cluster` configures; `instances` are
    /// the configured instance ids.
    pub fn new(
        cluster: &ClusterConfig,
        node_id: String,
        incarnation: &str,
        store: Store,
        hubs: ConsoleHubs,
        instances: Vec<String>,
    ) -> Fleet {
        Fleet {
            inner: Arc::new(Inner {
                owner: format!("{node_id}/{incarnation}"),
                node_id,
                store,
                hubs,
                lease: Duration::from_secs(cluster.lease_secs),
                node_timeout: Duration::from_secs(cluster.node_timeout_secs),
                instances: RwLock::new(instances),
                view: RwLock::default(),
                held: std::sync::Mutex::default(),
                round_done: Notify::new(),
                store_lost: cluster.store_lost,
                store_lost_after: Duration::from_secs(cluster.store_lost_secs),
                lost: tokio::sync::watch::channel(false).0,
                last_renewed: std::sync::Mutex::new(Instant::now()),
            }),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// How long a console lease lasts unless renewed.
    pub fn lease(&self) -> Duration {
        self.inner.lease
    }

    /// What this node does with its sessions once the store is lost.
    pub fn store_lost_policy(&self) -> StoreLost {
        self.inner.store_lost
    }

    /// How long without the store counts as lost.
    pub fn store_lost_after(&self) -> Duration {
        self.inner.store_lost_after
    }

    /// `true` while the store has been unreachable for longer than
    /// `[cluster] store_lost_secs`.
    pub fn store_lost(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.lost.subscribe()
    }

    /// Whether a session whose console no node holds should keep waiting
    /// rather than give up: the store is lost and sessions are kept.
    pub fn keeps_sessions_waiting(&self) -> bool {
        self.inner.store_lost == StoreLost::Keep && *self.inner.lost.borrow()
    }

    /// Resolves after the lease keeper's next round.
    pub async fn next_round(&self) {
        self.inner.round_done.notified().await;
    }

    /// Puts a reloaded set of instances in force, after the reload
    /// replaced their hubs: the consoles this node holds connect again, and
    /// those no longer configured are handed back at the next round.
    pub fn set_instances(&self, instances: Vec<String>) {
        *self
            .inner
            .instances
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = instances;
        let held: Vec<String> = self.held().keys().cloned().collect();
        for id in held {
            self.inner.hubs.set_held(&id, true);
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.inner
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn view(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.inner
            .view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where `instance_id`'s console is held, as of the last round.
    pub fn owner_of(&self, instance_id: &str) -> Owner {
        if self.held().contains_key(instance_id) {
            return Owner::Here;
        }
        let view = self.view();
        let Some(lease) = view.leases.get(instance_id) else {
            return Owner::Nobody;
        };
        let node = node_of(&lease.owner);
        if node == self.inner.node_id {
            // Held in the store but not (yet, or any more) here, or by an
            // earlier process of this node whose lease has not lapsed.
            return Owner::Nobody;
        }
        view.nodes
            .get(node)
            .and_then(peer_of)
            .map_or(Owner::Nobody, Owner::Peer)
    }

    /// The node-link key `node_id` registered, if it is a live node of the
    /// fleet (a node that left, or never joined, has none).
    pub async fn peer_key(&self, node_id: &str) -> Option<PublicKey> {
        if let Some(p) = self.view().nodes.get(node_id).and_then(peer_of) {
            return Some(p.key);
        }
        // Joined since the last round: ask the store.
        let nodes = self.inner.store.list_nodes().await.ok()?;
        let now = crate::store::now_ms();
        nodes
            .iter()
            .filter(|n| self.alive(n, now))
            .find(|n| n.node_id == node_id)
            .and_then(peer_of)
            .map(|p| p.key)
    }

    /// Waits up to `patience` for some node to hold `instance_id`'s console.
    pub async fn wait_owner(&self, instance_id: &str, patience: Duration) -> Owner {
        let until = Instant::now() + patience;
        loop {
            let done = self.inner.round_done.notified();
            let owner = self.owner_of(instance_id);
            if owner != Owner::Nobody {
                return owner;
            }
            if tokio::time::timeout_at(until, done).await.is_err() {
                return Owner::Nobody;
            }
        }
    }

    /// Whether `node` counts as alive at `now_ms` (Unix milliseconds).
    fn alive(&self, node: &NodeRecord, now_ms: i64) -> bool {
        node.left_at_ms.is_none()
            && now_ms.saturating_sub(node.last_seen_ms) < self.inner.node_timeout.as_millis() as i64
    }

    /// Keeps this node's leases until `shutdown`, then lets go of every
    /// console and hands its leases back so that other nodes take them at
    /// once rather than when they lapse.
    pub async fn keep(self, shutdown: CancellationToken) {
        let every = self.inner.lease / 4;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut free_before = HashSet::new();
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => break,
            }
            let deadline = self.earliest_deadline();
            // A round that takes longer than a tick is cut short; what it
            // took so far it keeps, and the next round goes on.
            let round = tokio::time::timeout(every, self.round(&mut free_before));
            tokio::select! {
                result = round => match result {
                    Ok(Ok(())) if failing => {
                        failing = false;
                        tracing::info!(node = %self.inner.node_id, "console leases renewed again");
                    }
                    Ok(Ok(())) | Err(_) => {}
                    Ok(Err(e)) => {
                        if !failing {
                            tracing::warn!(code = "CG-FLEET-004", node = %self.inner.node_id, error = %e,
                                "cannot renew console leases; consoles are let go of before their leases can lapse");
                        }
                        failing = true;
                    }
                },
                () = sleep_until_opt(deadline) => {}
                () = shutdown.cancelled() => break,
            }
            // The store counts as lost when no renewal has gone through
            // for `store_lost_secs`, however long the rest of a round takes.
            let lost = self.since_renewed() >= self.inner.store_lost_after;
            self.inner
                .lost
                .send_if_modified(|l| std::mem::replace(l, lost) != lost);
            self.let_go_overdue();
            self.inner.round_done.notify_waiters();
        }
        self.hand_back().await;
    }

    fn since_renewed(&self) -> Duration {
        self.inner
            .last_renewed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .elapsed()
    }

    fn earliest_deadline(&self) -> Option<Instant> {
        self.held().values().map(|h| h.deadline).min()
    }

    /// Lets go of every console whose lease may lapse before it is renewed.
    fn let_go_overdue(&self) {
        let now = Instant::now();
        let overdue: Vec<String> = self
            .held()
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in overdue {
            tracing::warn!(code = "CG-FLEET-004", instance = %id,
                "console lease not renewed in time; letting go of the console");
            self.let_go(&id);
        }
    }

    fn let_go(&self, instance_id: &str) {
        // The backend closes before the lease is forgotten.
        self.inner.hubs.set_held(instance_id, false);
        self.held().remove(instance_id);
    }

    fn take(&self, lease: &Lease, started: Instant) {
        let deadline = self.deadline_from(started);
        self.held().insert(
            lease.instance_id.clone(),
            Held {
                epoch: lease.epoch,
                since: started,
                deadline,
            },
        );
        self.inner.hubs.set_held(&lease.instance_id, true);
        tracing::info!(instance = %lease.instance_id, epoch = lease.epoch, "holding the console");
    }

    /// A lease renewed by a statement sent at `started` lapses in the
    /// database no sooner than `started + lease`; let go a quarter of the
    /// lease time before that.
    fn deadline_from(&self, started: Instant) -> Instant {
        started + self.inner.lease - self.inner.lease / 4
    }

    /// One round: renew, read the fleet, take and hand back.
    async fn round(&self, free_before: &mut HashSet<String>) -> Result<(), StoreError> {
        let store = &self.inner.store;
        let me = self.inner.node_id.as_str();
        let owner = self.inner.owner.as_str();
        let ttl = self.inner.lease.as_millis() as i64;
        let started = Instant::now();
        let renewed = store.renew_leases(owner, ttl).await?;
        *self
            .inner
            .last_renewed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        let renewed: HashMap<&str, i64> = renewed
            .iter()
            .map(|l| (l.instance_id.as_str(), l.epoch))
            .collect();
        let lost: Vec<String> = {
            let deadline = self.deadline_from(started);
            let mut held = self.held();
            let mut lost = Vec::new();
            for (id, h) in held.iter_mut() {
                if renewed.get(id.as_str()) == Some(&h.epoch) {
                    h.deadline = deadline;
                } else {
                    lost.push(id.clone());
                }
            }
            lost
        };
        for id in lost {
            tracing::warn!(code = "CG-FLEET-004", instance = %id,
                "console lease lost; letting go of the console");
            self.let_go(&id);
        }
        let now = crate::store::now_ms();
        let nodes: HashMap<String, NodeRecord> = store
            .list_nodes()
            .await?
            .into_iter()
            .filter(|n| self.alive(n, now) || n.node_id == me)
            .map(|n| (n.node_id.clone(), n))
            .collect();
        let leases: HashMap<String, Lease> = store
            .list_leases()
            .await?
            .into_iter()
            .map(|l| (l.instance_id.clone(), l))
            .collect();
        let instances = self
            .inner
            .instances
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut live: Vec<&str> = nodes.keys().map(String::as_str).collect();
        if !live.contains(&me) {
            live.push(me);
        }
        let mut free_now = HashSet::new();
        for id in &instances {
            if self.held().contains_key(id) {
                continue;
            }
            if leases.get(id).is_some_and(|l| l.owner != owner) {
                continue;
            }
            // Free (falling to this node, or free for a whole round), or
            // still this process's in the store (a keeper that let go).
            let ours = leases.contains_key(id);
            let mine = ours || preferred(&live, id) == me || free_before.contains(id);
            free_now.insert(id.clone());
            if mine {
                let started = Instant::now();
                if let Some(lease) = store.acquire_lease(id, owner, ttl).await? {
                    self.take(&lease, started);
                }
            }
        }
        *free_before = free_now;
        // Consoles no longer configured, and idle ones a live node prefers.
        let held: Vec<(String, Held)> =
            self.held().iter().map(|(id, h)| (id.clone(), *h)).collect();
        let mut handed_back = 0;
        for (id, Held { epoch, since, .. }) in held {
            if handed_back == HAND_BACK_PER_ROUND {
                break;
            }
            let configured = instances.contains(&id);
            if configured
                && (preferred(&live, &id) == me
                    || since.elapsed() < self.inner.lease * 4
                    || !self.idle(&id).await)
            {
                continue;
            }
            tracing::info!(instance = %id, configured, "handing the console to its preferred node");
            self.let_go(&id);
            store.release_lease(&id, owner, epoch).await?;
            handed_back += 1;
        }
        let mut view = self
            .inner
            .view
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *view = View { leases, nodes };
        Ok(())
    }

    /// Whether no session is attached to `instance_id`'s console.
    async fn idle(&self, instance_id: &str) -> bool {
        let Some(hub) = self.inner.hubs.get(instance_id) else {
            return true;
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), hub.status()).await,
            Ok(Ok(status)) if status.sessions.is_empty()
        )
    }

    /// Lets go of every console and releases their leases.
    async fn hand_back(&self) {
        let held: Vec<(String, i64)> = self
            .held()
            .iter()
            .map(|(id, h)| (id.clone(), h.epoch))
            .collect();
        self.inner.hubs.let_go_all();
        self.held().clear();
        for (id, epoch) in held {
            if let Err(e) = self
                .inner
                .store
                .release_lease(&id, &self.inner.owner, epoch)
                .await
            {
                tracing::warn!(code = "CG-STORE-002", instance = %id, error = %e,
                    "could not hand back a console lease; it lapses on its own");
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The node a lease's owner names (`node_id/incarnation`).
pub fn node_of(owner: &str) -> &str {
    owner.split_once('/').map_or(owner, |(node, _)| node)
}

/// A node as the node link reaches it, if it registered where and how.
fn peer_of(node: &NodeRecord) -> Option<Peer> {
    let key = PublicKey::from_openssh(node.link_key.as_deref()?).ok()?;
    Some(Peer {
        node_id: node.node_id.clone(),
        advertise: node.advertise.clone()?,
        key,
    })
}

/// Of `nodes`, the one that takes `instance_id`'s free lease: the highest
/// hash of node and instance (rendezvous hashing; FNV-1a, then MurmurHash3's
/// 64-bit finaliser to spread similar names), the same on every node and
/// every version.
pub fn preferred<'a>(nodes: &[&'a str], instance_id: &str) -> &'a str {
    nodes
        .iter()
        .copied()
        .max_by_key(|node| (fnv1a(node, instance_id), *node))
        .unwrap_or_default()
}

fn fnv1a(node: &str, instance_id: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in node.bytes().chain([0]).chain(instance_id.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_spreads_over_the_nodes_and_moves_little_when_one_goes() {
        let three = ["gw-a", "gw-b", "gw-c"];
        let instances: Vec<String> = (0..3000).map(|i| format!("vm{i}")).collect();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for id in &instances {
            *counts.entry(preferred(&three, id)).or_default() += 1;
        }
        for node in three {
            let n = counts[node];
            assert!((800..1200).contains(&n), "{node} prefers {n} of 3000");
        }
        // gw-c goes: only its consoles move; the others stay where they are.
        let two = ["gw-a", "gw-b"];
        for id in &instances {
            let before = preferred(&three, id);
            if before != "gw-c" {
                assert_eq!(preferred(&two, id), before, "{id}");
            }
        }
        // The order nodes are listed in does not matter.
        let shuffled = ["gw-c", "gw-a", "gw-b"];
        for id in &instances {
            assert_eq!(preferred(&shuffled, id), preferred(&three, id));
        }
        assert_eq!(preferred(&[], "vm1"), "");
    }
}
