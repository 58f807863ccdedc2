//! The `connection` and `check` subcommands of the real binary: the resource
//! they print, and every bad input refused with a clear message, a non-zero
//! exit, and nothing written.

mod common;

use common::*;
use serde_json::Value;

async fn gateway() -> Gateway {
    Gateway::start(&(instance("vm1", "simulator", None) + &instance("vm2", "simulator", None)))
        .await
}

async fn count(gw: &Gateway) -> usize {
    let out = gw.cli(&["connection", "list"]).await;
    assert!(out.status.success());
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .len()
}

async fn create_fails(gw: &Gateway, instance: &str, key_file: &std::path::Path, expect: &str) {
    let before = count(gw).await;
    let out = gw
        .cli(&[
            "connection",
            "create",
            "--instance",
            instance,
            "--public-key-file",
            key_file.to_str().unwrap(),
        ])
        .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted; expected: {expect}");
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
    assert!(out.stdout.is_empty());
    assert_eq!(count(gw).await, before, "a refused create wrote something");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_prints_the_seed_resource_for_every_accepted_key_type() {
    let gw = gateway().await;
    for (kind, bits) in [
        ("ed25519", None),
        ("ecdsa", Some(256)),
        ("ecdsa", Some(384)),
        ("ecdsa", Some(521)),
        ("rsa", Some(2048)),
        ("rsa", Some(3072)),
    ] {
        let name = format!("{kind}{}", bits.unwrap_or(0));
        let key = Key::generate(gw.dir.path(), &name, kind, bits);
        let conn = gw.create("vm1", &key).await;
        let j = &conn.json;
        for field in [
            "id",
            "compartmentId",
            "instanceId",
            "lifecycleState",
            "fingerprint",
            "serviceHostKeyFingerprint",
            "instanceHostKeyFingerprint",
            "connectionString",
            "vncConnectionString",
            "freeformTags",
            "definedTags",
            "timeCreated",
            "knownHosts",
        ] {
            assert!(!j[field].is_null(), "{field} missing for {name}");
        }
        assert_eq!(j["instanceId"], "vm1");
        assert_eq!(j["compartmentId"], "test");
        assert_eq!(j["lifecycleState"], "ACTIVE");
        assert_eq!(
            j["fingerprint"].as_str().unwrap(),
            key.ssh_keygen_fingerprint(),
            "{name}"
        );
        // At least 128 random bits in the id.
        let unique = conn.id.rsplit("..").next().unwrap();
        assert!(unique.len() * 5 >= 128, "{}", conn.id);
        time::OffsetDateTime::parse(
            j["timeCreated"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
    }
    // get returns the same resource; list has them all.
    assert_eq!(count(&gw).await, 6);
    let out = gw.cli(&["connection", "list", "--instance", "vm2"]).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        Value::Array(vec![])
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_hosts_lines_match_the_served_host_keys() {
    let gw = gateway().await;
    let key = Key::ed25519(gw.dir.path(), "user");
    let conn = gw.create("vm1", &key).await;
    let lines: Vec<&str> = conn.json["knownHosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let outer = format!("[127.0.0.1]:{} ", gw.port);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{outer}ssh-ed25519 ")))
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{outer}ssh-rsa ")))
    );
    assert!(lines.iter().any(|l| l.starts_with("vm1 ssh-ed25519 ")));
    // What ssh-keyscan sees on the outer hop is what we printed.
    let scan = std::process::Command::new("ssh-keyscan")
        .args(["-p", &gw.port.to_string(), "-t", "ed25519,rsa", "127.0.0.1"])
        .output()
        .unwrap();
    let scanned = String::from_utf8_lossy(&scan.stdout);
    for line in scanned.lines().filter(|l| !l.starts_with('#')) {
        assert!(lines.contains(&line), "{line} not in {lines:?}");
    }
    assert_eq!(scanned.lines().filter(|l| !l.starts_with('#')).count(), 2);
    // The inner hop's fingerprint is the one printed beside the seed's fields.
    let vm2 = gw.create("vm2", &key).await;
    assert_ne!(
        conn.json["instanceHostKeyFingerprint"], vm2.json["instanceHostKeyFingerprint"],
        "each instance has its own host key"
    );
    assert_eq!(
        conn.json["serviceHostKeyFingerprint"],
        vm2.json["serviceHostKeyFingerprint"]
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_instances_and_conflicts_are_refused_and_write_nothing() {
    let gw = gateway().await;
    let dir = gw.dir.path();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    create_fails(
        &gw,
        "vm1",
        &write("empty.pub", ""),
        "the public key is empty",
    )
    .await;
    create_fails(
        &gw,
        "vm1",
        &write("junk.pub", "hello world\n"),
        "not in OpenSSH format",
    )
    .await;
    create_fails(
        &gw,
        "vm1",
        &write("b64.pub", "ssh-ed25519 AAAA%%%notbase64 x\n"),
        "not in OpenSSH format",
    )
    .await;
    let ok = Key::ed25519(dir, "ok");
    let line = std::fs::read_to_string(&ok.public).unwrap();
    create_fails(
        &gw,
        "vm1",
        &write("two.pub", &format!("{line}{line}")),
        "single line",
    )
    .await;
    create_fails(
        &gw,
        "vm1",
        &write("private", &std::fs::read_to_string(&ok.private).unwrap()),
        "this is a private key",
    )
    .await;
    create_fails(
        &gw,
        "vm1",
        &write("huge.pub", &"A".repeat(100_000)),
        "bytes",
    )
    .await;
    create_fails(
        &gw,
        "vm1",
        &dir.join("missing.pub"),
        "cannot read public key file",
    )
    .await;
    let short = Key::generate(dir, "short", "rsa", Some(1024));
    create_fails(&gw, "vm1", &short.public, "at least 2048").await;
    create_fails(&gw, "vm9", &ok.public, "unknown instance `vm9`").await;

    // The per-instance policy: one live connection per instance and key.
    let first = gw.create("vm1", &ok).await;
    create_fails(&gw, "vm1", &ok.public, &first.id).await;
    // Another instance, or another key, is fine; deleting frees the slot.
    gw.create("vm2", &ok).await;
    let out = gw.cli(&["connection", "delete", &first.id]).await;
    assert!(out.status.success());
    gw.create("vm1", &ok).await;

    // get/delete of an unknown id.
    for cmd in ["get", "delete"] {
        let out = gw
            .cli(&[
                "connection",
                cmd,
                "ocid1.instanceconsoleconnection.oc1..nope",
            ])
            .await;
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("no console connection"));
    }

    // The audit trail has a row for each change made, naming the CLI, and
    // none for the refused ones.
    let out = gw.cli(&["audit", "--limit", "1000"]).await;
    assert!(out.status.success());
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let changes: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            assert_eq!(r["detail"], "by cli", "{r}");
            assert!(r["peer"].is_null(), "{r}");
            (
                r["event"].as_str().unwrap(),
                r["instanceId"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("create", "vm1"),
            ("create", "vm2"),
            ("delete", "vm1"),
            ("create", "vm1")
        ]
    );
    assert_eq!(rows[2]["connectionId"], first.id.as_str());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_the_shipped_config_and_names_bad_keys() {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml");
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&shipped)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("instance demo"));

    let dir = tempfile::tempdir().unwrap();
    for (text, expect) in [
        (
            "[ssh]\nlisten = \"127.0.0.1:2222\"\nlisten_addr = \"x\"\n",
            "listen_addr",
        ),
        ("bogus_top = 1\n", "bogus_top"),
        (
            "[[instance]]\nid = \"a\"\nserial = \"simulator\"\nvnc_port = 5900\n",
            "vnc_port",
        ),
        (
            "[[instance]]\nid = \"a\"\nserial = \"com1\"\n",
            "telnet:host:port",
        ),
        (
            "[[instance]]\nid = \"a\"\nserial = \"/dev/ttyS0\"\n",
            "baud",
        ),
        (
            "[[instance]]\nid = \"a\"\nserial = \"simulator\"\nvnc = \"vnc:1\"\n",
            "tcp:host:port",
        ),
        (
            "[[instance]]\nid = \"a b\"\nserial = \"simulator\"\n",
            "allowed are",
        ),
        ("[[instance]]\nid = \"a\"\n", "serial"),
        ("[log]\nformat = \"xml\"\n", "xml"),
        ("not toml at all", "TOML parse error"),
        (
            "[[api_user]]\ntenancy = \"t\"\nuser = \"u1\"\npublic_key = \"junk\"\ncompartments = [\"c\"]\n",
            "[[api_user]] u1: public key",
        ),
        (
            "[[api_user]]\ntenancy = \"t\"\nuser = \"u2\"\ncompartments = [\"c\"]\n",
            "exactly one of public_key_file or public_key",
        ),
        (
            "[[api_user]]\ntenancy = \"t\"\nuser = \"u3\"\npublic_key_file = \"/nonexistent.pem\"\ncompartments = [\"c\"]\n",
            "cannot read public_key_file",
        ),
        ("[api]\nmax_body_bytes = 0\n", "max_body_bytes"),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted: {text}");
        assert!(
            err.contains(expect),
            "expected {expect:?} for {text:?}: {err}"
        );
    }
    let out = std::process::Command::new(BIN)
        .args(["check", "--config", "/nonexistent/gateway.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}
