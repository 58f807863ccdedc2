//! The load: console sessions held by russh clients in this process, each
//! in a task of its own (a *slot*) that attaches, types a line when told
//! and waits for its echo, detaches and attaches again when told, and
//! notices when the gateway ends its session unasked.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use russh::ChannelMsg;
use russh::client::{Handle, Msg};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::host::PinnedHost;

/// How long an attach (TCP, key exchange, authentication, channel, pty,
/// shell, banner) may take.
pub const ATTACH_LIMIT: Duration = Duration::from_secs(60);
/// How long a typed line's echo may take before it counts as lost.
pub const ECHO_LIMIT: Duration = Duration::from_secs(30);
/// The end of the gateway's banner: the session is attached.
const BANNER_END: &[u8] = b"&? for help]\r\n";
/// Attaches in progress at once.
const OPENING: usize = 64;

/// A slot's state, as the churn picks slots.
pub const DETACHED: u8 = 0;
/// Attached, nothing asked of it.
pub const IDLE: u8 = 1;
/// A command is on its way or a line awaits its echo.
pub const BUSY: u8 = 2;

/// What the load has done so far.
#[derive(Default, serde::Serialize)]
pub struct Counters {
    /// Sessions attached now (a gauge).
    pub held: AtomicU64,
    pub attaches: AtomicU64,
    pub attach_failures: AtomicU64,
    /// Detaches the churn asked for.
    pub detaches: AtomicU64,
    /// Sessions the gateway ended unasked.
    pub unexpected_ends: AtomicU64,
    pub echoes: AtomicU64,
    pub echoes_lost: AtomicU64,
    pub api_creates: AtomicU64,
    pub api_deletes: AtomicU64,
    pub api_failures: AtomicU64,
    /// Sessions of deleted connections that ended, as a delete promises.
    pub deleted_sessions_ended: AtomicU64,
    /// … and that did not within [`ATTACH_LIMIT`].
    pub deleted_sessions_lingering: AtomicU64,
}

impl Counters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Says how the first few of a kind of failure went; counts the rest.
fn note(kind: &str, count: u64, what: impl std::fmt::Display) {
    if count <= 5 {
        eprintln!("  {kind}: {what}");
    } else if count == 6 {
        eprintln!("  {kind}: more of these; only counted from now on");
    }
}

/// Everything a slot needs to attach.
pub struct Ctx {
    pub port: u16,
    config: Arc<russh::client::Config>,
    key: Arc<PrivateKey>,
    /// The key of the connections the API loop attaches through (a key
    /// has one active connection per instance: the held sessions' key
    /// has one on every instance).
    api_key: Arc<PrivateKey>,
    host_keys: Arc<Vec<PublicKey>>,
    opening: Semaphore,
    pub counters: Counters,
    /// Echo round trips, ms.
    pub echo_ms: Mutex<Vec<f32>>,
    /// Ends every slot.
    pub stop: CancellationToken,
}

impl Ctx {
    pub fn new(port: u16, key: PrivateKey, api_key: PrivateKey, host_keys: Vec<PublicKey>) -> Ctx {
        let config = crate::host::client_config();
        Ctx {
            port,
            config,
            key: Arc::new(key),
            api_key: Arc::new(api_key),
            host_keys: Arc::new(host_keys),
            opening: Semaphore::new(OPENING),
            counters: Counters::default(),
            echo_ms: Mutex::default(),
            stop: CancellationToken::new(),
        }
    }
}

/// An attached console session.
pub struct Session {
    handle: Handle<PinnedHost>,
    channel: russh::Channel<Msg>,
}

impl Session {
    /// Waits until the channel ends (the gateway ended the session), up to
    /// `limit`; whether it did.
    pub async fn ended_within(mut self, limit: Duration) -> bool {
        let ended = tokio::time::timeout(limit, async {
            loop {
                match self.channel.wait().await {
                    Some(ChannelMsg::Eof | ChannelMsg::Close) | None => return,
                    Some(_) => {}
                }
            }
        })
        .await
        .is_ok();
        self.leave().await;
        ended
    }

    async fn leave(self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

/// Attaches to the console of connection `user` with `key` (the outer
/// hop's console session: pty and shell), waits for the gateway's banner.
pub async fn attach(ctx: &Ctx, user: &str, key: &Arc<PrivateKey>) -> Result<Session> {
    let _permit = ctx.opening.acquire().await?;
    tokio::time::timeout(ATTACH_LIMIT, async {
        let mut handle = russh::client::connect(
            ctx.config.clone(),
            ("127.0.0.1", ctx.port),
            PinnedHost {
                host_keys: ctx.host_keys.clone(),
            },
        )
        .await
        .context("connect")?;
        let auth = handle
            .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key.clone(), None))
            .await
            .context("authenticate")?;
        if !auth.success() {
            bail!("the key was refused");
        }
        let mut channel = handle.channel_open_session().await.context("channel")?;
        channel
            .request_pty(false, "xterm", 80, 24, 0, 0, &[])
            .await?;
        channel.request_shell(false).await?;
        let mut seen = Vec::new();
        loop {
            match channel.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    seen.extend_from_slice(&data);
                    if find(&seen, BANNER_END).is_some() {
                        break;
                    }
                }
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => {
                    bail!("session ended: {:?}", String::from_utf8_lossy(&seen))
                }
                Some(_) => {}
            }
        }
        Ok(Session { handle, channel })
    })
    .await
    .context("timed out")?
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What the churn asks of a slot.
pub enum Cmd {
    /// Type a line and wait for its echo.
    Type,
    /// Detach, then attach again.
    Reattach,
}

/// The churn's handle on a slot.
pub struct Slot {
    pub state: Arc<AtomicU8>,
    tx: mpsc::Sender<Cmd>,
}

impl Slot {
    /// Asks `cmd` of the slot if it is attached and idle; whether it was asked.
    pub fn ask(&self, cmd: Cmd) -> bool {
        if self
            .state
            .compare_exchange(IDLE, BUSY, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.tx.try_send(cmd).is_ok()
    }
}

/// Starts slot `index`, attaching with connection `user`.
pub fn spawn_slot(ctx: Arc<Ctx>, index: usize, user: String) -> Slot {
    let state = Arc::new(AtomicU8::new(DETACHED));
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(run_slot(ctx, index, user, state.clone(), rx));
    Slot { state, tx }
}

enum End {
    Asked,
    Unasked(String),
    Stop,
}

async fn run_slot(
    ctx: Arc<Ctx>,
    index: usize,
    user: String,
    state: Arc<AtomicU8>,
    mut rx: mpsc::Receiver<Cmd>,
) {
    let c = &ctx.counters;
    let mut lines = 0u64;
    while !ctx.stop.is_cancelled() {
        let session = tokio::select! {
            s = attach(&ctx, &user, &ctx.key) => s,
            () = ctx.stop.cancelled() => break,
        };
        let Session { handle, channel } = match session {
            Ok(s) => s,
            Err(e) => {
                let n = c.attach_failures.fetch_add(1, Ordering::Relaxed) + 1;
                note("attach failed", n, format!("slot {index}: {e:#}"));
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = ctx.stop.cancelled() => break,
                }
            }
        };
        Counters::add(&c.attaches);
        c.held.fetch_add(1, Ordering::Relaxed);
        // A command left over from before a failed attach is void.
        while rx.try_recv().is_ok() {}
        state.store(IDLE, Ordering::Release);
        let (mut read, write) = channel.split();
        // The line awaiting its echo: its token and when it was typed.
        let mut pending: Option<(Vec<u8>, Instant)> = None;
        let mut seen: Vec<u8> = Vec::new();
        let end = loop {
            let deadline = pending
                .as_ref()
                .map_or_else(Instant::now, |(_, t)| *t + ECHO_LIMIT);
            tokio::select! {
                msg = read.wait() => match msg {
                    Some(ChannelMsg::Data { data }) => {
                        let Some((token, typed)) = &pending else { continue };
                        seen.extend_from_slice(&data);
                        if find(&seen, token).is_some() {
                            let ms = typed.elapsed().as_secs_f32() * 1000.0;
                            ctx.echo_ms.lock().unwrap().push(ms);
                            Counters::add(&c.echoes);
                            pending = None;
                            seen.clear();
                            state.store(IDLE, Ordering::Release);
                        } else if seen.len() > 16 * 1024 {
                            seen.drain(..seen.len() - token.len());
                        }
                    }
                    Some(ChannelMsg::Eof | ChannelMsg::Close) | None => {
                        break End::Unasked(String::from_utf8_lossy(&seen).into_owned());
                    }
                    Some(_) => {}
                },
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Type) => {
                        lines += 1;
                        let token = format!("s{index}l{lines}x");
                        let line = format!("echo {token}\r");
                        if let Err(e) = write.data(line.as_bytes()).await {
                            break End::Unasked(format!("typing failed: {e}"));
                        }
                        seen.clear();
                        pending = Some((token.into_bytes(), Instant::now()));
                    }
                    Some(Cmd::Reattach) => break End::Asked,
                    None => break End::Stop,
                },
                () = tokio::time::sleep_until(deadline.into()), if pending.is_some() => {
                    let n = c.echoes_lost.fetch_add(1, Ordering::Relaxed) + 1;
                    let (token, _) = pending.take().expect("pending");
                    note(
                        "echo lost",
                        n,
                        format!("slot {index}: no {:?} within {ECHO_LIMIT:?}", String::from_utf8_lossy(&token)),
                    );
                    seen.clear();
                    state.store(IDLE, Ordering::Release);
                }
                () = ctx.stop.cancelled() => break End::Stop,
            }
        };
        state.store(DETACHED, Ordering::Release);
        c.held.fetch_sub(1, Ordering::Relaxed);
        if pending.is_some() {
            // Only a session that ended unasked can leave a line behind.
            let n = c.echoes_lost.fetch_add(1, Ordering::Relaxed) + 1;
            note("echo lost", n, format!("slot {index}: its session ended"));
        }
        match end {
            End::Asked => Counters::add(&c.detaches),
            End::Unasked(ref last) => {
                let n = c.unexpected_ends.fetch_add(1, Ordering::Relaxed) + 1;
                note(
                    "session ended unasked",
                    n,
                    format!("slot {index}, last output {last:?}"),
                );
            }
            End::Stop => {}
        }
        drop(read);
        drop(write);
        let _ = handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
        if matches!(end, End::Stop) {
            break;
        }
    }
}

/// Loads the client key written by ssh-keygen.
pub fn load_key(path: &std::path::Path) -> Result<PrivateKey> {
    Ok(russh::keys::load_secret_key(path, None)?)
}

/// Counts for the API loop: a create, a session through the new
/// connection, a delete, and the session's end.
pub async fn api_session_round(
    ctx: &Ctx,
    api: &crate::gateway::Api,
    instance: &str,
    public_key: &str,
) -> Result<()> {
    let c = &ctx.counters;
    let created = api.create(instance, public_key).await?;
    Counters::add(&c.api_creates);
    let id = created["id"].as_str().context("no id")?.to_owned();
    let session = attach(ctx, &id, &ctx.api_key).await;
    api.delete(&id).await?;
    Counters::add(&c.api_deletes);
    let session = session.context("attach through a new connection")?;
    if session.ended_within(ATTACH_LIMIT).await {
        Counters::add(&c.deleted_sessions_ended);
    } else {
        let n = c.deleted_sessions_lingering.fetch_add(1, Ordering::Relaxed) + 1;
        note(
            "a deleted connection's session lived on",
            n,
            format!("{id}, {ATTACH_LIMIT:?} after its delete"),
        );
    }
    Ok(())
}

/// A create and a delete, nothing attached.
pub async fn api_round(
    ctx: &Ctx,
    api: &crate::gateway::Api,
    instance: &str,
    public_key: &str,
) -> Result<()> {
    let c = &ctx.counters;
    let created = api.create(instance, public_key).await?;
    Counters::add(&c.api_creates);
    let id = created["id"].as_str().context("no id")?;
    api.delete(id).await?;
    Counters::add(&c.api_deletes);
    Ok(())
}

/// Counts an API failure (and says what the first few were).
pub fn api_failed(ctx: &Ctx, e: &anyhow::Error) {
    let n = ctx.counters.api_failures.fetch_add(1, Ordering::Relaxed) + 1;
    note("API round failed", n, format!("{e:#}"));
}
