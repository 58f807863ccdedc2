//! Both systems on loopback: the in-process consolegate gateway, two private
//! sshd instances, the bench's console servers and VNC target, keys and
//! known_hosts, and the `ssh` command lines that reach each.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use consolegate::config::Config;
use consolegate::connections::{ConsoleConnections, NewConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// What every console server says first on each connection; the figure
/// "time to console" waits for it.
pub const READY: &str = "CONSOLE-READY";

/// Instances the gateway serves, one per measurement (clean histories).
pub const INSTANCES: [&str; 6] = ["ttc", "rate", "keys", "fan", "mem", "vnc"];

/// `ssh-keygen -t ed25519` into `dir/name`; returns the private key's path.
pub fn keygen(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-C", name, "-t", "ed25519", "-f"])
        .arg(&path)
        .status()
        .context("ssh-keygen")?;
    if !status.success() {
        bail!("ssh-keygen failed");
    }
    Ok(path)
}

/// The key exchange both systems are held to. OpenSSH 9.2's default,
/// `sntrup761x25519-sha512@openssh.com`, costs its client about 170 ms of
/// CPU per connection and russh does not offer it, so left alone the
/// set-up figures would measure the client's kex, and unequally.
pub const KEX: &str = "curve25519-sha256";

/// Client options added to every ssh: this key, these known hosts, strict
/// host key checking, no prompts, [`KEX`].
pub fn client_options(key: &Path, known_hosts: &Path) -> Vec<String> {
    vec![
        "-F".into(),
        "/dev/null".into(),
        "-i".into(),
        key.display().to_string(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o".into(),
        "GlobalKnownHostsFile=/dev/null".into(),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "LogLevel=ERROR".into(),
        "-o".into(),
        format!("KexAlgorithms={KEX}"),
    ]
}

/// A console server: every connection is greeted with [`READY`], then
/// echoes what it reads, and receives whatever is [`ConsoleServer::emit`]ted.
#[derive(Clone)]
pub struct ConsoleServer {
    pub port: u16,
    stream: broadcast::Sender<Bytes>,
    /// Open connections.
    pub clients: Arc<AtomicU64>,
}

impl ConsoleServer {
    /// Starts the server on the current runtime.
    pub async fn start(shutdown: CancellationToken) -> Result<ConsoleServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (stream, _) = broadcast::channel(4096);
        let server = ConsoleServer {
            port,
            stream: stream.clone(),
            clients: Arc::default(),
        };
        let clients = server.clients.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    () = shutdown.cancelled() => return,
                };
                let Ok((socket, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let rx = stream.subscribe();
                let clients = clients.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    clients.fetch_add(1, Ordering::Relaxed);
                    let _ = console_connection(socket, rx, shutdown).await;
                    clients.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
        Ok(server)
    }

    /// Sends `bytes` to every connection.
    pub fn emit(&self, bytes: Bytes) {
        let _ = self.stream.send(bytes);
    }
}

async fn console_connection(
    socket: TcpStream,
    mut stream: broadcast::Receiver<Bytes>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    let (mut rd, mut wr) = socket.into_split();
    wr.write_all(format!("{READY}\r\n").as_bytes()).await?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            n = rd.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                wr.write_all(&buf[..n]).await?;
            }
            out = stream.recv() => match out {
                Ok(bytes) => wr.write_all(&bytes).await?,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    eprintln!("console server: a connection lagged {n} chunks behind");
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            () = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// The VNC stand-in: a connection's first byte says what it wants.
/// `U` + 8-byte length: swallow that many bytes, then answer `K`.
/// `D` + 8-byte length: send that many bytes.
pub async fn start_target(shutdown: CancellationToken) -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = shutdown.cancelled() => return,
            };
            if let Ok((socket, _)) = accepted {
                tokio::spawn(target_connection(socket));
            }
        }
    });
    Ok(port)
}

async fn target_connection(mut socket: TcpStream) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    let mut head = [0u8; 9];
    socket.read_exact(&mut head).await?;
    let len = u64::from_be_bytes(head[1..].try_into().unwrap());
    let mut buf = vec![0x5au8; 256 * 1024];
    match head[0] {
        b'U' => {
            let mut left = len;
            while left > 0 {
                let n = socket.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                left = left.saturating_sub(n as u64);
            }
            socket.write_all(b"K").await?;
        }
        b'D' => {
            let mut left = len;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                socket.write_all(&buf[..n]).await?;
                left -= n as u64;
            }
            socket.flush().await?;
            // Keep the socket open until the client has read everything.
            let _ = socket.read(&mut buf).await;
        }
        _ => {}
    }
    Ok(())
}

/// The consolegate side: the real `consolegate serve` binary as a child
/// process (so that its CPU and memory are its own, as sshd's are), one
/// console connection per instance for the bench's key.
pub struct Gateway {
    pub port: u16,
    /// Connection id per instance (same order as [`INSTANCES`]).
    pub connections: Vec<(String, String)>,
    dir: PathBuf,
    child: tokio::sync::Mutex<Child>,
    pid: AtomicU32,
}

impl Gateway {
    /// Starts the gateway in `dir`; every instance's serial console is
    /// `console_port` except `fan`'s (`fan_port`); `vnc` tunnels to `target_port`.
    pub async fn start(
        dir: &Path,
        key: &Path,
        known_hosts: &mut String,
        console_port: u16,
        fan_port: u16,
        target_port: u16,
    ) -> Result<Gateway> {
        let port = free_port().await?;
        let api_port = free_port().await?;
        let mut text = format!(
            "data_dir = \"data\"\n\
             [ssh]\nlisten = \"127.0.0.1:{port}\"\npublic_host = \"127.0.0.1\"\npublic_port = {port}\n\
             max_connections = 30000\nhandshake_timeout_secs = 60\n\
             max_startups = \"10000\"\nexempt_sources = [\"127.0.0.1\"]\n\
             [api]\nlisten = \"127.0.0.1:{api_port}\"\n\
             [session]\nmax_sessions_per_instance = 0\nmax_sessions_per_connection = 0\n\
             max_sessions_per_key = 0\n\
             [log]\nlevel = \"warn\"\n\n"
        );
        for id in INSTANCES {
            let serial = if id == "fan" { fan_port } else { console_port };
            text.push_str(&format!(
                "[[instance]]\nid = \"{id}\"\ncompartment = \"bench\"\nserial = \"tcp:127.0.0.1:{serial}\"\n"
            ));
            if id == "vnc" {
                text.push_str(&format!("vnc = \"tcp:127.0.0.1:{target_port}\"\n"));
            }
            text.push('\n');
        }
        let config_path = dir.join("gateway.toml");
        std::fs::write(&config_path, text)?;
        // Register the bench's key for every instance before the gateway
        // runs, as `consolegate connection create` would.
        let config = Config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let (store, host_keys) = consolegate::gateway::open_state(&config).await?;
        let public_key = std::fs::read_to_string(key.with_extension("pub"))?;
        let ops = ConsoleConnections::new(store.clone(), Arc::new(config.clone()), &host_keys);
        let mut connections = Vec::new();
        for id in INSTANCES {
            let record = ops
                .create(
                    NewConnection {
                        instance_id: id.into(),
                        public_key: public_key.clone(),
                        ..NewConnection::default()
                    },
                    None,
                    &consolegate::audit::Requester::cli(),
                )
                .await?;
            let view = ops.view(&record).await?;
            for line in &view.known_hosts {
                known_hosts.push_str(line);
                known_hosts.push('\n');
            }
            connections.push((id.to_owned(), record.id));
        }
        store.close().await;
        let child = Gateway::spawn(dir, port).await?;
        Ok(Gateway {
            port,
            connections,
            dir: dir.to_owned(),
            pid: AtomicU32::new(child.id().unwrap_or(0)),
            child: tokio::sync::Mutex::new(child),
        })
    }

    /// Runs `consolegate serve` on `dir/gateway.toml`; returns once it listens.
    async fn spawn(dir: &Path, port: u16) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("gateway.log"))?;
        let child = Command::new(env!("CARGO_BIN_EXE_consolegate"))
            .arg("--config")
            .arg(dir.join("gateway.toml"))
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("start consolegate serve")?;
        wait_listening(port, "consolegate", &dir.join("gateway.log")).await?;
        Ok(child)
    }

    /// Stops the gateway and starts a fresh process on the same data (for
    /// measuring memory from a clean heap).
    pub async fn restart(&self) -> Result<()> {
        let mut child = self.child.lock().await;
        terminate(&mut child).await;
        *child = Gateway::spawn(&self.dir, self.port).await?;
        self.pid.store(child.id().unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }

    /// The console connection id for `instance`.
    pub fn connection(&self, instance: &str) -> &str {
        &self
            .connections
            .iter()
            .find(|(i, _)| i == instance)
            .expect("known instance")
            .1
    }

    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    pub async fn stop(self) {
        terminate(&mut *self.child.lock().await).await;
    }
}

/// SIGTERM, as an operator would stop the gateway; SIGKILL if it lingers.
async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    if tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .is_err()
    {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

/// One private, unprivileged sshd.
pub struct Sshd {
    pub port: u16,
    pub child: Child,
}

impl Sshd {
    /// Writes a config and host key under `dir/name` and starts `sshd -D -e`.
    ///
    /// The sessions' `HOME` is `dir`, which holds no shell start-up files.
    /// Debian's bash reads `~/.bashrc` for every command sshd runs, and a
    /// machine's own (a language version manager's set-up, say) can cost
    /// more than sshd itself: 90 ms a connection on the bench's machine,
    /// and a hang while a killed shell's lock file lingers. The bench
    /// measures sshd, not the account it logs into.
    pub async fn start(
        dir: &Path,
        name: &str,
        authorized_keys: &Path,
        known_hosts: &mut String,
    ) -> Result<Sshd> {
        if !Path::new("/usr/sbin/sshd").exists() {
            bail!("/usr/sbin/sshd is missing: apt-get install -y openssh-server");
        }
        if !Path::new("/run/sshd").exists() {
            std::fs::create_dir_all("/run/sshd").context("create /run/sshd")?;
        }
        let host_key = keygen(dir, &format!("{name}_host_key"))?;
        let port = free_port().await?;
        let root = std::process::Command::new("id").arg("-u").output()?.stdout == b"0\n";
        let config = dir.join(format!("{name}.conf"));
        let mut text = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile none\nUsePAM no\n\
             StrictModes no\nAllowTcpForwarding yes\nAuthorizedKeysFile {}\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             MaxStartups 10000\nMaxSessions 1000\nLogLevel ERROR\nPrintMotd no\nPrintLastLog no\n\
             UseDNS no\nAcceptEnv none\nKexAlgorithms {KEX}\nSetEnv HOME={}\n",
            host_key.display(),
            authorized_keys.display(),
            dir.display(),
        );
        if root {
            text.push_str("PermitRootLogin yes\n");
        }
        std::fs::write(&config, text)?;
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("start sshd")?;
        let public = std::fs::read_to_string(host_key.with_extension("pub"))?;
        let mut fields = public.split_whitespace();
        let (kind, blob) = (fields.next().unwrap(), fields.next().unwrap());
        known_hosts.push_str(&format!("[127.0.0.1]:{port} {kind} {blob}\n"));
        wait_listening(
            port,
            &format!("sshd {name}"),
            &dir.join(format!("{name}.log")),
        )
        .await?;
        Ok(Sshd { port, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

/// Waits up to 10 s for a server just started to listen on `port`; if it
/// does not, the error carries its log.
async fn wait_listening(port: u16, what: &str, log: &Path) -> Result<()> {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "{what} did not start: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    )
}

/// A port nothing listens on right now.
pub async fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?.port())
}

/// Everything the measurements need to reach both systems.
pub struct World {
    /// Keys, configs, the gateway's data; removed at the end.
    _dir: tempfile::TempDir,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    pub user: String,
    pub gateway: Gateway,
    pub outer: Sshd,
    pub inner: Sshd,
    pub console: ConsoleServer,
    pub target_port: u16,
    /// The fan-out console (run on the side runtime).
    pub fan_port: u16,
    pub shutdown: CancellationToken,
}

impl World {
    /// Sets everything up; `fan_port` is the fan-out console (run elsewhere).
    pub async fn start(fan_port: u16) -> Result<World> {
        let dir = tempfile::tempdir()?;
        let key = keygen(dir.path(), "client")?;
        let authorized = key.with_extension("pub");
        let shutdown = CancellationToken::new();
        let console = ConsoleServer::start(shutdown.clone()).await?;
        let target_port = start_target(shutdown.clone()).await?;
        let mut known = String::new();
        let gateway = Gateway::start(
            dir.path(),
            &key,
            &mut known,
            console.port,
            fan_port,
            target_port,
        )
        .await?;
        let outer = Sshd::start(dir.path(), "sshd_outer", &authorized, &mut known).await?;
        let inner = Sshd::start(dir.path(), "sshd_inner", &authorized, &mut known).await?;
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(&known_hosts, known)?;
        let out = std::process::Command::new("id").arg("-un").output()?;
        let user = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok(World {
            _dir: dir,
            fan_port,
            key,
            known_hosts,
            user,
            gateway,
            outer,
            inner,
            console,
            target_port,
            shutdown,
        })
    }

    pub async fn stop(self) {
        self.gateway.stop().await;
        self.shutdown.cancel();
        // kill_on_drop stops both sshd.
        drop(self.outer);
        drop(self.inner);
    }

    fn proxy(&self, port: u16, user: &str) -> String {
        let opts = client_options(&self.key, &self.known_hosts).join(" ");
        format!("ProxyCommand=ssh {opts} -W %h:%p -p {port} {user}@127.0.0.1")
    }

    /// connectionString shape (with `-tt`): the console of `instance`.
    pub fn console_argv(&self, system: System, instance: &str) -> Vec<String> {
        let mut argv = client_options(&self.key, &self.known_hosts);
        argv.push("-tt".into());
        argv.push("-o".into());
        match system {
            System::Consolegate => {
                argv.push(self.proxy(self.gateway.port, self.gateway.connection(instance)));
                argv.push(instance.into());
            }
            System::Sshd => {
                argv.push(self.proxy(self.outer.port, &self.user));
                argv.extend(["-p".into(), self.inner.port.to_string()]);
                argv.push(format!("{}@127.0.0.1", self.user));
                argv.push(sshd_console_command(self.console_port_for(instance)));
            }
        }
        argv
    }

    /// What each hop of a console connection negotiated, from `ssh -v`
    /// (outer hop first): key exchange and ciphers.
    pub async fn negotiated(&self, system: System) -> Result<Vec<String>> {
        let argv: Vec<String> = self
            .console_argv(system, "ttc")
            .into_iter()
            .map(|a| a.replace("LogLevel=ERROR", "LogLevel=DEBUG1"))
            .collect();
        let mut child = spawn_ssh(&argv)?;
        let mut out = child.stdout.take().context("stdout")?;
        let mut err = child.stderr.take().context("stderr")?;
        let log = tokio::spawn(async move {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text).await;
            text
        });
        let reached = read_until(&mut out, READY.as_bytes(), Duration::from_secs(30)).await;
        finish(child).await;
        let text = log.await?;
        if let Err(e) = reached {
            bail!("{}: {e:#}; ssh said:\n{text}", system.name());
        }
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix("debug1: kex: "))
            .filter(|l| l.starts_with("algorithm:") || l.contains("cipher:"))
            .map(|l| l.trim().to_owned())
            .collect())
    }

    /// The serving side's processes: the gateway, or both sshd trees.
    pub fn server_roots(&self, system: System) -> Vec<u32> {
        match system {
            System::Consolegate => vec![self.gateway.pid()],
            System::Sshd => vec![self.outer.pid(), self.inner.pid()],
        }
    }

    /// CPU seconds the serving side has used so far.
    pub fn server_cpu(&self, system: System) -> f64 {
        crate::stats::tree_cpu(&self.server_roots(system))
    }

    fn console_port_for(&self, instance: &str) -> u16 {
        if instance == "fan" {
            self.fan_port
        } else {
            self.console.port
        }
    }

    /// A `-N -L local:target` tunnel. Two hops is the vncConnectionString's
    /// shape (a ProxyCommand outer hop, the forward inside the inner hop);
    /// one hop is the shortcut the outer hop accepts itself (`-L` straight
    /// to `<instance>:5900`), against one sshd forwarding to the target.
    pub fn tunnel_argv(&self, system: System, hops: Hops, local_port: u16) -> Vec<String> {
        // The forward's target, and the outer hop: its port and user.
        let (target, outer_port, outer_user) = match system {
            System::Consolegate => (
                "vnc:5900".to_owned(),
                self.gateway.port,
                self.gateway.connection("vnc"),
            ),
            System::Sshd => (
                format!("127.0.0.1:{}", self.target_port),
                self.outer.port,
                self.user.as_str(),
            ),
        };
        let mut argv = client_options(&self.key, &self.known_hosts);
        if hops == Hops::Two {
            argv.push("-o".into());
            argv.push(self.proxy(outer_port, outer_user));
        }
        argv.extend(["-N".into(), "-L".into()]);
        argv.push(format!("127.0.0.1:{local_port}:{target}"));
        match (system, hops) {
            (_, Hops::One) => {
                argv.extend(["-p".into(), outer_port.to_string()]);
                argv.push(format!("{outer_user}@127.0.0.1"));
            }
            (System::Consolegate, Hops::Two) => argv.push("vnc".into()),
            (System::Sshd, Hops::Two) => {
                argv.extend(["-p".into(), self.inner.port.to_string()]);
                argv.push(format!("{}@127.0.0.1", self.user));
            }
        }
        argv
    }
}

/// How many SSH hops a tunnel crosses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Hops {
    One,
    Two,
}

/// What the inner sshd runs for a console: a raw pty joined to the console
/// server's TCP port, the sshd equivalent of attaching to a console.
pub fn sshd_console_command(port: u16) -> String {
    format!("stty raw -echo 2>/dev/null; exec 3<>/dev/tcp/127.0.0.1/{port}; cat <&3 & exec cat >&3")
}

/// Which system a figure is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Consolegate,
    Sshd,
}

impl System {
    pub const BOTH: [System; 2] = [System::Consolegate, System::Sshd];

    pub fn name(self) -> &'static str {
        match self {
            System::Consolegate => "consolegate",
            System::Sshd => "sshd",
        }
    }
}

pub use crate::shared::spawn_ssh;

/// Reads `child`'s stdout until `needle` has appeared (within `limit`);
/// returns what was read after it.
pub async fn read_until(
    out: &mut tokio::process::ChildStdout,
    needle: &[u8],
    limit: Duration,
) -> Result<Vec<u8>> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(pos) = find(&seen, needle) {
                return Ok(seen.split_off(pos + needle.len()));
            }
            let n = out.read(&mut buf).await?;
            if n == 0 {
                bail!(
                    "ssh ended before {:?}; it printed {:?}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(&seen)
                );
            }
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    match found {
        Ok(r) => r,
        Err(_) => bail!(
            "no {:?} within {limit:?}; saw {:?}",
            String::from_utf8_lossy(needle),
            String::from_utf8_lossy(&seen)
        ),
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Kills an ssh and reaps it.
pub async fn finish(mut child: Child) {
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
}
