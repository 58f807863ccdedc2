//! A gateway in a process of its own (`consolegate serve`), for the tests
//! that watch what an attack costs it: its resident memory and its open
//! file descriptors are read from `/proc`, apart from the test's own.

use std::path::PathBuf;
use std::time::Duration;

use tempfile::TempDir;
use tokio::process::Child;

use super::{GUARD, free_port, spawn_serve};

/// The settings of a [`Served`] gateway, section by section (TOML lines
/// added to the harness's own).
#[derive(Debug, Default, Clone)]
pub struct ServedConfig {
    pub ssh: String,
    pub api: String,
    pub nova: String,
    /// The `[log] level` filter; `None`: `consolegate=debug,russh=warn`.
    pub log: Option<String>,
    /// Whole sections (`[[instance]]`, `[[api_user]]`, `[[nova_token]]`, …).
    pub rest: String,
}

/// Background work (the store's sweeps, a reload) may run a task or two
/// at any moment.
const TASK_SLACK: u64 = 2;

/// Whether `now` runs more tasks than `baseline` (beyond [`TASK_SLACK`]);
/// no, where either reading is missing.
fn tasks_above(now: Vitals, baseline: Vitals) -> bool {
    matches!((now.tasks, baseline.tasks), (Some(n), Some(b)) if n > b + TASK_SLACK)
}

/// A running `consolegate serve`; killed when dropped.
pub struct Served {
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub log: PathBuf,
    pub port: u16,
    pub api_port: u16,
    child: Child,
    /// How many times it was started.
    starts: u32,
}

/// What the gateway's process holds at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Vitals {
    /// Resident memory, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Open file descriptors, but for the store's database files.
    pub fds: usize,
    /// Tasks alive in its async runtime (`consolegate status`), if the
    /// admin socket answered: what ended sessions and connections leave
    /// behind shows here before it shows in memory.
    pub tasks: Option<u64>,
}

impl Served {
    /// Starts a gateway with `config`; returns once its admin socket
    /// exists and its SSH and API ports accept.
    pub async fn start(config: ServedConfig) -> Served {
        Served::start_in(tempfile::tempdir().unwrap(), config).await
    }

    /// [`Served::start`] in `dir` (its data directory is `dir/data`,
    /// which may be prepared, e.g. mounted, beforehand).
    pub async fn start_in(dir: TempDir, config: ServedConfig) -> Served {
        let port = free_port().await;
        let api_port = free_port().await;
        let config_path = dir.path().join("gateway.toml");
        let ServedConfig {
            ssh,
            api,
            nova,
            log,
            rest,
        } = config;
        let level = log.as_deref().unwrap_or("consolegate=debug,russh=warn");
        let text = format!(
            "data_dir = \"data\"\n\
             [ssh]\nlisten = \"127.0.0.1:{port}\"\npublic_host = \"127.0.0.1\"\n\
             revalidate_interval_secs = 1\n{ssh}\n\
             [api]\nlisten = \"127.0.0.1:{api_port}\"\n{api}\n\
             [nova]\nxterm_dir = \"{}/web/node_modules/@xterm/xterm\"\n{nova}\n\
             [log]\nlevel = \"{level}\"\n\n{rest}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::write(&config_path, text).unwrap();
        let log = dir.path().join("serve.log");
        let child = spawn_serve(&config_path, &log, &[]);
        let served = Served {
            dir,
            config_path,
            log,
            port,
            api_port,
            child,
            starts: 1,
        };
        served.wait_ready().await;
        served
    }

    /// Kills it with SIGKILL, as the OOM killer or a crash would: it says
    /// and writes nothing on the way out. Its directory stays.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("SIGKILL consolegate serve");
    }

    /// Starts it again (after [`Served::kill`]) on the same directory,
    /// config and ports, its log in `serve.N.log`; returns once its admin
    /// socket answers and its SSH and API ports accept (the API answers
    /// once it serves).
    pub async fn restart(&mut self) {
        self.starts += 1;
        self.log = self.dir.path().join(format!("serve.{}.log", self.starts));
        self.child = spawn_serve(&self.config_path, &self.log, &[]);
        let socket = self.dir.path().join("data/admin.sock");
        let ready = tokio::time::timeout(GUARD, async {
            loop {
                // The dead process's socket file stays until this one replaces it.
                if tokio::net::UnixStream::connect(&socket).await.is_ok()
                    && tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                        .await
                        .is_ok()
                    && tokio::net::TcpStream::connect(("127.0.0.1", self.api_port))
                        .await
                        .is_ok()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            ready.is_ok(),
            "consolegate serve did not start again; its log:\n{}",
            self.log_text()
        );
    }

    async fn wait_ready(&self) {
        let ready = tokio::time::timeout(GUARD, async {
            loop {
                // The admin socket is the last thing a gateway opens.
                let ssh = self.dir.path().join("data/admin.sock").exists()
                    && tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                        .await
                        .is_ok();
                if ssh
                    && tokio::net::TcpStream::connect(("127.0.0.1", self.api_port))
                        .await
                        .is_ok()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            ready.is_ok(),
            "consolegate serve did not start; its log:\n{}",
            self.log_text()
        );
    }

    /// The process id of the gateway.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the gateway has exited")
    }

    /// Its resident memory and open descriptors now.
    pub fn vitals(&self) -> Vitals {
        self.vitals_with(self.status().as_ref())
    }

    /// [`Served::vitals`], its task count taken from `status`.
    fn vitals_with(&self, status: Option<&serde_json::Value>) -> Vitals {
        let pid = self.pid();
        let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss_kib = proc_status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        // The store's pool opens its connections (up to a fixed maximum)
        // as it pleases: those files are not what an attack leaves.
        let fds = self
            .descriptors()
            .iter()
            .filter(|d| !d.contains("consolegate.db"))
            .count();
        Vitals {
            rss_kib,
            fds,
            tasks: status.and_then(|s| s["runtimeTasks"].as_u64()),
        }
    }

    /// `consolegate status --json` (`runtimeTasks` among it), if the
    /// admin socket answered.
    fn status(&self) -> Option<serde_json::Value> {
        let out = std::process::Command::new(super::BIN)
            .args(["status", "--json", "--config"])
            .arg(&self.config_path)
            .env("RUST_LOG", "warn")
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Whether `status` shows every simulated console connected (the
    /// others may be unreachable on purpose).
    fn simulators_connected(status: Option<&serde_json::Value>) -> bool {
        status.is_some_and(|s| {
            s["instances"].as_array().is_some_and(|all| {
                all.iter()
                    .filter(|i| i["target"] == "simulator")
                    .all(|i| i["connected"] == true)
            })
        })
    }

    /// The vitals to measure an attack against: read once the gateway has
    /// settled after starting, its simulated consoles connected and its
    /// task and descriptor counts steady for half a second. The gateway
    /// starts its last tasks (the SSH front end's sweepers, the systemd
    /// stop notice) after its admin socket answers: read at once, on a
    /// loaded machine, the baseline missed them, and an attack that left
    /// nothing behind was blamed for three tasks.
    pub async fn baseline(&self) -> Vitals {
        let deadline = tokio::time::Instant::now() + GUARD;
        let mut last = self.vitals();
        let mut steady = 0;
        while steady < 5 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let status = self.status();
            let now = self.vitals_with(status.as_ref());
            let same = now.tasks == last.tasks && now.fds == last.fds;
            steady = if same && Self::simulators_connected(status.as_ref()) {
                steady + 1
            } else {
                0
            };
            last = now;
        }
        assert!(
            steady >= 5,
            "the gateway did not settle after starting: {last:?}"
        );
        last
    }

    /// What each open descriptor is (`/proc/<pid>/fd` links).
    pub fn descriptors(&self) -> Vec<String> {
        let dir = format!("/proc/{}/fd", self.pid());
        let mut links: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .map(|l| l.display().to_string())
            .collect();
        links.sort();
        links
    }

    /// Waits (within [`GUARD`]) for the descriptors and runtime tasks to
    /// come back to `baseline`'s counts (sockets of an attack are closed,
    /// its sessions' tasks ended) and checks resident memory grew by at
    /// most `rss_slack_kib`. Fails with the readings.
    pub async fn settles_back_to(&self, baseline: Vitals, rss_slack_kib: u64) {
        let mut now = self.vitals();
        let deadline = tokio::time::Instant::now() + GUARD;
        while (now.fds > baseline.fds || tasks_above(now, baseline))
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            now = self.vitals();
        }
        assert!(
            !tasks_above(now, baseline),
            "the gateway runs {:?} tasks, {:?} before the attack",
            now.tasks,
            baseline.tasks
        );
        assert!(
            now.fds <= baseline.fds,
            "the gateway holds {} descriptors, {} before the attack: {:?}",
            now.fds,
            baseline.fds,
            self.descriptors()
        );
        assert!(
            now.rss_kib <= baseline.rss_kib + rss_slack_kib,
            "the gateway's resident memory grew from {} KiB to {} KiB (allowed: +{rss_slack_kib} KiB)",
            baseline.rss_kib,
            now.rss_kib
        );
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What it has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the `consolegate` CLI against this gateway's config.
    pub async fn cli(&self, args: &[&str]) -> std::process::Output {
        super::run_cli(&self.config_path, args).await
    }

    /// Stops it with SIGTERM and waits for it to exit; its directory stays.
    pub async fn stop(mut self) -> TempDir {
        super::signal(&self.child, "TERM");
        let status = tokio::time::timeout(GUARD, self.child.wait())
            .await
            .expect("consolegate serve did not stop on SIGTERM")
            .unwrap();
        assert!(status.success(), "consolegate serve exited with {status}");
        self.dir
    }
}
