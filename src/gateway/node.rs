//! This gateway as a node of a fleet: its link key and node-link listener,
//! its registration (one process per `node_id`) and heartbeat, and what it
//! does with its sessions when it loses the store.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::GatewayError;
use crate::config::Config;
use crate::fleet::Fleet;
use crate::keys::HostKeyError;
use crate::sessions::Sessions;
use crate::store::{Store, StoreError};

/// What a node's sessions are told when it ends them for a lost store.
const STORE_LOST: &str =
    "CG-FLEET-006 this gateway node lost its database, so it can no longer check your access";

/// Applies `[cluster] store_lost` while the store is lost: ends this
/// node's console sessions (and any that attach meanwhile), or keeps them;
/// says which in the log at once and in the audit trail once the store
/// answers again.
pub(super) async fn store_lost(
    fleet: Fleet,
    sessions: Sessions,
    store: Store,
    shutdown: CancellationToken,
) {
    let mut lost = fleet.store_lost();
    let policy = fleet.store_lost_policy();
    let mut since = None;
    loop {
        tokio::select! {
            changed = lost.changed() => if changed.is_err() { return },
            () = shutdown.cancelled() => return,
        }
        let is_lost = *lost.borrow_and_update();
        if is_lost {
            // The outage began `store_lost_secs` before it counted as lost.
            let after = time::Duration::seconds(fleet.store_lost_after().as_secs() as i64);
            since = Some(time::OffsetDateTime::now_utc() - after);
            match policy {
                crate::config::StoreLost::EndSessions => {
                    tracing::warn!(code = "CG-FLEET-006", node = %fleet.node_id(),
                        "store unreachable: ending this node's console sessions (store_lost = \"end-sessions\")");
                    sessions.cut_all(STORE_LOST);
                }
                crate::config::StoreLost::Keep => {
                    tracing::warn!(code = "CG-FLEET-006", node = %fleet.node_id(),
                        "store unreachable: keeping this node's console sessions (store_lost = \"keep\"); deletes are not seen until it answers");
                }
            }
        } else if let Some(from) = since.take() {
            sessions.uncut();
            let what = match policy {
                crate::config::StoreLost::EndSessions => {
                    "its console sessions were ended (store_lost = \"end-sessions\")"
                }
                crate::config::StoreLost::Keep => {
                    "its console sessions were kept (store_lost = \"keep\")"
                }
            };
            let secs = (time::OffsetDateTime::now_utc() - from).whole_seconds();
            tracing::info!(node = %fleet.node_id(), "store reachable again");
            let mut e = crate::audit::AuditEvent::new(crate::audit::AuditKind::StoreLost);
            e.detail = Some(format!(
                "CG-FLEET-006 node {} lost the store from {} for about {secs}s; {what}",
                fleet.node_id(),
                crate::timefmt::format_time(from),
            ));
            store.record_audit(e).await;
        }
    }
}

/// This gateway as a node of a fleet: its name, link key and bound link
/// listener, and the address the other nodes dial.
pub(super) struct Node {
    pub node_id: String,
    pub key: Arc<russh::keys::PrivateKey>,
    pub listener: TcpListener,
    pub advertise: String,
}

/// What the store is told about this node.
#[derive(Clone)]
pub(super) struct NodeInfo {
    pub node_id: String,
    /// Random per process start.
    pub incarnation: String,
    /// The fleet's node timeout.
    pub stale_after: std::time::Duration,
    /// Its node-link public key (OpenSSH format).
    pub public_key: String,
    /// Where the other nodes reach its node link.
    pub advertise: String,
}

/// Loads (or creates) this node's link key and binds its link listener.
pub(super) async fn join_fleet(config: &Config, node_id: &str) -> Result<Node, GatewayError> {
    let data_dir = config.data_dir.clone();
    let key =
        tokio::task::spawn_blocking(move || crate::keys::load_or_generate_link_key(&data_dir))
            .await
            .map_err(|e| HostKeyError::Generate(e.to_string()))??;
    let addr = config
        .cluster
        .link_listen()
        .ok_or(GatewayError::NoLinkAddress)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|error| GatewayError::Bind {
            what: "the node link",
            addr,
            error,
        })?;
    // `listen = "…:0"` without `advertise` (tests): the port bound.
    let advertise = match (config.cluster.advertise.clone(), listener.local_addr()) {
        (Some(a), _) => a,
        (None, Ok(bound)) => bound.to_string(),
        (None, Err(_)) => addr.to_string(),
    };
    tracing::info!(%addr, "node link listening");
    Ok(Node {
        node_id: node_id.to_owned(),
        key: Arc::new(key),
        listener,
        advertise,
    })
}

/// Registers this process as the node, with its link address and key and
/// its version; `false` while another running process holds the name.
async fn register(store: &Store, node: &NodeInfo) -> Result<bool, StoreError> {
    store
        .register_node(&crate::store::NodeRegistration {
            node_id: &node.node_id,
            incarnation: &node.incarnation,
            advertise: Some(&node.advertise),
            link_key: Some(&node.public_key),
            version: env!("CARGO_PKG_VERSION"),
            stale_after_ms: node.stale_after.as_millis() as i64,
        })
        .await
}

/// Registers at start. A process that still holds the name (one that
/// crashed a moment ago, or another with the same `node_id`) is given the
/// node timeout to go quiet; after that, this one refuses to start.
pub(super) async fn register_at_start(
    store: &Store,
    node: &NodeInfo,
    every: std::time::Duration,
) -> Result<(), GatewayError> {
    let give_up = tokio::time::Instant::now() + node.stale_after + every;
    let mut told = false;
    loop {
        if register(store, node).await? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= give_up {
            return Err(GatewayError::NodeIdInUse(node.node_id.clone()));
        }
        if !told {
            tracing::info!(node = %node.node_id,
                "another running process is registered under this node_id; waiting for it to go quiet");
            told = true;
        }
        tokio::time::sleep(every).await;
    }
}

/// Keeps this node's registration alive; registers it again if its row
/// went away. If another process took the name, this one is fenced: it
/// stops (cancelling `stop`), so that two processes never hold one node's
/// consoles.
pub(super) async fn heartbeat(
    store: Store,
    config: Arc<Config>,
    node: NodeInfo,
    shutdown: CancellationToken,
    stop: CancellationToken,
    fenced: Arc<std::sync::atomic::AtomicBool>,
) {
    let node_id = node.node_id.clone();
    let every = std::time::Duration::from_secs(config.cluster.heartbeat_secs);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let beat = match store.node_heartbeat(&node_id, &node.incarnation).await {
            Ok(true) => Ok(true),
            Ok(false) => register(&store, &node).await,
            Err(e) => Err(e),
        };
        match beat {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(code = "CG-FLEET-007", node = %node_id,
                    "another process registered under this node_id; this one stops");
                fenced.store(true, std::sync::atomic::Ordering::SeqCst);
                stop.cancel();
                return;
            }
            Err(e) => tracing::warn!(code = "CG-STORE-002", node = %node_id, error = %e,
                "node heartbeat failed"),
        }
    }
}
