//! Secrets end to end: with every log at trace level, a gateway serves the
//! real oci CLI, a real ssh console session, the Nova API and a web serial
//! console; then its log, its audit trail and its metrics are searched for
//! every secret that crossed it. None may appear: not the Nova
//! X-Auth-Token, not a console token (live, spent, revoked or made up),
//! not a byte of a private key (the user's, the API user's, the gateway's
//! host keys), nor any PEM or OpenSSH private-key block, nor what users
//! typed on their consoles.

mod common;

use common::oci::{ApiUser, oci_cli};
use common::served::{Served, ServedConfig};
use common::web::{Web, connect};
use common::*;
use consolegate::connections::tokens::token_hash;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The Nova API member's X-Auth-Token.
const NOVA: &str = "nova-secret-x-auth-token-0f3c9a7e51d2";

/// What users type on their consoles (a password at a prompt, say).
const TYPED_OVER_SSH: &str = "typed-over-ssh-hunter2";
const TYPED_ON_THE_WEB: &str = "typed-on-the-web-hunter2";

/// `method path` on the Nova API with the member's token and `body`: the
/// status and the JSON answer.
async fn nova(port: u16, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Auth-Token: {NOVA}\r\n\
         OpenStack-API-Version: compute 2.6\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut answer))
        .await
        .expect("the Nova API did not answer")
        .unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text[9..12].parse().unwrap();
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// A serial console URL's token, from the Nova API.
async fn serial_token(port: u16) -> String {
    let (status, body) = nova(
        port,
        "POST",
        "/v2.1/servers/vm1/remote-consoles",
        r#"{"remote_console": {"protocol": "serial", "type": "serial"}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let url = body["remote_console"]["url"].as_str().unwrap().to_owned();
    url.split_once("token=").unwrap().1.to_owned()
}

/// The lines of a key file that carry key material (not its armour).
fn key_material(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_private_key_reaches_a_log_the_audit_or_metrics() {
    let Some(oci_bin) = oci_cli() else {
        return;
    };
    let signer = ApiUser::new();
    let served = Served::start(ServedConfig {
        log: Some("trace".into()),
        rest: format!(
            "{}{}[[nova_token]]\ntoken_sha256 = \"{}\"\nproject = \"test\"\nrole = \"member\"\n\n",
            instance("vm1", "simulator", None),
            signer.toml(),
            token_hash(NOVA)
        ),
        ..ServedConfig::default()
    })
    .await;
    let dir = served.dir.path();

    // The control plane, with the stock CLI.
    let oci = signer.oci(
        oci_bin,
        dir,
        format!("http://127.0.0.1:{}/20160918", served.api_port),
    );
    let key = Key::ed25519(dir, "user");
    let created = oci.create("vm1", &key.public).await;
    let id = created["data"]["id"]
        .as_str()
        .expect("the CLI printed an id");
    let view = served.cli(&["connection", "get", id]).await;
    let conn = Connection::from_json(serde_json::from_slice(&view.stdout).unwrap(), dir);

    // The data plane: a real ssh session that logs in and types.
    let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
    term.expect("vm1 login: ").await;
    term.send(format!("{TYPED_OVER_SSH}\x03").as_bytes()).await;
    term.expect(TYPED_OVER_SSH).await;
    term.send(b"root\r").await;
    term.expect("root@vm1:~$ ").await;
    term.send(b"\r&.").await;
    term.wait().await;

    // Web consoles: a token used, one spent and tried again, one revoked,
    // and one made up.
    let used = serial_token(served.api_port).await;
    let (status, _) = http_get(served.api_port, &format!("/serial?token={used}")).await;
    assert_eq!(status, 200, "the serial page");
    let mut web = Web::new(connect(served.api_port, &format!("/serial?token={used}")).await);
    web.expect("serial console of vm1").await;
    web.send(&format!("{TYPED_ON_THE_WEB}\x03")).await;
    web.expect(TYPED_ON_THE_WEB).await;
    web.send("\r&.").await;
    assert!(web.closed_by_server().await);
    let (status, _) = http_get(served.api_port, &format!("/serial?token={used}")).await;
    assert_eq!(status, 403, "a spent token");
    let revoked = serial_token(served.api_port).await;
    let (status, _) = nova(
        served.api_port,
        "DELETE",
        "/v2.1/servers/vm1/consoles/1",
        "",
    )
    .await;
    assert!(status < 300, "revoking the console tokens: {status}");
    let (status, _) = http_get(served.api_port, &format!("/serial?token={revoked}")).await;
    assert_eq!(status, 403, "a revoked token");
    let made_up = "made-up-console-token-7c1e2f9a40b3d6e8";
    let (status, _) = http_get(served.api_port, &format!("/serial?token={made_up}")).await;
    assert_eq!(status, 403, "a made-up token");
    // A token in a path: the admin-only lookup, asked by a member.
    let lookup = format!("/v2.1/os-console-auth-tokens/{revoked}");
    let (status, _) = nova(served.api_port, "GET", &lookup, "").await;
    assert_eq!(status, 403, "a member's token lookup");

    let (_, metrics) = http_get(served.api_port, "/metrics").await;
    let audit = String::from_utf8(served.cli(&["audit", "--limit", "1000"]).await.stdout).unwrap();
    let log = served.log_text();
    assert!(
        log.lines().count() > 100,
        "a trace log has more to say than {} lines",
        log.lines().count()
    );

    let mut secrets: Vec<(String, String)> = vec![
        ("the Nova X-Auth-Token".into(), NOVA.into()),
        ("a used console token".into(), used),
        ("a revoked console token".into(), revoked),
        ("a made-up console token".into(), made_up.into()),
        ("what was typed over ssh".into(), TYPED_OVER_SSH.into()),
        (
            "what was typed on the web console".into(),
            TYPED_ON_THE_WEB.into(),
        ),
    ];
    for (what, path) in [
        ("the user's private key", key.private.clone()),
        ("the API user's private key", dir.join("oci_api_key.pem")),
        (
            "the gateway's ed25519 host key",
            dir.join("data/ssh_host_ed25519_key"),
        ),
        (
            "the gateway's RSA host key",
            dir.join("data/ssh_host_rsa_key"),
        ),
    ] {
        for line in key_material(&path) {
            secrets.push((what.into(), line));
        }
    }
    for (place, text) in [("log", &log), ("audit", &audit), ("metrics", &metrics)] {
        for (what, secret) in &secrets {
            assert!(!text.contains(secret.as_str()), "{what} is in the {place}");
        }
        assert!(
            !text.contains("PRIVATE KEY"),
            "a private key block is in the {place}"
        );
    }
    served.stop().await;
}
