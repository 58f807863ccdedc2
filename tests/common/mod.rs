//! Test harness: a real gateway on an ephemeral port, the real `consolegate`
//! binary for the CLI, real `ssh-keygen` keys, and the real `/usr/bin/ssh`
//! running in a real pseudo-terminal (as a user's terminal would run it).
#![allow(dead_code)]

pub mod oci;
pub mod russh_client;
pub mod served;
pub mod signer;
pub mod web;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use consolegate::config::Config;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// How long any single wait in a test may take before the test fails. A
/// guard against hangs, never a measurement.
pub const GUARD: Duration = Duration::from_secs(30);

/// The `consolegate` binary built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_consolegate");

/// A gateway running in this process.
pub struct Gateway {
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub port: u16,
    pub api_port: u16,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Starts a gateway whose `[[instance]]` entries are `instances` (TOML).
    pub async fn start(instances: &str) -> Gateway {
        Gateway::start_in(tempfile::tempdir().unwrap(), 0, instances).await
    }

    /// Starts a gateway in `dir` (reusing its data) on `port` (0: any free port).
    pub async fn start_in(dir: TempDir, port: u16, instances: &str) -> Gateway {
        Gateway::start_with(dir, port, "", instances).await
    }

    /// [`Gateway::start_in`], with more `[ssh]` settings (TOML lines).
    pub async fn start_with(dir: TempDir, port: u16, ssh: &str, instances: &str) -> Gateway {
        let listener = bind_retrying(port).await;
        let port = listener.local_addr().unwrap().port();
        let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_port = api.local_addr().unwrap().port();
        let config_path = dir.path().join("gateway.toml");
        // Deletes reach live sessions within a second, unless a test says.
        let revalidate = if ssh.contains("revalidate_interval_secs") {
            ""
        } else {
            "revalidate_interval_secs = 1\n"
        };
        // The tests' clients all come from 127.0.0.1, and many fail to log
        // in on purpose, or open a crowd of connections: no per-source
        // limits or penalties for it, and room for the crowd before random
        // drops, unless a test says (tests/hostile.rs tests the defaults,
        // attacking from other loopback addresses).
        let mut exempt = String::new();
        if !ssh.contains("exempt_sources") {
            exempt += "exempt_sources = [\"127.0.0.1\"]\n";
        }
        if !ssh
            .lines()
            .any(|l| l.trim_start().starts_with("max_startups"))
        {
            exempt += "max_startups = \"100:30:200\"\n";
        }
        let text = format!(
            "data_dir = \"data\"\n\
             [ssh]\nlisten = \"127.0.0.1:{port}\"\npublic_host = \"127.0.0.1\"\npublic_port = {port}\n\
             {revalidate}{exempt}handshake_timeout_secs = 10\n{ssh}\
             [api]\nlisten = \"127.0.0.1:{api_port}\"\n\
             [nova]\nxterm_dir = \"{}/web/node_modules/@xterm/xterm\"\n\
             [log]\nlevel = \"consolegate=debug,russh=warn\"\n\n{instances}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::write(&config_path, text).unwrap();
        let config = Config::load(&config_path).unwrap();
        // Create host keys and the database before the CLI can race for them.
        let (store, _) = consolegate::gateway::open_state(&config).await.unwrap();
        store.close().await;
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            let listeners = consolegate::gateway::Listeners {
                ssh: listener,
                api,
                metrics: None,
            };
            consolegate::gateway::run(config, listeners, token)
                .await
                .expect("gateway failed");
        });
        // Started once its admin socket exists: its store and host keys are
        // loaded by then (a test may replace the key files next).
        let admin = dir.path().join("data/admin.sock");
        tokio::time::timeout(GUARD, async {
            while !admin.exists() && !task.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the gateway did not start");
        Gateway {
            dir,
            config_path,
            port,
            api_port,
            shutdown,
            task,
        }
    }

    /// Stops the gateway gracefully and hands back its directory.
    pub async fn stop(self) -> TempDir {
        self.shutdown.cancel();
        tokio::time::timeout(GUARD, self.task)
            .await
            .expect("gateway did not stop")
            .expect("gateway task panicked");
        self.dir
    }

    /// Stops the gateway as a crash would: its tasks are dropped where they
    /// stand, nothing is said or written on the way out.
    pub async fn crash(self) -> TempDir {
        self.task.abort();
        let _ = self.task.await;
        self.dir
    }

    /// Runs `consolegate <args> --config <this gateway's config>`.
    pub async fn cli(&self, args: &[&str]) -> Output {
        run_cli(&self.config_path, args).await
    }

    /// Creates a console connection with the CLI; panics if that fails.
    pub async fn create(&self, instance: &str, key: &Key) -> Connection {
        create_connection(&self.config_path, instance, key, self.dir.path()).await
    }

    /// A path inside the gateway's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

async fn bind_retrying(port: u16) -> TcpListener {
    for _ in 0..50 {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => return l,
            Err(_) if port != 0 => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("bind: {e}"),
        }
    }
    panic!("port {port} stayed busy");
}

/// Runs the CLI binary against a config file.
pub async fn run_cli(config: &Path, args: &[&str]) -> Output {
    tokio::time::timeout(
        GUARD,
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .output(),
    )
    .await
    .expect("CLI hung")
    .expect("cannot run consolegate")
}

/// Creates a node's private `data` directory (owner-only), with the SSH
/// host keys of the node whose data directory is `keys_from`, if any:
/// nodes behind one name present one host key.
pub fn node_data_dir(data: &Path, keys_from: Option<&Path>) {
    std::fs::create_dir_all(data).unwrap();
    std::fs::set_permissions(data, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    if let Some(from) = keys_from {
        for file in ["ssh_host_ed25519_key", "ssh_host_rsa_key"] {
            std::fs::copy(from.join(file), data.join(file)).unwrap();
        }
    }
}

/// Issues a console token for `instance`'s `protocol` console on the store
/// of the gateway configured by `config`, as the Nova API does.
pub async fn console_token(
    config: &Path,
    instance: &str,
    protocol: consolegate::connections::tokens::ConsoleProtocol,
) -> String {
    let config = Config::load(config).unwrap();
    let (store, _) = consolegate::gateway::open_state(&config).await.unwrap();
    let shared = consolegate::config::SharedConfig::new(std::sync::Arc::new(config));
    let tokens = consolegate::connections::ConsoleTokens::new(store.clone(), shared);
    let token = tokens.issue(instance, protocol).await.unwrap();
    store.close().await;
    token
}

/// `consolegate cluster status --json` against `config`: one object per
/// node.
pub async fn cluster_status(config: &Path) -> Vec<Value> {
    let out = run_cli(config, &["cluster", "status", "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).unwrap() {
        Value::Array(nodes) => nodes,
        other => panic!("cluster status printed {other}"),
    }
}

/// Creates a console connection with the CLI against `config`; its
/// known_hosts file goes into `dir`. Panics if that fails.
pub async fn create_connection(config: &Path, instance: &str, key: &Key, dir: &Path) -> Connection {
    let out = run_cli(
        config,
        &[
            "connection",
            "create",
            "--instance",
            instance,
            "--public-key-file",
            key.public.to_str().unwrap(),
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "connection create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Connection::from_json(
        serde_json::from_slice(&out.stdout).expect("create printed no JSON"),
        dir,
    )
}

/// A key pair made by `ssh-keygen`.
pub struct Key {
    pub private: PathBuf,
    pub public: PathBuf,
}

impl Key {
    /// `ssh-keygen -t <kind> [-b bits]` into `dir/name`.
    pub fn generate(dir: &Path, name: &str, kind: &str, bits: Option<u32>) -> Key {
        let private = dir.join(name);
        let mut cmd = std::process::Command::new("ssh-keygen");
        cmd.args(["-q", "-N", "", "-C", name, "-t", kind, "-f"])
            .arg(&private);
        if let Some(bits) = bits {
            cmd.arg("-b").arg(bits.to_string());
        }
        let status = cmd.status().expect("ssh-keygen");
        assert!(status.success(), "ssh-keygen -t {kind} failed");
        Key {
            public: private.with_extension("pub"),
            private,
        }
    }

    pub fn ed25519(dir: &Path, name: &str) -> Key {
        Key::generate(dir, name, "ed25519", None)
    }

    /// The fingerprint `ssh-keygen -l` prints.
    pub fn ssh_keygen_fingerprint(&self) -> String {
        let out = std::process::Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&self.public)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned()
    }
}

/// A console connection as `connection create` printed it.
pub struct Connection {
    pub json: Value,
    pub id: String,
    pub connection_string: String,
    pub vnc_connection_string: String,
    /// The printed `knownHosts` lines, written to a file.
    pub known_hosts: PathBuf,
}

impl Connection {
    pub fn from_json(json: Value, dir: &Path) -> Connection {
        let id = json["id"].as_str().unwrap().to_owned();
        let known_hosts = dir.join(format!("known_hosts-{}", &id[id.len() - 8..]));
        let lines: Vec<&str> = json["knownHosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        std::fs::write(&known_hosts, lines.join("\n") + "\n").unwrap();
        Connection {
            connection_string: json["connectionString"].as_str().unwrap().to_owned(),
            vnc_connection_string: json["vncConnectionString"].as_str().unwrap().to_owned(),
            id,
            json,
            known_hosts,
        }
    }

    /// [`Connection::ssh_argv`] with session options as the inner hop's user.
    pub fn ssh_argv_as(&self, key: &Key, user: &str) -> Vec<String> {
        let mut argv = self.ssh_argv(key);
        let host = argv.pop().unwrap();
        argv.push(format!("{user}@{host}"));
        argv
    }

    /// The connection string as argv, with only key and known-hosts options
    /// added to both hops.
    pub fn ssh_argv(&self, key: &Key) -> Vec<String> {
        argv_with_options(&self.connection_string, key, key, &self.known_hosts)
    }
}

/// Client options added to each hop: which key, which known_hosts, no prompts.
pub fn client_options(key: &Key, known_hosts: &Path) -> Vec<String> {
    [
        "-F",
        "/dev/null",
        "-i",
        key.private.to_str().unwrap(),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        &format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Splits an OpenSSH command line and adds client options: `outer_key` to
/// the ProxyCommand's ssh, `inner_key` to the main ssh.
pub fn argv_with_options(
    command_line: &str,
    outer_key: &Key,
    inner_key: &Key,
    known_hosts: &Path,
) -> Vec<String> {
    let mut argv = shlex::split(command_line).expect("connection string is not shell syntax");
    assert_eq!(argv[0], "ssh");
    for arg in argv.iter_mut() {
        if let Some(proxy) = arg.strip_prefix("ProxyCommand=") {
            let rest = proxy.strip_prefix("ssh ").expect("ProxyCommand runs ssh");
            let opts = client_options(outer_key, known_hosts).join(" ");
            *arg = format!("ProxyCommand=ssh {opts} {rest}");
        }
    }
    let mut out = vec!["ssh".to_owned()];
    out.extend(client_options(inner_key, known_hosts));
    out.extend(argv.into_iter().skip(1));
    out
}

/// Runs ssh without a terminal; returns its output.
pub async fn ssh_batch(argv: &[String]) -> Output {
    tokio::time::timeout(
        GUARD,
        Command::new("/usr/bin/ssh")
            .args(&argv[1..])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("ssh hung")
    .expect("cannot run ssh")
}

/// A real `ssh` process attached to a pseudo-terminal we hold the master of.
pub struct Terminal {
    master: tokio_serial::SerialStream,
    child: Child,
    seen: Vec<u8>,
    /// Everything the terminal ever showed.
    pub transcript: Vec<u8>,
}

impl Terminal {
    /// Starts `argv` (argv[0] = "ssh") on a new pty.
    pub async fn spawn(argv: &[String]) -> Terminal {
        let (master, slave) = tokio_serial::SerialStream::pair().expect("pty pair");
        let slave_path = tokio_serial::SerialPort::name(&slave).expect("pty name");
        let tty = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&slave_path)
                .expect("open pty slave")
        };
        let child = Command::new("/usr/bin/ssh")
            .args(&argv[1..])
            .stdin(Stdio::from(tty()))
            .stdout(Stdio::from(tty()))
            .stderr(Stdio::from(tty()))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ssh");
        drop(slave);
        Terminal {
            master,
            child,
            seen: Vec::new(),
            transcript: Vec::new(),
        }
    }

    /// Like [`Terminal::expect`], but gives up after `limit` and says whether
    /// `needle` appeared.
    pub async fn saw_within(&mut self, needle: &str, limit: Duration) -> bool {
        tokio::time::timeout(limit, async {
            loop {
                if let Some(pos) = find(&self.seen, needle.as_bytes()) {
                    self.seen.drain(..pos + needle.len());
                    return true;
                }
                let mut buf = [0u8; 4096];
                match self.master.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => {
                        self.seen.extend_from_slice(&buf[..n]);
                        self.transcript.extend_from_slice(&buf[..n]);
                    }
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    /// Reads until `needle` has appeared after everything consumed so far;
    /// consumes through it.
    pub async fn expect(&mut self, needle: &str) {
        if !self.saw_within(needle, GUARD).await {
            panic!(
                "never saw {needle:?}; terminal showed:\n{}",
                String::from_utf8_lossy(&self.seen)
            );
        }
    }

    /// Everything shown and not yet consumed (after the process ended).
    pub async fn rest(&mut self) -> String {
        let mut buf = [0u8; 4096];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), self.master.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            self.seen.extend_from_slice(&buf[..n]);
            self.transcript.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Types bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).await.unwrap();
        self.master.flush().await.unwrap();
    }

    /// Waits for ssh to exit (failing the test after the guard time).
    pub async fn wait(&mut self) -> ExitStatus {
        tokio::time::timeout(GUARD, self.child.wait())
            .await
            .expect("ssh did not exit")
            .unwrap()
    }

    /// Kills ssh at once (SIGKILL), as a crash or a closed laptop would.
    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// Whether ssh is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A `[[instance]]` entry.
pub fn instance(id: &str, serial: &str, vnc: Option<&str>) -> String {
    let mut s =
        format!("[[instance]]\nid = \"{id}\"\ncompartment = \"test\"\nserial = \"{serial}\"\n");
    if let Some(v) = vnc {
        s.push_str(&format!("vnc = \"{v}\"\n"));
    }
    s.push('\n');
    s
}

/// A port nothing listens on right now, below the kernel's ephemeral range.
///
/// Tests write these ports into configs before the servers that bind them
/// start. A port `bind(0)` hands out comes from the range the kernel also
/// takes outgoing connections' source ports from, so a node's database
/// connection, or another test's, could take it in between. Below that
/// range only explicit binds take ports: each pick is the next of this
/// process's sequence, from a start of its own, and one that is bound
/// already is skipped.
pub async fn free_port() -> u16 {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOWEST: u32 = 10_000;
    static RANGE: OnceLock<(u32, AtomicU32)> = OnceLock::new();
    let (top, next) = RANGE.get_or_init(|| {
        // The ephemeral range's first port (Linux: 32768 by default).
        let top = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .filter(|&first: &u32| first > LOWEST + 1_000)
            .unwrap_or(32_768);
        let seed = std::process::id()
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
        (top, AtomicU32::new(seed % (top - LOWEST)))
    });
    for _ in 0..(top - LOWEST) {
        let port = (LOWEST + next.fetch_add(1, Ordering::Relaxed) % (top - LOWEST)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).await.is_ok() {
            return port;
        }
    }
    panic!("no free port below {top}");
}

/// Connects to a local port, retrying until something listens there (an
/// `ssh -L` forward appears once ssh has authenticated).
pub async fn connect_eventually(port: u16) -> tokio::net::TcpStream {
    tokio::time::timeout(GUARD, async {
        loop {
            if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("local forward never listened")
}

/// Deterministic junk: `len` xorshift bytes from `seed` (non-zero).
pub fn pseudo_random_bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

impl Gateway {
    /// Issues a console token for `instance`'s `protocol` console, as the
    /// Nova API does (the same service, on the gateway's store).
    pub async fn console_token(
        &self,
        instance: &str,
        protocol: consolegate::connections::tokens::ConsoleProtocol,
    ) -> String {
        console_token(&self.config_path, instance, protocol).await
    }

    /// The audit trail of one connection, as `consolegate audit` prints it.
    pub async fn audit(&self, connection: &str) -> Vec<Value> {
        audit_rows(&self.config_path, &["--connection", connection]).await
    }
}

/// `consolegate audit <filter>` with `config` (a running gateway's or a
/// stopped one's): the rows.
pub async fn audit_rows(config: &Path, filter: &[&str]) -> Vec<Value> {
    let out = run_cli(config, &[&["audit"], filter].concat()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// `GET path` on a local port with extra header lines (`Name: value\r\n`
/// each); returns the status code and the body.
pub async fn http_get_with(port: u16, path: &str, headers: &str) -> (u16, String) {
    http_request(port, "GET", path, headers).await
}

/// `method path` with no body on a local port, with extra header lines
/// (`Name: value\r\n` each); returns the status code and the body.
pub async fn http_request(port: u16, method: &str, path: &str, headers: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut answer))
        .await
        .expect("HTTP answer hung")
        .unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `GET path` on a local port; returns the status code and the body.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    http_get_with(port, path, "").await
}

/// `/readyz`: its status code and its JSON body.
pub async fn readyz(port: u16) -> (u16, Value) {
    let (status, body) = http_get(port, "/readyz").await;
    (status, serde_json::from_str(&body).unwrap())
}

/// `ssh -W host:port` straight to the outer hop as `user`.
pub fn outer_w(
    gw: &Gateway,
    key: &Key,
    known_hosts: &Path,
    user: &str,
    target: &str,
) -> Vec<String> {
    let mut argv = vec!["ssh".to_owned()];
    argv.extend(client_options(key, known_hosts));
    argv.extend([
        "-W".to_owned(),
        target.to_owned(),
        "-p".to_owned(),
        gw.port.to_string(),
        format!("{user}@127.0.0.1"),
    ]);
    argv
}

/// The `.venv` python (installed by `.ci/run`) if it can import `modules`
/// (comma-separated); without it the test says it skipped, except under
/// CI, where a missing piece fails.
pub fn venv_python(modules: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let ready = p.exists()
        && std::process::Command::new(&p)
            .args(["-c", &format!("import {modules}")])
            .status()
            .is_ok_and(|s| s.success());
    if ready {
        return Some(p);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{modules} missing in .venv (run .ci/run)"
    );
    eprintln!("SKIPPED: .venv lacks {modules}; run .ci/run");
    None
}

/// Starts the real `consolegate serve --config config`, its log (stderr) in
/// `log`, with `env` added; killed when dropped.
pub fn spawn_serve(config: &Path, log: &Path, env: &[(&str, &std::ffi::OsStr)]) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("cannot start consolegate serve")
}

/// Sends `signal` (TERM, HUP, …) to a child, with the shell's builtin kill.
pub fn signal(child: &Child, signal: &str) {
    let pid = child.id().expect("the process has exited");
    let status = std::process::Command::new("sh")
        .args(["-c", &format!("kill -{signal} {pid}")])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// The base URL of the tests' private PostgreSQL server, started once
/// (tests/postgres/server.sh); `None` where PostgreSQL is not installed.
/// Under CI a missing server is a failure.
pub fn postgres_server() -> Option<String> {
    static BASE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/postgres/server.sh");
        let out = std::process::Command::new(&script)
            .output()
            .expect("run tests/postgres/server.sh");
        if out.status.success() {
            return Some(String::from_utf8(out.stdout).unwrap().trim().to_owned());
        }
        let why = String::from_utf8_lossy(&out.stderr);
        assert!(
            std::env::var_os("CI").is_none(),
            "no PostgreSQL for the tests: {why}"
        );
        eprintln!("SKIPPED on PostgreSQL: {why}");
        None
    })
    .clone()
}

/// A fresh, empty database on the tests' PostgreSQL server: its URL.
pub async fn postgres_database() -> Option<String> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let base = postgres_server()?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!(
        "t{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let admin = sqlx::PgPool::connect(&format!("{base}/postgres"))
        .await
        .expect("connect to the tests' PostgreSQL server");
    // The name is ours (digits and underscores), not input.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    Some(format!("{base}/{name}"))
}

/// Where a test's store lives: an SQLite file, or a PostgreSQL database.
pub enum TestStore {
    /// An SQLite file in this directory.
    Sqlite(TempDir),
    /// A database of the tests' PostgreSQL server.
    Postgres(String),
}

impl TestStore {
    /// One of each backend (PostgreSQL where its server can run).
    pub async fn both() -> Vec<TestStore> {
        let mut stores = vec![TestStore::Sqlite(tempfile::tempdir().unwrap())];
        if let Some(url) = postgres_database().await {
            stores.push(TestStore::Postgres(url));
        }
        stores
    }

    /// Opens (and migrates) the store.
    pub async fn open(&self) -> consolegate::store::Store {
        match self {
            TestStore::Sqlite(dir) => {
                consolegate::store::Store::open_sqlite(&dir.path().join("db.sqlite")).await
            }
            TestStore::Postgres(url) => consolegate::store::Store::open_postgres(url).await,
        }
        .unwrap_or_else(|e| panic!("{}: {e}", self.name()))
    }

    /// Closes `store` and opens it again.
    pub async fn reopen(&self, store: consolegate::store::Store) -> consolegate::store::Store {
        store.close().await;
        self.open().await
    }

    /// `sqlite` or `postgres`.
    pub fn name(&self) -> &'static str {
        match self {
            TestStore::Sqlite(_) => "sqlite",
            TestStore::Postgres(_) => "postgres",
        }
    }
}
