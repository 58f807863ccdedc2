//! The SSH front end of the data plane.
//!
//! - this file: the accept loop, per-connection supervision (handshake
//!   deadline, periodic re-validation of the connection record, shutdown) and
//!   the russh configurations;
//! - [`gate`]: who may start a handshake (unauthenticated connections in
//!   all and per source, per-source penalties);
//! - [`outer`]: the gateway's own SSH server (user = connection id);
//! - [`inner`]: the nested per-instance SSH server reached through
//!   `direct-tcpip` to `<instance-id>:22`;
//! - [`auth`]: checking a key against a connection record;
//! - [`channels`]: what both hops share: routing session and `direct-tcpip`
//!   channels, and the channel tasks of a connection;
//! - [`console_session`]: a session channel, run through the attach core;
//! - [`tunnel`]: `direct-tcpip` to the instance's VNC target, run through
//!   the VNC copy.
//!
//! Every connection and channel is a session of the gateway's
//! [`Sessions`](crate::sessions::Sessions). The gateway is never an open
//! proxy: the only places a channel can lead are the record's instance
//! console and its configured VNC target.

mod auth;
pub(crate) mod channels;
pub(crate) mod console_session;
mod cut;
pub mod gate;
mod inner;
mod outer;
mod outer_socket;
mod recheck;
mod refusals;
mod tunnel;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use russh::keys::{Algorithm, HashAlg, PrivateKey};
use russh::server::Config as RusshConfig;
use russh::{MethodKind, MethodSet, Preferred, SshId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, InstanceConfig};
use crate::console::hub::ConsoleHubs;
use crate::keys::HostKeys;
use crate::ops::metrics::Metrics;
use crate::sessions::Sessions;
use crate::sessions::attach::AttachContext;
use crate::store::LifecycleState;
use crate::store::Store;
use channels::ChannelTasks;
use gate::{Gate, Offence, Startup};

/// How long a closing connection gets to say goodbye at shutdown.
const GOODBYE_TIME: Duration = Duration::from_secs(3);
/// How long a client has to send its SSH identification (or the handshake
/// timeout, if shorter): a silent socket holds its place no longer.
const IDENT_TIME: Duration = Duration::from_secs(10);

/// Everything SSH connections share.
pub struct SshContext {
    store: Store,
    metrics: Arc<Metrics>,
    config: Arc<Config>,
    hubs: ConsoleHubs,
    sessions: Sessions,
    attach: AttachContext,
    /// Ids of connections just deleted (on any node), or found no longer
    /// ACTIVE by the periodic re-check, for their sessions.
    revoked: tokio::sync::broadcast::Sender<String>,
    /// The connections live sessions stand for, re-checked periodically.
    rechecks: Arc<recheck::Rechecks>,
    outer: Arc<RusshConfig>,
    /// Who may start a handshake.
    gate: Arc<Gate>,
    /// The audit rows of refused attempts, rationed.
    refusals: refusals::RefusalAudit,
    /// The configured instances; a reload replaces the table whole.
    instances: std::sync::RwLock<Arc<InstanceTable>>,
}

/// The instances SSH connections may reach, with their inner-hop servers.
#[derive(Default)]
struct InstanceTable {
    /// Shared by every connection authorised for one.
    instances: HashMap<String, Arc<InstanceConfig>>,
    inner: HashMap<String, Arc<RusshConfig>>,
}

impl InstanceTable {
    fn new(instances: &[InstanceConfig], keys: InstanceHostKeys) -> InstanceTable {
        InstanceTable {
            inner: keys
                .into_iter()
                .map(|(id, key)| (id, Arc::new(russh_config(vec![(*key).clone()], None))))
                .collect(),
            instances: instances
                .iter()
                .map(|i| (i.id.clone(), Arc::new(i.clone())))
                .collect(),
        }
    }
}

/// Each instance's inner host key, by instance id.
pub type InstanceHostKeys = HashMap<String, Arc<PrivateKey>>;

impl SshContext {
    /// Builds the context; `instance_keys` holds each configured instance's
    /// inner host key; every connection is a session of `sessions`.
    pub fn new(
        config: Arc<Config>,
        store: Store,
        hubs: ConsoleHubs,
        metrics: Arc<Metrics>,
        sessions: Sessions,
        host_keys: &HostKeys,
        instance_keys: InstanceHostKeys,
    ) -> SshContext {
        let keepalive = match config.ssh.keepalive_interval_secs {
            0 => None,
            s => Some(Duration::from_secs(s)),
        };
        let outer = Arc::new(russh_config(
            vec![host_keys.ed25519.clone(), host_keys.rsa.clone()],
            keepalive,
        ));
        let table = InstanceTable::new(&config.instances, instance_keys);
        let attach = sessions.attach_context(store.clone(), metrics.clone());
        let gate = Arc::new(Gate::new(&config.ssh));
        let refusals = refusals::RefusalAudit::new(
            store.clone(),
            config.audit_refused_burst,
            config.audit_refused_per_hour,
        );
        SshContext {
            refusals,
            store,
            metrics,
            config,
            hubs,
            sessions,
            attach,
            revoked: tokio::sync::broadcast::channel(256).0,
            rechecks: recheck::Rechecks::new(),
            outer,
            gate,
            instances: std::sync::RwLock::new(Arc::new(table)),
        }
    }

    /// Puts a reloaded set of instances in force for new connections;
    /// `instance_keys` holds each one's inner host key.
    pub fn set_instances(&self, instances: &[InstanceConfig], instance_keys: InstanceHostKeys) {
        let table = Arc::new(InstanceTable::new(instances, instance_keys));
        *self
            .instances
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = table;
    }

    fn table(&self) -> Arc<InstanceTable> {
        self.instances
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Tells this node's sessions that connection `id` was deleted: theirs
    /// read its record at once.
    pub fn revoke(&self, id: String) {
        // No receiver: no session of it on this node.
        let _ = self.revoked.send(id);
    }

    /// What console sessions need from the gateway.
    fn attach_context(&self) -> &AttachContext {
        &self.attach
    }

    /// The configured instance `id`.
    fn instance(&self, id: &str) -> Option<Arc<InstanceConfig>> {
        self.table().instances.get(id).cloned()
    }

    /// The inner-hop server of instance `id`.
    fn inner_config(&self, id: &str) -> Option<Arc<RusshConfig>> {
        self.table().inner.get(id).cloned()
    }
}

impl std::fmt::Debug for SshContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshContext").finish_non_exhaustive()
    }
}

/// The key exchanges offered, best first.
const KEX: &[russh::kex::Name] = &[
    russh::kex::MLKEM768X25519_SHA256,
    russh::kex::CURVE25519,
    russh::kex::CURVE25519_PRE_RFC_8731,
    russh::kex::DH_G18_SHA512,
    russh::kex::DH_G17_SHA512,
    russh::kex::DH_G16_SHA512,
    russh::kex::DH_G15_SHA512,
    russh::kex::EXTENSION_SUPPORT_AS_SERVER,
    russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];

/// The MACs offered (AEAD ciphers, preferred, need none).
const MACS: &[russh::mac::Name] = &[russh::mac::HMAC_SHA512_ETM, russh::mac::HMAC_SHA256_ETM];

/// `zlib@openssh.com` starts after authentication.
const COMPRESSION: &[russh::compression::Name] =
    &[russh::compression::NONE, russh::compression::ZLIB_LEGACY];

pub(crate) fn russh_config(keys: Vec<PrivateKey>, keepalive: Option<Duration>) -> RusshConfig {
    RusshConfig {
        server_id: SshId::Standard(
            concat!("SSH-2.0-consolegate_", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        // OpenSSH opens with a `none` probe: answer it at once, delay real failures.
        auth_rejection_time: Duration::from_secs(1),
        auth_rejection_time_initial: Some(Duration::ZERO),
        max_auth_attempts: 6,
        keys,
        // An idle console is normal: never cut it for inactivity; keepalives
        // (outer hop only) find dead peers instead.
        inactivity_timeout: None,
        keepalive_interval: keepalive,
        keepalive_max: 3,
        nodelay: true,
        event_buffer_size: 64,
        preferred: Preferred {
            // RSA host keys only with SHA-2 signatures.
            key: std::borrow::Cow::Owned(vec![
                Algorithm::Ed25519,
                Algorithm::Ecdsa {
                    curve: russh::keys::EcdsaCurve::NistP256,
                },
                Algorithm::Ecdsa {
                    curve: russh::keys::EcdsaCurve::NistP384,
                },
                Algorithm::Ecdsa {
                    curve: russh::keys::EcdsaCurve::NistP521,
                },
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha512),
                },
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha256),
                },
            ]),
            // No group exchange (russh serves it only with a group table
            // of the handler's), no 2048-bit group14, MACs only
            // encrypt-then-MAC: what ssh-audit warns about, and no
            // supported client (OpenSSH 9.2, PuTTY 0.76) needs.
            kex: std::borrow::Cow::Borrowed(KEX),
            mac: std::borrow::Cow::Borrowed(MACS),
            // Compression only once authenticated: no inflating of
            // anything an unauthenticated client sends.
            compression: std::borrow::Cow::Borrowed(COMPRESSION),
            ..Preferred::default()
        },
        ..RusshConfig::default()
    }
}

/// Serves SSH on `listener` until `shutdown` is cancelled. Each connection
/// is a session of the context's [`Sessions`], which ends them (each is
/// told why) when the gateway ends its sessions.
pub async fn serve(listener: TcpListener, ctx: Arc<SshContext>, shutdown: CancellationToken) {
    // Held-back refusal rows are written as the ration allows, and all of
    // them when sessions end (before the store closes).
    ctx.sessions.spawn(
        ctx.refusals
            .clone()
            .run_sweeper(ctx.sessions.ending().clone()),
    );
    ctx.sessions.spawn(ctx.rechecks.clone().run(
        ctx.store.clone(),
        ctx.revoked.clone(),
        ctx.config.ssh.revalidate_interval(),
        ctx.sessions.ending().clone(),
    ));
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(code = "CG-SSH-001", error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Unauthenticated connections have places of their own: a place
        // under `max_connections` is taken only once a client has
        // authenticated, so clients that never do cannot keep users out.
        let startup = match ctx.gate.enter(peer.ip(), rand::random::<f64>()) {
            Ok(startup) => startup,
            Err(refusal) => {
                ctx.metrics.ssh_refused(refusal.reason());
                tracing::debug!(%peer, reason = refusal.reason(), "SSH connection dropped before its handshake");
                continue;
            }
        };
        ctx.metrics.ssh_connection();
        ctx.sessions
            .spawn(handle_connection(ctx.clone(), socket, peer, startup));
    }
}

async fn handle_connection(
    ctx: Arc<SshContext>,
    socket: TcpStream,
    peer: SocketAddr,
    startup: Startup,
) {
    let _ = socket.set_nodelay(true);
    let shutdown = ctx.sessions.ending().clone();
    let (auth_tx, auth_rx) = oneshot::channel();
    let tasks = ChannelTasks::new(ctx.sessions.clone());
    let refusals = Arc::new(AtomicU32::new(0));
    let handler =
        outer::OuterHandler::new(ctx.clone(), peer, auth_tx, tasks.clone(), refusals.clone());
    let started = tokio::time::Instant::now();
    let deadline = started + ctx.config.ssh.handshake_timeout();
    // However this supervisor returns, the session's socket is closed.
    let cut = CancellationToken::new();
    let _cut_on_return = cut.clone().drop_guard();
    let stream = cut::Cuttable::new(outer_socket::OuterSocket::new(socket), cut);
    // Boxed, as is the goodbye below: futures awaited once, early or at the
    // end, are not stored inline in this task for the session's lifetime
    // (the handshake alone would double its size).
    let session = match tokio::time::timeout_at(
        deadline.min(started + IDENT_TIME),
        Box::pin(russh::server::run_stream(
            ctx.outer.clone(),
            stream,
            handler,
        )),
    )
    .await
    {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "SSH handshake failed");
            startup.ended(if broke_protocol(&e) {
                Offence::Junk
            } else {
                // Closed before a word (a TCP health check, a port scan).
                Offence::NoAuth
            });
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "client sent no SSH identification in time");
            startup.ended(Offence::GraceExceeded);
            return;
        }
    };
    let handle = session.handle();
    tokio::pin!(session);
    // Bounded: a client that stops reading cannot hold the goodbye (and
    // the shutdown waiting on it) open.
    let goodbye = |reason: String| {
        let handle = handle.clone();
        Box::pin(async move {
            let _ = tokio::time::timeout(
                GOODBYE_TIME,
                handle.disconnect(russh::Disconnect::ByApplication, reason, String::new()),
            )
            .await;
        })
    };
    // How a connection that never authenticated ended, for the penalties.
    let unauthenticated = |broke: bool| match refusals.load(Ordering::Relaxed) {
        0 if broke => Offence::Junk,
        0 => Offence::NoAuth,
        _ => Offence::AuthFail,
    };

    let (connection_id, _admission) = tokio::select! {
        result = &mut session => {
            startup.ended(unauthenticated(result.as_ref().is_err_and(broke_protocol)));
            log_end(peer, None, result);
            return;
        }
        authenticated = auth_rx => match authenticated {
            Ok((id, Some(admission))) => {
                startup.authenticated();
                (id, admission)
            }
            Ok((id, None)) => {
                startup.authenticated();
                tracing::warn!(code = "CG-SSH-005", %peer, connection = %id,
                    max_connections = ctx.config.ssh.max_connections,
                    "authenticated client refused: the gateway is at max_connections");
                goodbye(format!(
                    "CG-SSH-005 the gateway is at its limit of {} sessions; try again later",
                    ctx.config.ssh.max_connections
                ))
                .await;
                let _ = tokio::time::timeout(GOODBYE_TIME, &mut session).await;
                return;
            }
            Err(_) => {
                // The handler is gone: the session is over.
                let result = tokio::time::timeout(GOODBYE_TIME, &mut session).await;
                startup.ended(unauthenticated(matches!(&result, Ok(Err(e)) if broke_protocol(e))));
                return;
            }
        },
        () = tokio::time::sleep_until(deadline) => {
            tracing::info!(code = "CG-AUTH-007", %peer, "authentication timed out");
            startup.ended(Offence::GraceExceeded);
            goodbye("CG-AUTH-007 authentication timed out".into()).await;
            let _ = tokio::time::timeout(GOODBYE_TIME, &mut session).await;
            return;
        }
        () = shutdown.cancelled() => {
            drop(startup);
            goodbye("CG-OPS-001 the gateway is shutting down".into()).await;
            let _ = tokio::time::timeout(GOODBYE_TIME, &mut session).await;
            return;
        }
    };

    // The node re-checks this connection with all the others that have
    // sessions here (`recheck`): a delete it finds, or one announced by
    // another node (or this one), is heard on `revoked`.
    let _rechecked = ctx.rechecks.watch(&connection_id);
    let mut health = ctx.rechecks.health();
    // Open while the context (which holds the sender) lives.
    let mut health_open = true;
    let mut revoked = ctx.revoked.subscribe();
    loop {
        // The record is read when this connection is heard of.
        let check = tokio::select! {
            result = &mut session => {
                log_end(peer, Some(&connection_id), result);
                return;
            }
            changed = health.changed(), if health_open => {
                health_open = changed.is_ok();
                let now = *health.borrow_and_update();
                if let recheck::StoreHealth::Unreadable { since } = now
                    && health_open
                    && unchecked_too_long(&ctx.config, since.elapsed())
                {
                    tracing::warn!(code = "CG-STORE-003", %peer, connection = %connection_id,
                        "console connection not re-checked for store_lost_secs; closing its session");
                    goodbye(format!(
                        "CG-STORE-003 console connection {connection_id} could not be re-checked \
                         (the store is unreachable); reconnect when it is back"
                    ))
                    .await;
                    let _ = tokio::time::timeout(GOODBYE_TIME, &mut session).await;
                    return;
                }
                false
            }
            heard = revoked.recv() => match heard {
                Ok(id) => id == connection_id,
                // Some were missed: this may have been one.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                // Not while the context (which holds the sender) lives.
                Err(tokio::sync::broadcast::error::RecvError::Closed) => false,
            },
            () = shutdown.cancelled() => {
                // Console sessions say goodbye in their own channels and
                // write their Detach rows while the connection still runs.
                tokio::select! {
                    result = &mut session => {
                        log_end(peer, Some(&connection_id), result);
                        return;
                    }
                    () = tasks.wind_down(GOODBYE_TIME) => {}
                }
                goodbye("CG-OPS-001 the gateway is shutting down".into()).await;
                let _ = tokio::time::timeout(GOODBYE_TIME, &mut session).await;
                return;
            }
        };
        if !check {
            continue;
        }
        match ctx.store.connection_state(&connection_id).await {
            Ok(Some(LifecycleState::Active)) => {}
            Ok(state) => {
                tracing::info!(%peer, connection = %connection_id, state = ?state,
                    "console connection no longer active; closing its session");
                goodbye(format!(
                    "CG-AUTH-003 console connection {connection_id} has been deleted"
                ))
                .await;
                let _ = tokio::time::timeout(GOODBYE_TIME, &mut session).await;
                return;
            }
            // The node's re-check weighs how long the store is gone.
            Err(e) => {
                tracing::warn!(code = "CG-STORE-002", connection = %connection_id,
                    error = %e, "could not re-check console connection");
            }
        }
    }
}

/// Whether a session whose record could not be read for `for_how_long`
/// must end: a revoked connection must not live on unseen. A gateway
/// alone ends it after `[cluster] store_lost_secs` (30) unless
/// `store_lost = "keep"`; a node of a fleet leaves that to its node-wide
/// store-lost policy, which ends or keeps all its sessions at once.
pub(crate) fn unchecked_too_long(config: &Config, for_how_long: Duration) -> bool {
    let cluster = &config.cluster;
    cluster.node_id.is_none()
        && cluster.store_lost == crate::config::StoreLost::EndSessions
        && for_how_long >= Duration::from_secs(cluster.store_lost_secs)
}

/// Whether a connection's error is the client breaking the protocol
/// (junk, a bad packet), rather than it going away.
fn broke_protocol(e: &russh::Error) -> bool {
    !matches!(
        e,
        russh::Error::Disconnect | russh::Error::IO(_) | russh::Error::HUP
    )
}

fn log_end(peer: SocketAddr, connection: Option<&str>, result: Result<(), russh::Error>) {
    match result {
        Ok(()) => tracing::debug!(%peer, connection, "SSH connection closed"),
        Err(e) => tracing::debug!(%peer, connection, error = %e, "SSH connection ended"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let here = std::path::Path::new("/tmp");
        Config::from_toml(extra, here, here).unwrap()
    }

    #[test]
    fn a_session_whose_record_cannot_be_read_ends_after_store_lost_secs_alone() {
        let alone = config("[cluster]\nstore_lost_secs = 30\n");
        assert!(!unchecked_too_long(&alone, Duration::from_secs(29)));
        assert!(unchecked_too_long(&alone, Duration::from_secs(30)));
        let keep = config("[cluster]\nstore_lost = \"keep\"\n");
        assert!(!unchecked_too_long(&keep, Duration::from_secs(3600)));
        // A node of a fleet leaves it to the node-wide policy.
        let node = config(
            "[store]\nurl = \"postgres://u@127.0.0.1/db\"\n[cluster]\nnode_id = \"gw1\"\nlisten = \"127.0.0.1:7100\"\n",
        );
        assert!(!unchecked_too_long(&node, Duration::from_secs(3600)));
    }

    #[test]
    fn russh_is_the_patched_copy_whose_messages_stay_small() {
        // Every session holds two queues of 32 `Msg` slots each; the
        // vendored russh boxes the variant that made `Msg` 136 bytes
        // (vendor/russh/CONSOLEGATE.md). An unpatched russh fails here.
        let size = std::mem::size_of::<russh::server::Msg>();
        assert!(size <= 96, "russh::server::Msg is {size} bytes");
    }
}
