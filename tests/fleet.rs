//! A fleet of three real `consolegate serve` processes on one private
//! PostgreSQL server (tests/postgres/server.sh), reached with the real
//! `/usr/bin/ssh`: any node serves any console, a dead holder's console
//! moves and relayed viewers resume, and the node link takes only nodes of
//! the fleet. Under CI a missing PostgreSQL is a failure, not a skip.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use consolegate::sessions::link::wire::{self, Kind, WireError};
use russh::keys::{HashAlg, PrivateKey, PublicKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;

/// The lease time the test fleets run with (seconds).
const LEASE: u64 = 3;

/// One node: a `consolegate serve` process in a directory of its own.
struct Node {
    id: String,
    dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
    api_port: u16,
    child: Option<Child>,
}

impl Node {
    /// Starts node `id` on the fleet's database `url`, serving `instances`;
    /// its SSH host keys are copied from `keys_from` (nodes behind one
    /// name share them).
    async fn start(id: &str, url: &str, instances: &str, keys_from: Option<&Node>) -> Node {
        Node::start_with(id, url, instances, keys_from, "").await
    }

    /// [`Node::start`], with more `[cluster]` settings (TOML lines).
    async fn start_with(
        id: &str,
        url: &str,
        instances: &str,
        keys_from: Option<&Node>,
        cluster: &str,
    ) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys_from.map(|other| other.dir.path().join("data"));
        node_data_dir(&dir.path().join("data"), keys.as_deref());
        let port = free_port().await;
        let api_port = free_port().await;
        let config = dir.path().join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"data\"\n\
                 [ssh]\nlisten = \"127.0.0.1:{port}\"\npublic_host = \"127.0.0.1\"\n\
                 public_port = {port}\nrevalidate_interval_secs = 600\n\
                 [api]\nlisten = \"127.0.0.1:{api_port}\"\n\
                 [store]\nurl = \"{url}\"\n\
                 [cluster]\nnode_id = \"{id}\"\nlisten = \"127.0.0.1:0\"\n\
                 heartbeat_secs = 1\nnode_timeout_secs = 3\nlease_secs = {LEASE}\n{cluster}\
                 [log]\nlevel = \"consolegate=debug,russh=warn\"\n\n{instances}"
            ),
        )
        .unwrap();
        let mut node = Node {
            id: id.to_owned(),
            config,
            port,
            api_port,
            child: None,
            dir,
        };
        node.run();
        node
    }

    fn run(&mut self) {
        let log = self.dir.path().join("serve.log");
        self.child = Some(spawn_serve(&self.config, &log, &[]));
    }

    /// Waits until the node has its keys and store (its admin socket
    /// exists) and answers SSH.
    async fn ready(&self) {
        let admin = self.dir.path().join("data/admin.sock");
        tokio::time::timeout(GUARD, async {
            while !admin.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("node {} did not start:\n{}", self.id, self.log()));
        let _ = connect_eventually(self.port).await;
    }

    /// Its log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// kill -9: nothing is said, nothing is handed back.
    async fn kill(&mut self) {
        let mut child = self.child.take().expect("not running");
        signal(&child, "KILL");
        let _ = child.wait().await;
    }

    /// SIGTERM, and waits for the process to end.
    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            let _ = tokio::time::timeout(GUARD, child.wait()).await;
        }
    }

    /// `conn`'s ssh command line, pointed at this node.
    fn argv(&self, conn: &Connection, key: &Key, first: &Node) -> Vec<String> {
        self.argv_as(conn, key, first, None)
    }

    fn argv_as(
        &self,
        conn: &Connection,
        key: &Key,
        first: &Node,
        user: Option<&str>,
    ) -> Vec<String> {
        let (from, to) = (first.port.to_string(), self.port.to_string());
        let known = self
            .dir
            .path()
            .join(format!("known_hosts-{}", conn.id.len()));
        std::fs::write(
            &known,
            std::fs::read_to_string(&conn.known_hosts)
                .unwrap()
                .replace(&format!("]:{from} "), &format!("]:{to} ")),
        )
        .unwrap();
        let argv = match user {
            Some(u) => conn.ssh_argv_as(key, u),
            None => conn.ssh_argv(key),
        };
        let old_known = conn.known_hosts.display().to_string();
        argv.iter()
            .map(|arg| {
                arg.replace(&format!(" -p {from} "), &format!(" -p {to} "))
                    .replace(&old_known, &known.display().to_string())
            })
            .collect()
    }

    /// This node's link key (its file in the data directory).
    fn link_key(&self) -> PrivateKey {
        russh::keys::load_secret_key(self.dir.path().join("data/node_link_key"), None).unwrap()
    }
}

/// Starts three nodes on a fresh database, serving `instances`; `None`
/// without PostgreSQL (outside CI).
async fn fleet(instances: &str) -> Option<(String, Vec<Node>)> {
    let url = postgres_database().await?;
    let a = Node::start("gw-a", &url, instances, None).await;
    a.ready().await;
    let b = Node::start("gw-b", &url, instances, Some(&a)).await;
    let c = Node::start("gw-c", &url, instances, Some(&a)).await;
    b.ready().await;
    c.ready().await;
    Some((url, vec![a, b, c]))
}

/// Each node and the consoles `cluster status` says it holds.
async fn holders(config: &Path) -> Vec<(String, String, u64)> {
    cluster_status(config)
        .await
        .iter()
        .map(|n| {
            (
                n["nodeId"].as_str().unwrap().to_owned(),
                n["state"].as_str().unwrap().to_owned(),
                n["consoles"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Waits until exactly one alive node holds the one console, other than
/// `not`: its id.
async fn holder(config: &Path, not: Option<&str>) -> String {
    tokio::time::timeout(GUARD, async {
        loop {
            let nodes = holders(config).await;
            let holding: Vec<_> = nodes.iter().filter(|n| n.2 > 0).collect();
            if let [one] = holding[..]
                && one.1 == "alive"
                && Some(one.0.as_str()) != not
            {
                return one.0.clone();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("no node came to hold the console")
}

/// The node-link address node `id` registered.
async fn link_address(config: &Path, id: &str) -> String {
    cluster_status(config)
        .await
        .iter()
        .find(|n| n["nodeId"] == id)
        .and_then(|n| n["advertise"].as_str())
        .unwrap()
        .to_owned()
}

fn index(nodes: &[Node], id: &str) -> usize {
    nodes.iter().position(|n| n.id == id).unwrap()
}

fn vm1_exclusive() -> String {
    instance("vm1", "simulator", None) + "input = \"exclusive\"\n"
}

/// Sessions through the two nodes that do not hold the console reach it
/// through the holder: the banner and replay, typing and output both ways,
/// one viewer seeing what another typed, exclusive input, `&F` and `&W`
/// across nodes, and the audit naming the node each came through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_serves_the_console_with_the_same_session_rules() {
    let Some((_url, mut nodes)) = fleet(&vm1_exclusive()).await else {
        return;
    };
    let owner = holder(&nodes[0].config, None).await;
    let o = index(&nodes, &owner);
    let others: Vec<usize> = (0..3).filter(|&i| i != o).collect();
    let (y, z) = (others[0], others[1]);
    let key = Key::ed25519(nodes[0].dir.path(), "user");
    let conn = create_connection(&nodes[0].config, "vm1", &key, nodes[0].dir.path()).await;

    let mut first = Terminal::spawn(&nodes[y].argv(&conn, &key, &nodes[0])).await;
    first.expect("serial console of vm1").await;
    first.expect("you hold write access").await;
    // The holder's history, replayed through the relay.
    first.expect("vm1 login: ").await;
    first.send(b"root\r").await;
    first.expect("root@vm1").await;
    first.send(b"echo through-the-link\r").await;
    first.expect("through-the-link\r\n").await;

    // A second viewer on the third node sees what the first types.
    let mut second = Terminal::spawn(&nodes[z].argv(&conn, &key, &nodes[0])).await;
    second.expect("serial console of vm1").await;
    second.expect("read-only").await;
    first.send(b"echo both-see-this\r").await;
    second.expect("both-see-this").await;
    // Exclusive input holds across nodes: the second is read-only ...
    second.send(b"x").await;
    second.expect("CG-INPUT-001").await;
    // ... until it forces, which the first hears about.
    second.send(b"\r&F").await;
    second.expect("you hold write access").await;
    first.expect("CG-INPUT-002").await;
    second.send(b"echo second-writes\r").await;
    first.expect("second-writes").await;
    // &W lists both, with the nodes they came through.
    second.send(b"\r&W").await;
    second.expect("2 session(s) attached").await;
    let listed = second.rest().await;
    for n in [y, z] {
        assert!(
            listed.contains(&format!("via node {}", nodes[n].id)),
            "{listed}"
        );
    }

    // A web console on the third node is relayed the same way.
    let token = console_token(
        &nodes[z].config,
        "vm1",
        consolegate::connections::tokens::ConsoleProtocol::Serial,
    )
    .await;
    let mut web = common::web::Web::new(
        common::web::connect(nodes[z].api_port, &format!("/serial?token={token}")).await,
    );
    web.expect("serial console of vm1").await;
    second.send(b"echo to-the-browser\r").await;
    web.expect("to-the-browser").await;
    web.send("&W").await;
    web.expect("3 session(s) attached").await;
    web.send("&.").await;
    assert!(web.closed_by_server().await);
    first.send(b"\r&.").await;
    first.wait().await;
    second.send(b"\r&.").await;
    second.wait().await;
    // The holder wrote the rows, naming the node each came through.
    let rows = audit_rows(&nodes[o].config, &["--connection", &conn.id]).await;
    let attaches: Vec<String> = rows
        .iter()
        .filter(|r| r["event"] == "attach")
        .map(|r| r["detail"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(attaches.len(), 2, "{rows:#?}");
    let rows = audit_rows(&nodes[o].config, &["--instance", "vm1"]).await;
    let web_through = format!("web serial console through node {}", nodes[z].id);
    assert!(
        rows.iter().any(|r| r["detail"]
            .as_str()
            .unwrap_or_default()
            .contains(&web_through)),
        "{rows:#?}"
    );
    for n in [y, z] {
        let through = format!("through node {}", nodes[n].id);
        assert!(
            attaches.iter().any(|d| d.contains(&through)),
            "{attaches:?}"
        );
    }
    // A console held elsewhere is not down here: status, /readyz, /metrics
    // and doctor on a node that does not hold it say so, and the holder
    // reports it up.
    for (n, held) in [(o, true), (y, false)] {
        let node = &nodes[n];
        let out = run_cli(&node.config, &["status", "--json"]).await;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let vm1 = &status["instances"][0];
        assert_eq!(
            (vm1["held"].as_bool(), vm1["connected"].as_bool()),
            (Some(held), Some(held)),
            "{status}"
        );
        let (code, ready) = readyz(node.api_port).await;
        assert_eq!(code, 200);
        assert_eq!(ready["backends"]["down"], serde_json::json!([]), "{ready}");
        assert_eq!(
            ready["backends"]["heldElsewhere"],
            u64::from(!held),
            "{ready}"
        );
        let (_, metrics) = http_get(node.api_port, "/metrics").await;
        let held_line = format!(
            "consolegate_console_held{{instance=\"vm1\"}} {}",
            u8::from(held)
        );
        assert!(metrics.contains(&held_line), "{metrics}");
        assert_eq!(
            metrics.contains("consolegate_backend_up{instance=\"vm1\"}"),
            held,
            "{metrics}"
        );
        let out = run_cli(&node.config, &["doctor", "--instance", "vm1"]).await;
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            said.contains("held by another node of the fleet"),
            !held,
            "{said}"
        );
    }
    for n in &mut nodes {
        n.stop().await;
    }
}

/// kill -9 the holder while a viewer relayed through another node is
/// attached: within the lease time another node holds the console, and the
/// viewer is told, resumes and types on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_s_console_moves_and_relayed_viewers_resume() {
    let Some((_url, mut nodes)) = fleet(&instance("vm1", "simulator", None)).await else {
        return;
    };
    let owner = holder(&nodes[0].config, None).await;
    let o = index(&nodes, &owner);
    let v = (o + 1) % 3;
    let key = Key::ed25519(nodes[v].dir.path(), "user");
    let conn = create_connection(&nodes[v].config, "vm1", &key, nodes[v].dir.path()).await;
    let mut term = Terminal::spawn(&nodes[v].argv(&conn, &key, &nodes[v])).await;
    term.expect("vm1 login: ").await;
    term.send(b"root\r").await;
    term.expect("root@vm1").await;

    let killed = std::time::Instant::now();
    nodes[o].kill().await;
    term.expect("CG-FLEET-002").await;
    term.expect("console resumed on node").await;
    let waited = killed.elapsed();
    let survivor = &nodes[(o + 2) % 3];
    let new_owner = holder(&survivor.config, Some(&owner)).await;
    assert_ne!(new_owner, owner);
    assert!(
        waited < Duration::from_secs(LEASE * 2 + 5),
        "resumed only after {waited:?}"
    );
    // The new holder's console: a fresh login prompt takes typing.
    term.send(b"\r").await;
    term.expect("login: ").await;
    term.send(b"root\r").await;
    term.send(b"echo after-the-move\r").await;
    term.expect("after-the-move\r\n").await;
    term.send(b"\r&.").await;
    term.wait().await;
    for n in &mut nodes {
        n.stop().await;
    }
}

/// What the holder answered a relay request with: the exit status it
/// sent (`None`: it closed without one) and the screen.
#[derive(Debug)]
struct Answer {
    status: Option<u32>,
    screen: String,
}

/// Opens the node link at `addr` as node `me` with `key`, to `holder`
/// proving `holder_key`, sends `first` as a frame of `kind`, and reads the
/// answer until the holder closes, or until `until` is on the screen.
async fn relay_as(
    addr: &str,
    (me, key): (&str, &PrivateKey),
    (holder, holder_key): (&str, &PublicKey),
    (kind, first): (Kind, &[u8]),
    until: &str,
) -> Result<Answer, WireError> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (tx, mut rx) = wire::dial(tcp, me, key, holder, holder_key).await?;
    tx.send(kind, first).await?;
    let mut answer = Answer {
        status: None,
        screen: String::new(),
    };
    let reading = async {
        while let Ok(Some(frame)) = rx.next().await {
            match frame.kind {
                Kind::Data => answer.screen += &String::from_utf8_lossy(&frame.body),
                Kind::Exit => {
                    answer.status = Some(u32::from_be_bytes(frame.body[..].try_into().unwrap()))
                }
                _ => {}
            }
            if !until.is_empty() && answer.screen.contains(until) {
                break;
            }
        }
    };
    tokio::time::timeout(GUARD, reading)
        .await
        .expect("the holder neither answered nor closed");
    Ok(answer)
}

/// A relay request as a relaying node sends it.
fn relay_request(connection: &str, fingerprint: &str) -> Vec<u8> {
    serde_json::json!({
        "instance_id": "vm1",
        "principal": {"kind": "key", "connection_id": connection, "fingerprint": fingerprint},
        "peer": "192.0.2.1:5555",
        "options": {"replay": null, "read_only": false, "force": false, "disconnect_when_lagging": false},
        "via": "outer hop",
        "cols": 80, "rows": 24, "term": null, "resumed": false
    })
    .to_string()
    .into_bytes()
}

/// The node link takes only nodes of the fleet, by their registered keys;
/// a node gets no session for a connection that is not active, and nothing
/// but a relay request is taken; junk bytes end only the connection that
/// sent them; and a relaying node talks only to the holder it dialled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_link_takes_only_nodes_of_the_fleet_and_is_no_proxy() {
    let Some((_url, mut nodes)) = fleet(&instance("vm1", "simulator", None)).await else {
        return;
    };
    let owner = holder(&nodes[0].config, None).await;
    let o = index(&nodes, &owner);
    let other = (o + 1) % 3;
    let third = (o + 2) % 3;
    let link = link_address(&nodes[0].config, &owner).await;
    let holder_key = nodes[o].link_key().public_key().clone();
    let to_holder = (owner.as_str(), &holder_key);
    // A request that a node of the fleet gets a session for.
    let key = Key::ed25519(nodes[o].dir.path(), "user");
    let conn = create_connection(&nodes[o].config, "vm1", &key, nodes[o].dir.path()).await;
    let good = relay_request(&conn.id, conn.json["fingerprint"].as_str().unwrap());
    let greeting = "serial console of vm1";

    // A stranger's key, under a real node's name or any other: the holder
    // closes the link without a word.
    let stranger = PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519).unwrap();
    for name in [nodes[other].id.as_str(), "gw-z", &owner] {
        let answer = relay_as(
            &link,
            (name, &stranger),
            to_holder,
            (Kind::Request, &good),
            greeting,
        )
        .await;
        assert!(
            matches!(&answer, Ok(a) if a.status.is_none() && a.screen.is_empty()),
            "a stranger was answered as {name}: {answer:?}"
        );
    }
    // A real node's key under another node's name: the same.
    let swapped = (nodes[third].id.as_str(), &nodes[other].link_key());
    let answer = relay_as(&link, swapped, to_holder, (Kind::Request, &good), greeting).await;
    assert!(
        matches!(&answer, Ok(a) if a.status.is_none() && a.screen.is_empty()),
        "node keys are interchangeable: {answer:?}"
    );
    // The holder's log names the key that was shown, for the runbook's check.
    let log = nodes[o].log();
    assert!(log.contains("CG-FLEET-005"));
    let shown = stranger
        .public_key()
        .fingerprint(HashAlg::Sha256)
        .to_string();
    assert!(log.contains(&shown), "the refusal does not name {shown}");

    // A relaying node talks only to the node it dialled, by its key.
    let me = (nodes[other].id.as_str(), &nodes[other].link_key());
    let impostor_key = nodes[third].link_key().public_key().clone();
    for claimed in [
        (owner.as_str(), &impostor_key),
        (nodes[third].id.as_str(), &holder_key),
    ] {
        let answer = relay_as(&link, me, claimed, (Kind::Request, &good), greeting).await;
        assert!(
            matches!(answer, Err(WireError::NotThePeer(_))),
            "a relaying node accepted the wrong holder: {answer:?}"
        );
    }

    // Junk bytes, and an SSH client: that connection ends; the node serves on.
    for junk in [
        pseudo_random_bytes(4096, 7),
        b"SSH-2.0-OpenSSH_9.2\r\n"
            .iter()
            .copied()
            .chain(pseudo_random_bytes(4096, 9))
            .collect(),
    ] {
        let mut s = tokio::net::TcpStream::connect(&link).await.unwrap();
        let _ = s.write_all(&junk).await;
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(GUARD, s.read_to_end(&mut sink)).await;
        assert!(closed.is_ok(), "the node link kept a junk connection open");
    }

    // The real node, by its key: only for relay requests it may serve.
    let fake = "ocid1.instanceconsoleconnection.oc1..aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    for (request, what) in [
        (
            relay_request(fake, "SHA256:x"),
            "a connection that does not exist",
        ),
        (relay_request(&conn.id, "SHA256:x"), "another key's session"),
        (b"{not json".to_vec(), "junk"),
    ] {
        let answer = relay_as(&link, me, to_holder, (Kind::Request, &request), "")
            .await
            .unwrap();
        assert_eq!(answer.status, Some(2), "{what}: {answer:?}");
        assert!(!answer.screen.contains(greeting), "{what}: {answer:?}");
    }
    // Keystrokes, or a second hello, before any request: the link ends.
    for kind in [Kind::Data, Kind::Hello, Kind::Exit] {
        let answer = relay_as(&link, me, to_holder, (kind, &good), "")
            .await
            .unwrap();
        assert!(
            answer.status.is_none() && answer.screen.is_empty(),
            "{kind:?}: {answer:?}"
        );
    }
    // The same node with the good request: greeted.
    let answer = relay_as(&link, me, to_holder, (Kind::Request, &good), greeting)
        .await
        .unwrap();
    assert!(answer.screen.contains(greeting), "{answer:?}");

    // After all that, a session through the other node still works.
    let key = Key::ed25519(nodes[other].dir.path(), "user");
    let conn = create_connection(&nodes[other].config, "vm1", &key, nodes[other].dir.path()).await;
    let mut term = Terminal::spawn(&nodes[other].argv(&conn, &key, &nodes[other])).await;
    term.expect(greeting).await;
    term.send(b"\r&.").await;
    term.wait().await;
    for n in &mut nodes {
        n.stop().await;
    }
}

/// A gateway alone (no `[cluster] node_id`) whose store stops answering
/// cannot re-check its sessions' records: with `store_lost =
/// "end-sessions"` they end after `store_lost_secs`, told CG-STORE-003;
/// with `"keep"` they stay. Once the store is back, users get in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_alone_ends_sessions_it_cannot_recheck_unless_told_to_keep_them() {
    let Some(url) = postgres_database().await else {
        return;
    };
    for policy in ["end-sessions", "keep"] {
        let (path, proxied) = StorePath::to(&url).await;
        let config = format!(
            "[store]\nurl = \"{proxied}\"\n\
             [cluster]\nstore_lost = \"{policy}\"\nstore_lost_secs = 2\n{}",
            instance("vm1", "simulator", None)
        );
        let gw = Gateway::start_with(tempfile::tempdir().unwrap(), 0, "", &config).await;
        let key = Key::ed25519(gw.dir.path(), "user");
        let conn = gw.create("vm1", &key).await;
        let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
        term.expect("vm1 login: ").await;
        path.cut();
        if policy == "end-sessions" {
            term.expect("CG-STORE-003").await;
            term.wait().await;
        } else {
            // Well past store_lost_secs: still attached, still typing.
            tokio::time::sleep(Duration::from_secs(6)).await;
            assert!(term.running(), "a kept session ended");
            term.send(b"kept\x03").await;
            term.expect("kept").await;
        }
        path.restore();
        let mut again = Terminal::spawn(&conn.ssh_argv(&key)).await;
        again.expect("vm1 login: ").await;
        again.send(b"\r&.").await;
        again.wait().await;
        if policy == "keep" {
            term.send(b"\r&.").await;
            term.wait().await;
        }
        gw.stop().await;
    }
}

/// A TCP proxy to PostgreSQL that a test can cut (every connection
/// dropped, new ones refused) and restore: a node losing its store.
struct StorePath {
    addr: String,
    open: Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl StorePath {
    async fn to(url: &str) -> (StorePath, String) {
        let target = target_of(url);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (is_open, cuts) = (open.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !is_open.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let target = target.clone();
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        let proxied = url.replacen(&target_of(url), &addr, 1);
        (StorePath { addr, open, cut }, proxied)
    }

    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn target_of(url: &str) -> String {
    let rest = url.split_once('@').map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap().to_owned()
}

/// A node that cannot reach its store for longer than `store_lost_secs`
/// ends its console sessions (`end-sessions`, the default) or keeps them
/// (`keep`), says which in its log, and in the audit trail once the store
/// answers again; kept sessions resume when it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_its_store_ends_or_keeps_its_sessions_as_configured() {
    let Some(url) = postgres_database().await else {
        return;
    };
    for policy in ["end-sessions", "keep"] {
        let (path, proxied) = StorePath::to(&url).await;
        assert_ne!(proxied, url, "{}", path.addr);
        let instances = instance("vm1", "simulator", None);
        let lost = format!("store_lost = \"{policy}\"\nstore_lost_secs = 1\n");
        let mut node =
            Node::start_with(&format!("gw-{policy}"), &proxied, &instances, None, &lost).await;
        node.ready().await;
        holder(&node.config, None).await;
        let key = Key::ed25519(node.dir.path(), "user");
        let conn = create_connection(&node.config, "vm1", &key, node.dir.path()).await;
        let mut term = Terminal::spawn(&node.argv(&conn, &key, &node)).await;
        term.expect("vm1 login: ").await;

        path.cut();
        if policy == "end-sessions" {
            term.expect("CG-FLEET-006 this gateway node lost its database")
                .await;
            term.wait().await;
            assert!(
                node.log().contains("store_lost = \"end-sessions\""),
                "{}",
                node.log()
            );
        } else {
            // Kept past the store-lost time and the lease: told the console
            // is let go of, but attached.
            term.expect("CG-FLEET-002").await;
            tokio::time::sleep(Duration::from_secs(LEASE + 2)).await;
            assert!(term.running(), "a kept session ended");
            assert!(
                node.log().contains("store_lost = \"keep\""),
                "{}",
                node.log()
            );
        }
        path.restore();
        if policy == "keep" {
            term.expect("console resumed on node").await;
            term.send(b"\r").await;
            term.expect("login: ").await;
            term.send(b"\r&.").await;
            term.wait().await;
        }
        // The audit row, once the store answers again.
        let row = tokio::time::timeout(GUARD, async {
            loop {
                let rows = audit_rows(&node.config, &[]).await;
                let mine = |r: &&serde_json::Value| {
                    r["event"] == "store-lost"
                        && r["detail"].as_str().unwrap_or_default().contains(&node.id)
                };
                if let Some(r) = rows.iter().find(mine) {
                    return r.clone();
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
        .await
        .expect("no store-lost audit row");
        let detail = row["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("store_lost = \"{policy}\"")),
            "{detail}"
        );
        node.stop().await;
    }
}

/// Two processes configured with one node_id: the second waits for the
/// first to go quiet, then refuses to start; a process whose name another
/// takes over stops at its next heartbeat. Either way two processes never
/// hold one node's consoles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_id_runs_in_one_process_only() {
    let Some(url) = postgres_database().await else {
        return;
    };
    let instances = instance("vm1", "simulator", None);
    let mut first = Node::start("gw-same", &url, &instances, None).await;
    first.ready().await;
    holder(&first.config, None).await;
    let mut second = Node::start("gw-same", &url, &instances, Some(&first)).await;
    let status = tokio::time::timeout(GUARD, second.child.as_mut().unwrap().wait())
        .await
        .expect("a second process under a live node's name kept running")
        .unwrap();
    assert!(!status.success());
    assert!(second.log().contains("CG-FLEET-007"), "{}", second.log());
    assert!(first.child.as_mut().unwrap().try_wait().unwrap().is_none());

    // Another process takes the name over (as one would after the first
    // went quiet): the first learns it and stops, holding nothing.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(
        "UPDATE nodes SET incarnation = 'usurper', last_seen = $1 WHERE node_id = 'gw-same'",
    )
    .bind(i64::MAX / 2)
    .execute(&pool)
    .await
    .unwrap();
    let status = tokio::time::timeout(GUARD, first.child.as_mut().unwrap().wait())
        .await
        .expect("a process whose name was taken kept running")
        .unwrap();
    assert!(!status.success());
    assert!(first.log().contains("CG-FLEET-007"), "{}", first.log());
    // It handed its console back on the way out.
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM console_leases WHERE expires_at > CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(held, 0);
    pool.close().await;
    first.child = None;
    second.child = None;
}

/// The example fleet (examples/fleet: three node configs and haproxy.cfg,
/// on free ports and the tests' PostgreSQL) behind the real HAProxy: one
/// connection string reaches the console whichever node HAProxy picks, and
/// the API answers through its HTTP frontend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_fleet_behind_haproxy_serves_one_connection_string_from_every_node() {
    let Some(url) = postgres_database().await else {
        return;
    };
    let Some(haproxy) = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no haproxy: apt-get install haproxy"
        );
        eprintln!("SKIPPED: no haproxy");
        return;
    };
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet");
    let dir = tempfile::tempdir().unwrap();
    // Every port the example names, and a free one for each.
    let mut ports = Vec::new();
    for port in [
        2222, 8080, 2201, 2202, 2203, 8181, 8182, 8183, 7101, 7102, 7103,
    ] {
        ports.push((
            format!("127.0.0.1:{port}"),
            format!("127.0.0.1:{}", free_port().await),
        ));
    }
    let public_port = ports[0].1.rsplit(':').next().unwrap().to_owned();
    let localise = |text: String| {
        let mut text = text
            .replace("postgres://consolegate@127.0.0.1:55432/consolegate", &url)
            .replace(
                "public_port = 2222",
                &format!("public_port = {public_port}"),
            );
        for (from, to) in &ports {
            text = text.replace(from, to);
            // Health checks name the API port alone.
            let (from_port, to_port) = (from.rsplit(':').next(), to.rsplit(':').next());
            if let (Some(f), Some(t)) = (from_port, to_port) {
                text = text.replace(&format!("check port {f}"), &format!("check port {t}"));
            }
        }
        text
    };
    let haproxy_cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &haproxy_cfg,
        localise(std::fs::read_to_string(example.join("haproxy.cfg")).unwrap()),
    )
    .unwrap();
    let mut nodes = Vec::new();
    for n in ["a", "b", "c"] {
        let config = dir.path().join(format!("node-{n}.toml"));
        std::fs::write(
            &config,
            localise(std::fs::read_to_string(example.join(format!("node-{n}.toml"))).unwrap()),
        )
        .unwrap();
        let data = dir.path().join("run").join(n);
        let first = dir.path().join("run/a");
        node_data_dir(&data, (n != "a").then_some(first.as_path()));
        let log = dir.path().join(format!("node-{n}.log"));
        nodes.push(spawn_serve(&config, &log, &[]));
        let admin = data.join("admin.sock");
        tokio::time::timeout(GUARD, async {
            while !admin.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("an example node did not start");
    }
    let config_a = dir.path().join("node-a.toml");
    let owner = holder(&config_a, None).await;
    let mut balancer = tokio::process::Command::new(haproxy)
        .arg("-f")
        .arg(&haproxy_cfg)
        .arg("-db")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(
            std::fs::File::create(dir.path().join("haproxy.log")).unwrap(),
        ))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The API through HAProxy's HTTP frontend.
    let api_port: u16 = ports[1].1.rsplit(':').next().unwrap().parse().unwrap();
    let _ = connect_eventually(api_port).await;
    let (status, _) = http_get(api_port, "/readyz").await;
    assert_eq!(status, 200);

    // Three sessions at once through HAProxy's SSH port (leastconn): one
    // connection string, three nodes, one console.
    let key = Key::ed25519(dir.path(), "user");
    let conn = create_connection(&config_a, "demo", &key, dir.path()).await;
    assert!(
        conn.connection_string
            .contains(&format!("-p {public_port} ")),
        "{}",
        conn.connection_string
    );
    let mut terms = Vec::new();
    for _ in 0..3 {
        let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
        term.expect("serial console of demo").await;
        terms.push(term);
    }
    let owner_config = dir.path().join(format!("{}.toml", owner));
    let rows = audit_rows(&owner_config, &["--connection", &conn.id]).await;
    let mut through: Vec<String> = rows
        .iter()
        .filter(|r| r["event"] == "attach")
        .map(|r| {
            let detail = r["detail"].as_str().unwrap_or_default();
            detail
                .split("through node ")
                .nth(1)
                .and_then(|rest| rest.split(',').next())
                .unwrap_or(&owner)
                .to_owned()
        })
        .collect();
    through.sort();
    assert_eq!(through, ["node-a", "node-b", "node-c"], "{rows:#?}");
    for mut term in terms {
        term.send(b"\r&.").await;
        term.wait().await;
    }
    let _ = balancer.kill().await;
    for mut node in nodes {
        signal(&node, "TERM");
        let _ = tokio::time::timeout(GUARD, node.wait()).await;
    }
}

/// A node that (re)joins gets its share back: the console its name
/// prefers, held meanwhile by the node that was alone, moves to it once
/// idle (after four lease times), and the other nodes' consoles stay put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_takes_its_share_of_idle_consoles() {
    let Some(url) = postgres_database().await else {
        return;
    };
    let ids = ["gw-p", "gw-q"];
    let instances = instance("vm1", "simulator", None);
    let preferred = consolegate::fleet::preferred(&ids, "vm1");
    let other = ids.iter().copied().find(|&i| i != preferred).unwrap();
    // The other node first: alone, it takes the console.
    let mut first = Node::start(other, &url, &instances, None).await;
    first.ready().await;
    assert_eq!(holder(&first.config, None).await, other);
    let mut joining = Node::start(preferred, &url, &instances, Some(&first)).await;
    joining.ready().await;
    let moved = tokio::time::timeout(Duration::from_secs(LEASE * 4 + 20), async {
        loop {
            let nodes = holders(&first.config).await;
            if nodes.iter().any(|n| n.0 == preferred && n.2 == 1) {
                return nodes;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await
    .expect("the joining node never got its console");
    assert!(moved.iter().any(|n| n.0 == other && n.2 == 0), "{moved:?}");
    first.stop().await;
    joining.stop().await;
}

/// A delete through one node's OCI API (the stock oci CLI) ends a session
/// relayed through another node within seconds, and the id then gets no
/// one in through any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_through_one_node_s_api_ends_the_session_on_another() {
    let Some(bin) = common::oci::oci_cli() else {
        return;
    };
    let user = common::oci::ApiUser::new();
    let instances = user.toml() + &instance("vm1", "simulator", None);
    let Some((_url, mut nodes)) = fleet(&instances).await else {
        return;
    };
    let owner = holder(&nodes[0].config, None).await;
    let o = index(&nodes, &owner);
    let (b, c) = ((o + 1) % 3, (o + 2) % 3);
    let oci = user.oci(
        bin,
        nodes[c].dir.path(),
        format!("http://127.0.0.1:{}", nodes[c].api_port),
    );
    let key = Key::ed25519(nodes[c].dir.path(), "user");
    let created = oci.create("vm1", &key.public).await;
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    let out = run_cli(&nodes[c].config, &["connection", "get", &id]).await;
    let conn = Connection::from_json(
        serde_json::from_slice(&out.stdout).unwrap(),
        nodes[c].dir.path(),
    );
    let mut term = Terminal::spawn(&nodes[b].argv(&conn, &key, &nodes[c])).await;
    term.expect("serial console of vm1").await;

    let asked = std::time::Instant::now();
    oci.run(&["delete", "--instance-console-connection-id", &id, "--force"])
        .await;
    term.expect("has been deleted").await;
    term.wait().await;
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the session ended {took:?} after the delete"
    );
    for n in 0..3 {
        let out = ssh_batch(&nodes[n].argv(&conn, &key, &nodes[c])).await;
        assert!(
            !out.status.success(),
            "node {} let a deleted id in",
            nodes[n].id
        );
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("Permission denied"), "{said}");
    }
    for n in &mut nodes {
        n.stop().await;
    }
}

/// A recorded node-link session replayed byte for byte gets nothing: the
/// holder's key exchange is fresh each time, so the replayed
/// authentication and relay request never count, and nothing attaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_node_link_handshake_gets_nothing() {
    let Some((_url, mut nodes)) = fleet(&instance("vm1", "simulator", None)).await else {
        return;
    };
    let owner = holder(&nodes[0].config, None).await;
    let o = index(&nodes, &owner);
    let b = (o + 1) % 3;
    let link = link_address(&nodes[0].config, &owner).await;
    let key = Key::ed25519(nodes[o].dir.path(), "user");
    let conn = create_connection(&nodes[o].config, "vm1", &key, nodes[o].dir.path()).await;
    let fingerprint = conn.json["fingerprint"].as_str().unwrap().to_owned();

    // A recording proxy in front of the holder's node link.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap().to_string();
    let recorded = Arc::new(std::sync::Mutex::new(Vec::new()));
    let tape = recorded.clone();
    let target = link.clone();
    tokio::spawn(async move {
        let (client, _) = proxy.accept().await.unwrap();
        let server = tokio::net::TcpStream::connect(&target).await.unwrap();
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let up = async {
            let mut buf = [0u8; 4096];
            loop {
                let n = match tokio::io::AsyncReadExt::read(&mut cr, &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                tape.lock().unwrap().extend_from_slice(&buf[..n]);
                if sw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        };
        let down = tokio::io::copy(&mut sr, &mut cw);
        let _ = tokio::join!(up, down);
    });

    // A real relay by node b, recorded on the way.
    let b_key = nodes[b].link_key();
    let holder_key = nodes[o].link_key().public_key().clone();
    let request = relay_request(&conn.id, &fingerprint);
    let answer = relay_as(
        &proxy_addr,
        (&nodes[b].id, &b_key),
        (&owner, &holder_key),
        (Kind::Request, &request),
        "serial console of vm1",
    )
    .await
    .unwrap();
    assert!(
        answer.screen.contains("serial console of vm1"),
        "{answer:?}"
    );
    let attaches =
        |rows: Vec<serde_json::Value>| rows.iter().filter(|r| r["event"] == "attach").count();
    let rows = audit_rows(&nodes[o].config, &["--connection", &conn.id]).await;
    assert_eq!(attaches(rows), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let authenticated = |log: &str| log.matches("node link authenticated").count();
    let before = authenticated(&nodes[o].log());
    assert!(
        before >= 1,
        "the recorded session's authentication is not in the log"
    );

    // The same bytes again, straight to the holder.
    let tape = recorded.lock().unwrap().clone();
    assert!(tape.len() > 300, "recorded only {} bytes", tape.len());
    let mut replay = tokio::net::TcpStream::connect(&link).await.unwrap();
    let _ = replay.write_all(&tape).await;
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(
        GUARD,
        tokio::io::AsyncReadExt::read_to_end(&mut replay, &mut sink),
    )
    .await;
    assert!(closed.is_ok(), "the holder kept a replayed connection open");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        authenticated(&nodes[o].log()),
        before,
        "a replayed handshake authenticated"
    );
    let rows = audit_rows(&nodes[o].config, &["--connection", &conn.id]).await;
    assert_eq!(attaches(rows), 1, "a replayed relay request attached");
    for n in &mut nodes {
        n.stop().await;
    }
}
