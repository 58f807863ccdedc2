//! The console hub through the real `ssh`: shared and exclusive input,
//! force, breaks only from sessions with write access, replay options,
//! slow viewers, released write access, recordings (played back with
//! `asciinema cat`) and the audit trail.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A TCP "machine" and a gateway whose `vm1` console it is.
async fn machine(extra: &str) -> (Gateway, TcpListener) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let gw = Gateway::start(&format!(
        "{}\n{extra}\n",
        instance("vm1", &format!("tcp:127.0.0.1:{port}"), None).trim_end()
    ))
    .await;
    (gw, listener)
}

async fn accept(listener: &TcpListener) -> TcpStream {
    tokio::time::timeout(GUARD, listener.accept())
        .await
        .expect("the hub never connected")
        .unwrap()
        .0
}

async fn read_exactly(console: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(GUARD, console.read_exact(&mut buf))
        .await
        .expect("the console received less than expected")
        .unwrap();
    buf
}

async fn attach(gw: &Gateway, name: &str, user: Option<&str>) -> (Terminal, Connection, Key) {
    let key = Key::ed25519(gw.dir.path(), name);
    let conn = gw.create("vm1", &key).await;
    let argv = match user {
        Some(u) => conn.ssh_argv_as(&key, u),
        None => conn.ssh_argv(&key),
    };
    let mut term = Terminal::spawn(&argv).await;
    term.expect("serial console of vm1").await;
    term.expect("&? for help]\r\n").await;
    (term, conn, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_console_has_one_writer_until_another_forces() {
    let (gw, listener) = machine("input = \"exclusive\"").await;
    let mut console = accept(&listener).await;
    let (mut a, ..) = attach(&gw, "alice", None).await;
    let (mut b, ..) = attach(&gw, "bob", None).await;

    // Both see what the first one types (the machine echoes it).
    a.send(b"from-a\r").await;
    let typed = read_exactly(&mut console, 7).await;
    assert_eq!(typed, b"from-a\r");
    console.write_all(b"echo: from-a\r\n").await.unwrap();
    a.expect("echo: from-a").await;
    b.expect("echo: from-a").await;

    // The second cannot type; it is told so.
    b.send(b"from-b\r").await;
    b.expect("CG-INPUT-001 you are read-only here").await;

    // It forces: the first is told and becomes read-only.
    b.send(b"&F").await;
    b.expect("you hold write access").await;
    a.expect("CG-INPUT-002 ").await;
    a.expect("took write access; you are read-only now").await;
    a.send(b"a-again\r").await;
    a.expect("CG-INPUT-001 you are read-only here").await;
    b.send(b"b-now\r").await;
    assert_eq!(
        read_exactly(&mut console, 6).await,
        b"b-now\r",
        "a read-only session's input leaked"
    );

    // Who is attached.
    b.send(b"&W").await;
    b.expect("2 session(s) attached").await;
    b.expect("writer").await;
    a.send(b"\r&.").await;
    b.send(b"\r&.").await;
    a.wait().await;
    b.wait().await;
    gw.stop().await;
}

/// `allow_force = false`: `&F` is refused with CG-INPUT-003 while the
/// writer is attached, and takes the access once it has left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_forcing_is_not_allowed_the_writer_keeps_the_console() {
    let (gw, listener) = machine("input = \"exclusive\"\nallow_force = false").await;
    let mut console = accept(&listener).await;
    let (mut a, ..) = attach(&gw, "alice", None).await;
    let (mut b, ..) = attach(&gw, "bob", None).await;
    b.send(b"&F").await;
    b.expect("CG-INPUT-003 this console does not allow taking write access")
        .await;
    b.send(b"from-b\r").await;
    b.expect("CG-INPUT-001 you are read-only here").await;
    a.send(b"from-a\r").await;
    assert_eq!(
        read_exactly(&mut console, 7).await,
        b"from-a\r",
        "the refused session's input leaked"
    );
    // The writer leaves: the access is free to take.
    a.send(b"\r&.").await;
    a.wait().await;
    b.send(b"\r&F").await;
    b.expect("you hold write access").await;
    b.send(b"b-now\r").await;
    let typed = read_exactly(&mut console, 7).await;
    assert!(typed.ends_with(b"b-now\r"), "{typed:?}");
    b.send(b"\r&.").await;
    b.wait().await;
    gw.stop().await;
}

/// A flood of escape commands (`&L` copies up to the whole history each
/// time) runs only a burst's worth; the rest are dropped with a notice, and
/// the session and the console go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escape_flood_runs_a_burst_and_is_told_the_rest_were_dropped() {
    let (gw, listener) = machine("").await;
    let mut console = accept(&listener).await;
    let (mut a, ..) = attach(&gw, "alice", Some("replay=none")).await;
    console.write_all(b"history line\r\n").await.unwrap();
    a.expect("history line").await;
    let flood: Vec<u8> = std::iter::repeat_n(&b"&L"[..], 40)
        .flatten()
        .copied()
        .collect();
    a.send(b"\r").await;
    a.send(&flood).await;
    a.expect("CG-INPUT-004 too many escape commands at once")
        .await;
    a.send(b"\r&.").await;
    a.wait().await;
    let replays = a
        .transcript
        .windows(13)
        .filter(|w| w == b"end of replay")
        .count();
    assert!(
        (1..=10).contains(&replays),
        "{replays} replays ran for 40 asked at once"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_writer_releases_write_access_at_once() {
    let (gw, listener) = machine("input = \"exclusive\"").await;
    let mut console = accept(&listener).await;
    let (mut a, ..) = attach(&gw, "alice", None).await;
    let (mut b, ..) = attach(&gw, "bob", None).await;
    b.send(b"x\r").await;
    b.expect("CG-INPUT-001 you are read-only here").await;

    a.kill().await;
    // No holding period: as soon as the hub has seen the session go, the
    // remaining session is alone and its typing goes through.
    tokio::time::timeout(GUARD, async {
        loop {
            b.send(b"&W").await;
            b.expect("session(s) attached").await;
            if b.transcript
                .windows(22)
                .any(|w| w == b"[1 session(s) attached")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the killed writer's session stayed attached");
    b.send(b"mine-now\r").await;
    assert_eq!(read_exactly(&mut console, 9).await, b"mine-now\r");
    b.send(b"\r&.").await;
    b.wait().await;
    gw.stop().await;
}

/// `&B` is input like typing: a viewer that attached `ro`, and one that is
/// read-only because another session holds exclusive write access, are
/// refused and their breaks never reach the machine; the writer's still
/// does. The simulator answers a break followed by `h` with SysRq help, and
/// an `h` without a break as a shell command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_session_with_write_access_sends_a_break() {
    let gw = Gateway::start(&format!(
        "{}\ninput = \"exclusive\"\n",
        instance("vm1", "simulator", None).trim_end()
    ))
    .await;
    let (mut writer, writer_conn, _) = attach(&gw, "writer", None).await;
    let (mut viewer, viewer_conn, _) = attach(&gw, "viewer", Some("ro")).await;
    let (mut other, other_conn, _) = attach(&gw, "other", None).await;
    writer.send(b"\r").await;
    writer.expect("vm1 login: ").await;
    writer.send(b"root\r").await;
    writer.expect("root@vm1:~$ ").await;

    // Both read-only sessions are refused, each on its own screen.
    viewer.send(b"&B").await;
    viewer
        .expect("CG-INPUT-001 you are read-only here: the break was not sent")
        .await;
    other.send(b"&B").await;
    other
        .expect("CG-INPUT-001 you are read-only here: the break was not sent")
        .await;

    // Neither break reached the machine: the writer's next `h` is typed
    // into the shell, not taken as a SysRq key.
    writer.send(b"h\r").await;
    writer.expect("-sh: h: command not found").await;
    let shown = String::from_utf8_lossy(&writer.transcript).into_owned();
    assert!(
        !shown.contains("sysrq"),
        "a read-only session's break reached the machine:\n{shown}"
    );

    // The writer's break still works.
    writer.send(b"\r&B").await;
    writer.expect("break sent").await;
    writer.send(b"h").await;
    writer.expect("sysrq: HELP").await;
    viewer.expect("sysrq: HELP").await;

    for term in [&mut writer, &mut viewer, &mut other] {
        term.send(b"\r&.").await;
        term.wait().await;
    }
    // Only the break that was sent is audited.
    let breaks = |rows: &[serde_json::Value]| rows.iter().filter(|r| r["event"] == "break").count();
    assert_eq!(breaks(&gw.audit(&writer_conn.id).await), 1);
    assert_eq!(breaks(&gw.audit(&viewer_conn.id).await), 0);
    assert_eq!(breaks(&gw.audit(&other_conn.id).await), 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_options_select_what_is_shown_again() {
    let (gw, listener) = machine("").await;
    let mut console = accept(&listener).await;
    console
        .write_all(b"boot line 1\r\nboot line 2\r\nboot line 3\r\nvm1 login: ")
        .await
        .unwrap();
    // Wait until the hub has it all: a full replay ends with the prompt.
    let (mut first, ..) = attach(&gw, "first", Some("replay=all")).await;
    first.expect("vm1 login: ").await;

    for (options, shown, hidden) in [
        ("replay=all", "boot line 1", ""),
        (
            "replay-lines=2",
            "boot line 3\r\nvm1 login: ",
            "boot line 2",
        ),
        ("replay-bytes=11", "vm1 login: ", "boot line 3"),
        ("replay=none", "", "boot line"),
    ] {
        let (mut term, ..) = attach(&gw, &options.replace(['=', '-'], ""), Some(options)).await;
        // What comes between the banner and the help text is the replay.
        term.send(b"&?").await;
        term.expect("[consolegate escape commands").await;
        let replay = String::from_utf8_lossy(&term.transcript).into_owned();
        let replay = replay
            .split("&? for help]\r\n")
            .nth(1)
            .unwrap()
            .split("[consolegate escape commands")
            .next()
            .unwrap()
            .to_owned();
        assert!(replay.contains(shown), "{options}: {replay:?}");
        if !hidden.is_empty() {
            assert!(!replay.contains(hidden), "{options}: {replay:?}");
        }
        term.send(b"\r&.").await;
        term.wait().await;
    }

    // A bad option is refused with the syntax, not ignored.
    let key = Key::ed25519(gw.dir.path(), "typo");
    let conn = gw.create("vm1", &key).await;
    let mut term = Terminal::spawn(&conn.ssh_argv_as(&key, "replay-lines=lots")).await;
    term.expect("replay-lines=lots").await;
    term.expect("replay-lines=N").await;
    assert!(!term.wait().await.success());
    first.send(b"\r&.").await;
    gw.stop().await;
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_never_reads_does_not_slow_one_that_does() {
    const LINES: usize = 640 * 1024; // 80 bytes each: 50 MiB
    let (gw, listener) = machine("replay = \"none\"").await;
    let mut console = accept(&listener).await;

    // A viewer in a terminal nobody reads: ssh blocks, its window fills.
    let (mut stalled, ..) = attach(&gw, "stalled", None).await;

    // A viewer that reads everything, through a pipe.
    let key = Key::ed25519(gw.dir.path(), "reader");
    let conn = gw.create("vm1", &key).await;
    let argv = conn.ssh_argv(&key);
    let mut reader = tokio::process::Command::new("/usr/bin/ssh")
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(reader.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        tokio::time::timeout(GUARD, out.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        if line.contains("&? for help]") {
            break;
        }
    }
    let before = rss_kib();

    let flood = tokio::spawn(async move {
        let mut chunk = Vec::with_capacity(64 * 1024);
        for n in 0..LINES {
            chunk.extend_from_slice(format!("{n:08} {}\n", "x".repeat(71)).as_bytes());
            if chunk.len() >= 60 * 1024 {
                console.write_all(&chunk).await.unwrap();
                chunk.clear();
            }
        }
        console.write_all(&chunk).await.unwrap();
        console
    });
    let mut expected = 0usize;
    let mut peak = before;
    tokio::time::timeout(Duration::from_secs(300), async {
        while expected < LINES {
            line.clear();
            if out.read_line(&mut line).await.unwrap() == 0 {
                panic!("the reading viewer's stream ended at line {expected}");
            }
            assert!(
                !line.contains("skipped"),
                "the reading viewer lost output: {line}"
            );
            let n: usize = line[..8]
                .parse()
                .unwrap_or_else(|_| panic!("unexpected line {line:?}"));
            assert_eq!(n, expected, "gap or duplicate");
            expected += 1;
            if expected.is_multiple_of(65536) {
                peak = peak.max(rss_kib());
            }
        }
    })
    .await
    .expect("the reading viewer was held back");
    let mut console = flood.await.unwrap();
    peak = peak.max(rss_kib());
    // The stalled viewer, reading again, is told how much it missed (on the
    // console's next output).
    let mut told = false;
    for n in 0..100 {
        console
            .write_all(format!("after-the-flood {n}\n").as_bytes())
            .await
            .unwrap();
        if stalled
            .saw_within(
                "CG-LAG-001 your connection fell behind this console: ",
                Duration::from_millis(300),
            )
            .await
        {
            told = true;
            break;
        }
    }
    assert!(told, "the stalled viewer was never told it missed output");
    stalled.expect(" bytes of output were skipped]").await;
    // The non-reading viewer's backlog is bounded (its queue holds shared
    // buffers), so 50 MiB of output does not become 50 MiB of memory.
    assert!(
        peak < before + 32 * 1024,
        "gateway memory grew by {} KiB while a viewer stalled",
        peak - before
    );
    reader.kill().await.unwrap();
    gw.stop().await;
}

/// A recording's input events are what reached the console: a viewer
/// attached `ro` types, the hub refuses it (CG-INPUT-001), and none of it
/// is recorded as input, in its own recording or any other; the writer's
/// typing is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_viewers_refused_typing_is_not_recorded_as_input() {
    let dir = tempfile::tempdir().unwrap();
    let record_dir = dir.path().join("recordings");
    let gw = Gateway::start_in(
        dir,
        0,
        &format!(
            "{}record = \"output+input\"\nrecord_dir = \"{}\"\n",
            instance("vm1", "simulator", None).trim_end().to_owned() + "\n",
            record_dir.display()
        ),
    )
    .await;
    let (mut writer, _, _) = attach(&gw, "writer", None).await;
    let (mut viewer, _, _) = attach(&gw, "viewer", Some("ro")).await;
    writer.send(b"\r").await;
    writer.expect("vm1 login: ").await;
    writer.send(b"root\r").await;
    writer.expect("root@vm1:~$ ").await;
    viewer.send(b"viewer-secret-1\r").await;
    viewer
        .expect("CG-INPUT-001 you are read-only here: your typing is not sent")
        .await;
    viewer.send(b"viewer-secret-2\r").await;
    writer.send(b"uname -r\r").await;
    writer.expect("6.1.0-consolegate-demo").await;
    viewer.expect("6.1.0-consolegate-demo").await;
    for term in [&mut writer, &mut viewer] {
        term.send(b"\r&.").await;
        term.wait().await;
    }
    // Stopping waits for every session to finish its recording.
    let _dir = gw.stop().await;
    let mut inputs = Vec::new();
    let mut recordings = 0;
    for entry in std::fs::read_dir(record_dir.join("vm1")).unwrap() {
        recordings += 1;
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines().skip(1) {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            if event[1] == "i" {
                inputs.push(event[2].as_str().unwrap().to_owned());
            }
        }
    }
    assert_eq!(recordings, 2);
    let typed = inputs.concat();
    assert!(typed.contains("uname -r"), "the writer's input: {inputs:?}");
    assert!(
        !typed.contains("viewer-secret"),
        "a read-only viewer's refused typing was recorded as input: {inputs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_play_back_and_the_audit_trail_is_kept() {
    let asciinema = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/asciinema");
    if !asciinema.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "asciinema missing at {}",
            asciinema.display()
        );
        eprintln!(
            "SKIPPED: no asciinema at {}; run .ci/run",
            asciinema.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let record_dir = dir.path().join("recordings");
    let gw = Gateway::start(&format!(
        "{}record = \"output+input\"\nrecord_dir = \"{}\"\n",
        instance("vm1", "simulator", None).trim_end().to_owned() + "\n",
        record_dir.display()
    ))
    .await;
    let key = Key::ed25519(gw.dir.path(), "user");
    let conn = gw.create("vm1", &key).await;
    let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
    term.expect("vm1 login: ").await;
    term.send(b"root\r").await;
    term.expect("root@vm1:~$ ").await;
    term.send(b"uname -r\r").await;
    term.expect("6.1.0-consolegate-demo").await;
    term.send(b"\r&B").await;
    term.expect("break sent").await;
    term.send(b"h").await;
    term.expect("sysrq: HELP").await;
    term.send(b"\r&.").await;
    term.expect("bye]").await;
    term.wait().await;
    let received = String::from_utf8_lossy(&term.transcript).into_owned();

    // A wrong key against this connection is a refused attempt.
    let mallory = Key::ed25519(gw.dir.path(), "mallory");
    let out = ssh_batch(&argv_with_options(
        &conn.connection_string,
        &mallory,
        &mallory,
        &conn.known_hosts,
    ))
    .await;
    assert!(!out.status.success());

    let cast = std::fs::read_dir(record_dir.join("vm1"))
        .unwrap()
        .next()
        .expect("no recording")
        .unwrap()
        .path();
    let played = tokio::process::Command::new(&asciinema)
        .arg("cat")
        .arg(&cast)
        .output()
        .await
        .unwrap();
    assert!(
        played.status.success(),
        "{}",
        String::from_utf8_lossy(&played.stderr)
    );
    let played = String::from_utf8_lossy(&played.stdout).into_owned();
    assert!(played.contains("6.1.0-consolegate-demo") && played.contains("sysrq: HELP"));
    assert!(
        received.contains(&played),
        "the recording differs from what the client received:\nrecorded: {played:?}\nreceived: {received:?}"
    );
    let text = std::fs::read_to_string(&cast).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("\"i\"") && l.contains("uname -r")),
        "input not recorded"
    );

    let out = gw.cli(&["audit", "--connection", &conn.id]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for kind in ["attach", "break", "detach", "refused"] {
        assert!(kinds.contains(&kind), "no {kind} event in {kinds:?}");
    }
    let detach = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "detach")
        .unwrap();
    assert!(detach["bytesIn"].as_u64().unwrap() > 0);
    assert!(detach["bytesOut"].as_u64().unwrap() > 0);
    assert_eq!(detach["fingerprint"], key.ssh_keygen_fingerprint());
    let refused = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "refused")
        .unwrap();
    assert_eq!(refused["fingerprint"], mallory.ssh_keygen_fingerprint());
    gw.stop().await;
}
