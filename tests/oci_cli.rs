//! The stock `oci` CLI (PyPI `oci-cli`, installed by `.ci/run` into `.venv`)
//! against a running gateway: create, get, list, update and delete a console
//! connection, then use the connectionString it printed with the real `ssh`.
//!
//! The CLI is found at `$OCI_CLI` or `.venv/bin/oci`. Without it the test
//! says so and passes, except under CI (`CI` set), where a missing CLI fails.

mod common;

use common::oci::{ApiUser, oci_cli};
use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_oci_cli_manages_console_connections() {
    let Some(bin) = oci_cli() else { return };
    let user = ApiUser::new();
    let gw = Gateway::start(&(user.toml() + &instance("vm1", "simulator", None))).await;
    let oci = user.oci(
        bin,
        gw.dir.path(),
        format!("http://127.0.0.1:{}", gw.api_port),
    );

    let ssh_key = Key::ed25519(gw.dir.path(), "operator");
    let created = oci.create("vm1", &ssh_key.public).await;
    let data = &created["data"];
    let id = data["id"].as_str().unwrap().to_owned();
    assert_eq!(data["lifecycle-state"], "ACTIVE");
    assert_eq!(data["instance-id"], "vm1");
    assert_eq!(data["compartment-id"], "test");
    assert_eq!(
        data["fingerprint"].as_str().unwrap(),
        ssh_key.ssh_keygen_fingerprint()
    );
    assert!(created["etag"].is_string());

    let got = oci
        .run(&["get", "--instance-console-connection-id", &id])
        .await;
    assert_eq!(got["data"], *data);

    let listed = oci
        .run(&["list", "--compartment-id", "test", "--all"])
        .await;
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str()]);

    let updated = oci
        .run(&[
            "update",
            "--instance-console-connection-id",
            &id,
            "--freeform-tags",
            r#"{"team": "ops"}"#,
            "--force",
        ])
        .await;
    assert_eq!(updated["data"]["freeform-tags"]["team"], "ops");

    // The connectionString the oci CLI printed reaches the console. The
    // known_hosts lines come from consolegate's own view of the connection.
    let out = gw.cli(&["connection", "get", &id]).await;
    let conn = Connection::from_json(serde_json::from_slice(&out.stdout).unwrap(), gw.dir.path());
    assert_eq!(
        data["connection-string"].as_str().unwrap(),
        conn.connection_string
    );
    let mut term = Terminal::spawn(&conn.ssh_argv(&ssh_key)).await;
    term.expect("serial console of vm1").await;
    term.send(b"\r").await;
    term.expect("login: ").await;

    // Deleting it through the CLI ends the session and the connection.
    let deleted = oci
        .run(&["delete", "--instance-console-connection-id", &id, "--force"])
        .await;
    assert_eq!(deleted, Value::Null);
    term.expect("has been deleted").await;
    term.wait().await;
    let state = oci
        .run(&["get", "--instance-console-connection-id", &id])
        .await;
    let state = state["data"]["lifecycle-state"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(state == "DELETING" || state == "DELETED", "{state}");
    // Deleting again is harmless; the CLI then waits (polling GET) for DELETED.
    oci.run(&[
        "delete",
        "--instance-console-connection-id",
        &id,
        "--force",
        "--wait-for-state",
        "DELETED",
        "--wait-interval-seconds",
        "1",
    ])
    .await;
    let gone = oci
        .run(&["get", "--instance-console-connection-id", &id])
        .await;
    assert_eq!(gone["data"]["lifecycle-state"], "DELETED", "{gone}");
    gw.stop().await;
}
