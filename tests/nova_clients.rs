//! The stock python-novaclient and openstacksdk (from `.venv`, installed by
//! `.ci/run`) against a live gateway, and a plain Python WebSocket client on
//! the serial URL they got, sharing the console with a real ssh session.
//!
//! Without the venv the test says so and passes, except under CI.

mod common;

use std::path::Path;

use common::*;
use consolegate::connections::tokens::token_hash;
use serde_json::Value;

const MEMBER: &str = "member-token-for-client-tests";
const ADMIN: &str = "admin-token-for-client-tests";

async fn run_python(python: &Path, script: &str, args: &[&str], env: &[(&str, String)]) -> Value {
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/python")
            .join(script),
    )
    .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(GUARD * 2, cmd.output())
        .await
        .expect("python hung")
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn novaclient_and_openstacksdk_get_console_urls_that_work() {
    let Some(python) = venv_python("novaclient, openstack, websocket") else {
        return;
    };
    let vnc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let vnc_port = vnc.local_addr().unwrap().port();
    let gw = Gateway::start(&format!(
        "[[nova_token]]\ntoken_sha256 = \"{}\"\nproject = \"test\"\nrole = \"member\"\n\
         [[nova_token]]\ntoken_sha256 = \"{}\"\nproject = \"admin\"\nrole = \"admin\"\n\n{}",
        token_hash(MEMBER),
        token_hash(ADMIN),
        instance(
            "vm1",
            "simulator",
            Some(&format!("tcp:127.0.0.1:{vnc_port}"))
        )
    ))
    .await;
    let ep = format!("http://127.0.0.1:{}/v2.1", gw.api_port);
    let got = run_python(
        &python,
        "nova_clients.py",
        &[],
        &[
            ("EP", ep.clone()),
            ("TOKEN", MEMBER.to_owned()),
            ("ADMIN_TOKEN", ADMIN.to_owned()),
            ("SERVER", "vm1".to_owned()),
        ],
    )
    .await;
    let ws_base = format!("ws://127.0.0.1:{}/serial?token=", gw.api_port);
    let novnc = format!(
        "http://127.0.0.1:{}/novnc/vnc_lite.html?path=websockify%3Ftoken%3D",
        gw.api_port
    );
    let url = |v: &Value| v["url"].as_str().unwrap().to_owned();
    assert!(
        url(&got["novaclient_2_6_serial"]["remote_console"]).starts_with(&ws_base),
        "{got}"
    );
    assert!(
        url(&got["novaclient_2_6_novnc"]["remote_console"]).starts_with(&novnc),
        "{got}"
    );
    assert!(
        url(&got["novaclient_2_1_serial"]["console"]).starts_with(&ws_base),
        "{got}"
    );
    assert!(
        url(&got["novaclient_2_1_novnc"]["console"]).starts_with(&novnc),
        "{got}"
    );
    assert!(
        url(&got["openstacksdk_remote_console"]).starts_with(&ws_base),
        "{got}"
    );
    assert!(
        got["openstacksdk_legacy_novnc"]["url"]
            .as_str()
            .unwrap()
            .starts_with(&novnc),
        "{got}"
    );
    assert_eq!(got["token_lookup"]["status"], 200, "{got}");
    assert_eq!(
        got["token_lookup"]["body"]["console"]["instance_uuid"],
        "vm1"
    );
    assert_eq!(got["token_lookup_as_member"], 403);

    // An ssh session on the same console...
    let key = Key::ed25519(gw.dir.path(), "operator");
    let conn = gw.create("vm1", &key).await;
    let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
    term.expect("serial console of vm1").await;

    // ...sees what a WebSocket client types on the serial URL, and the
    // WebSocket client sees the machine's answer.
    let serial_url = url(&got["openstacksdk_remote_console"]);
    let ws = run_python(
        &python,
        "serial_ws.py",
        &[&serial_url, "webuser\r", "webuser@vm1:~$"],
        &[],
    )
    .await;
    assert_eq!(ws["found"], true, "{ws}");
    term.expect("webuser@vm1:~$").await;

    // Tokens are bound to their protocol and instance: the VNC token does
    // not open the serial console; a made-up token opens nothing.
    let vnc_url = url(&got["novaclient_2_6_novnc"]["remote_console"]);
    let vnc_token = vnc_url.rsplit("%3D").next().unwrap();
    let refused = run_python(
        &python,
        "serial_ws.py",
        &[&format!("{ws_base}{vnc_token}"), "x", "y"],
        &[],
    )
    .await;
    assert_eq!(refused["opened"], false, "{refused}");
    assert_eq!(refused["status"], 403);
    let refused = run_python(
        &python,
        "serial_ws.py",
        &[&format!("{ws_base}madeup"), "x", "y"],
        &[],
    )
    .await;
    assert_eq!(refused["status"], 403);

    term.send(b"\r&.").await;
    term.wait().await;
    drop(vnc);
    gw.stop().await;
}
