//! Operating the gateway, against a live gateway and the real `ssh`:
//! session timeouts (warning, cut, audit row), `/metrics` read by the
//! official Prometheus parser while sessions and API calls move its
//! counters, `/healthz` and `/readyz`, `consolegate status` and
//! `consolegate doctor` on a healthy gateway and on each broken setup.

mod common;

use consolegate::connections::tokens::ConsoleProtocol;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

async fn attach(
    gw: &Gateway,
    instance: &str,
    name: &str,
    user: Option<&str>,
) -> (Terminal, Connection) {
    let key = Key::ed25519(gw.dir.path(), name);
    let conn = gw.create(instance, &key).await;
    let argv = match user {
        Some(u) => conn.ssh_argv_as(&key, u),
        None => conn.ssh_argv(&key),
    };
    let mut term = Terminal::spawn(&argv).await;
    term.expect(&format!("serial console of {instance}")).await;
    term.expect("&? for help]\r\n").await;
    (term, conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_warned_then_cut_and_audited() {
    let gw = Gateway::start(&format!(
        "{}idle_timeout_secs = 3\ntimeout_warning_secs = 2\n",
        instance("vm1", "simulator", None)
    ))
    .await;
    let (mut term, conn) = attach(&gw, "vm1", "idler", None).await;
    term.expect("CG-SESS-001 this session has been idle for 1s; it will be closed in 2s")
        .await;
    term.expect("CG-SESS-002 idle for 3s (the idle timeout): session closed; bye]")
        .await;
    term.wait().await;
    let rows = gw.audit(&conn.id).await;
    let kinds: Vec<&str> = rows.iter().map(|r| r["event"].as_str().unwrap()).collect();
    let cut = rows
        .iter()
        .find(|r| r["event"] == "timeout")
        .unwrap_or_else(|| panic!("no timeout row: {kinds:?}"));
    assert!(
        cut["detail"].as_str().unwrap().contains("CG-SESS-002"),
        "{cut}"
    );
    // The detach row follows, with the same reason.
    let detach = rows.iter().rev().find(|r| r["event"] == "detach").unwrap();
    assert!(
        detach["detail"].as_str().unwrap().contains("idle for 3s"),
        "{detach}"
    );
    let (_, metrics) = http_get(gw.api_port, "/metrics").await;
    assert!(
        metrics.contains(r#"consolegate_session_cuts_total{instance="vm1",reason="idle"} 1"#),
        "{metrics}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_keeps_a_session_and_a_read_only_viewer_idles_on_its_own_input() {
    let gw = Gateway::start(&format!(
        "{}idle_timeout_secs = 4\ntimeout_warning_secs = 1\n",
        instance("vm1", "simulator", None)
    ))
    .await;
    let (mut writer, _) = attach(&gw, "vm1", "writer", None).await;
    let (mut viewer, viewer_conn) = attach(&gw, "vm1", "viewer", Some("ro")).await;
    // The writer types (and the machine echoes) every half second: the
    // viewer sees all of it, but only its own input would keep it.
    let mut typed = 0;
    let cut = loop {
        writer.send(b"x").await;
        typed += 1;
        if viewer
            .saw_within("CG-SESS-002", Duration::from_millis(500))
            .await
        {
            break true;
        }
        if typed > 40 {
            break false;
        }
    };
    assert!(
        cut,
        "the read-only viewer was never cut while only others typed"
    );
    viewer.wait().await;
    // The writer, busy all along, is still attached and was never warned.
    writer.send(b"\r").await;
    writer.send(b"echo still-here\r").await;
    writer.expect("still-here").await;
    let shown = String::from_utf8_lossy(&writer.transcript).into_owned();
    assert!(!shown.contains("CG-SESS-00"), "{shown}");
    let rows = gw.audit(&viewer_conn.id).await;
    assert!(rows.iter().any(|r| r["event"] == "timeout"), "{rows:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_at_its_maximum_duration_however_busy() {
    let gw = Gateway::start(&format!(
        "[session]\nmax_session_secs = 3\ntimeout_warning_secs = 1\n\n{}",
        instance("vm1", "simulator", None)
    ))
    .await;
    let (mut term, conn) = attach(&gw, "vm1", "busy", None).await;
    let mut warned = false;
    for _ in 0..40 {
        term.send(b"x").await;
        if term
            .saw_within("CG-SESS-003", Duration::from_millis(250))
            .await
        {
            warned = true;
            break;
        }
    }
    assert!(warned, "no maximum-duration warning");
    term.expect("reconnect to go on after that").await;
    term.expect("CG-SESS-004 this session lasted its maximum duration of 3s: session closed")
        .await;
    term.wait().await;
    let rows = gw.audit(&conn.id).await;
    assert!(
        rows.iter()
            .any(|r| r["event"] == "timeout"
                && r["detail"].as_str().unwrap().contains("CG-SESS-004")),
        "{rows:?}"
    );
    gw.stop().await;
}

/// `/metrics` parsed by the Prometheus project's own OpenMetrics parser.
async fn scrape(gw: &Gateway, python: &Path) -> Vec<Value> {
    let (status, text) = http_get(gw.api_port, "/metrics").await;
    assert_eq!(status, 200);
    let mut child = tokio::process::Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/parse_metrics.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(GUARD, child.wait_with_output())
        .await
        .expect("parser hung")
        .unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser rejected /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The value of the sample `name` whose labels include `labels` (0 if absent).
fn sample(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s["name"] == name)
        .find(|s| labels.iter().all(|(k, v)| s["labels"][k] == *v))
        .map_or(0.0, |s| s["value"].as_f64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_sessions_refusals_and_api_calls() {
    let Some(python) = venv_python("prometheus_client") else {
        return;
    };
    let gw = Gateway::start(&instance("vm1", "simulator", None)).await;
    let before = scrape(&gw, &python).await;
    assert_eq!(
        sample(&before, "consolegate_backend_up", &[("instance", "vm1")]),
        1.0
    );
    assert_eq!(
        sample(
            &before,
            "consolegate_console_sessions",
            &[("instance", "vm1"), ("role", "read-write")]
        ),
        0.0
    );

    // A session: accepted on both hops, attached read-write, typing.
    let (mut term, conn) = attach(&gw, "vm1", "alice", None).await;
    term.send(b"root\r").await;
    term.expect("root@vm1").await;
    // A wrong key for the same connection: refused on the outer hop.
    let mallory = Key::ed25519(gw.dir.path(), "mallory");
    let wrong = argv_with_options(
        &conn.connection_string,
        &mallory,
        &mallory,
        &conn.known_hosts,
    );
    assert!(!ssh_batch(&wrong).await.status.success());
    // API calls: unauthenticated, and paths that match no route.
    for path in [
        "/20160918/instanceConsoleConnections",
        "/x/1",
        "/x/2",
        "/etc/passwd",
    ] {
        let (status, _) = http_get(gw.api_port, path).await;
        assert!(status == 401 || status == 404, "{path}: {status}");
    }

    let after = scrape(&gw, &python).await;
    let outer_ok = [("hop", "outer"), ("result", "accepted")];
    assert!(
        sample(&after, "consolegate_ssh_auth_total", &outer_ok) >= 1.0,
        "{after:?}"
    );
    assert!(
        sample(
            &after,
            "consolegate_ssh_auth_total",
            &[("hop", "inner"), ("result", "accepted")]
        ) >= 1.0
    );
    assert!(
        sample(
            &after,
            "consolegate_ssh_auth_total",
            &[("hop", "outer"), ("reason", "wrong_key")]
        ) >= 1.0,
        "{after:?}"
    );
    assert!(sample(&after, "consolegate_ssh_connections_total", &[]) >= 2.0);
    assert_eq!(
        sample(
            &after,
            "consolegate_console_sessions",
            &[("instance", "vm1"), ("role", "read-write")]
        ),
        1.0
    );
    let typed = sample(
        &after,
        "consolegate_console_bytes_total",
        &[("instance", "vm1"), ("direction", "to_console")],
    );
    assert!(typed >= 5.0, "typed {typed}");
    let printed = |s: &[Value]| {
        sample(
            s,
            "consolegate_console_bytes_total",
            &[("instance", "vm1"), ("direction", "from_console")],
        )
    };
    assert!(printed(&after) > printed(&before));
    let route = "/20160918/instanceConsoleConnections";
    assert_eq!(
        sample(
            &after,
            "consolegate_api_requests_total",
            &[("route", route), ("method", "GET"), ("status", "401")]
        ),
        1.0
    );
    // Random paths share one series: a scan cannot grow the metrics.
    assert_eq!(
        sample(
            &after,
            "consolegate_api_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        3.0
    );
    assert_eq!(
        sample(
            &after,
            "consolegate_api_request_duration_seconds_count",
            &[("route", route)]
        ),
        1.0
    );
    // Nothing secret: no private key material, no public key, no token.
    let (_, text) = http_get(gw.api_port, "/metrics").await;
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains("ssh-ed25519") && !text.contains(&conn.id)
    );
    term.send(b"&.").await;
    term.wait().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_summarise_the_backends() {
    let gw = Gateway::start(&format!(
        "{}{}",
        instance("up", "simulator", None),
        instance("down", "unix:/nonexistent/down.sock", None)
    ))
    .await;
    assert_eq!(
        http_get(gw.api_port, "/healthz").await,
        (200, "ok\n".to_owned())
    );
    // A console that is down does not make the gateway unready.
    let (status, body) = http_get(gw.api_port, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["store"], "ok");
    assert_eq!(ready["listeners"]["ssh"], true);
    assert_eq!(ready["backends"]["total"], 2);
    assert_eq!(ready["backends"]["down"], serde_json::json!(["down"]));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_consoles_and_attached_sessions() {
    let gw = Gateway::start(&format!(
        "{}{}",
        instance("vm1", "simulator", None),
        instance("vm2", "unix:/nonexistent/vm2.sock", None)
    ))
    .await;
    let key = Key::ed25519(gw.dir.path(), "alice");
    let conn = gw.create("vm1", &key).await;
    let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
    term.expect("&? for help]\r\n").await;
    term.send(b"root\r").await;
    term.expect("root@vm1").await;

    let out = gw.cli(&["status", "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let vm1 = &status["instances"][0];
    assert_eq!(vm1["instance"], "vm1");
    assert_eq!(vm1["connected"], true);
    assert!(vm1["bytesFromConsole"].as_u64().unwrap() > 0);
    assert!(vm1["lastOutput"].is_string());
    let session = &vm1["sessions"][0];
    assert_eq!(session["connectionId"], conn.id.as_str());
    assert_eq!(
        session["fingerprint"],
        key.ssh_keygen_fingerprint().as_str()
    );
    assert_eq!(session["role"], "read-write");
    assert!(session["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(session["bytesIn"].as_u64().unwrap() >= 5);
    assert_eq!(session["lagDrops"], 0);
    let vm2 = &status["instances"][1];
    assert_eq!(vm2["connected"], false);
    assert!(
        vm2["state"].as_str().unwrap().starts_with("CG-CONS-001"),
        "{vm2}"
    );

    let out = gw.cli(&["status"]).await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("vm1  simulator  UP since"), "{table}");
    assert!(
        table.contains("vm2  unix:/nonexistent/vm2.sock  DOWN since"),
        "{table}"
    );
    assert!(table.contains(&key.ssh_keygen_fingerprint()), "{table}");
    term.send(b"&.").await;
    term.wait().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_without_a_gateway_says_so() {
    let gw = Gateway::start("").await;
    let config = gw.config_path.clone();
    let _dir = gw.stop().await;
    let out = run_cli(&config, &["status"]).await;
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("CG-OPS-002 no gateway answers"), "{e}");
}

/// Runs `consolegate doctor --json` with `args`; returns (exit success, findings).
async fn doctor(config: &Path, args: &[&str]) -> (bool, Vec<Value>) {
    let mut all = vec!["doctor", "--json"];
    all.extend_from_slice(args);
    let out = run_cli(config, &all).await;
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (
        out.status.success(),
        report["findings"].as_array().unwrap().clone(),
    )
}

fn finding<'a>(findings: &'a [Value], code: &str) -> &'a Value {
    findings
        .iter()
        .find(|f| f["code"] == code)
        .unwrap_or_else(|| panic!("no {code} finding: {findings:#?}"))
}

fn failed(findings: &[Value]) -> Vec<&str> {
    findings
        .iter()
        .filter(|f| f["outcome"] == "fail")
        .map(|f| f["code"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_a_healthy_gateway_and_names_each_broken_part() {
    let vnc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let vnc_port = vnc.local_addr().unwrap().port();
    // A VNC server that greets as RFB does.
    tokio::spawn(async move {
        while let Ok((mut s, _)) = vnc.accept().await {
            let _ = s.write_all(b"RFB 003.008\n").await;
        }
    });
    let gw = Gateway::start(&format!(
        "{}{}",
        instance(
            "vm1",
            "simulator",
            Some(&format!("tcp:127.0.0.1:{vnc_port}"))
        ),
        instance("vm2", "unix:/nonexistent/vm2.sock", Some("tcp:127.0.0.1:1"))
    ))
    .await;
    let key = Key::ed25519(gw.dir.path(), "alice");
    let other = Key::ed25519(gw.dir.path(), "bob");
    let conn = gw.create("vm1", &key).await;

    // Healthy: vm1, its VNC, the connection and its key.
    let pubkey = key.public.to_str().unwrap();
    let (ok, findings) = doctor(
        &gw.config_path,
        &[
            "--instance",
            "vm1",
            "--connection",
            &conn.id,
            "--public-key-file",
            pubkey,
        ],
    )
    .await;
    assert!(ok, "{findings:#?}");
    for code in [
        "CG-CONF-001",
        "CG-DISK-001",
        "CG-STORE-001",
        "CG-OPS-002",
        "CG-SSH-002",
        "CG-HOSTKEY-001",
        "CG-CONS-001",
        "CG-VNC-001",
        "CG-AUTH-004",
    ] {
        assert_eq!(
            finding(&findings, code)["outcome"],
            "ok",
            "{code}: {findings:#?}"
        );
    }

    // The backend and the VNC display of vm2 are down.
    let (ok, findings) = doctor(&gw.config_path, &["--instance", "vm2"]).await;
    assert!(!ok);
    assert_eq!(
        failed(&findings),
        ["CG-CONS-001", "CG-VNC-001"],
        "{findings:#?}"
    );
    assert!(
        finding(&findings, "CG-CONS-001")["message"]
            .as_str()
            .unwrap()
            .contains("unreachable")
    );

    // A key that would be refused, and a connection asked of another instance.
    let (ok, findings) = doctor(
        &gw.config_path,
        &[
            "--instance",
            "vm1",
            "--connection",
            &conn.id,
            "--public-key-file",
            other.public.to_str().unwrap(),
        ],
    )
    .await;
    assert!(!ok);
    assert!(
        finding(&findings, "CG-AUTH-004")["message"]
            .as_str()
            .unwrap()
            .contains("Permission denied")
    );
    let (ok, findings) = doctor(
        &gw.config_path,
        &["--instance", "vm2", "--connection", &conn.id],
    )
    .await;
    assert!(!ok);
    assert!(failed(&findings).contains(&"CG-CHAN-001"), "{findings:#?}");
    // An unknown connection id.
    let (ok, findings) = doctor(
        &gw.config_path,
        &[
            "--instance",
            "vm1",
            "--connection",
            "ocid1.instanceconsoleconnection.oc1..nosuch",
        ],
    )
    .await;
    assert!(!ok);
    assert_eq!(failed(&findings), ["CG-AUTH-002"]);

    // The host key file no longer matches what the running gateway presents.
    let host_key = gw.path("data/ssh_host_ed25519_key");
    let saved = std::fs::read(&host_key).unwrap();
    std::fs::copy(&other.private, &host_key).unwrap();
    let (ok, findings) = doctor(&gw.config_path, &["--instance", "vm1"]).await;
    std::fs::write(&host_key, &saved).unwrap();
    assert!(!ok);
    assert_eq!(failed(&findings), ["CG-HOSTKEY-002"], "{findings:#?}");

    // A data directory the doctor's user cannot write (run as nobody).
    let gw_dir = gw.dir.path().to_owned();
    let config = gw.config_path.clone();
    let _dir = gw.stop().await;
    // With the gateway stopped, it says so, and probes the backend itself.
    let (ok, findings) = doctor(&config, &["--instance", "vm1"]).await;
    assert!(!ok);
    assert!(failed(&findings).contains(&"CG-OPS-002"), "{findings:#?}");
    assert_eq!(finding(&findings, "CG-CONS-001")["outcome"], "ok");
    use std::os::unix::fs::PermissionsExt;
    for p in [gw_dir.as_path(), &gw_dir.join("data")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = tokio::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "doctor",
            "--json",
            "--config",
        ])
        .arg(&config)
        .output()
        .await
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let findings = report["findings"].as_array().unwrap();
    assert!(!out.status.success());
    assert_eq!(
        finding(findings, "CG-DISK-001")["outcome"],
        "fail",
        "{findings:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reports_a_broken_config_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "[ssh]\nlisten_port = 22\n").unwrap();
    let (ok, findings) = doctor(&config, &[]).await;
    assert!(!ok);
    let f = finding(&findings, "CG-CONF-001");
    assert_eq!(f["outcome"], "fail");
    assert!(
        f["message"].as_str().unwrap().contains("listen_port"),
        "{f}"
    );
    let out = run_cli(&config, &["doctor"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[FAIL] CG-CONF-001 config:"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_console_session_times_out_like_an_ssh_one() {
    let Some(python) = venv_python("websocket") else {
        return;
    };
    let gw = Gateway::start(&format!(
        "{}idle_timeout_secs = 2\ntimeout_warning_secs = 1\n",
        instance("vm1", "simulator", None)
    ))
    .await;
    let token = &gw.console_token("vm1", ConsoleProtocol::Serial).await;
    let url = format!("ws://127.0.0.1:{}/serial?token={token}", gw.api_port);
    let out = tokio::process::Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/serial_ws.py"))
        .args([&url, "", "CG-SESS-002"])
        .output()
        .await
        .unwrap();
    let result: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let received = result["received"].as_str().unwrap();
    assert!(
        received.contains("CG-SESS-001 this session has been idle for 1s"),
        "{received}"
    );
    assert!(
        received.contains("CG-SESS-002 idle for 2s (the idle timeout): session closed; bye]"),
        "{received}"
    );
    // The gateway writes the cut's audit row as the socket closes: wait for it.
    let rows = tokio::time::timeout(GUARD, async {
        loop {
            let out = gw.cli(&["audit", "--instance", "vm1"]).await;
            let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
            if rows
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["event"] == "timeout")
            {
                return rows;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("no timeout row in the audit trail");
    // The web session is named by its token's id, never by a placeholder
    // connection or key, and never by the token itself.
    let token_id = &consolegate::connections::tokens::token_id(token);
    let attach = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["event"] == "attach")
        .unwrap();
    assert_eq!(attach["connectionId"], Value::Null, "{attach}");
    assert_eq!(attach["fingerprint"], Value::Null, "{attach}");
    assert!(
        attach["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("(console token {token_id})")),
        "{attach}"
    );
    assert!(
        !rows.to_string().contains(token),
        "the token itself reached the audit trail"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_their_own_listener_leave_the_api_listener_and_doctor_finds_both() {
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics_port) = (free_port().await, free_port().await);
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n[ssh]\nlisten = \"127.0.0.1:{port}\"\n[api]\nlisten = \"127.0.0.1:0\"\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\n{}",
            instance("vm1", "simulator", None)
        ),
    )
    .unwrap();
    let mut child = spawn_serve(&config, &dir.path().join("serve.log"), &[]);
    drop(connect_eventually(port).await);
    drop(connect_eventually(metrics_port).await);
    let (status, text) = http_get(metrics_port, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains("consolegate_backend_up{instance=\"vm1\"} 1"),
        "{text}"
    );
    assert_eq!(http_get(metrics_port, "/healthz").await.0, 200);
    assert_eq!(readyz(metrics_port).await.0, 200);
    // The API listener (port 0 in the config: ask the gateway where it is)
    // no longer serves them.
    let out = run_cli(&config, &["status", "--json"]).await;
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let api_port: u16 = status["apiListen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(status["metricsListen"], format!("127.0.0.1:{metrics_port}"));
    assert_eq!(http_get(api_port, "/metrics").await.0, 404);
    assert_eq!(http_get(api_port, "/openapi.json").await.0, 200);
    let out = run_cli(&config, &["doctor", "--json"]).await;
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{report:#}");
    for code in ["CG-API-001", "CG-OPS-004", "CG-SSH-002"] {
        assert!(
            report["findings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["code"] == code && f["outcome"] == "ok"),
            "{code}: {report:#}"
        );
    }
    child.kill().await.unwrap();
}
