//! A real VM end to end: a Linux guest booted under QEMU (TCG) by
//! `examples/qemu/run-guest.sh`, its serial console on QEMU's telnet chardev
//! and its display on QEMU's VNC server, used through consolegate with the
//! real `ssh` and a real VNC client (`vncdo`, PyPI vncdotool).
//!
//! Without qemu-system-x86_64, busybox-static or vncdotool the test says so
//! and passes, except under CI (`CI` set), where that is a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::process::{Child, Command};

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn missing(what: &str) -> bool {
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} is missing; .ci/run installs it"
    );
    eprintln!("SKIPPED: {what} is missing; run .ci/run");
    true
}

/// Kernel and initramfs, built once (and cached) by the example script.
async fn prepare(workdir: &Path) -> Option<String> {
    let out = Command::new(manifest().join("examples/qemu/run-guest.sh"))
        .arg("--workdir")
        .arg(workdir)
        .arg("--prepare")
        .output()
        .await
        .unwrap();
    if !out.status.success() {
        missing(&format!(
            "the guest (run-guest.sh --prepare: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
        return None;
    }
    std::fs::read_to_string(workdir.join("kernel-release"))
        .ok()
        .map(|s| s.trim().to_owned())
}

fn boot(workdir: &Path, telnet_port: u16, vnc_socket: &Path) -> Child {
    Command::new(manifest().join("examples/qemu/run-guest.sh"))
        .arg("--workdir")
        .arg(workdir)
        .args(["--serial", &format!("telnet:127.0.0.1:{telnet_port}")])
        .arg("--vnc")
        .arg(format!("unix:{}", vnc_socket.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Waits until the console log (written by the hub) contains `needle`.
async fn console_log_contains(log: &Path, needle: &str, after: usize) -> usize {
    tokio::time::timeout(Duration::from_secs(180), async {
        loop {
            if let Ok(text) = std::fs::read(log)
                && let Some(pos) = find(&text[after.min(text.len())..], needle.as_bytes())
            {
                return after + pos + needle.len();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the guest never printed {needle:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qemu_guest_through_consolegate() {
    if which("qemu-system-x86_64").is_none() && missing("qemu-system-x86_64") {
        return;
    }
    let vncdo = manifest().join(".venv/bin/vncdo");
    if !vncdo.exists() && missing("vncdo (PyPI vncdotool)") {
        return;
    }
    let workdir = manifest().join("target/qemu-guest");
    let Some(release) = prepare(&workdir).await else {
        return;
    };

    let run = tempfile::tempdir().unwrap();
    let vnc_socket = run.path().join("vnc.sock");
    let log = run.path().join("console.log");
    let telnet_port = free_port().await;
    let gw = Gateway::start(&format!(
        "[[nova_token]]\ntoken_sha256 = \"{}\"\nproject = \"test\"\nrole = \"member\"\n\n\
         [[instance]]\nid = \"guest\"\ncompartment = \"test\"\nserial = \"telnet:127.0.0.1:{telnet_port}\"\n\
         vnc = \"unix:{}\"\nlog_file = \"{}\"\nreplay = \"all\"\n",
        consolegate::connections::tokens::token_hash(NOVA_TOKEN),
        vnc_socket.display(),
        log.display()
    ))
    .await;
    let mut qemu = boot(&workdir, telnet_port, &vnc_socket);

    // The guest boots with nobody attached; the hub keeps what it printed.
    let booted = console_log_contains(&log, "consolegate guest ready", 0).await;
    let key = Key::ed25519(gw.dir.path(), "operator");
    let out = gw
        .cli(&[
            "connection",
            "create",
            "--instance",
            "guest",
            "--public-key-file",
            key.public.to_str().unwrap(),
        ])
        .await;
    assert!(out.status.success());
    let conn = Connection::from_json(serde_json::from_slice(&out.stdout).unwrap(), gw.dir.path());
    let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
    term.expect("serial console of guest").await;
    // Replayed on attach: the kernel's first line and the init's.
    term.expect("Linux version").await;
    term.expect("consolegate guest ready").await;

    // A command at the guest's shell, answered by its kernel.
    term.send(b"\r").await;
    term.expect("guest# ").await;
    term.send(b"uname -r\r").await;
    term.expect(&format!("{release}\r\n")).await;

    // A serial break (telnet IAC BRK -> QEMU -> the 8250 UART), then SysRq
    // `h`. A guest still settling (TCG, clocksource switch) may miss the
    // first one, as a real machine can: an operator would send it again.
    let mut helped = false;
    for _ in 0..5 {
        term.send(b"\r").await;
        term.expect("guest# ").await;
        term.send(b"&B").await;
        term.expect("break sent").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        term.send(b"h").await;
        if term.saw_within("sysrq: HELP", Duration::from_secs(5)).await {
            helped = true;
            break;
        }
    }
    assert!(
        helped,
        "the guest never answered a break with SysRq help; the terminal showed:\n{}",
        String::from_utf8_lossy(&term.transcript[term.transcript.len().saturating_sub(3000)..])
    );

    // The display, through the vncConnectionString tunnel, with a real VNC client.
    let local = free_port().await;
    let command = conn
        .vnc_connection_string
        .replace("-L localhost:5900:", &format!("-L localhost:{local}:"));
    let mut tunnel = Command::new("/usr/bin/ssh")
        .args(&argv_with_options(&command, &key, &key, &conn.known_hosts)[1..])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    drop(connect_eventually(local).await);
    let shot = run.path().join("shot.png");
    let captured = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(&vncdo)
            .args(["-s", &format!("127.0.0.1::{local}"), "capture"])
            .arg(&shot)
            .output(),
    )
    .await
    .expect("vncdo hung")
    .unwrap();
    assert!(
        captured.status.success(),
        "vncdo: {}",
        String::from_utf8_lossy(&captured.stderr)
    );
    let (width, height, colours) = png_facts(&shot).await;
    // QEMU's std VGA in text mode is 720x400.
    assert!(width >= 640 && height >= 400, "screen {width}x{height}");
    assert!(colours > 1, "the captured screen is blank");
    tunnel.kill().await.unwrap();

    // The web consoles a Nova client gets: noVNC shows the screen, the
    // serial page shows the console, in a headless Chromium.
    browser_check(&gw, run.path()).await;

    // Stop the guest and start it again: the session stays, is told, and
    // sees the new boot.
    qemu.kill().await.unwrap();
    let _ = qemu.wait().await;
    term.expect("CG-CONS-002 console connection lost").await;
    let mut qemu = boot(&workdir, telnet_port, &vnc_socket);
    term.expect("console connected").await;
    term.expect("Linux version").await;
    console_log_contains(&log, "consolegate guest ready", booted).await;
    term.expect("consolegate guest ready").await;
    term.send(b"\r&.").await;
    term.wait().await;
    qemu.kill().await.unwrap();
    gw.stop().await;
}

const NOVA_TOKEN: &str = "nova-token-for-the-qemu-test";

/// Runs tests/browser/check.js (Playwright + Debian's chromium).
async fn browser_check(gw: &Gateway, out: &Path) {
    let script_dir = manifest().join("tests/browser");
    if (!script_dir.join("node_modules/playwright-core").exists()
        || which("chromium").is_none()
        || which("node").is_none())
        && missing("chromium, node or tests/browser/node_modules (playwright-core)")
    {
        return;
    }
    let run = Command::new("node")
        .arg(script_dir.join("check.js"))
        .arg(format!("http://127.0.0.1:{}", gw.api_port))
        .arg(NOVA_TOKEN)
        .arg("guest")
        .arg("consolegate guest ready")
        .arg(out)
        .output();
    let result = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser check hung")
        .unwrap();
    assert!(
        result.status.success(),
        "browser check failed:\n{}\n{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    assert!(
        report["canvas"]["width"].as_u64().unwrap() >= 640,
        "{report}"
    );
    assert_eq!(report["serialText"], true, "{report}");
    let (w, h, colours) = png_facts(&out.join("novnc.png")).await;
    assert!(
        w >= 640 && h >= 400 && colours > 1,
        "noVNC screenshot {w}x{h}, {colours} colours"
    );
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.exists())
    })
}

/// Width, height and number of distinct colours of a PNG (read by Pillow,
/// which vncdotool brings).
async fn png_facts(path: &Path) -> (u32, u32, usize) {
    let python = manifest().join(".venv/bin/python");
    let out = Command::new(python)
        .args([
            "-c",
            "import sys; from PIL import Image; im = Image.open(sys.argv[1]).convert('RGB'); \
             print(im.size[0], im.size[1], len(set(im.getdata())))",
        ])
        .arg(path)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<usize> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(
        v.len(),
        3,
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (v[0] as u32, v[1] as u32, v[2])
}
