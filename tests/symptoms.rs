//! The ops runbook's symptoms, each produced for real: the real `ssh` with a
//! wrong key, a deleted connection, a hand-edited string; VNC tunnels with no
//! display and a display that is down; a console that stays blank, one that
//! flaps; a web client with bad console tokens; a SQLite file locked by
//! another process and one that is gone; a full disk under the console log.
//! Each asserts what the user sees and the runbook code that names it (in
//! the message, the log, the audit trail or `consolegate doctor`).

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Everything the in-process gateways of this test binary log.
fn log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("consolegate=info")
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .try_init();
        buffer
    })
    .clone()
}

/// Waits until a log line contains every one of `parts`; returns it.
async fn logged(parts: &[&str]) -> String {
    let buffer = log();
    tokio::time::timeout(GUARD, async {
        loop {
            let text = String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned();
            if let Some(line) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned();
        panic!("no log line with {parts:?} in:\n{text}")
    })
}

fn refused_with(rows: &[Value], code: &str) -> bool {
    rows.iter().any(|r| {
        r["event"] == "refused" && r["detail"].as_str().is_some_and(|d| d.starts_with(code))
    })
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_denied_and_administratively_prohibited_are_told_apart_by_code() {
    log();
    let gw =
        Gateway::start(&(instance("vm1", "simulator", None) + &instance("vm2", "simulator", None)))
            .await;
    let alice = Key::ed25519(gw.dir.path(), "alice");
    let mallory = Key::ed25519(gw.dir.path(), "mallory");
    let conn = gw.create("vm1", &alice).await;

    // A wrong key: CG-AUTH-004, in the log and the audit trail.
    let out = ssh_batch(&argv_with_options(
        &conn.connection_string,
        &mallory,
        &mallory,
        &conn.known_hosts,
    ))
    .await;
    assert!(
        stderr(&out).contains("Permission denied (publickey)"),
        "{}",
        stderr(&out)
    );
    logged(&["CG-AUTH-004", &mallory.ssh_keygen_fingerprint()]).await;
    assert!(refused_with(&gw.audit(&conn.id).await, "CG-AUTH-004"));

    // An id that never existed: CG-AUTH-002; a user name that is no id: CG-AUTH-001.
    let ghost = "ocid1.instanceconsoleconnection.oc1..ghostghostghostghostghostghostgh";
    let out = ssh_batch(&outer_w(&gw, &alice, &conn.known_hosts, ghost, "vm1:22")).await;
    assert!(stderr(&out).contains("Permission denied (publickey)"));
    logged(&["CG-AUTH-002", "ghostghost"]).await;
    let out = ssh_batch(&outer_w(&gw, &alice, &conn.known_hosts, "a%20b", "vm1:22")).await;
    assert!(stderr(&out).contains("Permission denied (publickey)"));
    logged(&["CG-AUTH-001", "user=a%20b"]).await;

    // A hand-edited string naming another instance: administratively prohibited.
    let out = ssh_batch(&outer_w(&gw, &alice, &conn.known_hosts, &conn.id, "vm2:22")).await;
    assert!(
        stderr(&out).contains("administratively prohibited"),
        "{}",
        stderr(&out)
    );
    let rows = gw.audit(&conn.id).await;
    assert!(
        rows.iter().any(|r| r["event"] == "refused"
            && r["detail"]
                .as_str()
                .unwrap()
                .starts_with("CG-CHAN-001 outer hop: channel to vm2:22")),
        "{rows:#?}"
    );

    // A deleted connection: CG-AUTH-003.
    let out = gw.cli(&["connection", "delete", &conn.id]).await;
    assert!(out.status.success());
    let out = ssh_batch(&conn.ssh_argv(&alice)).await;
    assert!(stderr(&out).contains("Permission denied (publickey)"));
    assert!(refused_with(&gw.audit(&conn.id).await, "CG-AUTH-003"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vnc_tunnel_without_a_display_or_with_one_down_is_coded_in_the_log() {
    log();
    let down = free_port().await;
    let gw = Gateway::start(
        &(instance("novnc", "simulator", None)
            + &instance(
                "vncdown",
                "simulator",
                Some(&format!("tcp:127.0.0.1:{down}")),
            )),
    )
    .await;
    for (vm, code) in [("novnc", "CG-VNC-002"), ("vncdown", "CG-VNC-001")] {
        let key = Key::ed25519(gw.dir.path(), vm);
        let conn = gw.create(vm, &key).await;
        let out = ssh_batch(&outer_w(
            &gw,
            &key,
            &conn.known_hosts,
            &conn.id,
            &format!("{vm}:5900"),
        ))
        .await;
        assert!(
            stderr(&out).contains("open failed: connect failed"),
            "{vm}: {}",
            stderr(&out)
        );
        logged(&[code, &format!("instance={vm}")]).await;
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blank_console_and_a_flapping_one_show_in_doctor_status_and_the_session() {
    log();
    // "silent" accepts and never prints: a guest without console=ttyS0, or
    // a chardev someone else holds. "flaps" hangs up on every connection.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let flaps = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let flaps_port = flaps.local_addr().unwrap().port();
    let flapper = tokio::spawn(async move {
        while let Ok((mut s, _)) = flaps.accept().await {
            let _ = s.write_all(b"booting...\r\n").await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let gw = Gateway::start(
        &(instance("silent", &format!("tcp:127.0.0.1:{silent_port}"), None)
            + &instance("flaps", &format!("tcp:127.0.0.1:{flaps_port}"), None)),
    )
    .await;
    let key = Key::ed25519(gw.dir.path(), "alice");
    let conn = gw.create("flaps", &key).await;
    let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
    term.expect(
        "CG-CONS-002 console connection lost (the console closed the connection); reconnecting]",
    )
    .await;
    term.expect("booting...").await;
    term.expect("CG-CONS-002 console connection lost").await;
    logged(&["CG-CONS-002", "instance=flaps"]).await;

    let out = run_cli(
        &gw.config_path,
        &["doctor", "--json", "--instance", "silent"],
    )
    .await;
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let blank = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "CG-CONS-004")
        .unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(blank["outcome"], "warn");
    assert!(
        blank["message"]
            .as_str()
            .unwrap()
            .contains("printed nothing")
    );
    // A warning alone does not fail the doctor.
    assert!(out.status.success(), "{report:#}");

    let out = gw.cli(&["status", "--json"]).await;
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let flapping = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance"] == "flaps")
        .unwrap();
    assert!(flapping["reconnects"].as_u64().unwrap() >= 1, "{flapping}");
    term.send(b"&.").await;
    term.wait().await;
    gw.stop().await;
    held.abort();
    flapper.abort();
}

/// A WebSocket handshake as a browser sends it; returns the status line and
/// the `x-consolegate-code` header.
async fn websocket_handshake(port: u16, path: &str) -> (String, Option<String>) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(GUARD, s.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]).into_owned();
    let code = text
        .lines()
        .find_map(|l| l.strip_prefix("x-consolegate-code: "))
        .map(str::to_owned);
    (text, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_console_token_errors_carry_their_codes() {
    let gw = Gateway::start(&instance("vm1", "simulator", None)).await;
    for (path, code, text) in [
        ("/serial", "CG-WEB-001", "a console token is required"),
        (
            "/serial?token=forged",
            "CG-WEB-002",
            "invalid, expired or already used",
        ),
        (
            "/websockify?token=forged",
            "CG-WEB-002",
            "invalid, expired or already used",
        ),
    ] {
        let (answer, header) = websocket_handshake(gw.api_port, path).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{path}: {answer}");
        assert_eq!(header.as_deref(), Some(code), "{path}: {answer}");
        assert!(
            answer.contains(&format!("{code} ")) && answer.contains(text),
            "{path}: {answer}"
        );
    }
    // Nova's own answers keep Nova's wording; the code rides in the header.
    let (answer, header) = websocket_handshake(gw.api_port, "/v2.1/servers/vm1/consoles").await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer.contains("requires authentication (X-Auth-Token)"),
        "{answer}"
    );
    assert_eq!(header.as_deref(), Some("CG-API-401"));
    let (_, metrics) = http_get(gw.api_port, "/metrics").await;
    assert!(
        metrics.contains(r#"consolegate_console_tokens_total{result="refused"} 3"#),
        "{metrics}"
    );
    gw.stop().await;
}

/// Holds the write lock of a SQLite file (system python3's sqlite3, as a
/// forgotten `sqlite3` shell or a backup tool would) until the returned
/// child is killed.
async fn lock_database(path: &Path) -> tokio::process::Child {
    let script = "import sqlite3, sys, time\n\
        db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=20)\n\
        db.execute('BEGIN IMMEDIATE')\n\
        db.execute(\"UPDATE console_connections SET id = id WHERE id = ''\")\n\
        print('locked', flush=True)\n\
        time.sleep(600)\n";
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 7];
    tokio::time::timeout(GUARD, out.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"locked\n");
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_is_unready_and_named_and_a_gone_one_is_named_by_doctor() {
    let gw = Gateway::start(&instance("vm1", "simulator", None)).await;
    let key = Key::ed25519(gw.dir.path(), "alice");
    let conn = gw.create("vm1", &key).await;
    let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
    term.expect("&? for help]").await;
    assert_eq!(readyz(gw.api_port).await.0, 200);

    let db = gw.path("data/consolegate.db");
    let mut locker = lock_database(&db).await;
    let (status, body) = readyz(gw.api_port).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["store"].as_str().unwrap().starts_with("CG-STORE-002"),
        "{body}"
    );
    let out = run_cli(&gw.config_path, &["doctor", "--json", "--instance", "vm1"]).await;
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["code"] == "CG-STORE-002" && f["outcome"] == "fail"),
        "{report:#}"
    );
    // The live console is not cut by a store it cannot read.
    term.send(b"root\r").await;
    term.expect("root@vm1").await;
    locker.kill().await.unwrap();
    let _ = locker.wait().await;
    assert_eq!(readyz(gw.api_port).await.0, 200);

    // The database file removed under the gateway: doctor names it.
    std::fs::remove_file(&db).unwrap();
    let out = run_cli(&gw.config_path, &["doctor", "--json", "--instance", "vm1"]).await;
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let gone = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "CG-STORE-001")
        .unwrap();
    assert_eq!(gone["outcome"], "fail");
    assert!(
        gone["message"].as_str().unwrap().contains("does not exist"),
        "{gone}"
    );
    // The gateway does not quietly recreate it empty and unmigrated.
    assert!(!db.exists(), "a removed database came back");
    term.send(b"&.").await;
    term.wait().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_console_log_with_its_code_and_the_console_goes_on() {
    // A 64 KiB filesystem for the console log (tmpfs, mounted as root).
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&small)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            std::env::var_os("CI").is_none(),
            "cannot mount a tmpfs for the full-disk test"
        );
        eprintln!("SKIPPED: cannot mount a tmpfs (not root?)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&small);
    let machine = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let machine_port = machine.local_addr().unwrap().port();
    let port = free_port().await;
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n[ssh]\nlisten = \"127.0.0.1:{port}\"\n[api]\nlisten = \"127.0.0.1:0\"\n\n\
             {}log_file = \"{}/vm1.log\"\n",
            instance("vm1", &format!("tcp:127.0.0.1:{machine_port}"), None),
            small.display()
        ),
    )
    .unwrap();
    let log_path = dir.path().join("serve.log");
    let mut child = spawn_serve(&config, &log_path, &[]);
    let (mut console, _) = tokio::time::timeout(GUARD, machine.accept())
        .await
        .unwrap()
        .unwrap();
    // 256 KiB of output: the log fills at 64 KiB.
    let line = format!("{}\r\n", "x".repeat(1022));
    for _ in 0..256 {
        console.write_all(line.as_bytes()).await.unwrap();
    }
    let logged = tokio::time::timeout(GUARD, async {
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap();
            if text.contains("CG-LOG-002") {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("no CG-LOG-002 for the full disk");
    assert!(
        logged.contains("console log write failed; logging stops"),
        "{logged}"
    );
    // The console still works for its users.
    let key = Key::ed25519(dir.path(), "alice");
    let conn = create_connection(&config, "vm1", &key, dir.path()).await;
    let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
    term.expect("&? for help]").await;
    console
        .write_all(b"after the disk filled\r\n")
        .await
        .unwrap();
    term.expect("after the disk filled").await;
    term.send(b"&.").await;
    term.wait().await;
    child.kill().await.unwrap();
    let _ = child.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_key_file_replaced_under_a_running_gateway_shows_as_changed_host_key() {
    let gw = Gateway::start(&instance("vm1", "simulator", None)).await;
    let alice = Key::ed25519(gw.dir.path(), "alice");
    // Someone restores an old backup of the host key while the gateway runs:
    // new connections advertise the file's key, the gateway presents its own.
    let other = Key::ed25519(gw.dir.path(), "other-host-key");
    std::fs::copy(&other.private, gw.path("data/ssh_host_ed25519_key")).unwrap();
    let conn = gw.create("vm1", &alice).await;
    let out = ssh_batch(&conn.ssh_argv(&alice)).await;
    let said = stderr(&out);
    assert!(!out.status.success());
    assert!(
        said.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{said}"
    );
    let out = run_cli(&gw.config_path, &["doctor", "--json", "--instance", "vm1"]).await;
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let changed = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "CG-HOSTKEY-002")
        .unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(changed["outcome"], "fail");
    gw.stop().await;
}
