//! `direct-tcpip` to an instance's VNC display: the SSH front end of the
//! [VNC relay](crate::sessions::proxy).
//!
//! The target is connected first; only then is the channel accepted (so a
//! display that is down shows up as "connect failed" in the client, not as a
//! tunnel that closes at once).

use bytes::BytesMut;
use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelMsg, ChannelOpenFailure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::auth::Authorized;
use crate::config::VncTarget;
use crate::console::backend::{BackendStream, connect_vnc};
use crate::sessions::caps::Place;
use crate::sessions::proxy::{Counts, Tunnel, relay};

/// What the display side reads at a time.
const READ: usize = 64 * 1024;

pub(super) async fn forward_vnc(
    ctx: std::sync::Arc<super::SshContext>,
    channel: Channel<Msg>,
    reply: ChannelOpenHandle,
    target: VncTarget,
    who: Authorized,
    via: &'static str,
    // The tunnel's place under the session caps, held while it runs.
    _place: Place,
) {
    let display = match connect_vnc(&target).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(code = "CG-VNC-001", connection = %who.connection_id,
                instance = %who.instance.id, %target, error = %e, "VNC target unavailable");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        }
    };
    reply.accept().await;
    let tunnel = Tunnel {
        principal: who.principal(),
        instance_id: who.instance.id.clone(),
        peer: who.peer,
        via,
    };
    let attach = ctx.attach_context();
    let (mut from_user, to_user) = channel.split();
    let counts = Counts::default();
    let copy = copy_channel(&mut from_user, &to_user, display, &counts);
    relay(&attach.store, &attach.ending, tunnel, &counts, copy).await;
    // However the copy ended, the channel is closed (the client may still
    // hold it open for its other direction).
    let _ = to_user.close().await;
}

/// Copies between an SSH channel and the display, both ways until both have
/// closed. Channel data is written to the display as it arrives, and what
/// the display sends goes into the channel as read: russh hands both on by
/// reference count, so no byte is copied between buffers here.
async fn copy_channel(
    from_user: &mut russh::ChannelReadHalf,
    to_user: &russh::ChannelWriteHalf<Msg>,
    display: BackendStream,
    counts: &Counts,
) -> std::io::Result<()> {
    let (mut from_display, mut to_display) = tokio::io::split(display);
    let upload = async {
        while let Some(msg) = from_user.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    to_display.write_all(&data).await?;
                    counts.from_user(data.len());
                }
                ChannelMsg::Eof => break,
                // Window adjustments and requests a tunnel has no use for.
                _ => {}
            }
        }
        to_display.shutdown().await
    };
    let download = async {
        let mut buffer = BytesMut::new();
        loop {
            // Takes back the last read's room once russh has sent it.
            buffer.reserve(READ);
            let n = from_display.read_buf(&mut buffer).await?;
            if n == 0 {
                break;
            }
            to_user
                .data_bytes(buffer.split().freeze())
                .await
                .map_err(std::io::Error::other)?;
            counts.to_user(n);
        }
        to_user.eof().await.map_err(std::io::Error::other)
    };
    tokio::try_join!(upload, download).map(drop)
}
