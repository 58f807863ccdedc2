//! The one attach core: a console session, whichever front end it came in by.
//!
//! A front end (an SSH session channel, a WebSocket) authenticates its user,
//! then hands this module the user's keystrokes (a [`Keyboard`]) and a
//! writer for what the user sees. From there everything is done here, once:
//! the banner and the replay, the `&` escapes, the idle and maximum-duration
//! timeouts, the recording (output, and the input the console took if the
//! instance records input) and the Attach, Force, Break, Timeout and Detach
//! audit rows.
//!
//! Everything the user is shown goes through the one writer in one future,
//! so the recording is exactly what the user received, and a user who stops
//! reading only falls behind in their own queue. A session ends when the
//! user leaves (or types `&.`), a timeout cuts it, the console is closed to
//! it, or the gateway shuts down; on every one of those paths the user is
//! told why, the recording is finished and the Detach row is written.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditEvent, AuditKind, SessionRef};
use crate::config::{InstanceConfig, RecordMode, Replay};
use crate::console::escape::{EscapeAction, EscapeParser, HELP, Segment};
use crate::console::hub::{
    Attachment, ConsoleEvent, ConsoleHub, MOVED, Principal, Role, SessionId, SessionInfo, WhoEntry,
};
use crate::console::options::SessionOptions;
use crate::console::queue;
use crate::console::recording::{Recording, RecordingHeader};
use crate::console::timeouts::{SessionClock, announce};
use crate::ops::metrics::Metrics;
use crate::store::Store;

/// Escape commands a session may give in a burst, and how many a second
/// after that.
const ESCAPE_BURST: f64 = 8.0;
const ESCAPES_PER_SEC: f64 = 4.0;

/// A token bucket for one session's escape commands.
struct EscapeBudget {
    tokens: f64,
    last: Instant,
    /// When the session was last told that some were ignored.
    told: Option<Instant>,
}

impl EscapeBudget {
    fn new() -> EscapeBudget {
        EscapeBudget {
            tokens: ESCAPE_BURST,
            last: Instant::now(),
            told: None,
        }
    }

    /// Whether one more command may run now.
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * ESCAPES_PER_SEC;
        self.tokens = (self.tokens + refill).min(ESCAPE_BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether to tell the session about ignored commands (once a second).
    fn tell(&mut self) -> bool {
        let now = Instant::now();
        if self
            .told
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            return false;
        }
        self.told = Some(now);
        true
    }
}

/// Lines `&L` replays.
const REPLAY_LINES: usize = 50;

/// Why a session ended, when the gateway shuts down.
pub const SHUTTING_DOWN: &str = "CG-OPS-001 the gateway is shutting down";

/// The user's keystrokes, as a front end receives them.
pub trait Keyboard: Send {
    /// The next bytes typed; `None` once the user has gone. Cancel-safe:
    /// nothing typed is lost if the future is dropped.
    fn typed(&mut self) -> impl Future<Output = Option<Bytes>> + Send;
}

impl<K: Keyboard> Keyboard for &mut K {
    fn typed(&mut self) -> impl Future<Output = Option<Bytes>> + Send {
        (**self).typed()
    }
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// For good: the user was told why.
    Ended,
    /// The console moved to another node of the fleet (or, for a session
    /// relayed from another node, this node is shutting down): the session
    /// resumes wherever the console is held now.
    Moved,
}

/// The user's terminal, for the recording's header.
#[derive(Debug, Clone)]
pub struct Terminal {
    /// Columns.
    pub cols: u32,
    /// Rows.
    pub rows: u32,
    /// `TERM`, if the client said.
    pub term: Option<String>,
}

impl Default for Terminal {
    fn default() -> Self {
        Terminal {
            cols: 80,
            rows: 24,
            term: None,
        }
    }
}

/// A session a front end has admitted, about to attach.
#[derive(Debug)]
pub struct Attach {
    /// The instance's console.
    pub hub: ConsoleHub,
    /// The instance, as configured when the session was admitted.
    pub instance: Arc<InstanceConfig>,
    /// Who the session acts for.
    pub principal: Principal,
    /// The user's address.
    pub peer: SocketAddr,
    /// What the session asked for.
    pub options: SessionOptions,
    /// The way in, for the audit trail: `outer hop`, `inner hop`, `web`.
    pub via: Cow<'static, str>,
    /// The user's terminal.
    pub terminal: Terminal,
    /// The node of the fleet the user came in through, if not this one.
    pub via_node: Option<String>,
    /// Set when the session resumes after its console moved: shown instead
    /// of the banner and the replay.
    pub resumed: Option<String>,
}

/// What every session needs from the gateway.
#[derive(Debug, Clone)]
pub struct AttachContext {
    /// Where audit rows go.
    pub store: Store,
    /// Where timeouts are counted.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the gateway shuts down.
    pub ending: CancellationToken,
    /// Set (with the reason) while every console session must end now
    /// (a node that lost its store, with `store_lost = "end-sessions"`).
    pub cut: tokio::sync::watch::Receiver<Option<Arc<str>>>,
    /// In a fleet: where consoles are held, and how to reach them.
    pub fleet: Option<crate::fleet::FleetLink>,
    /// The caps on sessions per instance, console connection and key.
    pub caps: super::caps::SessionCaps,
    /// This process, as its sessions' audit rows name it.
    pub numbering: Arc<SessionNumbering>,
}

/// This gateway process as the audit rows of its console sessions name it
/// (its `[cluster] node_id` and its incarnation, random per start), and
/// the numbers it gives its sessions: with them, the next process of the
/// same node finds the sessions this one never ended if it is killed
/// (`Store::reconcile_detaches`).
#[derive(Debug)]
pub struct SessionNumbering {
    node_id: Option<String>,
    incarnation: String,
    last: AtomicU64,
}

impl SessionNumbering {
    /// Numbers the sessions of the process `incarnation` of node `node_id`
    /// (`None`: a gateway alone).
    pub fn new(node_id: Option<String>, incarnation: String) -> SessionNumbering {
        SessionNumbering {
            node_id,
            incarnation,
            last: AtomicU64::new(0),
        }
    }

    /// The next session.
    fn next(&self) -> SessionRef {
        SessionRef {
            node_id: self.node_id.clone(),
            incarnation: self.incarnation.clone(),
            number: self.last.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }
}

impl AttachContext {
    /// Resolves, with the reason, once sessions are cut.
    pub async fn cut(&self) -> String {
        let mut cut = self.cut.clone();
        let reason = cut
            .wait_for(Option::is_some)
            .await
            .map(|r| r.as_deref().unwrap_or_default().to_owned());
        match reason {
            Ok(reason) => reason,
            Err(_) => std::future::pending().await,
        }
    }
}

impl Attach {
    /// An audit event about this session, which is `id`.
    fn event(&self, id: &SessionRef, kind: AuditKind, detail: Option<String>) -> AuditEvent {
        let mut e = audit_event(
            kind,
            &self.principal,
            &self.instance.id,
            self.peer,
            Some(self.options.read_only),
            detail,
        );
        e.session = Some(id.clone());
        e
    }
}

/// An audit event about a session of `principal`'s: a key fills the
/// connection and fingerprint fields; a console token, which has neither,
/// is named by its id at the end of the detail.
pub fn audit_event(
    kind: AuditKind,
    principal: &Principal,
    instance_id: &str,
    peer: SocketAddr,
    read_only: Option<bool>,
    detail: Option<String>,
) -> AuditEvent {
    let mut e = AuditEvent::new(kind);
    e.instance_id = Some(instance_id.to_owned());
    e.peer = Some(peer.to_string());
    e.read_only = read_only;
    match principal {
        Principal::Key {
            connection_id,
            fingerprint,
        } => {
            e.connection_id = Some(connection_id.clone());
            e.fingerprint = Some(fingerprint.clone());
            e.detail = detail;
        }
        Principal::ConsoleToken { id } => {
            e.detail = Some(match detail {
                Some(d) => format!("{d} (console token {id})"),
                None => format!("console token {id}"),
            });
        }
    }
    e
}

/// Runs a console session until it ends or its console moves; `screen`
/// is what the user sees.
pub async fn run<K, W>(ctx: &AttachContext, session: &Attach, keyboard: K, mut screen: W) -> Outcome
where
    K: Keyboard,
    W: AsyncWrite + Unpin + Send,
{
    let Some(opened) = open(ctx, session, &mut screen).await else {
        return Outcome::Ended;
    };
    let started = opened.started;
    // Boxed: a session's task would otherwise hold the opened session
    // twice while it pumps, as the argument and as pump's locals.
    let ended = pump(ctx, session, Box::new(opened), keyboard, &mut screen).await;
    let outcome = if ended.moved {
        Outcome::Moved
    } else {
        Outcome::Ended
    };
    close(ctx, session, started, ended, &mut screen).await;
    outcome
}

/// An attached session, greeted and audited.
struct Opened {
    /// The session, as its audit rows name it.
    id: SessionRef,
    attachment: Attachment,
    /// Boxed, as its writes in the output loop are: an unrecorded
    /// session's task holds no room for them.
    recording: Option<Box<Recording>>,
    started: Instant,
    bytes_out: u64,
}

/// A session that has left the hub, and why.
struct Ended {
    id: SessionRef,
    reason: Cow<'static, str>,
    /// It resumes elsewhere: no goodbye.
    moved: bool,
    recording: Option<Box<Recording>>,
    bytes_in: u64,
    bytes_out: u64,
}

/// Attaches to the hub, shows the greeting (banner, replay, the console's
/// state), writes the Attach row and starts the recording; `None` if the
/// user or the hub is already gone.
async fn open<W>(ctx: &AttachContext, session: &Attach, screen: &mut W) -> Option<Opened>
where
    W: AsyncWrite + Unpin + Send,
{
    let info = SessionInfo {
        principal: session.principal.clone(),
        peer: session.peer,
        read_only: session.options.read_only,
        force: session.options.force,
        disconnect_when_lagging: session.options.disconnect_when_lagging,
        via_node: session.via_node.clone(),
    };
    let hub = &session.hub;
    // A resumed session has seen the output before the move already.
    let replay = match session.resumed {
        Some(_) => Some(Replay::None),
        None => session.options.replay,
    };
    let Ok(mut attachment) = hub.attach(info, replay).await else {
        let _ = show(screen, notice(SHUTTING_DOWN).as_bytes()).await;
        return None;
    };
    let started = Instant::now();
    let mut greeting = match &session.resumed {
        Some(note) => notice(&format!("{note}; you are {}", role_text(&attachment.role))),
        None => banner(hub, &role_text(&attachment.role)),
    }
    .into_bytes();
    // The replay (up to history_bytes) is not kept for the session's life.
    let replayed = std::mem::take(&mut attachment.replay);
    if !replayed.is_empty() {
        greeting.extend_from_slice(b"[recent console output follows]\r\n");
        greeting.extend_from_slice(&replayed);
    }
    drop(replayed);
    if let Some(reason) = &attachment.unavailable {
        greeting.extend_from_slice(notice(reason).as_bytes());
    }
    // The user sees the console first; the bookkeeping follows.
    if show(screen, &greeting).await.is_err() {
        return None;
    }
    let attach_detail = format!("{}, {}", session.via, role_text(&attachment.role));
    let id = ctx.numbering.next();
    ctx.store
        .record_audit(session.event(&id, AuditKind::Attach, Some(attach_detail)))
        .await;
    let mut recording = start_recording(session, attachment.id).await.map(Box::new);
    if let Some(r) = &mut recording {
        r.output(&greeting).await;
    }
    Some(Opened {
        id,
        attachment,
        recording,
        started,
        bytes_out: greeting.len() as u64,
    })
}

/// Carries the session until it ends: console output and notices to the
/// user, keystrokes and escapes to the hub, the timeouts; leaves the hub.
async fn pump<K, W>(
    ctx: &AttachContext,
    session: &Attach,
    opened: Box<Opened>,
    mut keyboard: K,
    screen: &mut W,
) -> Ended
where
    K: Keyboard,
    W: AsyncWrite + Unpin + Send,
{
    let Opened {
        id,
        mut attachment,
        mut recording,
        started,
        mut bytes_out,
    } = *opened;
    let record_input = recording.is_some() && session.instance.record == RecordMode::OutputAndInput;
    let hub = &session.hub;
    // What the input side and the timer want shown (or recorded), through
    // the one writer.
    let (local_tx, mut local_rx) = queue::queue::<Local>(LOCAL_QUEUE);
    let mut bytes_in = 0u64;
    let session_id = attachment.id;
    let lag_disconnects = session.options.disconnect_when_lagging;
    // Idle and maximum-duration timeouts: the last activity, in ms since `started`.
    let activity = AtomicU64::new(0);
    let touch = || activity.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    let last_activity = || started + Duration::from_millis(activity.load(Ordering::Relaxed));
    let mut clock = SessionClock::new(session.instance.session_timeouts(), started);

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
                    Some(ConsoleEvent::Closed(reason)) if reason == MOVED => return Cow::Borrowed(MOVED),
                    Some(ConsoleEvent::Closed(reason)) => return Cow::Owned(reason),
                    Some(ConsoleEvent::Missed(n)) => notice(&format!(
                        "CG-LAG-001 your connection fell behind this console: {n} bytes of output were skipped"
                    ))
                    .into(),
                    None if lag_disconnects => {
                        let _ = show(screen, notice("CG-LAG-002 your connection fell behind this console (lag=disconnect)").as_bytes()).await;
                        return Cow::Borrowed("CG-LAG-002 fell behind (lag=disconnect)");
                    }
                    None => return Cow::Borrowed(SHUTTING_DOWN),
                },
                Some(local) = local_rx.recv() => match local {
                    Local::Show(b) => b,
                    Local::Typed(b) => {
                        // Only what reached the console: the hub drops a
                        // read-only session's typing (CG-INPUT-001), and
                        // says so through `can_write`.
                        if attachment.can_write()
                            && let Some(r) = &mut recording
                        {
                            Box::pin(r.input(&b)).await;
                        }
                        continue;
                    }
                },
            };
            if show(screen, &bytes).await.is_err() {
                return Cow::Borrowed("client gone");
            }
            bytes_out += bytes.len() as u64;
            if let Some(r) = &mut recording {
                Box::pin(r.output(&bytes)).await;
            }
        }
    };

    let pump_input = async {
        let mut escape = EscapeParser::new();
        let mut budget = EscapeBudget::new();
        let show = |text: Bytes| {
            let _ = local_tx.try_send(Local::Show(text));
        };
        loop {
            let Some(data) = keyboard.typed().await else {
                return "client closed the session";
            };
            bytes_in += data.len() as u64;
            if !data.is_empty() {
                touch();
            }
            for segment in escape.feed(&data) {
                match segment {
                    Segment::Data(bytes) => {
                        let bytes = Bytes::from(bytes);
                        // Boxed: its state (the input budget's permit and
                        // the hub's queue) is held only while a keystroke
                        // is on its way, not in every idle session's task.
                        if Box::pin(hub.input(session_id, bytes.clone()))
                            .await
                            .is_err()
                        {
                            return SHUTTING_DOWN;
                        }
                        // Escapes are not input; what goes to the hub is
                        // recorded if the hub takes it (see `Local::Typed`).
                        if record_input {
                            let _ = local_tx.send(Local::Typed(bytes)).await;
                        }
                    }
                    Segment::Action(EscapeAction::Disconnect) => {
                        return "disconnected by escape command";
                    }
                    // A packet full of `&L&L…` (each copies up to the
                    // whole history) or `&B&B…` is not worth the work.
                    Segment::Action(_) if !budget.allow() => {
                        if budget.tell() {
                            show(Bytes::from(notice(
                                "CG-INPUT-004 too many escape commands at once; the rest were ignored",
                            )));
                        }
                    }
                    // The other actions are rare: their work is boxed, so
                    // that it takes no room in every idle session's task.
                    Segment::Action(action) => {
                        let shown = Box::pin(act(ctx, session, &id, session_id, action)).await;
                        if let Some(text) = shown {
                            show(text);
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
                    let _ = local_tx.try_send(Local::Show(Bytes::from(notice(&warning))));
                }
                Err(cut) => return cut,
            }
        }
    };

    let mut cut_relayed = false;
    let reason: Cow<'static, str> = tokio::select! {
        r = pump_output => r,
        r = pump_input => r.into(),
        () = ctx.ending.cancelled() => SHUTTING_DOWN.into(),
        reason = ctx.cut() => {
            // A session relayed here from another node resumes elsewhere.
            cut_relayed = session.via_node.is_some();
            reason.into()
        }
        cut = timer => {
            ctx.metrics.session_cut(&session.instance.id, cut.kind);
            tracing::info!(code = cut.code, principal = %session.principal.label(),
                instance = %session.instance.id, peer = %session.peer, via = %session.via,
                "session cut: {}", cut.message);
            ctx.store
                .record_audit(session.event(&id, AuditKind::Timeout, Some(cut.message.clone())))
                .await;
            cut.message.into()
        }
    };
    // Leave the hub at once: write access is free before anything else.
    drop(attachment);
    // A console that moved, or a relayed session's node going away, leaves
    // the session to resume where the console is held next.
    let moved =
        reason == MOVED || cut_relayed || (session.via_node.is_some() && reason == SHUTTING_DOWN);
    Ended {
        id,
        moved,
        reason,
        recording,
        bytes_in,
        bytes_out,
    }
}

/// Says goodbye (if the user can still hear it), finishes the recording and
/// writes the Detach row.
async fn close<W>(
    ctx: &AttachContext,
    session: &Attach,
    started: Instant,
    ended: Ended,
    screen: &mut W,
) where
    W: AsyncWrite + Unpin + Send,
{
    let Ended {
        id,
        reason,
        moved,
        recording,
        bytes_in,
        bytes_out,
    } = ended;
    // A session that moves is told where it resumes by its front end.
    let bye = if moved {
        notice(&reason)
    } else {
        notice(&format!("{reason}; bye"))
    };
    if !moved {
        // A user who has gone cannot be told; do not wait on them.
        let _ = tokio::time::timeout(Duration::from_secs(1), show(screen, bye.as_bytes())).await;
    }
    if let Some(mut r) = recording {
        r.output(bye.as_bytes()).await;
        r.finish().await;
    }
    let mut detach = session.event(&id, AuditKind::Detach, Some(reason.into_owned()));
    detach.bytes_in = Some(bytes_in);
    detach.bytes_out = Some(bytes_out);
    detach.duration_ms = Some(started.elapsed().as_millis() as u64);
    ctx.store.record_audit(detach).await;
}

/// Writes `bytes` and sends them on at once (a WebSocket holds a frame
/// until flushed).
async fn show<W: AsyncWrite + Unpin>(screen: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    screen.write_all(bytes).await?;
    screen.flush().await
}

/// An escape command other than disconnecting: what to show the user.
async fn act(
    ctx: &AttachContext,
    session: &Attach,
    id: &SessionRef,
    session_id: SessionId,
    action: EscapeAction,
) -> Option<Bytes> {
    let hub = &session.hub;
    let text = match action {
        EscapeAction::Disconnect => return None,
        EscapeAction::Help => HELP.to_owned(),
        EscapeAction::Break => {
            let message = match hub.send_break(session_id).await {
                Ok(()) => {
                    ctx.store
                        .record_audit(session.event(id, AuditKind::Break, None))
                        .await;
                    "break sent".to_owned()
                }
                Err(reason) => reason.to_string(),
            };
            notice(&message)
        }
        EscapeAction::Force => match hub.force(session_id).await {
            // Forcing is not allowed on this console.
            Ok(Some(Role::ReadOnlyWhile(writer))) => notice(&format!(
                "CG-INPUT-003 this console does not allow taking write access; \
                 {writer} keeps it until it leaves"
            )),
            Ok(Some(role)) => {
                ctx.store
                    .record_audit(session.event(id, AuditKind::Force, None))
                    .await;
                notice(match role {
                    Role::Writer => "you hold write access",
                    _ => "read-write (input shared by all sessions)",
                })
            }
            Ok(None) => notice("you are no longer attached"),
            Err(_) => return None,
        },
        EscapeAction::Who => who_text(&hub.who().await.ok()?, session_id),
        EscapeAction::Replay => {
            let history = hub.history(Replay::Lines(REPLAY_LINES)).await.ok()?;
            let mut text = notice(&format!("last {REPLAY_LINES} lines")).into_bytes();
            text.extend_from_slice(&history);
            text.extend_from_slice(notice("end of replay").as_bytes());
            return Some(Bytes::from(text));
        }
    };
    Some(Bytes::from(text))
}

/// From the input side to the one writer.
enum Local {
    /// Show this to the user.
    Show(Bytes),
    /// The user typed this, and it was sent to the hub: recorded if the
    /// hub lets the session write.
    Typed(Bytes),
}

/// The most [`Local`] entries a session's queue of them holds.
const LOCAL_QUEUE: usize = 16;

async fn start_recording(session: &Attach, id: u64) -> Option<Recording> {
    let instance = &session.instance;
    let dir = instance.record_dir.as_ref()?;
    if instance.record == RecordMode::Off {
        return None;
    }
    let (name, title) = match &session.principal {
        Principal::Key { connection_id, .. } => (
            format!(
                "{}-{id}",
                &connection_id[connection_id.len().saturating_sub(12)..]
            ),
            format!("{} via {connection_id}", instance.id),
        ),
        Principal::ConsoleToken { id: token } => (
            format!("web-{token}-{id}"),
            format!("{} via console token {token}", instance.id),
        ),
    };
    let header = RecordingHeader {
        cols: session.terminal.cols,
        rows: session.terminal.rows,
        term: session.terminal.term.as_deref(),
        title,
    };
    match Recording::create(
        dir,
        &instance.id,
        &name,
        header,
        instance.record == RecordMode::OutputAndInput,
        instance.record_max_bytes,
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

fn who_text(list: &[WhoEntry], me: u64) -> String {
    let mut text = format!("\r\n[{} session(s) attached:\r\n", list.len());
    for w in list {
        let via = match &w.info.via_node {
            Some(node) => format!(" via node {node}"),
            None => String::new(),
        };
        text.push_str(&format!(
            " {}{} {} from {}{via}, {}, {}s\r\n",
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

/// A message from the gateway, on a line of its own.
pub fn notice(message: &str) -> String {
    format!("\r\n[consolegate: {message}]\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_commands_run_in_a_burst_of_eight_then_four_a_second() {
        let mut budget = EscapeBudget::new();
        let allowed = (0..100).filter(|_| budget.allow()).count();
        // Refill while looping is microseconds' worth: at most one more.
        assert!((8..=9).contains(&allowed), "{allowed}");
        assert!(budget.tell());
        assert!(!budget.tell(), "told twice within a second");
        budget.last -= Duration::from_secs(1);
        let later = (0..100).filter(|_| budget.allow()).count();
        assert!((4..=5).contains(&later), "{later}");
    }
}
