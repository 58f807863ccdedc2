//! A real gateway, started once per process on loopback ports, for the fuzz
//! targets that speak to its sockets: `ssh_stream` (bytes into the SSH
//! port, as OpenSSH's `regress/misc/fuzz-harness` feeds sshd) and
//! `ws_console` (WebSocket frames into a web serial console).
//!
//! `tests/fuzz_corpus.rs` includes this file too, to replay the corpora of
//! those two targets on the stable toolchain.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// The X-Auth-Token the harness asks Nova for a console URL with.
const NOVA_TOKEN: &str = "fuzz-token";
/// Its SHA-256, as `[[nova_token]]` stores it.
const NOVA_TOKEN_SHA256: &str = "33cc09ba35314d19e32ed9a5a30fca56eebbfab5faec7247fd0403cd26e155b5";
/// How long one input may keep a connection before the harness gives up
/// reading: the gateway closes each one as soon as the input ends.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a gateway's answer one input reads.
const MAX_ANSWER: usize = 1 << 20;
/// Simulated instances the `ws_console` inputs are spread over, and web
/// sockets left to finish in the background at most. An input that sends
/// serial breaks keeps its socket for a quarter of a second per break (the
/// hub lets the line go quiet before each one, `BREAK_QUIET`), and the
/// breaks of one console are sent one at a time; waiting for each socket
/// in turn made those inputs set the pace.
const WS_INSTANCES: usize = 128;

/// The running gateway.
pub struct Live {
    ssh: SocketAddr,
    api: SocketAddr,
    /// `/serial?token=…`: a web serial console of each instance.
    serial_targets: Vec<String>,
    /// Web sockets whose input was sent, oldest first: each is read to its
    /// end once [`WS_INSTANCES`] newer ones are waiting.
    lingering: Mutex<VecDeque<TcpStream>>,
    /// Inputs sent to `ws_console`, to pick the next instance.
    sent: AtomicUsize,
    /// The gateway's directory: its config, and its data (the admin socket).
    dir: tempfile::TempDir,
}

/// The gateway, started on first use.
pub fn live() -> &'static Live {
    static LIVE: OnceLock<Live> = OnceLock::new();
    LIVE.get_or_init(start)
}

fn start() -> Live {
    // In memory where the machine has it: every input writes audit rows,
    // and their fsyncs, not the gateway's code, would set the pace.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("a temporary directory");
    let root = dir.path().to_owned();
    let (ports, bound) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(serve(&root, ports));
    });
    let (ssh, api) = bound.recv().expect("the gateway bound its ports");
    let admin = consolegate::ops::admin::socket_path(&dir.path().join("data"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !admin.exists() {
        assert!(Instant::now() < deadline, "the gateway did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let serial_targets = (0..WS_INSTANCES)
        .map(|i| serial_console_url(api, &instance(i)))
        .collect();
    Live {
        ssh,
        api,
        serial_targets,
        lingering: Mutex::new(VecDeque::new()),
        sent: AtomicUsize::new(0),
        dir,
    }
}

async fn serve(root: &Path, ports: std::sync::mpsc::Sender<(SocketAddr, SocketAddr)>) {
    let ssh = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (ssh_addr, api_addr) = (ssh.local_addr().unwrap(), api.local_addr().unwrap());
    // Loopback is exempt from the per-source limits: every input comes from
    // it, and a refused connection would explore nothing.
    let text = format!(
        "data_dir = \"data\"\n\
         [ssh]\nlisten = \"{ssh_addr}\"\npublic_host = \"127.0.0.1\"\npublic_port = {}\n\
         exempt_sources = [\"127.0.0.1\"]\nmax_startups = \"1000:30:2000\"\n\
         handshake_timeout_secs = 10\n\
         [api]\nlisten = \"{api_addr}\"\nexempt_sources = [\"127.0.0.1\"]\n\
         [session]\nmax_sessions_per_instance = 0\nmax_sessions_per_connection = 0\n\
         max_sessions_per_key = 0\n\
         [nova]\nsingle_use_tokens = false\ntoken_ttl_secs = 604800\n\
         [[nova_token]]\ntoken_sha256 = \"{NOVA_TOKEN_SHA256}\"\nproject = \"fuzz\"\nrole = \"member\"\n",
        ssh_addr.port()
    );
    let mut text = text;
    for i in 0..WS_INSTANCES {
        text.push_str(&format!(
            "[[instance]]\nid = \"{}\"\ncompartment = \"fuzz\"\nserial = \"simulator\"\n",
            instance(i)
        ));
    }
    let path = root.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let config = consolegate::config::Config::load(&path).expect("the harness's config");
    ports.send((ssh_addr, api_addr)).unwrap();
    let listeners = consolegate::gateway::Listeners {
        ssh,
        api,
        metrics: None,
    };
    consolegate::gateway::run(config, listeners, CancellationToken::new())
        .await
        .expect("the gateway failed");
}

/// The id of the harness's instance `i`.
fn instance(i: usize) -> String {
    format!("demo-{i}")
}

/// Asks the Nova API for a serial console URL, as `nova console-url` does.
fn serial_console_url(api: SocketAddr, server: &str) -> String {
    let body = r#"{"remote_console":{"protocol":"serial","type":"serial"}}"#;
    let request = format!(
        "POST /v2.1/servers/{server}/remote-consoles HTTP/1.1\r\nHost: {api}\r\n\
         X-Auth-Token: {NOVA_TOKEN}\r\nOpenStack-API-Version: compute 2.6\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(api).expect("the API port");
    stream.write_all(request.as_bytes()).unwrap();
    let answer = String::from_utf8_lossy(&drain(&mut stream)).into_owned();
    let at = answer
        .find("/serial?token=")
        .unwrap_or_else(|| panic!("no console URL in {answer}"));
    let url = &answer[at..];
    url[..url.find('"').expect("a JSON string")].to_owned()
}

/// Reads until the gateway closes the connection (or the timeout, or
/// `MAX_ANSWER` bytes).
fn drain(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while answer.len() < MAX_ANSWER {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    answer
}

fn connect(to: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(to).expect("the gateway stopped accepting connections");
    stream.set_nodelay(true).unwrap();
    stream
}

/// The bytes of one input as a client's whole stream into the SSH port,
/// identification line included. The gateway must greet every connection
/// and close it when the input ends.
pub fn ssh_stream(data: &[u8]) {
    let mut stream = connect(live().ssh);
    // The gateway may close before the whole input is written.
    let _ = stream.write_all(data);
    let _ = stream.shutdown(Shutdown::Write);
    let answer = drain(&mut stream);
    assert!(
        answer.starts_with(b"SSH-2.0-"),
        "the gateway did not identify itself: {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(200)])
    );
}

/// The bytes of one input as WebSocket frames into a web serial console.
/// The handshake is the harness's, and must succeed every time. The
/// gateway's answer is read later (see [`WS_INSTANCES`]).
pub fn ws_console(data: &[u8]) {
    let live = live();
    let n = live.sent.fetch_add(1, Ordering::Relaxed);
    let serial_target = &live.serial_targets[n % WS_INSTANCES];
    let mut stream = connect(live.api);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        serial_target, live.api
    );
    stream.write_all(request.as_bytes()).unwrap();
    let asked = Instant::now();
    let head = read_head(&mut stream);
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "the upgrade was refused after {:?}: {:?}; input {n}, {} sockets waiting; the gateway: {}",
        asked.elapsed(),
        String::from_utf8_lossy(&head),
        live.lingering.lock().unwrap().len(),
        gateway_state(live)
    );
    let _ = stream.write_all(&frames(data));
    let _ = stream.shutdown(Shutdown::Write);
    let oldest = {
        let mut lingering = live.lingering.lock().unwrap();
        lingering.push_back(stream);
        if lingering.len() > WS_INSTANCES {
            lingering.pop_front()
        } else {
            None
        }
    };
    if let Some(mut oldest) = oldest {
        drain(&mut oldest);
    }
}

/// What the gateway's admin socket says of its tasks and sessions, for a
/// failure's message: whether it was busy, or stuck.
fn gateway_state(live: &Live) -> String {
    let asked = Instant::now();
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(consolegate::ops::admin::status(
                &live.dir.path().join("data"),
            ))
            .map_err(|e| e.to_string())
        });
    match answer {
        Ok(status) => format!(
            "{} runtime tasks, {} sessions, status answered in {:?}",
            status.runtime_tasks,
            status
                .instances
                .iter()
                .map(|i| i.sessions.len())
                .sum::<usize>(),
            asked.elapsed()
        ),
        Err(e) => format!("no status after {:?}: {e}", asked.elapsed()),
    }
}

/// An HTTP response head, up to its empty line.
fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    head
}

/// Client frames from fuzz input: each frame is a head byte (FIN in bit 7,
/// "raw" in bit 6, the opcode from the rest), a length byte and that many
/// payload bytes, masked as a client must. A raw frame's bytes go on the
/// wire as they are: junk, or a frame header of the input's own.
pub fn frames(data: &[u8]) -> Vec<u8> {
    const OPCODES: [u8; 6] = [0x0, 0x1, 0x2, 0x8, 0x9, 0xA];
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = Vec::with_capacity(data.len() * 2);
    let mut rest = data;
    while let Some((&head, tail)) = rest.split_first() {
        let (len, tail) = match tail.split_first() {
            Some((&len, tail)) => (usize::from(len).min(tail.len()), tail),
            None => (0, tail),
        };
        let (payload, after) = tail.split_at(len);
        rest = after;
        if head & 0x40 != 0 {
            out.extend_from_slice(payload);
            continue;
        }
        out.push((head & 0x80) | OPCODES[usize::from(head & 0x3f) % OPCODES.len()]);
        if len < 126 {
            out.push(0x80 | len as u8);
        } else {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
    }
    out
}
