//! The inner hop: a nested SSH server per instance, run over the outer hop's
//! `direct-tcpip` channel to `<instance-id>:22`.
//!
//! It presents the instance's own host key (persisted in the store), so
//! `known_hosts` pins each instance, and requires the same client key as the
//! outer hop. The user name is not used. Its session channel is the console;
//! `direct-tcpip` to `<instance-id>:5900` or `localhost:5900` is the VNC
//! target; nothing else is reachable.

use std::sync::Arc;

use russh::Channel;
use russh::server::{
    Auth, ChannelOpenHandle, Config, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};

use super::SshContext;
use super::auth::Authorized;
use super::channels::{ChannelTasks, VNC_PORT, console_session_requests, publickey_only, truncate};
use crate::audit::AuditKind;

/// Runs the inner server over `channel` until the client leaves.
pub(super) async fn serve(
    ctx: Arc<SshContext>,
    config: Arc<Config>,
    channel: Channel<Msg>,
    outer: Authorized,
    tasks: ChannelTasks,
) {
    let connection = outer.connection_id.clone();
    let handler = InnerHandler {
        ctx: ctx.clone(),
        outer,
        authenticated: false,
        user_name: String::new(),
        tasks,
    };
    let handshake = ctx.config.ssh.handshake_timeout();
    let session = match tokio::time::timeout(
        handshake,
        russh::server::run_stream(config, channel.into_stream(), handler),
    )
    .await
    {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => {
            tracing::debug!(%connection, error = %e, "inner SSH handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%connection, "inner SSH handshake timed out");
            return;
        }
    };
    if let Err(e) = session.await {
        tracing::debug!(%connection, error = %e, "inner SSH session ended");
    }
}

struct InnerHandler {
    ctx: Arc<SshContext>,
    outer: Authorized,
    authenticated: bool,
    /// The user name the client authenticated as: session options.
    user_name: String,
    tasks: ChannelTasks,
}

impl InnerHandler {
    fn same_key(&self, key: &russh::keys::PublicKey) -> bool {
        crate::keys::fingerprint(key) == self.outer.fingerprint
    }
}

// Store and audit calls are boxed, as in `OuterHandler`: russh keeps the
// largest handler future's space for the connection's whole life.
impl Handler for InnerHandler {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.same_key(offer.public_key) {
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
        if self.same_key(key.public_key) {
            self.ctx.metrics.ssh_auth("inner", None);
            self.authenticated = true;
            self.user_name = user.chars().take(256).collect();
            Ok(Auth::Accept)
        } else {
            let fingerprint = crate::keys::fingerprint(key.public_key);
            self.ctx.metrics.ssh_auth("inner", Some("wrong_key"));
            tracing::warn!(
                code = "CG-AUTH-006",
                connection = %self.outer.connection_id,
                peer = %self.outer.peer,
                %fingerprint,
                "inner hop refused a key that is not the connection's key"
            );
            let mut e = self.outer.audit(AuditKind::Refused);
            e.fingerprint = Some(fingerprint);
            e.detail =
                Some("CG-AUTH-006 inner hop authentication: not the connection's key".into());
            Box::pin(self.ctx.store.record_audit(e)).await;
            Ok(publickey_only())
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.authenticated {
            self.outer
                .open_console(
                    &self.ctx,
                    channel,
                    reply,
                    &self.tasks,
                    "inner hop",
                    &self.user_name,
                )
                .await;
        }
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if !self.authenticated {
            return Ok(());
        }
        let to_instance = host == self.outer.instance.id || host == "localhost";
        if to_instance && port == VNC_PORT {
            self.outer
                .open_vnc(&self.ctx, channel, reply, &self.tasks, "inner hop")
                .await;
        } else {
            let what = format!("{}:{port}", truncate(host));
            Box::pin(self.outer.refuse(&self.ctx, reply, &what, "inner")).await;
        }
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let what = truncate(socket_path);
        Box::pin(self.outer.refuse(&self.ctx, reply, &what, "inner")).await;
        Ok(())
    }

    console_session_requests!();
}
