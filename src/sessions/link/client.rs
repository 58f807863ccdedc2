//! The relaying end of the node link: dial the node that holds a console,
//! make sure it is that node (by the link key it registered), ask it to
//! attach the session, then carry bytes both ways until it ends.

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::wire::{self, Kind, SILENT_FOR};
use super::{DIAL_TIMEOUT, EXIT_MOVED, FleetLink, RelayRequest, SHUTTING_DOWN, show};
use crate::fleet::Peer;
use crate::sessions::attach::{Attach, AttachContext, Keyboard, Outcome};

/// How a relayed session's loop ended.
enum End {
    /// Here: the user left, or this node shuts down (`true`).
    Here(bool),
    /// At the holder, or the link broke.
    There,
}

/// Relays `session` to `peer`, which holds its console. `Err` when the
/// peer cannot be reached or does not hold the console (the directory was
/// stale); otherwise how the session ended there.
pub(super) async fn relay<K, W>(
    ctx: &AttachContext,
    link: &FleetLink,
    peer: &Peer,
    session: &Attach,
    keyboard: &mut K,
    screen: &mut W,
) -> Result<Outcome, String>
where
    K: Keyboard,
    W: AsyncWrite + Unpin + Send,
{
    let request = RelayRequest {
        instance_id: session.instance.id.clone(),
        principal: session.principal.clone(),
        peer: session.peer,
        options: session.options.clone(),
        via: session.via.to_string(),
        cols: session.terminal.cols,
        rows: session.terminal.rows,
        term: session.terminal.term.clone(),
        resumed: session.resumed.is_some(),
    };
    let request = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    let dial = async {
        let tcp = TcpStream::connect(&peer.advertise).await.map_err(|e| {
            format!(
                "cannot reach node {} at {}: {e}",
                peer.node_id, peer.advertise
            )
        })?;
        let (tx, rx) = wire::dial(
            tcp,
            link.fleet.node_id(),
            &link.key,
            &peer.node_id,
            &peer.key,
        )
        .await
        .map_err(|e| format!("node {} failed the link handshake: {e}", peer.node_id))?;
        tx.send(Kind::Request, &request)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((tx, rx))
    };
    let (tx, mut rx) = tokio::time::timeout(DIAL_TIMEOUT, dial)
        .await
        .map_err(|_| format!("node {} did not answer in time", peer.node_id))??;
    let mut received = 0u64;
    let mut status = None;
    let mut heard = Instant::now();
    // Until the link fails to take keystrokes.
    let mut typing = true;
    let end = loop {
        tokio::select! {
            frame = rx.next() => match frame {
                Ok(Some(frame)) => {
                    heard = Instant::now();
                    match frame.kind {
                        Kind::Data => {
                            received += frame.body.len() as u64;
                            if screen.write_all(&frame.body).await.is_err()
                                || screen.flush().await.is_err()
                            {
                                break End::Here(false);
                            }
                        }
                        Kind::Exit => status = frame.body[..].try_into().ok().map(u32::from_be_bytes),
                        Kind::Ping => {}
                        // Nothing else comes from a holder.
                        Kind::Hello | Kind::Request => break End::There,
                    }
                }
                Ok(None) | Err(_) => break End::There,
            },
            typed = keyboard.typed(), if typing => match typed {
                Some(typed) => typing = tx.send(Kind::Data, &typed).await.is_ok(),
                None => break End::Here(false),
            },
            sent = tx.keep_alive() => typing &= sent.is_ok(),
            // The holder went silent: its machine is gone.
            () = tokio::time::sleep_until(heard + SILENT_FOR) => break End::There,
            () = ctx.ending.cancelled() => break End::Here(true),
        }
    };
    tx.close().await;
    match end {
        End::Here(shutting_down) => {
            if shutting_down {
                let _ = show(screen, &format!("{SHUTTING_DOWN}; bye")).await;
            }
            Ok(Outcome::Ended)
        }
        End::There => match status {
            Some(EXIT_MOVED) if received == 0 => {
                Err(format!("node {} does not hold the console", peer.node_id))
            }
            // Moved, or the holder vanished without a word (killed).
            Some(EXIT_MOVED) | None => Ok(Outcome::Moved),
            Some(_) => Ok(Outcome::Ended),
        },
    }
}
