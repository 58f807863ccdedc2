//! The serial console through the gateway, driven by the real `ssh` in a pty,
//! using the `connectionString` exactly as `connection create` printed it.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_string_reaches_a_unix_socket_console_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vm1.serial");
    let listener = UnixListener::bind(&socket).unwrap();
    let gw = Gateway::start(&instance(
        "vm1",
        &format!("unix:{}", socket.display()),
        None,
    ))
    .await;
    // The hub connects at start-up, before anyone attaches.
    let (mut console, _) = tokio::time::timeout(GUARD, listener.accept())
        .await
        .unwrap()
        .unwrap();

    let key = Key::ed25519(gw.dir.path(), "user");
    let conn = gw.create("vm1", &key).await;
    assert!(
        conn.connection_string
            .starts_with("ssh -o ProxyCommand='ssh -W %h:%p -p ")
    );
    assert!(conn.connection_string.ends_with("@127.0.0.1' vm1"));

    let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
    term.expect("serial console of vm1").await;
    term.expect("&. at the start of a line to disconnect").await;
    term.expect("&B to send a break").await;

    // Backend -> client.
    console.write_all(b"vm1 login: ").await.unwrap();
    term.expect("vm1 login: ").await;

    // Client -> backend, byte for byte (no local echo in a raw pty session).
    term.send(b"operator\r").await;
    let mut got = [0u8; 9];
    console.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"operator\r");

    // Eight-bit clean both ways.
    let all: Vec<u8> = (0u8..=255).filter(|b| *b != b'&').collect();
    console.write_all(&all).await.unwrap();
    console.write_all(b"END-OF-BYTES").await.unwrap();
    term.expect("END-OF-BYTES").await;

    // `&?` shows help and sends nothing to the console; `&.` disconnects.
    term.send(b"&?").await;
    term.expect("&.  disconnect").await;
    term.send(b"&.").await;
    term.expect("disconnected by escape command").await;
    let status = term.wait().await;
    assert!(status.success(), "ssh exited with {status:?}");

    // Nothing of the escapes reached the console.
    console.write_all(b"x").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        console.read_to_end(&mut rest),
    )
    .await;
    assert!(
        rest.is_empty(),
        "escape bytes leaked to the console: {rest:?}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_walkthrough_on_the_simulator() {
    let gw = Gateway::start(&instance("demo", "simulator", None)).await;
    let key = Key::ed25519(gw.dir.path(), "user");
    let conn = gw.create("demo", &key).await;
    let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
    // The boot log printed before we attached is replayed.
    term.expect("Linux version 6.1.0-consolegate-demo").await;
    term.expect("demo login: ").await;
    term.send(b"root\r").await;
    term.expect("root@demo:~$ ").await;
    term.send(b"uname -r\r").await;
    term.expect("6.1.0-consolegate-demo\r\n").await;
    // A break reaches the machine: Linux answers SysRq `h` with its help.
    term.send(b"\r&B").await;
    term.expect("break sent").await;
    term.send(b"h").await;
    term.expect("sysrq: HELP").await;
    // The escape works only at the start of a line.
    term.send(b"&.").await;
    term.send(b"\r&.").await;
    assert!(term.wait().await.success());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outer_hop_session_is_a_console_shortcut() {
    let gw = Gateway::start(&instance("demo", "simulator", None)).await;
    let key = Key::ed25519(gw.dir.path(), "user");
    let conn = gw.create("demo", &key).await;
    let mut argv = vec!["ssh".to_owned()];
    argv.extend(client_options(&key, &conn.known_hosts));
    argv.extend([
        "-p".to_owned(),
        gw.port.to_string(),
        format!("{}@127.0.0.1", conn.id),
    ]);
    let mut term = Terminal::spawn(&argv).await;
    term.expect("serial console of demo").await;
    term.send(b"\r").await;
    term.expect("login: ").await;
    term.send(b"&.").await;
    assert!(term.wait().await.success());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_share_one_console() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vm.serial");
    let listener = UnixListener::bind(&socket).unwrap();
    let gw = Gateway::start(&instance(
        "vm1",
        &format!("unix:{}", socket.display()),
        None,
    ))
    .await;
    let (mut console, _) = listener.accept().await.unwrap();
    let alice = Key::ed25519(gw.dir.path(), "alice");
    let bob = Key::ed25519(gw.dir.path(), "bob");
    let a = gw.create("vm1", &alice).await;
    let b = gw.create("vm1", &bob).await;
    let mut ta = Terminal::spawn(&a.ssh_argv(&alice)).await;
    let mut tb = Terminal::spawn(&b.ssh_argv(&bob)).await;
    ta.expect("serial console of vm1").await;
    tb.expect("serial console of vm1").await;
    console.write_all(b"shared output\r\n").await.unwrap();
    ta.expect("shared output").await;
    tb.expect("shared output").await;
    ta.send(b"from-a\r").await;
    tb.send(b"from-b\r").await;
    let mut got = vec![0u8; 14];
    console.read_exact(&mut got).await.unwrap();
    let got = String::from_utf8(got).unwrap();
    assert!(
        got.contains("from-a\r") && got.contains("from-b\r"),
        "{got:?}"
    );
    ta.send(b"&.").await;
    tb.send(b"&.").await;
    ta.wait().await;
    tb.wait().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_backend_says_so_instead_of_hanging() {
    let gw = Gateway::start(&instance("vm1", "unix:/nonexistent/vm1.serial", None)).await;
    let key = Key::ed25519(gw.dir.path(), "user");
    let conn = gw.create("vm1", &key).await;
    let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
    term.expect("serial console of vm1").await;
    term.expect("CG-CONS-001 console unix:/nonexistent/vm1.serial is unavailable")
        .await;
    term.send(b"&B").await;
    term.expect("not connected").await;
    term.send(b"&.").await;
    assert!(term.wait().await.success());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_5905_is_the_inner_hop_too() {
    // OCI's PuTTY/plink strings for Windows reach the inner hop on 5905.
    let gw = Gateway::start(&instance("demo", "simulator", None)).await;
    let key = Key::ed25519(gw.dir.path(), "user");
    let conn = gw.create("demo", &key).await;
    let argv: Vec<String> = conn
        .ssh_argv(&key)
        .into_iter()
        .map(|a| a.replace("-W %h:%p", "-W %h:5905"))
        .collect();
    assert!(argv.iter().any(|a| a.contains("-W %h:5905")));
    let mut term = Terminal::spawn(&argv).await;
    term.expect("serial console of demo").await;
    term.send(b"\r&.").await;
    assert!(term.wait().await.success());
    gw.stop().await;
}
