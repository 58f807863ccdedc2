//! WebSocket proxies for the console URLs of the Nova-compatible API.
//!
//! - `GET /serial?token=…`: the instance's serial console as raw bytes in
//!   binary frames, as nova-serialproxy does, attached to the same console
//!   hub as SSH sessions (same input policy, same replay, same audit);
//! - `GET /websockify?token=…`: the instance's VNC display, websockify
//!   style (binary frames carrying the RFB stream; subprotocol `binary`).
//!
//! The token is checked (exists, unexpired, this protocol, unused if single
//! use) before the upgrade: a bad token never reaches a console.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Extension;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ApiState;
use crate::audit::{AuditEvent, AuditKind};
use crate::config::InstanceConfig;
use crate::config::SessionTimeouts;
use crate::console::hub::{ConsoleEvent, Principal, SessionInfo};
use crate::console::timeouts::{Cut, SessionClock, announce};

/// Largest WebSocket message accepted from a browser.
const MAX_MESSAGE: usize = 64 * 1024;

fn refuse(message: &str) -> Response {
    let code = message.split(' ').next().unwrap_or_default().to_owned();
    (
        StatusCode::FORBIDDEN,
        [(super::error::CODE_HEADER, code)],
        message.to_owned(),
    )
        .into_response()
}

/// The store could not be read: not the token's fault, so not a 403.
fn store_unavailable(e: &crate::store::StoreError) -> Response {
    tracing::error!(code = "CG-STORE-002", error = %e, "cannot look up a console token");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(super::error::CODE_HEADER, "CG-STORE-002")],
        "CG-STORE-002 the gateway cannot read its store right now; retry",
    )
        .into_response()
}

/// What a console token admits to.
struct Admitted {
    /// The token's instance.
    instance: InstanceConfig,
    /// The token's id: a prefix of its SHA-256 (never the token itself).
    token_id: String,
}

/// Checks the token for `protocol`; returns what it admits to.
async fn instance_for(
    state: &ApiState,
    params: &HashMap<String, String>,
    protocol: &str,
) -> Result<Admitted, Response> {
    let found = token_instance(state, params, protocol).await;
    if found.is_err() {
        state.metrics().token_refused();
    }
    found
}

async fn token_instance(
    state: &ApiState,
    params: &HashMap<String, String>,
    protocol: &str,
) -> Result<Admitted, Response> {
    let Some(token) = params
        .get("token")
        .filter(|t| !t.is_empty() && t.len() <= 256)
    else {
        return Err(refuse("CG-WEB-001 a console token is required (?token=…)"));
    };
    let hash = super::nova::token_hash(token);
    let store = state.connections().store();
    // Look before using: a token for the other protocol must not be spent.
    match store.console_token(&hash).await {
        Ok(Some(t)) if t.protocol == protocol => {}
        Ok(Some(_)) => {
            return Err(refuse(
                "CG-WEB-003 this console token is for another kind of console",
            ));
        }
        Ok(None) => {
            return Err(refuse(
                "CG-WEB-002 the console token is invalid, expired or already used",
            ));
        }
        Err(e) => return Err(store_unavailable(&e)),
    }
    let token = match store.use_console_token(&hash).await {
        Ok(Some(token)) => token,
        Ok(None) => {
            return Err(refuse(
                "CG-WEB-002 the console token is invalid, expired or already used",
            ));
        }
        Err(e) => return Err(store_unavailable(&e)),
    };
    let instance = state
        .connections()
        .config()
        .instance(&token.instance_id)
        .cloned()
        .ok_or_else(|| refuse("CG-WEB-004 the console token's instance is no longer configured"))?;
    Ok(Admitted {
        instance,
        token_id: hash[..12].to_owned(),
    })
}

fn peer(info: Option<Extension<ConnectInfo<SocketAddr>>>) -> SocketAddr {
    info.map_or_else(
        || SocketAddr::from(([0, 0, 0, 0], 0)),
        |Extension(ConnectInfo(a))| a,
    )
}

/// An audit event of a web console: no connection or key, the token's id.
fn audit(kind: AuditKind, admitted: &Admitted, peer: SocketAddr, detail: &str) -> AuditEvent {
    let mut e = AuditEvent::new(kind);
    e.instance_id = Some(admitted.instance.id.clone());
    e.peer = Some(peer.to_string());
    e.detail = Some(format!("{detail} (console token {})", admitted.token_id));
    e
}

/// The serial console page (xterm.js), served at the serial URL over http.
const SERIAL_PAGE: &str = include_str!("serial.html");

/// `GET /serial?token=…`: the console over a WebSocket; the same URL
/// opened as a page (no upgrade) gives the xterm.js terminal that uses it,
/// without spending the token.
pub async fn serial(
    State(state): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
    info: Option<Extension<ConnectInfo<SocketAddr>>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        let live = match params.get("token") {
            Some(t) => matches!(
                state.connections().store().console_token(&super::nova::token_hash(t)).await,
                Ok(Some(ref token)) if token.protocol == "serial"
            ),
            None => false,
        };
        if !live {
            return refuse("CG-WEB-002 the console token is invalid, expired or already used");
        }
        return axum::response::Html(SERIAL_PAGE).into_response();
    };
    let admitted = match instance_for(&state, &params, "serial").await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(hub) = state.hubs().get(&admitted.instance.id) else {
        return refuse("CG-WEB-004 this instance has no console hub");
    };
    let peer = peer(info);
    upgrade
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            let store = state.connections().store().clone();
            crate::audit::record(
                &store,
                audit(AuditKind::Attach, &admitted, peer, "web serial console"),
            )
            .await;
            let principal = Principal::ConsoleToken {
                id: admitted.token_id.clone(),
            };
            let timeouts = admitted.instance.session_timeouts();
            let (bytes_in, bytes_out, cut) =
                serial_session(socket, hub, principal, peer, timeouts).await;
            let mut detail = "web serial console".to_owned();
            if let Some(cut) = cut {
                let instance = &admitted.instance.id;
                state.metrics().session_cut(instance, cut.kind);
                tracing::info!(code = cut.code, %instance, %peer,
                    "web session cut: {}", cut.message);
                let row = audit(AuditKind::Timeout, &admitted, peer, &cut.message);
                crate::audit::record(&store, row).await;
                detail = format!("{detail}: {}", cut.message);
            }
            let mut e = audit(AuditKind::Detach, &admitted, peer, &detail);
            e.bytes_in = Some(bytes_in);
            e.bytes_out = Some(bytes_out);
            crate::audit::record(&store, e).await;
        })
}

/// Bytes in, bytes out, and the timeout that ended the session, if one did.
async fn serial_session(
    mut socket: WebSocket,
    hub: crate::console::hub::ConsoleHub,
    principal: Principal,
    peer: SocketAddr,
    timeouts: SessionTimeouts,
) -> (u64, u64, Option<Cut>) {
    let info = SessionInfo {
        principal,
        peer,
        read_only: false,
        force: false,
        disconnect_when_lagging: false,
    };
    let Ok(mut attachment) = hub.attach(info, None).await else {
        return (0, 0, None);
    };
    let (mut bytes_in, mut bytes_out) = (0u64, 0u64);
    let mut first = attachment.replay.clone();
    if let Some(reason) = &attachment.unavailable {
        first.extend_from_slice(format!("\r\n[consolegate: {reason}]\r\n").as_bytes());
    }
    if !first.is_empty() {
        bytes_out += first.len() as u64;
        if socket.send(Message::Binary(first.into())).await.is_err() {
            return (0, 0, None);
        }
    }
    let started = std::time::Instant::now();
    let mut clock = SessionClock::new(timeouts, started);
    let mut last_activity = started;
    let mut cut = None;
    loop {
        let next = clock.next(last_activity).map(|(at, _)| at);
        tokio::select! {
            () = sleep_until_or_never(next) => {
                let now = std::time::Instant::now();
                let Some(due) = clock.due(now, last_activity) else { continue };
                let shown = match announce(due, timeouts, SessionClock::idle_for(now, last_activity)) {
                    Ok(warning) => format!("\r\n[consolegate: {warning}]\r\n"),
                    Err(c) => {
                        let bye = format!("\r\n[consolegate: {}; bye]\r\n", c.message);
                        cut = Some(c);
                        bye
                    }
                };
                bytes_out += shown.len() as u64;
                if socket.send(Message::Binary(shown.into())).await.is_err() || cut.is_some() {
                    break;
                }
            }
            event = attachment.recv() => {
                let data: Bytes = match event {
                    Some(ConsoleEvent::Output(b)) => {
                        // As over SSH: output keeps alive only a session that may type.
                        if attachment.can_write() {
                            last_activity = std::time::Instant::now();
                        }
                        b
                    }
                    Some(ConsoleEvent::Notice(n)) => format!("\r\n[consolegate: {n}]\r\n").into(),
                    Some(ConsoleEvent::Missed(n)) => format!(
                        "\r\n[consolegate: CG-LAG-001 your connection fell behind this console: \
                         {n} bytes of output were skipped]\r\n"
                    )
                    .into(),
                    Some(ConsoleEvent::Closed(reason)) => {
                        let bye = format!("\r\n[consolegate: {reason}; bye]\r\n");
                        bytes_out += bye.len() as u64;
                        let _ = socket.send(Message::Binary(bye.into())).await;
                        break;
                    }
                    None => break,
                };
                bytes_out += data.len() as u64;
                if socket.send(Message::Binary(data)).await.is_err() {
                    break;
                }
            }
            message = socket.recv() => match message {
                Some(Ok(Message::Binary(data))) => {
                    bytes_in += data.len() as u64;
                    if !data.is_empty() {
                        last_activity = std::time::Instant::now();
                    }
                    if hub.input(attachment.id, data).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    let data = Bytes::copy_from_slice(text.as_str().as_bytes());
                    bytes_in += data.len() as u64;
                    if !data.is_empty() {
                        last_activity = std::time::Instant::now();
                    }
                    if hub.input(attachment.id, data).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            },
        }
    }
    (bytes_in, bytes_out, cut)
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_or_never(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// `GET /websockify?token=…`.
pub async fn websockify(
    State(state): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
    info: Option<Extension<ConnectInfo<SocketAddr>>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let admitted = match instance_for(&state, &params, "vnc").await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let instance = &admitted.instance;
    let Some(target) = instance.vnc.clone() else {
        return refuse("CG-VNC-002 this instance has no VNC display");
    };
    let display = match crate::console::backend::connect_vnc(&target).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(code = "CG-VNC-001", instance = %instance.id, %target, error = %e,
                "VNC target unavailable");
            return (
                StatusCode::BAD_GATEWAY,
                "CG-VNC-001 the VNC display is not reachable",
            )
                .into_response();
        }
    };
    let peer = peer(info);
    upgrade
        .protocols(["binary"])
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            let store = state.connections().store().clone();
            crate::audit::record(
                &store,
                audit(AuditKind::VncOpen, &admitted, peer, "websockify"),
            )
            .await;
            let (up, down) = vnc_session(socket, display).await;
            let mut e = audit(AuditKind::VncClose, &admitted, peer, "websockify");
            e.bytes_in = Some(up);
            e.bytes_out = Some(down);
            crate::audit::record(&store, e).await;
        })
}

async fn vnc_session(
    mut socket: WebSocket,
    mut display: crate::console::backend::BackendStream,
) -> (u64, u64) {
    let (mut up, mut down) = (0u64, 0u64);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            read = display.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    down += n as u64;
                    if socket.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        break;
                    }
                }
            },
            message = socket.recv() => match message {
                Some(Ok(Message::Binary(data))) => {
                    up += data.len() as u64;
                    if display.write_all(&data).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            },
        }
    }
    (up, down)
}
