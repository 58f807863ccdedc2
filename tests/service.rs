//! consolegate as a systemd service: the example unit passes systemd's own
//! checks (`systemd-analyze verify`, and `security` for its sandboxing), the
//! example config validates, and the real `serve` process tells a
//! `$NOTIFY_SOCKET` READY=1 when it serves and STOPPING=1 on SIGTERM.

mod common;

use std::path::Path;

use common::*;

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/systemd")
        .join(name)
}

fn systemd_analyze() -> Option<&'static str> {
    let path = "/usr/bin/systemd-analyze";
    if Path::new(path).exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "systemd-analyze is missing"
    );
    eprintln!("SKIPPED: systemd-analyze is missing (Debian package systemd)");
    None
}

/// The example unit with its binary pointed at the one under test.
fn unit_under_test(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(example("consolegate.service")).unwrap();
    let path = dir.join("consolegate.service");
    std::fs::write(&path, text.replace("/usr/local/bin/consolegate", BIN)).unwrap();
    path
}

#[test]
fn the_example_unit_passes_systemd_verify_and_its_sandbox_is_tight() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_under_test(dir.path());
    let out = std::process::Command::new(analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "verify: {said}"
    );
    // Exposure at most 2.5 of 10 ("OK" starts below 3).
    let out = std::process::Command::new(analyze)
        .args(["security", "--offline=yes", "--threshold=25", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exposure above 2.5:\n{report}");
    assert!(report.contains("Overall exposure level"), "{report}");
    let text = std::fs::read_to_string(example("consolegate.service")).unwrap();
    for line in [
        "Type=notify",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=consolegate",
        "User=consolegate",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(text.contains(line), "the unit lacks {line:?}");
    }
}

#[tokio::test]
async fn the_example_config_validates() {
    let out = run_cli(&example("gateway.toml"), &["check"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_tells_notify_socket_ready_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_nonblocking(true).unwrap();
    let notify = tokio::net::UnixDatagram::from_std(notify).unwrap();
    let port = free_port().await;
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n[ssh]\nlisten = \"127.0.0.1:{port}\"\n[api]\nlisten = \"127.0.0.1:0\"\n\n{}",
            instance("demo", "simulator", None)
        ),
    )
    .unwrap();
    let mut child = spawn_serve(
        &config,
        &dir.path().join("serve.log"),
        &[("NOTIFY_SOCKET", notify_path.as_os_str())],
    );
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(GUARD, notify.recv(&mut buf))
        .await
        .expect("no READY=1")
        .unwrap();
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    // Ready means serving: the SSH port answers at once.
    let ssh = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert!(ssh.is_ok(), "READY=1 before the SSH listener served");
    signal(&child, "TERM");
    let n = tokio::time::timeout(GUARD, notify.recv(&mut buf))
        .await
        .expect("no STOPPING=1")
        .unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    let exit = tokio::time::timeout(GUARD, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success());
}
