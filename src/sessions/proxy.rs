//! The one VNC relay: bytes between a user (an SSH `direct-tcpip` channel,
//! or a websockify WebSocket) and the instance's VNC display, with its
//! VncOpen and VncClose audit rows, until either side closes, the gateway
//! shuts down or the front end stops it. The copy itself is the front
//! end's: [`copy_stream`] for a byte stream, and the SSH front end's own,
//! which hands channel data on as it comes, without a buffer between.
//!
//! The display is connected by the front end before it accepts the user's
//! channel or upgrade, so a display that is down shows up as "connect
//! failed" (SSH) or 502 (web), not as a tunnel that closes at once.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Bytes a VNC copy has moved each way, for its VncClose row; kept outside
/// the copy so that a copy cut short still knows.
#[derive(Debug, Default)]
pub struct Counts {
    from_user: AtomicU64,
    to_user: AtomicU64,
}

impl Counts {
    /// `n` bytes came from the user and went to the display.
    pub fn from_user(&self, n: usize) {
        self.from_user.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// `n` bytes came from the display and went to the user.
    pub fn to_user(&self, n: usize) {
        self.to_user.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Runs `copy`, the bytes between a user and an instance's display, until
/// it ends or `ending` is cancelled; audits the opening and the close (bytes
/// each way, from `counts`, and the duration).
pub async fn relay(
    store: &Store,
    ending: &CancellationToken,
    tunnel: Tunnel,
    counts: &Counts,
    copy: impl Future<Output = std::io::Result<()>>,
) {
    let shutdown = async {
        ending.cancelled().await;
        super::attach::SHUTTING_DOWN.to_owned()
    };
    relay_until(store, shutdown, tunnel, counts, copy).await;
}

/// [`relay`], ended early when `stop` resolves (the gateway shutting down,
/// a web console's token revoked), with the reason it gives for the audit
/// row, however stuck the copy is.
pub async fn relay_until(
    store: &Store,
    stop: impl Future<Output = String>,
    tunnel: Tunnel,
    counts: &Counts,
    copy: impl Future<Output = std::io::Result<()>>,
) {
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
    let ended = tokio::select! {
        // The reason to stop wins over the error it may cause in the copy.
        biased;
        reason = stop => reason,
        copied = copy => match copied {
            Ok(()) => "closed".to_owned(),
            Err(e) => {
                tracing::debug!(instance = %tunnel.instance_id, error = %e, "VNC tunnel ended");
                e.to_string()
            }
        },
    };
    let mut closed = event(AuditKind::VncClose, format!("{}: {ended}", tunnel.via));
    closed.bytes_in = Some(counts.from_user.load(Ordering::Relaxed));
    closed.bytes_out = Some(counts.to_user.load(Ordering::Relaxed));
    closed.duration_ms = Some(started.elapsed().as_millis() as u64);
    store.record_audit(closed).await;
}

/// The copy for a user's byte stream (a websockify WebSocket): both ways
/// until both sides have closed, through a buffer each way.
pub async fn copy_stream<U>(
    user: U,
    mut display: BackendStream,
    counts: &Counts,
) -> std::io::Result<()>
where
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut user = Counted {
        inner: user,
        counts,
    };
    tokio::io::copy_bidirectional_with_sizes(&mut user, &mut display, BUFFER, BUFFER)
        .await
        .map(drop)
}

/// A stream that counts what passes into [`Counts`].
struct Counted<'a, S> {
    inner: S,
    counts: &'a Counts,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.counts.from_user(buf.filled().len() - before);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.counts.to_user(n);
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
