//! Sessions on any node of a fleet: the node link.
//!
//! A console is held by one node (see [`crate::fleet`]). A session that
//! lands on another node is relayed to the holder over the node link, an
//! encrypted stream between the two nodes, each proving itself with the
//! link key it registered in the store ([`wire`]):
//!
//! - [`attach_anywhere`] is what the front ends (SSH, web) call: it runs the
//!   attach core here when this node holds the console, or relays the
//!   session to the node that does; when the console moves (its holder
//!   died, shut down or handed it on), the session is told so on one line
//!   and resumes where the console is held next;
//! - `client`: the relaying end: it dials the holder, checks that the
//!   holder shows the link key it registered in the store, and then only
//!   carries bytes: keystrokes there, the screen back;
//! - `server`: the holding end, the node link listener: it accepts only
//!   nodes of the fleet, by the link keys they registered, and runs each
//!   relayed session through the same attach core as a local one, so replay,
//!   escapes, exclusive input, `&F` and `&W` are the same on every node.
//!
//! The link is no proxy: its only request is "attach this session to a
//! console this node holds"; it has no shell, no forwarding and no way to
//! open a connection anywhere. One link connection carries one session.

mod client;
mod server;
pub mod wire;

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::attach::{self, Attach, AttachContext, Keyboard, Outcome, SHUTTING_DOWN, notice};
use super::caps::OverCap;
use crate::console::hub::Principal;
use crate::console::options::SessionOptions;
use crate::fleet::{FleetLink, Owner};
pub use server::{LinkServer, serve};

/// The exit status of a relayed session that must resume elsewhere
/// (EX_TEMPFAIL): the console moved, or its holder is shutting down.
const EXIT_MOVED: u32 = 75;
/// The exit status of a relay request the holder refused.
const EXIT_REFUSED: u32 = 2;
/// How long dialling a node and opening a relayed session may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// A relayed session, as the relaying node asks the holder for it (JSON,
/// in the link's `Request` frame).
#[derive(Debug, Serialize, Deserialize)]
struct RelayRequest {
    instance_id: String,
    principal: Principal,
    /// The user's address.
    peer: SocketAddr,
    options: SessionOptions,
    /// The way the user came in on the relaying node.
    via: String,
    cols: u32,
    rows: u32,
    term: Option<String>,
    /// Set when the session resumes after its console moved.
    resumed: bool,
}

/// Runs a console session wherever its console is held: here through the
/// attach core, or relayed to the holder; when the console moves, the user
/// is told and the session resumes where it is held next.
pub async fn attach_anywhere<K, W>(
    ctx: &AttachContext,
    session: Box<Attach>,
    keyboard: K,
    mut screen: W,
) where
    K: Keyboard,
    W: AsyncWrite + Unpin + Send,
{
    // Counted here, on the node the user reached, for the session's life
    // (wherever its console is held, and as it moves).
    let _place = match ctx.caps.take(&session.instance.id, &session.principal) {
        Ok(place) => place,
        Err(over) => {
            tracing::info!(code = OverCap::CODE, instance = %session.instance.id,
                who = %session.principal.label(), peer = %session.peer, %over,
                "console session refused: over a session cap");
            let _ = show(&mut screen, &format!("{over}; bye")).await;
            return;
        }
    };
    match &ctx.fleet {
        None => {
            attach::run(ctx, &session, keyboard, screen).await;
        }
        // Boxed: the fleet's paths (relaying to the holder among them) are
        // larger than the attach core's, and a gateway alone would hold
        // their room in every session's task.
        Some(link) => Box::pin(in_fleet(ctx, link, session, keyboard, screen)).await,
    }
}

/// [`attach_anywhere`] on a node of a fleet: wherever the console is held,
/// following it as it moves.
async fn in_fleet<K, W>(
    ctx: &AttachContext,
    link: &FleetLink,
    mut session: Box<Attach>,
    mut keyboard: K,
    mut screen: W,
) where
    K: Keyboard,
    W: AsyncWrite + Unpin + Send,
{
    let instance_id = session.instance.id.clone();
    // Until when a session may go on finding its console.
    let mut patience = tokio::time::Instant::now() + waiting_time(link);
    loop {
        let mut owner = link.fleet.owner_of(&instance_id);
        if owner == Owner::Nobody {
            let _ = show(
                &mut screen,
                "CG-FLEET-003 waiting for a node of the fleet to hold this console",
            )
            .await;
            loop {
                let left = patience.saturating_duration_since(tokio::time::Instant::now());
                owner = tokio::select! {
                    o = link.fleet.wait_owner(&instance_id, left) => o,
                    () = ctx.ending.cancelled() => break,
                    reason = ctx.cut() => {
                        let _ = show(&mut screen, &format!("{reason}; bye")).await;
                        return;
                    }
                };
                // With `store_lost = "keep"`, wait as long as the store is lost.
                if owner != Owner::Nobody || !link.fleet.keeps_sessions_waiting() {
                    break;
                }
                patience = tokio::time::Instant::now() + waiting_time(link);
            }
        }
        let outcome = match owner {
            Owner::Here => {
                if session.resumed.is_some() {
                    session.resumed = Some(resumed_note(link.fleet.node_id()));
                }
                Ok(attach::run(ctx, &session, &mut keyboard, &mut screen).await)
            }
            Owner::Peer(peer) => {
                client::relay(ctx, link, &peer, &session, &mut keyboard, &mut screen).await
            }
            Owner::Nobody if ctx.ending.is_cancelled() => {
                let _ = show(&mut screen, &format!("{SHUTTING_DOWN}; bye")).await;
                return;
            }
            Owner::Nobody => {
                tracing::warn!(code = "CG-FLEET-003", instance = %instance_id,
                    "no node of the fleet holds the console; session refused");
                let _ = show(
                    &mut screen,
                    "CG-FLEET-003 no node of the fleet holds this console now; try again shortly; bye",
                )
                .await;
                return;
            }
        };
        match outcome {
            Ok(Outcome::Ended) => return,
            Ok(Outcome::Moved) => {
                patience = tokio::time::Instant::now() + waiting_time(link);
            }
            Err(why) => {
                tracing::info!(code = "CG-FLEET-002", instance = %instance_id, %why,
                    "console holder unreachable; waiting for its next holder");
                if link.fleet.keeps_sessions_waiting() {
                    patience = tokio::time::Instant::now() + waiting_time(link);
                }
                if tokio::time::Instant::now() >= patience {
                    let _ = show(
                        &mut screen,
                        &format!(
                            "CG-FLEET-003 the node holding this console cannot be reached ({why}); bye"
                        ),
                    )
                    .await;
                    return;
                }
            }
        }
        if ctx.ending.is_cancelled() {
            let _ = show(&mut screen, &format!("{SHUTTING_DOWN}; bye")).await;
            return;
        }
        if session.resumed.is_none() {
            let _ = show(
                &mut screen,
                "CG-FLEET-002 the console is moving to another node of the fleet; resuming there",
            )
            .await;
        }
        session.resumed = Some(String::new());
        // The directory changes once a round has seen the lease move.
        tokio::select! {
            () = link.fleet.next_round() => {}
            () = ctx.ending.cancelled() => {}
        }
    }
}

/// How long a session waits for its console to be held somewhere: long
/// enough for a dead holder's lease to lapse and be taken.
fn waiting_time(link: &FleetLink) -> Duration {
    link.fleet.lease() * 2 + Duration::from_secs(5)
}

/// What a session that resumed on `node` is told.
fn resumed_note(node: &str) -> String {
    format!(
        "CG-FLEET-002 console resumed on node {node} (output printed while it moved may be missing)"
    )
}

/// Shows a gateway message on a line of its own.
async fn show<W: AsyncWrite + Unpin>(screen: &mut W, message: &str) -> std::io::Result<()> {
    screen.write_all(notice(message).as_bytes()).await?;
    screen.flush().await
}
