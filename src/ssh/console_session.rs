//! A session channel attached to an instance's console hub.
//!
//! The channel's messages are drained all the time (russh stalls the whole
//! SSH connection if one channel's queue fills). Typed bytes go through the
//! [`EscapeParser`] to the hub; hub output is written through the channel's
//! flow-controlled writer, in a separate future so that a client that stops
//! reading only loses output (the hub's broadcast is bounded) and never stops
//! its own keystrokes or anyone else.

use bytes::Bytes;
use russh::server::Msg;
use russh::{Channel, ChannelMsg};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::broadcast::error::RecvError;

use super::channels::Authorized;
use crate::console::escape::{EscapeAction, EscapeParser, HELP, Segment};
use crate::console::hub::{ConsoleEvent, ConsoleHub};

pub(super) async fn serve(
    mut channel: Channel<Msg>,
    hub: ConsoleHub,
    who: Authorized,
    hop: &'static str,
) {
    // Before the shell: pty-req, env and the like are answered by the handler.
    loop {
        match channel.wait().await {
            Some(ChannelMsg::RequestShell { .. }) => break,
            Some(ChannelMsg::Eof | ChannelMsg::Close) | None => return,
            Some(_) => {}
        }
    }
    tracing::info!(
        connection = %who.connection_id,
        instance = %who.instance.id,
        fingerprint = %who.fingerprint,
        peer = %who.peer,
        hop,
        "console attached"
    );
    let (mut reader, writer) = channel.split();
    let mut notices = writer.make_writer();
    let mut output = writer.make_writer();
    let mut attachment = hub.attach();

    let mut greeting = banner(&hub).into_bytes();
    if !attachment.replay.is_empty() {
        greeting.extend_from_slice(b"[recent console output follows]\r\n");
        greeting.extend_from_slice(&attachment.replay);
    }
    if let Some(reason) = &attachment.unavailable {
        greeting.extend_from_slice(notice(reason).as_bytes());
    }
    if output.write_all(&greeting).await.is_err() {
        return;
    }

    let pump_output = async {
        loop {
            let bytes: Bytes = match attachment.events.recv().await {
                Ok(ConsoleEvent::Output(b)) => b,
                Ok(ConsoleEvent::Notice(n)) => notice(&n).into(),
                Err(RecvError::Lagged(n)) => notice(&format!(
                    "your connection is too slow for this console: {n} chunks of output were skipped"
                ))
                .into(),
                Err(RecvError::Closed) => return "the gateway is shutting down",
            };
            if output.write_all(&bytes).await.is_err() {
                return "client gone";
            }
        }
    };

    let pump_input = async {
        let mut escape = EscapeParser::new();
        loop {
            let data = match reader.wait().await {
                Some(ChannelMsg::Data { data }) => data,
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => {
                    return "client closed the session";
                }
                Some(_) => continue,
            };
            for segment in escape.feed(&data) {
                match segment {
                    Segment::Data(bytes) => {
                        if hub.input(Bytes::from(bytes)).await.is_err() {
                            return "the gateway is shutting down";
                        }
                    }
                    Segment::Action(EscapeAction::Disconnect) => {
                        return "disconnected by escape command";
                    }
                    Segment::Action(EscapeAction::Help) => {
                        let _ = write_notice(&mut notices, HELP).await;
                    }
                    Segment::Action(EscapeAction::Break) => {
                        let message = match hub.send_break().await {
                            Ok(()) => {
                                tracing::info!(connection = %who.connection_id, instance = %who.instance.id, "break sent");
                                "break sent".to_owned()
                            }
                            Err(reason) => reason,
                        };
                        let _ = write_notice(&mut notices, &notice(&message)).await;
                    }
                }
            }
        }
    };

    let reason = tokio::select! {
        r = pump_output => r,
        r = pump_input => r,
    };
    tracing::info!(connection = %who.connection_id, instance = %who.instance.id, hop, reason, "console detached");
    let _ = write_notice(&mut notices, &notice(&format!("{reason}; bye"))).await;
    let _ = writer.exit_status(0).await;
    let _ = writer.eof().await;
    let _ = writer.close().await;
}

fn banner(hub: &ConsoleHub) -> String {
    let instance = hub.instance();
    let name = match &instance.display_name {
        Some(n) => format!("{} ({n})", instance.id),
        None => instance.id.clone(),
    };
    format!(
        "[consolegate: serial console of {name}]\r\n\
         [type &. at the start of a line to disconnect, &B to send a break, &? for help]\r\n"
    )
}

fn notice(message: &str) -> String {
    format!("\r\n[consolegate: {message}]\r\n")
}

async fn write_notice(w: &mut (impl AsyncWrite + Unpin), text: &str) -> std::io::Result<()> {
    w.write_all(text.as_bytes()).await
}
