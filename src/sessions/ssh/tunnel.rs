//! `direct-tcpip` to an instance's VNC display: the SSH front end of the
//! [VNC copy](crate::sessions::proxy).
//!
//! The target is connected first; only then is the channel accepted (so a
//! display that is down shows up as "connect failed" in the client, not as a
//! tunnel that closes at once).

use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelOpenFailure};

use super::auth::Authorized;
use crate::config::VncTarget;
use crate::console::backend::connect_vnc;
use crate::sessions::caps::Place;
use crate::sessions::proxy::{Tunnel, relay};

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
    relay(
        &attach.store,
        &attach.ending,
        tunnel,
        channel.into_stream(),
        display,
    )
    .await;
}
