//! The workloads, run the same way against both systems.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::setup::{
    ConsoleServer, Hops, READY, System, World, finish, free_port, read_until, spawn_ssh,
};
use crate::stats::{ms, percentile};

/// How long one connection may take before it counts as failed.
const LIMIT: Duration = Duration::from_secs(30);

/// Spawns the console command line, waits for the first console byte;
/// returns the time it took and the running ssh.
async fn open_console(
    world: &World,
    system: System,
    instance: &str,
) -> Result<(Duration, tokio::process::Child, Vec<u8>)> {
    let start = Instant::now();
    let mut child = spawn_ssh(&world.console_argv(system, instance))?;
    let mut out = child.stdout.take().context("stdout")?;
    let rest = match read_until(&mut out, READY.as_bytes(), LIMIT).await {
        Ok(rest) => rest,
        Err(e) => {
            let mut err = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = tokio::time::timeout(
                    Duration::from_millis(500),
                    stderr.read_to_string(&mut err),
                )
                .await;
            }
            finish(child).await;
            bail!("{e}; ssh said: {}", err.trim());
        }
    };
    let elapsed = start.elapsed();
    child.stdout = Some(out);
    Ok((elapsed, child, rest))
}

/// Time to console: samples and the server's CPU per connection.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TimeToConsole {
    pub samples_ms: Vec<f64>,
    /// Server CPU per connection (set-up, console attach, teardown), ms.
    pub server_cpu_ms_per_connection: f64,
}

/// Measurement 2: Time from spawning ssh to the first console byte, `n` sequential runs (ms).
pub async fn time_to_console(world: &World, system: System, n: usize) -> Result<TimeToConsole> {
    let mut samples_ms = Vec::with_capacity(n);
    let cpu0 = world.server_cpu(system);
    for _ in 0..n {
        let (t, child, _) = open_console(world, system, "ttc").await?;
        samples_ms.push(ms(t));
        finish(child).await;
    }
    // Let the last teardown finish before reading the CPU.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu = world.server_cpu(system) - cpu0;
    Ok(TimeToConsole {
        samples_ms,
        server_cpu_ms_per_connection: cpu * 1000.0 / n as f64,
    })
}

/// Throughput through the two-hop tunnel, in MB/s (10^6 bytes), and the
/// server's CPU seconds per GB (10^9 bytes) moved.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Throughput {
    pub upload: f64,
    pub download: f64,
    pub upload_cpu_s_per_gb: f64,
    pub download_cpu_s_per_gb: f64,
}

impl Throughput {
    /// Each figure's median over `rounds`.
    pub fn median(rounds: &[Throughput]) -> Throughput {
        let m = |f: fn(&Throughput) -> f64| {
            let v: Vec<f64> = rounds.iter().map(f).collect();
            percentile(&v, 50.0)
        };
        Throughput {
            upload: m(|t| t.upload),
            download: m(|t| t.download),
            upload_cpu_s_per_gb: m(|t| t.upload_cpu_s_per_gb),
            download_cpu_s_per_gb: m(|t| t.download_cpu_s_per_gb),
        }
    }
}

/// Measurement 1: `bytes` each way through a `-L` tunnel over `hops`.
pub async fn throughput(
    world: &World,
    system: System,
    hops: Hops,
    bytes: u64,
) -> Result<Throughput> {
    let port = free_port().await?;
    let child = spawn_ssh(&world.tunnel_argv(system, hops, port))?;
    let gb = bytes as f64 / 1e9;
    let result = async {
        // Warm up (and wait for the forward to listen) with a small transfer.
        transfer(port, b'D', 1 << 20).await?;
        let cpu0 = world.server_cpu(system);
        let up = transfer(port, b'U', bytes).await?;
        let cpu1 = world.server_cpu(system);
        let down = transfer(port, b'D', bytes).await?;
        let cpu2 = world.server_cpu(system);
        Ok(Throughput {
            upload: bytes as f64 / up.as_secs_f64() / 1e6,
            download: bytes as f64 / down.as_secs_f64() / 1e6,
            upload_cpu_s_per_gb: (cpu1 - cpu0) / gb,
            download_cpu_s_per_gb: (cpu2 - cpu1) / gb,
        })
    }
    .await;
    finish(child).await;
    result
}

/// A process that keeps one core busy for as long as it is held: the
/// "second loaded core" the throughput is also measured under. A shell
/// loop, not a thread of the bench, so that the scheduler weighs it as one
/// more process, as it would a neighbour's build.
pub struct BusyCore(tokio::process::Child);

impl BusyCore {
    pub fn start() -> Result<BusyCore> {
        let child = tokio::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .kill_on_drop(true)
            .spawn()
            .context("start the busy loop")?;
        Ok(BusyCore(child))
    }

    pub async fn stop(mut self) {
        let _ = self.0.kill().await;
    }
}

async fn connect_eventually(port: u16) -> Result<TcpStream> {
    let deadline = Instant::now() + LIMIT;
    loop {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => bail!("forward never listened: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn transfer(port: u16, kind: u8, bytes: u64) -> Result<Duration> {
    let mut s = connect_eventually(port).await?;
    s.set_nodelay(true)?;
    let mut head = vec![kind];
    head.extend_from_slice(&bytes.to_be_bytes());
    let start = Instant::now();
    s.write_all(&head).await?;
    let mut buf = vec![0xa5u8; 256 * 1024];
    let work = async {
        if kind == b'U' {
            let mut left = bytes;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                s.write_all(&buf[..n]).await?;
                left -= n as u64;
            }
            let mut k = [0u8; 1];
            s.read_exact(&mut k).await?;
        } else {
            let mut left = bytes;
            while left > 0 {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    bail!("tunnel closed with {left} bytes to go");
                }
                left = left.saturating_sub(n as u64);
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(300), work)
        .await
        .context("transfer timed out")??;
    Ok(start.elapsed())
}

/// Keystrokes sent before the timed ones, on every path alike: the first
/// dozen or so round trips after the console goes quiet take 2-3x the
/// steady state on both systems (cold caches and parked threads), and out of
/// 1000 samples they alone would set the p99.
const WARM_UP_KEYS: usize = 20;

/// Measurement 4: Keystroke round trips (ms) through an attached console; `None` is the
/// floor: a direct TCP socket to the echoing console.
pub async fn keystrokes(world: &World, system: Option<System>, n: usize) -> Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(WARM_UP_KEYS + n);
    match system {
        None => {
            let mut s = TcpStream::connect(("127.0.0.1", world.console.port)).await?;
            s.set_nodelay(true)?;
            let mut greeting = vec![0u8; READY.len() + 2];
            s.read_exact(&mut greeting).await?;
            let mut b = [0u8; 1];
            for i in 0..WARM_UP_KEYS + n {
                let key = b'a' + (i % 26) as u8;
                let t = Instant::now();
                s.write_all(&[key]).await?;
                loop {
                    s.read_exact(&mut b).await?;
                    if b[0] == key {
                        break;
                    }
                }
                samples.push(ms(t.elapsed()));
            }
        }
        Some(system) => {
            let (_, mut child, _) = open_console(world, system, "keys").await?;
            let mut out = child.stdout.take().context("stdout")?;
            let mut input = child.stdin.take().context("stdin")?;
            // Let the greeting and replay finish, then drop them.
            let mut junk = [0u8; 4096];
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(300), out.read(&mut junk)).await
            {
                if n == 0 {
                    bail!("console closed");
                }
            }
            let keys: Vec<u8> = (0..WARM_UP_KEYS + n)
                .map(|i| b'a' + (i % 26) as u8)
                .collect();
            samples = crate::shared::echo_round_trips(&mut input, &mut out, &keys, LIMIT).await?;
            drop(input);
            finish(child).await;
        }
    }
    Ok(samples.split_off(WARM_UP_KEYS))
}

/// Connection rate at a given concurrency.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Rate {
    pub sessions_per_sec: f64,
    pub ok: u64,
    pub failures: u64,
    /// Server CPU over the run (until every worker finished) divided by the
    /// connections made, ms.
    pub server_cpu_ms_per_connection: f64,
}

/// Measurement 3: `concurrency` workers, each opening the console connection, waiting
/// for the first console byte, and ending ssh, for `secs`.
pub async fn connection_rate(
    world: &Arc<World>,
    system: System,
    concurrency: usize,
    secs: f64,
) -> Result<Rate> {
    let ok = Arc::new(AtomicU64::new(0));
    let made = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let cpu0 = world.server_cpu(system);
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (world, ok, made, failed, first_error) = (
            world.clone(),
            ok.clone(),
            made.clone(),
            failed.clone(),
            first_error.clone(),
        );
        workers.spawn(async move {
            while Instant::now() < deadline {
                match open_console(&world, system, "rate").await {
                    Ok((_, child, _)) => {
                        finish(child).await;
                        made.fetch_add(1, Ordering::Relaxed);
                        // Only connections that completed in the window count.
                        if Instant::now() <= deadline {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        first_error.lock().unwrap().get_or_insert(e.to_string());
                    }
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = world.server_cpu(system) - cpu0;
    let made = made.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
    if let Some(e) = first_error.lock().unwrap().take() {
        eprintln!("  {}: first failure: {e}", system.name());
    }
    let ok = ok.load(Ordering::Relaxed);
    Ok(Rate {
        sessions_per_sec: ok as f64 / secs,
        ok,
        failures: failed.load(Ordering::Relaxed),
        server_cpu_ms_per_connection: cpu * 1000.0 / made.max(1) as f64,
    })
}

/// Fan-out: one console printing to many viewers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Fanout {
    pub viewers: usize,
    pub secs: f64,
    pub bytes_per_viewer: u64,
    pub bytes_lost: u64,
    pub lossless_viewers: usize,
    /// CPU of the serving side, in % of one core.
    pub server_cpu_percent: f64,
}

const LINE: usize = 100;
const TICK: Duration = Duration::from_millis(10);

/// Measurement 6: `viewers` real ssh viewers of the `fan` console, which prints
/// `rate` bytes/s for `secs`.
pub async fn fanout(
    world: &World,
    fan: &ConsoleServer,
    system: System,
    viewers: usize,
    rate: usize,
    secs: f64,
) -> Result<Fanout> {
    let lines_per_tick = (rate / LINE) / (1000 / TICK.as_millis() as usize);
    let ticks = (secs / TICK.as_secs_f64()).round() as u64;
    let expected_lines = ticks * lines_per_tick as u64;
    let ready = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let done = Arc::new(AtomicU64::new(0));
    let release = tokio_util::sync::CancellationToken::new();
    for _ in 0..viewers {
        let argv = world.console_argv(system, "fan");
        let (ready, done, release) = (ready.clone(), done.clone(), release.clone());
        tasks.push(tokio::spawn(async move {
            let mut child = spawn_ssh(&argv)?;
            let mut out = child.stdout.take().context("stdout")?;
            let counted = view(&mut out, &ready).await;
            // Keep the session until the CPU has been read.
            done.fetch_add(1, Ordering::Relaxed);
            release.cancelled().await;
            finish(child).await;
            counted
        }));
    }
    let wait_ready = async {
        while (ready.load(Ordering::Relaxed) as usize) < viewers {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(120), wait_ready)
        .await
        .is_err()
    {
        for t in &tasks {
            t.abort();
        }
        bail!(
            "only {} of {viewers} viewers attached",
            ready.load(Ordering::Relaxed)
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let cpu0 = world.server_cpu(system);
    let wall = Instant::now();
    let console = fan.clone();
    let emitter = tokio::spawn(async move {
        console.emit(Bytes::from_static(b"FANOUT-BEGIN\n"));
        let mut tick = tokio::time::interval(TICK);
        let mut seq = 0u64;
        for _ in 0..ticks {
            tick.tick().await;
            let mut chunk = Vec::with_capacity(lines_per_tick * LINE);
            for _ in 0..lines_per_tick {
                chunk.extend_from_slice(format!("{seq:012} ").as_bytes());
                chunk.resize(chunk.len() + LINE - 14, b'x');
                chunk.push(b'\n');
                seq += 1;
            }
            console.emit(Bytes::from(chunk));
        }
        console.emit(Bytes::from_static(b"FANOUT-END\n"));
    });
    emitter.await?;
    let all_done = async {
        while (done.load(Ordering::Relaxed) as usize) < viewers {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout(LIMIT, all_done).await;
    let elapsed = wall.elapsed().as_secs_f64();
    // Read before the viewers exit: sshd's per-session processes go with them.
    let server_cpu = world.server_cpu(system) - cpu0;
    release.cancel();
    let mut received = Vec::new();
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(60), t).await {
            Ok(Ok(Ok(lines))) => received.push(lines),
            Ok(Ok(Err(e))) => {
                eprintln!("  viewer failed: {e}");
                received.push(0);
            }
            _ => received.push(0),
        }
    }
    let lost: u64 = received
        .iter()
        .map(|&l| expected_lines.saturating_sub(l) * LINE as u64)
        .sum();
    Ok(Fanout {
        viewers,
        secs,
        bytes_per_viewer: expected_lines * LINE as u64,
        bytes_lost: lost,
        lossless_viewers: received.iter().filter(|&&l| l >= expected_lines).count(),
        server_cpu_percent: server_cpu / elapsed * 100.0,
    })
}

/// A viewer: waits to be attached, then counts the stream's intact lines.
async fn view(out: &mut tokio::process::ChildStdout, ready: &AtomicU64) -> Result<u64> {
    read_until(out, READY.as_bytes(), LIMIT).await?;
    ready.fetch_add(1, Ordering::Relaxed);
    let mut seen = read_until(out, b"FANOUT-BEGIN\n", Duration::from_secs(600))
        .await
        .context("viewer never saw the stream begin")?;
    let mut lines = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let end = b"FANOUT-END\n";
    loop {
        // Count whole lines, keep the tail.
        let mut start = 0;
        while let Some(nl) = seen[start..].iter().position(|&b| b == b'\n') {
            let line = &seen[start..start + nl];
            if line.len() == LINE - 1 && line[..12].iter().all(u8::is_ascii_digit) {
                lines += 1;
            }
            if &seen[start..start + nl + 1] == end {
                return Ok(lines);
            }
            start += nl + 1;
        }
        seen.drain(..start);
        let n = tokio::time::timeout(LIMIT, out.read(&mut buf))
            .await
            .context("viewer stalled")??;
        if n == 0 {
            bail!("viewer's ssh ended before the stream did");
        }
        seen.extend_from_slice(&buf[..n]);
    }
}
