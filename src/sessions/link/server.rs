//! The holding end of the node link: the listener the other nodes relay
//! sessions to.
//!
//! A peer proves it is a node of the fleet by the link key that node
//! registered in the store (a node that left has none; see
//! [`super::wire`]). Its one request is "attach this user to a console
//! this node holds"; anything else (junk, another kind of frame, a request
//! that does not parse) ends the connection, and nothing a peer sends
//! reaches a console before the request is read and checked: the console
//! must be held here, and a key principal's connection must still be
//! active, for that instance, with that key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use russh::keys::PrivateKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::wire::{self, Kind, Receiver, SILENT_FOR, Screen, Sender, WireError};
use super::{EXIT_MOVED, EXIT_REFUSED, RelayRequest, resumed_note};
use crate::console::hub::{ConsoleHubs, Principal};
use crate::fleet::Fleet;
use crate::sessions::Sessions;
use crate::sessions::attach::{self, Attach, AttachContext, Keyboard, Outcome, Terminal};
use crate::sessions::ssh::channels::truncate;
use crate::store::{LifecycleState, Store};

/// How long a peer has to finish the handshake and send its request.
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
    /// This node's link key, which it proves itself with.
    pub key: Arc<PrivateKey>,
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

/// One link connection: the handshake, the peer's proof, its request,
/// then the session through the attach core; the `Exit` frame tells the
/// relaying node whether to resume elsewhere.
async fn connection(server: LinkServer, socket: TcpStream, peer: SocketAddr) {
    let opening = async {
        let accepted = wire::accept(socket, server.fleet.node_id(), &server.key).await?;
        let node = accepted.node().to_owned();
        let key = if node == server.fleet.node_id() {
            None
        } else {
            server.fleet.peer_key(&node).await
        };
        let (node, tx, mut rx) = accepted.verify(key.as_ref())?;
        tracing::debug!(%peer, %node, "node link authenticated");
        let request = match rx.next().await? {
            Some(frame) if frame.kind == Kind::Request => frame.body,
            _ => return Err(WireError::Protocol),
        };
        Ok((node, tx, rx, request))
    };
    let opened = tokio::select! {
        opened = tokio::time::timeout(HANDSHAKE_TIME, opening) => opened,
        () = server.attach.ending.cancelled() => return,
    };
    let (node, tx, rx, request) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(WireError::NotANode(node, fingerprint))) => {
            tracing::warn!(code = "CG-FLEET-005", %peer, node = %truncate(&node), %fingerprint,
                "node link refused: not the link key of a live node of the fleet");
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "node link handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "node link peer did not finish its handshake in time");
            return;
        }
    };
    let status = match check(&server, &node, &request).await {
        Ok(session) => {
            let keyboard = LinkKeyboard {
                rx,
                tx: tx.clone(),
                heard: Instant::now(),
            };
            match attach::run(&server.attach, &session, keyboard, Screen(tx.clone())).await {
                Outcome::Moved => EXIT_MOVED,
                Outcome::Ended => 0,
            }
        }
        Err(status) => status,
    };
    let _ = tx.send(Kind::Exit, &status.to_be_bytes()).await;
    tx.close().await;
}

/// A relayed session's keystrokes, as the relaying node sends them; keeps
/// the link alive while the user types nothing.
struct LinkKeyboard {
    rx: Receiver,
    tx: Sender,
    /// When the relaying node was last heard.
    heard: Instant,
}

impl Keyboard for LinkKeyboard {
    async fn typed(&mut self) -> Option<Bytes> {
        loop {
            tokio::select! {
                frame = self.rx.next() => match frame {
                    Ok(Some(frame)) => {
                        self.heard = Instant::now();
                        match frame.kind {
                            Kind::Data => return Some(frame.body),
                            Kind::Ping => {}
                            // A second request, a hello, an exit: not from a relaying node.
                            _ => return None,
                        }
                    }
                    Ok(None) | Err(_) => return None,
                },
                sent = self.tx.keep_alive() => if sent.is_err() {
                    return None;
                },
                // The relaying node went silent: its machine is gone.
                () = tokio::time::sleep_until(self.heard + SILENT_FOR) => return None,
            }
        }
    }
}

/// The session a relay request asks for, if this node may run it; else
/// the exit status that says why not.
async fn check(server: &LinkServer, node: &str, request: &[u8]) -> Result<Attach, u32> {
    let Ok(request) = serde_json::from_slice::<RelayRequest>(request) else {
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
