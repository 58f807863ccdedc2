//! The inner hop: a nested SSH server per instance, run over the outer hop's
//! `direct-tcpip` channel to `<instance-id>:22`.
//!
//! It presents the instance's own host key (persisted in the store), so
//! `known_hosts` pins each instance, and requires the same client key as the
//! outer hop. The user name is not used. Its session channel is the console;
//! `direct-tcpip` to `<instance-id>:5900` or `localhost:5900` is the VNC
//! target; nothing else is reachable.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use russh::Channel;
use russh::server::{
    Auth, ChannelOpenHandle, Config, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::SshContext;
use super::auth::{Authorized, is_sha1_rsa};
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
    let (on_auth, authenticated) = tokio::sync::oneshot::channel();
    let handler = InnerHandler {
        ctx: ctx.clone(),
        outer,
        authenticated: false,
        on_auth: Some(on_auth),
        user_name: String::new(),
        tasks,
    };
    // Key exchange and authentication within the handshake timeout, as on
    // the outer hop: an inner client that stalls holds nothing for long.
    let deadline = tokio::time::Instant::now() + ctx.config.ssh.handshake_timeout();
    // However this returns, the inner session's channel is closed.
    let cut = tokio_util::sync::CancellationToken::new();
    let _cut_on_return = cut.clone().drop_guard();
    let linger = Arc::new(AtomicBool::new(false));
    let stream = super::cut::Cuttable::new(Lingering::new(channel.into_stream(), &linger), cut);
    let session =
        match tokio::time::timeout_at(deadline, russh::server::run_stream(config, stream, handler))
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
    let handle = session.handle();
    tokio::pin!(session);
    tokio::select! {
        result = &mut session => {
            if let Err(e) = result {
                tracing::debug!(%connection, error = %e, "inner SSH session ended");
            }
            return;
        }
        _ = authenticated => {}
        () = tokio::time::sleep_until(deadline) => {
            tracing::info!(code = "CG-AUTH-007", %connection, "inner hop authentication timed out");
            // A client stalled at a prompt writes before it reads: the
            // channel stays open a moment after the goodbye, so its
            // ProxyCommand is still there to carry the write, and the
            // client then reads why it was cut.
            linger.store(true, Ordering::Relaxed);
            let bye = handle.disconnect(
                russh::Disconnect::ByApplication,
                "CG-AUTH-007 authentication timed out".into(),
                String::new(),
            );
            let _ = tokio::time::timeout(super::GOODBYE_TIME, bye).await;
            let _ = tokio::time::timeout(super::GOODBYE_TIME, &mut session).await;
            return;
        }
    }
    if let Err(e) = session.await {
        tracing::debug!(%connection, error = %e, "inner SSH session ended");
    }
}

/// The inner hop's channel stream; with its flag set, shutting it down
/// sends no EOF and dropping it holds it open (what arrives read and
/// discarded) for [`super::GOODBYE_TIME`] before it closes.
struct Lingering<S: AsyncRead + Unpin + Send + 'static> {
    inner: Option<S>,
    linger: Arc<AtomicBool>,
}

impl<S: AsyncRead + Unpin + Send + 'static> Lingering<S> {
    fn new(inner: S, linger: &Arc<AtomicBool>) -> Self {
        Lingering {
            inner: Some(inner),
            linger: linger.clone(),
        }
    }

    fn inner(&mut self) -> Pin<&mut S> {
        Pin::new(self.inner.as_mut().expect("taken only on drop"))
    }
}

impl<S: AsyncRead + Unpin + Send + 'static> Drop for Lingering<S> {
    fn drop(&mut self) {
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        if !self.linger.load(Ordering::Relaxed) {
            return;
        }
        tokio::spawn(async move {
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(super::GOODBYE_TIME, async {
                while matches!(inner.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        });
    }
}

impl<S: AsyncRead + Unpin + Send + 'static> AsyncRead for Lingering<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.inner().poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.inner().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Lingering, the channel sends no EOF: OpenSSH's `ssh -W` would
        // take it as the end and leave before the client has written.
        if self.linger.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        self.inner().poll_shutdown(cx)
    }
}

struct InnerHandler {
    ctx: Arc<SshContext>,
    outer: Authorized,
    authenticated: bool,
    /// Told when the client authenticates.
    on_auth: Option<tokio::sync::oneshot::Sender<()>>,
    /// The user name the client authenticated as: session options.
    user_name: String,
    tasks: ChannelTasks,
}

impl InnerHandler {
    /// The outer hop's key, signing with SHA-2 if it is RSA.
    fn same_key(&self, key: &russh::keys::PublicKey, algorithm: &russh::keys::Algorithm) -> bool {
        !is_sha1_rsa(algorithm) && crate::keys::fingerprint(key) == self.outer.fingerprint
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
        Ok(if self.same_key(offer.public_key, offer.algorithm) {
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
        if self.same_key(key.public_key, key.algorithm) {
            self.ctx.metrics.ssh_auth("inner", None);
            self.authenticated = true;
            if let Some(tx) = self.on_auth.take() {
                let _ = tx.send(());
            }
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
            Box::pin(self.ctx.refusals.record(e, self.outer.peer.ip())).await;
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
