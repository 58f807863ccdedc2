//! The console hub: one per instance, owner of its serial backend.
//!
//! A serial console accepts one client (QEMU's chardev socket serves one at a
//! time), while any number of sessions may want it. The hub is one task that
//! holds the backend connection, opened at start-up and reopened with
//! backoff when it drops, and everything about who is attached:
//!
//! - output goes into the [`History`] (replayed on attach, kept whether or
//!   not anyone is attached), the optional on-disk [`ConsoleLog`], and each
//!   session's bounded queue;
//! - a session whose queue is full holds the console back only while it
//!   keeps reading (it takes something within every [`SLOW_VIEWER_GRACE`]),
//!   for at most that long per chunk, and only while it drains at least
//!   [`MIN_DRAIN_RATE`]: a viewer that reads a little now and then cannot
//!   set the console's (and the guest UART's) pace. One that stops reading,
//!   or drips, is skipped from then on (it is told how many bytes it missed
//!   when it catches up), or disconnected if it asked for `lag=disconnect`.
//!   Queues hold shared buffers, so memory is bounded by the queue length,
//!   not by the number of sessions times the output;
//! - input follows the instance's policy: `shared` (every read-write session
//!   types) or `exclusive` (one writer; the others are read-only and told
//!   who writes, until they force). A session that is gone holds nothing.
//!   A serial break is input too: only a session that may type sends one;
//!   a read-only session's break is refused and never reaches the backend;
//! - input is queued towards the backend and written while the hub reads
//!   its output, so a line that drains input slowly (a 9600-baud UART) never
//!   holds the output back from anyone. At most [`INPUT_IN_FLIGHT`] bytes
//!   of input wait at once: past that, typing sessions wait their turn
//!   (their SSH channels stop taking more), nothing is dropped or reordered.
//!
//! Sessions talk to the hub through [`ConsoleHub`]; all state lives in the
//! task, so there are no locks.
//!
//! Beside this file: `hub/status.rs`, what a hub reports ([`HubStatus`]),
//! and `hub/registry.rs`, the hubs of all instances ([`ConsoleHubs`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::backend::{BackendConnection, Io};
use super::history::{History, Replay};
use super::logfile::ConsoleLog;
use super::queue::{self, TrySendError};
use crate::config::{InputPolicy, InstanceConfig};

/// Events a session may have queued before it counts as falling behind.
const SESSION_QUEUE: usize = 128;
/// How long a full queue of a session that is still reading may hold the
/// console back before that session is skipped.
pub const SLOW_VIEWER_GRACE: Duration = Duration::from_millis(500);
/// A session holding the console back must take at least this many bytes
/// a second while it does (four times a 115,200-baud line).
pub const MIN_DRAIN_RATE: u64 = 64 * 1024;
/// The window over which that rate is judged.
const DRAIN_WINDOW: Duration = Duration::from_secs(2);
/// Quiet time between the last keystroke and a break.
const BREAK_QUIET: Duration = Duration::from_millis(250);
/// How long a status query waits for a busy hub.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Commands queued towards the hub.
const COMMAND_CAPACITY: usize = 256;
/// Bytes of input sent to a hub and not yet written to its backend, at
/// most (the sessions' share, whatever their number).
pub const INPUT_IN_FLIGHT: usize = 64 * 1024;
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why a hub's sessions end when its node lets go of the console (another
/// node of the fleet holds it now); sessions that came through another node
/// resume there.
pub const MOVED: &str = "CG-FLEET-001 the console moved to another node of the fleet";
/// What a hub reports while its node does not hold the console.
const NOT_HELD: &str = "CG-FLEET-001 this node does not hold the console now";

/// Identifies a session within its hub.
pub type SessionId = u64;

/// Something a session shows.
#[derive(Debug, Clone)]
pub enum ConsoleEvent {
    /// Bytes the machine printed.
    Output(Bytes),
    /// The session fell behind and this many bytes of output were skipped.
    Missed(u64),
    /// A message from the gateway.
    Notice(String),
    /// The console was closed to sessions (its instance was removed or
    /// changed by a reload); the session should end, saying why.
    Closed(String),
}

/// What a session receives when it attaches.
#[derive(Debug)]
pub struct Attachment {
    /// Its id within the hub.
    pub id: SessionId,
    /// Recent output, as asked for.
    pub replay: Vec<u8>,
    /// Why the console is not connected, if it is not.
    pub unavailable: Option<String>,
    /// Everything from now on.
    pub events: queue::Receiver<ConsoleEvent>,
    /// Where it stands.
    pub role: Role,
    progress: Arc<AtomicU64>,
    can_write: Arc<AtomicBool>,
}

impl Attachment {
    /// The next event; also tells the hub this session is still reading.
    pub async fn recv(&mut self) -> Option<ConsoleEvent> {
        let event = self.events.recv().await;
        self.progress.store(clock_ms(), Ordering::Relaxed);
        event
    }

    /// Whether what this session types reaches the console now (it is not
    /// read-only by choice, and no one else holds exclusive write access).
    pub fn can_write(&self) -> bool {
        self.can_write.load(Ordering::Relaxed)
    }
}

/// The hub has stopped (the gateway is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("CG-OPS-001 the console hub has stopped (the gateway is shutting down)")]
pub struct HubStopped;

enum HubCommand {
    Attach {
        info: SessionInfo,
        replay: Replay,
        reply: oneshot::Sender<Attachment>,
    },
    Input(SessionId, Bytes, tokio::sync::OwnedSemaphorePermit),
    Break(SessionId, oneshot::Sender<Result<(), BreakError>>),
    Force(SessionId, oneshot::Sender<Option<Role>>),
    Who(oneshot::Sender<Vec<WhoEntry>>),
    Status(oneshot::Sender<HubStatus>),
    Retire(String),
    Replay(Replay, oneshot::Sender<Vec<u8>>),
}

/// A handle on an instance's console hub; cheap to clone.
#[derive(Clone)]
pub struct ConsoleHub {
    instance: Arc<InstanceConfig>,
    commands: mpsc::Sender<HubCommand>,
    /// [`INPUT_IN_FLIGHT`], shared by the sessions' input.
    input_budget: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for ConsoleHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleHub")
            .field("instance", &self.instance.id)
            .finish_non_exhaustive()
    }
}

impl ConsoleHub {
    /// Starts the hub task for `instance`, holding its console; it stops
    /// when `shutdown` is cancelled.
    pub fn start(
        instance: InstanceConfig,
        shutdown: CancellationToken,
    ) -> (ConsoleHub, tokio::task::JoinHandle<()>) {
        let (hub, task) = ConsoleHub::new(instance, shutdown, watch::channel(true).1);
        (hub, tokio::spawn(task))
    }

    /// A handle and the hub task behind it, for the caller to spawn (and
    /// own). The hub connects to the backend only while `held` says this
    /// node holds the console, and lets go of it the moment it says not.
    fn new(
        instance: InstanceConfig,
        shutdown: CancellationToken,
        held: watch::Receiver<bool>,
    ) -> (ConsoleHub, impl Future<Output = ()> + Send + 'static) {
        let instance = Arc::new(instance);
        let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
        let task = run_hub(instance.clone(), rx, shutdown, held);
        let hub = ConsoleHub {
            instance,
            commands: tx,
            input_budget: Arc::new(tokio::sync::Semaphore::new(INPUT_IN_FLIGHT)),
        };
        (hub, task)
    }

    /// The instance this hub serves.
    pub fn instance(&self) -> &InstanceConfig {
        &self.instance
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> HubCommand,
    ) -> Result<T, HubStopped> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| HubStopped)?;
        rx.await.map_err(|_| HubStopped)
    }

    /// Attaches a session: the replay it asked for plus everything that
    /// follows, with nothing lost or repeated in between. `None` replays the
    /// instance's default.
    pub async fn attach(
        &self,
        info: SessionInfo,
        replay: Option<Replay>,
    ) -> Result<Attachment, HubStopped> {
        let replay = replay.unwrap_or(self.instance.replay);
        self.ask(|reply| HubCommand::Attach {
            info,
            replay,
            reply,
        })
        .await
    }

    /// Sends typed bytes (dropped if the session may not write, which it is
    /// told, or while the console is disconnected). Waits while
    /// [`INPUT_IN_FLIGHT`] bytes of input are on their way to the backend.
    pub async fn input(&self, session: SessionId, data: Bytes) -> Result<(), HubStopped> {
        let share = data.len().clamp(1, INPUT_IN_FLIGHT) as u32;
        let permit = self
            .input_budget
            .clone()
            .acquire_many_owned(share)
            .await
            .map_err(|_| HubStopped)?;
        self.commands
            .send(HubCommand::Input(session, data, permit))
            .await
            .map_err(|_| HubStopped)
    }

    /// Sends a serial break for `session`, which needs write access as
    /// typing does (refused with [`BreakError::ReadOnly`] otherwise; in
    /// exclusive mode a break takes free write access, as typing does).
    pub async fn send_break(&self, session: SessionId) -> Result<(), BreakError> {
        self.ask(|reply| HubCommand::Break(session, reply)).await?
    }

    /// Takes write access for `session`: its role now, or `None` if it is
    /// no longer attached.
    pub async fn force(&self, session: SessionId) -> Result<Option<Role>, HubStopped> {
        self.ask(|reply| HubCommand::Force(session, reply)).await
    }

    /// The backend's state, counters and the attached sessions.
    pub async fn status(&self) -> Result<HubStatus, HubStopped> {
        self.ask(HubCommand::Status).await
    }

    /// Ends every session with `reason` and stops the hub (its backend
    /// connection closes).
    pub async fn retire(&self, reason: String) {
        let _ = self.commands.send(HubCommand::Retire(reason)).await;
    }

    /// Everyone attached.
    pub async fn who(&self) -> Result<Vec<WhoEntry>, HubStopped> {
        self.ask(HubCommand::Who).await
    }

    /// Recent output, as `replay` selects it.
    pub async fn history(&self, replay: Replay) -> Result<Vec<u8>, HubStopped> {
        self.ask(|reply| HubCommand::Replay(replay, reply)).await
    }
}

fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    // Never 0, which means "has not read yet".
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

struct Session {
    id: SessionId,
    info: SessionInfo,
    tx: queue::Sender<ConsoleEvent>,
    progress: Arc<AtomicU64>,
    /// Shared with the session's [`Attachment`]: whether its input goes through.
    can_write: Arc<AtomicBool>,
    /// Bytes skipped since the session fell behind.
    lagging: Option<u64>,
    /// How long it held the console back, and what it took meanwhile, in
    /// the current [`DRAIN_WINDOW`].
    held_back: HeldBack,
    wants_write: bool,
    told_read_only: bool,
    since: Instant,
    since_wall: time::OffsetDateTime,
    counters: SessionCounters,
}

impl Session {
    fn label(&self) -> String {
        format!(
            "session {} ({}, from {})",
            self.id,
            self.info.principal.label(),
            self.info.peer
        )
    }

    fn notify(&self, message: impl Into<String>) {
        let _ = self.tx.try_send(ConsoleEvent::Notice(message.into()));
    }

    fn reading_recently(&self) -> bool {
        let last = self.progress.load(Ordering::Relaxed);
        last > 0 && clock_ms().saturating_sub(last) < SLOW_VIEWER_GRACE.as_millis() as u64
    }
}

struct Hub {
    instance: Arc<InstanceConfig>,
    history: History,
    log: Option<ConsoleLog>,
    sessions: Vec<Session>,
    writer: Option<SessionId>,
    unavailable: Option<String>,
    next_id: SessionId,
    /// Replies to the breaks queued on the backend connection, in order.
    breaks: std::collections::VecDeque<oneshot::Sender<Result<(), BreakError>>>,
    counters: HubCounters,
}

impl Hub {
    fn live(&self, id: SessionId) -> Option<&Session> {
        self.sessions
            .iter()
            .find(|s| s.id == id && !s.tx.is_closed())
    }

    fn prune(&mut self) {
        self.sessions.retain(|s| !s.tx.is_closed());
        if self.writer.is_some_and(|w| self.live(w).is_none()) {
            self.writer = None;
        }
        self.refresh_write_flags();
    }

    /// Whether `s`'s typing would reach the console now.
    fn session_can_write(&self, s: &Session) -> bool {
        s.wants_write
            && match self.instance.input {
                InputPolicy::Shared => true,
                InputPolicy::Exclusive => self.writer.is_none_or(|w| w == s.id),
            }
    }

    /// Tells every session whether it may write (after roles changed).
    fn refresh_write_flags(&self) {
        for s in &self.sessions {
            s.can_write
                .store(self.session_can_write(s), Ordering::Relaxed);
        }
    }

    /// Tells every session the console is closed to it; dropping the hub
    /// then ends their queues.
    fn close_all(&mut self, reason: &str) {
        tracing::info!(instance = %self.instance.id, sessions = self.sessions.len(), %reason,
            "console hub retired");
        for s in &self.sessions {
            let _ = s.tx.try_send(ConsoleEvent::Closed(reason.to_owned()));
        }
        self.sessions.clear();
    }

    /// The node let go of the console: every session is told it moved
    /// (dropping their queues), and the hub waits to hold it again.
    fn disown(&mut self) {
        tracing::info!(instance = %self.instance.id, sessions = self.sessions.len(),
            "console no longer held by this node");
        for s in &self.sessions {
            let _ = s.tx.try_send(ConsoleEvent::Closed(MOVED.to_owned()));
        }
        self.sessions.clear();
        self.writer = None;
        self.set_unavailable(Some(NOT_HELD.to_owned()));
    }

    fn notify_all(&self, message: &str) {
        for s in &self.sessions {
            s.notify(message);
        }
    }

    fn set_unavailable(&mut self, reason: Option<String>) {
        match &reason {
            Some(r) => self.notify_all(r),
            None if self.unavailable.is_some() => self.notify_all("console connected"),
            None => {}
        }
        if reason.is_none() {
            if self.counters.ever_connected {
                self.counters.reconnects += 1;
            }
            self.counters.ever_connected = true;
        }
        if reason.is_some() != self.unavailable.is_some() || reason.is_none() {
            self.counters.state_since = time::OffsetDateTime::now_utc();
        }
        self.unavailable = reason;
    }

    fn attach(&mut self, info: SessionInfo, replay: Replay) -> Attachment {
        self.prune();
        let (tx, rx) = queue::queue(SESSION_QUEUE);
        let id = self.next_id;
        self.next_id += 1;
        // Not reading until it has taken something from its queue.
        let progress = Arc::new(AtomicU64::new(0));
        let can_write = Arc::new(AtomicBool::new(false));
        let force = info.force;
        let wants_write = !info.read_only;
        self.sessions.push(Session {
            id,
            info,
            tx,
            progress: progress.clone(),
            can_write: can_write.clone(),
            lagging: None,
            held_back: HeldBack::default(),
            wants_write,
            told_read_only: false,
            since: Instant::now(),
            since_wall: time::OffsetDateTime::now_utc(),
            counters: SessionCounters::default(),
        });
        let role = if force {
            self.force(id).unwrap_or(Role::ReadOnlyAsked)
        } else if !wants_write {
            Role::ReadOnlyAsked
        } else {
            match self.instance.input {
                InputPolicy::Shared => Role::ReadWrite,
                InputPolicy::Exclusive => match self.writer.and_then(|w| self.live(w)) {
                    Some(w) => Role::ReadOnlyWhile(w.label()),
                    None => {
                        self.writer = Some(id);
                        Role::Writer
                    }
                },
            }
        };
        self.refresh_write_flags();
        Attachment {
            id,
            replay: self.history.select(replay),
            unavailable: self.unavailable.clone(),
            events: rx,
            role,
            progress,
            can_write,
        }
    }

    /// Whether `id` may type now (taking free write access in exclusive mode).
    fn may_write(&mut self, id: SessionId) -> bool {
        self.prune();
        let Some(index) = self.sessions.iter().position(|s| s.id == id) else {
            return false;
        };
        if !self.sessions[index].wants_write {
            return false;
        }
        match self.instance.input {
            InputPolicy::Shared => true,
            InputPolicy::Exclusive => match self.writer {
                Some(w) => w == id,
                None => {
                    self.writer = Some(id);
                    let label = self.sessions[index].label();
                    for s in self.sessions.iter().filter(|s| s.id != id) {
                        s.notify(format!("{label} now has write access"));
                    }
                    self.sessions[index].notify("you have write access");
                    true
                }
            },
        }
    }

    fn force(&mut self, id: SessionId) -> Option<Role> {
        self.prune();
        let index = self.sessions.iter().position(|s| s.id == id)?;
        // Where forcing is not allowed, a writer keeps its access; only
        // free access can be taken.
        if self.instance.input == InputPolicy::Exclusive
            && !self.instance.allow_force
            && let Some(writer) = self.writer.filter(|&w| w != id).and_then(|w| self.live(w))
        {
            return Some(Role::ReadOnlyWhile(writer.label()));
        }
        self.sessions[index].wants_write = true;
        self.sessions[index].told_read_only = false;
        let label = self.sessions[index].label();
        if self.instance.input == InputPolicy::Shared {
            return Some(Role::ReadWrite);
        }
        let previous = self.writer.replace(id);
        if let Some(old) = previous.filter(|&o| o != id)
            && let Some(s) = self.sessions.iter_mut().find(|s| s.id == old)
        {
            s.wants_write = false;
            s.notify(format!(
                "CG-INPUT-002 {label} took write access; you are read-only now (&F takes it back)"
            ));
            tracing::info!(instance = %self.instance.id, from = old, to = id, "write access forced");
        }
        for s in self
            .sessions
            .iter()
            .filter(|s| s.id != id && Some(s.id) != previous)
        {
            s.notify(format!("{label} now has write access"));
        }
        Some(Role::Writer)
    }

    /// Where `s` stands now.
    fn role_of(&self, s: &Session) -> Role {
        let writer = self.writer.and_then(|w| self.live(w));
        if self.writer == Some(s.id) {
            Role::Writer
        } else if s.wants_write && self.instance.input == InputPolicy::Shared {
            Role::ReadWrite
        } else if s.wants_write || !s.info.read_only {
            // Exclusive input: another session writes (or took write access
            // from this one); with no writer, the next typist takes it.
            match writer {
                Some(w) => Role::ReadOnlyWhile(w.label()),
                None if s.wants_write => Role::ReadWrite,
                None => Role::ReadOnlyAsked,
            }
        } else {
            Role::ReadOnlyAsked
        }
    }

    fn who(&mut self) -> Vec<WhoEntry> {
        self.prune();
        self.sessions
            .iter()
            .map(|s| WhoEntry {
                id: s.id,
                info: s.info.clone(),
                role: self.role_of(s),
                attached_for: s.since.elapsed(),
            })
            .collect()
    }

    async fn publish(&mut self, data: &[u8]) {
        self.counters.bytes_from_console += data.len() as u64;
        self.counters.last_output = Some(time::OffsetDateTime::now_utc());
        self.history.push(data);
        if let Some(log) = &mut self.log {
            log.write(data).await;
        }
        let bytes = Bytes::copy_from_slice(data);
        let mut gone = Vec::new();
        for index in 0..self.sessions.len() {
            let session = &mut self.sessions[index];
            let skipped_before = session.counters.skipped_bytes;
            if !deliver(session, &bytes).await {
                gone.push(session.id);
            }
            self.counters.skipped_bytes += session.counters.skipped_bytes - skipped_before;
        }
        if !gone.is_empty() {
            // Dropping the queue tells the session.
            self.sessions.retain(|s| !gone.contains(&s.id));
            self.prune();
        }
    }

    async fn handle(
        &mut self,
        command: HubCommand,
        conn: Option<&mut BackendConnection>,
    ) -> Result<(), String> {
        match command {
            HubCommand::Attach {
                info,
                replay,
                reply,
            } => {
                let _ = reply.send(self.attach(info, replay));
            }
            HubCommand::Input(id, data, permit) => {
                if let Some(s) = self.sessions.iter_mut().find(|s| s.id == id) {
                    s.counters.bytes_in += data.len() as u64;
                }
                if self.may_write(id) {
                    if let Some(conn) = conn {
                        // Written while the hub reads (see `pump`).
                        conn.queue(&data, Some(permit));
                        self.counters.bytes_to_console += data.len() as u64;
                    }
                } else if let Some(s) = self.sessions.iter_mut().find(|s| s.id == id)
                    && !s.told_read_only
                {
                    s.told_read_only = true;
                    s.notify(
                        "CG-INPUT-001 you are read-only here: your typing is not sent (&F takes write access)",
                    );
                }
            }
            HubCommand::Break(id, reply) => {
                // A break is input: a session that may not type (attached
                // `ro`, or read-only while another session holds exclusive
                // write access) may not break either; it never reaches the
                // backend.
                if !self.may_write(id) {
                    if let Some(s) = self.sessions.iter().find(|s| s.id == id) {
                        tracing::info!(code = "CG-INPUT-001", instance = %self.instance.id,
                            session = %s.label(), "break refused: the session has no write access");
                    }
                    let _ = reply.send(Err(BreakError::ReadOnly));
                } else if let Some(conn) = conn {
                    // Sent once the input typed before it is written (see
                    // `pump`), and answered then.
                    conn.queue_break();
                    self.breaks.push_back(reply);
                } else {
                    let _ = reply.send(Err(BreakError::NotConnected));
                }
            }
            HubCommand::Force(id, reply) => {
                let _ = reply.send(self.force(id));
            }
            HubCommand::Who(reply) => {
                let _ = reply.send(self.who());
            }
            HubCommand::Status(reply) => {
                let _ = reply.send(self.status());
            }
            // Taken by the run loop before it gets here.
            HubCommand::Retire(reason) => self.close_all(&reason),
            HubCommand::Replay(replay, reply) => {
                let _ = reply.send(self.history.select(replay));
            }
        }
        // Roles may have changed (write access taken, forced or freed).
        self.refresh_write_flags();
        Ok(())
    }
}

/// How long a session held the console back in a window, and how much it
/// took meanwhile.
#[derive(Debug, Default)]
struct HeldBack {
    since: Option<Instant>,
    waited: Duration,
    bytes: u64,
    /// It held back too long for too little: skip it without waiting
    /// until it has caught up (its queue has room again).
    slow: bool,
}

impl HeldBack {
    /// Counts a wait of `waited` for `bytes`; returns whether the session
    /// is now too slow to wait for.
    fn record(&mut self, waited: Duration, bytes: u64) -> bool {
        let now = Instant::now();
        if self.since.is_none_or(|since| now - since > DRAIN_WINDOW) {
            self.since = Some(now);
            self.waited = Duration::ZERO;
            self.bytes = 0;
        }
        self.waited += waited;
        self.bytes += bytes;
        let rate = self.bytes as f64 / self.waited.as_secs_f64().max(1e-6);
        if self.waited > SLOW_VIEWER_GRACE && rate < MIN_DRAIN_RATE as f64 {
            self.slow = true;
        }
        self.slow
    }
}

/// Queues output for one session. Returns `false` if it must be dropped.
async fn deliver(s: &mut Session, bytes: &Bytes) -> bool {
    let len = bytes.len() as u64;
    if let Some(missed) = s.lagging {
        match s.tx.try_send(ConsoleEvent::Missed(missed)) {
            Ok(()) => s.lagging = None,
            Err(TrySendError::Full(_)) => {
                s.lagging = Some(missed + len);
                s.counters.skipped_bytes += len;
                return true;
            }
            Err(TrySendError::Closed) => return false,
        }
    }
    match s.tx.try_send(ConsoleEvent::Output(bytes.clone())) {
        Ok(()) => {
            // It has caught up.
            s.held_back.slow = false;
            s.counters.bytes_out += len;
            true
        }
        Err(TrySendError::Closed) => false,
        Err(TrySendError::Full(event)) => {
            // Wait while the session keeps reading, for one grace period
            // per chunk at most, unless it has been draining too slowly.
            let started = Instant::now();
            if !s.held_back.slow && s.reading_recently() {
                match tokio::time::timeout(SLOW_VIEWER_GRACE, s.tx.send(event)).await {
                    Ok(Ok(())) => {
                        s.counters.bytes_out += len;
                        s.held_back.record(started.elapsed(), len);
                        return true;
                    }
                    Ok(Err(_)) => return false,
                    Err(_) => {
                        s.held_back.record(started.elapsed(), 0);
                    }
                }
            }
            if s.info.disconnect_when_lagging {
                return false;
            }
            s.lagging = Some(len);
            s.counters.lag_drops += 1;
            s.counters.skipped_bytes += len;
            true
        }
    }
}

async fn run_hub(
    instance: Arc<InstanceConfig>,
    mut commands: mpsc::Receiver<HubCommand>,
    shutdown: CancellationToken,
    mut held: watch::Receiver<bool>,
) {
    let log = match &instance.log_file {
        Some(path) => {
            match ConsoleLog::open(path.clone(), instance.log_max_bytes, instance.log_keep).await {
                Ok(log) => Some(log),
                Err(e) => {
                    tracing::error!(code = "CG-LOG-001", instance = %instance.id, path = %path.display(),
                        error = %e, "cannot open the console log; continuing without it");
                    None
                }
            }
        }
        None => None,
    };
    let mut hub = Hub {
        history: History::new(instance.history_bytes),
        instance,
        log,
        sessions: Vec::new(),
        writer: None,
        unavailable: Some("CG-CONS-003 connecting to the console".into()),
        next_id: 1,
        breaks: std::collections::VecDeque::new(),
        counters: HubCounters::default(),
    };
    let target = hub.instance.serial.clone();
    let mut backoff = MIN_BACKOFF;
    let mut last_error = String::new();
    loop {
        let holds = *held.borrow_and_update();
        if !holds {
            if hub.unavailable.as_deref() != Some(NOT_HELD) {
                hub.set_unavailable(Some(NOT_HELD.to_owned()));
            }
            if !wait_held(&mut hub, &mut commands, &shutdown, &mut held).await {
                return;
            }
            hub.set_unavailable(Some("CG-CONS-003 connecting to the console".into()));
            backoff = MIN_BACKOFF;
            last_error.clear();
        }
        let connected = tokio::select! {
            c = BackendConnection::connect(&target, &hub.instance.id) => c,
            () = shutdown.cancelled() => return,
            () = let_go(&mut held) => {
                hub.disown();
                continue;
            }
        };
        match connected {
            Ok(mut conn) => {
                tracing::info!(instance = %hub.instance.id, %target, "console connected");
                hub.set_unavailable(None);
                backoff = MIN_BACKOFF;
                last_error.clear();
                let pumped = pump(&mut hub, &mut conn, &mut commands, &shutdown, &mut held).await;
                // Breaks still queued were never sent.
                for reply in hub.breaks.drain(..) {
                    let _ = reply.send(Err(BreakError::NotConnected));
                }
                let reason = match pumped {
                    PumpEnd::Stop => return,
                    PumpEnd::LetGo => {
                        // Closed before anything else: another node may
                        // connect the moment the lease is free.
                        drop(conn);
                        hub.disown();
                        continue;
                    }
                    PumpEnd::Lost(reason) => reason,
                };
                tracing::warn!(code = "CG-CONS-002", instance = %hub.instance.id, %target, %reason,
                    "console connection lost");
                hub.set_unavailable(Some(format!(
                    "CG-CONS-002 console connection lost ({reason}); reconnecting"
                )));
            }
            Err(e) => {
                let message =
                    format!("CG-CONS-001 console {target} is unavailable ({e}); retrying");
                if message != last_error {
                    tracing::warn!(code = "CG-CONS-001", instance = %hub.instance.id, %target, error = %e,
                        "console unavailable");
                    hub.set_unavailable(Some(message.clone()));
                    last_error = message;
                }
            }
        }
        if !wait_disconnected(&mut hub, &mut commands, &shutdown, backoff, &mut held).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Resolves when the node lets go of the console (never, if the flag's
/// owner is gone: the hub is then retired or stopped).
async fn let_go(held: &mut watch::Receiver<bool>) {
    if held.wait_for(|h| !*h).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves when the node holds the console: `true`, or `false` if the
/// flag's owner is gone.
async fn take_hold(held: &mut watch::Receiver<bool>) -> bool {
    held.wait_for(|h| *h).await.is_ok()
}

/// How a connected hub stopped pumping.
enum PumpEnd {
    /// The hub must stop.
    Stop,
    /// The node let go of the console.
    LetGo,
    /// The connection was lost, for this reason.
    Lost(String),
}

/// Serves sessions while the node does not hold the console, until it
/// does. Returns `false` when the hub must stop.
async fn wait_held(
    hub: &mut Hub,
    commands: &mut mpsc::Receiver<HubCommand>,
    shutdown: &CancellationToken,
    held: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        tokio::select! {
            holds = take_hold(held) => return holds,
            command = commands.recv() => if !serve_disconnected(hub, command).await {
                return false;
            },
            () = shutdown.cancelled() => return false,
        }
    }
}

/// Serves a command while the backend is not connected (input is dropped,
/// breaks refused). Returns `false` when the hub must stop.
async fn serve_disconnected(hub: &mut Hub, command: Option<HubCommand>) -> bool {
    match command {
        Some(HubCommand::Retire(reason)) => {
            hub.close_all(&reason);
            false
        }
        Some(command) => {
            let _ = hub.handle(command, None).await;
            true
        }
        None => false,
    }
}

/// Moves bytes while connected, until the connection ends, the node lets
/// go of the console or the hub must stop.
async fn pump(
    hub: &mut Hub,
    conn: &mut BackendConnection,
    commands: &mut mpsc::Receiver<HubCommand>,
    shutdown: &CancellationToken,
    held: &mut watch::Receiver<bool>,
) -> PumpEnd {
    let mut out = Vec::with_capacity(16 * 1024);
    loop {
        tokio::select! {
            biased;
            () = let_go(held) => return PumpEnd::LetGo,
            // Output, while queued input is written as the line takes it.
            io = conn.next_io() => match io {
                Ok(Io::Read(0)) => return PumpEnd::Lost("the console closed the connection".into()),
                Ok(Io::Read(n)) => {
                    conn.decode(n, &mut out);
                    if !out.is_empty() {
                        hub.publish(&out).await;
                    }
                }
                Ok(Io::BreakDue) => {
                    // Let the machine read what was typed just before: emulated
                    // UARTs (QEMU's 16550) flag a break on whatever byte is first
                    // in the FIFO, so a break hard on the heels of a keystroke
                    // lands on that keystroke instead.
                    if let Some(at) = conn.last_written() {
                        tokio::time::sleep(BREAK_QUIET.saturating_sub(at.elapsed())).await;
                    }
                    let result = conn.send_break().await.map_err(BreakError::from);
                    if let Some(reply) = hub.breaks.pop_front() {
                        let _ = reply.send(result);
                    }
                }
                Err(e) => return PumpEnd::Lost(e.to_string()),
            },
            command = commands.recv() => match command {
                Some(HubCommand::Retire(reason)) => {
                    hub.close_all(&reason);
                    return PumpEnd::Stop;
                }
                Some(command) => {
                    if let Err(e) = hub.handle(command, Some(conn)).await {
                        return PumpEnd::Lost(e);
                    }
                }
                None => return PumpEnd::Stop,
            },
            () = shutdown.cancelled() => return PumpEnd::Stop,
        }
    }
}

/// Waits out a backoff while disconnected, still serving sessions (input
/// is dropped, breaks refused). Returns `false` when the hub must stop.
async fn wait_disconnected(
    hub: &mut Hub,
    commands: &mut mpsc::Receiver<HubCommand>,
    shutdown: &CancellationToken,
    backoff: Duration,
    held: &mut watch::Receiver<bool>,
) -> bool {
    let sleep = tokio::time::sleep(backoff);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return true,
            () = let_go(held) => {
                hub.disown();
                return true;
            }
            command = commands.recv() => if !serve_disconnected(hub, command).await {
                return false;
            },
            () = shutdown.cancelled() => return false,
        }
    }
}

mod registry;
mod status;
mod who;
pub use registry::ConsoleHubs;
use status::{HubCounters, SessionCounters};
pub use status::{HubStatus, SessionStatus};
pub use who::{BreakError, Principal, Role, SessionInfo, WhoEntry};

#[cfg(test)]
mod tests;
