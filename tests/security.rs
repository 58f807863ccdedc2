//! DESIGN.md's security invariants against the real OpenSSH client: only the
//! record's key, only the record's instance console and VNC display, deleted
//! connections stop working, hostile clients do not hurt anyone else.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn two_instances() -> String {
    instance("vm1", "simulator", None) + &instance("vm2", "simulator", None)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A good session that must keep working while others misbehave.
async fn attach_good_session(gw: &Gateway, name: &str) -> Terminal {
    let key = Key::ed25519(gw.dir.path(), name);
    let conn = gw.create("vm1", &key).await;
    let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
    term.expect("serial console of vm1").await;
    term
}

fn assert_stderr(out: &std::process::Output, expected: &str) {
    assert!(
        stderr(out).contains(expected),
        "expected {expected:?} in: {}",
        stderr(out)
    );
}

async fn leave(mut term: Terminal) {
    term.send(b"\r&.").await;
    term.wait().await;
}

async fn still_works(term: &mut Terminal, marker: &str) {
    // The simulator echoes what is typed at its login prompt.
    term.send(format!("{marker}\x03").as_bytes()).await;
    term.expect(marker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_registered_key_gets_in_on_either_hop() {
    let gw = Gateway::start(&two_instances()).await;
    let mut good = attach_good_session(&gw, "good").await;
    let alice = Key::ed25519(gw.dir.path(), "alice");
    let mallory = Key::ed25519(gw.dir.path(), "mallory");
    let conn = gw.create("vm1", &alice).await;

    // Wrong key on the outer hop.
    let argv = argv_with_options(&conn.connection_string, &mallory, &alice, &conn.known_hosts);
    let out = ssh_batch(&argv).await;
    assert!(!out.status.success());
    assert_stderr(&out, "Permission denied (publickey)");

    // Right key outside, wrong key on the inner hop.
    let argv = argv_with_options(&conn.connection_string, &alice, &mallory, &conn.known_hosts);
    let out = ssh_batch(&argv).await;
    assert!(!out.status.success());
    assert_stderr(&out, "Permission denied (publickey)");

    // Unknown connection id, and junk user names.
    for user in [
        "ocid1.instanceconsoleconnection.oc1..aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "root",
        "a%20b",
    ] {
        let out = ssh_batch(&outer_w(&gw, &alice, &conn.known_hosts, user, "vm1:22")).await;
        assert!(
            stderr(&out).contains("Permission denied (publickey)"),
            "{user}: {}",
            stderr(&out)
        );
    }

    // Another instance's connection id with this instance's key does not
    // open this instance: a key is bound to its record only.
    let bob = Key::ed25519(gw.dir.path(), "bob");
    let vm2 = gw.create("vm2", &bob).await;
    let out = ssh_batch(&outer_w(&gw, &alice, &conn.known_hosts, &vm2.id, "vm2:22")).await;
    assert_stderr(&out, "Permission denied (publickey)");

    still_works(&mut good, "still-here-1").await;
    leave(good).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_channel_leads_anywhere_but_the_record_instance() {
    // A real service the gateway could be abused to reach.
    let bystander = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bystander_port = bystander.local_addr().unwrap().port();
    let gw = Gateway::start(&two_instances()).await;
    let mut good = attach_good_session(&gw, "good").await;
    let alice = Key::ed25519(gw.dir.path(), "alice");
    let conn = gw.create("vm1", &alice).await;

    let gateway_port = gw.port.to_string();
    let forbidden = [
        "vm2:22".to_owned(),   // another instance
        "vm2:5900".to_owned(), // another instance's VNC
        "vm1:23".to_owned(),   // another port
        "vm1:80".to_owned(),
        format!("127.0.0.1:{bystander_port}"), // another host
        format!("localhost:{bystander_port}"),
        "localhost:5900".to_owned(), // localhost is the instance only on the inner hop
        format!("127.0.0.1:{gateway_port}"), // the gateway itself
    ];
    for target in &forbidden {
        let out = ssh_batch(&outer_w(&gw, &alice, &conn.known_hosts, &conn.id, target)).await;
        assert!(!out.status.success(), "{target} was allowed");
        assert!(
            stderr(&out).contains("administratively prohibited"),
            "{target}: {}",
            stderr(&out)
        );
    }

    // On the inner hop: a local forward to anything but the VNC display.
    let local = free_port().await;
    let mut argv = conn.ssh_argv(&alice);
    let dest = argv.pop().unwrap();
    argv.extend([
        "-N".to_owned(),
        "-L".to_owned(),
        format!("127.0.0.1:{local}:127.0.0.1:{bystander_port}"),
        dest,
    ]);
    let mut tunnel = tokio::process::Command::new("/usr/bin/ssh")
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut probe = connect_eventually(local).await;
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(GUARD, probe.read(&mut buf))
        .await
        .expect("forward neither refused nor closed");
    assert!(matches!(n, Ok(0) | Err(_)), "forwarded data arrived");
    tunnel.kill().await.unwrap();
    let out = tunnel.wait_with_output().await.unwrap();
    assert_stderr(&out, "administratively prohibited");
    // Nothing ever reached the bystander.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), bystander.accept())
            .await
            .is_err(),
        "the gateway connected to a bystander"
    );

    // Remote forwarding is refused too.
    let mut argv = outer_w(&gw, &alice, &conn.known_hosts, &conn.id, "vm1:22");
    argv.retain(|a| a != "-W" && a != "vm1:22");
    argv.splice(
        1..1,
        [
            "-o".to_owned(),
            "ExitOnForwardFailure=yes".to_owned(),
            "-N".to_owned(),
            "-R".to_owned(),
            "0:127.0.0.1:1".to_owned(),
        ],
    );
    let out = ssh_batch(&argv).await;
    assert_stderr(&out, "remote port forwarding failed");

    still_works(&mut good, "still-here-2").await;
    leave(good).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_connection_ends_its_sessions_and_its_id() {
    let gw = Gateway::start(&two_instances()).await;
    let mut good = attach_good_session(&gw, "good").await;
    let alice = Key::ed25519(gw.dir.path(), "alice");
    let conn = gw.create("vm1", &alice).await;
    let mut term = Terminal::spawn(&conn.ssh_argv(&alice)).await;
    term.expect("serial console of vm1").await;

    // Deleted by another process (the CLI), not by the gateway itself.
    let out = gw.cli(&["connection", "delete", &conn.id]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deleted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(deleted["lifecycleState"], "DELETED");

    // The live session is closed (the gateway re-checks every second here;
    // GUARD only stops a hung test).
    term.expect("CG-AUTH-003 console connection").await;
    term.expect("has been deleted").await;
    let status = term.wait().await;
    assert!(!status.success());

    // And the id no longer authenticates.
    let out = ssh_batch(&conn.ssh_argv(&alice)).await;
    assert_stderr(&out, "Permission denied (publickey)");

    still_works(&mut good, "still-here-3").await;
    leave(good).await;
    gw.stop().await;
}

/// Reads `stream` until the gateway ends it: end of stream, or a reset (a
/// socket closed with unread input is reset). Fails if the gateway still
/// holds it open when the guard time runs out, or if it ends otherwise.
async fn refused(what: &str, stream: &mut TcpStream) {
    let mut sink = Vec::new();
    let read = tokio::time::timeout(GUARD, stream.read_to_end(&mut sink))
        .await
        .unwrap_or_else(|_| panic!("the gateway kept the {what} connection open for {GUARD:?}"));
    match read {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            ) => {}
        Err(e) => panic!("the {what} connection ended neither closed nor reset: {e}"),
    }
}

/// Writes hostile bytes. The gateway may close the connection part way
/// through (the write then fails, which is what we want), but it must not
/// stall the writer past the guard time.
async fn write_hostile(what: &str, stream: &mut TcpStream, bytes: &[u8]) {
    let written = tokio::time::timeout(GUARD, stream.write_all(bytes)).await;
    assert!(
        written.is_ok(),
        "the gateway neither read nor closed the {what} connection within {GUARD:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_do_not_disturb_others() {
    // Each hostile connection must be closed by the gateway before GUARD
    // runs out. Junk, a liar and a giant break the protocol and are
    // refused for it (at once, in practice). Silent clients break nothing
    // and are held until the handshake deadline: the harness sets
    // `handshake_timeout_secs = 10`, well inside GUARD, so they too must be
    // seen closed before the guard expires. Only "closed before the guard"
    // is asserted, never how fast.
    let gw = Gateway::start(&two_instances()).await;
    let mut good = attach_good_session(&gw, "good").await;

    // Pure junk instead of an SSH identification.
    let mut junk = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let bytes = pseudo_random_bytes(256 * 1024, 0x9e37_79b9);
    write_hostile("junk", &mut junk, &bytes).await;
    refused("junk", &mut junk).await;

    // A valid identification followed by garbage packets.
    let mut liar = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    liar.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
    write_hostile("liar", &mut liar, &[0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 0]).await;
    write_hostile("liar", &mut liar, &bytes[..4096]).await;
    refused("liar", &mut liar).await;

    // A packet claiming to be enormous.
    let mut giant = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    giant
        .write_all(b"SSH-2.0-x\r\n\x7f\xff\xff\xff\x04")
        .await
        .unwrap();
    refused("giant", &mut giant).await;

    // The session that was working all along still works.
    still_works(&mut good, "still-here-4").await;

    // Clients that connect and say nothing, holding sockets open.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap());
    }

    // Meanwhile a new, well-behaved user gets in.
    let key = Key::ed25519(gw.dir.path(), "late");
    let conn = gw.create("vm2", &key).await;
    let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
    term.expect("serial console of vm2").await;
    term.send(b"\r&.").await;
    assert!(term.wait().await.success());

    // The silent clients are dropped at the handshake deadline (10 s, see
    // above), every one of them.
    for socket in &mut idle {
        refused("silent", socket).await;
    }

    still_works(&mut good, "still-here-5").await;
    leave(good).await;
    gw.stop().await;
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// Every directory and file under `dir` (itself included) that group or
/// others may use, with its mode.
fn open_to_others(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u32)> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(path) = todo.pop() {
        let mode = mode_of(&path);
        if mode & 0o077 != 0 {
            found.push((path.clone(), mode));
        }
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                todo.push(entry.unwrap().path());
            }
        }
    }
    found
}

/// The data directory of a running gateway holds its host keys, and its
/// database holds the instances' private host keys (in the `-wal` and
/// `-shm` files too); recordings and console logs hold what was typed and
/// shown. All of it is owner-only while the gateway runs, whatever the
/// umask (the tests run with the usual 022).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_gateways_files_are_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let probe = dir.path().join("umask-probe");
    std::fs::write(&probe, b"").unwrap();
    if mode_of(&probe) & 0o077 == 0 {
        eprintln!("NOTE: the umask is already owner-only; this test proves little here");
    }
    let gw = Gateway::start_in(
        dir,
        0,
        &format!(
            "{}log_file = \"{}\"\nrecord = \"output+input\"\nrecord_dir = \"{}\"\n",
            instance("vm1", "simulator", None).trim_end().to_owned() + "\n",
            data.join("logs/vm1.log").display(),
            data.join("recordings").display()
        ),
    )
    .await;
    let mut term = attach_good_session(&gw, "user").await;
    term.send(b"\r").await;
    term.expect("vm1 login: ").await;
    term.send(b"root\r").await;
    term.expect("root@vm1:~$ ").await;
    // While the session runs: its recording is open, the database in use.
    for name in [
        "ssh_host_ed25519_key",
        "ssh_host_rsa_key",
        "consolegate.db",
        "consolegate.db-wal",
        "consolegate.db-shm",
        "logs/vm1.log",
        "recordings/vm1",
    ] {
        assert!(data.join(name).exists(), "no {name} in {}", data.display());
    }
    let exposed = open_to_others(&data);
    assert!(
        exposed.is_empty(),
        "open to other users: {:?}",
        exposed
            .iter()
            .map(|(p, m)| format!("{} {m:04o}", p.display()))
            .collect::<Vec<_>>()
    );
    leave(term).await;
    gw.stop().await;
}

/// A data directory made by an older version or restored carelessly is
/// made owner-only when the gateway starts, each fix logged with
/// CG-DISK-002, and the gateway serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_open_to_others_is_made_owner_only_at_start_with_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let gw = Gateway::start(&instance("vm1", "simulator", None)).await;
    let dir = gw.stop().await;
    let data = dir.path().join("data");
    let loosen = |name: &str, mode: u32| {
        std::fs::set_permissions(data.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    loosen("", 0o755);
    loosen("ssh_host_ed25519_key", 0o644);
    loosen("ssh_host_rsa_key", 0o640);
    loosen("consolegate.db", 0o644);
    let port = free_port().await;
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n[ssh]\nlisten = \"127.0.0.1:{port}\"\n[api]\nlisten = \"127.0.0.1:0\"\n\n{}",
            instance("vm1", "simulator", None)
        ),
    )
    .unwrap();
    let log = dir.path().join("serve.log");
    let mut child = spawn_serve(&config, &log, &[]);
    let admin = data.join("admin.sock");
    tokio::time::timeout(GUARD, async {
        while !admin.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the gateway did not start");
    let exposed = open_to_others(&data);
    assert!(exposed.is_empty(), "still open to other users: {exposed:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    for name in ["ssh_host_ed25519_key", "ssh_host_rsa_key", "consolegate.db"] {
        let path = data.join(name).display().to_string();
        assert!(
            text.lines()
                .any(|l| l.contains("CG-DISK-002") && l.contains(&path)),
            "no CG-DISK-002 line for {path} in:\n{text}"
        );
    }
    signal(&child, "TERM");
    tokio::time::timeout(GUARD, child.wait())
        .await
        .expect("the gateway did not stop")
        .unwrap();
}
