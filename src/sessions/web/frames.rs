//! A browser's WebSocket as a byte stream, for the attach core and the VNC
//! copy, with everything a stranger's socket could make the gateway spend
//! bounded:
//!
//! - frames and messages: at most [`MAX_FRAME`] (64 KiB) each way in; a
//!   larger frame is refused as soon as its header is read (nothing is
//!   reserved for it), and the socket closes with 1009 (CG-WEB-008);
//! - writes: one frame per [`MAX_FRAME`] at most, and tungstenite's write
//!   buffer flushed past one frame, so a browser that stops reading holds
//!   at most a couple of frames here: the writer waits, and the console's
//!   own per-session queue does the rest (it skips, or cuts a lagging
//!   viewer);
//! - silence: a Ping every `[ssh] keepalive_interval_secs`; a socket from
//!   which nothing at all (no Pong, no keystroke) has come for
//!   [`SILENT_PINGS`] intervals is dead, and the session ends
//!   (CG-WEB-007).
//!
//! What ends a session here is told to its [`Ending`], which says why on
//! the console, in the log and in the audit trail; the close frame carries
//! the verdict's code and reason.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use bytes::{Buf, Bytes};
use futures_core::Stream;
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::ending::{Ending, Verdict};

/// Largest WebSocket frame, and message, taken from a browser; and the
/// largest frame written to one.
pub(super) const MAX_FRAME: usize = 64 * 1024;

/// What a socket reads into at a time.
const READ_BUFFER: usize = 16 * 1024;

/// Keepalive intervals without a word from the peer before its socket is
/// taken for dead (as `keepalive_max` is for SSH).
pub(super) const SILENT_PINGS: u32 = 3;

/// `upgrade` with the limits of every web console socket.
pub(super) fn limited(upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
    upgrade
        .max_frame_size(MAX_FRAME)
        .max_message_size(MAX_FRAME)
        // Keystrokes and noVNC's messages are small: an idle socket holds
        // 16 KiB to read into, not tungstenite's 128 KiB.
        .read_buffer_size(READ_BUFFER)
        // Frames go out once a frame's worth is waiting; past four, a
        // write fails rather than buffer more (the writer waits before
        // that: see `poll_write`).
        .write_buffer_size(MAX_FRAME)
        .max_write_buffer_size(4 * MAX_FRAME)
}

/// How a socket is read and kept alive.
#[derive(Debug, Clone, Copy)]
pub(super) struct FrameOptions {
    /// Text frames are data too (the serial console; noVNC sends binary).
    pub text_is_data: bool,
    /// Ping this often; `None`: never.
    pub keepalive: Option<Duration>,
    /// The browser's address, for the log.
    pub peer: SocketAddr,
}

/// A WebSocket as a byte stream: what is read is the payload of binary
/// frames (and of text frames, if asked), what is written goes out in
/// binary frames. A close frame reads as the end of the stream; shutting
/// down sends one with the session's [`Verdict`], if it has one.
pub(super) struct Frames {
    socket: WebSocket,
    /// Payload read and not yet taken.
    pending: Bytes,
    options: FrameOptions,
    /// A close frame, or the end, was read.
    closed: bool,
    ending: Ending,
    keepalive: Option<Keepalive>,
    /// Notices to show between frames (the serial console's token warnings).
    notices: Option<mpsc::Receiver<Bytes>>,
    /// A notice taken from `notices`, waiting for the socket.
    notice: Option<Bytes>,
    /// A Ping is due.
    ping_due: bool,
    /// Something was sent from the reading side and not yet flushed.
    unflushed: bool,
    /// The close frame was queued.
    close_sent: bool,
}

struct Keepalive {
    every: Duration,
    ticks: Interval,
    /// When the peer last sent anything.
    heard: Instant,
}

impl Frames {
    /// `socket`, read as `options` say; what ends the session here is told
    /// to `ending`.
    pub fn new(socket: WebSocket, options: FrameOptions, ending: Ending) -> Frames {
        let keepalive = options.keepalive.filter(|d| !d.is_zero()).map(|every| {
            let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            Keepalive {
                every,
                ticks,
                heard: Instant::now(),
            }
        });
        Frames {
            socket,
            pending: Bytes::new(),
            options,
            closed: false,
            ending,
            keepalive,
            notices: None,
            notice: None,
            ping_due: false,
            unflushed: false,
            close_sent: false,
        }
    }

    /// Shows what comes on `notices` between frames, as it comes.
    pub fn with_notices(mut self, notices: mpsc::Receiver<Bytes>) -> Frames {
        self.notices = Some(notices);
        self
    }

    /// The peer said something: it is alive.
    fn heard(&mut self) {
        if let Some(k) = &mut self.keepalive {
            k.heard = Instant::now();
        }
    }

    /// Pings on schedule; ends the session if the peer has been silent too
    /// long. Only called once the socket has nothing more to read, so that
    /// frames the session was too busy to read never count as silence.
    fn poll_keepalive(&mut self, cx: &mut Context<'_>) {
        let Some(k) = &mut self.keepalive else {
            return;
        };
        while k.ticks.poll_tick(cx).is_ready() {
            let silent = k.heard.elapsed();
            if silent >= k.every * SILENT_PINGS {
                let reason = format!(
                    "CG-WEB-007 nothing came from this browser for {}s (no answer to {SILENT_PINGS} \
                     pings): the connection is taken for dead",
                    silent.as_secs()
                );
                tracing::warn!(code = "CG-WEB-007", peer = %self.options.peer,
                    silent_secs = silent.as_secs(), "web console socket silent; closing it");
                self.ending.end(Verdict::new(close_code::AWAY, reason));
                return;
            }
            self.ping_due = true;
        }
    }

    /// Sends what the reading side has to send (a Ping, a notice) when the
    /// socket can take it, without ever waiting for it.
    fn poll_send_side(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        if self.notice.is_none()
            && let Some(notices) = &mut self.notices
        {
            match notices.poll_recv(cx) {
                Poll::Ready(Some(n)) => self.notice = Some(n),
                Poll::Ready(None) => self.notices = None,
                Poll::Pending => {}
            }
        }
        let mut socket = Pin::new(&mut self.socket);
        while self.ping_due || self.notice.is_some() {
            match socket.as_mut().poll_ready(cx) {
                Poll::Ready(r) => r.map_err(std::io::Error::other)?,
                // A browser that does not read gets no more: its silence
                // is counted all the same.
                Poll::Pending => break,
            }
            let message = match self.notice.take() {
                Some(notice) => Message::Binary(notice),
                None => {
                    self.ping_due = false;
                    Message::Ping(Bytes::new())
                }
            };
            socket
                .as_mut()
                .start_send(message)
                .map_err(std::io::Error::other)?;
            self.unflushed = true;
        }
        if self.unflushed
            && let Poll::Ready(r) = socket.poll_flush(cx)
        {
            r.map_err(std::io::Error::other)?;
            self.unflushed = false;
        }
        Ok(())
    }

    /// A failed read: a frame or message the gateway does not take, or
    /// a broken protocol, ends the session with a code; anything else
    /// (a reset) is the browser gone.
    fn failed(&mut self, e: &axum::Error) -> std::io::Error {
        use std::error::Error as _;
        use tungstenite::error::{Error as Ws, ProtocolError};
        let verdict = match e.source().and_then(|s| s.downcast_ref::<Ws>()) {
            // A browser that went away without a close frame.
            Some(Ws::Protocol(
                ProtocolError::ResetWithoutClosingHandshake | ProtocolError::ReceivedAfterClosing,
            )) => None,
            Some(Ws::Capacity(what)) => Some((
                close_code::SIZE,
                format!(
                    "CG-WEB-008 the browser sent a WebSocket frame or message over {} KiB \
                     ({what}): connection closed",
                    MAX_FRAME / 1024
                ),
            )),
            Some(Ws::Protocol(what)) => Some((
                close_code::PROTOCOL,
                format!(
                    "CG-WEB-008 the browser broke the WebSocket protocol ({what}): connection closed"
                ),
            )),
            Some(Ws::Utf8(_)) => Some((
                close_code::INVALID,
                "CG-WEB-008 the browser sent a text frame that is not UTF-8: connection closed"
                    .to_owned(),
            )),
            _ => None,
        };
        let Some((code, reason)) = verdict else {
            return std::io::Error::other(e.to_string());
        };
        tracing::warn!(code = "CG-WEB-008", peer = %self.options.peer, error = %e,
            "web console socket refused a frame; closing it");
        self.ending.end(Verdict::new(code, reason.clone()));
        std::io::Error::other(reason)
    }
}

impl AsyncRead for Frames {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.closed {
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut this.socket).poll_next(cx) {
                Poll::Ready(frame) => {
                    this.heard();
                    match frame {
                        Some(Ok(Message::Binary(data))) => this.pending = data,
                        Some(Ok(Message::Text(text))) if this.options.text_is_data => {
                            this.pending = Bytes::copy_from_slice(text.as_str().as_bytes());
                        }
                        Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Ok(Message::Close(_))) | None => this.closed = true,
                        Some(Err(e)) => return Poll::Ready(Err(this.failed(&e))),
                    }
                }
                Poll::Pending => {
                    this.poll_keepalive(cx);
                    if let Some(verdict) = this.ending.verdict() {
                        return Poll::Ready(Err(std::io::Error::other(verdict.reason.to_string())));
                    }
                    this.poll_send_side(cx)?;
                    return Poll::Pending;
                }
            }
        }
    }
}

impl AsyncWrite for Frames {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut socket = Pin::new(&mut self.get_mut().socket);
        // Waits while tungstenite could not write what it has: a browser
        // that does not read holds no more than that.
        ready!(socket.as_mut().poll_ready(cx)).map_err(std::io::Error::other)?;
        let n = buf.len().min(MAX_FRAME);
        socket
            .start_send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
            .map_err(std::io::Error::other)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().socket)
            .poll_flush(cx)
            .map_err(std::io::Error::other)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let mut socket = Pin::new(&mut this.socket);
        // A browser that closed first has its close answered already.
        if !this.close_sent && !this.closed {
            ready!(socket.as_mut().poll_ready(cx)).map_err(std::io::Error::other)?;
            let frame = match this.ending.verdict() {
                Some(v) => CloseFrame {
                    code: v.code,
                    reason: v.close_reason().into(),
                },
                None => CloseFrame {
                    code: close_code::NORMAL,
                    reason: "".into(),
                },
            };
            this.close_sent = true;
            socket
                .as_mut()
                .start_send(Message::Close(Some(frame)))
                .map_err(std::io::Error::other)?;
        }
        socket.poll_close(cx).map_err(std::io::Error::other)
    }
}
