//! `consolegate serve`: opens the store, loads or creates host keys, writes
//! the Detach audit rows an earlier process left unwritten (it was killed),
//! starts a console hub per instance, the SSH listener, the HTTP API with
//! the web consoles, and the connection lifecycle task, and stops them all in order
//! on shutdown: listeners first, then (in a fleet) the consoles are handed
//! on, then every session (each says why and writes its Detach row and
//! recording), then the background tasks, the consoles, and last the store.
//! `node.rs`: this gateway as a node of a fleet; `reload.rs`: reloads.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiState, ListenerSettings};
use crate::config::{Config, SharedConfig};
use crate::connections::ConsoleConnections;
use crate::console::hub::ConsoleHubs;
use crate::fleet::Fleet;
use crate::fleet::FleetLink;
use crate::keys::{HostKeyError, HostKeys};
use crate::ops::metrics::Metrics;
use crate::ops::{Health, OpsState};
use crate::sessions::Sessions;
use crate::sessions::caps::SessionCaps;
use crate::sessions::link::LinkServer;
use crate::sessions::ssh::SshContext;
use crate::sessions::web::WebState;
use crate::store::{Store, StoreError};

mod node;
mod reload;
use node::{NodeInfo, heartbeat, join_fleet, register_at_start, store_lost};
use reload::Reloader;
pub use reload::SetLogLevel;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Host keys could not be read or created.
    #[error(transparent)]
    HostKey(#[from] HostKeyError),
    /// A listener could not be bound.
    #[error("cannot listen for {what} on {addr}: {error}")]
    Bind {
        /// SSH or HTTP.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The error.
        error: std::io::Error,
    },
    /// An `[[api_user]]` key is unusable.
    #[error("{0}")]
    ApiUsers(String),
    /// The HTTP listener's TLS certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] crate::api::tls::TlsError),
    /// Another running process is registered under this `node_id`.
    #[error(
        "CG-FLEET-007 node_id `{0}` is in use by another running gateway process; each node needs its own [cluster] node_id"
    )]
    NodeIdInUse(String),
    /// A node of a fleet with no address for its node link.
    #[error("CG-CONF-001 [cluster] needs `listen` or an IP `advertise` address for the node link")]
    NoLinkAddress,
    /// The admin socket could not be created.
    #[error(transparent)]
    Admin(#[from] crate::ops::admin::AdminError),
    /// The data directory or a secret in it is open to other users and
    /// cannot be made owner-only.
    #[error(transparent)]
    Exposed(#[from] crate::files::ExposedError),
}

/// How long sessions get to end at shutdown (say why, write their Detach
/// rows and recordings) before the store closes under them.
const SESSIONS_GRACE: std::time::Duration = std::time::Duration::from_secs(8);

/// The gateway's bound sockets.
#[derive(Debug)]
pub struct Listeners {
    /// The SSH data plane.
    pub ssh: TcpListener,
    /// The HTTP control plane.
    pub api: TcpListener,
    /// `/metrics`, `/healthz` and `/readyz`, when not on the API listener.
    pub metrics: Option<TcpListener>,
}

/// Opens the store and the host keys named by `config` (creating them on
/// first use), after making a data directory that is open to other users,
/// and the secrets in it, owner-only (`CG-DISK-002`).
pub async fn open_state(config: &Config) -> Result<(Store, HostKeys), GatewayError> {
    crate::keys::create_private_dir(&config.data_dir)?;
    crate::files::secure_data_dir(&config.data_dir)?;
    let store = Store::open(config).await?;
    let data_dir = config.data_dir.clone();
    // RSA key generation takes a moment: keep it off the async threads.
    let host_keys = tokio::task::spawn_blocking(move || HostKeys::load_or_generate(&data_dir))
        .await
        .map_err(|e| HostKeyError::Generate(e.to_string()))??;
    Ok((store, host_keys))
}

/// Binds the listeners named by `config`.
pub async fn bind(config: &Config) -> Result<Listeners, GatewayError> {
    let bind = |what, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|error| GatewayError::Bind { what, addr, error })
    };
    Ok(Listeners {
        ssh: bind("SSH", config.ssh.listen).await?,
        api: bind("the HTTP API", config.api.listen).await?,
        metrics: match config.metrics.listen {
            Some(addr) => Some(bind("metrics", addr).await?),
            None => None,
        },
    })
}

/// How the binary runs the gateway beyond its config.
#[derive(Default, Clone)]
pub struct RunOptions {
    /// Reload the config file on SIGHUP (the `serve` command; tests use
    /// the admin socket instead, as `consolegate reload` does).
    pub reload_on_sighup: bool,
    /// Applies a reloaded `[log] level`.
    pub set_log_level: Option<SetLogLevel>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("reload_on_sighup", &self.reload_on_sighup)
            .finish_non_exhaustive()
    }
}

/// Runs the gateway on already-bound listeners until `shutdown` is
/// cancelled. If the config leaves `public_port` unset, connection strings
/// use the SSH listener's actual port.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    run_with(config, listeners, shutdown, RunOptions::default()).await
}

/// [`run`], with the binary's options.
pub async fn run_with(
    mut config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
    options: RunOptions,
) -> Result<(), GatewayError> {
    let ssh_port = listeners.ssh.local_addr().ok().map(|a| a.port());
    if let Ok(addr) = listeners.ssh.local_addr() {
        config.ssh.public_port.get_or_insert(addr.port());
        tracing::info!(%addr, "SSH listening");
    }
    let local = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let api_addr = local(&listeners.api);
    tracing::info!(addr = %api_addr, "HTTP API listening");
    let metrics_addr = listeners.metrics.as_ref().map(local);
    if let Some(addr) = &metrics_addr {
        tracing::info!(%addr, "metrics, /healthz and /readyz listening");
    }
    let ssh_addr = local(&listeners.ssh);
    let (store, host_keys) = open_state(&config).await?;
    let admin_listener = crate::ops::admin::bind(&config.data_dir).await?;
    tracing::info!(fingerprint = %host_keys.fingerprint(), "gateway host key");
    let node = match &config.cluster.node_id {
        Some(id) => Some(join_fleet(&config, id).await?),
        None => None,
    };
    let hubs = ConsoleHubs::start_with(&config.instances, node.is_some());
    // This process: in its sessions' audit rows, its leases and its node row.
    let incarnation = crate::ids::random_hex(8);
    let config = Arc::new(config);
    let shared = SharedConfig::new(config.clone());
    let connections = ConsoleConnections::new(store.clone(), shared.clone(), &host_keys);
    let instance_keys = connections.instance_keys().clone();
    let inner_keys = instance_keys.get_all(&config.instances).await?;
    let tokens = connections.tokens();
    let metrics = Arc::new(Metrics::new());
    let fleet = node.as_ref().map(|n| {
        Fleet::new(
            &config.cluster,
            n.node_id.clone(),
            &incarnation,
            store.clone(),
            hubs.clone(),
            config.instances.iter().map(|i| i.id.clone()).collect(),
        )
    });
    let sessions = match (&node, &fleet) {
        (Some(n), Some(fleet)) => Sessions::in_fleet(
            config.ssh.max_connections,
            SessionCaps::new(config.session.caps()),
            FleetLink {
                fleet: fleet.clone(),
                key: n.key.clone(),
            },
        ),
        _ => Sessions::capped(
            config.ssh.max_connections,
            SessionCaps::new(config.session.caps()),
        ),
    }
    .named(config.cluster.node_id.clone(), incarnation.clone());
    let health = Arc::new(Health::default());
    // Bound already: connections wait in its backlog until the accept loop runs.
    health.set_ssh_listening(true);
    let api = ApiState::new(connections, hubs.clone(), metrics.clone())
        .map_err(GatewayError::ApiUsers)?;
    let tls = crate::api::tls::Tls::load(&config.api)?;
    let mut tasks = JoinSet::new();
    let mut http_link = None;
    let background = CancellationToken::new();
    tasks.spawn(lifecycle(store.clone(), config.clone(), background.clone()));
    // The lease keeper stops before the sessions end, handing its consoles
    // on, so that sessions relayed from other nodes resume at once.
    let leases = CancellationToken::new();
    let mut keeper = None;
    let fenced = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let (Some(n), Some(fleet)) = (node, &fleet) {
        let info = NodeInfo {
            node_id: n.node_id.clone(),
            incarnation: incarnation.clone(),
            stale_after: std::time::Duration::from_secs(config.cluster.node_timeout_secs),
            public_key: crate::keys::public_key_line(n.key.public_key()),
            advertise: n.advertise.clone(),
        };
        let every = std::time::Duration::from_secs(config.cluster.heartbeat_secs);
        register_at_start(&store, &info, every).await?;
        tracing::info!(node = %n.node_id, link = %n.advertise, "registered as a node of the fleet");
        tasks.spawn(heartbeat(
            store.clone(),
            config.clone(),
            info,
            background.clone(),
            shutdown.clone(),
            fenced.clone(),
        ));
        keeper = Some(tokio::spawn(fleet.clone().keep(leases.clone())));
        tasks.spawn(store_lost(
            fleet.clone(),
            sessions.clone(),
            store.clone(),
            background.clone(),
        ));
        let server = LinkServer {
            attach: sessions.attach_context(store.clone(), metrics.clone()),
            hubs: hubs.clone(),
            fleet: fleet.clone(),
            store: store.clone(),
            sessions: sessions.clone(),
            key: n.key.clone(),
        };
        http_link = Some(tokio::spawn(crate::sessions::link::serve(
            n.listener,
            server,
            shutdown.clone(),
        )));
    }
    // No other process runs as this gateway now (it holds the admin
    // socket; a node has registered its node_id): the sessions an earlier
    // one left open are over.
    reconcile_detaches(&store, config.cluster.node_id.as_deref(), &incarnation).await;
    let ops = crate::ops::routes(OpsState {
        metrics: metrics.clone(),
        hubs: hubs.clone(),
        store: store.clone(),
        health: health.clone(),
    });
    let web = WebState::new(
        tokens,
        hubs.clone(),
        metrics.clone(),
        sessions.clone(),
        store.clone(),
    );
    let mut app = crate::api::app_with(api.clone(), crate::sessions::web::routes(web));
    let mut http_tasks = JoinSet::new();
    match listeners.metrics {
        Some(listener) => {
            let settings = ListenerSettings::of(&config.api, None);
            http_tasks.spawn(serve_http(
                "metrics",
                listener,
                ops,
                settings,
                metrics.clone(),
                shutdown.clone(),
                None,
            ));
        }
        None => app = app.merge(ops),
    }
    http_tasks.spawn(serve_http(
        "the HTTP API",
        listeners.api,
        app,
        ListenerSettings::of(&config.api, tls.clone()),
        metrics.clone(),
        shutdown.clone(),
        Some(health.clone()),
    ));
    let ctx = Arc::new(SshContext::new(
        config.clone(),
        store.clone(),
        hubs.clone(),
        metrics,
        sessions.clone(),
        &host_keys,
        inner_keys,
    ));
    tasks.spawn(revocations(store.clone(), ctx.clone(), background.clone()));
    let reloader = Reloader {
        config: shared,
        ssh_port,
        hubs: hubs.clone(),
        ssh: ctx.clone(),
        api,
        instance_keys,
        health: health.clone(),
        set_log_level: options.set_log_level.clone(),
        fleet: fleet.clone(),
        tls,
    };
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
    tasks.spawn(reloads(reloader, reload_rx, background.clone()));
    if options.reload_on_sighup {
        tasks.spawn(sighup(reload_tx.clone(), background.clone()));
    }
    let info = crate::ops::admin::GatewayInfo {
        started: crate::timefmt::format_time(time::OffsetDateTime::now_utc()),
        ssh_listen: ssh_addr,
        api_listen: api_addr,
        metrics_listen: metrics_addr,
        host_key_fingerprints: vec![
            crate::keys::fingerprint(host_keys.ed25519.public_key()),
            crate::keys::fingerprint(host_keys.rsa.public_key()),
        ],
    };
    http_tasks.spawn(crate::ops::admin::serve(
        admin_listener,
        info,
        hubs.clone(),
        Some(reload_tx),
        shutdown.clone(),
    ));
    crate::ops::systemd::tell("READY=1\nSTATUS=serving consoles");
    let stopping = shutdown.clone();
    tasks.spawn(async move {
        stopping.cancelled().await;
        crate::ops::systemd::tell("STOPPING=1");
    });
    crate::sessions::ssh::serve(listeners.ssh, ctx, shutdown).await;
    health.set_ssh_listening(false);
    if let Some(link) = http_link {
        let _ = link.await;
    }
    // No new sessions; end the running ones while the store still takes
    // their last audit rows. In a fleet, hand the consoles on first: the
    // sessions other nodes relay here resume on their next holder.
    sessions.ending().cancel();
    leases.cancel();
    if let Some(keeper) = keeper {
        let _ = keeper.await;
    }
    sessions.end_all(SESSIONS_GRACE).await;
    while http_tasks.join_next().await.is_some() {}
    // Sessions are gone; now the background tasks and the consoles.
    background.cancel();
    while tasks.join_next().await.is_some() {}
    if let Some(node_id) = &config.cluster.node_id
        && let Err(e) = store.node_left(node_id, &incarnation).await
    {
        tracing::warn!(code = "CG-STORE-002", error = %e, "could not record that this node left");
    }
    hubs.stop().await;
    store.close().await;
    tracing::info!("gateway stopped");
    if fenced.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(GatewayError::NodeIdInUse(
            config.cluster.node_id.clone().unwrap_or_default(),
        ));
    }
    Ok(())
}

/// Writes the Detach audit rows that earlier processes of this gateway (of
/// this node, in a fleet) could not write: they were killed, or their
/// machine lost power, with console sessions attached (`CG-OPS-011`). A
/// store that fails here is reported and the gateway starts anyway.
async fn reconcile_detaches(store: &Store, node_id: Option<&str>, incarnation: &str) {
    match store.reconcile_detaches(node_id, incarnation).await {
        Ok(0) => {}
        Ok(sessions) => tracing::warn!(
            code = "CG-OPS-011",
            sessions,
            "an earlier gateway process stopped without ending its console sessions \
             (killed, or the machine lost power); wrote their Detach audit rows"
        ),
        Err(e) => tracing::warn!(code = "CG-STORE-002", error = %e,
            "could not write the Detach audit rows of sessions an earlier gateway process left open"),
    }
}

/// Runs reloads one at a time, as the admin socket and SIGHUP ask.
async fn reloads(
    reloader: Reloader,
    mut requests: tokio::sync::mpsc::Receiver<crate::ops::admin::ReloadRequest>,
    shutdown: CancellationToken,
) {
    loop {
        let reply = tokio::select! {
            r = requests.recv() => match r { Some(r) => r, None => return },
            () = shutdown.cancelled() => return,
        };
        let outcome = reloader.reload().await;
        let _ = reply.send(outcome);
    }
}

/// Turns each SIGHUP into a reload.
async fn sighup(
    reloads: tokio::sync::mpsc::Sender<crate::ops::admin::ReloadRequest>,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(code = "CG-OPS-006", error = %e, "cannot listen for SIGHUP; use `consolegate reload`");
            return;
        }
    };
    loop {
        tokio::select! {
            got = hup.recv() => if got.is_none() { return },
            () = shutdown.cancelled() => return,
        }
        tracing::info!("SIGHUP: reloading the configuration");
        let (reply, _done) = tokio::sync::oneshot::channel();
        if reloads.send(reply).await.is_err() {
            return;
        }
    }
}

/// Serves an HTTP router until shutdown, under its listener's limits;
/// `health` learns whether it serves.
async fn serve_http(
    what: &'static str,
    listener: TcpListener,
    app: axum::Router,
    settings: ListenerSettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    health: Option<Arc<Health>>,
) {
    if let Some(h) = &health {
        h.set_api_listening(true);
    }
    if let Err(e) = crate::api::serve(listener, app, settings, metrics, shutdown).await {
        tracing::error!(code = "CG-API-001", error = %e, "{what} stopped serving");
    }
    if let Some(h) = &health {
        h.set_api_listening(false);
    }
}

/// Hears deletes made through any node (PostgreSQL's LISTEN) and hands
/// them to this node's SSH sessions, which then end at once. Without it
/// (SQLite, or while the listener reconnects) sessions still end at their
/// next re-check.
async fn revocations(store: Store, ssh: Arc<SshContext>, shutdown: CancellationToken) {
    loop {
        let mut listener = match store.listen_revocations().await {
            Ok(Some(listener)) => listener,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(code = "CG-STORE-002", error = %e,
                    "cannot listen for deletes made on other nodes; sessions re-check instead");
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(2)) => continue,
                    () = shutdown.cancelled() => return,
                }
            }
        };
        loop {
            tokio::select! {
                heard = listener.next() => match heard {
                    Ok(id) => ssh.revoke(id),
                    Err(e) => {
                        tracing::warn!(code = "CG-STORE-002", error = %e,
                            "lost the listener for deletes made on other nodes; sessions re-check instead");
                        break;
                    }
                },
                () = shutdown.cancelled() => return,
            }
        }
    }
}

/// Finishes deletions (DELETING → DELETED once every session has had time to
/// notice), purges DELETED connections after their retention and expired
/// retry tokens.
async fn lifecycle(store: Store, config: Arc<Config>, shutdown: CancellationToken) {
    // Sessions re-check every revalidate interval: one more second and all have seen it.
    let settle_ms = (config.ssh.revalidate_interval_secs as i64 + 1) * 1000;
    let retention_ms = config.api.deleted_retention_secs as i64 * 1000;
    let audit_ms = config.audit_retention_days as i64 * 24 * 3600 * 1000;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match store.advance_lifecycle(settle_ms, retention_ms).await {
                    Ok((0, 0)) => {}
                    Ok((deleted, purged)) => tracing::info!(deleted, purged, "console connection lifecycle"),
                    Err(e) => tracing::warn!(code = "CG-STORE-002", error = %e,
                        "console connection lifecycle failed"),
                }
                if let Err(e) = store.purge_console_tokens().await {
                    tracing::warn!(code = "CG-STORE-002", error = %e, "console token purge failed");
                }
                if let Err(e) = store.purge_audit(audit_ms).await {
                    tracing::warn!(code = "CG-STORE-002", error = %e, "audit purge failed");
                }
            }
            () = shutdown.cancelled() => return,
        }
    }
}
