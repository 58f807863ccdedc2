//! Reloading `gateway.toml` without dropping anyone: `consolegate reload`
//! (through the admin socket) against a gateway with live ssh sessions, a
//! broken file that changes nothing, and SIGHUP to the real `serve` process.

mod common;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "reloaded-member-token";

/// `GET path` with an X-Auth-Token; returns the status code.
async fn nova_get(port: u16, path: &str, token: &str) -> u16 {
    http_get_with(port, path, &format!("X-Auth-Token: {token}\r\n"))
        .await
        .0
}

/// `consolegate reload` against the gateway, which must succeed; its outcome.
async fn reload(gw: &Gateway) -> Value {
    let out = gw.cli(&["reload"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Rewrites the `[[instance]]` part of the gateway's config (and what follows it).
fn rewrite(gw: &Gateway, tail: &str) {
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let head = text.split("[[instance]]").next().unwrap();
    std::fs::write(&gw.config_path, format!("{head}{tail}")).unwrap();
}

async fn attach(gw: &Gateway, instance: &str, name: &str) -> Terminal {
    let key = Key::ed25519(gw.dir.path(), name);
    let conn = gw.create(instance, &key).await;
    let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
    term.expect(&format!("serial console of {instance}")).await;
    term.send(b"root\r").await;
    term.expect(&format!("root@{instance}")).await;
    term
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_instances_and_users_while_sessions_go_on() {
    let gw = Gateway::start(&format!(
        "{}{}",
        instance("vm1", "simulator", None),
        instance("vm2", "simulator", None)
    ))
    .await;
    let mut on_vm1 = attach(&gw, "vm1", "alice").await;
    let mut on_vm2 = attach(&gw, "vm2", "bob").await;
    assert_eq!(
        nova_get(gw.api_port, "/v2.1/servers/vm1/consoles", TOKEN).await,
        401
    );

    // vm2 goes, vm3 comes, vm1 stays; a Nova token is added; vm1 gets an
    // idle timeout, which applies to new sessions only.
    let sha = consolegate::connections::tokens::token_hash(TOKEN);
    rewrite(
        &gw,
        &format!(
            "{}idle_timeout_secs = 3600\n{}\
             [[nova_token]]\ntoken_sha256 = \"{sha}\"\nproject = \"test\"\nrole = \"member\"\n",
            instance("vm1", "simulator", None),
            instance("vm3", "simulator", None)
        ),
    );
    let outcome = reload(&gw).await;
    assert_eq!(outcome["ok"], true, "{outcome}");
    assert_eq!(outcome["added"], serde_json::json!(["vm3"]));
    assert_eq!(outcome["removed"], serde_json::json!(["vm2"]));
    assert_eq!(outcome["updated"], serde_json::json!(["vm1"]));
    assert_eq!(outcome["changed"], serde_json::json!([]));

    // The session on the removed instance is told and closed.
    on_vm2
        .expect("CG-OPS-007 instance vm2 was removed from the gateway's configuration; this session is closed; bye]")
        .await;
    on_vm2.wait().await;
    // The one on vm1 never noticed.
    on_vm1.send(b"echo through-the-reload\r").await;
    on_vm1.expect("through-the-reload\r\n").await;
    assert!(on_vm1.running());
    // vm3 is served; the new token works.
    let mut on_vm3 = attach(&gw, "vm3", "carol").await;
    on_vm3.send(b"&.").await;
    on_vm3.wait().await;
    assert_eq!(
        nova_get(gw.api_port, "/v2.1/servers/vm1/consoles", TOKEN).await,
        200
    );
    // vm2 is gone for new connections too.
    let key = Key::ed25519(gw.dir.path(), "dave");
    let out = gw
        .cli(&[
            "connection",
            "create",
            "--instance",
            "vm2",
            "--public-key-file",
            key.public.to_str().unwrap(),
        ])
        .await;
    assert!(!out.status.success());
    let (_, ready) = readyz(gw.api_port).await;
    assert_eq!(ready["reload"]["ok"], true, "{ready}");
    on_vm1.send(b"&.").await;
    on_vm1.wait().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_is_rejected_whole_and_the_old_config_serves_on() {
    let gw = Gateway::start(&instance("vm1", "simulator", None)).await;
    let mut term = attach(&gw, "vm1", "alice").await;
    let good = std::fs::read_to_string(&gw.config_path).unwrap();
    // An unknown key in an instance, and a removed instance: nothing applies.
    rewrite(
        &gw,
        "[[instance]]\nid = \"vm9\"\nserial = \"simulator\"\ncolour = \"red\"\n",
    );
    let out = gw.cli(&["reload"]).await;
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("CG-OPS-006") && e.contains("colour"), "{e}");
    let (_, ready) = readyz(gw.api_port).await;
    assert_eq!(ready["reload"]["ok"], false, "{ready}");
    assert!(
        ready["reload"]["message"]
            .as_str()
            .unwrap()
            .contains("previous configuration keeps serving")
    );
    assert_eq!(ready["ready"], true);
    // Everything as it was: the session echoes, vm1 still takes new sessions
    // (the file is put back, unreloaded, for the CLI that creates them).
    std::fs::write(&gw.config_path, &good).unwrap();
    term.send(b"echo unharmed\r").await;
    term.expect("unharmed\r\n").await;
    let mut second = attach(&gw, "vm1", "bob").await;
    second.send(b"&.").await;
    second.wait().await;
    // A restart-only setting is named, not applied.
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let fixed = text
        .replace(
            "public_host = \"127.0.0.1\"",
            "public_host = \"console.example\"",
        )
        .split("[[instance]]")
        .next()
        .unwrap()
        .to_owned()
        + &instance("vm1", "simulator", None);
    std::fs::write(&gw.config_path, fixed).unwrap();
    let outcome = reload(&gw).await;
    assert_eq!(
        outcome["needsRestart"],
        serde_json::json!(["[ssh]"]),
        "{outcome}"
    );
    assert_eq!(outcome["ok"], true);
    term.send(b"echo still-unharmed\r").await;
    term.expect("still-unharmed\r\n").await;
    term.send(b"&.").await;
    term.wait().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_real_serve_process() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().await;
    let config = dir.path().join("gateway.toml");
    let head = format!(
        "data_dir = \"data\"\n[ssh]\nlisten = \"127.0.0.1:{port}\"\n[api]\nlisten = \"127.0.0.1:0\"\n\
         [log]\nlevel = \"info\"\n\n"
    );
    std::fs::write(
        &config,
        format!("{head}{}", instance("vm1", "simulator", None)),
    )
    .unwrap();
    let mut child = spawn_serve(&config, &dir.path().join("serve.log"), &[]);
    drop(connect_eventually(port).await);
    // At level info, a junk SSH client leaves no debug line.
    junk_client(port).await;
    std::fs::write(
        &config,
        format!(
            "{}{}{}",
            head.replace("level = \"info\"", "level = \"debug\""),
            instance("vm1", "simulator", None),
            instance("vm2", "simulator", None)
        ),
    )
    .unwrap();
    signal(&child, "HUP");
    let instances = tokio::time::timeout(GUARD, async {
        loop {
            let out = run_cli(&config, &["status", "--json"]).await;
            if out.status.success() {
                let status: Value = serde_json::from_slice(&out.stdout).unwrap();
                let ids: Vec<String> = status["instances"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["instance"].as_str().unwrap().to_owned())
                    .collect();
                if ids.len() == 2 {
                    return ids;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("SIGHUP never added vm2");
    assert_eq!(instances, ["vm1", "vm2"]);
    assert!(
        matches!(child.try_wait(), Ok(None)),
        "SIGHUP ended the gateway"
    );
    // The reloaded `[log] level = "debug"` is in force.
    junk_client(port).await;
    let log = tokio::time::timeout(GUARD, async {
        loop {
            let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
            if log.contains("SSH handshake failed") {
                return log;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("no debug line after the reload to level debug");
    let (before, after) = log
        .split_once("configuration reloaded")
        .expect("no reload logged");
    assert!(!before.contains("SSH handshake failed"), "{log}");
    assert!(after.contains("SSH handshake failed"), "{log}");
    child.kill().await.unwrap();
}

/// A client that sends junk instead of an SSH identification, and waits
/// for the gateway to hang up.
async fn junk_client(port: u16) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(GUARD, s.read_to_end(&mut sink)).await;
}

/// A signed `GET target` over a real socket, as the OCI SDK signs it;
/// returns the status and the runbook code header.
async fn signed_get(
    port: u16,
    target: &str,
    key_id: &str,
    key: &rsa::RsaPrivateKey,
) -> (u16, String) {
    use axum::http::{HeaderMap, HeaderValue, Method};
    let host = format!("127.0.0.1:{port}");
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_str(&host).unwrap());
    consolegate::api::signature::sign(
        &Method::GET,
        target,
        &mut headers,
        b"",
        key_id,
        key,
        std::time::SystemTime::now(),
    )
    .unwrap();
    let lines: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {}\r\n", v.to_str().unwrap()))
        .collect();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(format!("GET {target} HTTP/1.1\r\n{lines}Connection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(GUARD, s.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let code = answer
        .lines()
        .find_map(|l| l.strip_prefix("x-consolegate-code: "))
        .unwrap_or("")
        .to_owned();
    (answer[9..12].parse().unwrap(), code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_user_removed_by_a_reload_is_refused_at_once() {
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rand::rng(), 2048).unwrap();
    let pem = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let tenancy = "ocid1.tenancy.oc1..aaaareload";
    let user = "ocid1.user.oc1..operator";
    let key_id = format!(
        "{tenancy}/{user}/{}",
        consolegate::api::signature::fingerprint(&key.to_public_key())
    );
    let api_user = format!(
        "[[api_user]]\ntenancy = \"{tenancy}\"\nuser = \"{user}\"\npublic_key = \"\"\"{pem}\"\"\"\ncompartments = [\"test\"]\n"
    );
    let gw = Gateway::start(&format!("{}{api_user}", instance("vm1", "simulator", None))).await;
    let target = "/20160918/instanceConsoleConnections?compartmentId=test";
    assert_eq!(signed_get(gw.api_port, target, &key_id, &key).await.0, 200);
    rewrite(&gw, &instance("vm1", "simulator", None));
    reload(&gw).await;
    assert_eq!(
        signed_get(gw.api_port, target, &key_id, &key).await,
        (401, "CG-API-401".to_owned())
    );
    gw.stop().await;
}
