//! Crash safety: a real `consolegate serve` is killed with SIGKILL in the
//! middle of a stream of signed API creates (some with `opc-retry-token`)
//! and deletes, with ssh console sessions attached, and started again on
//! the same data directory; round after round: 50 times on SQLite, and 10
//! times as a node of a fleet on PostgreSQL beside a node that lives on.
//! After each restart:
//!
//! - every create the API answered exists, with the body it was answered
//!   with (a GET, and every page of a list);
//! - no answered delete is ACTIVE again, and every DELETING one becomes
//!   DELETED;
//! - every retry token still replays its connection (one whose create was
//!   never answered too: to one connection, not a conflict), and the same
//!   token with another body is `409 InvalidatedRetryToken`;
//! - the SSH host key files are unchanged, and the real ssh, pinning the
//!   keys of the first answer, still gets in;
//! - the audit rows of the console sessions, as they stood before the
//!   kill, are there, and every session has exactly one Detach row: its
//!   own if it ended, else one the new process wrote at start-up
//!   (CG-OPS-011); never one for a session of another, live, node;
//! - every answered create and delete has exactly one audit row, naming
//!   the API user and their address.
//!
//! Each round's kill moment comes from a seed, printed at the start; set
//! `CONSOLEGATE_CRASH_SEED` to the printed value to replay a run's moments.
//! Without PostgreSQL the fleet part says it skipped (under CI it fails).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::http::Method;
use common::served::{Served, ServedConfig};
use common::signer::{Answer, Signer, create_body, exchange};
use common::*;
use consolegate::audit::{AuditEvent, AuditKind, SessionRef};
use consolegate::store::Store;
use serde_json::{Value, json};

const CONNECTIONS: &str = "/20160918/instanceConsoleConnections";
/// Requests the stream keeps in flight.
const WORKERS: u64 = 4;

/// The seed of `test`'s kill moments: `CONSOLEGATE_CRASH_SEED`, or the clock.
fn seed(test: &str) -> u64 {
    let seed = std::env::var("CONSOLEGATE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: CONSOLEGATE_CRASH_SEED={seed}");
    seed
}

/// splitmix64: deterministic, and enough for picking moments and requests.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The `Host` of the API on local `port`.
fn host(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// The same create with other tags: another request.
fn other_body(body: &[u8]) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(body).unwrap();
    v["freeformTags"] = json!({"retry": "another request"});
    serde_json::to_vec(&v).unwrap()
}

/// `view` without its lifecycle state.
fn stateless(view: &Value) -> Value {
    let mut v = view.clone();
    v.as_object_mut().unwrap().remove("lifecycleState");
    v
}

/// What one request of the stream was, and how (if) it was answered.
#[derive(Debug)]
enum Sent {
    Create {
        body: Vec<u8>,
        token: Option<String>,
        answer: Option<Answer>,
    },
    Delete {
        id: String,
        answer: Option<Answer>,
    },
    /// A create sent again with the token of an answered one.
    Replay {
        id: String,
        answer: Option<Answer>,
    },
}

/// What the stream's requests share: connections to delete, tokens to
/// replay.
#[derive(Default)]
struct Pool {
    /// Answered creates nobody deleted yet.
    live: Vec<String>,
    /// Answered creates with a token: (token, body, id).
    tokens: Vec<(String, Vec<u8>, String)>,
}

/// One stream worker: requests one at a time until `stop`.
async fn worker(
    signer: Arc<Signer>,
    port: u16,
    instance: String,
    pool: Arc<Mutex<Pool>>,
    stop: Arc<AtomicBool>,
    mut rng: Rng,
    tag: String,
) -> Vec<Sent> {
    let mut sent = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let choice = rng.below(10);
        let victim = (5..8).contains(&choice).then(|| {
            let mut p = pool.lock().unwrap();
            let len = p.live.len() as u64;
            (len > 0).then(|| p.live.swap_remove(rng.below(len) as usize))
        });
        let replay = (choice >= 8).then(|| {
            let p = pool.lock().unwrap();
            let len = p.tokens.len() as u64;
            (len > 0).then(|| p.tokens[rng.below(len) as usize].clone())
        });
        if let Some(Some(id)) = victim {
            let target = format!("{CONNECTIONS}/{id}");
            let request = signer.request(Method::DELETE, &target, &host(port), b"");
            let answer = exchange(port, &request).await;
            sent.push(Sent::Delete { id, answer });
        } else if let Some(Some((token, body, id))) = replay {
            let headers = [("opc-retry-token", token.as_str())];
            let request =
                signer.request_with(Method::POST, CONNECTIONS, &host(port), &body, &headers);
            let answer = exchange(port, &request).await;
            sent.push(Sent::Replay { id, answer });
        } else {
            let body = create_body(&instance);
            let token = choice.is_multiple_of(2).then(|| format!("{tag}-{n}"));
            let headers: Vec<(&str, &str)> = token
                .iter()
                .map(|t| ("opc-retry-token", t.as_str()))
                .collect();
            let request =
                signer.request_with(Method::POST, CONNECTIONS, &host(port), &body, &headers);
            let answer = exchange(port, &request).await;
            if let Some(a) = answer.as_ref().filter(|a| a.status == 200) {
                let id = a.json()["id"].as_str().unwrap().to_owned();
                let mut p = pool.lock().unwrap();
                p.live.push(id.clone());
                if let Some(t) = &token {
                    p.tokens.push((t.clone(), body.clone(), id));
                }
            }
            sent.push(Sent::Create {
                body,
                token,
                answer,
            });
        }
    }
    sent
}

/// Where the audit rows are read from, between kills (no connection of
/// the test's is open across one, so each restart recovers on its own).
#[derive(Clone)]
enum AuditSource {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl AuditSource {
    async fn rows(&self) -> Vec<AuditEvent> {
        let store = match self {
            AuditSource::Sqlite(path) => Store::open_sqlite(path).await,
            AuditSource::Postgres(url) => Store::open_postgres(url).await,
        }
        .unwrap();
        let rows = store.list_audit(None, None, 1_000_000).await.unwrap();
        store.close().await;
        rows
    }
}

/// A console session as its rows stood before a kill.
#[derive(Debug, Clone)]
struct SessionSeen {
    attach: AuditEvent,
    /// Its own Detach row, if it had ended.
    detach: Option<i64>,
}

/// Everything the API answered and the audit trail held, over all rounds.
struct Ledger {
    /// Every connection a create (or a replay) answered, with that body.
    created: BTreeMap<String, Value>,
    /// Connections a delete was sent for: whether it was answered.
    deletes: BTreeMap<String, bool>,
    /// Connections seen DELETING, by the round that saw them.
    finishing: BTreeMap<String, u32>,
    /// Console sessions by their audit name.
    sessions: BTreeMap<(String, u64), SessionSeen>,
    /// Sessions of a node that lives on: never closed by another.
    open_elsewhere: BTreeSet<(String, u64)>,
    /// The gateway's host key files.
    host_keys: Vec<(String, Vec<u8>)>,
    /// The host key fingerprints of the first answer.
    fingerprints: (Value, Value),
    /// Stream requests answered, and cut by a kill, for the summary.
    answered: usize,
    unanswered: usize,
}

/// A gateway to crash, the user it serves, and what it answered.
struct Rig {
    gw: Served,
    signer: Arc<Signer>,
    instance: String,
    audit: AuditSource,
    pool: Arc<Mutex<Pool>>,
    ledger: Ledger,
    /// The console connection the sessions use, its key and its answer.
    session_key: Key,
    session_conn: Connection,
}

fn key_name(s: &SessionRef) -> (String, u64) {
    (s.incarnation.clone(), s.number)
}

impl Rig {
    /// A gateway with `instance` (and `settings`: `[store]`, `[cluster]`).
    async fn start(instance: &str, settings: &str) -> Rig {
        let signer = Arc::new(Signer::new());
        let gw = Served::start(ServedConfig {
            ssh: "exempt_sources = [\"127.0.0.1\"]\n".into(),
            rest: format!(
                "{settings}{}{}",
                common::instance(instance, "simulator", None),
                signer.toml()
            ),
            ..Default::default()
        })
        .await;
        let audit = match settings.split_once("url = \"") {
            Some((_, rest)) => AuditSource::Postgres(rest.split('"').next().unwrap().to_owned()),
            None => AuditSource::Sqlite(gw.dir.path().join("data/consolegate.db")),
        };
        let session_key = Key::ed25519(gw.dir.path(), "session");
        let body = serde_json::to_vec(&json!({
            "instanceId": instance,
            "publicKey": std::fs::read_to_string(&session_key.public).unwrap().trim(),
        }))
        .unwrap();
        let request = signer.request(Method::POST, CONNECTIONS, &host(gw.api_port), &body);
        let answer = exchange(gw.api_port, &request).await.unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
        let json = answer.json();
        let session_conn = Connection::from_json(json.clone(), gw.dir.path());
        let host_keys = ["ssh_host_ed25519_key", "ssh_host_rsa_key"]
            .iter()
            .map(|f| {
                let bytes = std::fs::read(gw.dir.path().join("data").join(f)).unwrap();
                (f.to_string(), bytes)
            })
            .collect();
        let ledger = Ledger {
            created: BTreeMap::from([(session_conn.id.clone(), json.clone())]),
            deletes: BTreeMap::new(),
            finishing: BTreeMap::new(),
            sessions: BTreeMap::new(),
            open_elsewhere: BTreeSet::new(),
            host_keys,
            fingerprints: (
                json["serviceHostKeyFingerprint"].clone(),
                json["instanceHostKeyFingerprint"].clone(),
            ),
            answered: 0,
            unanswered: 0,
        };
        Rig {
            gw,
            signer,
            instance: instance.to_owned(),
            audit,
            pool: Arc::new(Mutex::new(Pool::default())),
            ledger,
            session_key,
            session_conn,
        }
    }

    /// A signed request, answered (the gateway is up).
    async fn ask(
        &self,
        method: Method,
        target: &str,
        body: &[u8],
        extra: &[(&str, &str)],
    ) -> Answer {
        let port = self.gw.api_port;
        let request = self
            .signer
            .request_with(method.clone(), target, &host(port), body, extra);
        exchange(port, &request).await.unwrap_or_else(|| {
            panic!(
                "{method} {target} got no answer; log:\n{}",
                self.gw.log_text()
            )
        })
    }

    /// Every connection of compartment `test`, every page, by id.
    async fn list(&self) -> BTreeMap<String, Value> {
        let mut all = BTreeMap::new();
        let mut page: Option<String> = None;
        loop {
            let mut target = format!("{CONNECTIONS}?compartmentId=test&limit=1000");
            if let Some(p) = &page {
                target.push_str(&format!("&page={p}"));
            }
            let answer = self.ask(Method::GET, &target, b"", &[]).await;
            assert_eq!(answer.status, 200, "{answer:?}");
            for item in answer.json().as_array().unwrap() {
                all.insert(item["id"].as_str().unwrap().to_owned(), item.clone());
            }
            match answer.header("opc-next-page") {
                Some(next) => page = Some(next.trim().to_owned()),
                None => return all,
            }
        }
    }

    /// The real ssh on the console: the outer hop's own shell, or (`inner`)
    /// the whole connection string; returns once the console greets.
    async fn attach(&self, inner: bool) -> Terminal {
        let argv = if inner {
            self.session_conn.ssh_argv(&self.session_key)
        } else {
            let mut argv = vec!["ssh".to_owned()];
            argv.extend(client_options(
                &self.session_key,
                &self.session_conn.known_hosts,
            ));
            argv.extend([
                "-p".to_owned(),
                self.gw.port.to_string(),
                format!("{}@127.0.0.1", self.session_conn.id),
            ]);
            argv
        };
        let mut term = Terminal::spawn(&argv).await;
        term.expect(&format!("serial console of {}", self.instance))
            .await;
        term
    }

    /// The audit rows of the sessions of the running process that are not
    /// known yet, once there are `attached` (`ended` of them ended): as
    /// they stand before a kill.
    async fn new_sessions(&mut self, attached: usize, ended: usize) {
        let deadline = Instant::now() + GUARD;
        loop {
            let rows = self.audit.rows().await;
            let fresh: Vec<&AuditEvent> = rows
                .iter()
                .filter(|e| e.event == AuditKind::Attach)
                .filter(|e| e.connection_id.as_deref() == Some(&self.session_conn.id))
                .filter(|e| {
                    let s = e.session.as_ref().expect("an Attach row names its session");
                    !self.ledger.sessions.contains_key(&key_name(s))
                })
                .collect();
            let detach_of = |s: &SessionRef| {
                rows.iter()
                    .find(|d| d.event == AuditKind::Detach && d.session.as_ref() == Some(s))
                    .map(|d| d.id)
            };
            let done = fresh
                .iter()
                .filter(|a| detach_of(a.session.as_ref().unwrap()).is_some())
                .count();
            if fresh.len() == attached && done == ended {
                for a in fresh {
                    let s = a.session.as_ref().unwrap();
                    let seen = SessionSeen {
                        attach: a.clone(),
                        detach: detach_of(s),
                    };
                    self.ledger.sessions.insert(key_name(s), seen);
                }
                return;
            }
            assert!(
                Instant::now() < deadline,
                "expected {attached} new sessions, {ended} ended; rows: {fresh:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One round: sessions attach (one every round, another through the
    /// inner hop every fifth, and every fifth one more that ends by
    /// itself), the stream runs, SIGKILL at the round's moment, restart,
    /// and every check.
    async fn round(&mut self, round: u32, rng: &mut Rng) {
        let mut cut = vec![self.attach(false).await];
        if round.is_multiple_of(5) {
            cut.push(self.attach(true).await);
        }
        let mut ended = 0;
        if round % 5 == 2 {
            let mut leaving = self.attach(false).await;
            leaving.send(b"\r&.").await;
            leaving.expect("bye").await;
            leaving.wait().await;
            ended = 1;
        }
        self.new_sessions(cut.len() + ended, ended).await;

        let kill_after = Duration::from_millis(30 + rng.below(470));
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                tokio::spawn(worker(
                    self.signer.clone(),
                    self.gw.api_port,
                    self.instance.clone(),
                    self.pool.clone(),
                    stop.clone(),
                    Rng::new(rng.next()),
                    format!("r{round}w{w}"),
                ))
            })
            .collect();
        tokio::time::sleep(kill_after).await;
        stop.store(true, Ordering::SeqCst);
        self.gw.kill().await;
        let mut sent = Vec::new();
        for w in workers {
            sent.extend(w.await.unwrap());
        }
        drop(cut);
        self.gw.restart().await;
        self.check(round, sent).await;
    }

    /// Every promise of this file's doc, after a restart.
    async fn check(&mut self, round: u32, sent: Vec<Sent>) {
        // The API answers once the new process serves: its start-up
        // (and the Detach rows it writes) is over.
        let listed = self.list().await;
        let mut this_round = Vec::new();
        let mut tokens = Vec::new();
        for s in &sent {
            match s {
                Sent::Create {
                    body,
                    token,
                    answer,
                } => {
                    let id = answer.as_ref().map(|a| {
                        assert_eq!(a.status, 200, "create: {a:?}");
                        let view = a.json();
                        assert_eq!(view["lifecycleState"], "ACTIVE");
                        assert_eq!(
                            view["serviceHostKeyFingerprint"],
                            self.ledger.fingerprints.0
                        );
                        assert_eq!(
                            view["instanceHostKeyFingerprint"],
                            self.ledger.fingerprints.1
                        );
                        let id = view["id"].as_str().unwrap().to_owned();
                        self.ledger.created.insert(id.clone(), view);
                        this_round.push(id.clone());
                        id
                    });
                    if let Some(token) = token {
                        tokens.push((token.clone(), body.clone(), id));
                    }
                }
                Sent::Delete { id, answer } => {
                    if let Some(a) = answer {
                        assert_eq!(a.status, 204, "delete {id}: {a:?}");
                    }
                    let answered = answer.is_some() || self.ledger.deletes.get(id) == Some(&true);
                    self.ledger.deletes.insert(id.clone(), answered);
                }
                Sent::Replay { id, answer } => {
                    if let Some(a) = answer {
                        assert_eq!(a.status, 200, "replay of {id}: {a:?}");
                        assert_eq!(
                            a.json()["id"],
                            id.as_str(),
                            "a retry token replayed another connection"
                        );
                    }
                }
            }
            let answered = match s {
                Sent::Create { answer, .. }
                | Sent::Delete { answer, .. }
                | Sent::Replay { answer, .. } => answer.is_some(),
            };
            if answered {
                self.ledger.answered += 1;
            } else {
                self.ledger.unanswered += 1;
            }
        }

        // Every answered create, this round's by GET, all by the list.
        for id in &this_round {
            let answer = self
                .ask(Method::GET, &format!("{CONNECTIONS}/{id}"), b"", &[])
                .await;
            assert_eq!(
                answer.status, 200,
                "round {round}: answered create {id} is gone: {answer:?}"
            );
            self.same_as_answered(id, &answer.json());
        }
        for id in self.ledger.created.keys() {
            let view = listed
                .get(id)
                .unwrap_or_else(|| panic!("round {round}: answered create {id} is not listed"));
            self.same_as_answered(id, view);
        }
        // DELETING ones seen a round ago (the lifecycle has had its settle
        // time since) are DELETED; answered deletes stay deleted.
        let mut listed = listed;
        let deadline = Instant::now() + GUARD;
        loop {
            let late: Vec<&String> = self
                .ledger
                .finishing
                .iter()
                .filter(|(id, seen)| **seen < round && listed[*id]["lifecycleState"] != "DELETED")
                .map(|(id, _)| id)
                .collect();
            if late.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: still DELETING: {late:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            listed = self.list().await;
        }
        // All DELETED now; what is DELETING now is checked next round.
        self.ledger.finishing.clear();
        for (id, answered) in &self.ledger.deletes {
            let state = listed[id]["lifecycleState"].as_str().unwrap();
            assert!(
                !*answered || matches!(state, "DELETING" | "DELETED"),
                "round {round}: answered delete of {id} came back {state}"
            );
            if state == "DELETING" {
                self.ledger.finishing.entry(id.clone()).or_insert(round);
            }
        }

        // Retry tokens replay, answered or not, and refuse another body.
        for (token, body, answered) in tokens {
            let headers = [("opc-retry-token", token.as_str())];
            let replay = self.ask(Method::POST, CONNECTIONS, &body, &headers).await;
            assert_eq!(
                replay.status, 200,
                "round {round}: token {token} after the restart: {replay:?}"
            );
            let view = replay.json();
            let id = view["id"].as_str().unwrap().to_owned();
            match &answered {
                Some(first) => {
                    assert_eq!(
                        &id, first,
                        "round {round}: token {token} replayed another connection"
                    );
                    self.same_as_answered(&id, &view);
                }
                None => {
                    // Made now, or by the unanswered create: either way its
                    // connection from now on.
                    assert_eq!(view["lifecycleState"], "ACTIVE");
                    self.ledger.created.insert(id.clone(), view);
                    self.pool.lock().unwrap().live.push(id);
                }
            }
            let other = self
                .ask(Method::POST, CONNECTIONS, &other_body(&body), &headers)
                .await;
            assert_eq!(
                other.status, 409,
                "round {round}: token {token}, another body: {other:?}"
            );
            assert_eq!(other.json()["code"], "InvalidatedRetryToken");
        }

        // The host keys are the same files.
        for (file, bytes) in &self.ledger.host_keys {
            let now = std::fs::read(self.gw.dir.path().join("data").join(file)).unwrap();
            assert!(&now == bytes, "round {round}: {file} changed");
        }

        self.check_audit(round).await;
    }

    /// `view` (GET or list) against what the create answered: the same
    /// body; the same but for its state if a delete was sent for it.
    fn same_as_answered(&self, id: &str, view: &Value) {
        let answered = &self.ledger.created[id];
        match self.ledger.deletes.get(id) {
            None => assert_eq!(view, answered, "{id} is not what the create answered"),
            Some(delete_answered) => {
                assert_eq!(stateless(view), stateless(answered), "{id}");
                let state = view["lifecycleState"].as_str().unwrap();
                let allowed: &[&str] = if *delete_answered {
                    &["DELETING", "DELETED"]
                } else {
                    &["ACTIVE", "DELETING", "DELETED"]
                };
                assert!(allowed.contains(&state), "{id} is {state}");
            }
        }
    }

    /// Every row seen before a kill is there; every session but those of
    /// a node that lives on has exactly one Detach row: its own if it had
    /// one, else the new process's (CG-OPS-011), naming it as its Attach
    /// row does.
    async fn check_audit(&mut self, round: u32) {
        let rows = self.audit.rows().await;
        let by_id: BTreeMap<i64, &AuditEvent> = rows.iter().map(|e| (e.id, e)).collect();
        for (name, seen) in &self.ledger.sessions {
            let attach = by_id
                .get(&seen.attach.id)
                .unwrap_or_else(|| panic!("round {round}: the Attach row of {name:?} is gone"));
            assert_eq!(attach.session, seen.attach.session);
            let detaches: Vec<&&AuditEvent> = by_id
                .values()
                .filter(|e| e.event == AuditKind::Detach && e.session == seen.attach.session)
                .collect();
            assert_eq!(detaches.len(), 1, "round {round}: {name:?}: {detaches:#?}");
            let detach = detaches[0];
            match seen.detach {
                Some(own) => assert_eq!(detach.id, own, "round {round}: {name:?}"),
                None => {
                    let detail = detach.detail.as_deref().unwrap_or_default();
                    assert!(
                        detail.starts_with("CG-OPS-011 "),
                        "round {round}: {detach:?}"
                    );
                    assert_eq!(detach.connection_id, attach.connection_id);
                    assert_eq!(detach.fingerprint, attach.fingerprint);
                    assert_eq!(detach.peer, attach.peer);
                    assert_eq!((detach.bytes_in, detach.duration_ms), (None, None));
                }
            }
        }
        // Every answered create and delete has its row, written in the
        // change's own transaction: one per connection, never repeated by
        // a replay or by a second delete.
        let changes = |kind: AuditKind, id: &str| {
            rows.iter()
                .filter(|e| e.event == kind && e.connection_id.as_deref() == Some(id))
                .inspect(|e| {
                    let detail = e.detail.as_deref().unwrap_or_default();
                    assert!(detail.starts_with("by api user "), "{e:?}");
                    assert!(
                        e.peer
                            .as_deref()
                            .is_some_and(|p| p.starts_with("127.0.0.1:"))
                    );
                })
                .count()
        };
        for id in self.ledger.created.keys() {
            assert_eq!(
                changes(AuditKind::Create, id),
                1,
                "round {round}: the create row of {id}"
            );
        }
        for (id, answered) in &self.ledger.deletes {
            let count = changes(AuditKind::Delete, id);
            assert!(
                count == 1 || (!*answered && count == 0),
                "round {round}: {count} delete rows for {id} (answered: {answered})"
            );
        }
        // No session of any process is left open but those of a node that
        // lives on, and those have no Detach row.
        for attach in rows.iter().filter(|e| e.event == AuditKind::Attach) {
            let s = attach
                .session
                .as_ref()
                .expect("an Attach row names its session");
            let detaches = rows
                .iter()
                .filter(|d| d.event == AuditKind::Detach && d.session.as_ref() == Some(s))
                .count();
            let expected = usize::from(!self.ledger.open_elsewhere.contains(&key_name(s)));
            assert_eq!(detaches, expected, "round {round}: {attach:?}");
        }
    }

    /// After the last round: every answered delete, and every DELETING
    /// one, finishes.
    async fn finish(&mut self) {
        let deadline = Instant::now() + GUARD;
        loop {
            let listed = self.list().await;
            let late: Vec<&String> = self
                .ledger
                .deletes
                .iter()
                .filter(|(id, answered)| {
                    let state = &listed[*id]["lifecycleState"];
                    (**answered && state != "DELETED") || state == "DELETING"
                })
                .map(|(id, _)| id)
                .collect();
            if late.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "still DELETING: {late:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!(
            "{} connections answered, {} deletes answered; {} requests answered, {} cut by the kills; {} sessions",
            self.ledger.created.len(),
            self.ledger.deletes.values().filter(|a| **a).count(),
            self.ledger.answered,
            self.ledger.unanswered,
            self.ledger.sessions.len(),
        );
    }
}

/// Fifty SIGKILLs of a gateway alone on SQLite, each in the middle of the
/// API stream with sessions attached.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_loses_nothing_answered_over_fifty_sigkills() {
    let mut rng = Rng::new(seed("sqlite"));
    let mut rig = Rig::start("vm1", "").await;
    let started = Instant::now();
    for round in 0..50 {
        rig.round(round, &mut rng).await;
    }
    rig.finish().await;
    assert!(
        rig.ledger.answered > 100 && rig.ledger.unanswered > 0,
        "the stream hardly ran: {} answered, {} cut",
        rig.ledger.answered,
        rig.ledger.unanswered
    );
    eprintln!("50 rounds in {:?}", started.elapsed());
    rig.gw.stop().await;
}

/// A node of a fleet on PostgreSQL, SIGKILLed 10 times in the middle
/// of the stream: the same checks, and its restarts close its own sessions
/// only, never the live session of the other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_node_on_postgres_loses_nothing_answered_and_closes_only_its_own_sessions() {
    let Some(url) = postgres_database().await else {
        return;
    };
    let node = |id: &str| {
        format!(
            "[store]\nurl = \"{url}\"\n[cluster]\nnode_id = \"{id}\"\nlisten = \"127.0.0.1:0\"\n\
             heartbeat_secs = 1\nnode_timeout_secs = 2\nlease_secs = 2\n\n"
        )
    };
    let mut rng = Rng::new(seed("fleet on postgres"));
    let mut rig = Rig::start("vm-a", &node("gw-a")).await;
    // Node B lives on, with a session on its own console.
    let b = Rig::start("vm-b", &node("gw-b")).await;
    let b_session = b.attach(false).await;
    let b_rows = {
        let deadline = Instant::now() + GUARD;
        loop {
            let rows = b.audit.rows().await;
            let attach = rows.into_iter().find(|e| {
                e.event == AuditKind::Attach
                    && e.connection_id.as_deref() == Some(&b.session_conn.id)
            });
            if let Some(a) = attach {
                break a;
            }
            assert!(
                Instant::now() < deadline,
                "node B's session has no Attach row"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let b_name = key_name(b_rows.session.as_ref().unwrap());
    assert_eq!(
        b_rows.session.as_ref().unwrap().node_id.as_deref(),
        Some("gw-b")
    );
    rig.ledger.open_elsewhere.insert(b_name.clone());
    for round in 0..10 {
        rig.round(round, &mut rng).await;
    }
    rig.finish().await;
    // Every row of node A's sessions names node A.
    for seen in rig.ledger.sessions.values() {
        assert_eq!(
            seen.attach.session.as_ref().unwrap().node_id.as_deref(),
            Some("gw-a")
        );
    }
    // Node B's session is still on, and its own stop closes it, once.
    let mut b_session = b_session;
    assert!(b_session.running(), "node B's session ended");
    b.gw.stop().await;
    b_session.expect("CG-OPS-001").await;
    let rows = rig.audit.rows().await;
    let detaches: Vec<&AuditEvent> = rows
        .iter()
        .filter(|d| d.event == AuditKind::Detach && d.session == b_rows.session)
        .collect();
    assert_eq!(detaches.len(), 1, "{detaches:#?}");
    assert!(
        detaches[0]
            .detail
            .as_deref()
            .unwrap()
            .starts_with("CG-OPS-001"),
        "{detaches:#?}"
    );
    rig.ledger.open_elsewhere.remove(&b_name);
    rig.check_audit(u32::MAX).await;
    rig.gw.stop().await;
}

#[test]
fn answers_are_whole_or_nothing() {
    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
    assert_eq!(Answer::whole(ok, false).unwrap().body, "{}");
    assert!(Answer::whole(&ok[..ok.len() - 1], false).is_none());
    assert!(Answer::whole(&ok[..ok.len() - 1], true).is_none());
    assert!(Answer::whole(b"HTTP/1.1 204 No Content\r\n\r\n", false).is_some());
    assert!(Answer::whole(b"HTTP/1.1 200 OK\r\ncontent-le", true).is_none());
    assert!(Answer::whole(b"", true).is_none());
}
