//! One HTTP connection, from accept to close: TLS first if the listener
//! has it, then HTTP/1.1 (hyper, with upgrades for the web consoles'
//! WebSockets), under the deadlines of [`Activity`]:
//!
//! - a new connection has `header_read_timeout_secs` for its TLS handshake
//!   and its first request's headers, and every later request that long
//!   from its first byte (a header slowloris is cut there, `CG-HTTP-003`);
//! - between requests, an idle keep-alive connection is kept
//!   `keepalive_timeout_secs`;
//! - while a handler runs, the request timeout (a tower layer) bounds it,
//!   a body that dribbles included.
//!
//! It also closes when the listener needs its place for another
//! ([`super::admission`]) and, at shutdown, finishes the request in hand.
//! A connection upgraded to a WebSocket leaves this task (and its place):
//! the socket is then a session of the gateway, under its session limit.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::admission::{Activity, Expiry, Place};
use super::tls::{Greeting, Tls};
use crate::ops::metrics::Metrics;

/// How often a connection whose handler runs looks at its deadlines again.
const BUSY_RECHECK: Duration = Duration::from_secs(1);

/// Largest buffer for a request's headers (and body reads), in bytes: a
/// request line and headers longer than this are refused by hyper.
const MAX_BUF: usize = 64 * 1024;

/// The address a request's connection reached (the gateway's side), as a
/// request extension: the OCI host check accepts it for a wildcard listen.
#[derive(Debug, Clone, Copy)]
pub struct LocalAddr(pub SocketAddr);

/// What every connection of a listener shares.
#[derive(Clone)]
pub(super) struct Shared {
    pub(super) app: Router,
    pub(super) tls: Option<Arc<Tls>>,
    pub(super) header_timeout: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) metrics: Arc<Metrics>,
    pub(super) shutdown: CancellationToken,
}

/// Serves one accepted connection until it ends or its time runs out.
pub(super) async fn run(
    shared: Shared,
    socket: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    place: Place,
) {
    let _ = socket.set_nodelay(true);
    let activity = place.activity().clone();
    let Some(tls) = shared.tls.clone() else {
        serve(&shared, socket, peer, local, &activity).await;
        return;
    };
    // Until the handshake is done, only the header deadline applies.
    let handshake = async {
        match super::tls::greeting(&socket).await {
            Greeting::Tls => {}
            Greeting::PlainHttp => {
                shared.metrics.http_refused("plain_http");
                super::tls::refuse_plain_http(socket).await;
                return None;
            }
            Greeting::Junk => {
                shared.metrics.http_refused("tls_handshake");
                return None;
            }
        }
        match tls.acceptor().accept(socket).await {
            Ok(stream) => Some(stream),
            Err(e) => {
                shared.metrics.http_refused("tls_handshake");
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                None
            }
        }
    };
    let deadline = tokio::time::Instant::now() + shared.header_timeout;
    let stream = tokio::select! {
        done = tokio::time::timeout_at(deadline, handshake) => match done {
            Ok(Some(stream)) => stream,
            Ok(None) => return,
            Err(_) => {
                shared.metrics.http_closed("header_timeout");
                tracing::debug!(code = "CG-HTTP-003", %peer, "no TLS handshake in time; connection closed");
                return;
            }
        },
        () = activity.evicted().cancelled() => return,
        () = shared.shutdown.cancelled() => return,
    };
    serve(&shared, stream, peer, local, &activity).await;
    drop(place);
}

/// HTTP/1.1 on `io` under the connection's deadlines.
async fn serve<S>(
    shared: &Shared,
    io: S,
    peer: SocketAddr,
    local: SocketAddr,
    activity: &Arc<Activity>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app = shared.app.clone();
    let for_requests = activity.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let handler = for_requests.request_started();
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(LocalAddr(local));
        let app = app.clone();
        async move {
            let answer = app.oneshot(request).await;
            drop(handler);
            answer
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_BUF)
        .serve_connection(TokioIo::new(Watched::new(io, activity.clone())), service)
        .with_upgrades();
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        // While a handler runs there is no deadline of ours; look again
        // now and then, since one starts when the handler ends.
        let wake = activity
            .deadline(shared.header_timeout, shared.idle_timeout)
            .map_or_else(|| tokio::time::Instant::now() + BUSY_RECHECK, |(at, _)| at);
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(wake) => {
                // Activity may have moved the deadline since it was set.
                let now = tokio::time::Instant::now();
                let why = match activity.deadline(shared.header_timeout, shared.idle_timeout) {
                    Some((at, why)) if at <= now => why,
                    _ => continue,
                };
                match why {
                    Expiry::Header => {
                        shared.metrics.http_closed("header_timeout");
                        tracing::debug!(code = "CG-HTTP-003", %peer,
                            "request headers not received in time; connection closed");
                    }
                    Expiry::Idle => shared.metrics.http_closed("idle_timeout"),
                }
                return;
            }
            () = activity.evicted().cancelled() => {
                tracing::debug!(%peer, "HTTP connection closed to make room for another");
                return;
            }
            () = shared.shutdown.cancelled(), if !closing => {
                // Finish the request in hand, take no other.
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// A connection's stream, telling its [`Activity`] when bytes move.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    fn new(inner: S, activity: Arc<Activity>) -> Self {
        Watched { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_some();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote_some();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote_some();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
