//! A session channel attached to an instance's console hub: the SSH front
//! end of the [attach core](crate::sessions::attach).
//!
//! Before the shell, the channel's requests are read for the terminal size
//! (the handler answers them). Then the channel is split: its messages are
//! drained all the time (russh stalls the whole SSH connection if one
//! channel's queue fills) and become the session's keystrokes, and its
//! flow-controlled writer is what the user sees.

use std::pin::Pin;
use std::task::{Context, Poll};

use russh::server::Msg;
use russh::{Channel, ChannelMsg};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::SshContext;
use super::auth::Authorized;
use crate::console::hub::{ConsoleHub, Principal};
use crate::console::options::SessionOptions;
use crate::sessions::attach::{Attach, Keyboard, Terminal, notice};
use crate::sessions::link::attach_anywhere;

/// An SSH channel's data, as keystrokes.
pub(crate) struct ChannelKeyboard(pub russh::ChannelReadHalf);

impl Keyboard for ChannelKeyboard {
    async fn typed(&mut self) -> Option<bytes::Bytes> {
        loop {
            match self.0.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    return Some(bytes::Bytes::copy_from_slice(&data));
                }
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => return None,
                Some(_) => {}
            }
        }
    }
}

/// The most a console session hands russh in one channel message.
///
/// russh encrypts up to 64 queued messages into a connection's outgoing
/// buffer before it writes to the socket, and the buffer keeps the
/// capacity it reached for the connection's life. With full-size (32 KiB)
/// messages, one burst (a replay of the whole history, a flood of output)
/// leaves every connection holding about 2 MiB per hop; with 4 KiB ones,
/// 256 KiB. Console output is slow next to that; VNC tunnels are not
/// written through this.
const MAX_WRITE: usize = 4 * 1024;

/// A channel writer that passes at most [`MAX_WRITE`] bytes per write.
struct SmallWrites<W>(W);

impl<W: AsyncWrite + Unpin> AsyncWrite for SmallWrites<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = buf.len().min(MAX_WRITE);
        Pin::new(&mut self.0).poll_write(cx, &buf[..n])
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A session channel on its way to the console, with what it needs there.
pub(super) struct ConsoleChannel {
    pub channel: Channel<Msg>,
    pub ctx: std::sync::Arc<SshContext>,
    pub hub: ConsoleHub,
    pub who: Authorized,
    pub via: &'static str,
    pub user_name: String,
}

/// Serves a console session channel until the session ends.
///
/// Takes its request boxed: an async function keeps each argument it moves
/// into a local twice in its state, and this task is held for the session's
/// whole life; so is the [`Attach`] handed on.
pub(super) async fn serve(request: Box<ConsoleChannel>) {
    let ConsoleChannel {
        mut channel,
        ctx,
        hub,
        who,
        via,
        user_name,
    } = *request;
    // Before the shell: remember the terminal; the handler answers requests.
    let mut terminal = Terminal::default();
    loop {
        match channel.wait().await {
            Some(ChannelMsg::RequestShell { .. }) => break,
            Some(ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                ..
            }) => {
                terminal = Terminal {
                    cols: col_width,
                    rows: row_height,
                    term: Some(term.chars().take(64).collect()),
                };
            }
            Some(ChannelMsg::Eof | ChannelMsg::Close) | None => return,
            Some(_) => {}
        }
    }
    let (reader, writer) = channel.split();
    let mut out = SmallWrites(writer.make_writer());
    let options = SessionOptions::from_user_name(&user_name);
    // Freed here rather than held through the session's whole life.
    drop(user_name);
    match options {
        Ok(options) => {
            let Authorized {
                connection_id,
                fingerprint,
                instance,
                peer,
            } = who;
            let session = Box::new(Attach {
                hub,
                principal: Principal::Key {
                    connection_id,
                    fingerprint,
                },
                instance,
                peer,
                options,
                via: via.into(),
                terminal,
                via_node: None,
                resumed: None,
            });
            let keyboard = ChannelKeyboard(reader);
            attach_anywhere(ctx.attach_context(), session, keyboard, out).await;
            let _ = writer.exit_status(0).await;
        }
        Err(e) => {
            let _ = out
                .write_all(notice(&format!("CG-OPT-001 {e}; bye")).as_bytes())
                .await;
            let _ = writer.exit_status(2).await;
        }
    }
    let _ = writer.eof().await;
    let _ = writer.close().await;
}
