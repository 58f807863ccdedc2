//! Attacks on a real gateway's HTTP listener (`consolegate serve` in a
//! process of its own) while a real user works: an ssh console session that
//! keeps echoing, and signed API calls from 127.0.0.1 that keep being
//! answered. Attackers come from other loopback addresses (127.0.0.2 and
//! up), as they would from other hosts. After each attack the gateway's
//! descriptors come back to what they were, its memory grew within a
//! bound, and the records made before it are all there.
//!
//! Also here: HTTPS on the listener (the stock oci CLI, a rustls client, a
//! WebSocket console over TLS, plain HTTP refused), the signed `host`
//! check, and what a refused request leaves in the log.

#[path = "hostile_http/clients.rs"]
mod clients;
mod common;

use std::time::Duration;

use axum::http::Method;
use clients::*;
use common::served::{Served, ServedConfig, Vitals};
use common::signer::Signer;
use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How much the gateway's resident memory may grow over an attack (and
/// the user's work meanwhile), in KiB: what stays allocated for buffers
/// and tasks the allocator keeps, not a per-connection cost.
const RSS_SLACK_KIB: u64 = 32 * 1024;

const NOVA_TOKEN: &str = "hostile-http-nova-token";
const OCI_PATH: &str = "/20160918/instanceConsoleConnections";

/// The gateway's config for these tests: one simulated instance, the
/// signer, a Nova token, and `api` settings.
fn config(signer: &Signer, api: &str) -> ServedConfig {
    let nova_hash = consolegate::connections::tokens::token_hash(NOVA_TOKEN);
    ServedConfig {
        api: api.to_owned(),
        rest: format!(
            "{}{}[[nova_token]]\ntoken_sha256 = \"{nova_hash}\"\nproject = \"test\"\nrole = \"member\"\n\n",
            instance("vm1", "simulator", None),
            signer.toml(),
        ),
        ..ServedConfig::default()
    }
}

/// A signed list of the `test` compartment from 127.0.0.1, as the user's
/// tools send it.
async fn user_lists(served: &Served, signer: &Signer) -> Answer {
    let host = format!("127.0.0.1:{}", served.api_port);
    let request = signer.request(
        Method::GET,
        &format!("{OCI_PATH}?compartmentId=test"),
        &host,
        b"",
    );
    exchange(
        connect_from("127.0.0.1", served.api_port).await.unwrap(),
        &request,
    )
    .await
}

/// The user at work: a console session over ssh from 127.0.0.1, echoing.
struct Working {
    term: Terminal,
    connection: String,
}

impl Working {
    async fn start(served: &Served) -> Working {
        let key = Key::ed25519(served.dir.path(), "worker");
        let conn = create_connection(&served.config_path, "vm1", &key, served.dir.path()).await;
        let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
        term.expect("serial console of vm1").await;
        let mut working = Working {
            term,
            connection: conn.id,
        };
        working.echoes("hello").await;
        working
    }

    /// The simulator echoes what is typed at its login prompt.
    async fn echoes(&mut self, marker: &str) {
        self.term.send(format!("{marker}\x03").as_bytes()).await;
        self.term.expect(marker).await;
    }

    /// Leaves, and checks nothing of its record or audit trail was lost.
    async fn leave(mut self, served: &Served) {
        self.term.send(b"\r&.").await;
        assert!(self.term.wait().await.success());
        let out = served.cli(&["connection", "get", &self.connection]).await;
        assert!(
            out.status.success(),
            "the user's connection record is gone: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows = audit_rows(&served.config_path, &["--connection", &self.connection]).await;
        for event in ["attach", "detach"] {
            assert!(
                rows.iter().any(|r| r["event"] == event),
                "no {event} row: {rows:#?}"
            );
        }
    }
}

/// What the gateway holds once the user works and is quiet.
async fn baseline(served: &Served) -> Vitals {
    served.baseline().await
}

/// Waits for the gateway's descriptors to come back to `before`, and
/// checks its memory grew within [`RSS_SLACK_KIB`].
async fn settle(served: &Served, before: Vitals) {
    served.settles_back_to(before, RSS_SLACK_KIB).await;
    let after = served.vitals();
    eprintln!(
        "vitals: {} KiB and {} descriptors before, {} KiB and {} after",
        before.rss_kib, before.fds, after.rss_kib, after.fds
    );
}

/// Header slowloris from two addresses, and clients that say nothing, are
/// cut at `header_read_timeout_secs` without an answer; an idle
/// keep-alive connection is closed at `keepalive_timeout_secs`. Meanwhile
/// the user's API calls are answered and the console echoes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_slowloris_and_silent_clients_are_cut_while_the_user_works() {
    let signer = Signer::new();
    let served = Served::start(config(
        &signer,
        "header_read_timeout_secs = 3\nkeepalive_timeout_secs = 4\n",
    ))
    .await;
    let mut working = Working::start(&served).await;
    assert_eq!(user_lists(&served, &signer).await.status, 200);
    let before = baseline(&served).await;

    let mut slow = tokio::task::JoinSet::new();
    for source in ["127.0.0.2", "127.0.0.3"] {
        for _ in 0..25 {
            let stream = connect_from(source, served.api_port).await.unwrap();
            slow.spawn(header_slowloris(stream));
        }
    }
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(connect_from("127.0.0.4", served.api_port).await.unwrap());
    }
    // An idle keep-alive: one request answered, then nothing.
    let mut idle = idle_keepalive("127.0.0.5", served.api_port)
        .await
        .expect("a keep-alive was not served");

    // The user, meanwhile.
    for round in 0..3 {
        assert_eq!(user_lists(&served, &signer).await.status, 200);
        working.echoes(&format!("during-{round}")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    while let Some(outcome) = slow.join_next().await {
        match outcome.unwrap() {
            None => panic!("a header slowloris was kept open"),
            Some(got) => assert!(
                got.is_empty(),
                "a header slowloris was answered {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    for s in silent.iter_mut() {
        closed_unanswered(s)
            .await
            .unwrap_or_else(|e| panic!("a silent client was {e}"));
    }
    closed_unanswered(&mut idle)
        .await
        .unwrap_or_else(|e| panic!("an idle keep-alive was {e}"));
    let (_, metrics) = http_get(served.api_port, "/metrics").await;
    let header_cuts = metric(
        &metrics,
        "consolegate_http_closed_total{reason=\"header_timeout\"}",
    );
    assert!(header_cuts >= 60.0, "{header_cuts} header timeouts");
    assert!(
        metric(
            &metrics,
            "consolegate_http_closed_total{reason=\"idle_timeout\"}"
        ) >= 1.0
    );

    assert_eq!(user_lists(&served, &signer).await.status, 200);
    working.echoes("after").await;
    settle(&served, before).await;
    working.leave(&served).await;
}

/// The value of one series in `/metrics` text (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Opens `total` idle keep-alives, round robin over `sources`, and checks
/// that the gateway closes older ones to make room: of those opened, at
/// most `held` stay open (allowing for closes in flight while more are
/// opened), and the gateway never holds more than `held` (plus slack)
/// descriptors over `before`. Returns the ones still open.
async fn crowd(
    served: &Served,
    sources: &[String],
    total: usize,
    held: usize,
    before: Vitals,
) -> Vec<TcpStream> {
    let mut open = Vec::new();
    for i in 0..total {
        let source = &sources[i % sources.len()];
        let s = idle_keepalive(source, served.api_port)
            .await
            .unwrap_or_else(|| panic!("keep-alive {i} from {source} was not served"));
        open.push(s);
        if open.len() > held + 8 || i + 1 == total {
            let still = tokio::time::timeout(GUARD, async {
                loop {
                    open.retain(still_open);
                    if open.len() <= held {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
            assert!(
                still.is_ok(),
                "{} keep-alives stay open after {} were opened (at most {held} may)",
                open.len(),
                i + 1
            );
        }
        if i % 200 == 0 {
            let now = served.vitals();
            assert!(
                now.fds <= before.fds + held + 16,
                "the gateway holds {} descriptors ({} before the crowd)",
                now.fds,
                before.fds
            );
        }
    }
    open
}

/// Two thousand idle keep-alive connections from one address hold at
/// most `max_connections_per_source` (32) at a time, and two thousand
/// more from 64 addresses at most `max_connections` (512): the one that
/// waited longest makes room for each new one. The user's signed calls
/// are answered meanwhile (the listener full) and the console echoes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_keepalives_are_capped_and_the_user_is_answered() {
    let signer = Signer::new();
    let served = Served::start(config(&signer, "")).await;
    let mut working = Working::start(&served).await;
    assert_eq!(user_lists(&served, &signer).await.status, 200);
    let before = baseline(&served).await;

    let one = crowd(&served, &["127.0.0.2".to_owned()], 2000, 32, before).await;
    assert_eq!(user_lists(&served, &signer).await.status, 200);
    working.echoes("after-one-source").await;
    drop(one);
    settle(&served, before).await;

    let sources: Vec<String> = (1..=64).map(|i| format!("127.0.1.{i}")).collect();
    let many = crowd(&served, &sources, 2000, 512, before).await;
    // Full: the user's calls and console still work.
    for round in 0..3 {
        assert_eq!(user_lists(&served, &signer).await.status, 200);
        working.echoes(&format!("among-many-{round}")).await;
    }
    let (_, metrics) = http_get(served.api_port, "/metrics").await;
    assert!(metric(&metrics, "consolegate_http_open_connections") <= 512.0);
    assert!(
        metric(
            &metrics,
            "consolegate_http_closed_total{reason=\"evicted\"}"
        ) >= 1000.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "consolegate_http_closed_total{reason=\"evicted_per_source\"}"
        ) >= 1900.0
    );
    drop(many);
    settle(&served, before).await;
    assert!(
        served.log_text().contains("CG-HTTP-001") && served.log_text().contains("CG-HTTP-002"),
        "the limits were not logged"
    );
    let warnings = served
        .log_text()
        .lines()
        .filter(|l| l.contains("CG-HTTP-00"))
        .count();
    assert!(warnings <= 10, "{warnings} warnings: the log was flooded");
    working.leave(&served).await;
}

fn nova_head(port: u16) -> String {
    format!(
        "POST /v2.1/servers/vm1/remote-consoles HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\
         x-auth-token: {NOVA_TOKEN}\r\nx-openstack-nova-api-version: 2.6\r\n\
         content-type: application/json\r\n"
    )
}

/// A chunked body past `max_body_bytes` is refused with 413 as soon as it
/// passes the limit (its last chunk is never sent), on the OCI API and on
/// the Nova API (in Nova's error shape), and nothing is stored; a chunked
/// body within the limit works. Forty at once leave no trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_is_refused_early_and_nothing_is_stored() {
    let signer = Signer::new();
    let served = Served::start(config(&signer, "")).await;
    let mut working = Working::start(&served).await;
    let before = baseline(&served).await;
    let port = served.api_port;

    let oci_head = format!(
        "POST {OCI_PATH} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
    );
    let s = connect_from("127.0.0.2", port).await.unwrap();
    let oci = chunked_over(s, &oci_head, 80 * 1024).await;
    assert_eq!(oci.status, 413, "{oci:?}");
    assert_eq!(oci.json()["code"], "PayloadTooLarge");
    assert_eq!(oci.code(), Some("cg-api-413"));

    let s = connect_from("127.0.0.2", port).await.unwrap();
    let nova = chunked_over(s, &nova_head(port), 80 * 1024).await;
    assert_eq!(nova.status, 413, "{nova:?}");
    assert_eq!(nova.json()["overLimit"]["code"], 413, "{nova:?}");
    assert_eq!(nova.code(), Some("cg-api-413"));

    // Forty at once, from two addresses.
    let mut crowd = tokio::task::JoinSet::new();
    for i in 0..40 {
        let head = if i % 2 == 0 {
            nova_head(port)
        } else {
            oci_head.clone()
        };
        let source = if i % 2 == 0 { "127.0.0.3" } else { "127.0.0.4" };
        let s = connect_from(source, port).await.unwrap();
        crowd.spawn(async move { chunked_over(s, &head, 200 * 1024).await.status });
    }
    working.echoes("during-bodies").await;
    while let Some(status) = crowd.join_next().await {
        assert_eq!(status.unwrap(), 413);
    }

    // Nothing was stored: no connection, no console token.
    let out = served.cli(&["connection", "list"]).await;
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert_eq!(ids, [working.connection.as_str()], "{listed}");
    let (_, metrics) = http_get(port, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "consolegate_console_tokens_total{result=\"issued\"}"
        ),
        0.0
    );

    // A chunked body within the limit is served.
    let mut s = connect_from("127.0.0.2", port).await.unwrap();
    let body = br#"{"remote_console": {"protocol": "serial", "type": "serial"}}"#;
    let request = format!(
        "{}transfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        nova_head(port),
        body.len(),
        String::from_utf8_lossy(body)
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let served_body = Answer::parse(&raw);
    assert_eq!(served_body.status, 200, "{served_body:?}");
    assert!(
        served_body.json()["remote_console"]["url"]
            .as_str()
            .unwrap()
            .starts_with("ws://")
    );

    working.echoes("after-bodies").await;
    settle(&served, before).await;
    working.leave(&served).await;
}

/// Unauthenticated requests whose bodies dribble hold none of the
/// `max_concurrent_requests` slots: the user's signed calls are answered
/// (never 429) while they wait, and each is cut at `request_timeout_secs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_unauthenticated_bodies_make_no_one_wait_and_are_cut() {
    let signer = Signer::new();
    let served = Served::start(config(
        &signer,
        "max_concurrent_requests = 2\nrequest_timeout_secs = 4\n",
    ))
    .await;
    let mut working = Working::start(&served).await;
    let before = baseline(&served).await;
    let port = served.api_port;

    let mut slow = tokio::task::JoinSet::new();
    for i in 0..20 {
        let source = if i % 2 == 0 { "127.0.0.2" } else { "127.0.0.3" };
        let mut s = connect_from(source, port).await.unwrap();
        slow.spawn(async move {
            s.write_all(
                format!(
                    "POST {OCI_PATH} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\
                     content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            let (mut read, mut write) = s.into_split();
            let drip = async move {
                while write.write_all(b" ").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                std::future::pending::<()>().await;
            };
            let answer = async move {
                let mut raw = Vec::new();
                let _ = read.read_to_end(&mut raw).await;
                raw
            };
            tokio::time::timeout(GUARD, async {
                tokio::select! {
                    raw = answer => raw,
                    () = drip => unreachable!(),
                }
            })
            .await
            .expect("a dribbling body was never cut")
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for round in 0..5 {
        let answer = user_lists(&served, &signer).await;
        assert_eq!(answer.status, 200, "round {round}: {answer:?}");
        working.echoes(&format!("during-{round}")).await;
    }
    while let Some(raw) = slow.join_next().await {
        let answer = Answer::parse(&raw.unwrap());
        assert_eq!(answer.status, 503, "{answer:?}");
        assert_eq!(answer.code(), Some("cg-api-503"));
    }
    assert_eq!(user_lists(&served, &signer).await.status, 200);
    settle(&served, before).await;
    working.leave(&served).await;
}

/// With `tls_cert_file` and `tls_key_file` the listener speaks HTTPS only:
/// the stock oci CLI (trusting the test CA with `--cert-bundle`) creates a
/// connection, a rustls client reads `/healthz`, Nova's console URLs are
/// `wss://` and the web console answers over TLS; plain HTTP is answered
/// one `400` naming CG-HTTP-005 and closed, and a client that never starts
/// its handshake is cut at the header timeout. A renewed certificate is
/// served after a reload; a broken one is refused (CG-HTTP-006) by
/// `check` and by the reload, and the running one keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_clients_and_refuses_plain_http() {
    let signer = Signer::new();
    let certs = tempfile::tempdir().unwrap();
    let (ca_pem, ca) = certificates(certs.path());
    let ca_file = certs.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let cli_user = common::oci::ApiUser::new();
    let mut settings = config(
        &signer,
        &format!(
            "header_read_timeout_secs = 3\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            certs.path().join("cert.pem").display(),
            certs.path().join("key.pem").display()
        ),
    );
    settings.rest.push_str(&cli_user.toml());
    let served = Served::start(settings).await;
    let port = served.api_port;
    let client = tls_client(&ca_pem);

    let health = exchange(
        tls_connect(&client, port).await,
        b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let host = format!("127.0.0.1:{port}");
    let signed = signer.request(
        Method::GET,
        &format!("{OCI_PATH}?compartmentId=test"),
        &host,
        b"",
    );
    assert_eq!(
        exchange(tls_connect(&client, port).await, &signed)
            .await
            .status,
        200
    );

    // Plain HTTP: told, then closed.
    let plain = exchange(
        connect_from("127.0.0.2", port).await.unwrap(),
        b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n",
    )
    .await;
    assert_eq!(plain.status, 400, "{plain:?}");
    assert!(plain.body.contains("CG-HTTP-005"), "{plain:?}");
    // Doctor's probe of the API listener knows the answer.
    let out = served.cli(&["doctor", "--json"]).await;
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let probe = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "CG-API-001")
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(probe["outcome"], "ok", "{probe}");
    // No handshake at all: cut at the header timeout.
    let mut silent = connect_from("127.0.0.3", port).await.unwrap();
    closed_unanswered(&mut silent)
        .await
        .unwrap_or_else(|e| panic!("a client that never shook hands was {e}"));

    // Nova over TLS: the console URL is wss://, and the web console
    // upgrades over TLS.
    let body = br#"{"remote_console": {"protocol": "serial", "type": "serial"}}"#;
    let request = format!(
        "{}content-length: {}\r\nconnection: close\r\n\r\n{}",
        nova_head(port),
        body.len(),
        String::from_utf8_lossy(body)
    );
    let nova = exchange(tls_connect(&client, port).await, request.as_bytes()).await;
    assert_eq!(nova.status, 200, "{nova:?}");
    let url = nova.json()["remote_console"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        url.starts_with(&format!("wss://127.0.0.1:{port}/serial?token=")),
        "{url}"
    );
    let (mut socket, _) =
        tokio_tungstenite::client_async(url.as_str(), tls_connect(&client, port).await)
            .await
            .unwrap();
    web_expect(&mut socket, "serial console of vm1").await;
    use futures_util::SinkExt as _;
    socket
        .send(tokio_tungstenite::tungstenite::Message::Binary(
            b"over-tls\x03".to_vec().into(),
        ))
        .await
        .unwrap();
    web_expect(&mut socket, "over-tls").await;
    drop(socket);

    // The stock oci CLI, trusting the test CA.
    if let Some(bin) = common::oci::oci_cli() {
        let key = Key::ed25519(served.dir.path(), "cli");
        let cli_dir = tempfile::tempdir().unwrap();
        cli_user.oci(bin.clone(), cli_dir.path(), String::new());
        let out = tokio::time::timeout(
            GUARD * 4,
            tokio::process::Command::new(&bin)
                .args(["compute", "instance-console-connection", "create"])
                .args(["--instance-id", "vm1", "--ssh-public-key-file"])
                .arg(&key.public)
                .args(["--endpoint", &format!("https://127.0.0.1:{port}")])
                .arg("--config-file")
                .arg(cli_dir.path().join("oci_config"))
                .arg("--cert-bundle")
                .arg(&ca_file)
                .arg("--no-retry")
                // The SDK's requests lets these override --cert-bundle.
                .env("REQUESTS_CA_BUNDLE", &ca_file)
                .env_remove("CURL_CA_BUNDLE")
                .env("OCI_CLI_SUPPRESS_FILE_PERMISSIONS_WARNING", "True")
                .env("SUPPRESS_LABEL_WARNING", "True")
                .output(),
        )
        .await
        .expect("oci CLI hung")
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "oci over HTTPS failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let created: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(created["data"]["lifecycle-state"], "ACTIVE", "{created}");
        // Without the CA, the CLI refuses the gateway's certificate.
        let out = tokio::process::Command::new(&bin)
            .args(["compute", "instance-console-connection", "list"])
            .args(["--compartment-id", "test"])
            .args(["--endpoint", &format!("https://127.0.0.1:{port}")])
            .arg("--config-file")
            .arg(cli_dir.path().join("oci_config"))
            .arg("--no-retry")
            .env_remove("REQUESTS_CA_BUNDLE")
            .env_remove("CURL_CA_BUNDLE")
            .env("OCI_CLI_SUPPRESS_FILE_PERMISSIONS_WARNING", "True")
            .output()
            .await
            .unwrap();
        assert!(
            !out.status.success(),
            "an untrusted certificate was accepted"
        );
    }

    // Renewal: new files, a reload, the new certificate from the next
    // handshake on.
    let old = presented(&client, port).await;
    let renewed = server_certificate(certs.path(), &ca, "renewed gateway");
    assert_ne!(old, renewed);
    let out = served.cli(&["reload"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(presented(&client, port).await, renewed);
    // A key that does not belong to the certificate: refused by `check`
    // and by the reload; the running certificate serves on.
    let other = tempfile::tempdir().unwrap();
    server_certificate(other.path(), &ca, "other");
    std::fs::copy(other.path().join("key.pem"), certs.path().join("key.pem")).unwrap();
    let out = served.cli(&["check"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CG-HTTP-006") && err.contains("does not belong"),
        "{err}"
    );
    let out = served.cli(&["reload"]).await;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("CG-HTTP-006"),
        "{said}"
    );
    assert_eq!(presented(&client, port).await, renewed);

    let mut stopped = served;
    assert!(stopped.running());
    stopped.stop().await;
}

/// A request signed for another host is refused (401, CG-HTTP-004) even
/// with a known key, and the log names the host, bounded; with `[api]
/// hosts` set, exactly those names are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_signed_for_another_host_is_refused() {
    let signer = Signer::new();
    let served = Served::start(config(
        &signer,
        "hosts = [\"api.consolegate.test\", \"127.0.0.1\"]\n",
    ))
    .await;
    let port = served.api_port;
    let list = format!("{OCI_PATH}?compartmentId=test");
    let send = |host: String| {
        let request = signer.request(Method::GET, &list, &host, b"");
        async move { exchange(connect_from("127.0.0.1", port).await.unwrap(), &request).await }
    };
    for good in [
        "api.consolegate.test".to_owned(),
        "API.consolegate.test:443".to_owned(),
        format!("127.0.0.1:{port}"),
    ] {
        let answer = send(good.clone()).await;
        assert_eq!(answer.status, 200, "{good}: {answer:?}");
    }
    let long = format!("{}.example", "z".repeat(3000));
    for bad in [
        "evil.example".to_owned(),
        format!("localhost:{port}"),
        "api.consolegate.test.evil.example".to_owned(),
        long.clone(),
    ] {
        let answer = send(bad.clone()).await;
        assert_eq!(answer.status, 401, "{answer:?}");
        assert_eq!(answer.code(), Some("cg-http-004"), "{answer:?}");
        assert_eq!(answer.json()["code"], "NotAuthenticated");
        let message = answer.json()["message"].as_str().unwrap().to_owned();
        assert!(message.starts_with("CG-HTTP-004"), "{message}");
        assert!(message.len() < 600, "{message}");
    }
    let log = served.log_text();
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("CG-HTTP-004")).collect();
    assert_eq!(refusals.len(), 4, "{log}");
    assert!(refusals.iter().any(|l| l.contains("evil.example")));
    let cut = refusals
        .iter()
        .find(|l| l.contains("zzzz"))
        .expect("the long host is not named");
    assert!(cut.contains("[cut: 3008 bytes in all]"), "{cut}");
    assert!(cut.len() < 800, "{} bytes: {cut}", cut.len());
}

/// A refused request with a long path of junk (with characters that move
/// a terminal's cursor or reverse its text) is logged with the path cut to
/// 200 characters, marked as cut, and those characters escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_junk_path_is_logged_bounded_and_escaped() {
    let signer = Signer::new();
    let served = Served::start(config(&signer, "")).await;
    let port = served.api_port;
    let junk = format!("evil\u{85}\u{202e}\u{2028}{}", "j".repeat(6000));
    let request = format!(
        "GET {OCI_PATH}/{junk} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n\r\n"
    );
    let answer = exchange(
        connect_from("127.0.0.2", port).await.unwrap(),
        request.as_bytes(),
    )
    .await;
    assert_eq!(answer.status, 401, "{answer:?}");
    let log = served.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("API request not authenticated"))
        .unwrap_or_else(|| panic!("not logged:\n{log}"));
    assert!(line.contains("evil\\u{85}\\u{202e}\\u{2028}jjj"), "{line}");
    assert!(line.contains("[cut: "), "{line}");
    assert!(
        !line.contains(['\u{85}', '\u{202e}', '\u{2028}']),
        "raw control characters in {line}"
    );
    assert!(
        log.lines().all(|l| l.len() < 2000),
        "a log line of {} bytes",
        log.lines().map(str::len).max().unwrap_or(0)
    );
}
