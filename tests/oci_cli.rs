//! The stock `oci` CLI (PyPI `oci-cli`, installed by `.ci/run` into `.venv`)
//! against a running gateway: create, get, list, update and delete a console
//! connection, then use the connectionString it printed with the real `ssh`.
//!
//! The CLI is found at `$OCI_CLI` or `.venv/bin/oci`. Without it the test
//! says so and passes, except under CI (`CI` set), where a missing CLI fails.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use rsa::RsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::Value;

const TENANCY: &str = "ocid1.tenancy.oc1..aaaaaaaaconsolegatetest";
const USER: &str = "ocid1.user.oc1..aaaaaaaaconsolegateoperator";

fn oci_cli() -> Option<PathBuf> {
    let path = std::env::var_os("OCI_CLI")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/oci"));
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the oci CLI is missing at {} (.ci/run installs it)",
        path.display()
    );
    eprintln!(
        "SKIPPED: no oci CLI at {}; run .ci/run or set OCI_CLI",
        path.display()
    );
    None
}

struct Oci {
    bin: PathBuf,
    config: PathBuf,
    endpoint: String,
}

impl Oci {
    /// Runs `oci compute instance-console-connection <args>`; returns its JSON.
    async fn run(&self, args: &[&str]) -> Value {
        let out = tokio::time::timeout(
            GUARD * 4,
            tokio::process::Command::new(&self.bin)
                .args(["compute", "instance-console-connection"])
                .args(args)
                .arg("--endpoint")
                .arg(&self.endpoint)
                .arg("--config-file")
                .arg(&self.config)
                .args(["--no-retry"])
                .env("OCI_CLI_SUPPRESS_FILE_PERMISSIONS_WARNING", "True")
                .env("SUPPRESS_LABEL_WARNING", "True")
                .output(),
        )
        .await
        .expect("oci CLI hung")
        .expect("cannot run the oci CLI");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "oci {args:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_oci_cli_manages_console_connections() {
    let Some(bin) = oci_cli() else { return };
    let api_key = RsaPrivateKey::new(&mut rand::rng(), 2048).unwrap();
    let public_pem = api_key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let api_users = format!(
        "[[api_user]]\ntenancy = \"{TENANCY}\"\nuser = \"{USER}\"\n\
         public_key = \"\"\"{public_pem}\"\"\"\ncompartments = [\"test\"]\n\n"
    );
    let gw = Gateway::start(&(api_users + &instance("vm1", "simulator", None))).await;

    // What `oci setup config` would write.
    let key_file = gw.path("oci_api_key.pem");
    std::fs::write(
        &key_file,
        api_key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
    )
    .unwrap();
    let fingerprint = consolegate::api::signature::fingerprint(&api_key.to_public_key());
    let config = gw.path("oci_config");
    std::fs::write(
        &config,
        format!(
            "[DEFAULT]\nuser={USER}\nfingerprint={fingerprint}\nkey_file={}\ntenancy={TENANCY}\nregion=us-ashburn-1\n",
            key_file.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    for f in [&key_file, &config] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let oci = Oci {
        bin,
        config,
        endpoint: format!("http://127.0.0.1:{}", gw.api_port),
    };

    let ssh_key = Key::ed25519(gw.dir.path(), "operator");
    let created = oci
        .run(&[
            "create",
            "--instance-id",
            "vm1",
            "--ssh-public-key-file",
            ssh_key.public.to_str().unwrap(),
        ])
        .await;
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
