//! What the node link costs: a console viewer on a node that does not hold
//! the console (its session relayed to the holder) against one on the
//! holder, same console, same machine.
//!
//! `cargo bench --bench relay [-- --quick] [-- --out DIR]`
//!
//! Sets up a fleet of two real `consolegate serve` processes on a private
//! PostgreSQL server (tests/postgres/server.sh, Debian's `postgresql`), with
//! node names chosen so that the first node holds both consoles, and
//! console servers run by the bench. Both viewers are the real `/usr/bin/ssh`
//! with a connectionString. Measures keystroke echo (a key typed, through
//! the console and back; both viewers attached at once and typing in turn,
//! so that each pair of samples shares its conditions) and console output
//! throughput (a burst the console prints), and prints holder, relayed, their ratio and the target (the
//! relay adds at most 0.5 ms to the keystroke p99). Writes `relay.json` to
//! the output directory (default `target/bench`). It reports; it never fails
//! on a target.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

#[path = "shared/ssh.rs"]
mod shared;
use shared::spawn_ssh;

const BIN: &str = env!("CARGO_BIN_EXE_consolegate");
/// What the burst console prints last.
const END: &[u8] = b"\r\n--end of burst--\r\n";
/// The key that asks the burst console for its burst.
const GO: u8 = b'G';
/// How long any one wait may take.
const LIMIT: Duration = Duration::from_secs(60);
/// Keystrokes before the timed ones (cold caches, parked threads).
const WARM_UP_KEYS: usize = 20;

struct Options {
    quick: bool,
    out: PathBuf,
}

fn options() -> Result<Options> {
    let mut o = Options {
        quick: false,
        out: PathBuf::from("target/bench"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--out" => o.out = args.next().context("--out DIR")?.into(),
            "--bench" => {}
            other => bail!("unknown argument {other:?}; use --quick, --out DIR"),
        }
    }
    Ok(o)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let o = options()?;
    let (keys, burst_mib, rounds) = if o.quick { (50, 2, 1) } else { (1000, 32, 3) };
    let dir = tempfile::tempdir()?;
    let url = database().await?;
    let echo_port = console_server(false, 0).await?;
    let burst_port = console_server(true, burst_mib << 20).await?;
    let instances = format!(
        "[[instance]]\nid = \"keys\"\nserial = \"tcp:127.0.0.1:{echo_port}\"\nreplay = \"none\"\n\n\
         [[instance]]\nid = \"burst\"\nserial = \"tcp:127.0.0.1:{burst_port}\"\nreplay = \"none\"\n\
         history_bytes = 65536\n"
    );
    // Names such that the first node holds both consoles.
    let (holder, relayer) = (0..)
        .map(|i| (format!("bench-a{i}"), format!("bench-b{i}")))
        .find(|(a, b)| {
            let nodes = [a.as_str(), b.as_str()];
            ["keys", "burst"]
                .iter()
                .all(|i| consolegate::fleet::preferred(&nodes, i) == a)
        })
        .expect("some pair of names");
    let a = Node::start(dir.path(), &holder, &url, &instances, None).await?;
    let b = Node::start(dir.path(), &relayer, &url, &instances, Some(&a)).await?;
    wait_holding(&a, 2).await?;
    let key = keygen(dir.path())?;
    let known_hosts = dir.path().join("known_hosts");
    let keys_conn = create(&a, "keys", &key, &known_hosts, &[&a, &b]).await?;
    let burst_conn = create(&a, "burst", &key, &known_hosts, &[&a, &b]).await?;

    println!("relay bench: {keys} keystrokes and {burst_mib} MiB bursts, {rounds} round(s)");
    let mut samples = [Vec::new(), Vec::new()];
    let mut rates = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        let to_keys = [&a, &b].map(|node| argv(node, &keys_conn, "keys", &key, &known_hosts));
        let [own, rel] = keystrokes(&to_keys, keys).await?;
        samples[0].extend(own);
        samples[1].extend(rel);
        for (i, node) in [&a, &b].into_iter().enumerate() {
            let to_burst = argv(node, &burst_conn, "burst", &key, &known_hosts);
            rates[i].push(burst(&to_burst, burst_mib << 20).await?);
        }
    }
    let p = |s: &mut Vec<f64>, q: f64| {
        s.sort_by(f64::total_cmp);
        s[((s.len() as f64 - 1.0) * q).round() as usize]
    };
    let [mut own, mut rel] = samples;
    let (own50, rel50) = (p(&mut own, 0.5), p(&mut rel, 0.5));
    let (own99, rel99) = (p(&mut own, 0.99), p(&mut rel, 0.99));
    let [mut own_rate, mut rel_rate] = rates;
    let (own_mbs, rel_mbs) = (p(&mut own_rate, 0.5), p(&mut rel_rate, 0.5));
    let added = rel99 - own99;
    println!(
        "{:<34} {:>10} {:>10} {:>8}  target",
        "figure", "holder", "relayed", "ratio"
    );
    let row = |name: &str, h: f64, r: f64, target: &str| {
        println!("{name:<34} {h:>10.3} {r:>10.3} {:>7.2}x  {target}", r / h)
    };
    row("keystroke echo p50 (ms)", own50, rel50, "");
    row("keystroke echo p99 (ms)", own99, rel99, "");
    let verdict = match (o.quick, added <= 0.5) {
        (true, _) => "",
        (false, true) => "met",
        (false, false) => "NOT met",
    };
    println!(
        "{:<34} {added:>21.3}           added ≤ 0.5 ms {verdict}",
        "relay adds to the p99 (ms)"
    );
    row("console output (MB/s)", own_mbs, rel_mbs, "(context)");
    let results = serde_json::json!({
        "quick": o.quick,
        "keystrokes": keys,
        "burst_bytes": burst_mib << 20,
        "rounds": rounds,
        "keystroke_ms": {
            "holder": {"p50": own50, "p99": own99},
            "relayed": {"p50": rel50, "p99": rel99},
            "added_p99": added,
            "target_added_p99": 0.5,
            "met": (!o.quick).then_some(added <= 0.5),
        },
        "output_mb_per_s": {"holder": own_mbs, "relayed": rel_mbs},
    });
    std::fs::create_dir_all(&o.out)?;
    std::fs::write(
        o.out.join("relay.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    a.stop().await;
    b.stop().await;
    Ok(())
}

/// A fresh database on the tests' private PostgreSQL server.
async fn database() -> Result<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/postgres/server.sh");
    let out = std::process::Command::new(&script).output()?;
    if !out.status.success() {
        bail!(
            "no PostgreSQL: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let base = String::from_utf8(out.stdout)?.trim().to_owned();
    let name = format!("bench_relay_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&format!("{base}/postgres")).await?;
    // The name is ours (digits and underscores), not input.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name}"
    )))
    .execute(&admin)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await?;
    admin.close().await;
    Ok(format!("{base}/{name}"))
}

/// A console: echoes what it reads (a serial line with echo on), or, as the
/// burst console, answers [`GO`] with `burst` bytes of text and [`END`].
async fn console_server(bursts: bool, burst: usize) -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let text: Vec<u8> = (0..burst)
        .map(|i| {
            if i % 80 == 79 {
                b'\n'
            } else {
                b'a' + (i % 26) as u8
            }
        })
        .collect();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let text = text.clone();
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let wrote = if !bursts {
                        s.write_all(&buf[..n]).await
                    } else if buf[..n].contains(&GO) {
                        match s.write_all(&text).await {
                            Ok(()) => s.write_all(END).await,
                            Err(e) => Err(e),
                        }
                    } else {
                        Ok(())
                    };
                    if wrote.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

struct Node {
    id: String,
    dir: PathBuf,
    config: PathBuf,
    port: u16,
    child: Child,
}

impl Node {
    async fn start(
        root: &Path,
        id: &str,
        url: &str,
        instances: &str,
        keys_from: Option<&Node>,
    ) -> Result<Node> {
        let dir = root.join(id);
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        if let Some(other) = keys_from {
            for file in ["ssh_host_ed25519_key", "ssh_host_rsa_key"] {
                std::fs::copy(other.dir.join("data").join(file), data.join(file))?;
            }
        }
        let port = free_port().await?;
        let api = free_port().await?;
        let config = dir.join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"data\"\n\
                 [ssh]\nlisten = \"127.0.0.1:{port}\"\npublic_host = \"127.0.0.1\"\n\
                 [api]\nlisten = \"127.0.0.1:{api}\"\n\
                 [store]\nurl = \"{url}\"\n\
                 [cluster]\nnode_id = \"{id}\"\nlisten = \"127.0.0.1:0\"\n\
                 [log]\nlevel = \"warn\"\n\n{instances}"
            ),
        )?;
        let log = std::fs::File::create(dir.join("serve.log"))?;
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("start consolegate serve")?;
        let admin = data.join("admin.sock");
        let deadline = Instant::now() + LIMIT;
        while !admin.exists() {
            if Instant::now() > deadline {
                bail!(
                    "node {id} did not start: see {}",
                    dir.join("serve.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Node {
            id: id.to_owned(),
            dir,
            config,
            port,
            child,
        })
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
    }
}

async fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port())
}

/// Waits until `node` holds `n` consoles.
async fn wait_holding(node: &Node, n: u64) -> Result<()> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let out = Command::new(BIN)
            .args(["cluster", "status", "--json", "--config"])
            .arg(&node.config)
            .output()
            .await?;
        let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let held = nodes
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["nodeId"] == node.id.as_str())
            .and_then(|v| v["consoles"].as_u64());
        if held == Some(n) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("node {} never held {n} consoles: {nodes}", node.id);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn keygen(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("bench_key");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-t", "ed25519", "-f"])
        .arg(&path)
        .status()?;
    if !status.success() {
        bail!("ssh-keygen failed");
    }
    Ok(path)
}

/// Creates a console connection for `instance` and adds its known_hosts
/// lines, for every node's port, to `known_hosts`; returns its id.
async fn create(
    node: &Node,
    instance: &str,
    key: &Path,
    known_hosts: &Path,
    nodes: &[&Node],
) -> Result<String> {
    let out = Command::new(BIN)
        .args([
            "connection",
            "create",
            "--instance",
            instance,
            "--public-key-file",
        ])
        .arg(key.with_extension("pub"))
        .arg("--config")
        .arg(&node.config)
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "connection create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut lines = std::fs::read_to_string(known_hosts).unwrap_or_default();
    for line in v["knownHosts"].as_array().into_iter().flatten() {
        let line = line.as_str().unwrap_or_default();
        for n in nodes {
            lines.push_str(&line.replace(&format!("]:{} ", node.port), &format!("]:{} ", n.port)));
            lines.push('\n');
        }
    }
    std::fs::write(known_hosts, lines)?;
    Ok(v["id"].as_str().context("no id")?.to_owned())
}

/// The connectionString's shape, pointed at `node`.
fn argv(node: &Node, id: &str, instance: &str, key: &Path, known_hosts: &Path) -> Vec<String> {
    let opts = [
        "-F /dev/null".to_owned(),
        format!("-i {}", key.display()),
        "-o IdentitiesOnly=yes".to_owned(),
        format!("-o UserKnownHostsFile={}", known_hosts.display()),
        "-o GlobalKnownHostsFile=/dev/null".to_owned(),
        "-o StrictHostKeyChecking=yes".to_owned(),
        "-o BatchMode=yes".to_owned(),
        "-o LogLevel=ERROR".to_owned(),
        "-o KexAlgorithms=curve25519-sha256".to_owned(),
    ]
    .join(" ");
    let mut argv: Vec<String> = opts.split(' ').map(str::to_owned).collect();
    argv.push("-tt".into());
    argv.push("-o".into());
    argv.push(format!(
        "ProxyCommand=ssh {opts} -W %h:%p -p {} {id}@127.0.0.1",
        node.port
    ));
    argv.push(instance.into());
    argv
}

/// Opens the console and waits until its greeting has been shown and it
/// has gone quiet.
async fn attach(
    argv: &[String],
) -> Result<(
    Child,
    tokio::process::ChildStdin,
    tokio::process::ChildStdout,
)> {
    let mut child = spawn_ssh(argv)?;
    let mut out = child.stdout.take().context("stdout")?;
    let input = child.stdin.take().context("stdin")?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(LIMIT, async {
        while !seen
            .windows(b"&? for help]".len())
            .any(|w| w == b"&? for help]")
        {
            let n = out.read(&mut buf).await?;
            if n == 0 {
                bail!("ssh ended: {}", String::from_utf8_lossy(&seen));
            }
            seen.extend_from_slice(&buf[..n]);
        }
        anyhow::Ok(())
    })
    .await
    .context("no console greeting")??;
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), out.read(&mut buf)).await
    {
        if n == 0 {
            bail!("console closed");
        }
    }
    Ok((child, input, out))
}

/// Keystroke round trips (ms): a key typed, echoed by the console, seen.
async fn keystrokes(argvs: &[Vec<String>; 2], n: usize) -> Result<[Vec<f64>; 2]> {
    // Both viewers attached to the one echoing console at once, typing in
    // turn (from separate alphabets, so neither takes the other's echo for
    // its own) and taking turns at going first: each pair of samples is
    // taken under the same conditions. A key's echo reaches both viewers;
    // the next key waits until it has, so no sample shares the path with
    // the tail of the one before.
    let mut viewers = [attach(&argvs[0]).await?, attach(&argvs[1]).await?];
    const KEYS: [&[u8]; 2] = [b"abcdefghijklm", b"nopqrstuvwxyz"];
    let mut samples = [Vec::with_capacity(n), Vec::with_capacity(n)];
    for i in 0..WARM_UP_KEYS + n {
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for who in order {
            let key = [KEYS[who][i % KEYS[who].len()]];
            let (_, input, out) = &mut viewers[who];
            let took = shared::echo_round_trips(input, out, &key, LIMIT).await?;
            // The other viewer sees the same echo: wait for it, untimed.
            let (_, _, other) = &mut viewers[1 - who];
            shared::read_past(other, key[0], LIMIT).await?;
            if i >= WARM_UP_KEYS {
                samples[who].extend(took);
            }
        }
    }
    drop(viewers);
    Ok(samples)
}

/// Console output throughput (MB/s): the burst console asked for `bytes`,
/// timed until its end marker is seen.
async fn burst(argv: &[String], bytes: usize) -> Result<f64> {
    let (child, mut input, mut out) = attach(argv).await?;
    let t = Instant::now();
    input.write_all(&[GO]).await?;
    input.flush().await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut tail: Vec<u8> = Vec::new();
    let mut got = 0usize;
    tokio::time::timeout(LIMIT * 5, async {
        loop {
            let n = out.read(&mut buf).await?;
            if n == 0 {
                bail!("console closed after {got} bytes");
            }
            got += n;
            tail.extend_from_slice(&buf[..n]);
            if tail.windows(END.len()).any(|w| w == END) {
                return anyhow::Ok(());
            }
            let keep = tail.len().saturating_sub(END.len());
            tail.drain(..keep);
        }
    })
    .await
    .context("the burst never ended")??;
    let secs = t.elapsed().as_secs_f64();
    drop(input);
    drop(child);
    if got < bytes {
        bail!("saw {got} of {bytes} bytes");
    }
    Ok(bytes as f64 / secs / 1e6)
}
