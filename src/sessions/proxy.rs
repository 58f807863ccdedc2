//! The one VNC copy: bytes between a user's stream (an SSH `direct-tcpip`
//! channel, or a websockify WebSocket) and the instance's VNC display, with
//! its VncOpen and VncClose audit rows, until either side closes, the
//! gateway shuts down or the front end stops it.
//!
//! The display is connected by the front end before it accepts the user's
//! channel or upgrade, so a display that is down shows up as "connect
//! failed" (SSH) or 502 (web), not as a tunnel that closes at once.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::attach::audit_event;
use crate::audit::AuditKind;
use crate::console::backend::BackendStream;
use crate::console::hub::Principal;
use crate::store::Store;

/// Copy buffer per direction.
const BUFFER: usize = 64 * 1024;

/// Who a VNC session is for, for the audit trail.
#[derive(Debug, Clone)]
pub struct Tunnel {
    /// Who it acts for.
    pub principal: Principal,
    /// The instance whose display it reaches.
    pub instance_id: String,
    /// The user's address.
    pub peer: SocketAddr,
    /// The way in: `outer hop`, `inner hop`, `websockify`.
    pub via: &'static str,
}

/// Copies between `user` and `display` until either closes or `ending` is
/// cancelled; audits the opening and the close (bytes each way, duration).
pub async fn relay<U>(
    store: &Store,
    ending: &CancellationToken,
    tunnel: Tunnel,
    user: U,
    display: BackendStream,
) where
    U: AsyncRead + AsyncWrite + Unpin,
{
    let shutdown = async {
        ending.cancelled().await;
        super::attach::SHUTTING_DOWN.to_owned()
    };
    relay_until(store, shutdown, tunnel, user, display).await;
}

/// [`relay`], ended early when `stop` resolves (the gateway shutting down,
/// a web console's token revoked), with the reason it gives for the audit
/// row, however stuck the copy is.
pub async fn relay_until<U>(
    store: &Store,
    stop: impl Future<Output = String>,
    tunnel: Tunnel,
    user: U,
    mut display: BackendStream,
) where
    U: AsyncRead + AsyncWrite + Unpin,
{
    let event = |kind, detail: String| {
        audit_event(
            kind,
            &tunnel.principal,
            &tunnel.instance_id,
            tunnel.peer,
            None,
            Some(detail),
        )
    };
    store
        .record_audit(event(AuditKind::VncOpen, tunnel.via.to_owned()))
        .await;
    let started = Instant::now();
    let mut user = Counted::new(user);
    let ended = tokio::select! {
        // The reason to stop wins over the error it may cause in the copy.
        biased;
        reason = stop => reason,
        copied = tokio::io::copy_bidirectional_with_sizes(&mut user, &mut display, BUFFER, BUFFER) => match copied {
            Ok(_) => "closed".to_owned(),
            Err(e) => {
                tracing::debug!(instance = %tunnel.instance_id, error = %e, "VNC tunnel ended");
                e.to_string()
            }
        },
    };
    let mut closed = event(AuditKind::VncClose, format!("{}: {ended}", tunnel.via));
    closed.bytes_in = Some(user.read);
    closed.bytes_out = Some(user.written);
    closed.duration_ms = Some(started.elapsed().as_millis() as u64);
    store.record_audit(closed).await;
}

/// A stream that counts what passes, so that a copy cut short still knows.
struct Counted<S> {
    inner: S,
    read: u64,
    written: u64,
}

impl<S> Counted<S> {
    fn new(inner: S) -> Self {
        Counted {
            inner,
            read: 0,
            written: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read += (buf.filled().len() - before) as u64;
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.written += n as u64;
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
