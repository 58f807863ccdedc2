//! The relaying end of the node link: dial the node that holds a console,
//! make sure it is that node (by the link key it registered), ask it to
//! attach the session, then carry bytes both ways until it ends.

use std::sync::Arc;

use russh::ChannelMsg;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{
    DIAL_TIMEOUT, EXIT_MOVED, FleetLink, RELAY_COMMAND, RelayRequest, SHUTTING_DOWN, show,
};
use crate::fleet::Peer;
use crate::sessions::attach::{Attach, AttachContext, Keyboard, Outcome};

/// Accepts only the key the peer registered.
struct Expect(PublicKey);

impl russh::client::Handler for Expect {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(matches!(key, PublicKeyOrCertificate::PublicKey { key, .. }
            if key.key_data() == self.0.key_data()))
    }
}

fn client_config() -> russh::client::Config {
    russh::client::Config {
        // A console is idle for hours; keepalives find a dead peer instead.
        inactivity_timeout: None,
        keepalive_interval: Some(std::time::Duration::from_secs(2)),
        keepalive_max: 3,
        nodelay: true,
        ..russh::client::Config::default()
    }
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
    let command = format!(
        "{RELAY_COMMAND}{}",
        serde_json::to_string(&request).map_err(|e| e.to_string())?
    );
    let dial = async {
        let tcp = TcpStream::connect(&peer.advertise).await.map_err(|e| {
            format!(
                "cannot reach node {} at {}: {e}",
                peer.node_id, peer.advertise
            )
        })?;
        let _ = tcp.set_nodelay(true);
        let mut handle =
            russh::client::connect_stream(Arc::new(client_config()), tcp, Expect(peer.key.clone()))
                .await
                .map_err(|e| format!("node {} failed the link handshake: {e}", peer.node_id))?;
        let auth = handle
            .authenticate_publickey(
                link.fleet.node_id(),
                PrivateKeyWithHashAlg::new(link.key.clone(), None),
            )
            .await
            .map_err(|e| e.to_string())?;
        if !auth.success() {
            return Err(format!(
                "node {} refused this node's link key",
                peer.node_id
            ));
        }
        let channel = handle
            .channel_open_session()
            .await
            .map_err(|e| e.to_string())?;
        channel
            .exec(true, command.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        Ok((handle, channel))
    };
    let (handle, channel) = tokio::time::timeout(DIAL_TIMEOUT, dial)
        .await
        .map_err(|_| format!("node {} did not answer in time", peer.node_id))??;
    let (mut reader, writer) = channel.split();
    let mut link_in = writer.make_writer();
    let mut received = 0u64;
    let mut status = None;
    // Some(how) when the session ended here (the user left, this node
    // shuts down); None when the holder ended it.
    let ended = {
        let from_holder = async {
            loop {
                match reader.wait().await {
                    Some(ChannelMsg::Data { data }) => {
                        received += data.len() as u64;
                        screen.write_all(&data).await?;
                        screen.flush().await?;
                    }
                    Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(exit_status),
                    Some(ChannelMsg::Close) | None => return Ok::<_, std::io::Error>(()),
                    Some(_) => {}
                }
            }
        };
        let to_holder = async {
            while let Some(typed) = keyboard.typed().await {
                if link_in.write_all(&typed).await.is_err() || link_in.flush().await.is_err() {
                    // The link is gone; the reading side says how.
                    return std::future::pending().await;
                }
            }
        };
        tokio::select! {
            done = from_holder => match done {
                Ok(()) => None,
                // The user's side is gone.
                Err(_) => Some(false),
            },
            () = to_holder => Some(false),
            () = ctx.ending.cancelled() => Some(true),
        }
    };
    if ended == Some(true) {
        let _ = show(screen, &format!("{SHUTTING_DOWN}; bye")).await;
    }
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "", "")
        .await;
    if ended.is_some() {
        return Ok(Outcome::Ended);
    }
    match status {
        Some(EXIT_MOVED) if received == 0 => {
            Err(format!("node {} does not hold the console", peer.node_id))
        }
        // Moved, or the holder vanished without a word (killed).
        Some(EXIT_MOVED) | None => Ok(Outcome::Moved),
        Some(_) => Ok(Outcome::Ended),
    }
}
