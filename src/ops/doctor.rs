//! `consolegate doctor`: runs the checks `docs/runbook.md` would have you
//! run, in order, and reports each with its runbook code.
//!
//! It asks a running gateway through the admin socket where it can (what it
//! listens on, which keys it presents, each console hub's state) and looks
//! for itself otherwise: the config, the data directory, the store (opened
//! without creating or migrating anything), the host key files, what answers
//! on the SSH and API ports, each backend a gateway is not holding, and each
//! VNC target. It changes nothing, and prints no secret (fingerprints only).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::admin::{self, GatewayStatus};
use crate::config::{Config, InstanceConfig, SerialTarget, VncTarget};
use crate::console::backend::{BackendConnection, connect_vnc};
use crate::keys::ClientKey;
use crate::store::LifecycleState;
use crate::store::Store;

/// How long a probe of a port, backend or VNC target may take.
const PROBE: Duration = Duration::from_secs(3);

/// What `doctor` was asked to look at.
#[derive(Debug, Clone, Default)]
pub struct DoctorRequest {
    /// Only this instance's backend and VNC target (all when `None`).
    pub instance: Option<String>,
    /// Check this console connection's record.
    pub connection: Option<String>,
    /// Whether this public key would be accepted for `connection`.
    pub public_key: Option<String>,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Fine.
    Ok,
    /// Worth a look; does not fail the run.
    Warn,
    /// Broken.
    Fail,
    /// Could not be checked (an earlier check failed).
    Skip,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// What was checked.
    pub check: String,
    /// Its runbook entry.
    pub code: &'static str,
    /// How it came out.
    pub outcome: Outcome,
    /// What was found, and what to do if it is wrong.
    pub message: String,
}

/// Every finding, in the order checked.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The findings.
    pub findings: Vec<Finding>,
}

impl Report {
    fn add(
        &mut self,
        check: impl Into<String>,
        code: &'static str,
        outcome: Outcome,
        message: impl Into<String>,
    ) {
        self.findings.push(Finding {
            check: check.into(),
            code,
            outcome,
            message: message.into(),
        });
    }

    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.outcome == Outcome::Fail)
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let tag = match f.outcome {
                Outcome::Ok => " ok ",
                Outcome::Warn => "WARN",
                Outcome::Fail => "FAIL",
                Outcome::Skip => "skip",
            };
            let _ = writeln!(out, "[{tag}] {} {}: {}", f.code, f.check, f.message);
        }
        let failed = self
            .findings
            .iter()
            .filter(|f| f.outcome == Outcome::Fail)
            .count();
        let warned = self
            .findings
            .iter()
            .filter(|f| f.outcome == Outcome::Warn)
            .count();
        let _ = writeln!(
            out,
            "\n{} checks: {failed} failed, {warned} warnings. Each code has an entry in docs/runbook.md.",
            self.findings.len()
        );
        out
    }
}

/// Runs every check for the config at `config_path`.
pub async fn run(config_path: &Path, request: &DoctorRequest) -> Report {
    let mut report = Report::default();
    let config = match Config::load(config_path) {
        Ok(c) => {
            report.add(
                "config",
                "CG-CONF-001",
                Outcome::Ok,
                format!(
                    "{} is valid ({} instances)",
                    config_path.display(),
                    c.instances.len()
                ),
            );
            c
        }
        Err(e) => {
            report.add("config", "CG-CONF-001", Outcome::Fail, e.to_string());
            return report;
        }
    };
    check_data_dir(&config, &mut report);
    let store = check_store(&config, &mut report).await;
    let gateway = check_gateway(&config, &mut report).await;
    check_host_keys(&config, gateway.as_ref(), &mut report).await;
    let instances: Vec<&InstanceConfig> = match &request.instance {
        Some(id) => match config.instance(id) {
            Some(i) => vec![i],
            None => {
                report.add(
                    format!("instance {id}"),
                    "CG-AUTH-005",
                    Outcome::Fail,
                    format!("instance {id} is not in the config; add an [[instance]] with this id"),
                );
                vec![]
            }
        },
        None => config.instances.iter().collect(),
    };
    for instance in instances {
        check_backend(instance, gateway.as_ref(), &mut report).await;
        check_vnc(instance, &mut report).await;
    }
    if let Some(id) = &request.connection {
        check_connection(&config, store.as_ref(), id, request, &mut report).await;
    }
    if let Some(store) = store {
        store.close().await;
    }
    report
}

fn check_data_dir(config: &Config, report: &mut Report) {
    use std::io::Write as _;
    let dir = &config.data_dir;
    let check = "data directory";
    if !dir.is_dir() {
        report.add(
            check,
            "CG-DISK-001",
            Outcome::Fail,
            format!(
                "{} does not exist; `consolegate serve` creates it (check the user may create it)",
                dir.display()
            ),
        );
        return;
    }
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    let written = std::fs::File::create(&probe).and_then(|mut f| {
        f.write_all(&[0u8; 64 * 1024])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    match written {
        Ok(()) => report.add(
            check,
            "CG-DISK-001",
            Outcome::Ok,
            format!("{} is writable", dir.display()),
        ),
        Err(e) => report.add(
            check,
            "CG-DISK-001",
            Outcome::Fail,
            format!(
                "cannot write in {} ({e}): audit rows, host keys and the database live here; \
                 check its owner, its mode and free space (df -h)",
                dir.display()
            ),
        ),
    }
}

async fn check_store(config: &Config, report: &mut Report) -> Option<Store> {
    let path = config.database_path();
    let check = "store";
    let name = match &config.store.url {
        Some(url) => format!("PostgreSQL {}", crate::store::redact_url(url)),
        None => path.display().to_string(),
    };
    if config.store.url.is_none() && !path.exists() {
        report.add(
            check,
            "CG-STORE-001",
            Outcome::Fail,
            format!(
                "{} does not exist: the gateway has never started with this data_dir",
                path.display()
            ),
        );
        return None;
    }
    let store = match Store::open_existing(config).await {
        Ok(s) => s,
        Err(e) => {
            report.add(check, "CG-STORE-001", Outcome::Fail, e.to_string());
            return None;
        }
    };
    let outcome = match tokio::time::timeout(PROBE * 2, async {
        store.ping().await?;
        store.missing_migrations().await
    })
    .await
    {
        Ok(Ok(missing)) if missing.is_empty() => {
            (Outcome::Ok, format!("{name} answers and is migrated"))
        }
        Ok(Ok(missing)) => (
            Outcome::Fail,
            format!(
                "{name} lacks migrations {}: start this version's `consolegate serve` once to apply them",
                missing.join(", ")
            ),
        ),
        Ok(Err(e)) => (Outcome::Fail, format!("{name} does not answer: {e}")),
        Err(_) => (
            Outcome::Fail,
            format!(
                "{name} did not answer within {}s (locked by another process?)",
                PROBE.as_secs() * 2
            ),
        ),
    };
    let ok = outcome.0 == Outcome::Ok;
    report.add(
        check,
        if ok { "CG-STORE-001" } else { "CG-STORE-002" },
        outcome.0,
        outcome.1,
    );
    ok.then_some(store)
}

async fn check_gateway(config: &Config, report: &mut Report) -> Option<GatewayStatus> {
    let gateway = match admin::status(&config.data_dir).await {
        Ok(s) => {
            report.add(
                "gateway",
                "CG-OPS-002",
                Outcome::Ok,
                format!(
                    "pid {} answers on the admin socket, up since {}",
                    s.pid, s.started
                ),
            );
            Some(s)
        }
        Err(e) => {
            report.add("gateway", "CG-OPS-002", Outcome::Fail, e.to_string());
            None
        }
    };
    // What answers on the ports: those the running gateway says it bound
    // (a config may ask for port 0), else the configured ones.
    let bound = |live: Option<&str>, configured: std::net::SocketAddr| {
        probe_addr(live.and_then(|a| a.parse().ok()).unwrap_or(configured))
    };
    let ssh = bound(
        gateway.as_ref().map(|g| g.ssh_listen.as_str()),
        config.ssh.listen,
    );
    match tokio::time::timeout(PROBE, ssh_identification(ssh)).await {
        Ok(Ok(id)) if id.starts_with("SSH-2.0-consolegate") => report.add(
            "SSH listener",
            "CG-SSH-002",
            Outcome::Ok,
            format!("{ssh} answers as {id}"),
        ),
        Ok(Ok(id)) => report.add(
            "SSH listener",
            "CG-SSH-002",
            Outcome::Fail,
            format!("{ssh} answers as {id:?}, not consolegate: another server holds the port"),
        ),
        Ok(Err(e)) => report.add(
            "SSH listener",
            "CG-SSH-002",
            Outcome::Fail,
            format!("nothing answers SSH on {ssh} ({e})"),
        ),
        Err(_) => report.add(
            "SSH listener",
            "CG-SSH-002",
            Outcome::Fail,
            format!(
                "{ssh} accepted but sent no SSH identification within {}s",
                PROBE.as_secs()
            ),
        ),
    }
    let api = bound(
        gateway.as_ref().map(|g| g.api_listen.as_str()),
        config.api.listen,
    );
    http_check(report, "API listener", "CG-API-001", api, "/openapi.json").await;
    let metrics = match gateway.as_ref() {
        Some(g) => g.metrics_listen.as_deref().and_then(|a| a.parse().ok()),
        None => config.metrics.listen,
    };
    if let Some(metrics) = metrics {
        http_check(
            report,
            "metrics listener",
            "CG-OPS-004",
            probe_addr(metrics),
            "/healthz",
        )
        .await;
    }
    gateway
}

/// Checks that `addr` answers `GET path` with 200.
async fn http_check(
    report: &mut Report,
    check: &str,
    code: &'static str,
    addr: std::net::SocketAddr,
    path: &str,
) {
    let (outcome, message) = match tokio::time::timeout(PROBE, http_get(addr, path)).await {
        Ok(Ok(answer)) if answer.starts_with("HTTP/1.1 200") => {
            (Outcome::Ok, format!("{addr} answers {path}"))
        }
        // The gateway's HTTPS listener answers plain HTTP this way.
        Ok(Ok(answer)) if answer.starts_with("HTTP/1.1 400") && answer.contains("CG-HTTP-005") => (
            Outcome::Ok,
            format!("{addr} answers HTTPS (and refuses plain HTTP with CG-HTTP-005)"),
        ),
        Ok(Ok(answer)) => (
            Outcome::Fail,
            format!(
                "{addr} answers {path} with {:?}: another server holds the port",
                answer.lines().next().unwrap_or("")
            ),
        ),
        Ok(Err(e)) => (
            Outcome::Fail,
            format!("nothing answers HTTP on {addr} ({e})"),
        ),
        Err(_) => (
            Outcome::Fail,
            format!("{addr} did not answer within {}s", PROBE.as_secs()),
        ),
    };
    report.add(check, code, outcome, message);
}

/// Where to reach a listener bound to `addr` from this host.
fn probe_addr(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    addr
}

async fn ssh_identification(addr: std::net::SocketAddr) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut buf = vec![0u8; 256];
    let mut n = 0;
    while n < buf.len() && !buf[..n].contains(&b'\n') {
        let got = s.read(&mut buf[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut answer = Vec::new();
    (&mut s).take(64 * 1024).read_to_end(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

async fn check_host_keys(config: &Config, gateway: Option<&GatewayStatus>, report: &mut Report) {
    let mut on_disk = Vec::new();
    for name in ["ssh_host_ed25519_key", "ssh_host_rsa_key"] {
        let path = config.data_dir.join(name);
        let read = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| crate::keys::decode_private_key(&t));
        match read {
            Ok(key) => on_disk.push(crate::keys::fingerprint(key.public_key())),
            Err(e) => {
                report.add(
                    "host keys",
                    "CG-HOSTKEY-001",
                    Outcome::Fail,
                    format!("cannot read {} ({e}); restore it from backup, or remove it to make a new key \
                             (every user must then accept the new knownHosts lines)", path.display()),
                );
                return;
            }
        }
    }
    let Some(gateway) = gateway else {
        report.add(
            "host keys",
            "CG-HOSTKEY-001",
            Outcome::Ok,
            format!(
                "readable: {} (no running gateway to compare with)",
                on_disk.join(", ")
            ),
        );
        return;
    };
    if gateway.host_key_fingerprints == on_disk {
        report.add(
            "host keys",
            "CG-HOSTKEY-001",
            Outcome::Ok,
            format!(
                "the running gateway presents the keys on disk ({})",
                on_disk.join(", ")
            ),
        );
    } else {
        report.add(
            "host keys",
            "CG-HOSTKEY-002",
            Outcome::Fail,
            format!(
                "the running gateway presents {} but the data directory holds {}: connections created now \
                 advertise keys the gateway does not present (users see `REMOTE HOST IDENTIFICATION HAS CHANGED`); \
                 restore the key files, or restart the gateway to present the files' keys",
                gateway.host_key_fingerprints.join(", "),
                on_disk.join(", ")
            ),
        );
    }
}

async fn check_backend(
    instance: &InstanceConfig,
    gateway: Option<&GatewayStatus>,
    report: &mut Report,
) {
    let check = format!("console of {} ({})", instance.id, instance.serial);
    let hub = gateway.and_then(|g| g.instances.iter().find(|h| h.instance == instance.id));
    match hub {
        // A QEMU chardev serves one client: only its holder can check it.
        Some(h) if !h.held => report.add(
            check,
            "CG-FLEET-001",
            Outcome::Ok,
            "held by another node of the fleet (`consolegate cluster status` names it); \
             run doctor there for this console",
        ),
        Some(h) if h.connected && h.bytes_from_console == 0 => report.add(
            check,
            "CG-CONS-004",
            Outcome::Warn,
            format!(
                "connected since {} but the machine has printed nothing: a guest without console=ttyS0 \
                 or without a getty, a machine that is off, or another client holding the backend",
                h.since
            ),
        ),
        Some(h) if h.connected => report.add(
            check,
            "CG-CONS-001",
            Outcome::Ok,
            format!(
                "connected since {}, held by the gateway; last output {}, {} reconnects",
                h.since,
                h.last_output.as_deref().unwrap_or("never"),
                h.reconnects
            ),
        ),
        Some(h) => {
            // The gateway cannot reach it: does anything answer at all?
            let probe = probe_backend(&instance.serial).await;
            let code = if h.state.starts_with("CG-CONS-002") { "CG-CONS-002" } else { "CG-CONS-001" };
            report.add(
                check,
                code,
                Outcome::Fail,
                format!("down since {}: {}; a probe from here: {probe}", h.since, h.state),
            );
        }
        None if gateway.is_some() => report.add(
            check,
            "CG-OPS-005",
            Outcome::Fail,
            "the running gateway has no hub for this instance: it runs an older config (restart or reload it)",
        ),
        None => {
            let probe = probe_backend(&instance.serial).await;
            let outcome = if probe.starts_with("reachable") { Outcome::Ok } else { Outcome::Fail };
            report.add(check, "CG-CONS-001", outcome, probe);
        }
    }
}

/// Tries the backend itself (only when no gateway holds it: a QEMU chardev
/// serves one client).
async fn probe_backend(target: &SerialTarget) -> String {
    if matches!(target, SerialTarget::Simulator) {
        return "reachable (the built-in simulator)".into();
    }
    match tokio::time::timeout(PROBE, BackendConnection::connect(target, "doctor")).await {
        Ok(Ok(_)) => "reachable: it accepts a connection (if the gateway still cannot use it, \
                      another client may hold it: QEMU's chardev serves one client)"
            .into(),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ResourceBusy => {
            format!("busy ({e}): another program holds the serial line")
        }
        Ok(Err(e)) => {
            format!("unreachable ({e}): is the VM running, with this chardev or serial path?")
        }
        Err(_) => format!("no answer within {}s", PROBE.as_secs()),
    }
}

async fn check_vnc(instance: &InstanceConfig, report: &mut Report) {
    let Some(target) = &instance.vnc else {
        return;
    };
    let check = format!("VNC of {} ({target})", instance.id);
    match tokio::time::timeout(PROBE, vnc_banner(target)).await {
        Ok(Ok(banner)) if banner.starts_with("RFB ") => report.add(
            check,
            "CG-VNC-001",
            Outcome::Ok,
            format!("answers {}", banner.trim()),
        ),
        Ok(Ok(banner)) => report.add(
            check,
            "CG-VNC-003",
            Outcome::Fail,
            format!(
                "answers {banner:?}, which is not VNC: the vnc target points at something else"
            ),
        ),
        Ok(Err(e)) => report.add(
            check,
            "CG-VNC-001",
            Outcome::Fail,
            format!("unreachable ({e}): is the VM running with -vnc at this address?"),
        ),
        Err(_) => report.add(
            check,
            "CG-VNC-001",
            Outcome::Fail,
            format!("sent no RFB greeting within {}s", PROBE.as_secs()),
        ),
    }
}

async fn vnc_banner(target: &VncTarget) -> std::io::Result<String> {
    let mut s = connect_vnc(target).await?;
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

async fn check_connection(
    config: &Config,
    store: Option<&Store>,
    id: &str,
    request: &DoctorRequest,
    report: &mut Report,
) {
    let check = format!("connection …{}", &id[id.len().saturating_sub(12)..]);
    let Some(store) = store else {
        report.add(
            check,
            "CG-STORE-002",
            Outcome::Skip,
            "the store could not be read",
        );
        return;
    };
    let record = match store.get_connection(id).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            report.add(
                check,
                "CG-AUTH-002",
                Outcome::Fail,
                "no such console connection (never created here, or deleted and purged): create a new one",
            );
            return;
        }
        Err(e) => {
            report.add(check, "CG-STORE-002", Outcome::Fail, e.to_string());
            return;
        }
    };
    if record.lifecycle_state != LifecycleState::Active {
        report.add(
            check.clone(),
            "CG-AUTH-003",
            Outcome::Fail,
            format!(
                "the connection is {}: it no longer authenticates; create a new one",
                record.lifecycle_state
            ),
        );
    } else {
        report.add(
            check.clone(),
            "CG-AUTH-003",
            Outcome::Ok,
            format!(
                "ACTIVE, for instance {}, key {}, created {}",
                record.instance_id,
                record.fingerprint,
                crate::timefmt::format_time(record.time_created)
            ),
        );
    }
    if config.instance(&record.instance_id).is_none() {
        report.add(
            check.clone(),
            "CG-AUTH-005",
            Outcome::Fail,
            format!(
                "its instance {} is not in this gateway's config",
                record.instance_id
            ),
        );
    }
    if let Some(wanted) = &request.instance
        && wanted != &record.instance_id
    {
        report.add(
            check.clone(),
            "CG-CHAN-001",
            Outcome::Fail,
            format!(
                "the connection is for instance {}, not {wanted}: a connection string naming another \
                 instance is refused (administratively prohibited); create a connection for {wanted}",
                record.instance_id
            ),
        );
    }
    if let Some(text) = &request.public_key {
        match ClientKey::parse(text) {
            Err(e) => report.add(check, "CG-AUTH-004", Outcome::Fail, format!("the public key file is unusable: {e}")),
            Ok(key) if key.fingerprint() == record.fingerprint => {
                let accepted = record.lifecycle_state == LifecycleState::Active
                    && config.instance(&record.instance_id).is_some();
                report.add(
                    check,
                    "CG-AUTH-004",
                    if accepted { Outcome::Ok } else { Outcome::Fail },
                    if accepted {
                        format!("key {} is the connection's key: it would be accepted", key.fingerprint())
                    } else {
                        format!("key {} is the connection's key, but the connection cannot be used (above)", key.fingerprint())
                    },
                );
            }
            Ok(key) => report.add(
                check,
                "CG-AUTH-004",
                Outcome::Fail,
                format!(
                    "key {} is not the connection's key ({}): ssh would say `Permission denied (publickey)`; \
                     use the private key of the registered key (ssh -i), or create a connection for this key",
                    key.fingerprint(),
                    record.fingerprint
                ),
            ),
        }
    }
}
