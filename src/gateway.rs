//! `consolegate serve`: opens the store, loads or creates host keys, starts a
//! console hub per instance and the SSH listener, and stops them all in order
//! on shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::console::hub::ConsoleHubs;
use crate::keys::{HostKeyError, HostKeys};
use crate::ssh::SshContext;
use crate::store::{Store, StoreError};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Host keys could not be read or created.
    #[error(transparent)]
    HostKey(#[from] HostKeyError),
    /// The SSH listener could not be bound.
    #[error("cannot listen for SSH on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        error: std::io::Error,
    },
}

/// Opens the store and the host keys named by `config` (creating them on first use).
pub async fn open_state(config: &Config) -> Result<(Store, HostKeys), GatewayError> {
    crate::keys::create_private_dir(&config.data_dir)?;
    let store = Store::open_sqlite(&config.database_path()).await?;
    let data_dir = config.data_dir.clone();
    // RSA key generation takes a moment: keep it off the async threads.
    let host_keys = tokio::task::spawn_blocking(move || HostKeys::load_or_generate(&data_dir))
        .await
        .map_err(|e| HostKeyError::Generate(e.to_string()))??;
    Ok((store, host_keys))
}

/// Binds the SSH listener named by `config`.
pub async fn bind(config: &Config) -> Result<TcpListener, GatewayError> {
    TcpListener::bind(config.ssh.listen)
        .await
        .map_err(|error| GatewayError::Bind {
            addr: config.ssh.listen,
            error,
        })
}

/// Runs the gateway on an already-bound SSH listener until `shutdown` is
/// cancelled. If the config leaves `public_port` unset, connection strings
/// use the listener's actual port.
pub async fn run(
    mut config: Config,
    ssh_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    if let Ok(addr) = ssh_listener.local_addr() {
        config.ssh.public_port.get_or_insert(addr.port());
        tracing::info!(%addr, "SSH listening");
    }
    let (store, host_keys) = open_state(&config).await?;
    tracing::info!(fingerprint = %host_keys.fingerprint(), "gateway host key");
    let mut instance_keys = HashMap::new();
    for instance in &config.instances {
        let key = store.instance_host_key(&instance.id).await?;
        instance_keys.insert(instance.id.clone(), key);
    }
    let mut tasks = JoinSet::new();
    let hubs_shutdown = CancellationToken::new();
    let hubs = ConsoleHubs::start(&config.instances, &hubs_shutdown, &mut tasks);
    let config = Arc::new(config);
    let ctx = Arc::new(SshContext::new(
        config.clone(),
        store.clone(),
        hubs,
        &host_keys,
        instance_keys,
    ));
    crate::ssh::serve(ssh_listener, ctx, shutdown).await;
    // Sessions are gone; now the consoles.
    hubs_shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    store.close().await;
    tracing::info!("gateway stopped");
    Ok(())
}
