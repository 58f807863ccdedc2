//! The real `consolegate serve` process: restart keeps records and host keys
//! (the same known_hosts still verifies both hops), SIGTERM shuts down
//! gracefully and tells attached users, and no secret reaches the log.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use tokio::process::{Child, Command};

struct Served {
    child: Child,
    log: PathBuf,
}

async fn serve(config: &Path, log: PathBuf, port: u16) -> Served {
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Ready once the SSH port answers.
    drop(connect_eventually(port).await);
    Served { child, log }
}

impl Served {
    async fn terminate(mut self) -> String {
        let pid = self.child.id().unwrap().to_string();
        // The shell's builtin kill: no procps needed.
        let status = std::process::Command::new("sh")
            .args(["-c", &format!("kill -TERM {pid}")])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(GUARD, self.child.wait())
            .await
            .expect("gateway ignored SIGTERM")
            .unwrap();
        assert!(exit.success(), "gateway exited with {exit:?}");
        std::fs::read_to_string(&self.log).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_records_and_host_keys_and_sigterm_is_graceful() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().await;
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n[ssh]\nlisten = \"127.0.0.1:{port}\"\npublic_host = \"127.0.0.1\"\n\
             [api]\nlisten = \"127.0.0.1:0\"\n\
             [log]\nformat = \"json\"\nlevel = \"debug\"\n\n{}",
            instance("demo", "simulator", None)
        ),
    )
    .unwrap();

    let first = serve(&config, dir.path().join("first.log"), port).await;
    let key = Key::ed25519(dir.path(), "user");
    let conn = create_connection(&config, "demo", &key, dir.path()).await;
    let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
    term.expect("serial console of demo").await;
    term.send(b"\r&.").await;
    assert!(term.wait().await.success());
    let first_log = first.terminate().await;
    assert!(first_log.contains("gateway stopped"), "{first_log}");
    // The log is JSON lines, as configured.
    for line in first_log.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }

    // Same data directory, same port: the same known_hosts file (strict
    // checking) still verifies both hops, and the record still works.
    let second = serve(&config, dir.path().join("second.log"), port).await;
    let mut term = Terminal::spawn(&conn.ssh_argv(&key)).await;
    term.expect("serial console of demo").await;
    // SIGTERM with a session attached: the user is told, the gateway exits 0.
    let pid = second.child.id().unwrap();
    let second_log_path = second.log.clone();
    let shutdown = tokio::spawn(second.terminate());
    term.expect("shutting down").await;
    term.wait().await;
    let second_log = shutdown.await.unwrap();
    assert!(second_log.contains("gateway stopped"), "{second_log}");
    assert!(pid > 0);

    // Invariant 6: no private key material in any log.
    let mut secrets = Vec::new();
    for file in ["ssh_host_ed25519_key", "ssh_host_rsa_key"] {
        let pem = std::fs::read_to_string(dir.path().join("data").join(file)).unwrap();
        secrets.extend(
            pem.lines()
                .filter(|l| !l.starts_with("-----") && l.len() > 20)
                .map(str::to_owned),
        );
    }
    assert!(!secrets.is_empty());
    for log in [first_log, std::fs::read_to_string(second_log_path).unwrap()] {
        assert!(!log.contains("PRIVATE KEY"));
        for secret in &secrets {
            assert!(
                !log.contains(secret.as_str()),
                "private key material in the log"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_busy_port_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let busy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = busy.local_addr().unwrap().port();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!("[ssh]\nlisten = \"127.0.0.1:{port}\"\n[api]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    let out = tokio::time::timeout(
        GUARD,
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen for SSH on 127.0.0.1:{port}")),
        "{err}"
    );
}
