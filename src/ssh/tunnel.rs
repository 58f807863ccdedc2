//! `direct-tcpip` to an instance's VNC display.
//!
//! The target is connected first; only then is the channel accepted (so a
//! display that is down shows up as "connect failed" in the client, not as a
//! tunnel that closes at once). Bytes are then copied both ways until either
//! side closes.

use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelOpenFailure};

use crate::config::VncTarget;
use crate::console::backend::connect_vnc;

/// Copy buffer per direction.
const BUFFER: usize = 64 * 1024;

pub(super) async fn forward_vnc(
    channel: Channel<Msg>,
    reply: ChannelOpenHandle,
    target: VncTarget,
    connection: String,
) {
    let mut display = match connect_vnc(&target).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%connection, %target, error = %e, "VNC target unavailable");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        }
    };
    reply.accept().await;
    let mut stream = channel.into_stream();
    match tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut display, BUFFER, BUFFER).await
    {
        Ok((up, down)) => {
            tracing::info!(%connection, %target, bytes_to_vnc = up, bytes_from_vnc = down, "VNC tunnel closed")
        }
        Err(e) => tracing::debug!(%connection, %target, error = %e, "VNC tunnel ended"),
    }
}
