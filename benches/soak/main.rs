//! The soak: thousands of console sessions held for minutes with churn,
//! the gateway's memory and open files watched the whole time.
//!
//! `cargo bench --bench soak [-- --quick] [-- --sessions N] [-- --minutes M]
//! [-- --instances N] [-- --reattach-rate R] [-- --churn type,reattach,api] [-- --out DIR]`, or
//! `-- --redraw DIR` to redraw a run's chart from its `soak.json`.
//!
//! Starts the real `consolegate serve` (a child, with its own data
//! directory and `gateway.toml`: simulated instances, session caps off,
//! pre-authentication limits opened for 127.0.0.1), registers one console
//! connection per instance through the OCI API, and attaches N console
//! sessions (default 10,000) with russh clients in this process, at a
//! bounded rate. Then, for M minutes (default 10), churns: sessions
//! detach and attach again, sessions type a line and wait for its echo,
//! and two API loops create and delete console connections (one of them
//! attaches a session through each new connection and checks that the
//! delete ends it). The gateway's VmRSS and open fds are sampled every few
//! seconds; the least-squares slope of each over the steady state (after
//! the ramp-up) is the figure. Writes `soak.json`, `soak.csv` and
//! `soak.png` to the output directory (default `target/bench`; a run of
//! the default size also puts the chart and JSON in `docs/`).
//!
//! Fails (exit status 1) if an echo was lost, a session ended unasked, an
//! attach or API call failed, a deleted connection's session lived on, or
//! fewer sessions than asked for were held at the end. It reports the
//! slopes; it does not judge them.

mod chart;
mod gateway;
#[path = "../shared/host.rs"]
mod host;
mod load;
#[path = "../shared/rlimit.rs"]
mod rlimit;
mod samples;
#[path = "../shared/chart.rs"]
mod shared_chart;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::gateway::{Api, Gateway};
use crate::load::{BUSY, Cmd, Counters, Ctx, Slot};
use crate::samples::{Fit, Sample};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Options {
    quick: bool,
    sessions: usize,
    minutes: f64,
    instances: usize,
    out: PathBuf,
    /// Sessions attached per second during the ramp-up, at most.
    ramp_rate: f64,
    sample_secs: f64,
    /// Lines typed per second (by sessions picked at random).
    type_rate: f64,
    /// Detach-and-attach-again per second.
    reattach_rate: f64,
    /// Create-and-delete rounds per second of the plain API loop.
    api_rate: f64,
    /// Which churns run: of "type", "reattach", "api" (all by default).
    #[serde(default)]
    churn: Vec<String>,
    /// A run of the default size: its chart and JSON go to docs/ too.
    docs: bool,
}

/// The churns, for `--churn`.
const CHURNS: [&str; 3] = ["type", "reattach", "api"];

impl Options {
    fn parse() -> Result<Options> {
        let (mut quick, mut sessions, mut minutes, mut instances) = (false, None, None, None);
        let mut reattach_rate = None;
        let mut out = PathBuf::from("target/bench");
        let mut churn: Vec<String> = CHURNS.iter().map(|c| (*c).to_owned()).collect();
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut value =
                |name: &str| args.next().with_context(|| format!("{name} needs a value"));
            match a.as_str() {
                "--quick" => quick = true,
                "--sessions" => sessions = Some(value("--sessions")?.parse::<usize>()?),
                "--minutes" => minutes = Some(value("--minutes")?.parse::<f64>()?),
                "--instances" => instances = Some(value("--instances")?.parse::<usize>()?),
                "--reattach-rate" => {
                    reattach_rate = Some(value("--reattach-rate")?.parse::<f64>()?);
                }
                "--out" => out = value("--out")?.into(),
                "--churn" => {
                    let names = value("--churn")?;
                    churn = names
                        .split(',')
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned)
                        .collect();
                    if let Some(bad) = churn.iter().find(|n| !CHURNS.contains(&n.as_str())) {
                        bail!("--churn {bad:?}: names from {}", CHURNS.join(", "));
                    }
                }
                // cargo bench passes --bench to harness = false targets.
                "--bench" => {}
                other => bail!(
                    "unknown argument {other:?}; use --quick, --sessions N, --minutes M, \
                     --instances N, --reattach-rate R, --churn LIST, --out DIR, --redraw DIR"
                ),
            }
        }
        let docs = !quick
            && sessions.is_none()
            && minutes.is_none()
            && instances.is_none()
            && reattach_rate.is_none()
            && churn.len() == CHURNS.len();
        let sessions = sessions.unwrap_or(if quick { 200 } else { 10_000 }).max(1);
        let minutes = minutes.unwrap_or(if quick { 0.5 } else { 10.0 });
        let instances = instances.unwrap_or(sessions.div_ceil(20)).max(1);
        let n = sessions as f64;
        Ok(Options {
            quick,
            sessions,
            minutes,
            instances,
            out,
            ramp_rate: if quick { 100.0 } else { 200.0 },
            sample_secs: if quick { 1.0 } else { 5.0 },
            type_rate: (n / 200.0).max(5.0),
            reattach_rate: reattach_rate.unwrap_or((n / 500.0).max(2.0)),
            api_rate: 4.0,
            churn,
            docs,
        })
    }
}

/// What a run found; `soak.json`.
#[derive(Serialize, Deserialize)]
struct Report {
    machine: String,
    options: Options,
    /// Seconds (since the gateway started) the ramp-up ended and the
    /// steady state ended.
    ramp_end_s: f64,
    steady_end_s: f64,
    /// Most sessions held at once.
    max_held: u64,
    held_at_end: u64,
    counters: serde_json::Value,
    echo_ms_p50: f64,
    echo_ms_p99: f64,
    echo_ms_max: f64,
    /// RSS, KiB per minute, over the steady state and its second half.
    rss_fit: Fit,
    rss_fit_second_half: Fit,
    /// RSS over each quarter of the steady state: whether growth levels
    /// off (the allocator's working set forming) or keeps its pace (a leak).
    #[serde(default)]
    rss_fit_quarters: Vec<Fit>,
    fds_fit: Fit,
    fds_fit_second_half: Fit,
    /// The machine's busy CPU (both cores together, in cores) over the
    /// steady state, and the gateway's and this bench's shares of it.
    machine_busy_cores: f64,
    gateway_cores: f64,
    bench_cores: f64,
    failures: Vec<String>,
    samples: Vec<Sample>,
}

fn machine() -> String {
    let host::Machine { cores, cpu, kernel } = host::Machine::read();
    let mem = samples::status_field_of("/proc/meminfo", "MemTotal:").unwrap_or(0) / 1024;
    format!("{cores} cores, {cpu}, {mem} MiB, Linux {}", kernel.trim())
}

/// A small xorshift generator: which slot, which instance.
struct Pick(u64);

impl Pick {
    fn new() -> Pick {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Pick(seed | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--redraw") {
        let dir = Path::new(args.get(2).context("--redraw DIR")?);
        let report: Report =
            serde_json::from_str(&std::fs::read_to_string(dir.join("soak.json"))?)?;
        draw(&report, &dir.join("soak.png"));
        return Ok(());
    }
    let options = Options::parse()?;
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(run(options))?;
    if !report.failures.is_empty() {
        eprintln!("\nsoak FAILED:");
        for f in &report.failures {
            eprintln!("  - {f}");
        }
        std::process::exit(1);
    }
    Ok(())
}

fn draw(report: &Report, png: &Path) {
    let o = &report.options;
    let title = format!(
        "consolegate soak: {} sessions asked, {} held at the end, {:.1} min of churn ({})",
        o.sessions,
        report.held_at_end,
        (report.steady_end_s - report.ramp_end_s) / 60.0,
        report.machine.split(',').next().unwrap_or_default()
    );
    match chart::draw(
        png,
        &title,
        &report.samples,
        report.ramp_end_s,
        report.rss_fit,
        report.fds_fit,
    ) {
        Ok(()) => println!("wrote {}", png.display()),
        Err(e) => println!("chart: {e}"),
    }
}

/// Generates a client key `name` with ssh-keygen; its private key and
/// the public key line.
fn client_key(dir: &Path, name: &str) -> Result<(PathBuf, String)> {
    let path = dir.join(name);
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-C", name, "-t", "ed25519", "-f"])
        .arg(&path)
        .status()
        .context("ssh-keygen (apt-get install openssh-client)")?;
    if !status.success() {
        bail!("ssh-keygen failed");
    }
    let public = std::fs::read_to_string(path.with_extension("pub"))?;
    Ok((path, public.trim().to_owned()))
}

/// Samples the gateway every `every` until `stop`.
fn spawn_sampler(
    pid: u32,
    data: PathBuf,
    ctx: Arc<Ctx>,
    start: Instant,
    every: Duration,
    into: Arc<Mutex<Vec<Sample>>>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let s = sample(pid, &data, &ctx, start);
            into.lock().unwrap().push(s);
        }
    })
}

fn sample(pid: u32, data: &Path, ctx: &Ctx, start: Instant) -> Sample {
    let c = &ctx.counters;
    Sample {
        t_s: start.elapsed().as_secs_f64(),
        rss_kib: samples::status_field(pid, "VmRSS:").unwrap_or(0),
        fds: samples::fds(pid),
        held: Counters::get(&c.held),
        threads: samples::status_field(pid, "Threads:").unwrap_or(0),
        gateway_cpu_s: samples::process_cpu(pid),
        bench_cpu_s: samples::process_cpu(std::process::id()),
        machine_busy_s: samples::machine_busy(),
        attaches: Counters::get(&c.attaches),
        echoes: Counters::get(&c.echoes),
        api_creates: Counters::get(&c.api_creates),
        store_kib: samples::files_kib(data, "consolegate.db"),
    }
}

fn progress(s: &Sample, c: &Counters) {
    println!(
        "  {:>6.1} min  held {:>6}  RSS {:>8.1} MiB  fds {:>6}  attaches {:>6}  echoes {:>6}  API creates {:>5}  failures: attach {} echo {} ended {} API {}",
        s.t_s / 60.0,
        s.held,
        s.rss_kib as f64 / 1024.0,
        s.fds,
        s.attaches,
        s.echoes,
        s.api_creates,
        Counters::get(&c.attach_failures),
        Counters::get(&c.echoes_lost),
        Counters::get(&c.unexpected_ends),
        Counters::get(&c.api_failures),
    );
}

/// Runs `round` every `every` (or back to back when a round takes
/// longer) until `stop`, counting its failures.
fn spawn_loop<F, Fut>(
    ctx: Arc<Ctx>,
    every: Duration,
    stop: CancellationToken,
    mut round: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.is_cancelled() {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            if let Err(e) = round().await {
                load::api_failed(&ctx, &e);
            }
        }
    })
}

/// Asks `cmd` of a slot picked at random among the idle attached ones.
fn ask_random(slots: &[Slot], pick: &Mutex<Pick>, cmd: fn() -> Cmd) {
    for _ in 0..16 {
        let i = pick.lock().unwrap().below(slots.len());
        if slots[i].ask(cmd()) {
            return;
        }
    }
}

async fn run(o: Options) -> Result<Report> {
    let nofile = rlimit::raise_nofile(std::process::id()).unwrap_or(0);
    let needed = o.sessions as u64 + o.instances as u64 + 1000;
    if nofile < needed {
        bail!(
            "RLIMIT_NOFILE is {nofile}; {} sessions need about {needed} open files in this \
             process and in the gateway: raise the hard limit (ulimit -Hn)",
            o.sessions
        );
    }
    let machine = machine();
    println!(
        "soak on {machine}: {} sessions over {} simulated instances, {} min of churn \
         ({}; {:.0} lines typed/s, {:.0} re-attaches/s, {} API rounds/s and an attach-and-delete \
         loop), open-file limit {nofile}",
        o.sessions,
        o.instances,
        o.minutes,
        o.churn.join(", "),
        o.type_rate,
        o.reattach_rate,
        o.api_rate
    );
    println!(
        "load average at start: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let dir = tempfile::tempdir()?;
    // The held sessions' key, and one for each API loop (a key has at
    // most one active connection per instance).
    let (key_path, public_key) = client_key(dir.path(), "held")?;
    let (api_key_path, api_session_key) = client_key(dir.path(), "api-session")?;
    let (_, api_plain_key) = client_key(dir.path(), "api-plain")?;
    let api = Arc::new(Api::new().await?);
    let gateway = Gateway::start(dir.path(), o.instances, &api).await?;
    let start = Instant::now();
    let pid = gateway.pid();

    // One console connection per instance, through the API.
    let mut users = Vec::with_capacity(o.instances);
    let mut host_keys = Vec::new();
    for i in 0..o.instances {
        let created = api.create(&gateway::instance(i), &public_key).await?;
        if i == 0 {
            let prefix = format!("[127.0.0.1]:{} ", gateway.ssh_port);
            host_keys = created["knownHosts"]
                .as_array()
                .context("no knownHosts")?
                .iter()
                .filter_map(|l| l.as_str()?.strip_prefix(&prefix))
                .filter_map(|k| russh::keys::PublicKey::from_openssh(k).ok())
                .collect();
        }
        users.push(created["id"].as_str().context("no id")?.to_owned());
    }
    if host_keys.is_empty() {
        bail!("the API gave no host key for the gateway");
    }
    let ctx = Arc::new(Ctx::new(
        gateway.ssh_port,
        load::load_key(&key_path)?,
        load::load_key(&api_key_path)?,
        host_keys,
    ));
    let all_samples = Arc::new(Mutex::new(Vec::new()));
    let sampling = CancellationToken::new();
    let data = dir.path().join("data");
    let sampler = spawn_sampler(
        pid,
        data.clone(),
        ctx.clone(),
        start,
        Duration::from_secs_f64(o.sample_secs),
        all_samples.clone(),
        sampling.clone(),
    );
    let progress_every = if o.quick { 10.0 } else { 60.0 };

    // Ramp-up: slots started at a bounded rate, each attaching (at most
    // OPENING attaches at once).
    println!(
        "ramp-up: {} sessions at up to {}/s",
        o.sessions, o.ramp_rate
    );
    let target = o.sessions as u64;
    let mut slots = Vec::with_capacity(o.sessions);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / o.ramp_rate));
    let mut last_progress = Instant::now();
    for i in 0..o.sessions {
        tick.tick().await;
        slots.push(load::spawn_slot(
            ctx.clone(),
            i,
            users[i % users.len()].clone(),
        ));
        if last_progress.elapsed().as_secs_f64() >= 10.0 {
            last_progress = Instant::now();
            progress(&sample(pid, &data, &ctx, start), &ctx.counters);
        }
    }
    // Then until all are attached; past the limit, the soak goes on with
    // what it has and fails at the end.
    let ramp_limit = Duration::from_secs(if o.quick { 60 } else { 600 });
    let waited = Instant::now();
    while Counters::get(&ctx.counters.held) < target && waited.elapsed() < ramp_limit {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if last_progress.elapsed().as_secs_f64() >= 10.0 {
            last_progress = Instant::now();
            progress(&sample(pid, &data, &ctx, start), &ctx.counters);
        }
    }
    let ramp_end_s = start.elapsed().as_secs_f64();
    let ramp_held = Counters::get(&ctx.counters.held);
    println!("ramp-up done at {ramp_end_s:.0} s: {ramp_held} of {target} sessions held");
    if ramp_held < target {
        println!(
            "  NOT all sessions attached within {ramp_limit:?} of the last one starting; going on with {ramp_held}"
        );
    }
    let max_held = Arc::new(std::sync::atomic::AtomicU64::new(ramp_held));

    // Steady state: the churn.
    let churn = CancellationToken::new();
    let slots = Arc::new(slots);
    let pick = Arc::new(Mutex::new(Pick::new()));
    let mut loops = Vec::new();
    let runs = |name: &str| o.churn.iter().any(|c| c == name);
    for (rate, cmd) in [
        (o.type_rate, (|| Cmd::Type) as fn() -> Cmd, "type"),
        (o.reattach_rate, || Cmd::Reattach, "reattach"),
    ]
    .into_iter()
    .filter(|(_, _, name)| runs(name))
    .map(|(rate, cmd, _)| (rate, cmd))
    {
        let (slots, pick, churn) = (slots.clone(), pick.clone(), churn.clone());
        loops.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            loop {
                tokio::select! {
                    _ = tick.tick() => ask_random(&slots, &pick, cmd),
                    () = churn.cancelled() => return,
                }
            }
        }));
    }
    if runs("api") {
        let (c, a, k, p) = (ctx.clone(), api.clone(), api_session_key, pick.clone());
        let instances = o.instances;
        loops.push(spawn_loop(
            ctx.clone(),
            Duration::from_millis(200),
            churn.clone(),
            move || {
                let (c, a, k) = (c.clone(), a.clone(), k.clone());
                let instance = gateway::instance(p.lock().unwrap().below(instances));
                async move { load::api_session_round(&c, &a, &instance, &k).await }
            },
        ));
    }
    if runs("api") {
        let (c, a, k, p) = (ctx.clone(), api.clone(), api_plain_key, pick.clone());
        let instances = o.instances;
        loops.push(spawn_loop(
            ctx.clone(),
            Duration::from_secs_f64(1.0 / o.api_rate),
            churn.clone(),
            move || {
                let (c, a, k) = (c.clone(), a.clone(), k.clone());
                let instance = gateway::instance(p.lock().unwrap().below(instances));
                async move { load::api_round(&c, &a, &instance, &k).await }
            },
        ));
    }
    {
        let (ctx, max_held, churn) = (ctx.clone(), max_held.clone(), churn.clone());
        loops.push(tokio::spawn(async move {
            loop {
                max_held.fetch_max(Counters::get(&ctx.counters.held), Ordering::Relaxed);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    () = churn.cancelled() => return,
                }
            }
        }));
    }
    let steady = Duration::from_secs_f64(o.minutes * 60.0);
    let churn_start = Instant::now();
    while churn_start.elapsed() < steady {
        let left = steady.saturating_sub(churn_start.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs_f64(progress_every))).await;
        progress(&sample(pid, &data, &ctx, start), &ctx.counters);
    }

    // The end: no new churn; lines typed get their echo (or are lost),
    // sessions detached come back.
    churn.cancel();
    for l in loops {
        let _ = l.await;
    }
    let settle = Instant::now();
    while settle.elapsed() < load::ECHO_LIMIT + Duration::from_secs(5)
        && (slots
            .iter()
            .any(|s| s.state.load(Ordering::Acquire) == BUSY)
            || Counters::get(&ctx.counters.held) < ramp_held)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = sample(pid, &data, &ctx, start);
    let steady_end_s = last.t_s;
    let held_at_end = last.held;
    all_samples.lock().unwrap().push(last);
    sampling.cancel();
    let _ = sampler.await;
    ctx.stop.cancel();
    let leaving = Instant::now();
    while Counters::get(&ctx.counters.held) > 0 && leaving.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = gateway.log.clone();
    gateway.stop().await;
    std::fs::create_dir_all(&o.out)?;
    let _ = std::fs::copy(&log, o.out.join("soak-gateway.log"));

    let mut samples_taken = std::mem::take(&mut *all_samples.lock().unwrap());
    samples_taken.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
    let c = &ctx.counters;
    let report = summarize(
        &o,
        machine,
        samples_taken,
        ramp_end_s,
        steady_end_s,
        max_held.load(Ordering::Relaxed),
        held_at_end,
        &ctx,
    );
    print_summary(&report, c);
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(o.out.join("soak.json"), &json)?;
    std::fs::write(o.out.join("soak.csv"), csv(&report.samples))?;
    println!("wrote {}", o.out.join("soak.json").display());
    draw(&report, &o.out.join("soak.png"));
    if o.docs {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::write(docs.join("soak.json"), &json)?;
        draw(&report, &docs.join("soak.png"));
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    o: &Options,
    machine: String,
    samples: Vec<Sample>,
    ramp_end_s: f64,
    steady_end_s: f64,
    max_held: u64,
    held_at_end: u64,
    ctx: &Ctx,
) -> Report {
    let c = &ctx.counters;
    let mut echo = ctx.echo_ms.lock().unwrap().clone();
    echo.sort_by(f32::total_cmp);
    let pct = |p: f64| {
        if echo.is_empty() {
            f64::NAN
        } else {
            echo[((echo.len() - 1) as f64 * p).round() as usize] as f64
        }
    };
    let mid = (ramp_end_s + steady_end_s) / 2.0;
    // Where quarter `q` (0 to 4) of the steady state starts.
    let quarter = |q: u32| ramp_end_s + (steady_end_s - ramp_end_s) * f64::from(q) / 4.0;
    let rss = |s: &Sample| s.rss_kib as f64;
    let fds = |s: &Sample| s.fds as f64;
    let steady: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t_s >= ramp_end_s && s.t_s <= steady_end_s)
        .collect();
    let cores = |f: fn(&Sample) -> f64| match (steady.first(), steady.last()) {
        (Some(a), Some(b)) if b.t_s > a.t_s => (f(b) - f(a)) / (b.t_s - a.t_s),
        _ => f64::NAN,
    };
    let mut failures = Vec::new();
    let count = |x: &std::sync::atomic::AtomicU64| Counters::get(x);
    let target = o.sessions as u64;
    if held_at_end < target {
        failures.push(format!(
            "{held_at_end} sessions held at the end of {target} asked (most at once: {max_held})"
        ));
    }
    for (n, what) in [
        (count(&c.echoes_lost), "echoes lost"),
        (count(&c.unexpected_ends), "sessions ended unasked"),
        (count(&c.attach_failures), "attaches failed"),
        (count(&c.api_failures), "API rounds failed"),
        (
            count(&c.deleted_sessions_lingering),
            "sessions of deleted connections lived on",
        ),
    ] {
        if n > 0 {
            failures.push(format!("{n} {what}"));
        }
    }
    if count(&c.echoes) == 0 && o.churn.iter().any(|c| c == "type") {
        failures.push("no line was typed and echoed".into());
    }
    Report {
        machine,
        options: o.clone(),
        ramp_end_s,
        steady_end_s,
        max_held,
        held_at_end,
        counters: serde_json::to_value(c).unwrap_or_default(),
        echo_ms_p50: pct(0.5),
        echo_ms_p99: pct(0.99),
        echo_ms_max: pct(1.0),
        rss_fit: samples::fit(&samples, ramp_end_s, steady_end_s, rss),
        rss_fit_second_half: samples::fit(&samples, mid, steady_end_s, rss),
        rss_fit_quarters: (0..4)
            .map(|q| samples::fit(&samples, quarter(q), quarter(q + 1), rss))
            .collect(),
        fds_fit: samples::fit(&samples, ramp_end_s, steady_end_s, fds),
        fds_fit_second_half: samples::fit(&samples, mid, steady_end_s, fds),
        machine_busy_cores: cores(|s| s.machine_busy_s),
        gateway_cores: cores(|s| s.gateway_cpu_s),
        bench_cores: cores(|s| s.bench_cpu_s),
        failures,
        samples,
    }
}

fn print_summary(r: &Report, c: &Counters) {
    let steady: Vec<&Sample> = r.samples.iter().filter(|s| s.t_s >= r.ramp_end_s).collect();
    let first = steady.first().copied();
    let last = steady.last().copied();
    let rss_max = r.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let mib = |k: u64| k as f64 / 1024.0;
    println!("\nsoak summary ({})", r.machine);
    println!(
        "  sessions: {} asked, {} held after the ramp-up ({:.1} min), {} most at once, {} at the end",
        r.options.sessions,
        first.map_or(0, |s| s.held),
        r.ramp_end_s / 60.0,
        r.max_held,
        r.held_at_end
    );
    println!(
        "  steady state: {:.1} min; attaches {} (failed {}), detaches asked {}, sessions ended unasked {}",
        (r.steady_end_s - r.ramp_end_s) / 60.0,
        Counters::get(&c.attaches),
        Counters::get(&c.attach_failures),
        Counters::get(&c.detaches),
        Counters::get(&c.unexpected_ends)
    );
    println!(
        "  echoes: {} (lost {}), round trip p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        Counters::get(&c.echoes),
        Counters::get(&c.echoes_lost),
        r.echo_ms_p50,
        r.echo_ms_p99,
        r.echo_ms_max
    );
    println!(
        "  API: creates {}, deletes {}, failed rounds {}; deleted connections' sessions ended {} (lived on {})",
        Counters::get(&c.api_creates),
        Counters::get(&c.api_deletes),
        Counters::get(&c.api_failures),
        Counters::get(&c.deleted_sessions_ended),
        Counters::get(&c.deleted_sessions_lingering)
    );
    println!(
        "  RSS: {:.1} MiB after the ramp-up, {:.1} MiB at the end, {:.1} MiB at most",
        first.map_or(0.0, |s| mib(s.rss_kib)),
        last.map_or(0.0, |s| mib(s.rss_kib)),
        mib(rss_max)
    );
    println!(
        "  fds: {} after the ramp-up, {} at the end",
        first.map_or(0, |s| s.fds),
        last.map_or(0, |s| s.fds)
    );
    println!(
        "  store on disk (database and WAL): {:.1} MiB after the ramp-up, {:.1} MiB at the end",
        first.map_or(0.0, |s| mib(s.store_kib)),
        last.map_or(0.0, |s| mib(s.store_kib))
    );
    println!(
        "  RSS slope: {:+.1} KiB/min over the steady state, {:+.1} KiB/min over its second half",
        r.rss_fit.slope, r.rss_fit_second_half.slope
    );
    if !r.rss_fit_quarters.is_empty() {
        let quarters: Vec<String> = r
            .rss_fit_quarters
            .iter()
            .map(|f| format!("{:+.1}", f.slope))
            .collect();
        println!(
            "  RSS slope by quarter of the steady state: {} KiB/min",
            quarters.join(", ")
        );
    }
    println!(
        "  fds slope: {:+.2} /min over the steady state, {:+.2} /min over its second half",
        r.fds_fit.slope, r.fds_fit_second_half.slope
    );
    println!(
        "  CPU over the steady state: machine {:.2} of its cores busy; gateway {:.2}, this bench {:.2}, everything else {:.2}",
        r.machine_busy_cores,
        r.gateway_cores,
        r.bench_cores,
        r.machine_busy_cores - r.gateway_cores - r.bench_cores
    );
}

fn csv(samples: &[Sample]) -> String {
    let mut out = String::from(
        "t_s,rss_kib,fds,held,threads,gateway_cpu_s,bench_cpu_s,machine_busy_s,attaches,echoes,api_creates,store_kib\n",
    );
    for s in samples {
        out.push_str(&format!(
            "{:.1},{},{},{},{},{:.2},{:.2},{:.2},{},{},{},{}\n",
            s.t_s,
            s.rss_kib,
            s.fds,
            s.held,
            s.threads,
            s.gateway_cpu_s,
            s.bench_cpu_s,
            s.machine_busy_s,
            s.attaches,
            s.echoes,
            s.api_creates,
            s.store_kib
        ));
    }
    out
}
