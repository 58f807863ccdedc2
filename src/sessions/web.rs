//! The web front end: the console URLs the Nova-compatible API hands out.
//!
//! - `GET /serial?token=…`: the instance's serial console as raw bytes in
//!   binary frames, as nova-serialproxy does (text frames are typed too). It
//!   runs through the same [attach core](super::attach) as an SSH session:
//!   same banner, `&` escapes, input policy, replay, timeouts, recording and
//!   audit. Opened as a page (no upgrade), the same URL gives the xterm.js
//!   terminal that uses it, without spending the token.
//! - `GET /websockify?token=…`: the instance's VNC display, websockify style
//!   (binary frames carrying the RFB stream; subprotocol `binary`), through
//!   the one [VNC copy](super::proxy).
//!
//! Before an upgrade the socket must find a place under the gateway's
//! session limit, then its token must open this console (exists,
//! unexpired, this protocol, unused if single use): a bad token never
//! reaches a console. Every socket is a session of [`Sessions`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, routing::get};
use bytes::{Buf, Bytes};
use futures_core::Stream;
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf};

use super::Sessions;
use super::attach::{Attach, AttachContext, Keyboard, Terminal};
use super::proxy::{Tunnel, relay};
use crate::codes::CODE_HEADER;
use crate::connections::ConsoleTokens;
use crate::connections::tokens::{ConsoleProtocol, Redeemed, TokenRefusal};
use crate::console::hub::{ConsoleHubs, Principal};
use crate::console::options::SessionOptions;
use crate::ops::metrics::Metrics;

/// Largest WebSocket message accepted from a browser.
const MAX_MESSAGE: usize = 64 * 1024;

/// The serial console page (xterm.js), served at the serial URL over http.
const SERIAL_PAGE: &str = include_str!("serial.html");

/// What the web front end shares; cheap to clone.
#[derive(Debug, Clone)]
pub struct WebState {
    shared: Arc<WebShared>,
}

#[derive(Debug)]
struct WebShared {
    tokens: ConsoleTokens,
    hubs: ConsoleHubs,
    metrics: Arc<Metrics>,
    sessions: Sessions,
    attach: AttachContext,
}

impl WebState {
    /// The web consoles of `hubs`, admitted by `tokens`, as sessions of `sessions`.
    pub fn new(
        tokens: ConsoleTokens,
        hubs: ConsoleHubs,
        metrics: Arc<Metrics>,
        sessions: Sessions,
        store: crate::store::Store,
    ) -> WebState {
        let attach = sessions.attach_context(store, metrics.clone());
        WebState {
            shared: Arc::new(WebShared {
                tokens,
                hubs,
                metrics,
                sessions,
                attach,
            }),
        }
    }
}

/// The web consoles' routes, to merge into the HTTP API.
pub fn routes(state: WebState) -> Router {
    Router::new()
        .route("/serial", get(serial))
        .route("/websockify", get(websockify))
        .with_state(state)
}

fn refuse(status: StatusCode, code: &'static str, message: String) -> Response {
    (status, [(CODE_HEADER, code)], message).into_response()
}

fn refused(state: &WebState, why: &TokenRefusal) -> Response {
    state.shared.metrics.token_refused();
    match why {
        TokenRefusal::Store(e) => {
            tracing::error!(code = "CG-STORE-002", error = %e, "cannot look up a console token");
            refuse(StatusCode::SERVICE_UNAVAILABLE, why.code(), why.to_string())
        }
        _ => refuse(StatusCode::FORBIDDEN, why.code(), why.to_string()),
    }
}

/// No place for another session: every place is taken, or the gateway is
/// shutting down.
fn no_place(sessions: &Sessions) -> Response {
    if sessions.ending().is_cancelled() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "CG-OPS-001",
            super::attach::SHUTTING_DOWN.to_owned(),
        );
    }
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "CG-WEB-006",
        "CG-WEB-006 the gateway is at its session limit ([ssh] max_connections); retry shortly"
            .to_owned(),
    )
}

fn peer(info: Option<Extension<ConnectInfo<SocketAddr>>>) -> SocketAddr {
    info.map_or_else(
        || SocketAddr::from(([0, 0, 0, 0], 0)),
        |Extension(ConnectInfo(a))| a,
    )
}

/// Admits a socket and redeems its token for `protocol`.
async fn admit(
    state: &WebState,
    params: &HashMap<String, String>,
    protocol: ConsoleProtocol,
) -> Result<(super::Admission, Redeemed), Response> {
    // A place first: a single-use token is not spent on a socket that
    // cannot be served.
    let sessions = &state.shared.sessions;
    let admission = sessions.try_admit().ok_or_else(|| no_place(sessions))?;
    let redeemed = state
        .shared
        .tokens
        .redeem(params.get("token").map(String::as_str), protocol)
        .await
        .map_err(|why| refused(state, &why))?;
    Ok((admission, redeemed))
}

/// `GET /serial?token=…`.
async fn serial(
    State(state): State<WebState>,
    Query(params): Query<HashMap<String, String>>,
    info: Option<Extension<ConnectInfo<SocketAddr>>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return serial_page(&state, &params).await;
    };
    let (admission, redeemed) = match admit(&state, &params, ConsoleProtocol::Serial).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(hub) = state.shared.hubs.get(&redeemed.instance.id) else {
        return refuse(
            StatusCode::FORBIDDEN,
            "CG-WEB-004",
            "CG-WEB-004 this instance has no console hub".to_owned(),
        );
    };
    let session = Attach {
        hub,
        instance: Arc::new(redeemed.instance),
        principal: Principal::ConsoleToken {
            id: redeemed.token_id,
        },
        peer: peer(info),
        options: SessionOptions::default(),
        via: "web serial console".into(),
        via_node: None,
        resumed: None,
        terminal: Terminal::default(),
    };
    let sessions = state.shared.sessions.clone();
    upgrade
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| {
            sessions.track(async move {
                let (keys, mut screen) = tokio::io::split(Frames::new(socket, true));
                crate::sessions::link::attach_anywhere(
                    &state.shared.attach,
                    session,
                    SocketKeyboard(keys),
                    &mut screen,
                )
                .await;
                // A close frame: the browser learns the session is over.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), screen.shutdown())
                    .await;
                drop(admission);
            })
        })
}

/// The page at the serial URL, if its token is live (it is not spent).
async fn serial_page(state: &WebState, params: &HashMap<String, String>) -> Response {
    let token = params.get("token").map_or("", String::as_str);
    let live = matches!(
        state.shared.tokens.peek(token).await,
        Ok(Some(ref t)) if t.protocol == ConsoleProtocol::Serial
    );
    if !live {
        return refused(state, &TokenRefusal::Invalid);
    }
    axum::response::Html(SERIAL_PAGE).into_response()
}

/// `GET /websockify?token=…`.
async fn websockify(
    State(state): State<WebState>,
    Query(params): Query<HashMap<String, String>>,
    info: Option<Extension<ConnectInfo<SocketAddr>>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let (admission, redeemed) = match admit(&state, &params, ConsoleProtocol::Vnc).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let instance = &redeemed.instance;
    let Some(target) = instance.vnc.clone() else {
        return refuse(
            StatusCode::FORBIDDEN,
            "CG-VNC-002",
            "CG-VNC-002 this instance has no VNC display".to_owned(),
        );
    };
    let display = match crate::console::backend::connect_vnc(&target).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(code = "CG-VNC-001", instance = %instance.id, %target, error = %e,
                "VNC target unavailable");
            return refuse(
                StatusCode::BAD_GATEWAY,
                "CG-VNC-001",
                "CG-VNC-001 the VNC display is not reachable".to_owned(),
            );
        }
    };
    let tunnel = Tunnel {
        principal: Principal::ConsoleToken {
            id: redeemed.token_id,
        },
        instance_id: redeemed.instance.id,
        peer: peer(info),
        via: "websockify",
    };
    let sessions = state.shared.sessions.clone();
    upgrade
        .protocols(["binary"])
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| {
            sessions.track(async move {
                let attach = &state.shared.attach;
                let frames = Frames::new(socket, false);
                relay(&attach.store, &attach.ending, tunnel, frames, display).await;
                drop(admission);
            })
        })
}

/// A socket's bytes, as keystrokes.
struct SocketKeyboard(ReadHalf<Frames>);

impl Keyboard for SocketKeyboard {
    async fn typed(&mut self) -> Option<Bytes> {
        // A browser sends a frame per keystroke; a paste comes in pieces.
        let mut buf = bytes::BytesMut::with_capacity(4096);
        match self.0.read_buf(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(buf.freeze()),
        }
    }
}

/// A WebSocket as a byte stream: what is read is the payload of binary
/// frames (and of text frames, if asked), what is written goes out as one
/// binary frame per write. A close frame reads as the end of the stream.
struct Frames {
    socket: WebSocket,
    pending: Bytes,
    text_is_data: bool,
    closed: bool,
}

impl Frames {
    fn new(socket: WebSocket, text_is_data: bool) -> Frames {
        Frames {
            socket,
            pending: Bytes::new(),
            text_is_data,
            closed: false,
        }
    }
}

impl AsyncRead for Frames {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.closed {
                return Poll::Ready(Ok(()));
            }
            let text_is_data = self.text_is_data;
            match ready!(Pin::new(&mut self.socket).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Text(text))) if text_is_data => {
                    self.pending = Bytes::copy_from_slice(text.as_str().as_bytes());
                }
                Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => self.closed = true,
                Some(Err(e)) => return Poll::Ready(Err(std::io::Error::other(e))),
            }
        }
    }
}

impl AsyncWrite for Frames {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut socket = Pin::new(&mut self.socket);
        ready!(socket.as_mut().poll_ready(cx)).map_err(std::io::Error::other)?;
        socket
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(std::io::Error::other)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket)
            .poll_flush(cx)
            .map_err(std::io::Error::other)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket)
            .poll_close(cx)
            .map_err(std::io::Error::other)
    }
}
