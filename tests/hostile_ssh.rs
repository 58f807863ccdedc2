//! Hostile SSH clients that have authenticated (issue 15): a connection
//! that asks for more channels than it may hold, a storm of forbidden
//! opens, packets bit-flipped after key exchange, rekeys in the middle of
//! a VNC transfer, and a viewer that does not read. Each case runs against
//! a gateway in a process of its own while a real `ssh` console session
//! keeps echoing, and afterwards the gateway's descriptors come back to
//! where they were, its resident memory stays within a bound, and no
//! record is lost. The attackers come from other loopback addresses
//! (127.0.0.2 and up) than the user.
//!
//! A WINDOW_ADJUST that overflows a window, and data sent past the
//! window, come from paramiko (tests/python/window_abuse.py): neither
//! OpenSSH nor russh's client can be made to send them, and a proxy
//! cannot rewrite encrypted packets.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::russh_client::{self, Console};
use common::served::{Served, ServedConfig};
use common::*;
use russh::ChannelOpenFailure;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

/// How long the user's echo may take while an attack runs: a generous
/// guard, not a measurement.
const ECHO_GUARD: Duration = Duration::from_secs(10);

/// Channels one connection may hold (`MAX_CHANNELS`).
const MAX_CHANNELS: usize = 16;

/// The settings of these tests' gateways: one simulated instance (and a
/// VNC target, if given), and no caps on console sessions per connection
/// or key, so that the channel cap is what is met.
fn served_config(vnc: Option<&str>) -> ServedConfig {
    ServedConfig {
        rest: format!(
            "[session]\nmax_sessions_per_connection = 0\nmax_sessions_per_key = 0\n\n{}",
            instance("vm1", "simulator", vnc)
        ),
        ..ServedConfig::default()
    }
}

/// A console connection for `name`'s new key.
async fn connection(served: &Served, name: &str) -> (Key, Connection) {
    let key = Key::ed25519(served.dir.path(), name);
    let conn = create_connection(&served.config_path, "vm1", &key, served.dir.path()).await;
    (key, conn)
}

/// The user: a real `ssh` on a terminal, through both hops, attached and
/// echoing.
async fn user_session(served: &Served) -> (Terminal, Connection) {
    let (key, conn) = connection(served, "user").await;
    let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
    term.expect("serial console of vm1").await;
    echoes(&mut term, "user-in").await;
    (term, conn)
}

async fn echoes(term: &mut Terminal, marker: &str) {
    // The simulator echoes what is typed at its prompt; ^C ends the line.
    term.send(format!("{marker}\x03").as_bytes()).await;
    assert!(
        term.saw_within(marker, ECHO_GUARD).await,
        "the user's console did not echo {marker:?} within {ECHO_GUARD:?}"
    );
}

/// Runs `attack` while the user types a marker every 300 ms, each of
/// which must come back within [`ECHO_GUARD`]; returns what the attack
/// returns.
async fn while_user_echoes<T>(user: &mut Terminal, attack: impl Future<Output = T>) -> T {
    let done = CancellationToken::new();
    let attack = async {
        let out = attack.await;
        done.cancel();
        out
    };
    let echo = async {
        let mut n = 0u32;
        loop {
            n += 1;
            echoes(user, &format!("u{n}x")).await;
            tokio::select! {
                () = done.cancelled() => return n,
                () = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
        }
    };
    let (out, _) = tokio::join!(attack, echo);
    out
}

/// The user echoes once more and leaves cleanly.
async fn user_leaves(mut user: Terminal) {
    echoes(&mut user, "user-after").await;
    user.send(b"\r&.").await;
    assert!(user.wait().await.success(), "the user's ssh failed");
}

/// After an attack (and the user gone): the gateway's descriptors come
/// back to `baseline` and its memory grew by at most `rss_slack_kib`,
/// every console connection in `conns` is still there and active, and
/// the user's session was audited from attach to detach.
async fn aftermath(
    served: &Served,
    user_conn: &Connection,
    conns: &[&Connection],
    baseline: common::served::Vitals,
    rss_slack_kib: u64,
) {
    served.settles_back_to(baseline, rss_slack_kib).await;
    eprintln!("vitals: {baseline:?} before, {:?} after", served.vitals());
    for conn in conns.iter().chain([&user_conn]) {
        let out = served.cli(&["connection", "get", &conn.id]).await;
        assert!(
            out.status.success(),
            "console connection {} is gone: {}",
            conn.id,
            String::from_utf8_lossy(&out.stderr)
        );
        let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(record["lifecycleState"], "ACTIVE", "{record}");
    }
    let rows = audit_rows(&served.config_path, &["--connection", &user_conn.id]).await;
    for event in ["attach", "detach"] {
        assert!(
            rows.iter().any(|r| r["event"] == event),
            "the user's {event} row is missing: {rows:?}"
        );
    }
}

/// Whether `result` is a channel open refused with `reason`.
fn refused_with<T>(result: &Result<T, russh::Error>, reason: ChannelOpenFailure) -> bool {
    matches!(result, Err(russh::Error::ChannelOpenFailure(r)) if *r == reason)
}

// ---------------------------------------------------------------------
// Channels per connection.

/// The real `ssh` multiplexing console sessions over one connection
/// (`ControlMaster`): sixteen are served, the seventeenth is refused as a
/// resource shortage while the sixteen keep working, and once one leaves
/// its place can be taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seventeenth_channel_is_refused_and_the_sixteen_keep_working() {
    let served = Served::start(served_config(None)).await;
    let (mut user, user_conn) = user_session(&served).await;
    let baseline = served.baseline().await;
    let (key, conn) = connection(&served, "mux").await;
    let socket = served.dir.path().join("mux.sock");
    let master_log = served.dir.path().join("master.log");
    // One connection to the outer hop (its session shortcut is the
    // console), from another address, holding the mux socket.
    let mux_argv = |master: bool| {
        let mut argv = vec!["ssh".to_owned()];
        argv.extend(client_options(&key, &conn.known_hosts));
        if master {
            argv.extend([
                "-M".to_owned(),
                "-N".to_owned(),
                "-E".to_owned(),
                master_log.display().to_string(),
            ]);
        } else {
            // A client whose session the master cannot open falls back to
            // a connection of its own: make that fail.
            argv.extend(["-o".to_owned(), "ProxyCommand=false".to_owned()]);
        }
        argv.extend([
            "-o".to_owned(),
            "BindAddress=127.0.0.2".to_owned(),
            "-o".to_owned(),
            "ControlPersist=no".to_owned(),
            "-S".to_owned(),
            socket.display().to_string(),
            "-p".to_owned(),
            served.port.to_string(),
            format!("{}@127.0.0.1", conn.id),
        ]);
        argv
    };
    let mut master = tokio::process::Command::new("/usr/bin/ssh")
        .args(&mux_argv(true)[1..])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::timeout(GUARD, async {
        while !socket.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the ControlMaster never made its socket");

    let (mut sixteen, refused) = while_user_echoes(&mut user, async {
        let mut sixteen = Vec::new();
        for _ in 0..MAX_CHANNELS {
            let mut term = Terminal::spawn(&mux_argv(false)).await;
            term.expect("serial console of vm1").await;
            sixteen.push(term);
        }
        let seventeenth = ssh_batch(&mux_argv(false)).await;
        (sixteen, seventeenth)
    })
    .await;
    let client_said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a seventeenth session was served: {}\n{client_said}",
        String::from_utf8_lossy(&refused.stdout)
    );
    assert!(
        client_said.contains("Session open refused by peer"),
        "{client_said}"
    );
    let master_said = std::fs::read_to_string(&master_log).unwrap_or_default();
    assert!(
        master_said.contains("open failed: resource shortage"),
        "the seventeenth was not refused for a resource shortage; the master said:\n{master_said}"
    );
    // Each of the sixteen still types and sees its own echo.
    for (i, term) in sixteen.iter_mut().enumerate() {
        echoes(term, &format!("mux{i}x")).await;
    }
    // One leaves: its place is free for another.
    let mut leaving = sixteen.pop().unwrap();
    leaving.send(b"\r&.").await;
    assert!(leaving.wait().await.success());
    let mut again = tokio::time::timeout(GUARD, async {
        loop {
            let mut term = Terminal::spawn(&mux_argv(false)).await;
            if term.saw_within("serial console of vm1", GUARD).await {
                return term;
            }
            // The gateway may not have seen the channel close yet.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("a freed place was never given back");
    echoes(&mut again, "again").await;
    sixteen.push(again);
    for mut term in sixteen {
        term.send(b"\r&.").await;
        assert!(term.wait().await.success());
    }
    master.kill().await.unwrap();
    user_leaves(user).await;
    aftermath(&served, &user_conn, &[&conn], baseline, 8 * 1024).await;
    served.stop().await;
}

/// Inner hops count against their outer connection's sixteen channels:
/// one inner hop holds fifteen console sessions, and then neither another
/// inner hop nor a sixteenth session inside it is given a channel. Then
/// sixteen inner hops, each trying to open sixteen console sessions at
/// once, get sixteen channels in all; every refusal is a resource
/// shortage and every channel given works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_inner_hops_share_one_connections_sixteen_channels() {
    let served = Served::start(served_config(None)).await;
    let (mut user, user_conn) = user_session(&served).await;
    let baseline = served.baseline().await;
    let (key, conn) = connection(&served, "nester").await;
    let key = Arc::new(key.private.clone());

    while_user_echoes(&mut user, async {
        // One inner hop holding fifteen sessions fills the connection.
        let outer = russh_client::connect_from("127.0.0.3", served.port, &conn.id, &key).await;
        let hop = russh_client::inner_hop(&outer, "vm1", &key).await.unwrap();
        let mut consoles = Vec::new();
        for _ in 1..MAX_CHANNELS {
            let console = Console::open(&hop).await.expect("a session within the cap");
            consoles.push(console);
        }
        for console in &consoles {
            console.expect("serial console of vm1").await;
        }
        let another_hop = russh_client::inner_hop(&outer, "vm1", &key).await;
        assert!(
            refused_with(&another_hop, ChannelOpenFailure::ResourceShortage),
            "a second inner hop past the cap: {:?}",
            another_hop.err()
        );
        let sixteenth = Console::open(&hop).await;
        assert!(
            refused_with(&sixteenth, ChannelOpenFailure::ResourceShortage),
            "a sixteenth session in the inner hop past the cap: {:?}",
            sixteenth.err()
        );
        let outer_session = Console::open(&outer).await;
        assert!(
            refused_with(&outer_session, ChannelOpenFailure::ResourceShortage),
            "an outer-hop session past the cap: {:?}",
            outer_session.err()
        );
        consoles[0].send(b"inner-still\x03").await;
        for console in &consoles {
            console.expect("inner-still").await;
        }
        for console in consoles {
            console.close().await;
        }
        drop(hop);
        drop(outer);

        // Sixteen inner hops, each opening sixteen sessions at once,
        // started 2 ms apart so that hops and sessions interleave.
        let outer =
            Arc::new(russh_client::connect_from("127.0.0.3", served.port, &conn.id, &key).await);
        let mut hops = tokio::task::JoinSet::new();
        for i in 0..MAX_CHANNELS {
            let (outer, key) = (outer.clone(), key.clone());
            hops.spawn(async move {
                tokio::time::sleep(Duration::from_millis(2 * i as u64)).await;
                let hop = russh_client::inner_hop(&outer, "vm1", &key).await?;
                let opens = (0..MAX_CHANNELS).map(|_| Console::open(&hop));
                let results = futures_util::future::join_all(opens).await;
                Ok((hop, results))
            });
        }
        let mut held_hops = Vec::new();
        let mut consoles = Vec::new();
        let mut refusals = 0;
        while let Some(joined) = hops.join_next().await {
            match joined.unwrap() {
                Ok((hop, results)) => {
                    held_hops.push(hop);
                    for result in results {
                        match result {
                            Ok(console) => consoles.push(console),
                            Err(russh::Error::ChannelOpenFailure(
                                ChannelOpenFailure::ResourceShortage,
                            )) => refusals += 1,
                            Err(e) => panic!("a session open failed otherwise: {e:?}"),
                        }
                    }
                }
                Err(e) => {
                    assert!(
                        matches!(
                            e,
                            russh::Error::ChannelOpenFailure(ChannelOpenFailure::ResourceShortage)
                        ),
                        "an inner hop failed otherwise: {e:?}"
                    );
                    refusals += 1;
                }
            }
        }
        let given = held_hops.len() + consoles.len();
        eprintln!(
            "{} inner hops and {} sessions given, {refusals} refused",
            held_hops.len(),
            consoles.len()
        );
        assert_eq!(
            given,
            MAX_CHANNELS,
            "{} inner hops and {} sessions were given channels on one connection",
            held_hops.len(),
            consoles.len()
        );
        // Every attempt was answered: each hop, and each session of a hop.
        assert_eq!(
            given + refusals,
            MAX_CHANNELS + MAX_CHANNELS * held_hops.len()
        );
        for console in &consoles {
            console.expect("serial console of vm1").await;
        }
        for console in consoles {
            console.close().await;
        }
        drop(held_hops);
        drop(outer);
    })
    .await;
    user_leaves(user).await;
    aftermath(&served, &user_conn, &[&conn], baseline, 8 * 1024).await;
    served.stop().await;
}

// ---------------------------------------------------------------------
// Refused opens.

/// Forbidden asks in a storm.
const STORM: usize = 2000;

/// At most this many `refused` audit rows for the storm's connection.
const REFUSED_ROWS_BOUND: usize = 50;

/// The `i`th forbidden ask of the storm, on the outer hop or inside the
/// inner hop: `direct-tcpip` to other hosts and other ports, a unix
/// socket, remote forwards. Panics unless it is refused as forbidden.
async fn forbidden_ask(outer: &russh_client::Client, inner: &russh_client::Client, i: usize) {
    let n = i / 10;
    let (what, refused) = match i % 10 {
        0 => {
            let host = format!("10.{}.{}.1", n / 256, n % 256);
            let r = outer
                .channel_open_direct_tcpip(host, 22, "127.0.0.1", 0)
                .await;
            ("outer direct-tcpip to another host", opened_refused(r))
        }
        1 => {
            // Any port of the instance but 22, 5905 (inner hop) and 5900.
            let r = outer
                .channel_open_direct_tcpip("vm1", 23 + n as u32, "127.0.0.1", 0)
                .await;
            ("outer direct-tcpip to another port", opened_refused(r))
        }
        2 => {
            let r = outer
                .channel_open_direct_tcpip("localhost", 22, "127.0.0.1", 0)
                .await;
            ("outer direct-tcpip to localhost", opened_refused(r))
        }
        3 => {
            let r = outer
                .channel_open_direct_streamlocal("/run/docker.sock")
                .await;
            ("outer streamlocal", opened_refused(r))
        }
        4 => {
            let r = outer.tcpip_forward("0.0.0.0", 20000 + n as u32).await;
            ("outer tcpip-forward", request_denied(r))
        }
        5 => {
            let r = inner
                .channel_open_direct_tcpip("localhost", 22, "127.0.0.1", 0)
                .await;
            ("inner direct-tcpip to localhost:22", opened_refused(r))
        }
        6 => {
            let r = inner
                .channel_open_direct_tcpip("169.254.169.254", 80, "127.0.0.1", 0)
                .await;
            ("inner direct-tcpip to another host", opened_refused(r))
        }
        7 => {
            let r = inner
                .channel_open_direct_streamlocal("/var/run/libvirt/libvirt-sock")
                .await;
            ("inner streamlocal", opened_refused(r))
        }
        8 => {
            let r = inner.tcpip_forward("127.0.0.1", 20000 + n as u32).await;
            ("inner tcpip-forward", request_denied(r))
        }
        _ => {
            let r = outer
                .streamlocal_forward(format!("/tmp/storm-{n}.sock"))
                .await;
            ("outer streamlocal-forward", request_denied(r))
        }
    };
    if let Err(e) = refused {
        panic!("ask {i} ({what}) was not refused as forbidden: {e}");
    }
}

fn opened_refused<T>(result: Result<T, russh::Error>) -> Result<(), String> {
    match result {
        Err(russh::Error::ChannelOpenFailure(ChannelOpenFailure::AdministrativelyProhibited)) => {
            Ok(())
        }
        Ok(_) => Err("the channel was opened".into()),
        Err(e) => Err(format!("{e:?}")),
    }
}

fn request_denied<T: std::fmt::Debug>(result: Result<T, russh::Error>) -> Result<(), String> {
    match result {
        Err(russh::Error::RequestDenied) => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

/// An authenticated client asks, on both hops, for two thousand channels
/// and forwards it may not have: each is refused, the connection and the
/// gateway stay healthy (the same connection then opens a console on
/// each hop), and the refusals leave a bounded trail in the audit table
/// (repeated refusals collapsed into few rows) that still accounts for
/// every one of them once the gateway has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_refused_opens_is_refused_and_leaves_a_bounded_trail() {
    let served = Served::start(served_config(None)).await;
    let (mut user, user_conn) = user_session(&served).await;
    let baseline = served.baseline().await;
    let (key, conn) = connection(&served, "stormer").await;

    while_user_echoes(&mut user, async {
        let outer = Arc::new(
            russh_client::connect_from("127.0.0.4", served.port, &conn.id, &key.private).await,
        );
        let inner = Arc::new(
            russh_client::inner_hop(&outer, "vm1", &key.private)
                .await
                .unwrap(),
        );
        // Sixty-four asks in flight at a time.
        let mut storm = tokio::task::JoinSet::new();
        for i in 0..STORM {
            if storm.len() >= 64 {
                storm.join_next().await.unwrap().unwrap();
            }
            let (outer, inner) = (outer.clone(), inner.clone());
            storm.spawn(async move {
                tokio::time::timeout(GUARD, forbidden_ask(&outer, &inner, i))
                    .await
                    .unwrap_or_else(|_| panic!("ask {i} was never answered"))
            });
        }
        while let Some(done) = storm.join_next().await {
            done.unwrap();
        }
        // The same connection still works, on both hops.
        for (hop, client) in [("outer", &outer), ("inner", &inner)] {
            let console = Console::open(client)
                .await
                .unwrap_or_else(|e| panic!("{hop} hop: no console after the storm: {e}"));
            console.expect("serial console of vm1").await;
            let marker = format!("{hop}-after-storm");
            console.send(format!("{marker}\x03").as_bytes()).await;
            console.expect(&marker).await;
            console.close().await;
        }
        let _ = outer
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    })
    .await;
    user_leaves(user).await;
    aftermath(&served, &user_conn, &[&conn], baseline, 8 * 1024).await;

    let refused_rows = |rows: Vec<serde_json::Value>| {
        rows.into_iter()
            .filter(|r| r["event"] == "refused")
            .collect::<Vec<_>>()
    };
    let all = ["--connection", conn.id.as_str(), "--limit", "100000"];
    let refused = refused_rows(audit_rows(&served.config_path, &all).await);
    assert!(
        refused.len() <= REFUSED_ROWS_BOUND,
        "{STORM} forbidden asks wrote {} refused audit rows (at most {REFUSED_ROWS_BOUND} wanted: repeated refusals are to be collapsed)",
        refused.len()
    );
    // None is lost: once the gateway has stopped (and written what it
    // held back), the rows account for every refused channel open (the
    // remote-forward requests are answered, not audited).
    let config = served.config_path.clone();
    let _dir = served.stop().await;
    let refused = refused_rows(audit_rows(&config, &all).await);
    let accounted: u64 = refused
        .iter()
        .map(|r| {
            let detail = r["detail"].as_str().unwrap_or_default();
            let own = u64::from(!detail.starts_with("CG-AUTH-009"));
            own + collapsed_count(detail)
        })
        .sum();
    assert_eq!(
        accounted,
        (STORM / 10 * 7) as u64,
        "the refused rows account for {accounted} refused channel opens: {refused:#?}"
    );
}

/// How many refused attempts an audit row's detail says were collapsed
/// into it ("N more refused attempts collapsed …").
fn collapsed_count(detail: &str) -> u64 {
    detail
        .find(" more refused attempts collapsed")
        .and_then(|end| detail[..end].rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------
// Bit flips.

/// A TCP proxy between clients and the gateway, connecting to it from
/// `source`. Armed, it flips one bit of the next packet a client sends.
struct FlipProxy {
    port: u16,
    arm: Arc<std::sync::Mutex<Option<usize>>>,
    /// Tells, for each proxied connection, when the gateway closed it.
    closed: tokio::sync::mpsc::UnboundedReceiver<tokio::time::Instant>,
    /// Tells when a bit was flipped.
    flipped: tokio::sync::mpsc::UnboundedReceiver<tokio::time::Instant>,
}

impl FlipProxy {
    async fn start(gateway: u16, source: &'static str) -> FlipProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let arm = Arc::new(std::sync::Mutex::new(None::<usize>));
        let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
        let (flipped_tx, flipped) = tokio::sync::mpsc::unbounded_channel();
        let armed = arm.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let socket = TcpSocket::new_v4().unwrap();
                socket
                    .bind(SocketAddr::new(source.parse().unwrap(), 0))
                    .unwrap();
                let upstream = socket
                    .connect(SocketAddr::from(([127, 0, 0, 1], gateway)))
                    .await
                    .unwrap();
                let (mut client_r, mut client_w) = client.into_split();
                let (mut gw_r, mut gw_w) = upstream.into_split();
                let (armed, flipped_tx, closed_tx) =
                    (armed.clone(), flipped_tx.clone(), closed_tx.clone());
                // Client to gateway, flipping a bit when armed.
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match client_r.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let flip = {
                            let mut armed = armed.lock().unwrap();
                            match *armed {
                                // Inside the last packet of what was read,
                                // `from_end` bytes before its end.
                                Some(from_end) if n >= from_end + 4 => {
                                    *armed = None;
                                    Some(n - from_end)
                                }
                                _ => None,
                            }
                        };
                        if let Some(at) = flip {
                            buf[at] ^= 0x10;
                            let _ = flipped_tx.send(tokio::time::Instant::now());
                        }
                        if gw_w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = gw_w.shutdown().await;
                });
                // Gateway to client, noting when the gateway closes.
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match gw_r.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if client_w.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = closed_tx.send(tokio::time::Instant::now());
                    let _ = client_w.shutdown().await;
                });
            }
        });
        FlipProxy {
            port,
            arm,
            closed,
            flipped,
        }
    }

    /// Flips a bit `from_end` bytes before the end of the next chunk a
    /// client sends.
    fn arm(&self, from_end: usize) {
        *self.arm.lock().unwrap() = Some(from_end);
    }
}

/// A client that has completed key exchange and authentication sends a
/// packet with one bit flipped, under each kind of integrity protection
/// the gateway offers (chacha20-poly1305, AES-GCM, encrypt-then-MAC): the
/// gateway closes that connection at once, says why in its log, holds
/// nothing against the address it came from (the same address logs in
/// again and works), and the user keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bit_flipped_packet_closes_that_connection_and_nothing_else() {
    let served = Served::start(served_config(None)).await;
    let (mut user, user_conn) = user_session(&served).await;
    let baseline = served.baseline().await;
    let (key, conn) = connection(&served, "flipped").await;
    let mut proxy = FlipProxy::start(served.port, "127.0.0.5").await;
    let proxy_port = proxy.port;
    let through_proxy = |cipher: &[&str]| {
        let mut argv = vec!["ssh".to_owned()];
        argv.extend(client_options(&key, &conn.known_hosts));
        argv.extend(cipher.iter().map(|s| s.to_string()));
        argv.extend([
            // The gateway's host key, pinned for its own address.
            "-o".to_owned(),
            format!("HostKeyAlias=[127.0.0.1]:{}", served.port),
            "-p".to_owned(),
            proxy_port.to_string(),
            format!("{}@127.0.0.1", conn.id),
        ]);
        argv
    };
    // Each cipher, and where its packets end: the bit flipped is two
    // bytes before the packet's tag (ciphertext, or for encrypt-then-MAC
    // the packet's padding).
    let ciphers: [(&[&str], usize, &str); 3] = [
        (
            &["-c", "chacha20-poly1305@openssh.com"],
            16 + 2,
            "Failed to decrypt a packet",
        ),
        (
            &["-c", "aes256-gcm@openssh.com"],
            16 + 2,
            "Failed to decrypt a packet",
        ),
        (
            &["-c", "aes256-ctr", "-m", "hmac-sha2-256-etm@openssh.com"],
            32 + 2,
            "Wrong packet authentication code",
        ),
    ];
    while_user_echoes(&mut user, async {
        for (cipher, from_end, error) in ciphers {
            let before = served.log_text().matches(error).count();
            let mut term = Terminal::spawn(&through_proxy(cipher)).await;
            term.expect("serial console of vm1").await;
            // Authenticated and attached: now a keystroke goes out with a
            // bit flipped.
            proxy.arm(from_end);
            term.send(b"x").await;
            let flipped = tokio::time::timeout(GUARD, proxy.flipped.recv())
                .await
                .expect("no packet was flipped")
                .unwrap();
            let closed = tokio::time::timeout(GUARD, proxy.closed.recv())
                .await
                .unwrap_or_else(|_| panic!("{cipher:?}: the gateway kept a connection whose packet failed its integrity check"))
                .unwrap();
            // "At once": well inside a guard far shorter than any
            // keepalive timeout (3 x 30 s); not a measurement.
            assert!(
                closed - flipped < Duration::from_secs(10),
                "{cipher:?}: closed {:?} after the flip",
                closed - flipped
            );
            let status = term.wait().await;
            assert!(!status.success(), "{cipher:?}: ssh exited {status}");
            // The log line may follow the close by a moment.
            let said = tokio::time::timeout(GUARD, async {
                while served.log_text().matches(error).count() <= before {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await;
            assert!(
                said.is_ok(),
                "{cipher:?}: the gateway's log does not say {error:?}; it ends:\n{}",
                served
                    .log_text()
                    .lines()
                    .rev()
                    .take(8)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        // Nothing is held against the address: the same client, through
        // the same proxy, logs in and works.
        let mut again = Terminal::spawn(&through_proxy(&[])).await;
        again.expect("serial console of vm1").await;
        echoes(&mut again, "after-the-flips").await;
        again.send(b"\r&.").await;
        assert!(again.wait().await.success());
    })
    .await;
    user_leaves(user).await;
    aftermath(&served, &user_conn, &[&conn], baseline, 8 * 1024).await;
    served.stop().await;
}

// ---------------------------------------------------------------------
// Rekeying under load.

/// Bytes each way through the VNC tunnel.
const VNC_PAYLOAD: usize = 64 * 1024 * 1024;

/// A deterministic pseudo-random byte stream.
struct XorShift(u64);

impl XorShift {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// Sends [`VNC_PAYLOAD`] bytes of the stream `seed` makes; returns their
/// SHA-256.
async fn send_hashed(mut w: impl tokio::io::AsyncWrite + Unpin, seed: u64) -> Vec<u8> {
    use sha2::Digest;
    let mut stream = XorShift(seed);
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = VNC_PAYLOAD;
    while left > 0 {
        let n = left.min(buf.len());
        stream.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        w.write_all(&buf[..n]).await.unwrap();
        left -= n;
    }
    w.flush().await.unwrap();
    hash.finalize().to_vec()
}

/// Reads [`VNC_PAYLOAD`] bytes; returns their SHA-256.
async fn receive_hashed(mut r: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = VNC_PAYLOAD;
    while left > 0 {
        let n = left.min(buf.len());
        let got = r.read(&mut buf[..n]).await.unwrap();
        assert!(got > 0, "the stream ended {left} bytes short");
        hash.update(&buf[..got]);
        left -= got;
    }
    hash.finalize().to_vec()
}

/// The real `ssh -L` of the `vncConnectionString`, both of its hops
/// rekeying after every MiB (`RekeyLimit=1M`), carries 64 MiB each way
/// between a local client and the instance's display intact (their
/// hashes match), across many key re-exchanges on each hop (counted in
/// each ssh's debug log).
///
/// The display is a stand-in: a TCP server that sends and hashes bytes,
/// speaking no RFB (the real QEMU VNC server is exercised by the QEMU
/// end-to-end test); what is tested is the tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekeys_in_the_middle_of_a_64_mib_vnc_transfer_lose_nothing() {
    let display = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let display_port = display.local_addr().unwrap().port();
    let served = Served::start(served_config(Some(&format!(
        "tcp:127.0.0.1:{display_port}"
    ))))
    .await;
    let (mut user, user_conn) = user_session(&served).await;
    let baseline = served.baseline().await;
    let (key, conn) = connection(&served, "viewer").await;
    let local = free_port().await;
    let inner_log = served.dir.path().join("inner-hop-ssh.log");
    let outer_log = served.dir.path().join("outer-hop-ssh.log");
    let command = conn
        .vnc_connection_string
        .replace("-L localhost:5900:", &format!("-L localhost:{local}:"));
    let mut argv = argv_with_options(&command, &key, &key, &conn.known_hosts);
    for arg in argv.iter_mut() {
        if let Some(rest) = arg.strip_prefix("ProxyCommand=ssh ") {
            *arg = format!(
                "ProxyCommand=ssh -v -E {} -o RekeyLimit=1M -o BindAddress=127.0.0.6 {rest}",
                outer_log.display()
            );
        }
    }
    let options = [
        "-v",
        "-E",
        &inner_log.display().to_string(),
        "-o",
        "RekeyLimit=1M",
        "-o",
        "ExitOnForwardFailure=yes",
    ]
    .map(str::to_owned);
    argv.splice(1..1, options);

    let (sent_up, got_up, sent_down, got_down) = while_user_echoes(&mut user, async {
        let mut ssh = tokio::process::Command::new("/usr/bin/ssh")
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let server = tokio::spawn(async move {
            let (socket, _) = display.accept().await.unwrap();
            let (r, w) = socket.into_split();
            tokio::join!(receive_hashed(r), send_hashed(w, 2))
        });
        let client = connect_eventually(local).await;
        let (r, w) = client.into_split();
        let (sent_up, got_down) = tokio::time::timeout(Duration::from_secs(300), async {
            tokio::join!(send_hashed(w, 1), receive_hashed(r))
        })
        .await
        .expect("the transfer hung");
        let (got_up, sent_down) = server.await.unwrap();
        ssh.kill().await.unwrap();
        (sent_up, got_up, sent_down, got_down)
    })
    .await;
    assert!(
        sent_up == got_up,
        "the 64 MiB sent to the display arrived altered"
    );
    assert!(
        sent_down == got_down,
        "the 64 MiB the display sent arrived altered"
    );
    for (hop, log) in [("inner", &inner_log), ("outer", &outer_log)] {
        let text = std::fs::read_to_string(log).unwrap();
        let exchanges = text.matches("SSH2_MSG_NEWKEYS received").count();
        // The first is the initial key exchange; 128 MiB at a rekey per
        // MiB makes dozens more.
        assert!(
            exchanges > 10,
            "the {hop} hop's ssh completed only {exchanges} key exchanges"
        );
        eprintln!("{hop} hop: {exchanges} key exchanges");
    }
    user_leaves(user).await;
    aftermath(&served, &user_conn, &[&conn], baseline, 16 * 1024).await;
    served.stop().await;
}

// ---------------------------------------------------------------------
// A viewer that does not read.

/// `argv` with every ssh in it (the ProxyCommand's too) connecting from
/// `source`.
fn from_source(mut argv: Vec<String>, source: &str) -> Vec<String> {
    for arg in argv.iter_mut() {
        if let Some(rest) = arg.strip_prefix("ProxyCommand=ssh ") {
            *arg = format!("ProxyCommand=ssh -o BindAddress={source} {rest}");
        }
    }
    argv.splice(1..1, ["-o".to_owned(), format!("BindAddress={source}")]);
    argv
}

/// A real `ssh` whose output is a pipe that the test reads only when it
/// chooses to (a terminal that is not read, as far as ssh can tell).
struct PipedSsh {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
    /// What was read and may still hold the start of a match.
    unread: Vec<u8>,
    /// The last bytes read, for failure messages.
    last: Vec<u8>,
    /// Bytes read so far.
    read: u64,
}

impl PipedSsh {
    fn spawn(argv: &[String]) -> PipedSsh {
        let mut child = tokio::process::Command::new("/usr/bin/ssh")
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        PipedSsh {
            stdin: child.stdin.take().unwrap(),
            stdout: child.stdout.take().unwrap(),
            child,
            unread: Vec::new(),
            last: Vec::new(),
            read: 0,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Reads up to `n` bytes; `None` at the end of the output.
    async fn read_some(&mut self, n: usize) -> Option<usize> {
        let mut buf = vec![0u8; n];
        match self.stdout.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(got) => {
                self.unread.extend_from_slice(&buf[..got]);
                self.last.extend_from_slice(&buf[..got]);
                let excess = self.last.len().saturating_sub(4096);
                self.last.drain(..excess);
                self.read += got as u64;
                Some(got)
            }
        }
    }

    /// Reads (as fast as ssh writes) until `needle` appears after the
    /// last match, within `limit`; consumes through it.
    async fn saw_within(&mut self, needle: &str, limit: Duration) -> bool {
        let needle = needle.as_bytes();
        tokio::time::timeout(limit, async {
            loop {
                if let Some(pos) = find(&self.unread, needle) {
                    self.unread.drain(..pos + needle.len());
                    return true;
                }
                // Keep only what could be the start of a match.
                let excess = self.unread.len().saturating_sub(needle.len());
                self.unread.drain(..excess);
                if self.read_some(64 * 1024).await.is_none() {
                    return false;
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    async fn expect(&mut self, needle: &str) {
        if !self.saw_within(needle, GUARD).await {
            panic!(
                "never saw {needle:?}; the last output was:\n{}",
                String::from_utf8_lossy(&self.last)
            );
        }
    }

    async fn leave(mut self) {
        self.send(b"\r&.").await;
        let status = tokio::time::timeout(GUARD, self.child.wait())
            .await
            .expect("ssh did not exit")
            .unwrap();
        assert!(status.success(), "ssh exited {status}");
    }
}

/// How long the reading viewer's echo may take while the console floods:
/// a generous guard, not a measurement.
const FLOOD_ECHO_GUARD: Duration = Duration::from_secs(5);

/// Rounds of output, each about 1.7 MiB (a thousand `dmesg`).
const FLOOD_ROUNDS: usize = 12;

/// Two viewers over real `ssh` on one console: one reads everything, the
/// other's output is a pipe read only a few bytes every 500 ms. While the
/// console prints some 20 MiB, the reader's every echo comes back within
/// a few seconds (the drip-reader never sets the console's pace), and the
/// drip-reader, once it reads again, is told with the next output that
/// output was skipped (CG-LAG-001), and is still attached.
///
/// The few bytes dripped do not reach the gateway as progress: ssh gives
/// window back only in large batches, and megabytes sit in ssh's buffers
/// and the sockets, so at the gateway this viewer has stopped reading.
/// The drain-rate rule for a viewer seen to take a little now and then is
/// tested on the hub itself (`a_drip_reading_viewer_is_skipped_not_waited_for`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_drips_is_skipped_and_the_console_goes_on() {
    let served = Served::start(served_config(None)).await;
    let baseline = served.baseline().await;
    let (reader_key, reader_conn) = connection(&served, "reader").await;
    let (dripper_key, dripper_conn) = connection(&served, "dripper").await;
    let mut reader = PipedSsh::spawn(&reader_conn.ssh_argv(&reader_key));
    reader.expect("serial console of vm1").await;
    let mut dripper = PipedSsh::spawn(&from_source(
        dripper_conn.ssh_argv(&dripper_key),
        "127.0.0.7",
    ));
    dripper.expect("serial console of vm1").await;
    reader.send(b"root\r").await;
    reader.expect("root@vm1:~$ ").await;
    dripper.expect("root@vm1:~$ ").await;

    let flooded = CancellationToken::new();
    let flood = async {
        let batch = "dmesg\r".repeat(1000);
        for round in 0..FLOOD_ROUNDS {
            reader.send(batch.as_bytes()).await;
            let marker = format!("flood{round}x");
            reader.send(format!("{marker}\x03").as_bytes()).await;
            assert!(
                reader.saw_within(&marker, FLOOD_ECHO_GUARD).await,
                "round {round}: the reading viewer's echo took more than {FLOOD_ECHO_GUARD:?} (read {} bytes so far)",
                reader.read
            );
        }
        flooded.cancel();
    };
    let drip = async {
        let mut dripped = 0;
        while !flooded.is_cancelled() {
            if let Ok(Some(n)) =
                tokio::time::timeout(Duration::from_millis(50), dripper.read_some(256)).await
            {
                dripped += n;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        dripped
    };
    let ((), dripped) = tokio::join!(flood, drip);
    eprintln!(
        "the reader read {} bytes; the dripper dripped {dripped}",
        reader.read
    );
    // The drip-reader catches up, reading all it was sent; with the next
    // output it is told it was skipped, and it is still attached.
    tokio::time::timeout(GUARD, async {
        while let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_secs(1), dripper.read_some(64 * 1024)).await
        {
        }
    })
    .await
    .expect("the drip-reader's output never ended");
    let caught_up = dripper.read;
    dripper.send(b"still-here\x03").await;
    dripper.expect("CG-LAG-001").await;
    dripper.expect("still-here").await;
    reader.expect("still-here").await;
    eprintln!(
        "the drip-reader was sent {caught_up} bytes of {} before it was skipped",
        reader.read
    );
    dripper.leave().await;
    reader.leave().await;
    let rows = audit_rows(&served.config_path, &["--connection", &dripper_conn.id]).await;
    assert!(
        rows.iter().any(|r| r["event"] == "detach"),
        "the drip-reader's session was not audited: {rows:?}"
    );
    aftermath(&served, &reader_conn, &[&dripper_conn], baseline, 24 * 1024).await;
    served.stop().await;
}

/// MiB the flow-control breaker sends past its window.
const PAST_WINDOW_MIB: usize = 64;

/// A real SSH implementation other than the gateway's (paramiko, driven
/// by tests/python/window_abuse.py) overflows its VNC channel's window
/// with WINDOW_ADJUSTs of 2^32 - 1 and sends 64 MiB of data past the
/// window it was granted. The gateway buffers none of it beyond its
/// bound (its memory stays within 16 MiB of where it was): what it
/// accepts it hands on to the display, and the user keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_ignores_the_window_gets_no_memory() {
    let Some(python) = venv_python("paramiko") else {
        return;
    };
    let display = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let display_port = display.local_addr().unwrap().port();
    // The stand-in display counts what reaches it, and says nothing.
    let received = tokio::spawn(async move {
        let (mut socket, _) = display.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        while let Ok(n) = socket.read(&mut buf).await {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    let served = Served::start(served_config(Some(&format!(
        "tcp:127.0.0.1:{display_port}"
    ))))
    .await;
    let (mut user, user_conn) = user_session(&served).await;
    let baseline = served.baseline().await;
    let (key, conn) = connection(&served, "breaker").await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/window_abuse.py");
    let out = while_user_echoes(&mut user, async {
        tokio::process::Command::new(&python)
            .arg(&script)
            .args([
                &served.port.to_string(),
                "127.0.0.8",
                &conn.id,
                key.private.to_str().unwrap(),
                &PAST_WINDOW_MIB.to_string(),
            ])
            .output()
            .await
            .unwrap()
    })
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let granted = report["granted"].as_u64().unwrap() as usize;
    let sent = report["sent"].as_u64().unwrap() as usize;
    assert!(
        sent > 4 * granted,
        "the client did not get far past its window: {report}"
    );
    let received = tokio::time::timeout(GUARD, received)
        .await
        .expect("the display's connection was never closed")
        .unwrap();
    eprintln!("window breaker: {report}; the display received {received} bytes");
    // Either the gateway refused the connection, or what it accepted went
    // on to the display: at most a bounded remainder was still in flight.
    let closed = report["closed"].as_bool().unwrap();
    assert!(
        closed || received + 16 * 1024 * 1024 >= sent,
        "{sent} bytes sent, {received} reached the display: {report}"
    );
    assert!(received <= sent, "the display got bytes never sent");
    user_leaves(user).await;
    aftermath(&served, &user_conn, &[&conn], baseline, 16 * 1024).await;
}

/// The console history these viewers replay, whole.
const REPLAY_BYTES: usize = 4 * 1024 * 1024;
/// Viewers that replay it and stay attached.
const REPLAYING_VIEWERS: usize = 16;

/// A session's replay is freed once it has been shown, not kept for the
/// session's life, and the burst of showing it leaves little behind in
/// the connection's buffers: sixteen viewers each replaying a 4 MiB
/// history and staying attached cost the gateway far less than the
/// 64 MiB their replays add up to (with russh's full-size messages, the
/// transport buffers alone kept more than that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_are_freed_once_shown() {
    let mut config = served_config(None);
    config.rest += &format!("history_bytes = {REPLAY_BYTES}\n");
    let served = Served::start(config).await;
    // Fill the history: dmesg prints about 1.5 KiB each time.
    let (key, conn) = connection(&served, "filler").await;
    let mut filler = PipedSsh::spawn(&conn.ssh_argv(&key));
    filler.expect("serial console of vm1").await;
    filler.send(b"root\r").await;
    filler.expect("root@vm1:~$ ").await;
    filler.send("dmesg\r".repeat(4000).as_bytes()).await;
    filler.send(b"echo history-full\r").await;
    filler.expect("\nhistory-full").await;
    filler.leave().await;
    let baseline = served.baseline().await;
    let mut viewers = Vec::new();
    for n in 0..REPLAYING_VIEWERS {
        let (key, conn) = connection(&served, &format!("viewer{n}")).await;
        let mut viewer = PipedSsh::spawn(&conn.ssh_argv_as(&key, "replay=all"));
        viewer.expect("serial console of vm1").await;
        // The whole replay has arrived once the prompt after it has.
        viewer.expect("\nhistory-full").await;
        viewer.expect("root@vm1:~$ ").await;
        assert!(
            viewer.read >= REPLAY_BYTES as u64 / 2,
            "viewer {n} replayed only {} bytes",
            viewer.read
        );
        viewers.push(viewer);
    }
    let attached = served.vitals();
    let grew_kib = attached.rss_kib.saturating_sub(baseline.rss_kib);
    eprintln!("{REPLAYING_VIEWERS} replaying viewers: {baseline:?} -> {attached:?}");
    let replays_kib = (REPLAYING_VIEWERS * REPLAY_BYTES / 1024) as u64;
    // Kept replays alone would add all of replays_kib; what a connection
    // keeps after a burst (its transport buffers) comes to well under it.
    assert!(
        grew_kib < replays_kib * 3 / 4,
        "{REPLAYING_VIEWERS} attached viewers hold {grew_kib} KiB more; their replays were {replays_kib} KiB"
    );
    for viewer in viewers {
        viewer.leave().await;
    }
}
