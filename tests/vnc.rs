//! The VNC tunnel: `vncConnectionString` run with the real `ssh`, forwarding a
//! local port through both hops to a TCP server standing in for the display
//! (a real socket peer; the real QEMU VNC server is exercised by the QEMU
//! end-to-end test).

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::Child;

const PAYLOAD: usize = 64 * 1024 * 1024;

/// A deterministic pseudo-random byte stream.
struct Stream(u64);

impl Stream {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let bytes = self.0.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

async fn send_stream(mut w: impl AsyncWrite + Unpin, seed: u64, len: usize) {
    let mut s = Stream(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        s.fill(&mut buf[..n]);
        w.write_all(&buf[..n]).await.unwrap();
        left -= n;
    }
    w.flush().await.unwrap();
}

/// Reads `len` bytes and checks them against the stream `seed` would make.
async fn check_stream(mut r: impl AsyncRead + Unpin, seed: u64, len: usize) {
    let mut s = Stream(seed);
    let mut expected = vec![0u8; 64 * 1024];
    let mut got = vec![0u8; 64 * 1024];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(got.len());
        r.read_exact(&mut got[..n]).await.unwrap();
        s.fill(&mut expected[..n]);
        assert!(got[..n] == expected[..n], "corrupted data at offset {done}");
        done += n;
    }
}

/// The stand-in display: sends `PAYLOAD` bytes of stream 2 while checking
/// `PAYLOAD` bytes of stream 1 from the client.
async fn display(listener: TcpListener) {
    let (socket, _) = listener.accept().await.unwrap();
    let (r, w) = socket.into_split();
    tokio::join!(check_stream(r, 1, PAYLOAD), send_stream(w, 2, PAYLOAD));
}

async fn tunnel(argv: Vec<String>) -> Child {
    tokio::process::Command::new("/usr/bin/ssh")
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The `vncConnectionString` with key options, on a free local port.
fn vnc_argv(conn: &Connection, key: &Key, local: u16) -> Vec<String> {
    let command = conn
        .vnc_connection_string
        .replace("-L localhost:5900:", &format!("-L localhost:{local}:"));
    let mut argv = argv_with_options(&command, key, key, &conn.known_hosts);
    argv.insert(1, "-o".into());
    argv.insert(2, "ExitOnForwardFailure=yes".into());
    argv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vnc_connection_string_carries_64_mib_each_way_intact() {
    let vnc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let vnc_port = vnc.local_addr().unwrap().port();
    let gw = Gateway::start(&instance(
        "vm1",
        "simulator",
        Some(&format!("tcp:127.0.0.1:{vnc_port}")),
    ))
    .await;
    let key = Key::ed25519(gw.dir.path(), "user");
    let conn = gw.create("vm1", &key).await;
    assert!(
        conn.vnc_connection_string
            .contains("-N -L localhost:5900:vm1:5900 vm1"),
        "{}",
        conn.vnc_connection_string
    );
    let local = free_port().await;
    let mut ssh = tunnel(vnc_argv(&conn, &key, local)).await;
    let server = tokio::spawn(display(vnc));
    let client = connect_eventually(local).await;
    let (r, w) = client.into_split();
    tokio::time::timeout(Duration::from_secs(300), async {
        tokio::join!(send_stream(w, 1, PAYLOAD), check_stream(r, 2, PAYLOAD))
    })
    .await
    .expect("transfer hung");
    server.await.unwrap();
    ssh.kill().await.unwrap();
    // The tunnel's close is audited with every byte each way.
    let closed = tokio::time::timeout(GUARD, async {
        loop {
            let rows = gw.audit(&conn.id).await;
            if let Some(row) = rows.into_iter().find(|r| r["event"] == "vnc-close") {
                return row;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("no vnc-close row");
    assert_eq!(closed["bytesIn"], PAYLOAD as u64, "{closed}");
    assert_eq!(closed["bytesOut"], PAYLOAD as u64, "{closed}");
    assert!(
        closed["detail"]
            .as_str()
            .unwrap()
            .starts_with("inner hop: "),
        "{closed}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vnc_via_outer_shortcut_inner_localhost_and_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = echo_display(dir.path());
    let gw = Gateway::start(&instance(
        "vm1",
        "simulator",
        Some(&format!("unix:{}", socket.display())),
    ))
    .await;
    let key = Key::ed25519(gw.dir.path(), "user");
    let conn = gw.create("vm1", &key).await;

    // The outer hop's direct shortcut, no ProxyCommand.
    let local = free_port().await;
    let mut ssh = tunnel(outer_shortcut(&gw, &conn, &key, local)).await;
    echo_round_trip(local).await;
    ssh.kill().await.unwrap();

    // `localhost:5900` on the inner hop.
    let local = free_port().await;
    let command = conn.vnc_connection_string.replace(
        "-L localhost:5900:vm1:5900",
        &format!("-L 127.0.0.1:{local}:localhost:5900"),
    );
    let mut ssh = tunnel(argv_with_options(&command, &key, &key, &conn.known_hosts)).await;
    echo_round_trip(local).await;
    ssh.kill().await.unwrap();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vnc_without_a_display_fails_cleanly() {
    // vm1 has no VNC configured; vm2's display is down.
    let down = free_port().await;
    let gw = Gateway::start(
        &(instance("vm1", "simulator", None)
            + &instance("vm2", "simulator", Some(&format!("tcp:127.0.0.1:{down}")))),
    )
    .await;
    for vm in ["vm1", "vm2"] {
        let key = Key::ed25519(gw.dir.path(), vm);
        let conn = gw.create(vm, &key).await;
        let local = free_port().await;
        let mut ssh = tunnel(vnc_argv(&conn, &key, local)).await;
        let mut probe = connect_eventually(local).await;
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(GUARD, probe.read(&mut buf))
            .await
            .expect("failed forward was neither refused nor closed");
        assert!(matches!(n, Ok(0) | Err(_)));
        ssh.kill().await.unwrap();
        let out = ssh.wait_with_output().await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("open failed: connect failed"), "{vm}: {err}");
    }
    gw.stop().await;
}

/// A stand-in VNC display on a unix socket in `dir`: an RFB greeting, then
/// it echoes.
fn echo_display(dir: &std::path::Path) -> std::path::PathBuf {
    let socket = dir.join("vm1.vnc");
    let vnc = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = vnc.accept().await else {
                return;
            };
            tokio::spawn(async move {
                s.write_all(b"RFB 003.008\n").await.unwrap();
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    socket
}

/// `ssh -N -L` to vm1's display through the outer hop's shortcut (no
/// ProxyCommand), on local port `local`.
fn outer_shortcut(gw: &Gateway, conn: &Connection, key: &Key, local: u16) -> Vec<String> {
    let mut argv = vec!["ssh".to_owned()];
    argv.extend(client_options(key, &conn.known_hosts));
    argv.extend([
        "-N".into(),
        "-L".into(),
        format!("127.0.0.1:{local}:vm1:5900"),
        "-p".into(),
        gw.port.to_string(),
        format!("{}@127.0.0.1", conn.id),
    ]);
    argv
}

/// VNC tunnels take places under the session caps like console sessions:
/// past `max_sessions_per_connection`, the channel is refused (resource
/// shortage) and the tunnels in place keep working; a closed one frees
/// its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vnc_tunnels_count_under_the_session_caps() {
    let dir = tempfile::tempdir().unwrap();
    let socket = echo_display(dir.path());
    let vm = instance(
        "vm1",
        "simulator",
        Some(&format!("unix:{}", socket.display())),
    );
    let gw = Gateway::start(&format!("[session]\nmax_sessions_per_connection = 2\n{vm}")).await;
    let key = Key::ed25519(gw.dir.path(), "user");
    let conn = gw.create("vm1", &key).await;
    let local = free_port().await;
    let mut ssh = tunnel(outer_shortcut(&gw, &conn, &key, local)).await;
    let first = echo_round_trip(local).await;
    let _second = echo_round_trip(local).await;
    let mut third = connect_eventually(local).await;
    let mut buf = [0u8; 12];
    let n = tokio::time::timeout(GUARD, third.read(&mut buf))
        .await
        .expect("a tunnel past the cap was neither refused nor closed");
    assert!(matches!(n, Ok(0) | Err(_)), "a third tunnel was opened");
    drop(first);
    // The place comes back once the gateway has seen the tunnel close.
    let fourth = tokio::time::timeout(GUARD, async {
        loop {
            let mut s = connect_eventually(local).await;
            if matches!(s.read(&mut buf).await, Ok(12)) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the closed tunnel's place never came back");
    drop(fourth);
    ssh.kill().await.unwrap();
    let out = ssh.wait_with_output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("open failed: resource shortage"), "{err}");
    gw.stop().await;
}

/// Connects to a tunnel's local end, checks the greeting and an echo, and
/// keeps the tunnel open (while the stream lives).
async fn echo_round_trip(local: u16) -> tokio::net::TcpStream {
    let mut s = connect_eventually(local).await;
    let mut greeting = [0u8; 12];
    tokio::time::timeout(GUARD, s.read_exact(&mut greeting))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&greeting, b"RFB 003.008\n");
    s.write_all(b"ping through both hops").await.unwrap();
    let mut back = [0u8; 22];
    tokio::time::timeout(GUARD, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"ping through both hops");
    s
}
