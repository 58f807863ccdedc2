//! Measurement 7: the server's own connection-rate ceiling, with a russh
//! load client instead of `ssh` processes.
//!
//! The `rate` measurement's 32 `ssh` clients (64 processes with their
//! ProxyCommands) fill both cores before the gateway does. Here the load
//! client is this bench binary re-run as a child process (`--rate-client`),
//! so that its CPU is never counted as the server's. Each attempt is a
//! nested console connection, as `connectionString` makes one: the outer hop
//! (TCP connect, key exchange, public key authentication), a `direct-tcpip`
//! channel to the inner host, a second SSH session over that channel
//! (authenticated with the same key), a session channel with a pty and a
//! shell (sshd: the console command), and the console's [`READY`]; then
//! both hops disconnect. Time to console runs from the TCP connect to
//! [`READY`].
//!
//! The load is open-loop: a step starts attempts on a fixed schedule at an
//! offered rate for a window, whatever state the server is in, with at most
//! [`IN_FLIGHT`] attempts in flight; an attempt due while the cap is full is
//! shed and counted as a failure, so an overloaded server shows as failures
//! and latency, not as unbounded client memory. The child reads commands on
//! stdin: `step RATE SECS` runs one step and prints its [`ClientStep`] as
//! one JSON line. The parent reads the serving side's CPU (and the
//! client's) around each step.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use russh::ChannelMsg;
use russh::client::{Config, Handle, Msg};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::host::PinnedHost;
use crate::rlimit::raise_nofile;
use crate::setup::{READY, System, World, find, sshd_console_command};
use crate::stats::{self, percentile};

/// Attempts in flight at most (set-up and teardown alike).
pub const IN_FLIGHT: usize = 512;

/// How long an attempt may take from its TCP connect to [`READY`] before it
/// counts as failed.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(10);

/// How long each hop's teardown is waited for.
const TEARDOWN_LIMIT: Duration = Duration::from_secs(5);

/// Slack on top of a step's longest possible duration before the parent
/// gives up on the client.
const LATE: Duration = Duration::from_secs(60);

/// A step with a larger share of failed (or shed) attempts ends the ladder.
pub const MAX_FAILURE_SHARE: f64 = 0.01;

/// A step with a slower p99 time to console (ms) ends the ladder.
pub const MAX_P99_MS: f64 = 1000.0;

/// One hop of the nested connection: where it goes and as whom.
struct Hop {
    /// The host name (sent in `direct-tcpip`, and looked up in known_hosts).
    host: String,
    port: u16,
    /// The user name to authenticate as.
    user: String,
}

/// The rate client's arguments (after `--rate-client`): `OUTER_PORT
/// OUTER_USER INNER_HOST INNER_PORT INNER_USER KEY KNOWN_HOSTS [COMMAND]`.
/// The outer hop is always on 127.0.0.1; without COMMAND the inner session
/// asks for a shell.
pub struct RateArgs {
    outer: Hop,
    inner: Hop,
    /// The private key both hops authenticate with.
    key: PathBuf,
    /// The file both hops' host keys are pinned from.
    known_hosts: PathBuf,
    /// What the inner session runs instead of a shell.
    command: Option<String>,
}

impl RateArgs {
    /// Parses the arguments that follow `--rate-client`.
    pub fn parse(args: &[String]) -> Result<RateArgs> {
        let get = |i: usize| {
            args.get(i)
                .cloned()
                .context("rate client: missing argument")
        };
        Ok(RateArgs {
            outer: Hop {
                host: "127.0.0.1".into(),
                port: get(0)?.parse()?,
                user: get(1)?,
            },
            inner: Hop {
                host: get(2)?,
                port: get(3)?.parse()?,
                user: get(4)?,
            },
            key: get(5)?.into(),
            known_hosts: get(6)?.into(),
            command: args.get(7).cloned(),
        })
    }
}

/// What the client needs for every attempt, loaded once.
struct Ctx {
    args: RateArgs,
    /// The benches' russh client settings, for both hops.
    config: Arc<Config>,
    key: Arc<PrivateKey>,
    /// Host keys the outer hop may present.
    outer_keys: Arc<Vec<PublicKey>>,
    /// Host keys the inner hop may present.
    inner_keys: Arc<Vec<PublicKey>>,
}

/// The host keys `known` lists for `host:port`, as ssh would look them up.
pub fn host_keys(known: &str, host: &str, port: u16) -> Result<Arc<Vec<PublicKey>>> {
    let prefix = if port == 22 {
        format!("{host} ")
    } else {
        format!("[{host}]:{port} ")
    };
    let keys = known
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|k| PublicKey::from_openssh(k).ok())
        .collect::<Vec<_>>();
    if keys.is_empty() {
        bail!("no known host key for {prefix:?}");
    }
    Ok(Arc::new(keys))
}

/// What one step did, as the client saw it (one JSON line to the parent).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ClientStep {
    /// Attempts the schedule called for (offered rate × window).
    pub due: u64,
    /// Attempts not started because [`IN_FLIGHT`] were in flight.
    pub shed: u64,
    /// Attempts that reached [`READY`].
    pub completed: u64,
    /// … of which before the window ended.
    pub completed_in_window: u64,
    /// Attempts that failed or timed out.
    pub failed: u64,
    /// The first failure's text.
    pub first_error: Option<String>,
    /// Time to console of every completed attempt, ms.
    pub samples_ms: Vec<f64>,
    /// From the window's start until the last attempt had torn down, s.
    pub elapsed_secs: f64,
}

impl ClientStep {
    /// Counts one attempt's outcome; `end` is the window's end.
    fn add(&mut self, outcome: Result<Result<Attempt>, tokio::task::JoinError>, end: Instant) {
        match outcome {
            Ok(Ok(a)) => {
                self.completed += 1;
                if a.ready_at <= end {
                    self.completed_in_window += 1;
                }
                self.samples_ms.push(stats::ms(a.to_console));
            }
            Ok(Err(e)) => self.fail(format!("{e:#}")),
            Err(e) => self.fail(format!("attempt task: {e}")),
        }
    }

    /// Counts a failure, keeping the first one's text.
    fn fail(&mut self, text: String) {
        self.failed += 1;
        self.first_error.get_or_insert(text);
    }
}

/// A completed attempt.
struct Attempt {
    /// When [`READY`] arrived.
    ready_at: Instant,
    /// From the TCP connect to [`READY`].
    to_console: Duration,
}

/// The child process's main loop: one step per `step RATE SECS` line.
pub async fn rate_client(args: RateArgs) -> Result<()> {
    raise_nofile(std::process::id());
    let known = std::fs::read_to_string(&args.known_hosts)?;
    let ctx = Arc::new(Ctx {
        outer_keys: host_keys(&known, &args.outer.host, args.outer.port)?,
        inner_keys: host_keys(&known, &args.inner.host, args.inner.port)?,
        key: Arc::new(russh::keys::load_secret_key(&args.key, None)?),
        config: crate::host::client_config(),
        args,
    });
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    // The console `open` opened, which `keys` types into.
    let mut console = None;
    while let Some(line) = stdin.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["step", rate, secs] => {
                let result = step(&ctx, rate.parse()?, secs.parse()?).await;
                println!("{}", serde_json::to_string(&result)?);
            }
            ["open"] => {
                console = Some(open_drained(&ctx).await?);
                println!("[]");
            }
            ["keys", n] => {
                let console = console.as_mut().context("keys before open")?;
                let samples = keys(console, n.parse()?).await?;
                println!("{}", serde_json::to_string(&samples)?);
            }
            _ => break,
        }
    }
    if let Some(console) = console {
        console.close().await;
    }
    Ok(())
}

/// `open`: one nested console, with what it printed before the first
/// keystroke (greeting, replay) drained.
async fn open_drained(ctx: &Ctx) -> Result<Console> {
    let mut console = open_console(ctx).await?;
    loop {
        match tokio::time::timeout(Duration::from_millis(300), console.channel.wait()).await {
            Err(_) => break,
            Ok(Some(ChannelMsg::Eof | ChannelMsg::Close) | None) => bail!("console closed"),
            Ok(Some(_)) => {}
        }
    }
    Ok(console)
}

/// `keys N`: `N` keystrokes into the open console, each sent once the last
/// one's echo is back; returns each round trip in ms.
async fn keys(console: &mut Console, n: usize) -> Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        // Consecutive keys differ, so an echo is never mistaken for the last.
        let key = b'a' + (i % 26) as u8;
        let start = std::time::Instant::now();
        console.channel.data(&[key][..]).await?;
        loop {
            let msg = tokio::time::timeout(ATTEMPT_LIMIT, console.channel.wait())
                .await
                .context("echo never came")?;
            match msg {
                Some(ChannelMsg::Data { data }) if data.contains(&key) => break,
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => bail!("console closed"),
                Some(_) => {}
            }
        }
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(samples)
}

/// Starts attempts at `rate` per second for `secs`, open-loop; returns once
/// every attempt has finished.
async fn step(ctx: &Arc<Ctx>, rate: f64, secs: f64) -> ClientStep {
    let mut tally = ClientStep {
        due: (rate * secs).round() as u64,
        ..ClientStep::default()
    };
    let gap = Duration::from_secs_f64(1.0 / rate);
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut attempts = JoinSet::new();
    for i in 0..tally.due {
        // From the schedule, not from the last wake-up: a late start is
        // followed by earlier ones, so the offered rate holds on average.
        tokio::time::sleep_until(start + gap.mul_f64(i as f64)).await;
        while let Some(done) = attempts.try_join_next() {
            tally.add(done, end);
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tally.shed += 1;
            tally
                .first_error
                .get_or_insert_with(|| format!("shed: {IN_FLIGHT} attempts in flight"));
            continue;
        };
        let ctx = ctx.clone();
        attempts.spawn(async move {
            let result = attempt(&ctx).await;
            drop(slot);
            result
        });
    }
    while let Some(done) = attempts.join_next().await {
        tally.add(done, end);
    }
    tally.elapsed_secs = start.elapsed().as_secs_f64();
    tally
}

/// One attempt: the nested console connection up to [`READY`], then both
/// hops torn down.
async fn attempt(ctx: &Ctx) -> Result<Attempt> {
    let start = Instant::now();
    let console = tokio::time::timeout(ATTEMPT_LIMIT, open_console(ctx))
        .await
        .with_context(|| format!("no console within {ATTEMPT_LIMIT:?}"))??;
    let ready_at = Instant::now();
    console.close().await;
    Ok(Attempt {
        ready_at,
        to_console: ready_at - start,
    })
}

/// A console attached over both hops.
struct Console {
    outer: Handle<PinnedHost>,
    /// The session running over the outer hop's `direct-tcpip` channel.
    inner: Handle<PinnedHost>,
    /// The console's session channel on the inner hop.
    channel: russh::Channel<Msg>,
}

impl Console {
    /// Disconnects the inner hop, then the outer one, each waited for
    /// (within [`TEARDOWN_LIMIT`]) so that its teardown falls in the step.
    async fn close(self) {
        let Console {
            outer,
            inner,
            channel,
        } = self;
        drop(channel);
        for hop in [inner, outer] {
            let _ = hop
                .disconnect(russh::Disconnect::ByApplication, "", "")
                .await;
            let _ = tokio::time::timeout(TEARDOWN_LIMIT, hop).await;
        }
    }
}

/// Both hops, the session channel, pty and shell (or command), up to
/// [`READY`].
async fn open_console(ctx: &Ctx) -> Result<Console> {
    let (outer_hop, inner_hop) = (&ctx.args.outer, &ctx.args.inner);
    let mut outer = russh::client::connect(
        ctx.config.clone(),
        (outer_hop.host.as_str(), outer_hop.port),
        PinnedHost {
            host_keys: ctx.outer_keys.clone(),
        },
    )
    .await
    .context("outer hop: connect")?;
    authenticate(&mut outer, &outer_hop.user, &ctx.key)
        .await
        .context("outer hop")?;
    let tunnel = outer
        .channel_open_direct_tcpip(
            inner_hop.host.as_str(),
            u32::from(inner_hop.port),
            "127.0.0.1",
            0,
        )
        .await
        .context("direct-tcpip")?;
    let mut inner = russh::client::connect_stream(
        ctx.config.clone(),
        tunnel.into_stream(),
        PinnedHost {
            host_keys: ctx.inner_keys.clone(),
        },
    )
    .await
    .context("inner hop: key exchange")?;
    authenticate(&mut inner, &inner_hop.user, &ctx.key)
        .await
        .context("inner hop")?;
    let mut channel = inner.channel_open_session().await.context("session")?;
    channel
        .request_pty(false, "xterm", 80, 24, 0, 0, &[])
        .await
        .context("pty")?;
    match &ctx.args.command {
        Some(c) => channel.exec(true, c.as_bytes()).await.context("exec")?,
        None => channel.request_shell(true).await.context("shell")?,
    }
    wait_ready(&mut channel).await?;
    Ok(Console {
        outer,
        inner,
        channel,
    })
}

/// Public key authentication as `user`; an error if it is refused.
async fn authenticate(
    handle: &mut Handle<PinnedHost>,
    user: &str,
    key: &Arc<PrivateKey>,
) -> Result<()> {
    let auth = handle
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key.clone(), None))
        .await
        .context("authentication")?;
    if !auth.success() {
        bail!("authentication refused");
    }
    Ok(())
}

/// Reads `channel` until [`READY`] has arrived.
async fn wait_ready(channel: &mut russh::Channel<Msg>) -> Result<()> {
    let mut seen = Vec::new();
    loop {
        match channel.wait().await {
            Some(ChannelMsg::Data { data }) => {
                seen.extend_from_slice(&data);
                if find(&seen, READY.as_bytes()).is_some() {
                    return Ok(());
                }
            }
            Some(ChannelMsg::Eof | ChannelMsg::Close) | None => {
                bail!("session ended: {:?}", String::from_utf8_lossy(&seen))
            }
            Some(_) => {}
        }
    }
}

/// One step of the ladder, as the report keeps it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    /// Attempts started per second, by the schedule.
    pub offered_per_sec: f64,
    /// How long attempts were started for, s.
    pub window_secs: f64,
    /// From the window's start until the last attempt had torn down, s.
    pub elapsed_secs: f64,
    /// Attempts the schedule called for.
    pub due: u64,
    /// Attempts that reached the console.
    pub completed: u64,
    /// Attempts that failed, timed out or were shed.
    pub failures: u64,
    /// … of which shed ([`IN_FLIGHT`] already in flight).
    pub shed: u64,
    /// The first failure's text.
    pub first_error: Option<String>,
    /// Attempts that reached the console within the window, per second.
    pub achieved_per_sec: f64,
    /// Time to console, median, ms.
    pub p50_ms: f64,
    /// Time to console, 99th percentile, ms.
    pub p99_ms: f64,
    /// Time to console, slowest, ms.
    pub max_ms: f64,
    /// Serving side's CPU from the step's start until its last attempt had
    /// torn down (and 200 ms more), s.
    pub server_cpu_s: f64,
    /// Serving side's CPU per completed connection, ms.
    pub server_cpu_ms_per_connection: f64,
    /// Completed connections per CPU second of the serving side: the
    /// achieved rate divided by the cores the server kept busy.
    pub per_server_core: f64,
    /// Serving side's CPU over the step's wall time, in cores.
    pub server_cores_busy: f64,
    /// The rate client's CPU per completed connection, ms (both hops'
    /// key exchanges and signatures are the client's).
    pub client_cpu_ms_per_connection: f64,
    /// At most [`MAX_FAILURE_SHARE`] failed and p99 at most [`MAX_P99_MS`].
    pub sustained: bool,
}

impl Step {
    /// Builds the step from the client's account and the CPU seconds the
    /// server and the client used over it.
    fn new(offered: f64, secs: f64, c: ClientStep, server_cpu: f64, client_cpu: f64) -> Step {
        let failures = c.failed + c.shed;
        let p99 = percentile(&c.samples_ms, 99.0);
        let per = |cpu: f64| cpu * 1000.0 / c.completed.max(1) as f64;
        Step {
            offered_per_sec: offered,
            window_secs: secs,
            elapsed_secs: c.elapsed_secs,
            due: c.due,
            completed: c.completed,
            failures,
            shed: c.shed,
            first_error: c.first_error,
            achieved_per_sec: c.completed_in_window as f64 / secs,
            p50_ms: percentile(&c.samples_ms, 50.0),
            p99_ms: p99,
            max_ms: percentile(&c.samples_ms, 100.0),
            server_cpu_s: server_cpu,
            server_cpu_ms_per_connection: per(server_cpu),
            per_server_core: c.completed as f64 / server_cpu,
            server_cores_busy: server_cpu / (c.elapsed_secs + 0.2),
            client_cpu_ms_per_connection: per(client_cpu),
            sustained: c.completed > 0
                && failures as f64 <= MAX_FAILURE_SHARE * c.due as f64
                && p99 <= MAX_P99_MS,
        }
    }

    /// One line for the log.
    fn describe(&self, system: System) -> String {
        format!(
            "  {} offered {:.0}/s: {:.1}/s reached the console, {} failed ({} shed), \
             p50 {:.1} ms, p99 {:.1} ms; server {:.2} ms CPU/conn ({:.0}/s per core, {:.2} cores busy), \
             client {:.2} ms CPU/conn",
            system.name(),
            self.offered_per_sec,
            self.achieved_per_sec,
            self.failures,
            self.shed,
            self.p50_ms,
            self.p99_ms,
            self.server_cpu_ms_per_connection,
            self.per_server_core,
            self.server_cores_busy,
            self.client_cpu_ms_per_connection,
        )
    }
}

/// The step a ladder's figures come from: the highest sustained one, or the
/// first if none was.
pub fn reported(steps: &[Step]) -> Option<&Step> {
    within(steps, f64::INFINITY)
}

/// The highest sustained step whose p99 time to console is at most
/// `p99_ms`, or the first step if none was.
pub fn within(steps: &[Step], p99_ms: f64) -> Option<&Step> {
    steps
        .iter()
        .rev()
        .find(|s| s.sustained && s.p99_ms <= p99_ms)
        .or(steps.first())
}

/// The rate client's command line for `system`: consolegate's console of
/// `instance` (outer hop as its connection id, inner hop to
/// `<instance>:22`), or the sshd pair (outer sshd, `direct-tcpip` to the
/// inner sshd, which runs the console command).
fn client_command(world: &World, system: System, instance: &str) -> Result<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--rate-client");
    match system {
        System::Consolegate => {
            cmd.arg(world.gateway.port.to_string())
                .arg(world.gateway.connection(instance))
                .args([instance, "22"]);
        }
        System::Sshd => {
            cmd.arg(world.outer.port.to_string())
                .arg(&world.user)
                .arg("127.0.0.1")
                .arg(world.inner.port.to_string());
        }
    }
    // The inner hop's user: stock ssh sends the local user name when the
    // connection string names none (consolegate does not use it).
    cmd.arg(&world.user).arg(&world.key).arg(&world.known_hosts);
    if system == System::Sshd {
        cmd.arg(sshd_console_command(world.console.port));
    }
    Ok(cmd)
}

/// Measurement 7: steps up through `rates` (per second, each for `secs`)
/// until one is not sustained; returns every step run.
pub async fn rate_russh(
    world: &World,
    system: System,
    rates: &[f64],
    secs: f64,
) -> Result<Vec<Step>> {
    let mut client = Client::start(world, system, "rate")?;
    let client_pid = client.child.id().context("rate client pid")?;
    let limit = Duration::from_secs_f64(secs) + ATTEMPT_LIMIT + 2 * TEARDOWN_LIMIT + LATE;
    let mut steps = Vec::new();
    for &rate in rates {
        let cpu0 = world.server_cpu(system);
        let client0 = stats::tree_cpu(&[client_pid]);
        let line = client.ask(&format!("step {rate} {secs}"), limit).await?;
        let client_cpu = stats::tree_cpu(&[client_pid]) - client0;
        // Let the server finish the last teardowns before reading its CPU.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let server_cpu = world.server_cpu(system) - cpu0;
        let step = Step::new(
            rate,
            secs,
            serde_json::from_str(&line).context("rate client's step")?,
            server_cpu,
            client_cpu,
        );
        eprintln!("{}", step.describe(system));
        if let Some(e) = &step.first_error {
            eprintln!("    first failure: {e}");
        }
        let sustained = step.sustained;
        steps.push(step);
        if !sustained {
            break;
        }
        // Let the server settle before the next step.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    client.finish().await;
    Ok(steps)
}

/// The rate client, running as a child process: commands on its stdin,
/// one JSON line of answer each on its stdout.
struct Client {
    child: tokio::process::Child,
    input: tokio::process::ChildStdin,
    output: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Client {
    /// Starts it for `system`'s console of `instance`.
    fn start(world: &World, system: System, instance: &str) -> Result<Client> {
        let mut child = client_command(world, system, instance)?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start the rate client")?;
        let input = child.stdin.take().context("stdin")?;
        let output = BufReader::new(child.stdout.take().context("stdout")?).lines();
        Ok(Client {
            child,
            input,
            output,
        })
    }

    /// Sends `command` and returns its answer, within `limit`.
    async fn ask(&mut self, command: &str, limit: Duration) -> Result<String> {
        self.input
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        self.input.flush().await?;
        tokio::time::timeout(limit, self.output.next_line())
            .await
            .context("rate client timed out")??
            .context("rate client ended")
    }

    /// Closes its stdin, which ends it, and waits (10 s at most).
    async fn finish(self) {
        let Client {
            mut child, input, ..
        } = self;
        drop(input);
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        let _ = child.start_kill();
    }
}

/// Keystrokes typed before the timed ones (see `measure::WARM_UP_KEYS`).
const WARM_UP_KEYS: usize = 20;

/// A nested console held open by the russh rate client, typed into in
/// rounds: no `ssh` process is on the path, so what is measured is the
/// server's share and the client's own, which is the same for both systems.
pub struct EchoClient {
    system: System,
    /// Behind a lock so that a round needs only `&self`: the rounds of
    /// both systems' clients are handed out by one closure.
    client: tokio::sync::Mutex<Client>,
}

impl EchoClient {
    /// Starts the client, opens the console and types the untimed keys.
    pub async fn start(world: &World, system: System) -> Result<EchoClient> {
        let mut client = Client::start(world, system, "keys")?;
        client.ask("open", ATTEMPT_LIMIT + LATE).await?;
        client
            .ask(&format!("keys {WARM_UP_KEYS}"), ATTEMPT_LIMIT + LATE)
            .await?;
        Ok(EchoClient {
            system,
            client: tokio::sync::Mutex::new(client),
        })
    }

    /// `n` keystrokes: their round trips (ms), and the server's CPU over
    /// them (s), the connection's set-up and teardown left out.
    pub async fn round(&self, world: &World, n: usize) -> Result<(Vec<f64>, f64)> {
        let mut client = self.client.lock().await;
        let cpu0 = world.server_cpu(self.system);
        let line = client
            .ask(&format!("keys {n}"), ATTEMPT_LIMIT + LATE)
            .await?;
        let cpu = world.server_cpu(self.system) - cpu0;
        let samples = serde_json::from_str(&line).context("rate client's echoes")?;
        Ok((samples, cpu))
    }

    pub async fn finish(self) {
        self.client.into_inner().finish().await;
    }
}
