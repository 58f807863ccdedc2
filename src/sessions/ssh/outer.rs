//! The outer hop: the gateway's own SSH server.
//!
//! The user name is a console connection id; the only accepted method is
//! `publickey`, with the key registered on that (ACTIVE) record. An
//! authorised connection may open exactly three kinds of channel:
//! `direct-tcpip` to `<instance-id>:22` (or `:5905`, where OCI's PuTTY
//! strings point), which runs the nested [`super::inner`] server over the
//! channel; `direct-tcpip` to `<instance-id>:5900`, the VNC target; and a
//! `session` whose shell is the console itself. Everything else is refused as
//! administratively prohibited.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use russh::server::{
    Auth, ChannelOpenHandle, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelOpenFailure};
use tokio::sync::oneshot;

use super::SshContext;
use super::auth::{AuthRefusal, Authorized, authorize};
use super::channels::{ChannelTasks, VNC_PORT, console_session_requests, publickey_only, truncate};
use crate::audit::{AuditEvent, AuditKind};
use crate::sessions::Admission;

/// Inner-hop ports on the instance (22 for OpenSSH, 5905 for OCI's PuTTY strings).
const INNER_PORTS: [u32; 2] = [22, 5905];

pub(super) struct OuterHandler {
    ctx: Arc<SshContext>,
    peer: SocketAddr,
    authorized: Option<Authorized>,
    /// Told the connection id once a key is accepted, with the session's
    /// place under `max_connections` (`None`: no place left).
    on_auth: Option<oneshot::Sender<(String, Option<Admission>)>>,
    tasks: ChannelTasks,
    /// Keys refused on this connection, for the per-source penalties.
    refusals: Arc<AtomicU32>,
    /// Channels an authenticated client without a place under
    /// `max_connections` opened before its supervisor's disconnect
    /// (CG-SSH-005) went out: unanswered, so the client shows that reason
    /// rather than a refused channel; dropped (refused) with the handler.
    unanswered: Vec<ChannelOpenHandle>,
}

impl OuterHandler {
    pub fn new(
        ctx: Arc<SshContext>,
        peer: SocketAddr,
        on_auth: oneshot::Sender<(String, Option<Admission>)>,
        tasks: ChannelTasks,
        refusals: Arc<AtomicU32>,
    ) -> Self {
        OuterHandler {
            ctx,
            peer,
            authorized: None,
            on_auth: Some(on_auth),
            tasks,
            refusals,
            unanswered: Vec::new(),
        }
    }

    /// Refuses a channel opened before authentication; one opened by a
    /// client refused a place is left unanswered (see `unanswered`).
    async fn not_authorized(&mut self, reply: ChannelOpenHandle) {
        if self.on_auth.is_none() && self.unanswered.len() < super::channels::MAX_CHANNELS {
            self.unanswered.push(reply);
            return;
        }
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
    }
}

impl OuterHandler {
    /// Logs a refused key; audits it if it named a real connection.
    async fn refused(&self, user: &str, key: &russh::keys::PublicKey, reason: &AuthRefusal) {
        self.refusals.fetch_add(1, Ordering::Relaxed);
        self.ctx.metrics.ssh_auth("outer", Some(reason.reason()));
        tracing::warn!(code = reason.code(), peer = %self.peer, user = %truncate(user), %reason,
            "authentication refused");
        if !crate::ids::looks_like_connection_id(user) {
            return;
        }
        if let Ok(Some(record)) = self.ctx.store.get_connection(user).await {
            let mut e = AuditEvent::new(AuditKind::Refused);
            e.connection_id = Some(record.id);
            e.instance_id = Some(record.instance_id);
            e.fingerprint = Some(crate::keys::fingerprint(key));
            e.peer = Some(self.peer.to_string());
            e.detail = Some(format!(
                "{} outer hop authentication: {reason}",
                reason.code()
            ));
            self.ctx.refusals.record(e, self.peer.ip()).await;
        }
    }
}

// russh embeds these handler futures in its per-connection task, whose
// size is that of its largest state and is held for the connection's whole
// life. The store and audit calls (sqlx futures of several KiB) are boxed so
// that every idle session does not carry their space: see `BENCHMARKS.md`.
impl Handler for OuterHandler {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        match Box::pin(authorize(
            &self.ctx,
            user,
            offer.public_key,
            offer.algorithm,
            self.peer,
        ))
        .await
        {
            Ok(_) => Ok(Auth::Accept),
            Err(reason) => {
                Box::pin(self.refused(user, offer.public_key, &reason)).await;
                Ok(publickey_only())
            }
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        match Box::pin(authorize(
            &self.ctx,
            user,
            key.public_key,
            key.algorithm,
            self.peer,
        ))
        .await
        {
            Ok(authorized) => {
                self.ctx.metrics.ssh_auth("outer", None);
                tracing::info!(
                    connection = %authorized.connection_id,
                    instance = %authorized.instance.id,
                    fingerprint = %authorized.fingerprint,
                    peer = %self.peer,
                    "authenticated"
                );
                // Without a place, the connection opens nothing and is
                // told why (CG-SSH-005) by its supervisor.
                let admission = self.ctx.sessions.try_admit();
                let admitted = admission.is_some();
                if let Some(tx) = self.on_auth.take() {
                    let _ = tx.send((authorized.connection_id.clone(), admission));
                }
                if admitted {
                    self.authorized = Some(authorized);
                }
                Ok(Auth::Accept)
            }
            Err(reason) => {
                Box::pin(self.refused(user, key.public_key, &reason)).await;
                Ok(publickey_only())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        match &self.authorized {
            Some(a) => {
                a.open_console(&self.ctx, channel, reply, &self.tasks, "outer hop", "")
                    .await
            }
            None => self.not_authorized(reply).await,
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
        let Some(a) = &self.authorized else {
            self.not_authorized(reply).await;
            return Ok(());
        };
        let to_instance = host == a.instance.id;
        if to_instance && INNER_PORTS.contains(&port) {
            let Some(config) = self.ctx.inner_config(&a.instance.id) else {
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return Ok(());
            };
            let Some(place) = self.tasks.reserve() else {
                reply.reject(ChannelOpenFailure::ResourceShortage).await;
                return Ok(());
            };
            reply.accept().await;
            let task = super::inner::serve(
                self.ctx.clone(),
                config,
                channel,
                a.clone(),
                self.tasks.clone(),
            );
            self.tasks.spawn(place, task);
        } else if to_instance && port == VNC_PORT {
            a.open_vnc(&self.ctx, channel, reply, &self.tasks, "outer hop")
                .await;
        } else {
            let what = format!("{}:{port}", truncate(host));
            Box::pin(a.refuse(&self.ctx, reply, &what, "outer")).await;
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
        match &self.authorized {
            Some(a) => Box::pin(a.refuse(&self.ctx, reply, &truncate(socket_path), "outer")).await,
            None => self.not_authorized(reply).await,
        }
        Ok(())
    }

    console_session_requests!();

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }
}
