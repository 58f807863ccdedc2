//! Attacks on a real gateway's web consoles (`/serial`, `/websockify`)
//! while a real user works, and the token rules a hardened bastion keeps:
//! a 16 MiB WebSocket frame, a socket that never answers a ping, a token
//! revoked or expired while its socket is open, a single-use token used
//! twice, and more sockets than `max_connections`. The gateway runs in a
//! process of its own, so that what an attack costs it (resident memory,
//! descriptors) is measured; attackers come from 127.0.0.2, the user from
//! 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::served::{Served, ServedConfig};
use common::web::{Socket, Web, read_binary, refused_upgrade};
use common::*;
use consolegate::connections::tokens::{ConsoleProtocol, token_hash};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// The X-Auth-Token of the Nova API's member of project `test`.
const NOVA: &str = "nova-member-token-for-hostile-web";

/// A gateway whose `vm1` is the simulator (with `vnc` as its display, if
/// given), a Nova member token for project `test`, and `ssh` and `nova`
/// settings added.
async fn gateway(ssh: &str, nova: &str, vnc: Option<&str>) -> Served {
    Served::start(ServedConfig {
        ssh: ssh.into(),
        nova: nova.into(),
        rest: format!(
            "{}[[nova_token]]\ntoken_sha256 = \"{}\"\nproject = \"test\"\nrole = \"member\"\n",
            instance("vm1", "simulator", vnc),
            token_hash(NOVA)
        ),
        ..ServedConfig::default()
    })
    .await
}

/// A fresh console token for `vm1`, as the Nova API issues them.
async fn token(gw: &Served, protocol: ConsoleProtocol) -> String {
    console_token(&gw.config_path, "vm1", protocol).await
}

/// A WebSocket to `path` on the gateway's API port, from `source`.
async fn socket_from(gw: &Served, source: &str, path: &str) -> Socket {
    let tcp = TcpSocket::new_v4().unwrap();
    tcp.bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    let tcp = tcp
        .connect(SocketAddr::from(([127, 0, 0, 1], gw.api_port)))
        .await
        .unwrap();
    let url = format!("ws://127.0.0.1:{}{path}", gw.api_port);
    let (socket, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    socket
}

/// A web serial console of `vm1` from `source`, its banner read.
async fn serial_from(gw: &Served, source: &str, token: &str) -> Web {
    let mut web = Web::new(socket_from(gw, source, &format!("/serial?token={token}")).await);
    web.expect("serial console of vm1").await;
    web
}

/// A serial session (and a VNC one, if `vnc`) opened and closed, then the
/// gateway's vitals: the baseline an attack is measured against (what
/// the first sessions allocate, and a pool's connections, come once).
async fn warmed_baseline(gw: &Served, vnc: bool) -> common::served::Vitals {
    let mut warm = serial_from(gw, "127.0.0.1", &token(gw, ConsoleProtocol::Serial).await).await;
    if vnc {
        let mut display = vnc_from(gw, "127.0.0.1", &token(gw, ConsoleProtocol::Vnc).await).await;
        vnc_echoes(&mut display, "warm").await;
        display.close(None).await.unwrap();
        until_closed(&mut display).await;
    }
    warm.send("\r&.").await;
    assert!(warm.closed_by_server().await);
    gw.baseline().await
}

/// Why a WebSocket to `path` was not opened: the status and the runbook
/// code header.
async fn refused(gw: &Served, path: &str) -> (u16, String) {
    refused_upgrade(gw.api_port, path).await
}

/// Revokes `vm1`'s console tokens of one kind through the Nova API, as an
/// operator would: `DELETE /servers/vm1/consoles/{1: serial, 2: novnc}`.
async fn revoke(gw: &Served, console: u32) {
    let (status, body) = http_request(
        gw.api_port,
        "DELETE",
        &format!("/v2.1/servers/vm1/consoles/{console}"),
        &format!("X-Auth-Token: {NOVA}\r\n"),
    )
    .await;
    assert_eq!(status, 202, "{body}");
}

/// A WebSocket to `path` from `source`, upgraded by hand: the TCP stream,
/// read up to the end of the upgrade's answer and not a byte further.
async fn raw_socket_from(gw: &Served, source: &str, path: &str) -> TcpStream {
    let tcp = TcpSocket::new_v4().unwrap();
    tcp.bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    let mut tcp = tcp
        .connect(SocketAddr::from(([127, 0, 0, 1], gw.api_port)))
        .await
        .unwrap();
    tcp.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        answer.push(tcp.read_u8().await.unwrap());
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    tcp
}

/// Reads a hand-made socket until the gateway closes it: the text of its
/// data frames, and its close frame's code and reason.
async fn raw_until_closed(tcp: &mut TcpStream) -> (String, Option<(u16, String)>) {
    let mut raw = Vec::new();
    tokio::time::timeout(GUARD, tcp.read_to_end(&mut raw))
        .await
        .expect("the socket stayed open")
        .unwrap();
    let (mut shown, mut close) = (String::new(), None);
    let mut at = 0;
    // Frames from a server: unmasked; lengths of 7, 16 or 64 bits.
    while at + 2 <= raw.len() {
        let opcode = raw[at] & 0x0f;
        let (len, start) = match raw[at + 1] & 0x7f {
            126 => (
                usize::from(u16::from_be_bytes([raw[at + 2], raw[at + 3]])),
                at + 4,
            ),
            127 => {
                let bytes: [u8; 8] = raw[at + 2..at + 10].try_into().unwrap();
                (u64::from_be_bytes(bytes) as usize, at + 10)
            }
            n => (usize::from(n), at + 2),
        };
        let payload = &raw[start..(start + len).min(raw.len())];
        match opcode {
            0x1 | 0x2 => shown.push_str(&String::from_utf8_lossy(payload)),
            0x8 if payload.len() >= 2 => {
                close = Some((
                    u16::from_be_bytes([payload[0], payload[1]]),
                    String::from_utf8_lossy(&payload[2..]).into_owned(),
                ));
            }
            _ => {}
        }
        at = start + len;
    }
    (shown, close)
}

/// Reads until the socket ends: what it showed, and its close frame.
async fn until_closed(socket: &mut Socket) -> (String, Option<CloseFrame>) {
    let mut shown = String::new();
    let close = tokio::time::timeout(GUARD, async {
        while let Some(frame) = socket.next().await {
            match frame {
                Ok(Message::Binary(b)) => shown.push_str(&String::from_utf8_lossy(&b)),
                Ok(Message::Text(t)) => shown.push_str(t.as_str()),
                Ok(Message::Close(frame)) => return frame,
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .unwrap_or_else(|_| panic!("the socket stayed open; it showed:\n{shown}"));
    (shown, close)
}

/// The audit rows of `vm1`.
async fn audit(config: &Path) -> Vec<Value> {
    audit_rows(config, &["--instance", "vm1"]).await
}

/// Polls the audit trail until a row of `event` has a detail starting with
/// `prefix`; returns that detail.
async fn audited(config: &Path, event: &str, prefix: &str) -> String {
    let found = tokio::time::timeout(GUARD, async {
        loop {
            let rows = audit(config).await;
            if let Some(row) = rows.iter().find(|r| {
                r["event"] == event && r["detail"].as_str().unwrap_or("").starts_with(prefix)
            }) {
                return row["detail"].as_str().unwrap().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    match found {
        Ok(detail) => detail,
        Err(_) => panic!(
            "no {event} row starting {prefix:?}:\n{:#?}",
            audit(config).await
        ),
    }
}

/// Waits until the gateway's log mentions `needle`.
async fn logged(gw: &Served, needle: &str) {
    let seen = tokio::time::timeout(GUARD, async {
        while !gw.log_text().contains(needle) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(seen.is_ok(), "never logged {needle}:\n{}", gw.log_text());
}

/// The gateway's peak resident memory so far, KiB (`VmHWM`).
fn peak_rss_kib(gw: &Served) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

/// A user working on `vm1`'s console over SSH from 127.0.0.1: attached,
/// echoing.
async fn ssh_user(gw: &Served) -> Terminal {
    let key = Key::ed25519(gw.dir.path(), "user");
    let conn = create_connection(&gw.config_path, "vm1", &key, gw.dir.path()).await;
    let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
    term.expect("serial console of vm1").await;
    echoes(&mut term, "user-in").await;
    term
}

async fn echoes(term: &mut Terminal, marker: &str) {
    // The simulator echoes what is typed at its login prompt.
    term.send(format!("{marker}\x03").as_bytes()).await;
    term.expect(marker).await;
}

/// A stand-in VNC display: greets like RFB, then echoes what it receives.
async fn echoing_display() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("tcp:127.0.0.1:{}", listener.local_addr().unwrap().port());
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
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

/// A websockify socket to `vm1`'s display, its RFB greeting read.
async fn vnc_from(gw: &Served, source: &str, token: &str) -> Socket {
    let mut socket = socket_from(gw, source, &format!("/websockify?token={token}")).await;
    assert_eq!(read_binary(&mut socket, 12).await, b"RFB 003.008\n");
    socket
}

/// `text` through the VNC copy and back.
async fn vnc_echoes(socket: &mut Socket, text: &str) {
    socket
        .send(Message::Binary(text.as_bytes().to_vec().into()))
        .await
        .unwrap();
    assert_eq!(read_binary(socket, text.len()).await, text.as_bytes());
}

/// The header of a masked client frame: `first` (FIN and opcode), then a
/// 64-bit payload length.
fn frame_header(first: u8, len: u64) -> Vec<u8> {
    let mut header = vec![first, 0x80 | 127];
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    header
}

/// A 16 MiB frame is refused once its header is read, before a byte of it
/// is kept: the socket closes while the attacker is still sending, the
/// gateway's memory never rises by anything like it, and a message of small
/// frames adding up past 64 KiB is refused too; meanwhile an SSH user keeps
/// working, and afterwards the descriptors and memory come back and both
/// sessions' Detach rows are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_mib_frame_is_refused_at_its_header_while_a_user_works() {
    let gw = gateway("", "", None).await;
    let mut user = ssh_user(&gw).await;
    let baseline = warmed_baseline(&gw, false).await;
    let peak_before = peak_rss_kib(&gw);

    // The attacker streams a 16 MiB frame after its header.
    const HUGE: usize = 16 << 20;
    let mut attack = serial_from(&gw, "127.0.0.2", &token(&gw, ConsoleProtocol::Serial).await)
        .await
        .socket;
    let sent = tokio::time::timeout(GUARD, async {
        let tcp = attack.get_mut();
        if tcp
            .write_all(&frame_header(0x82, HUGE as u64))
            .await
            .is_err()
        {
            return 0;
        }
        let chunk = pseudo_random_bytes(64 * 1024, 7);
        let mut sent = 0;
        while sent < HUGE {
            if tcp.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    })
    .await
    .expect("the gateway neither read the frame nor closed the socket");
    assert!(
        sent < HUGE,
        "the gateway read the whole 16 MiB frame instead of refusing it at its header"
    );
    echoes(&mut user, "during-the-attack").await;
    logged(&gw, "CG-WEB-008").await;
    let peak = peak_rss_kib(&gw);
    assert!(
        peak <= peak_before.max(baseline.rss_kib + 8 * 1024),
        "resident memory peaked at {peak} KiB (it was {} KiB, peak {peak_before} KiB)",
        baseline.rss_kib
    );
    drop(attack);

    // A message sent in 30 KiB frames is refused at its third (past
    // 64 KiB), with a goodbye and a close frame saying why.
    let mut fragments = serial_from(&gw, "127.0.0.2", &token(&gw, ConsoleProtocol::Serial).await)
        .await
        .socket;
    let piece = pseudo_random_bytes(30 * 1024, 11);
    for first in [0x02, 0x00, 0x00] {
        let tcp = fragments.get_mut();
        tcp.write_all(&frame_header(first, piece.len() as u64))
            .await
            .unwrap();
        tcp.write_all(&piece).await.unwrap();
    }
    let (shown, close) = until_closed(&mut fragments).await;
    assert!(shown.contains("CG-WEB-008"), "{shown}");
    let close = close.expect("no close frame");
    assert_eq!(u16::from(close.code), 1009, "{close:?}");
    assert!(close.reason.as_str().starts_with("CG-WEB-008"), "{close:?}");
    drop(fragments);

    echoes(&mut user, "after-the-attack").await;
    gw.settles_back_to(baseline, 8 * 1024).await;
    let rows = tokio::time::timeout(GUARD, async {
        loop {
            let rows = audit(&gw.config_path).await;
            let refused = rows
                .iter()
                .filter(|r| {
                    r["event"] == "detach"
                        && r["detail"].as_str().unwrap_or("").starts_with("CG-WEB-008")
                })
                .count();
            if refused == 2 {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the refused sessions' Detach rows are missing");
    assert!(
        rows.iter()
            .any(|r| r["event"] == "attach" && r["connectionId"].is_string())
    );
    user.send(b"\r&.").await;
    assert!(user.wait().await.success());
}

/// A socket that never answers the gateway's pings is closed after a few
/// keepalive intervals, with a coded goodbye and close frame; one that
/// answers them stays as long as it likes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_answers_pings_is_closed() {
    let gw = gateway("keepalive_interval_secs = 2\n", "", None).await;
    let baseline = warmed_baseline(&gw, false).await;

    // Answers pings: a task reads it all the time.
    let live = serial_from(&gw, "127.0.0.1", &token(&gw, ConsoleProtocol::Serial).await).await;
    let (mut live_tx, mut live_rx) = live.socket.split();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
    let reader = tokio::spawn(async move {
        let mut pings = 0;
        while let Some(Ok(frame)) = live_rx.next().await {
            match frame {
                Message::Ping(_) => pings += 1,
                Message::Binary(b) => {
                    let _ = seen_tx.send(String::from_utf8_lossy(&b).into_owned());
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        pings
    });

    // Opened by hand and never read, so it never answers (nor sends
    // anything: a WebSocket library would answer the pings it reads).
    let silent = token(&gw, ConsoleProtocol::Serial).await;
    let mut silent = raw_socket_from(&gw, "127.0.0.2", &format!("/serial?token={silent}")).await;
    logged(&gw, "CG-WEB-007").await;
    let (shown, close) = raw_until_closed(&mut silent).await;
    assert!(
        shown.contains("[consolegate: CG-WEB-007 nothing came from this browser"),
        "{shown}"
    );
    let (code, reason) = close.expect("no close frame");
    assert_eq!(code, 1001, "{reason}");
    assert!(reason.starts_with("CG-WEB-007"), "{reason}");
    drop(silent);
    audited(&gw.config_path, "detach", "CG-WEB-007").await;

    // The answering socket outlived it, and still works.
    live_tx
        .send(Message::Binary(b"still-here\x03".to_vec().into()))
        .await
        .unwrap();
    tokio::time::timeout(GUARD, async {
        let mut text = String::new();
        while !text.contains("still-here") {
            text.push_str(&seen.recv().await.expect("the answering socket ended"));
        }
    })
    .await
    .expect("the answering socket stopped echoing");
    live_tx
        .send(Message::Binary(b"\r&.".to_vec().into()))
        .await
        .unwrap();
    let pings = tokio::time::timeout(GUARD, reader).await.unwrap().unwrap();
    assert!(pings >= 2, "only {pings} pings in a keepalive-2s session");
    gw.settles_back_to(baseline, 8 * 1024).await;
}

/// Revoking a console's tokens (Nova's `DELETE /servers/{id}/consoles/{id}`)
/// ends the sockets they opened, serial and VNC, each told why, while the
/// other kind stays open; both ends are audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_tokens_ends_their_open_serial_and_vnc_sockets() {
    let (display, display_task) = echoing_display().await;
    let gw = gateway("", "", Some(&display)).await;
    let baseline = warmed_baseline(&gw, true).await;
    let mut serial = serial_from(&gw, "127.0.0.1", &token(&gw, ConsoleProtocol::Serial).await)
        .await
        .socket;
    let mut vnc = vnc_from(&gw, "127.0.0.1", &token(&gw, ConsoleProtocol::Vnc).await).await;

    revoke(&gw, 1).await;
    let (shown, close) = until_closed(&mut serial).await;
    assert!(
        shown.contains(
            "[consolegate: CG-WEB-009 the console token was revoked: session closed; bye]"
        ),
        "{shown}"
    );
    let close = close.expect("no close frame");
    assert_eq!(u16::from(close.code), 1008, "{close:?}");
    assert!(close.reason.as_str().starts_with("CG-WEB-009"), "{close:?}");
    audited(
        &gw.config_path,
        "detach",
        "CG-WEB-009 the console token was revoked",
    )
    .await;
    // The VNC token was not revoked: its socket goes on.
    vnc_echoes(&mut vnc, "vnc-still-open").await;

    revoke(&gw, 2).await;
    let (_, close) = until_closed(&mut vnc).await;
    let close = close.expect("no close frame");
    assert_eq!(u16::from(close.code), 1008, "{close:?}");
    assert!(close.reason.as_str().starts_with("CG-WEB-009"), "{close:?}");
    audited(&gw.config_path, "vnc-close", "websockify: CG-WEB-009").await;
    drop((serial, vnc));
    gw.settles_back_to(baseline, 8 * 1024).await;
    display_task.abort();
}

/// A token that expires while its sockets are open ends them at its
/// expiry: the serial console is warned first, the VNC socket closed with
/// the reason; both are audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_ends_its_open_sockets_after_a_warning() {
    let (display, display_task) = echoing_display().await;
    let gw = gateway("", "token_ttl_secs = 6\n", Some(&display)).await;
    let baseline = warmed_baseline(&gw, true).await;
    let mut serial = serial_from(&gw, "127.0.0.1", &token(&gw, ConsoleProtocol::Serial).await)
        .await
        .socket;
    let mut vnc = vnc_from(&gw, "127.0.0.1", &token(&gw, ConsoleProtocol::Vnc).await).await;

    let (shown, close) = until_closed(&mut serial).await;
    let warned = shown
        .find("CG-WEB-010 this console's token expires in ")
        .unwrap_or_else(|| panic!("no warning: {shown}"));
    let cut = shown
        .find("[consolegate: CG-WEB-011 the console token expired: session closed")
        .unwrap_or_else(|| panic!("no goodbye: {shown}"));
    assert!(warned < cut, "{shown}");
    let close = close.expect("no close frame");
    assert!(close.reason.as_str().starts_with("CG-WEB-011"), "{close:?}");
    audited(&gw.config_path, "detach", "CG-WEB-011").await;

    let (_, close) = until_closed(&mut vnc).await;
    let close = close.expect("no close frame");
    assert_eq!(u16::from(close.code), 1008, "{close:?}");
    assert!(close.reason.as_str().starts_with("CG-WEB-011"), "{close:?}");
    audited(&gw.config_path, "vnc-close", "websockify: CG-WEB-011").await;
    drop((serial, vnc));
    gw.settles_back_to(baseline, 8 * 1024).await;
    display_task.abort();
}

/// By default a token opens one socket: the serial page's own `GET` does
/// not spend it, the socket does, and the second socket (or page) is
/// refused; the same for VNC. With `single_use_tokens = false` a token
/// opens as many as asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_opens_one_socket_by_default() {
    let (display, display_task) = echoing_display().await;
    let gw = gateway("", "", Some(&display)).await;
    let serial = token(&gw, ConsoleProtocol::Serial).await;
    let page = format!("/serial?token={serial}");
    for _ in 0..2 {
        let (status, body) = http_request(gw.api_port, "GET", &page, "").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("<html"), "{body}");
    }
    let mut first = serial_from(&gw, "127.0.0.1", &serial).await;
    assert_eq!(refused(&gw, &page).await, (403, "CG-WEB-002".into()));
    assert_eq!(http_request(gw.api_port, "GET", &page, "").await.0, 403);
    // The first socket is not ended by its token being spent.
    first.send("spent-but-open\x03").await;
    first.expect("spent-but-open").await;

    let vnc = token(&gw, ConsoleProtocol::Vnc).await;
    let mut open = vnc_from(&gw, "127.0.0.1", &vnc).await;
    assert_eq!(
        refused(&gw, &format!("/websockify?token={vnc}")).await,
        (403, "CG-WEB-002".into())
    );
    vnc_echoes(&mut open, "one-vnc-socket").await;
    drop(open);
    first.send("\r&.").await;
    assert!(first.closed_by_server().await);
    drop(gw);

    // Reusable when asked for.
    let gw = gateway("", "single_use_tokens = false\n", Some(&display)).await;
    let serial = token(&gw, ConsoleProtocol::Serial).await;
    let mut one = serial_from(&gw, "127.0.0.1", &serial).await;
    let mut two = serial_from(&gw, "127.0.0.1", &serial).await;
    for web in [&mut one, &mut two] {
        web.send("\r&.").await;
        assert!(web.closed_by_server().await);
    }
    display_task.abort();
}

/// Web sockets take places under `[ssh] max_connections` as SSH clients
/// do: with 2 places, two sockets hold both; a third is refused with 503
/// CG-WEB-006 (its token not spent) and an SSH client with CG-SSH-005;
/// once a socket ends, the refused token opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_sockets_take_places_under_max_connections() {
    let (display, display_task) = echoing_display().await;
    let gw = gateway("max_connections = 2\n", "", Some(&display)).await;
    let key = Key::ed25519(gw.dir.path(), "user");
    let conn = create_connection(&gw.config_path, "vm1", &key, gw.dir.path()).await;

    let mut serial =
        serial_from(&gw, "127.0.0.1", &token(&gw, ConsoleProtocol::Serial).await).await;
    let mut vnc = vnc_from(&gw, "127.0.0.1", &token(&gw, ConsoleProtocol::Vnc).await).await;
    let third = token(&gw, ConsoleProtocol::Serial).await;
    assert_eq!(
        refused(&gw, &format!("/serial?token={third}")).await,
        (503, "CG-WEB-006".into())
    );
    // The gateway refuses it once it has authenticated, and says why.
    let full = ssh_batch(&conn.ssh_argv(&key)).await;
    assert!(!full.status.success());
    let err = String::from_utf8_lossy(&full.stderr);
    assert!(err.contains("CG-SSH-005"), "not told why: {err}");
    logged(&gw, "CG-SSH-005").await;
    vnc_echoes(&mut vnc, "both-places-held").await;

    serial.send("\r&.").await;
    assert!(serial.closed_by_server().await);
    let mut later = tokio::time::timeout(GUARD, async {
        loop {
            let url = format!("ws://127.0.0.1:{}/serial?token={third}", gw.api_port);
            if let Ok((socket, _)) = tokio_tungstenite::connect_async(&url).await {
                return Web::new(socket);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the refused token never got the freed place");
    later.expect("serial console of vm1").await;
    later.send("\r&.").await;
    assert!(later.closed_by_server().await);
    drop(vnc);
    display_task.abort();
}

/// Web consoles take places under the session caps: with two per
/// instance, a third noVNC socket is refused 429 CG-SESS-005 (its token
/// not spent) and a third serial console is told CG-SESS-005; once a
/// socket ends, the refused token opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_consoles_count_under_the_session_caps() {
    let (display, display_task) = echoing_display().await;
    let gw = Served::start(ServedConfig {
        rest: format!(
            "[session]\nmax_sessions_per_instance = 2\n{}",
            instance("vm1", "simulator", Some(&display))
        ),
        ..ServedConfig::default()
    })
    .await;
    let mut serial =
        serial_from(&gw, "127.0.0.1", &token(&gw, ConsoleProtocol::Serial).await).await;
    let mut vnc = vnc_from(&gw, "127.0.0.1", &token(&gw, ConsoleProtocol::Vnc).await).await;
    let third = token(&gw, ConsoleProtocol::Vnc).await;
    assert_eq!(
        refused(&gw, &format!("/websockify?token={third}")).await,
        (429, "CG-SESS-005".into())
    );
    let mut over = Web::new(
        socket_from(
            &gw,
            "127.0.0.1",
            &format!(
                "/serial?token={}",
                token(&gw, ConsoleProtocol::Serial).await
            ),
        )
        .await,
    );
    over.expect("CG-SESS-005").await;
    assert!(over.closed_by_server().await);
    vnc_echoes(&mut vnc, "still-here").await;
    serial.send("\r&.").await;
    assert!(serial.closed_by_server().await);
    let mut later = tokio::time::timeout(GUARD, async {
        loop {
            let url = format!("ws://127.0.0.1:{}/websockify?token={third}", gw.api_port);
            if let Ok((socket, _)) = tokio_tungstenite::connect_async(&url).await {
                return socket;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the refused token never got the freed place");
    assert_eq!(read_binary(&mut later, 12).await, b"RFB 003.008\n");
    drop((vnc, later));
    gw.stop().await;
    display_task.abort();
}
