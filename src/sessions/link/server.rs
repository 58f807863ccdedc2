//! The holding end of the node link: the listener the other nodes relay
//! sessions to.
//!
//! A peer authenticates as a node of the fleet: user name = its `node_id`,
//! key = the link key that node registered in the store (a node that left
//! has none). It may then open session channels whose one request is
//! `exec consolegate-relay-v1 <request>`: attach this user to a console
//! this node holds. Anything else (shells, forwarding, other commands,
//! junk) is refused, and nothing a peer sends reaches a console before the
//! request is read and checked: the console must be held here, and a key
//! principal's connection must still be active, for that instance, with
//! that key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::PublicKey;
use russh::server::{
    Auth, ChannelOpenHandle, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelMsg, ChannelOpenFailure};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{EXIT_MOVED, EXIT_REFUSED, RELAY_COMMAND, RelayRequest, resumed_note};
use crate::console::hub::{ConsoleHubs, Principal};
use crate::fleet::Fleet;
use crate::sessions::Sessions;
use crate::sessions::attach::{self, Attach, AttachContext, Outcome, Terminal};
use crate::sessions::ssh::channels::{answer, publickey_only, truncate};
use crate::sessions::ssh::console_session::ChannelKeyboard;
use crate::store::{LifecycleState, Store};

/// Relayed sessions one link connection may carry.
const MAX_CHANNELS: usize = 64;
/// How long a peer has to finish the handshake, and to send its request.
const HANDSHAKE_TIME: Duration = Duration::from_secs(10);

/// What the node link listener serves with.
#[derive(Debug, Clone)]
pub struct LinkServer {
    /// The sessions' context (audit, metrics, shutdown).
    pub attach: AttachContext,
    /// The consoles.
    pub hubs: ConsoleHubs,
    /// Which nodes are in the fleet, with their link keys.
    pub fleet: Fleet,
    /// Where connection records are checked.
    pub store: Store,
    /// The owner of every session.
    pub sessions: Sessions,
    /// This node's link key, as the SSH server's host key.
    pub config: Arc<russh::server::Config>,
}

impl LinkServer {
    /// The link server's SSH configuration: this node's link key as its
    /// host key, `publickey` only, keepalives to find dead peers.
    pub fn ssh_config(key: &russh::keys::PrivateKey) -> Arc<russh::server::Config> {
        Arc::new(crate::sessions::ssh::russh_config(
            vec![key.clone()],
            Some(Duration::from_secs(2)),
        ))
    }
}

/// Serves the node link on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, server: LinkServer, shutdown: CancellationToken) {
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(code = "CG-SSH-001", error = %e, "node link accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let server = server.clone();
        server
            .sessions
            .clone()
            .spawn(async move { connection(server, socket, peer).await });
    }
}

async fn connection(server: LinkServer, socket: TcpStream, peer: SocketAddr) {
    let _ = socket.set_nodelay(true);
    let handler = LinkHandler {
        server: server.clone(),
        peer,
        node: None,
        channels: 0,
    };
    let session = match tokio::time::timeout(
        HANDSHAKE_TIME,
        russh::server::run_stream(server.config.clone(), socket, handler),
    )
    .await
    {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "node link handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "node link peer sent no SSH identification in time");
            return;
        }
    };
    let ending = server.attach.ending.clone();
    tokio::pin!(session);
    tokio::select! {
        _ = &mut session => {}
        // Relayed sessions end (and tell their nodes to resume elsewhere)
        // through the attach core; the connection then closes.
        () = ending.cancelled() => {
            let _ = tokio::time::timeout(Duration::from_secs(3), &mut session).await;
        }
    }
}

struct LinkHandler {
    server: LinkServer,
    peer: SocketAddr,
    /// The node it authenticated as.
    node: Option<String>,
    channels: usize,
}

impl LinkHandler {
    /// Whether `key` is the link key node `user` registered.
    async fn is_node(&self, user: &str, key: &PublicKey) -> bool {
        let known = self.server.fleet.peer_key(user).await;
        let ok = known.is_some_and(|k| k.key_data() == key.key_data())
            && user != self.server.fleet.node_id();
        if !ok {
            tracing::warn!(code = "CG-FLEET-005", peer = %self.peer, user = %truncate(user),
                fingerprint = %crate::keys::fingerprint(key),
                "node link refused: not the link key of a live node of the fleet");
        }
        ok
    }
}

impl Handler for LinkHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(publickey_only())
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if Box::pin(self.is_node(user, offer.public_key)).await {
            Auth::Accept
        } else {
            publickey_only()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if Box::pin(self.is_node(user, key.public_key)).await {
            tracing::debug!(peer = %self.peer, node = %user, "node link authenticated");
            self.node = Some(user.to_owned());
            Ok(Auth::Accept)
        } else {
            Ok(publickey_only())
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(node) = self.node.clone() else {
            return prohibit(reply).await;
        };
        if self.channels >= MAX_CHANNELS {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        self.channels += 1;
        reply.accept().await;
        let server = self.server.clone();
        self.server.sessions.spawn(relayed(server, node, channel));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host: &str,
        _port: u32,
        _originator: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        prohibit(reply).await
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        prohibit(reply).await
    }

    async fn exec_request(
        &mut self,
        channel: russh::ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        answer(session, channel, data.starts_with(RELAY_COMMAND.as_bytes()))
    }

    async fn shell_request(
        &mut self,
        channel: russh::ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        answer(session, channel, false)
    }

    async fn subsystem_request(
        &mut self,
        channel: russh::ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        answer(session, channel, false)
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }
}

/// Refuses a channel: the node link opens nothing but relayed sessions.
async fn prohibit(reply: ChannelOpenHandle) -> Result<(), russh::Error> {
    reply
        .reject(ChannelOpenFailure::AdministrativelyProhibited)
        .await;
    Ok(())
}

/// One relayed session: read and check its request, then run it through
/// the attach core; the exit status tells the relaying node whether to
/// resume elsewhere.
async fn relayed(server: LinkServer, node: String, mut channel: Channel<Msg>) {
    let command = tokio::time::timeout(HANDSHAKE_TIME, async {
        loop {
            match channel.wait().await {
                Some(ChannelMsg::Exec { command, .. }) => return Some(command),
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => return None,
                Some(_) => {}
            }
        }
    })
    .await;
    let status = match command {
        Ok(Some(command)) => match check(&server, &node, &command).await {
            Ok(session) => {
                let (reader, writer) = channel.split();
                let outcome = attach::run(
                    &server.attach,
                    &session,
                    ChannelKeyboard(reader),
                    writer.make_writer(),
                )
                .await;
                let status = match outcome {
                    Outcome::Moved => EXIT_MOVED,
                    Outcome::Ended => 0,
                };
                let _ = writer.exit_status(status).await;
                let _ = writer.eof().await;
                let _ = writer.close().await;
                return;
            }
            Err(status) => status,
        },
        Ok(None) | Err(_) => return,
    };
    let _ = channel.exit_status(status).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

/// The session a relay request asks for, if this node may run it; else
/// the exit status that says why not.
async fn check(server: &LinkServer, node: &str, command: &[u8]) -> Result<Attach, u32> {
    let request = command
        .strip_prefix(RELAY_COMMAND.as_bytes())
        .and_then(|json| serde_json::from_slice::<RelayRequest>(json).ok());
    let Some(request) = request else {
        tracing::warn!(code = "CG-FLEET-005", %node, "node link: unreadable relay request refused");
        return Err(EXIT_REFUSED);
    };
    let hub = match server.hubs.get(&request.instance_id) {
        Some(hub) if server.hubs.held(&request.instance_id) => hub,
        // Not (or no longer) here: the relaying node asks again.
        _ => return Err(EXIT_MOVED),
    };
    if let Principal::Key {
        connection_id,
        fingerprint,
    } = &request.principal
    {
        let live = match server.store.get_connection(connection_id).await {
            Ok(Some(record)) => {
                record.lifecycle_state == LifecycleState::Active
                    && record.instance_id == request.instance_id
                    && &record.fingerprint == fingerprint
            }
            _ => false,
        };
        if !live {
            tracing::warn!(code = "CG-FLEET-005", %node, connection = %truncate(connection_id),
                instance = %truncate(&request.instance_id),
                "node link: relay request for a connection that is not active for that instance and key");
            return Err(EXIT_REFUSED);
        }
    }
    let instance = Arc::new(hub.instance().clone());
    Ok(Attach {
        hub,
        instance,
        principal: request.principal,
        peer: request.peer,
        options: request.options,
        via: format!("{} through node {node}", request.via).into(),
        terminal: Terminal {
            cols: request.cols,
            rows: request.rows,
            term: request.term.map(|t| t.chars().take(64).collect()),
        },
        via_node: Some(node.to_owned()),
        resumed: request
            .resumed
            .then(|| resumed_note(server.fleet.node_id())),
    })
}
