//! One data plane: the web serial console runs through the same attach core
//! as an SSH session (the `&` escapes, recordings with input, the audit
//! trail), every session has one owner that writes its Detach row and
//! finishes its recording on every way out (the user leaving, an abrupt
//! disconnect, a shutdown), and web sockets count in `max_connections`.
//!
//! SSH sessions use the real `/usr/bin/ssh`; web sessions a real WebSocket
//! client (tokio-tungstenite) over real sockets.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use consolegate::connections::tokens::ConsoleProtocol;
use futures_util::SinkExt;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;

use common::web::{Socket, Web, read_binary, refused_upgrade};

/// Opens `path` (`/serial?token=…`) on the gateway's API port.
async fn web(gw: &Gateway, path: &str) -> Socket {
    common::web::connect(gw.api_port, path).await
}

/// Why `path` was not upgraded: the status and the runbook code header.
async fn web_refused(gw: &Gateway, path: &str) -> (u16, String) {
    refused_upgrade(gw.api_port, path).await
}

/// A web serial console of `instance`, with a fresh token.
async fn web_serial(gw: &Gateway, instance: &str) -> Web {
    let token = gw.console_token(instance, ConsoleProtocol::Serial).await;
    Web::new(web(gw, &format!("/serial?token={token}")).await)
}

/// The audit rows of `instance`, as `consolegate audit` prints them.
async fn audit_of(config: &Path, instance: &str) -> Vec<Value> {
    audit_rows(config, &["--instance", instance]).await
}

/// Polls the audit trail until `matches` holds for it (the rows of a
/// closing session are written as it ends).
async fn audit_until(
    config: &Path,
    instance: &str,
    what: &str,
    matches: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let found = tokio::time::timeout(GUARD, async {
        loop {
            let rows = audit_of(config, instance).await;
            if matches(&rows) {
                return rows;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    match found {
        Ok(rows) => rows,
        Err(_) => panic!(
            "{what}: not in the audit trail:\n{:#?}",
            audit_of(config, instance).await
        ),
    }
}

fn detail(row: &Value) -> &str {
    row["detail"].as_str().unwrap_or_default()
}

/// A web Detach row names the token, never a connection or key.
fn web_detach(rows: &[Value]) -> Option<&Value> {
    rows.iter()
        .find(|r| r["event"] == "detach" && detail(r).contains("(console token "))
}

fn ssh_detach<'a>(rows: &'a [Value], connection: &str) -> Option<&'a Value> {
    rows.iter()
        .find(|r| r["event"] == "detach" && r["connectionId"] == connection)
}

/// A gateway whose `vm1` is the simulator, recorded (output and input) under
/// the returned directory.
async fn recorded_gateway(ssh: &str) -> (Gateway, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let record_dir = dir.path().join("recordings");
    let gw = Gateway::start_with(
        dir,
        0,
        ssh,
        &format!(
            "{}record = \"output+input\"\nrecord_dir = \"{}\"\n",
            instance("vm1", "simulator", None).trim_end().to_owned() + "\n",
            record_dir.display()
        ),
    )
    .await;
    (gw, record_dir.join("vm1"))
}

/// The recordings in `dir` whose title names `via`, once each is finished
/// (its last line is the goodbye notice).
async fn finished_recording(dir: &Path, via: &str) -> String {
    let found = tokio::time::timeout(GUARD, async {
        loop {
            for entry in std::fs::read_dir(dir).into_iter().flatten() {
                let text = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
                let last = text.lines().last().unwrap_or_default();
                if text.lines().next().is_some_and(|h| h.contains(via)) && last.contains("bye]") {
                    return text;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no finished recording titled {via:?} in {}", dir.display()))
}

/// The text of a recording's events of kind `kind` (`o` or `i`).
fn events(cast: &str, kind: &str) -> String {
    cast.lines()
        .skip(1)
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e[1] == kind)
        .map(|e| e[2].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_serial_console_speaks_the_same_escapes_as_ssh() {
    let gw = Gateway::start(&instance("vm1", "simulator", None)).await;
    let mut socket = web_serial(&gw, "vm1").await;
    // The same banner as over SSH, which promises the escapes.
    socket.expect("[consolegate: serial console of vm1; you are read-write (input shared by all sessions)]",
    )
    .await;
    socket.expect("login: ").await;
    socket.send("\r&?").await;
    socket.expect("consolegate escape commands").await;
    // A break reaches the machine (SysRq armed), and is audited.
    socket.send("\r&B").await;
    socket.expect("break sent").await;
    socket.send("h").await;
    socket.expect("sysrq: HELP").await;
    // `&W` lists this session by its token, and `&&` types a literal `&`.
    socket.send("\r&W").await;
    socket.expect("session(s) attached:").await;
    socket.expect("console token ").await;
    socket.send("root\r").await;
    socket.expect("root@vm1:~$ ").await;
    socket.send("&&echo amp\r").await;
    socket.expect("&echo: command not found").await;
    // `&.` ends the session, with a goodbye and a close frame.
    socket.send("\r&.").await;
    socket.expect("disconnected by escape command; bye]").await;
    assert!(socket.closed_by_server().await);

    let rows = audit_until(&gw.config_path, "vm1", "web detach", |r| {
        web_detach(r).is_some()
    })
    .await;
    let kinds: Vec<&str> = rows.iter().map(|r| r["event"].as_str().unwrap()).collect();
    for kind in ["attach", "break", "detach"] {
        assert!(kinds.contains(&kind), "{kind} missing: {rows:#?}");
    }
    let detach = web_detach(&rows).unwrap();
    assert!(
        detail(detach).starts_with("disconnected by escape command (console token "),
        "{detach}"
    );
    assert_eq!(detach["connectionId"], Value::Null);
    assert!(detach["bytesIn"].as_u64().unwrap() > 0, "{detach}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_session_is_recorded_with_its_input() {
    let (gw, recordings) = recorded_gateway("").await;
    let mut socket = web_serial(&gw, "vm1").await;
    socket.expect("login: ").await;
    socket.send("root\r").await;
    socket.expect("root@vm1:~$ ").await;
    socket.send("echo typed-on-the-web\r").await;
    socket.expect("\r\ntyped-on-the-web\r\n").await;
    socket.socket.close(None).await.unwrap();

    let cast = finished_recording(&recordings, "via console token").await;
    let input = events(&cast, "i");
    assert!(input.contains("echo typed-on-the-web\r"), "{input:?}");
    let output = events(&cast, "o");
    assert!(
        output.contains("[consolegate: serial console of vm1"),
        "{output:?}"
    );
    assert!(output.contains("\r\ntyped-on-the-web\r\n"), "{output:?}");
    assert!(
        output.ends_with("[consolegate: client closed the session; bye]\r\n"),
        "{output:?}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abrupt_disconnect_still_writes_detach_and_finishes_the_recording() {
    let (gw, recordings) = recorded_gateway("").await;
    let key = Key::ed25519(gw.dir.path(), "user");
    let conn = gw.create("vm1", &key).await;

    // SSH: the client is killed (a crash, a closed laptop): no goodbye.
    let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
    term.expect("vm1 login: ").await;
    term.send(b"echo-from-ssh\r").await;
    term.expect("echo-from-ssh").await;
    term.kill().await;

    // Web: the TCP connection drops without a close frame.
    let url = format!("ws://127.0.0.1:{}/serial?token=", gw.api_port);
    let token = gw.console_token("vm1", ConsoleProtocol::Serial).await;
    let tcp = TcpStream::connect(("127.0.0.1", gw.api_port))
        .await
        .unwrap();
    let tcp = MaybeTlsStream::Plain(tcp);
    let (socket, _) = tokio_tungstenite::client_async(format!("{url}{token}"), tcp)
        .await
        .unwrap();
    let mut socket = Web::new(socket);
    socket.expect("login: ").await;
    socket.send("echo-from-web\r").await;
    socket.expect("echo-from-web").await;
    drop(socket);

    let rows = audit_until(&gw.config_path, "vm1", "both detach rows", |r| {
        ssh_detach(r, &conn.id).is_some() && web_detach(r).is_some()
    })
    .await;
    assert_eq!(
        detail(ssh_detach(&rows, &conn.id).unwrap()),
        "client closed the session"
    );
    assert!(detail(web_detach(&rows).unwrap()).starts_with("client closed the session"));
    for via in [conn.id.as_str(), "console token"] {
        let cast = finished_recording(&recordings, via).await;
        assert!(
            events(&cast, "o").ends_with("[consolegate: client closed the session; bye]\r\n"),
            "{cast}"
        );
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_tells_every_session_and_writes_its_detach_row() {
    let (gw, recordings) = recorded_gateway("").await;
    let key = Key::ed25519(gw.dir.path(), "user");
    let conn = gw.create("vm1", &key).await;
    let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
    term.expect("vm1 login: ").await;
    let mut socket = web_serial(&gw, "vm1").await;
    socket.expect("login: ").await;

    let config = gw.config_path.clone();
    let stopping = tokio::spawn(gw.stop());
    let bye = "CG-OPS-001 the gateway is shutting down; bye]";
    term.expect(bye).await;
    socket.expect(bye).await;
    assert!(socket.closed_by_server().await);
    term.wait().await;
    let _dir = stopping.await.unwrap();

    // The gateway is stopped: every row was written before its store closed.
    let rows = audit_of(&config, "vm1").await;
    let ssh = ssh_detach(&rows, &conn.id).expect("no SSH detach row");
    assert_eq!(detail(ssh), "CG-OPS-001 the gateway is shutting down");
    let web = web_detach(&rows).expect("no web detach row");
    assert!(detail(web).starts_with("CG-OPS-001 the gateway is shutting down (console token "));
    for via in [conn.id.as_str(), "console token"] {
        let cast = finished_recording(&recordings, via).await;
        assert!(events(&cast, "o").ends_with(&format!("[consolegate: {bye}\r\n")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_sockets_count_in_the_connection_limit() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(
        dir,
        0,
        "max_connections = 1\n",
        &instance("vm1", "simulator", Some("tcp:127.0.0.1:1")),
    )
    .await;
    let key = Key::ed25519(gw.dir.path(), "user");
    let conn = gw.create("vm1", &key).await;

    // An SSH session holds the only place: web sockets are refused, with a
    // code, and a single-use token is not spent on the refusal.
    let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
    term.expect("vm1 login: ").await;
    let token = gw.console_token("vm1", ConsoleProtocol::Serial).await;
    let serial = format!("/serial?token={token}");
    assert_eq!(web_refused(&gw, &serial).await, (503, "CG-WEB-006".into()));
    let vnc = gw.console_token("vm1", ConsoleProtocol::Vnc).await;
    assert_eq!(
        web_refused(&gw, &format!("/websockify?token={vnc}")).await,
        (503, "CG-WEB-006".into())
    );
    term.send(b"\r&.").await;
    term.expect("bye]").await;
    term.wait().await;

    // The place is free again once the SSH session has ended; the token
    // still works.
    let mut socket = tokio::time::timeout(GUARD, async {
        loop {
            let url = format!("ws://127.0.0.1:{}{serial}", gw.api_port);
            if let Ok((socket, _)) = tokio_tungstenite::connect_async(&url).await {
                return Web::new(socket);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the web socket never got the freed place");
    socket.expect("login: ").await;

    // The web socket holds the place: another is refused, and so is an
    // SSH client once it has authenticated, with a code (it does not wait
    // holding a place of the unauthenticated).
    let another = gw.console_token("vm1", ConsoleProtocol::Serial).await;
    assert_eq!(
        web_refused(&gw, &format!("/serial?token={another}")).await,
        (503, "CG-WEB-006".into())
    );
    let full = ssh_batch(&conn.ssh_argv(&key)).await;
    let err = String::from_utf8_lossy(&full.stderr);
    assert!(err.contains("CG-SSH-005"), "{err}");
    socket.send("\r&.").await;
    socket.expect("bye]").await;
    // Once the web session has ended, the SSH client gets in.
    let mut later = tokio::time::timeout(GUARD, async {
        loop {
            let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
            if term
                .saw_within("vm1 login: ", std::time::Duration::from_secs(5))
                .await
            {
                return term;
            }
            term.kill().await;
        }
    })
    .await
    .expect("the SSH client never got the freed place");
    later.send(b"\r&.").await;
    later.wait().await;
    gw.stop().await;
}

/// A stand-in VNC display: greets like RFB, then echoes what it receives.
async fn echoing_display() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("tcp:127.0.0.1:{}", listener.local_addr().unwrap().port());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                socket.write_all(b"RFB 003.008\n").await.unwrap();
                let mut buf = [0u8; 4096];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (target, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockify_runs_through_the_one_vnc_copy_and_is_ended_at_shutdown() {
    let (target, display) = echoing_display().await;
    let gw = Gateway::start(&instance("vm1", "simulator", Some(&target))).await;
    let config = gw.config_path.clone();
    let token = gw.console_token("vm1", ConsoleProtocol::Vnc).await;
    let mut first = web(&gw, &format!("/websockify?token={token}")).await;
    assert_eq!(read_binary(&mut first, 12).await, b"RFB 003.008\n");
    first
        .send(Message::Binary(b"0123456789".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(read_binary(&mut first, 10).await, b"0123456789");
    first.close(None).await.unwrap();
    let rows = audit_until(&config, "vm1", "a vnc-close row", |r| {
        r.iter().any(|r| r["event"] == "vnc-close")
    })
    .await;
    let open = rows.iter().find(|r| r["event"] == "vnc-open").unwrap();
    assert!(
        detail(open).starts_with("websockify (console token "),
        "{open}"
    );
    let closed = rows.iter().find(|r| r["event"] == "vnc-close").unwrap();
    assert_eq!(closed["bytesIn"], 10, "{closed}");
    assert_eq!(closed["bytesOut"], 22, "{closed}");
    assert_eq!(closed["connectionId"], Value::Null);

    // A proxy still open at shutdown is ended, and its close audited.
    let token = gw.console_token("vm1", ConsoleProtocol::Vnc).await;
    let mut second = web(&gw, &format!("/websockify?token={token}")).await;
    read_binary(&mut second, 12).await;
    let _dir = gw.stop().await;
    let rows = audit_of(&config, "vm1").await;
    let cut = rows
        .iter()
        .find(|r| r["event"] == "vnc-close" && detail(r).contains("CG-OPS-001"))
        .unwrap_or_else(|| panic!("no vnc-close at shutdown: {rows:#?}"));
    assert!(
        detail(cut).starts_with("websockify: CG-OPS-001 the gateway is shutting down"),
        "{cut}"
    );
    display.abort();
}
