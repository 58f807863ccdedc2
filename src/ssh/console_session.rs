//! A session channel attached to an instance's console hub.
//!
//! The channel's messages are drained all the time (russh stalls the whole
//! SSH connection if one channel's queue fills). Typed bytes go through the
//! [`EscapeParser`] to the hub. Everything the client is shown goes through
//! one writer (the channel's flow-controlled one) in one future, so that the
//! recording, if any, is exactly what the client received, and a client that
//! stops reading only falls behind in its own queue.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use russh::server::Msg;
use russh::{Channel, ChannelMsg};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::SshContext;
use super::channels::Authorized;
use crate::audit::{AuditEvent, AuditKind};
use crate::config::RecordMode;
use crate::console::escape::{EscapeAction, EscapeParser, HELP, Segment};
use crate::console::history::Replay;
use crate::console::hub::{ConsoleEvent, ConsoleHub, Principal, Role, SessionInfo};
use crate::console::options::SessionOptions;
use crate::console::recording::{Recording, RecordingHeader};
use crate::console::timeouts::{SessionClock, announce};

/// Lines `&L` replays.
const REPLAY_LINES: usize = 50;

struct Terminal {
    cols: u32,
    rows: u32,
    term: Option<String>,
}

pub(super) async fn serve(
    mut channel: Channel<Msg>,
    ctx: std::sync::Arc<SshContext>,
    hub: ConsoleHub,
    who: Authorized,
    hop: &'static str,
    user_name: String,
) {
    // Before the shell: remember the terminal; the handler answers requests.
    let mut terminal = Terminal {
        cols: 80,
        rows: 24,
        term: None,
    };
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
    let (mut reader, writer) = channel.split();
    let mut out = writer.make_writer();

    let options = match SessionOptions::from_user_name(&user_name) {
        Ok(o) => o,
        Err(e) => {
            let _ = out
                .write_all(notice(&format!("CG-OPT-001 {e}; bye")).as_bytes())
                .await;
            let _ = writer.exit_status(2).await;
            let _ = writer.eof().await;
            let _ = writer.close().await;
            return;
        }
    };
    let info = SessionInfo {
        principal: Principal::Key {
            connection_id: who.connection_id.clone(),
            fingerprint: who.fingerprint.clone(),
        },
        peer: who.peer,
        read_only: options.read_only,
        force: options.force,
        disconnect_when_lagging: options.disconnect_when_lagging,
    };
    let Ok(mut attachment) = hub.attach(info, options.replay).await else {
        return;
    };
    let started = Instant::now();
    let audit = |kind: AuditKind| {
        let mut e = AuditEvent::new(kind);
        e.connection_id = Some(who.connection_id.clone());
        e.instance_id = Some(who.instance.id.clone());
        e.fingerprint = Some(who.fingerprint.clone());
        e.peer = Some(who.peer.to_string());
        e.read_only = Some(options.read_only);
        e
    };
    let mut greeting = banner(&hub, &role_text(&attachment.role)).into_bytes();
    if !attachment.replay.is_empty() {
        greeting.extend_from_slice(b"[recent console output follows]\r\n");
        greeting.extend_from_slice(&attachment.replay);
    }
    if let Some(reason) = &attachment.unavailable {
        greeting.extend_from_slice(notice(reason).as_bytes());
    }
    // The user sees the console first; the bookkeeping follows.
    if out.write_all(&greeting).await.is_err() {
        return;
    }
    let mut attach = audit(AuditKind::Attach);
    attach.detail = Some(format!("{hop} hop, {}", role_text(&attachment.role)));
    crate::audit::record(&ctx.store, attach).await;
    let mut recording = start_recording(&who, &terminal, attachment.id).await;
    if let Some(r) = &mut recording {
        r.output(&greeting).await;
    }

    // What the input side wants shown (or recorded), through the one writer.
    let (local_tx, mut local_rx) = mpsc::channel::<Local>(16);
    let record_input = recording.is_some() && who.instance.record == RecordMode::OutputAndInput;
    let mut bytes_out = greeting.len() as u64;
    // Not kept for the session's life (an idle session holds only what it needs).
    drop(greeting);
    let mut bytes_in = 0u64;
    let session_id = attachment.id;
    // Idle and maximum-duration timeouts: the last activity, in ms since `started`.
    let activity = AtomicU64::new(0);
    let touch = || activity.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    let last_activity = || started + Duration::from_millis(activity.load(Ordering::Relaxed));
    let mut clock = SessionClock::new(who.instance.session_timeouts(), started);
    let timer_tx = local_tx.clone();

    let pump_output = async {
        loop {
            let bytes: Bytes = tokio::select! {
                event = attachment.recv() => match event {
                    Some(ConsoleEvent::Output(b)) => {
                        // Output keeps a session alive only if it may type:
                        // a read-only viewer's idleness is its own input alone.
                        if attachment.can_write() {
                            touch();
                        }
                        b
                    }
                    Some(ConsoleEvent::Notice(n)) => notice(&n).into(),
                    Some(ConsoleEvent::Closed(reason)) => return Cow::Owned(reason),
                    Some(ConsoleEvent::Missed(n)) => notice(&format!(
                        "CG-LAG-001 your connection fell behind this console: {n} bytes of output were skipped"
                    ))
                    .into(),
                    None if options.disconnect_when_lagging => {
                        let _ = out.write_all(notice("CG-LAG-002 your connection fell behind this console (lag=disconnect)").as_bytes()).await;
                        return Cow::Borrowed("CG-LAG-002 fell behind (lag=disconnect)");
                    }
                    None => return Cow::Borrowed("CG-OPS-001 the gateway is shutting down"),
                },
                Some(local) = local_rx.recv() => match local {
                    Local::Show(b) => b,
                    Local::Typed(b) => {
                        if let Some(r) = &mut recording {
                            r.input(&b).await;
                        }
                        continue;
                    }
                },
            };
            if out.write_all(&bytes).await.is_err() {
                return Cow::Borrowed("client gone");
            }
            bytes_out += bytes.len() as u64;
            if let Some(r) = &mut recording {
                r.output(&bytes).await;
            }
        }
    };

    let pump_input = async {
        let mut escape = EscapeParser::new();
        let show = |text: String| {
            let _ = local_tx.try_send(Local::Show(Bytes::from(text)));
        };
        loop {
            let data = match reader.wait().await {
                Some(ChannelMsg::Data { data }) => data,
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => {
                    return "client closed the session";
                }
                Some(_) => continue,
            };
            bytes_in += data.len() as u64;
            touch();
            if record_input {
                let _ = local_tx
                    .send(Local::Typed(Bytes::copy_from_slice(&data)))
                    .await;
            }
            for segment in escape.feed(&data) {
                match segment {
                    Segment::Data(bytes) => {
                        if hub.input(session_id, Bytes::from(bytes)).await.is_err() {
                            return "CG-OPS-001 the gateway is shutting down";
                        }
                    }
                    Segment::Action(EscapeAction::Disconnect) => {
                        return "disconnected by escape command";
                    }
                    Segment::Action(EscapeAction::Help) => show(HELP.to_owned()),
                    Segment::Action(EscapeAction::Break) => {
                        let message = match hub.send_break().await {
                            Ok(()) => {
                                crate::audit::record(&ctx.store, audit(AuditKind::Break)).await;
                                "break sent".to_owned()
                            }
                            Err(reason) => reason.to_string(),
                        };
                        show(notice(&message));
                    }
                    Segment::Action(EscapeAction::Force) => match hub.force(session_id).await {
                        Ok(Some(role)) => {
                            crate::audit::record(&ctx.store, audit(AuditKind::Force)).await;
                            show(notice(match role {
                                Role::Writer => "you hold write access",
                                _ => "read-write (input shared by all sessions)",
                            }));
                        }
                        Ok(None) => show(notice("you are no longer attached")),
                        Err(_) => {}
                    },
                    Segment::Action(EscapeAction::Who) => {
                        if let Ok(list) = hub.who().await {
                            show(who_text(&list, session_id));
                        }
                    }
                    Segment::Action(EscapeAction::Replay) => {
                        if let Ok(history) = hub.history(Replay::Lines(REPLAY_LINES)).await {
                            let mut text =
                                notice(&format!("last {REPLAY_LINES} lines")).into_bytes();
                            text.extend_from_slice(&history);
                            text.extend_from_slice(notice("end of replay").as_bytes());
                            let _ = local_tx.try_send(Local::Show(Bytes::from(text)));
                        }
                    }
                }
            }
        }
    };

    let timer = async {
        loop {
            let Some((at, _)) = clock.next(last_activity()) else {
                return std::future::pending().await;
            };
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
            let (now, last) = (Instant::now(), last_activity());
            let Some(due) = clock.due(now, last) else {
                continue;
            };
            match announce(due, clock.timeouts(), SessionClock::idle_for(now, last)) {
                Ok(warning) => {
                    let _ = timer_tx.try_send(Local::Show(Bytes::from(notice(&warning))));
                }
                Err(cut) => return cut,
            }
        }
    };

    let reason: Cow<'static, str> = tokio::select! {
        r = pump_output => r,
        r = pump_input => r.into(),
        cut = timer => {
            ctx.metrics.session_cut(&who.instance.id, cut.kind);
            tracing::info!(code = cut.code, connection = %who.connection_id,
                instance = %who.instance.id, peer = %who.peer, "session cut: {}", cut.message);
            let mut row = audit(AuditKind::Timeout);
            row.detail = Some(cut.message.clone());
            crate::audit::record(&ctx.store, row).await;
            cut.message.into()
        }
    };
    // Leave the hub at once: write access is free before anything else.
    drop(attachment);
    let bye = notice(&format!("{reason}; bye"));
    let _ = out.write_all(bye.as_bytes()).await;
    if let Some(mut r) = recording {
        r.output(bye.as_bytes()).await;
        r.finish().await;
    }
    let mut detach = audit(AuditKind::Detach);
    detach.bytes_in = Some(bytes_in);
    detach.bytes_out = Some(bytes_out);
    detach.duration_ms = Some(started.elapsed().as_millis() as u64);
    detach.detail = Some(reason.into_owned());
    crate::audit::record(&ctx.store, detach).await;
    let _ = writer.exit_status(0).await;
    let _ = writer.eof().await;
    let _ = writer.close().await;
}

/// From the input side to the one writer.
enum Local {
    /// Show this to the client.
    Show(Bytes),
    /// The client typed this (for the recording).
    Typed(Bytes),
}

async fn start_recording(who: &Authorized, terminal: &Terminal, session: u64) -> Option<Recording> {
    let instance = &who.instance;
    let dir = instance.record_dir.as_ref()?;
    if instance.record == RecordMode::Off {
        return None;
    }
    let id = &who.connection_id;
    let name = format!("{}-{session}", &id[id.len().saturating_sub(12)..]);
    let header = RecordingHeader {
        cols: terminal.cols,
        rows: terminal.rows,
        term: terminal.term.as_deref(),
        title: format!("{} via {id}", instance.id),
    };
    match Recording::create(
        dir,
        &instance.id,
        &name,
        header,
        instance.record == RecordMode::OutputAndInput,
    )
    .await
    {
        Ok(r) => {
            tracing::info!(path = %r.path().display(), "recording session");
            Some(r)
        }
        Err(e) => {
            tracing::error!(code = "CG-REC-001", dir = %dir.display(), error = %e,
                "cannot start a recording; session goes on unrecorded");
            None
        }
    }
}

fn banner(hub: &ConsoleHub, role: &str) -> String {
    let instance = hub.instance();
    let name = match &instance.display_name {
        Some(n) => format!("{} ({n})", instance.id),
        None => instance.id.clone(),
    };
    format!(
        "[consolegate: serial console of {name}; you are {role}]\r\n\
         [type &. at the start of a line to disconnect, &B to send a break, &? for help]\r\n"
    )
}

/// Where a session stands, as its user reads it.
fn role_text(role: &Role) -> String {
    match role {
        Role::Writer => "read-write (you hold write access)".to_owned(),
        Role::ReadWrite => "read-write (input shared by all sessions)".to_owned(),
        Role::ReadOnlyAsked => "read-only, as asked (&F takes write access)".to_owned(),
        Role::ReadOnlyWhile(writer) => {
            format!("read-only: {writer} has write access (&F takes it)")
        }
    }
}

fn who_text(list: &[crate::console::hub::WhoEntry], me: u64) -> String {
    let mut text = format!("\r\n[{} session(s) attached:\r\n", list.len());
    for w in list {
        text.push_str(&format!(
            " {}{} {} from {}, {}, {}s\r\n",
            if w.id == me { "*" } else { " " },
            w.id,
            w.info.principal.label(),
            w.info.peer,
            w.role.as_str(),
            w.attached_for.as_secs()
        ));
    }
    text.push_str("]\r\n");
    text
}

fn notice(message: &str) -> String {
    format!("\r\n[consolegate: {message}]\r\n")
}
