//! The HTTP listener: an accept loop of the gateway's own around hyper, so
//! that what a stranger can hold is bounded before a byte of a request is
//! read.
//!
//! Each accepted connection first passes the admission limits
//! (`max_connections`, `max_connections_per_source`; `api/admission.rs`),
//! which may close a waiting connection to make room. One that is refused
//! is closed at once; over plain HTTP it is first told so in one short
//! `503` (`CG-HTTP-001`/`CG-HTTP-002`), written without waiting. (Unlike
//! the SSH listener, no permit is taken before `accept`: a client past the
//! limit is answered at once rather than left in the backlog behind idle
//! connections.)
//!
//! Admitted ones run as tasks this loop owns (`api/connection.rs`). On
//! shutdown the listener closes, connections finish the request in hand
//! (for at most [`DRAIN`]) and the rest are dropped. A failing accept
//! (out of descriptors) backs off instead of spinning (`CG-HTTP-007`).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::admission::{Admission, Limit};
use super::connection::{self, Shared};
use super::tls::Tls;
use crate::config::ApiConfig;
use crate::ops::metrics::Metrics;

/// How long connections get to finish their request at shutdown.
pub const DRAIN: Duration = Duration::from_secs(5);
/// How often a failing accept is logged, at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// How an HTTP listener limits its connections.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// Connections open at once.
    pub max_connections: usize,
    /// From one source (0: no limit).
    pub max_connections_per_source: usize,
    /// Sources without a per-source limit.
    pub exempt_sources: Vec<crate::config::AddressRange>,
    /// For a request's headers (and a new connection's TLS handshake).
    pub header_read_timeout: Duration,
    /// For an idle keep-alive connection.
    pub keepalive_timeout: Duration,
    /// HTTPS, if set.
    pub tls: Option<Arc<Tls>>,
}

impl ListenerSettings {
    /// The settings of `[api]`, with its TLS (if loaded).
    pub fn of(api: &ApiConfig, tls: Option<Arc<Tls>>) -> ListenerSettings {
        ListenerSettings {
            max_connections: api.max_connections,
            max_connections_per_source: api.max_connections_per_source,
            exempt_sources: api.exempt_sources.clone(),
            header_read_timeout: Duration::from_secs(api.header_read_timeout_secs),
            keepalive_timeout: Duration::from_secs(api.keepalive_timeout_secs),
            tls,
        }
    }
}

/// The short answer to a connection refused over plain HTTP.
fn refusal_answer(limit: Limit) -> String {
    let (code, what) = match limit {
        Limit::MaxConnections => ("CG-HTTP-001", "the gateway is at its HTTP connection limit"),
        Limit::PerSource => (
            "CG-HTTP-002",
            "this address is at its HTTP connection limit",
        ),
    };
    let body = format!("{code} {what}; retry shortly\n");
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         {}: {code}\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        crate::codes::CODE_HEADER,
        body.len()
    )
}

/// Serves `app` (the API of [`super::app`], perhaps with more routes
/// merged) on `listener` under `settings` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    settings: ListenerSettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let bound = listener.local_addr()?;
    let admission = Arc::new(Admission::new(
        settings.max_connections,
        settings.max_connections_per_source,
        settings.exempt_sources.clone(),
        metrics.clone(),
    ));
    let shared = Shared {
        app,
        tls: settings.tls.clone(),
        header_timeout: settings.header_read_timeout,
        idle_timeout: settings.keepalive_timeout,
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
    };
    let mut tasks = JoinSet::new();
    let mut last_warning: Option<tokio::time::Instant> = None;
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    let now = tokio::time::Instant::now();
                    if last_warning.is_none_or(|at| now - at >= WARN_EVERY) {
                        last_warning = Some(now);
                        tracing::warn!(code = "CG-HTTP-007", addr = %bound, error = %e,
                            "the HTTP listener cannot accept connections");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            () = shutdown.cancelled() => break,
        };
        match admission.enter(peer.ip()) {
            Ok(admitted) => {
                if let Some(limit) = admitted.evicted {
                    metrics.http_closed(limit.evicted());
                }
                let local = socket.local_addr().unwrap_or(bound);
                tasks.spawn(connection::run(
                    shared.clone(),
                    socket,
                    peer,
                    local,
                    admitted.place,
                ));
            }
            Err(limit) => {
                metrics.http_refused(limit.refused());
                refuse(socket, limit, settings.tls.is_some());
            }
        }
    }
    drop(listener);
    let drained =
        tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    Ok(())
}

/// Closes a refused connection at once; over plain HTTP, says why first if
/// that can be written without waiting.
fn refuse(socket: TcpStream, limit: Limit, tls: bool) {
    if !tls {
        let _ = socket.try_write(refusal_answer(limit).as_bytes());
    }
    drop(socket);
}
