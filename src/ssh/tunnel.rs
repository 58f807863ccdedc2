//! `direct-tcpip` to an instance's VNC display.
//!
//! The target is connected first; only then is the channel accepted (so a
//! display that is down shows up as "connect failed" in the client, not as a
//! tunnel that closes at once). Bytes are then copied both ways until either
//! side closes.

use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelOpenFailure};

use crate::audit::AuditKind;
use crate::config::VncTarget;
use crate::console::backend::connect_vnc;

/// Copy buffer per direction.
const BUFFER: usize = 64 * 1024;

pub(super) async fn forward_vnc(
    ctx: std::sync::Arc<super::SshContext>,
    channel: Channel<Msg>,
    reply: ChannelOpenHandle,
    target: VncTarget,
    who: super::channels::Authorized,
) {
    let connection = who.connection_id.clone();
    let mut display = match connect_vnc(&target).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(code = "CG-VNC-001", %connection, instance = %who.instance.id, %target, error = %e,
                "VNC target unavailable");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        }
    };
    reply.accept().await;
    crate::audit::record(&ctx.store, who.audit(AuditKind::VncOpen)).await;
    let started = std::time::Instant::now();
    let mut stream = channel.into_stream();
    let copied =
        tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut display, BUFFER, BUFFER).await;
    let mut closed = who.audit(AuditKind::VncClose);
    closed.duration_ms = Some(started.elapsed().as_millis() as u64);
    match copied {
        Ok((up, down)) => {
            closed.bytes_in = Some(up);
            closed.bytes_out = Some(down);
        }
        Err(e) => {
            tracing::debug!(%connection, %target, error = %e, "VNC tunnel ended");
            closed.detail = Some(e.to_string());
        }
    }
    crate::audit::record(&ctx.store, closed).await;
}
