//! What the gateway does when its disk or its console line misbehaves
//! under it, each produced for real against a `consolegate serve` process
//! with the real `ssh` attached (docs/durability.md, "When the store, the
//! disk or the line misbehaves"):
//!
//! - the SQLite file locked by another process (system python3's sqlite3
//!   holding `BEGIN EXCLUSIVE`) for longer than SQLite's busy timeout:
//!   sessions go on (in WAL mode their re-checks read past the lock),
//!   API writes fail with a coded error instead of hanging, the log says
//!   CG-STORE-002, and after the release everything answered is there;
//! - a full disk under the data directory, the recordings and the console
//!   log (a small tmpfs, filled by a file): the session goes on, the log
//!   names CG-REC-002, CG-LOG-002 and CG-STORE-002, creates fail with a
//!   coded error, the database stays whole; after the filler goes, writes
//!   succeed again and nothing stored before is lost;
//! - a line that takes input at 9600 baud (a pty the test drains at ~960
//!   bytes a second): a 64 KiB paste arrives whole and in order, while
//!   another viewer keeps seeing the console's output within seconds.
//!
//! Bounds are generous (seconds); none of these measures speed.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use axum::http::Method;
use common::served::{Served, ServedConfig};
use common::signer::{Answer, Signer, create_body, exchange};
use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

const CONNECTIONS: &str = "/20160918/instanceConsoleConnections";
const CODE_HEADER: &str = consolegate::codes::CODE_HEADER;

/// The gateway's API as one signing user sees it.
struct Api {
    signer: Signer,
    port: u16,
}

/// Writes `request` to the API on `port`: the answer, in full within
/// [`GUARD`] (a request that hangs fails the test).
async fn send(port: u16, request: Vec<u8>) -> Answer {
    exchange(port, &request).await.expect("no whole answer")
}

impl Api {
    /// A signed request for this API.
    fn request(&self, method: Method, target: &str, body: &[u8]) -> Vec<u8> {
        let host = format!("127.0.0.1:{}", self.port);
        self.signer.request(method, target, &host, body)
    }

    /// A signed request, answered.
    async fn ask(&self, method: Method, target: &str, body: &[u8]) -> Answer {
        send(self.port, self.request(method, target, body)).await
    }

    /// Creates a connection to `instance` for `public_key` (a new key if
    /// `None`): the answer.
    async fn create(&self, instance: &str, public_key: Option<&str>) -> Answer {
        let body = match public_key {
            Some(k) => {
                serde_json::to_vec(&json!({"instanceId": instance, "publicKey": k})).unwrap()
            }
            None => create_body(instance),
        };
        self.ask(Method::POST, CONNECTIONS, &body).await
    }

    /// Every connection of compartment `test`, by id.
    async fn list(&self) -> BTreeMap<String, Value> {
        let answer = self
            .ask(
                Method::GET,
                &format!("{CONNECTIONS}?compartmentId=test&limit=1000"),
                b"",
            )
            .await;
        assert_eq!(answer.status, 200, "{answer:?}");
        answer
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["id"].as_str().unwrap().to_owned(), c.clone()))
            .collect()
    }
}

/// Answered creates, kept to be checked against the store later.
#[derive(Default)]
struct Answered(BTreeMap<String, Value>);

impl Answered {
    fn keep(&mut self, answer: &Answer) -> Value {
        assert_eq!(answer.status, 200, "create: {answer:?}");
        let view = answer.json();
        self.0
            .insert(view["id"].as_str().unwrap().to_owned(), view.clone());
        view
    }

    /// Every answered create is listed with the body it was answered
    /// with, and nothing else is there (a failed create left no row).
    async fn all_there(&self, api: &Api) {
        let listed = api.list().await;
        for (id, view) in &self.0 {
            assert_eq!(
                listed.get(id),
                Some(view),
                "answered create {id} changed or is gone"
            );
        }
        let extra: Vec<&String> = listed
            .keys()
            .filter(|id| !self.0.contains_key(*id))
            .collect();
        assert!(
            extra.is_empty(),
            "connections nobody was answered: {extra:?}"
        );
    }
}

/// A failed write's answer: an error naming CG-STORE-002, not a hang.
fn store_failed(answer: &Answer) {
    assert_eq!(answer.status, 500, "{answer:?}");
    assert_eq!(
        answer.header(CODE_HEADER),
        Some("CG-STORE-002"),
        "{answer:?}"
    );
    let body = answer.json();
    assert_eq!(body["code"], "InternalError", "{answer:?}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("CG-STORE-002 "),
        "{answer:?}"
    );
}

/// A gateway serving `instance_toml` (one instance, compartment `test`)
/// in `dir`, with an API user.
async fn serve_in(dir: tempfile::TempDir, instance_toml: &str) -> (Served, Api) {
    let signer = Signer::new();
    let gw = Served::start_in(
        dir,
        ServedConfig {
            ssh: "exempt_sources = [\"127.0.0.1\"]\n".into(),
            rest: format!("{instance_toml}{}", signer.toml()),
            ..Default::default()
        },
    )
    .await;
    let api = Api {
        signer,
        port: gw.api_port,
    };
    (gw, api)
}

/// A key and its connection to `vm1`, created through the API.
async fn user(gw: &Served, api: &Api, answered: &mut Answered, name: &str) -> (Key, Connection) {
    let key = Key::ed25519(gw.dir.path(), name);
    let public = std::fs::read_to_string(&key.public).unwrap();
    let view = answered.keep(&api.create("vm1", Some(public.trim())).await);
    (key, Connection::from_json(view, gw.dir.path()))
}

/// The real ssh on the console through the outer hop, logged in as root.
async fn attach(gw: &Served, key: &Key, conn: &Connection) -> Terminal {
    let mut argv = vec!["ssh".to_owned()];
    argv.extend(client_options(key, &conn.known_hosts));
    argv.extend([
        "-p".to_owned(),
        gw.port.to_string(),
        format!("{}@127.0.0.1", conn.id),
    ]);
    let mut term = Terminal::spawn(&argv).await;
    term.expect("serial console of vm1").await;
    term.expect("&? for help]").await;
    term.send(b"root\r").await;
    term.expect("root@vm1").await;
    term
}

/// Types `echo <word>` and expects the echo back within `limit`.
async fn echoes(term: &mut Terminal, word: &str, limit: Duration) -> bool {
    term.send(format!("echo {word}\r").as_bytes()).await;
    term.saw_within(&format!("\r\n{word}\r\n"), limit).await
}

/// Waits (within [`GUARD`]) for the gateway's log to contain every one of
/// `needles`; its text.
async fn log_shows(gw: &Served, needles: &[&str]) -> String {
    let deadline = Instant::now() + GUARD;
    loop {
        let text = gw.log_text();
        if needles.iter().all(|n| text.contains(n)) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "the log never showed all of {needles:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The lines of `log` that contain `needle`.
fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

/// `PRAGMA integrity_check` of the SQLite file, opened read-only beside
/// the running gateway.
async fn integrity(db: &Path) -> String {
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .read_only(true)
        .connect()
        .await
        .unwrap();
    sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// Another process holding `BEGIN EXCLUSIVE` on a SQLite file (system
/// python3's sqlite3, as an `sqlite3` shell left open or a backup tool
/// would) until [`Locker::release`].
struct Locker {
    child: tokio::process::Child,
    out: tokio::io::BufReader<tokio::process::ChildStdout>,
}

impl Locker {
    /// Takes the lock; `None` (the test skips) without python3, except
    /// under CI.
    async fn take(db: &Path) -> Option<Locker> {
        let script = "import sqlite3, sys\n\
            db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=20)\n\
            db.execute('BEGIN EXCLUSIVE')\n\
            print('locked', flush=True)\n\
            sys.stdin.readline()\n\
            db.execute('ROLLBACK')\n\
            print('released', flush=True)\n";
        let spawned = tokio::process::Command::new("python3")
            .args(["-c", script])
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                assert!(std::env::var_os("CI").is_none(), "python3: {e}");
                eprintln!("SKIPPED: cannot run python3 ({e})");
                return None;
            }
        };
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        tokio::time::timeout(GUARD, out.read_line(&mut line))
            .await
            .expect("python3 never took the lock")
            .unwrap();
        assert_eq!(line, "locked\n");
        Some(Locker { child, out })
    }

    /// Rolls back and ends the other process.
    async fn release(mut self) {
        let mut stdin = self.child.stdin.take().unwrap();
        stdin.write_all(b"\n").await.unwrap();
        let mut line = String::new();
        tokio::time::timeout(GUARD, self.out.read_line(&mut line))
            .await
            .expect("python3 never released the lock")
            .unwrap();
        assert_eq!(line, "released\n");
        let status = self.child.wait().await.unwrap();
        assert!(status.success());
    }
}

/// How long the lock is held: past SQLite's busy timeout (10 s, so writes
/// fail rather than wait), well short of `[cluster] store_lost_secs` (30).
const LOCK_HELD: Duration = Duration::from_secs(13);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_process_fails_writes_with_a_code_and_cuts_no_session() {
    let (gw, api) = serve_in(
        tempfile::tempdir().unwrap(),
        &instance("vm1", "simulator", None),
    )
    .await;
    let mut answered = Answered::default();
    for _ in 0..3 {
        answered.keep(&api.create("vm1", None).await);
    }
    let (key, conn) = user(&gw, &api, &mut answered, "alice").await;
    let mut term = attach(&gw, &key, &conn).await;
    assert!(echoes(&mut term, "before", GUARD).await);

    let db = gw.dir.path().join("data/consolegate.db");
    let Some(locker) = Locker::take(&db).await else {
        return;
    };
    let locked_at = Instant::now();
    // A create waits out SQLite's busy timeout, then fails with its code.
    let request = api.request(Method::POST, CONNECTIONS, &create_body("vm1"));
    let failed = tokio::spawn(send(api.port, request));
    // Reads go on: WAL readers do not wait for a writer.
    let read = api
        .ask(Method::GET, &format!("{CONNECTIONS}/{}", conn.id), b"")
        .await;
    assert_eq!(read.status, 200, "{read:?}");
    // The session types and sees its echo all along, re-checked every
    // second meanwhile.
    let mut n = 0;
    while locked_at.elapsed() < LOCK_HELD {
        n += 1;
        assert!(
            echoes(&mut term, &format!("locked{n}"), Duration::from_secs(5)).await,
            "no echo {:?} into the lock; log:\n{}",
            locked_at.elapsed(),
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // It was answered while the lock was still held.
    assert!(failed.is_finished(), "the create is still waiting");
    store_failed(&failed.await.unwrap());
    assert!(term.running(), "the session was cut");
    locker.release().await;

    // Everything works again, and nothing answered is lost.
    answered.keep(&api.create("vm1", None).await);
    answered.all_there(&api).await;
    assert!(echoes(&mut term, "after", GUARD).await);
    assert_eq!(readyz(gw.api_port).await.0, 200);
    assert_eq!(integrity(&db).await, "ok");
    let log = log_shows(&gw, &["CG-STORE-002", "database is locked"]).await;
    // The re-checks never failed: no session was at risk of CG-STORE-003.
    assert!(
        lines_with(&log, "could not re-check").is_empty() && !log.contains("CG-STORE-003"),
        "{log}"
    );
    eprintln!(
        "under the lock: {n} echoes, {} CG-STORE-002 lines logged",
        lines_with(&log, "CG-STORE-002").len()
    );
    term.send(b"&.").await;
    term.wait().await;
    gw.stop().await;
}

/// Unmounts (lazily, should something still hold a file) when dropped.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Mounts a `size` tmpfs (owner-only) on `at`; `None` (the test skips,
/// saying why) when that is impossible outside CI.
fn small_disk(at: &Path, size: &str) -> Option<Unmount> {
    std::fs::create_dir_all(at).unwrap();
    let out = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
        ])
        .arg(at)
        .output();
    match out {
        Ok(o) if o.status.success() => Some(Unmount(at.to_owned())),
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                Err(e) => e.to_string(),
            };
            assert!(
                std::env::var_os("CI").is_none(),
                "cannot mount a tmpfs for the full-disk test: {why}"
            );
            let uid = std::process::Command::new("id")
                .arg("-u")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default();
            assert!(uid != "0", "root cannot mount a tmpfs: {why}");
            eprintln!("SKIPPED: mounting a tmpfs needs root (uid {uid}): {why}");
            None
        }
    }
}

/// Fills the file system of `path` with `path`: its size once full.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a; 64 * 1024];
    let mut size = 0;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => size += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    size
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_keeps_the_console_fails_writes_with_codes_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(unmount) = small_disk(&data, "8m") else {
        return;
    };
    let records = data.join("recordings");
    let instance = format!(
        "{}record = \"output+input\"\nrecord_dir = \"{}\"\nlog_file = \"{}\"\n\n",
        instance("vm1", "simulator", None),
        records.display(),
        data.join("vm1.log").display()
    );
    let (gw, api) = serve_in(dir, &instance).await;
    let mut answered = Answered::default();
    for _ in 0..3 {
        answered.keep(&api.create("vm1", None).await);
    }
    let (key, conn) = user(&gw, &api, &mut answered, "alice").await;
    let mut term = attach(&gw, &key, &conn).await;
    assert!(echoes(&mut term, "before", GUARD).await);

    let filler = data.join("filler");
    let filled = fill(&filler);
    eprintln!("filler: {filled} bytes");

    // Typing and output go on while the recording and the console log fail
    // (a recording is buffered: it fails once its 8 KiB buffer is written).
    let mut n = 0;
    let deadline = Instant::now() + GUARD;
    while !gw.log_text().contains("CG-REC-002") || !gw.log_text().contains("CG-LOG-002") {
        n += 1;
        assert!(
            Instant::now() < deadline,
            "no CG-REC-002 and CG-LOG-002 after {n} lines; log:\n{}",
            gw.log_text()
        );
        let word = format!("full{n}-{}", "x".repeat(200));
        assert!(echoes(&mut term, &word, Duration::from_secs(5)).await);
        term.send(b"dmesg\r").await;
        term.expect("root@vm1").await;
    }
    // Creates fail with their code, and do not hang.
    store_failed(&api.create("vm1", None).await);
    // A session attaching now works too (its Attach row cannot be stored,
    // nor its recording started).
    let mut second = attach(&gw, &key, &conn).await;
    assert!(echoes(&mut second, "second", GUARD).await);
    assert!(echoes(&mut term, "still", GUARD).await);
    assert!(term.running(), "the session was cut");

    // Space again: writes succeed, and nothing stored before is lost.
    std::fs::remove_file(&filler).unwrap();
    answered.keep(&api.create("vm1", None).await);
    answered.all_there(&api).await;
    let db = data.join("consolegate.db");
    assert_eq!(integrity(&db).await, "ok");
    // A new session is audited and recorded again.
    let (third_key, third_conn) = user(&gw, &api, &mut answered, "carol").await;
    let mut third = attach(&gw, &third_key, &third_conn).await;
    assert!(echoes(&mut third, "recorded-again", GUARD).await);
    third.send(b"&.").await;
    third.wait().await;
    let recorded = tokio::time::timeout(GUARD, async {
        loop {
            let found = std::fs::read_dir(records.join("vm1"))
                .unwrap()
                .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .any(|text| text.contains("recorded-again"));
            if found {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        recorded.is_ok(),
        "the session after the filler was not recorded"
    );
    let rows = audit_rows(&gw.config_path, &["--connection", &third_conn.id]).await;
    assert!(
        rows.iter().any(|r| r["event"] == "attach"),
        "no Attach row after the filler went: {rows:#?}"
    );
    assert!(echoes(&mut term, "after", GUARD).await);
    let log = log_shows(&gw, &["CG-REC-002", "CG-LOG-002", "CG-STORE-002"]).await;
    assert!(!log.contains("CG-STORE-003"), "{log}");
    let counts: Vec<(&str, usize)> = ["CG-REC-002", "CG-LOG-002", "CG-STORE-002"]
        .into_iter()
        .map(|c| (c, lines_with(&log, c).len()))
        .collect();
    eprintln!("{n} lines typed on the full disk; log lines by code: {counts:?}");
    for mut t in [term, second] {
        t.send(b"&.").await;
        t.wait().await;
    }
    let dir = gw.stop().await;
    drop(unmount);
    drop(dir);
}

/// Bytes a 9600-baud line (8N1) carries a second.
const BAUD_9600_BYTES_PER_SEC: usize = 960;

/// `size` bytes of numbered lines a user might paste: nothing an escape
/// (`&` or ssh's `~`) could start.
fn paste(size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 64);
    let mut n = 0;
    while out.len() < size {
        n += 1;
        out.extend_from_slice(
            format!("paste {n:05} abcdefghijklmnopqrstuvwxyz 0123456789\r").as_bytes(),
        );
    }
    out.truncate(size - 1);
    // Ends a line: the writer's `&.` leaves afterwards.
    out.push(b'\r');
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paste_into_a_9600_baud_line_arrives_in_order_while_another_viewer_keeps_up() {
    // The machine's end of a pty (the gateway opens the other end); the
    // test reads it as a 9600-baud UART would take input.
    let (master, slave) = tokio_serial::SerialStream::pair().expect("pty pair");
    let path = tokio_serial::SerialPort::name(&slave).expect("pty name");
    let gw = Served::start(ServedConfig {
        ssh: "exempt_sources = [\"127.0.0.1\"]\n".into(),
        rest: instance("vm1", &format!("pty:{path}"), None),
        ..Default::default()
    })
    .await;
    let key = Key::ed25519(gw.dir.path(), "alice");
    let conn = create_connection(&gw.config_path, "vm1", &key, gw.dir.path()).await;
    let mut writer = Terminal::spawn(&conn.ssh_argv(&key)).await;
    writer.expect("&? for help]").await;
    let mut viewer = Terminal::spawn(&conn.ssh_argv_as(&key, "ro")).await;
    viewer.expect("&? for help]").await;
    let (mut line_in, mut line_out) = tokio::io::split(master);

    let pasted = paste(64 * 1024);
    let expected = pasted.len();
    // The line: 96 bytes every 100 ms.
    let uart = tokio::spawn(async move {
        let mut got = Vec::with_capacity(expected);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while got.len() < expected {
            tick.tick().await;
            let mut buf = [0u8; BAUD_9600_BYTES_PER_SEC / 10];
            let n = line_in.read(&mut buf).await.unwrap();
            assert!(n > 0, "the gateway closed the line");
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    let started = Instant::now();
    let typing = {
        let pasted = pasted.clone();
        tokio::spawn(async move {
            writer.send(&pasted).await;
            writer
        })
    };

    // Meanwhile the machine prints, and the other viewer sees each line
    // within seconds, however far behind the paste is.
    let bound = Duration::from_secs((expected / BAUD_9600_BYTES_PER_SEC) as u64 * 2 + 30);
    let mut printed = 0;
    while !uart.is_finished() {
        assert!(
            started.elapsed() < bound,
            "the paste did not get through in {bound:?}"
        );
        printed += 1;
        let line = format!("machine says {printed:04}");
        line_out
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        assert!(
            viewer.saw_within(&line, Duration::from_secs(5)).await,
            "the viewer did not see {line:?} within 5 s, {:?} into the paste",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let got = uart.await.unwrap();
    let took = started.elapsed();
    assert!(
        got == pasted,
        "the paste arrived altered: {} bytes of {}, first difference at {:?}",
        got.len(),
        pasted.len(),
        got.iter().zip(&pasted).position(|(a, b)| a != b)
    );
    // It took the line's time: the viewer kept up throughout, not after.
    assert!(
        took >= Duration::from_secs((expected / BAUD_9600_BYTES_PER_SEC / 2) as u64),
        "the line drained faster than 9600 baud: {took:?}"
    );
    assert!(
        printed >= 20,
        "only {printed} lines printed during the paste"
    );
    let mut writer = tokio::time::timeout(GUARD, typing)
        .await
        .expect("the paste never left the writer's terminal")
        .unwrap();
    eprintln!(
        "{expected} bytes pasted through a 9600-baud line in {took:?}; the viewer saw all {printed} lines printed meanwhile"
    );
    for term in [&mut writer, &mut viewer] {
        term.send(b"&.").await;
        term.expect("disconnected by escape command").await;
        term.wait().await;
    }
    drop(slave);
    gw.stop().await;
}
