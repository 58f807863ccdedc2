//! What the benches do with the real OpenSSH client: start it, and time
//! keystrokes through a console it is attached to. Included by each bench
//! (`#[path]`), as benches share no library of their own.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Spawns `/usr/bin/ssh argv` with piped stdin, stdout and stderr.
pub fn spawn_ssh(argv: &[String]) -> Result<Child> {
    Command::new("/usr/bin/ssh")
        .args(argv)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawn ssh")
}

/// Types `keys` one by one into an attached console that echoes them, each
/// after the last came back (other bytes on the way are skipped); returns
/// each round trip in ms. Each wait is bounded by `limit`.
pub async fn echo_round_trips(
    input: &mut ChildStdin,
    out: &mut ChildStdout,
    keys: &[u8],
    limit: Duration,
) -> Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(keys.len());
    for &key in keys {
        let t = Instant::now();
        input.write_all(&[key]).await?;
        input.flush().await?;
        read_past(out, key, limit)
            .await
            .context("echo never came")?;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(samples)
}

/// Reads `out` until `byte` has gone past (within `limit`).
pub async fn read_past(out: &mut ChildStdout, byte: u8, limit: Duration) -> Result<()> {
    let mut b = [0u8; 1];
    tokio::time::timeout(limit, async {
        loop {
            out.read_exact(&mut b).await?;
            if b[0] == byte {
                return anyhow::Ok(());
            }
        }
    })
    .await
    .context("the byte never came")?
}
