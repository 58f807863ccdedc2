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
//! reaches a console. The token is spent (if single use) last, once the
//! console or display is there to be served. Every socket is a session of
//! [`Sessions`].
//!
//! Once open, a socket is held to what an SSH session is:
//! - [`frames`]: the socket as a byte stream, its frames, messages and
//!   write buffering bounded, pinged when idle and closed when silent;
//! - [`recheck`]: the token re-checked every revalidate interval, the
//!   session ended when it is revoked or expires;
//! - [`ending`]: why a session ends, told once, shown on the console (or
//!   in the VNC close frame), logged and audited.

mod ending;
mod frames;
mod recheck;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{WebSocketUpgrade, close_code};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, routing::get};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf};

use super::Sessions;
use super::attach::{Attach, AttachContext, Keyboard, SHUTTING_DOWN, Terminal, notice};
use super::caps::OverCap;
use super::proxy::{Counts, Tunnel, copy_stream, relay_until};
use crate::codes::CODE_HEADER;
use crate::config::InstanceConfig;
use crate::connections::ConsoleTokens;
use crate::connections::tokens::{ConsoleProtocol, Redeemed, TokenRefusal};
use crate::console::hub::{ConsoleHubs, Principal};
use crate::console::options::SessionOptions;
use crate::ops::metrics::Metrics;
use ending::{Ending, Verdict};
use frames::{FrameOptions, Frames};
use recheck::{ExpiryWarning, TokenWatch};

/// How long a closing socket gets to take its goodbye and close frame.
const GOODBYE_TIME: Duration = Duration::from_secs(1);

/// How long a session told to end gets to end through its console before
/// its keyboard gives up (a session relayed to the node that holds its
/// console ends that way).
const END_GRACE: Duration = Duration::from_secs(2);

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

impl WebState {
    /// The watch over the token a session of `peer`'s was opened with.
    fn token_watch(&self, redeemed: Redeemed, peer: SocketAddr) -> TokenWatch {
        TokenWatch {
            tokens: self.shared.tokens.clone(),
            redeemed,
            config: self.shared.tokens.config(),
            peer,
            warning: None,
        }
    }

    /// How a socket of `peer`'s is read and kept alive.
    fn frame_options(&self, text_is_data: bool, peer: SocketAddr) -> FrameOptions {
        let every = self.shared.tokens.config().ssh.keepalive_interval_secs;
        FrameOptions {
            text_is_data,
            keepalive: (every > 0).then(|| Duration::from_secs(every)),
            peer,
        }
    }

    /// Passes the gateway's cut of every console session on to one
    /// session's `ending`; never returns.
    async fn forward_cut(&self, ending: &Ending) {
        let reason = self.shared.attach.cut().await;
        ending.end(Verdict::new(close_code::AWAY, reason));
        std::future::pending::<()>().await;
    }

    /// Closes a socket whose session is over: its close frame carries the
    /// verdict (the shutdown's, if the gateway is stopping), within
    /// [`GOODBYE_TIME`] for a browser that does not read.
    async fn close<W: AsyncWrite + Unpin>(&self, ending: &Ending, socket: &mut W) {
        if self.shared.sessions.ending().is_cancelled() {
            ending.end(Verdict::new(close_code::AWAY, SHUTTING_DOWN));
        }
        let _ = tokio::time::timeout(GOODBYE_TIME, socket.shutdown()).await;
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

/// Admits a socket, and checks its token for `protocol` without spending
/// it: the instance it opens.
async fn admit(
    state: &WebState,
    params: &HashMap<String, String>,
    protocol: ConsoleProtocol,
) -> Result<(super::Admission, InstanceConfig), Response> {
    // A place first, and the token spent last (`redeem`): a single-use
    // token is not spent on a socket that cannot be served.
    let sessions = &state.shared.sessions;
    let admission = sessions.try_admit().ok_or_else(|| no_place(sessions))?;
    let instance = state
        .shared
        .tokens
        .check(params.get("token").map(String::as_str), protocol)
        .await
        .map_err(|why| refused(state, &why))?;
    Ok((admission, instance))
}

/// Spends the token of an admitted socket (if single use).
async fn redeem(
    state: &WebState,
    params: &HashMap<String, String>,
    protocol: ConsoleProtocol,
) -> Result<Redeemed, Response> {
    state
        .shared
        .tokens
        .redeem(params.get("token").map(String::as_str), protocol)
        .await
        .map_err(|why| refused(state, &why))
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
    let (admission, instance) = match admit(&state, &params, ConsoleProtocol::Serial).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(hub) = state.shared.hubs.get(&instance.id) else {
        return refuse(
            StatusCode::FORBIDDEN,
            "CG-WEB-004",
            "CG-WEB-004 this instance has no console hub".to_owned(),
        );
    };
    let redeemed = match redeem(&state, &params, ConsoleProtocol::Serial).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let peer = peer(info);
    let session = Box::new(Attach {
        hub,
        instance: Arc::new(redeemed.instance.clone()),
        principal: Principal::ConsoleToken {
            id: redeemed.token_id.clone(),
        },
        peer,
        options: SessionOptions::default(),
        via: "web serial console".into(),
        via_node: None,
        resumed: None,
        terminal: Terminal::default(),
    });
    let watch = state.token_watch(redeemed, peer);
    let sessions = state.shared.sessions.clone();
    frames::limited(upgrade).on_upgrade(move |socket| {
        sessions.track(async move {
            let ending = Ending::new();
            let (notices, shown) = tokio::sync::mpsc::channel(2);
            let warning = session.instance.session_timeouts().warning;
            let watch = TokenWatch {
                warning: (!warning.is_zero()).then_some(ExpiryWarning {
                    before: warning,
                    notices,
                }),
                ..watch
            };
            let frames = Frames::new(socket, state.frame_options(true, peer), ending.clone())
                .with_notices(shown);
            let (keys, mut screen) = tokio::io::split(frames);
            let mut keyboard = SocketKeyboard::new(keys, ending.clone());
            // This session's own cut: the gateway's, or its own verdict.
            let attach = AttachContext {
                cut: ending.cut(),
                ..state.shared.attach.clone()
            };
            let watchers = async {
                tokio::join!(watch.run(&ending), state.forward_cut(&ending));
            };
            tokio::select! {
                () = crate::sessions::link::attach_anywhere(
                    &attach, session, &mut keyboard, &mut screen) => {}
                () = watchers => {}
            }
            if keyboard.gave_up
                && let Some(verdict) = ending.verdict()
            {
                let bye = notice(&format!("{}; bye", verdict.reason));
                let _ = tokio::time::timeout(GOODBYE_TIME, show(&mut screen, bye.as_bytes())).await;
            }
            state.close(&ending, &mut screen).await;
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
    let (admission, instance) = match admit(&state, &params, ConsoleProtocol::Vnc).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(target) = instance.vnc.clone() else {
        return refuse(
            StatusCode::FORBIDDEN,
            "CG-VNC-002",
            "CG-VNC-002 this instance has no VNC display".to_owned(),
        );
    };
    // A place under the session caps before the display is dialled and
    // the token spent (the serial console takes its own in the attach).
    let token = params.get("token").map_or("", String::as_str);
    let counted_as = Principal::ConsoleToken {
        id: crate::connections::tokens::token_id(token),
    };
    let place = match state.shared.sessions.caps().take(&instance.id, &counted_as) {
        Ok(place) => place,
        Err(over) => {
            tracing::info!(code = OverCap::CODE, instance = %instance.id,
                who = %counted_as.label(), %over, "websockify refused: over a session cap");
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                OverCap::CODE,
                over.to_string(),
            );
        }
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
    let redeemed = match redeem(&state, &params, ConsoleProtocol::Vnc).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let peer = peer(info);
    let tunnel = Tunnel {
        principal: Principal::ConsoleToken {
            id: redeemed.token_id.clone(),
        },
        instance_id: redeemed.instance.id.clone(),
        peer,
        via: "websockify",
    };
    let watch = state.token_watch(redeemed, peer);
    let sessions = state.shared.sessions.clone();
    frames::limited(upgrade)
        .protocols(["binary"])
        .on_upgrade(move |socket| {
            sessions.track(async move {
                let ending = Ending::new();
                let mut frames =
                    Frames::new(socket, state.frame_options(false, peer), ending.clone());
                let shutdown = state.shared.attach.ending.clone();
                let stop = async {
                    tokio::select! {
                        () = shutdown.cancelled() => SHUTTING_DOWN.to_owned(),
                        reason = ending.ended() => reason.to_string(),
                    }
                };
                let store = &state.shared.attach.store;
                let counts = Counts::default();
                let copy = copy_stream(&mut frames, display, &counts);
                tokio::select! {
                    () = relay_until(store, stop, tunnel, &counts, copy) => {}
                    () = watch.run(&ending) => {}
                }
                state.close(&ending, &mut frames).await;
                drop((admission, place));
            })
        })
}

/// A socket's bytes, as keystrokes.
struct SocketKeyboard {
    keys: ReadHalf<Frames>,
    ending: Ending,
    /// The session did not end through its console in [`END_GRACE`] after
    /// its verdict: the keyboard ended it (and the goodbye is to be said).
    gave_up: bool,
}

impl SocketKeyboard {
    fn new(keys: ReadHalf<Frames>, ending: Ending) -> SocketKeyboard {
        SocketKeyboard {
            keys,
            ending,
            gave_up: false,
        }
    }
}

impl Keyboard for SocketKeyboard {
    async fn typed(&mut self) -> Option<Bytes> {
        if self.gave_up {
            return None;
        }
        // A browser sends a frame per keystroke; a paste comes in pieces.
        let mut buf = bytes::BytesMut::with_capacity(4096);
        tokio::select! {
            read = self.keys.read_buf(&mut buf) => match read {
                Ok(n) if n > 0 => return Some(buf.freeze()),
                // The browser left.
                _ if self.ending.verdict().is_none() => return None,
                // The socket failed for the verdict: it ends the session.
                _ => {}
            },
            _ = self.ending.ended() => {}
        }
        // The console ends the session with the verdict's reason at once;
        // one relayed to another node ends when its keyboard does.
        tokio::time::sleep(END_GRACE).await;
        self.gave_up = true;
        None
    }
}

/// Writes `bytes` and sends them on at once.
async fn show<W: AsyncWrite + Unpin>(screen: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    screen.write_all(bytes).await?;
    screen.flush().await
}
