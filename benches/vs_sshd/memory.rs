//! Measurement 5: Memory per attached idle console session.
//!
//! The load client is this bench binary re-run as a child process
//! (`--load-client`), so that its memory is never counted as the gateway's:
//! one process, many russh client connections, each with one session
//! channel, a pty and a shell (consolegate: the outer hop's console; sshd:
//! the console command on the outer sshd). It reads commands on stdin:
//! `open N` attaches sessions until N are attached, then prints
//! `at N failed F`.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use russh::keys::{PrivateKeyWithHashAlg, PublicKey};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::host::PinnedHost;
use crate::rlimit::raise_nofile;
use crate::setup::{READY, System, World, sshd_console_command};
use crate::stats;

/// Connections being set up at once.
const OPENING: usize = 64;

/// The load client's arguments.
pub struct LoadArgs {
    port: u16,
    user: String,
    key: PathBuf,
    known_hosts: PathBuf,
    command: Option<String>,
}

impl LoadArgs {
    pub fn parse(args: &[String]) -> Result<LoadArgs> {
        let get = |i: usize| {
            args.get(i)
                .cloned()
                .context("load client: missing argument")
        };
        Ok(LoadArgs {
            port: get(0)?.parse()?,
            user: get(1)?,
            key: get(2)?.into(),
            known_hosts: get(3)?.into(),
            command: args.get(4).cloned(),
        })
    }
}

/// The child process's main loop.
pub async fn load_client(args: LoadArgs) -> Result<()> {
    raise_nofile(std::process::id());
    let known = std::fs::read_to_string(&args.known_hosts)?;
    let host_keys = crate::rate::host_keys(&known, "127.0.0.1", args.port)?;
    let key = Arc::new(russh::keys::load_secret_key(&args.key, None)?);
    let config = crate::host::client_config();
    let args = Arc::new(args);
    let mut sessions = Vec::new();
    let mut failed = 0u64;
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = stdin.next_line().await? {
        let Some(n) = line
            .strip_prefix("open ")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            break;
        };
        while sessions.len() < n {
            let batch = (n - sessions.len()).min(OPENING);
            let mut opening = tokio::task::JoinSet::new();
            for _ in 0..batch {
                let (config, args, key, host_keys) =
                    (config.clone(), args.clone(), key.clone(), host_keys.clone());
                opening.spawn(async move {
                    tokio::time::timeout(
                        Duration::from_secs(60),
                        attach(config, &args, key, host_keys),
                    )
                    .await
                    .context("timed out")?
                });
            }
            while let Some(r) = opening.join_next().await {
                match r {
                    Ok(Ok(s)) => sessions.push(s),
                    Ok(Err(e)) => {
                        failed += 1;
                        if failed <= 3 {
                            eprintln!("load client: {e:#}");
                        }
                    }
                    Err(_) => failed += 1,
                }
            }
            if failed > 100 && failed as usize > sessions.len() {
                break;
            }
        }
        println!("at {} failed {failed}", sessions.len());
    }
    Ok(())
}

type Session = (
    russh::client::Handle<PinnedHost>,
    tokio::task::JoinHandle<()>,
);

async fn attach(
    config: Arc<russh::client::Config>,
    args: &LoadArgs,
    key: Arc<russh::keys::PrivateKey>,
    host_keys: Arc<Vec<PublicKey>>,
) -> Result<Session> {
    let mut handle =
        russh::client::connect(config, ("127.0.0.1", args.port), PinnedHost { host_keys }).await?;
    let auth = handle
        .authenticate_publickey(&args.user, PrivateKeyWithHashAlg::new(key, None))
        .await?;
    if !auth.success() {
        bail!("authentication refused");
    }
    let mut channel = handle.channel_open_session().await?;
    channel
        .request_pty(false, "xterm", 80, 24, 0, 0, &[])
        .await?;
    match &args.command {
        Some(c) => channel.exec(true, c.as_bytes()).await?,
        None => channel.request_shell(true).await?,
    }
    // Attached once the console's greeting shows.
    let mut seen = Vec::new();
    loop {
        match channel.wait().await {
            Some(russh::ChannelMsg::Data { data }) => {
                seen.extend_from_slice(&data);
                if crate::setup::find(&seen, READY.as_bytes()).is_some() {
                    break;
                }
            }
            Some(russh::ChannelMsg::Eof | russh::ChannelMsg::Close) | None => {
                bail!("session ended: {}", String::from_utf8_lossy(&seen))
            }
            Some(_) => {}
        }
    }
    // Keep draining, as an idle terminal would.
    let drain = tokio::spawn(async move { while channel.wait().await.is_some() {} });
    Ok((handle, drain))
}

/// What one system's memory per session came to.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemoryPoint {
    /// Sessions asked for.
    pub target: usize,
    /// Sessions attached.
    pub reached: usize,
    pub failed: u64,
    /// Growth of the serving side's PSS over its idle baseline, in bytes.
    pub growth_bytes: u64,
    /// growth / reached, in KiB.
    pub kib_per_session: f64,
}

/// Attaches `counts` idle sessions (cumulatively) and measures the serving
/// side's memory growth at each.
pub async fn memory(world: &World, system: System, counts: &[usize]) -> Result<Vec<MemoryPoint>> {
    if system == System::Consolegate {
        // From a fresh process: a heap that earlier measurements grew would
        // absorb new sessions and flatter the figure.
        world.gateway.restart().await?;
    }
    let exe = std::env::current_exe()?;
    let (port, user, command) = match system {
        System::Consolegate => (
            world.gateway.port,
            world.gateway.connection("mem").to_owned(),
            None,
        ),
        System::Sshd => (
            world.outer.port,
            world.user.clone(),
            Some(sshd_console_command(world.console.port)),
        ),
    };
    let mut cmd = Command::new(exe);
    cmd.arg("--load-client")
        .arg(port.to_string())
        .arg(&user)
        .arg(&world.key)
        .arg(&world.known_hosts);
    if let Some(c) = command {
        cmd.arg(c);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut input = child.stdin.take().context("stdin")?;
    let mut output = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let measure = || match system {
        System::Consolegate => stats::pss(&world.gateway.pid().to_string()),
        System::Sshd => stats::process_tree(world.outer.pid())
            .iter()
            .map(|p| stats::pss(&p.to_string()))
            .sum(),
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = measure();
    if base == 0 {
        bail!("{}: no memory reading (smaps_rollup)", system.name());
    }
    let mut points = Vec::new();
    for &n in counts {
        input.write_all(format!("open {n}\n").as_bytes()).await?;
        input.flush().await?;
        let line = tokio::time::timeout(Duration::from_secs(900), output.next_line())
            .await
            .context("load client timed out")??
            .context("load client ended")?;
        let mut words = line.split_whitespace();
        let reached: usize = words.nth(1).context("load client said nothing")?.parse()?;
        let failed: u64 = words.nth(1).unwrap_or("0").parse()?;
        // Let the sessions settle (greetings sent, buffers drained).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let growth = measure().saturating_sub(base);
        // Sessions cost something: no growth means the process measured is
        // not the one serving them (a wrapper's, say), not a perfect score.
        if reached > 0 && growth == 0 {
            bail!(
                "{}: no memory growth measured at {reached} sessions; the process measured is not the one serving them",
                system.name()
            );
        }
        points.push(MemoryPoint {
            target: n,
            reached,
            failed,
            growth_bytes: growth,
            kib_per_session: growth as f64 / reached.max(1) as f64 / 1024.0,
        });
        eprintln!(
            "  {} at {reached} sessions ({failed} failed): +{:.1} MiB",
            system.name(),
            growth as f64 / 1048576.0
        );
        if reached < n {
            break;
        }
    }
    drop(input);
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let _ = child.start_kill();
    Ok(points)
}
