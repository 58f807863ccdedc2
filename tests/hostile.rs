//! Attacks on a real gateway's SSH port while a real user works: clients
//! that never authenticate, a flood from one address, a brute force, and
//! algorithms the gateway must not accept. Each runs with the gateway's
//! default limits (`max_startups`, `per_source_max_startups`, penalties);
//! attackers come from other loopback addresses (127.0.0.2 and up) than
//! the user, as they would from other hosts.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// No exemptions: the defaults, as shipped.
const DEFAULTS: &str = "exempt_sources = []\n";

fn one_instance() -> String {
    instance("vm1", "simulator", None)
}

/// A TCP connection to the gateway from `source`.
async fn connect_from(source: &str, gw: &Gateway) -> std::io::Result<TcpStream> {
    connect_to_from(gw.port, source).await
}

/// A TCP connection to local `port` from `source`.
async fn connect_to_from(port: u16, source: &str) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.parse().unwrap(), 0))?;
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
}

/// Whether the gateway closes `stream` (EOF or reset) before GUARD, after
/// sending at most an identification line.
async fn closed_by_gateway(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(GUARD, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or(false)
}

/// `argv` with every ssh in it (the ProxyCommand's too) connecting from
/// `source`.
fn from_source(mut argv: Vec<String>, source: &str) -> Vec<String> {
    for arg in argv.iter_mut() {
        if let Some(rest) = arg.strip_prefix("ProxyCommand=ssh ") {
            *arg = format!("ProxyCommand=ssh -o BindAddress={source} {rest}");
        }
    }
    argv.insert(1, format!("BindAddress={source}"));
    argv.insert(1, "-o".into());
    argv
}

/// A user's console session from `source`: attached, echoing.
async fn user_session(gw: &Gateway, name: &str, source: &str) -> Terminal {
    let key = Key::ed25519(gw.dir.path(), name);
    let conn = gw.create("vm1", &key).await;
    let mut term = Terminal::spawn(&from_source(conn.ssh_argv(&key), source)).await;
    term.expect("serial console of vm1").await;
    echoes(&mut term, &format!("{name}-in")).await;
    term
}

async fn echoes(term: &mut Terminal, marker: &str) {
    // The simulator echoes what is typed at its login prompt.
    term.send(format!("{marker}\x03").as_bytes()).await;
    term.expect(marker).await;
}

async fn leave(mut term: Terminal) {
    term.send(b"\r&.").await;
    assert!(term.wait().await.success());
}

/// `max_connections + 1` silent clients and as many slowloris clients
/// (an identification dripped a byte a second) hold no place a user
/// needs: unauthenticated connections have places of their own, and are
/// dropped at the identification deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_authenticate_keep_no_user_out() {
    let max = 3;
    let ssh = format!("{DEFAULTS}max_connections = {max}\n");
    let gw = Gateway::start_with(tempfile::tempdir().unwrap(), 0, &ssh, &one_instance()).await;
    let mut working = user_session(&gw, "working", "127.0.0.1").await;

    let mut silent = Vec::new();
    for _ in 0..=max {
        silent.push(connect_from("127.0.0.2", &gw).await.unwrap());
    }
    let mut slow = Vec::new();
    for _ in 0..=max {
        slow.push(connect_from("127.0.0.3", &gw).await.unwrap());
    }
    let drip = async {
        for byte in b"SSH-2.0-slowloris" {
            for s in slow.iter_mut() {
                let _ = s.write_all(&[*byte]).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    // Meanwhile users get in, up to max_connections (the working one is
    // the first).
    let users = async {
        let mut users = Vec::new();
        for i in 1..max {
            users.push(user_session(&gw, &format!("user{i}"), "127.0.0.1").await);
        }
        users
    };
    let ((), users) = tokio::join!(drip, users);
    echoes(&mut working, "still-working").await;
    for user in users {
        leave(user).await;
    }
    // Every one of them is closed by the gateway (at the identification
    // deadline; only "before the guard" is asserted).
    for (what, stream) in silent
        .iter_mut()
        .map(|s| ("silent", s))
        .chain(slow.iter_mut().map(|s| ("slowloris", s)))
    {
        assert!(
            closed_by_gateway(stream).await,
            "a {what} client was kept open"
        );
    }
    echoes(&mut working, "after-them").await;
    leave(working).await;
    gw.stop().await;
}

/// One address opening a thousand connections gets
/// `per_source_max_startups` of them; the rest are closed at once, and a
/// user from elsewhere gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_takes_only_its_share() {
    let gw = Gateway::start_with(tempfile::tempdir().unwrap(), 0, DEFAULTS, &one_instance()).await;
    let mut flood = Vec::new();
    for _ in 0..1000 {
        match connect_from("127.0.0.4", &gw).await {
            Ok(s) => flood.push(s),
            // The listen backlog may overflow under the flood: refused is
            // as good as dropped.
            Err(_) => continue,
        }
    }
    // All but its share are closed without a word, at once; its share is
    // held until the identification deadline (10 s). Read them all for 3 s
    // and count those still open.
    let mut reads = tokio::task::JoinSet::new();
    for mut s in flood {
        reads.spawn(async move {
            let mut buf = [0u8; 64];
            let waited = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
            match waited {
                Ok(Ok(0) | Err(_)) => None,
                _ => Some(s),
            }
        });
    }
    let mut open = Vec::new();
    let mut ended = 0;
    while let Some(read) = reads.join_next().await {
        match read.unwrap() {
            Some(s) => open.push(s),
            None => ended += 1,
        }
    }
    assert!(
        open.len() <= 10,
        "{} connections from one address were kept (per_source_max_startups = 10), {ended} closed",
        open.len()
    );
    let user = user_session(&gw, "user", "127.0.0.5").await;
    leave(user).await;
    for s in open.iter_mut() {
        assert!(
            closed_by_gateway(s).await,
            "a flood connection was kept open"
        );
    }
    gw.stop().await;
}

/// Failed logins earn their address a penalty: after three, its new
/// connections are refused before the handshake. A user from another
/// address, and the attacker's own key on a connection from elsewhere,
/// are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brute_force_is_penalised_and_locks_out_no_one_else() {
    let gw = Gateway::start_with(tempfile::tempdir().unwrap(), 0, DEFAULTS, &one_instance()).await;
    let owner = Key::ed25519(gw.dir.path(), "owner");
    let conn = gw.create("vm1", &owner).await;
    let thief = Key::ed25519(gw.dir.path(), "thief");
    let attempt = |source: &str| {
        let argv = outer_w(&gw, &thief, &conn.known_hosts, &conn.id, "vm1:22");
        from_source(argv, source)
    };
    for round in 0..3 {
        let out = ssh_batch(&attempt("127.0.0.6")).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Permission denied"),
            "attempt {round} was not an authentication failure: {err}"
        );
    }
    // Three failures earn 15 s, the point where a penalty is enforced,
    // less the time the attempts took: by the fifth attempt at the latest
    // the address is closed before the handshake.
    let mut penalised = None;
    for round in 3..5 {
        let out = ssh_batch(&attempt("127.0.0.6")).await;
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success());
        if err.contains("Permission denied") {
            continue;
        }
        assert!(
            err.contains("Connection closed") || err.contains("Connection reset"),
            "attempt {round}: {err}"
        );
        penalised = Some(round);
        break;
    }
    assert!(
        penalised.is_some(),
        "five failed logins in a row, and the address may still try"
    );
    let mut raw = connect_from("127.0.0.6", &gw).await.unwrap();
    let mut banner = Vec::new();
    let _ = tokio::time::timeout(GUARD, raw.read_to_end(&mut banner)).await;
    assert!(
        banner.is_empty(),
        "a penalised address was sent {:?}",
        String::from_utf8_lossy(&banner)
    );
    // The owner, from another address, logs in and works.
    let mut term = Terminal::spawn(&from_source(conn.ssh_argv(&owner), "127.0.0.7")).await;
    term.expect("serial console of vm1").await;
    echoes(&mut term, "owner-types").await;
    leave(term).await;
    // The refused attempts were audited; the penalised ones never reached
    // authentication, so they wrote nothing.
    let refused = gw
        .audit(&conn.id)
        .await
        .iter()
        .filter(|r| r["event"] == "refused")
        .count();
    assert!(
        (3..=4).contains(&refused),
        "{refused} refused rows for three or four failed logins"
    );
    gw.stop().await;
}

/// An authenticated client past `max_connections` is told so (it no longer
/// waits in the backlog, holding an unauthenticated place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_an_authenticated_client_is_told_why() {
    let ssh = format!("{DEFAULTS}max_connections = 1\n");
    let gw = Gateway::start_with(tempfile::tempdir().unwrap(), 0, &ssh, &one_instance()).await;
    let first = user_session(&gw, "first", "127.0.0.1").await;
    let key = Key::ed25519(gw.dir.path(), "second");
    let conn = gw.create("vm1", &key).await;
    let out = ssh_batch(&conn.ssh_argv(&key)).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("CG-SSH-005"), "not told why: {err}");
    leave(first).await;
    // With the place free, the same client gets in.
    let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
    term.expect("serial console of vm1").await;
    leave(term).await;
    gw.stop().await;
}

/// What the gateway must not negotiate: SHA-1 RSA signatures, Diffie-Hellman
/// group exchange (not implemented) and group14, MACs that are not
/// encrypt-then-MAC; compression only after authentication. And what it
/// still must: RSA with SHA-2, the larger fixed groups, `-C`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_algorithms_are_refused_and_strong_ones_work() {
    let gw = Gateway::start(&one_instance()).await;
    let rsa = Key::generate(gw.dir.path(), "rsa", "rsa", Some(3072));
    let conn = gw.create("vm1", &rsa).await;
    let run = |opts: &[&str]| {
        let mut argv = outer_w(&gw, &rsa, &conn.known_hosts, &conn.id, "vm1:22");
        for (i, o) in opts.iter().enumerate() {
            argv.insert(1 + i, (*o).to_owned());
        }
        argv
    };
    // Reached the inner hop: its identification came back through -W.
    let reached = |out: &std::process::Output| out.stdout.starts_with(b"SSH-2.0-consolegate");
    let stderr = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();

    let sha1 = ssh_batch(&run(&["-o", "PubkeyAcceptedAlgorithms=ssh-rsa"])).await;
    assert!(!reached(&sha1), "an ssh-rsa (SHA-1) signature was accepted");
    assert!(
        stderr(&sha1).contains("Permission denied"),
        "{}",
        stderr(&sha1)
    );
    for alg in ["rsa-sha2-256", "rsa-sha2-512"] {
        let out = ssh_batch(&run(&["-o", &format!("PubkeyAcceptedAlgorithms={alg}")])).await;
        assert!(reached(&out), "{alg}: {}", stderr(&out));
    }
    for (option, weak, missing) in [
        (
            "KexAlgorithms",
            "diffie-hellman-group-exchange-sha256",
            "key exchange",
        ),
        (
            "KexAlgorithms",
            "diffie-hellman-group14-sha256",
            "key exchange",
        ),
        (
            "KexAlgorithms",
            "diffie-hellman-group14-sha1",
            "key exchange",
        ),
        ("MACs", "hmac-sha2-256", "MAC"),
        ("MACs", "hmac-sha2-512", "MAC"),
        ("MACs", "hmac-sha1", "MAC"),
    ] {
        let mut opts = vec!["-o".to_owned(), format!("{option}={weak}")];
        if option == "MACs" {
            // With an AEAD cipher the MAC is not negotiated at all.
            opts.extend(["-o".to_owned(), "Ciphers=aes128-ctr".to_owned()]);
        }
        let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
        let out = ssh_batch(&run(&opts)).await;
        assert!(!reached(&out), "{weak} was negotiated");
        assert!(
            stderr(&out).contains(&format!("no matching {missing}")),
            "{weak}: {}",
            stderr(&out)
        );
    }
    for strong in [
        ["-o", "KexAlgorithms=diffie-hellman-group16-sha512"],
        ["-o", "KexAlgorithms=curve25519-sha256"],
        ["-o", "MACs=hmac-sha2-256-etm@openssh.com"],
    ] {
        let mut opts = strong.to_vec();
        opts.extend(["-o", "Ciphers=aes256-ctr"]);
        let out = ssh_batch(&run(&opts)).await;
        assert!(reached(&out), "{strong:?}: {}", stderr(&out));
    }
    // -C: compression is negotiated as zlib@openssh.com (from
    // authentication on), never plain zlib.
    let out = ssh_batch(&run(&["-C", "-v"])).await;
    assert!(reached(&out), "-C: {}", stderr(&out));
    assert!(
        stderr(&out).contains("compression: zlib@openssh.com"),
        "{}",
        stderr(&out)
    );
    let out = ssh_batch(&run(&["-o", "Compression=yes", "-o", "Ciphers=aes256-ctr"])).await;
    assert!(reached(&out), "{}", stderr(&out));
    gw.stop().await;
}

/// The inner hop has an authentication deadline too: a client that sends
/// its identification through the outer hop's `-W` stream and then stalls
/// is cut at `handshake_timeout_secs` (10 in the tests), and the outer
/// connection with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_inner_handshake_is_cut_at_the_deadline() {
    let gw = Gateway::start(&one_instance()).await;
    let key = Key::ed25519(gw.dir.path(), "user");
    let conn = gw.create("vm1", &key).await;
    let argv = outer_w(&gw, &key, &conn.known_hosts, &conn.id, "vm1:22");
    let mut child = tokio::process::Command::new("/usr/bin/ssh")
        .args(&argv[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let ended = tokio::time::timeout(GUARD, stdout.read_to_end(&mut seen)).await;
    assert!(
        seen.starts_with(b"SSH-2.0-consolegate"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
    assert!(
        ended.is_ok(),
        "the stalled inner handshake was never cut (stdin still open)"
    );
    drop(stdin);
    gw.stop().await;
}

/// A client that sends its identification and then stalls in the key
/// exchange is cut at `handshake_timeout_secs`, socket and all (russh's
/// session task would otherwise keep waiting for its next packet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalled_in_key_exchange_is_cut_at_the_deadline() {
    let gw = Gateway::start_with(tempfile::tempdir().unwrap(), 0, DEFAULTS, &one_instance()).await;
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from("127.0.0.8", &gw).await.unwrap();
        s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
        stalled.push(s);
    }
    let user = user_session(&gw, "user", "127.0.0.1").await;
    for s in stalled.iter_mut() {
        assert!(
            closed_by_gateway(s).await,
            "a client stalled in key exchange was kept"
        );
    }
    leave(user).await;
    gw.stop().await;
}

/// A refused console session: it is told which cap it passed, and ends.
async fn refused_over_cap(argv: &[String], setting: &str) {
    let mut term = Terminal::spawn(argv).await;
    term.expect("CG-SESS-005").await;
    let rest = term.rest().await;
    assert!(rest.contains(setting), "not told which cap: {rest}");
    term.wait().await;
}

/// One console connection, one key and one instance hold at most their
/// caps of sessions: past each, a session is told CG-SESS-005 and which
/// setting; other connections and keys still get in up to the instance's
/// cap; a place comes back when a session leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_past_a_cap_are_refused_and_others_get_in() {
    let caps = "[session]\nmax_sessions_per_instance = 4\n\
                max_sessions_per_connection = 2\nmax_sessions_per_key = 3\n";
    let instances = format!(
        "{caps}{}{}",
        one_instance(),
        instance("vm2", "simulator", None)
    );
    let gw = Gateway::start_with(tempfile::tempdir().unwrap(), 0, "", &instances).await;
    let shared_key = Key::ed25519(gw.dir.path(), "shared");
    let first = gw.create("vm1", &shared_key).await;
    let mut open = Vec::new();
    for n in 0..2 {
        let mut term = Terminal::spawn(&first.ssh_argv(&shared_key)).await;
        term.expect("serial console of vm1").await;
        echoes(&mut term, &format!("first-{n}")).await;
        open.push(term);
    }
    refused_over_cap(&first.ssh_argv(&shared_key), "max_sessions_per_connection").await;
    // The same key through a connection to another instance: the key's
    // cap is next.
    let second = gw.create("vm2", &shared_key).await;
    let mut term = Terminal::spawn(&second.ssh_argv(&shared_key)).await;
    term.expect("serial console of vm2").await;
    open.push(term);
    refused_over_cap(&second.ssh_argv(&shared_key), "max_sessions_per_key").await;
    // Other keys fill vm1; one more is refused.
    let other = user_session(&gw, "other", "127.0.0.1").await;
    let fourth = user_session(&gw, "fourth", "127.0.0.1").await;
    let late_key = Key::ed25519(gw.dir.path(), "late");
    let late = gw.create("vm1", &late_key).await;
    refused_over_cap(&late.ssh_argv(&late_key), "max_sessions_per_instance").await;
    // The sessions in place kept working through the refusals.
    for (n, term) in open.iter_mut().enumerate() {
        echoes(term, &format!("still-{n}")).await;
    }
    // One of vm1's leaves: its place is free for the late key.
    leave(open.remove(0)).await;
    let mut term = Terminal::spawn(&late.ssh_argv(&late_key)).await;
    term.expect("serial console of vm1").await;
    echoes(&mut term, "late-in").await;
    leave(term).await;
    leave(other).await;
    leave(fourth).await;
    for term in open {
        leave(term).await;
    }
    gw.stop().await;
}

/// A brute force on one real connection id from many addresses (each
/// under its penalty threshold) writes a bounded number of audit rows:
/// the ration's burst, then the rest collapsed into a summary that counts
/// every attempt, written when the gateway stops. The owner still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brute_force_from_many_addresses_writes_a_bounded_audit() {
    let gw = Gateway::start_with(tempfile::tempdir().unwrap(), 0, DEFAULTS, &one_instance()).await;
    let owner = Key::ed25519(gw.dir.path(), "owner");
    let conn = gw.create("vm1", &owner).await;
    let thief = Key::ed25519(gw.dir.path(), "thief");
    let sources: Vec<String> = (10..50).map(|n| format!("127.0.0.{n}")).collect();
    for batch in sources.chunks(8) {
        let attempts = batch.iter().map(|source| {
            let argv = outer_w(&gw, &thief, &conn.known_hosts, &conn.id, "vm1:22");
            let argv = from_source(argv, source);
            async move { ssh_batch(&argv).await }
        });
        for out in futures_util::future::join_all(attempts).await {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("Permission denied"), "{err}");
        }
    }
    let mut term = Terminal::spawn(&from_source(conn.ssh_argv(&owner), "127.0.0.7")).await;
    term.expect("serial console of vm1").await;
    echoes(&mut term, "owner-types").await;
    leave(term).await;
    let refused = |rows: &[serde_json::Value]| -> Vec<serde_json::Value> {
        rows.iter()
            .filter(|r| r["event"] == "refused")
            .cloned()
            .collect()
    };
    let during = refused(&gw.audit(&conn.id).await);
    assert_eq!(during.len(), 10, "the default burst of rows, no more");
    let dir = gw.stop().await;
    let after = refused(
        &audit_rows(
            &dir.path().join("gateway.toml"),
            &["--connection", &conn.id],
        )
        .await,
    );
    assert_eq!(
        after.len(),
        11,
        "one summary of the held attempts at shutdown"
    );
    let summary = after
        .iter()
        .find_map(|r| {
            r["detail"]
                .as_str()
                .filter(|d| d.starts_with("CG-AUTH-009"))
        })
        .expect("a CG-AUTH-009 summary row");
    assert!(
        summary.contains("30 more refused attempts collapsed"),
        "every held attempt is counted: {summary}"
    );
}

/// A thousand half-open connections from twenty addresses, held until the
/// gateway drops them, cost a gateway in its own process nothing it keeps:
/// a user's session echoes throughout, and afterwards its descriptors are
/// back to where they were and its memory within a few MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_leave_no_descriptors_or_memory_behind() {
    let gw = common::served::Served::start(common::served::ServedConfig {
        ssh: DEFAULTS.into(),
        rest: one_instance(),
        ..Default::default()
    })
    .await;
    let key = Key::ed25519(gw.dir.path(), "user");
    let conn = create_connection(&gw.config_path, "vm1", &key, gw.dir.path()).await;
    let mut term = Terminal::spawn(&from_source(conn.ssh_argv(&key), "127.0.0.9")).await;
    term.expect("serial console of vm1").await;
    echoes(&mut term, "before").await;
    let baseline = gw.baseline().await;
    let mut held = Vec::new();
    for n in 0..1000 {
        let source = format!("127.0.1.{}", 1 + n % 20);
        if let Ok(s) = connect_to_from(gw.port, &source).await {
            held.push(s);
        }
    }
    echoes(&mut term, "during").await;
    // Each is closed by the gateway: at once past the per-source share, or
    // at the identification deadline.
    let mut reads = tokio::task::JoinSet::new();
    for mut s in held {
        reads.spawn(async move { closed_by_gateway(&mut s).await });
    }
    while let Some(closed) = reads.join_next().await {
        assert!(closed.unwrap(), "a half-open connection was kept open");
    }
    echoes(&mut term, "after").await;
    gw.settles_back_to(baseline, 8 * 1024).await;
    leave(term).await;
    gw.stop().await;
}

/// A client offering more keys than `max_auth_attempts` (6) on one
/// connection is disconnected at the limit: the keys past it are never
/// tried, and each one tried is one refusal. The client's opening `none`
/// request is one of the six rejections, so five keys are tried and the
/// sixth offer is answered with the disconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_max_auth_attempts_is_disconnected_at_the_limit() {
    let gw = Gateway::start_with(tempfile::tempdir().unwrap(), 0, DEFAULTS, &one_instance()).await;
    let owner = Key::ed25519(gw.dir.path(), "owner");
    let conn = gw.create("vm1", &owner).await;
    let thieves: Vec<Key> = (0..10)
        .map(|n| Key::ed25519(gw.dir.path(), &format!("thief{n}")))
        .collect();
    let mut argv = outer_w(&gw, &thieves[0], &conn.known_hosts, &conn.id, "vm1:22");
    for key in &thieves[1..] {
        argv.splice(1..1, ["-i".to_owned(), key.private.display().to_string()]);
    }
    argv.splice(1..1, ["-v".to_owned()]);
    let out = ssh_batch(&from_source(argv, "127.0.0.11")).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let offered = err.matches("Offering public key").count();
    assert_eq!(offered, 6, "keys offered before the disconnect: {err}");
    assert!(err.contains("Too many authentication attempts"), "{err}");
    let refused = gw
        .audit(&conn.id)
        .await
        .iter()
        .filter(|r| r["event"] == "refused")
        .count();
    assert_eq!(refused, 5, "one refusal per key tried: {err}");
    // The owner's own key still gets in, from another address.
    let mut term = Terminal::spawn(&from_source(conn.ssh_argv(&owner), "127.0.0.12")).await;
    term.expect("serial console of vm1").await;
    leave(term).await;
    gw.stop().await;
}
