use super::*;
use crate::config::SerialTarget;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn instance(serial: SerialTarget, input: InputPolicy) -> InstanceConfig {
    let text = format!("id = \"vm1\"\nserial = \"{serial}\"\n");
    let mut i: InstanceConfig = toml::from_str(&text).unwrap();
    i.input = input;
    i
}

fn who(n: u8, read_only: bool) -> SessionInfo {
    SessionInfo {
        principal: Principal::Key {
            connection_id: format!("ocid1.instanceconsoleconnection.oc1..session{n}"),
            fingerprint: format!("SHA256:key{n}"),
        },
        peer: "127.0.0.1:1".parse().unwrap(),
        read_only,
        force: false,
        disconnect_when_lagging: false,
        via_node: None,
    }
}

async fn next(a: &mut Attachment) -> ConsoleEvent {
    tokio::time::timeout(Duration::from_secs(10), a.recv())
        .await
        .expect("no event within 10 s")
        .expect("queue closed")
}

async fn next_output(a: &mut Attachment) -> Vec<u8> {
    loop {
        if let ConsoleEvent::Output(b) = next(a).await {
            return b.to_vec();
        }
    }
}

async fn next_notice(a: &mut Attachment) -> String {
    loop {
        if let ConsoleEvent::Notice(n) = next(a).await {
            return n;
        }
    }
}

/// A hub whose "machine" listens on loopback: `target` names it from its
/// port; `tweak` changes the instance's settings.
async fn console_on(
    target: impl FnOnce(u16) -> SerialTarget,
    input: InputPolicy,
    tweak: impl FnOnce(&mut InstanceConfig),
) -> (ConsoleHub, TcpListener, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = CancellationToken::new();
    let mut config = instance(target(port), input);
    tweak(&mut config);
    let (hub, _task) = ConsoleHub::start(config, shutdown.clone());
    (hub, listener, shutdown)
}

async fn tcp_console(input: InputPolicy) -> (ConsoleHub, TcpListener, CancellationToken) {
    console_on(|p| SerialTarget::Tcp("127.0.0.1".into(), p), input, |_| {}).await
}

#[tokio::test]
async fn fans_out_replays_and_reconnects() {
    let (hub, listener, shutdown) = tcp_console(InputPolicy::Shared).await;
    let mut a = hub.attach(who(1, false), None).await.unwrap();
    let (mut console, _) = listener.accept().await.unwrap();
    console.write_all(b"boot log\r\n").await.unwrap();
    assert_eq!(next_output(&mut a).await, b"boot log\r\n");

    // A late session gets the replay; both see new output.
    let mut b = hub.attach(who(2, false), None).await.unwrap();
    assert_eq!(b.replay, b"boot log\r\n");
    let c = hub.attach(who(3, false), Some(Replay::None)).await.unwrap();
    assert!(c.replay.is_empty());
    console.write_all(b"login: ").await.unwrap();
    assert_eq!(next_output(&mut a).await, b"login: ");
    assert_eq!(next_output(&mut b).await, b"login: ");

    // Input from any read-write session reaches the console.
    hub.input(b.id, Bytes::from_static(b"root\r"))
        .await
        .unwrap();
    let mut buf = [0u8; 5];
    console.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"root\r");
    let refused = hub.send_break(b.id).await.unwrap_err();
    assert!(matches!(refused, BreakError::Backend(_)), "{refused:?}");
    assert!(refused.to_string().starts_with("CG-BRK-001"), "{refused}");

    // The machine goes away and comes back: sessions are told, and resume.
    drop(console);
    loop {
        if next_notice(&mut a).await.contains("lost") {
            break;
        }
    }
    let (mut console, _) = listener.accept().await.unwrap();
    console.write_all(b"rebooted").await.unwrap();
    assert_eq!(next_output(&mut a).await, b"rebooted");
    shutdown.cancel();
}

#[tokio::test]
async fn exclusive_input_has_one_writer_until_someone_forces() {
    let (hub, listener, shutdown) = tcp_console(InputPolicy::Exclusive).await;
    let mut first = hub.attach(who(1, false), None).await.unwrap();
    let (mut console, _) = listener.accept().await.unwrap();
    assert_eq!(first.role, Role::Writer);
    let mut second = hub.attach(who(2, false), None).await.unwrap();
    assert!(
        matches!(&second.role, Role::ReadOnlyWhile(w) if w.contains("…session1")),
        "{:?}",
        second.role
    );

    hub.input(second.id, Bytes::from_static(b"nope"))
        .await
        .unwrap();
    assert!(next_notice(&mut second).await.contains("read-only"));
    hub.input(first.id, Bytes::from_static(b"yes"))
        .await
        .unwrap();
    let mut buf = [0u8; 3];
    console.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"yes", "the read-only session's input leaked");

    assert_eq!(hub.force(second.id).await.unwrap(), Some(Role::Writer));
    assert!(next_notice(&mut first).await.contains("took write access"));
    hub.input(first.id, Bytes::from_static(b"old"))
        .await
        .unwrap();
    hub.input(second.id, Bytes::from_static(b"new"))
        .await
        .unwrap();
    console.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"new");

    let roles: Vec<_> = hub
        .who()
        .await
        .unwrap()
        .into_iter()
        .map(|w| (w.id, w.role))
        .collect();
    let forced_out = Role::ReadOnlyWhile(format!(
        "session {} (…session2, SHA256:key2, from 127.0.0.1:1)",
        second.id
    ));
    assert_eq!(roles, [(first.id, forced_out), (second.id, Role::Writer)]);

    // A writer that vanishes holds nothing: the next read-write typist writes.
    drop(second);
    let third = hub.attach(who(3, false), None).await.unwrap();
    assert_eq!(third.role, Role::Writer);
    hub.input(third.id, Bytes::from_static(b"3rd"))
        .await
        .unwrap();
    console.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"3rd");
    shutdown.cancel();
}

/// With `allow_force = false`, the writer keeps exclusive access until it
/// leaves: `&F` (and the `force` option) take only free access.
#[tokio::test]
async fn where_forcing_is_not_allowed_the_writer_keeps_its_access() {
    let (hub, listener, shutdown) = console_on(
        |p| SerialTarget::Tcp("127.0.0.1".into(), p),
        InputPolicy::Exclusive,
        |config| config.allow_force = false,
    )
    .await;
    let first = hub.attach(who(1, false), None).await.unwrap();
    let (mut console, _) = listener.accept().await.unwrap();
    assert_eq!(first.role, Role::Writer);
    let second = hub.attach(who(2, false), None).await.unwrap();
    let refused = hub.force(second.id).await.unwrap();
    assert!(
        matches!(&refused, Some(Role::ReadOnlyWhile(w)) if w.contains("…session1")),
        "{refused:?}"
    );
    // The option at attach is refused the same way.
    let mut forcing = who(3, false);
    forcing.force = true;
    let third = hub.attach(forcing, None).await.unwrap();
    assert!(
        matches!(third.role, Role::ReadOnlyWhile(_)),
        "{:?}",
        third.role
    );
    hub.input(second.id, Bytes::from_static(b"no!"))
        .await
        .unwrap();
    hub.input(first.id, Bytes::from_static(b"yes"))
        .await
        .unwrap();
    let mut buf = [0u8; 3];
    console.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"yes", "a session forced its way in");
    // Once the writer leaves, the access is free to take.
    drop(first);
    assert_eq!(hub.force(second.id).await.unwrap(), Some(Role::Writer));
    hub.input(second.id, Bytes::from_static(b"2nd"))
        .await
        .unwrap();
    console.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"2nd");
    drop(third);
    shutdown.cancel();
}

#[tokio::test]
async fn read_only_sessions_never_type() {
    let (hub, listener, shutdown) = tcp_console(InputPolicy::Shared).await;
    let spy = hub.attach(who(1, true), None).await.unwrap();
    let rw = hub.attach(who(2, false), None).await.unwrap();
    let (mut console, _) = listener.accept().await.unwrap();
    hub.input(spy.id, Bytes::from_static(b"spy")).await.unwrap();
    hub.input(rw.id, Bytes::from_static(b"rw!")).await.unwrap();
    let mut buf = [0u8; 3];
    console.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"rw!");
    shutdown.cancel();
}

/// A telnet "machine" behind a hub: unlike a raw TCP one it carries breaks
/// (`IAC BRK`), so a break that gets through shows in what it receives.
async fn telnet_console(input: InputPolicy) -> (ConsoleHub, TcpListener, CancellationToken) {
    console_on(
        |p| SerialTarget::Telnet("127.0.0.1".into(), p),
        input,
        |_| {},
    )
    .await
}

/// Everything the console receives up to and including `end` (typed last).
async fn console_until(console: &mut tokio::net::TcpStream, end: u8) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 256];
        while !got.ends_with(&[end]) {
            let n = console.read(&mut buf).await.unwrap();
            assert!(n > 0, "the hub closed the console");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the console never received the end marker");
    got
}

/// How many breaks (`IAC BRK`) `bytes` carry.
fn breaks(bytes: &[u8]) -> usize {
    bytes
        .windows(2)
        .filter(|w| *w == crate::console::telnet::TelnetCodec::break_sequence())
        .count()
}

#[tokio::test]
async fn a_read_only_session_cannot_send_a_break() {
    let (hub, listener, shutdown) = telnet_console(InputPolicy::Shared).await;
    let spy = hub.attach(who(1, true), None).await.unwrap();
    let rw = hub.attach(who(2, false), None).await.unwrap();
    let (mut console, _) = listener.accept().await.unwrap();
    assert_eq!(spy.role, Role::ReadOnlyAsked);

    // The read-only session is refused, with the read-only code ...
    let refused = hub.send_break(spy.id).await.unwrap_err();
    assert!(matches!(refused, BreakError::ReadOnly), "{refused:?}");
    let text = refused.to_string();
    assert!(text.starts_with("CG-INPUT-001 "), "{text}");
    assert!(text.contains("the break was not sent"), "{text}");
    // ... and a read-write session's break still goes through.
    hub.input(rw.id, Bytes::from_static(b"a")).await.unwrap();
    hub.send_break(rw.id).await.unwrap();
    hub.input(rw.id, Bytes::from_static(b"z")).await.unwrap();

    // Only the one break reached the machine, in order with the typing.
    let got = console_until(&mut console, b'z').await;
    assert_eq!(breaks(&got), 1, "a read-only break leaked: {got:?}");
    assert!(got.ends_with(b"a\xff\xf3z"), "{got:?}");
    shutdown.cancel();
}

#[tokio::test]
async fn only_the_writer_breaks_an_exclusive_console() {
    let (hub, listener, shutdown) = telnet_console(InputPolicy::Exclusive).await;
    let writer = hub.attach(who(1, false), None).await.unwrap();
    let other = hub.attach(who(2, false), None).await.unwrap();
    let (mut console, _) = listener.accept().await.unwrap();
    assert_eq!(writer.role, Role::Writer);
    assert!(
        matches!(other.role, Role::ReadOnlyWhile(_)),
        "{:?}",
        other.role
    );

    // Read-only while another session writes: refused.
    assert!(matches!(
        hub.send_break(other.id).await.unwrap_err(),
        BreakError::ReadOnly
    ));
    hub.input(writer.id, Bytes::from_static(b"1"))
        .await
        .unwrap();
    hub.send_break(writer.id).await.unwrap();
    hub.input(writer.id, Bytes::from_static(b"2"))
        .await
        .unwrap();
    let got = console_until(&mut console, b'2').await;
    assert_eq!(breaks(&got), 1, "a read-only break leaked: {got:?}");
    assert!(got.ends_with(b"1\xff\xf32"), "{got:?}");

    // Once it forces, it holds write access and its break goes through,
    // while the old writer's is refused.
    assert_eq!(hub.force(other.id).await.unwrap(), Some(Role::Writer));
    assert!(matches!(
        hub.send_break(writer.id).await.unwrap_err(),
        BreakError::ReadOnly
    ));
    hub.send_break(other.id).await.unwrap();
    hub.input(other.id, Bytes::from_static(b"3")).await.unwrap();
    let got = console_until(&mut console, b'3').await;
    assert_eq!(got, b"\xff\xf33", "exactly the new writer's break");
    assert!(other.can_write() && !writer.can_write());
    shutdown.cancel();
}

#[tokio::test]
async fn a_stalled_viewer_is_skipped_and_told_what_it_missed() {
    let (hub, listener, shutdown) = tcp_console(InputPolicy::Shared).await;
    let mut stalled = hub.attach(who(1, false), Some(Replay::None)).await.unwrap();
    let mut reader = hub.attach(who(2, false), Some(Replay::None)).await.unwrap();
    let (mut console, _) = listener.accept().await.unwrap();
    const TOTAL: usize = 8 * 1024 * 1024;
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 16 * 1024];
        for _ in 0..TOTAL / chunk.len() {
            console.write_all(&chunk).await.unwrap();
        }
        console
    });
    // The reading viewer gets every byte.
    let mut got = 0;
    while got < TOTAL {
        match next(&mut reader).await {
            ConsoleEvent::Output(b) => got += b.len(),
            ConsoleEvent::Missed(n) => panic!("a reading viewer missed {n} bytes"),
            ConsoleEvent::Notice(_) | ConsoleEvent::Closed(_) => {}
        }
    }
    assert_eq!(got, TOTAL);
    let mut console = writer.await.unwrap();
    // The stalled one catches up: queued output, then how much it missed.
    console.write_all(b"tail").await.unwrap();
    let (mut seen, mut missed) = (0u64, 0u64);
    while seen + missed < TOTAL as u64 + 4 {
        match next(&mut stalled).await {
            ConsoleEvent::Output(b) => seen += b.len() as u64,
            ConsoleEvent::Missed(n) => missed += n,
            ConsoleEvent::Notice(_) | ConsoleEvent::Closed(_) => {}
        }
    }
    assert!(
        missed > 0,
        "nothing was skipped for a viewer that never read"
    );
    assert!(
        seen <= (SESSION_QUEUE as u64 + 1) * 16 * 1024 + 4,
        "queue grew past its bound: {seen}"
    );
    shutdown.cancel();
}

/// A viewer that reads one event every 300 ms (never stalled for a whole
/// grace period) cannot set the console's pace: once it has held the
/// console back for a grace period while taking less than
/// `MIN_DRAIN_RATE`, it is skipped like a stalled one.
#[tokio::test]
async fn a_drip_reading_viewer_is_skipped_not_waited_for() {
    let (hub, listener, shutdown) = tcp_console(InputPolicy::Shared).await;
    let mut drip = hub.attach(who(1, false), Some(Replay::None)).await.unwrap();
    let mut reader = hub.attach(who(2, false), Some(Replay::None)).await.unwrap();
    let (mut console, _) = listener.accept().await.unwrap();
    const CHUNK: usize = 16 * 1024;
    const TOTAL: usize = 4 * 1024 * 1024;
    // Both have read something: the drip viewer counts as reading.
    console.write_all(b"hello").await.unwrap();
    assert_eq!(next_output(&mut drip).await, b"hello");
    assert_eq!(next_output(&mut reader).await, b"hello");
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let dripping = tokio::spawn(async move {
        // One event every 300 ms, until the test has its answer.
        while !stopped.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if drip.events.try_recv().is_ok() {
                drip.progress.store(clock_ms(), Ordering::Relaxed);
            }
        }
        drip
    });
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; CHUNK];
        for _ in 0..TOTAL / CHUNK {
            console.write_all(&chunk).await.unwrap();
        }
        console
    });
    // Waited for at 300 ms a chunk, the rest of the 4 MiB past the drip
    // viewer's queue would take over half a minute; skipped, it is
    // console speed.
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        let mut got = 0;
        while got < TOTAL {
            match next(&mut reader).await {
                ConsoleEvent::Output(b) => got += b.len(),
                ConsoleEvent::Missed(n) => panic!("the reading viewer missed {n} bytes"),
                ConsoleEvent::Notice(_) | ConsoleEvent::Closed(_) => {}
            }
        }
        got
    })
    .await
    .expect("the console ran at the drip-reading viewer's pace");
    assert_eq!(got, TOTAL);
    stop.cancel();
    let mut console = writer.await.unwrap();
    // The drip viewer, reading at full speed now, learns what it missed
    // with the next output.
    let mut drip = dripping.await.unwrap();
    let tail = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        console.write_all(b"tail").await.unwrap();
    };
    let (missed, ()) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let ConsoleEvent::Missed(n) = next(&mut drip).await {
                    return n;
                }
            }
        }),
        tail
    );
    let missed = missed.expect("the drip viewer was never told it missed output");
    assert!(missed > 0);
    shutdown.cancel();
}

#[tokio::test]
async fn lag_disconnect_drops_the_stalled_viewer() {
    let (hub, listener, shutdown) = tcp_console(InputPolicy::Shared).await;
    let mut info = who(1, false);
    info.disconnect_when_lagging = true;
    let mut stalled = hub.attach(info, Some(Replay::None)).await.unwrap();
    let (mut console, _) = listener.accept().await.unwrap();
    let chunk = vec![b'x'; 16 * 1024];
    for _ in 0..(SESSION_QUEUE + 8) {
        console.write_all(&chunk).await.unwrap();
    }
    // The hub drops the session (its queue closes) instead of skipping output.
    tokio::time::timeout(Duration::from_secs(10), async {
        while !stalled.events.is_closed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a lagging lag=disconnect session was kept");
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stalled.events.recv())
            .await
            .unwrap()
        {
            None => break,
            Some(ConsoleEvent::Missed(_)) => panic!("lag=disconnect got a missed-bytes notice"),
            Some(_) => {}
        }
    }
    shutdown.cancel();
}

#[tokio::test]
async fn unreachable_backend_is_reported_not_hung() {
    let shutdown = CancellationToken::new();
    let (hub, _task) = ConsoleHub::start(
        instance(
            SerialTarget::Unix("/nonexistent/console.sock".into()),
            InputPolicy::Shared,
        ),
        shutdown.clone(),
    );
    let mut a = hub.attach(who(1, false), None).await.unwrap();
    let notice = match a.unavailable.take() {
        Some(n) if n.contains("unavailable") => n,
        _ => next_notice(&mut a).await,
    };
    assert!(notice.contains("unavailable"), "{notice}");
    assert!(notice.contains("/nonexistent/console.sock"), "{notice}");
    assert!(matches!(
        hub.send_break(a.id).await.unwrap_err(),
        BreakError::NotConnected
    ));
    shutdown.cancel();
}

/// In a fleet a hub connects only while its node holds the console, and
/// closes the backend at once when the node lets go: its sessions are told
/// the console moved, and a later hold connects again.
#[tokio::test]
async fn connects_only_while_held_and_lets_go_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = CancellationToken::new();
    let (held, held_rx) = watch::channel(false);
    let (hub, task) = ConsoleHub::new(
        instance(
            SerialTarget::Tcp("127.0.0.1".into(), port),
            InputPolicy::Shared,
        ),
        shutdown.clone(),
        held_rx,
    );
    tokio::spawn(task);
    // Not held: no connection, and a session is told why.
    let early = hub.attach(who(1, false), None).await.unwrap();
    assert_eq!(early.unavailable.as_deref(), Some(NOT_HELD));
    let nothing = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(nothing.is_err(), "connected to a console it does not hold");
    drop(early);

    held.send_replace(true);
    let (mut console, _) = listener.accept().await.unwrap();
    let mut a = hub.attach(who(2, false), None).await.unwrap();
    console.write_all(b"held\r\n").await.unwrap();
    assert_eq!(next_output(&mut a).await, b"held\r\n");

    // Let go: the backend closes and the session hears the console moved.
    held.send_replace(false);
    loop {
        match next(&mut a).await {
            ConsoleEvent::Closed(reason) => {
                assert_eq!(reason, MOVED);
                break;
            }
            ConsoleEvent::Output(_) | ConsoleEvent::Notice(_) | ConsoleEvent::Missed(_) => {}
        }
    }
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), console.read(&mut buf))
        .await
        .expect("the backend connection stayed open");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    assert_eq!(
        hub.status().await.unwrap().sessions.len(),
        0,
        "sessions stay attached to a console it let go of"
    );

    // Held again: it connects again.
    held.send_replace(true);
    let (_again, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("no reconnect once held again")
        .unwrap();
    shutdown.cancel();
}
