//! The gateway under soak: the real `consolegate serve` binary as a child
//! process with a data directory and `gateway.toml` of its own, and an API
//! user that signs its requests the way the OCI SDKs do.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use http::{HeaderMap, HeaderValue, Method};
use rsa::RsaPrivateKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

const TENANCY: &str = "ocid1.tenancy.oc1..aaaaaaaasoak";
const USER: &str = "ocid1.user.oc1..aaaaaaaasoakoperator";
/// The compartment every instance is in.
const COMPARTMENT: &str = "soak";
/// Bytes of console history each instance keeps. The simulator's boot log
/// alone is longer, so every history is full before the first session
/// attaches and the soak's slope does not include histories filling up
/// (with the default 1 MiB they would grow with the console output until
/// full: bounded, but indistinguishable from a leak in a 10-minute run).
pub const HISTORY_BYTES: usize = 1024;

/// The instance ids: `soak-0000`, `soak-0001`, …
pub fn instance(i: usize) -> String {
    format!("soak-{i:04}")
}

/// A port nothing listens on right now.
pub async fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?.port())
}

/// The running gateway.
pub struct Gateway {
    pub ssh_port: u16,
    pub log: PathBuf,
    child: Child,
}

impl Gateway {
    /// Writes `dir/gateway.toml` (instances simulated machines, session
    /// caps off, pre-authentication limits opened for one busy source
    /// address, `api_user` trusted) and starts `consolegate serve` on it;
    /// returns once both listeners answer.
    pub async fn start(dir: &Path, instances: usize, api: &Api) -> Result<Gateway> {
        let ssh_port = free_port().await?;
        let mut text = format!(
            "data_dir = \"data\"\n\
             [ssh]\nlisten = \"127.0.0.1:{ssh_port}\"\npublic_host = \"127.0.0.1\"\n\
             max_connections = 30000\nhandshake_timeout_secs = 60\n\
             max_startups = \"10000\"\nexempt_sources = [\"127.0.0.1\"]\n\
             [api]\nlisten = \"127.0.0.1:{}\"\n\
             [session]\nmax_sessions_per_instance = 0\nmax_sessions_per_connection = 0\n\
             max_sessions_per_key = 0\n\
             [log]\nlevel = \"warn\"\n\n",
            api.port
        );
        text.push_str(&api.toml());
        for i in 0..instances {
            text.push_str(&format!(
                "[[instance]]\nid = \"{}\"\ncompartment = \"{COMPARTMENT}\"\nserial = \"simulator\"\n\
                 history_bytes = {HISTORY_BYTES}\n\n",
                instance(i)
            ));
        }
        let config = dir.join("gateway.toml");
        std::fs::write(&config, text)?;
        let log = dir.join("gateway.log");
        let child = Command::new(env!("CARGO_BIN_EXE_consolegate"))
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .context("start consolegate serve")?;
        for port in [ssh_port, api.port] {
            wait_listening(port, &log).await?;
        }
        Ok(Gateway {
            ssh_port,
            log,
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// SIGTERM, as an operator would stop it; SIGKILL if it lingers.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            eprintln!("the gateway did not stop within 30 s of SIGTERM; killing it");
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

/// Waits up to 20 s for the gateway to listen on `port`; if it does not,
/// the error carries its log.
async fn wait_listening(port: u16, log: &Path) -> Result<()> {
    for _ in 0..400 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "consolegate did not start: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    )
}

/// An API user with a fresh RSA signing key, and the few OCI calls the
/// soak makes (raw HTTP/1.1, one connection per request).
pub struct Api {
    pub port: u16,
    key: RsaPrivateKey,
    key_id: String,
}

impl Api {
    pub async fn new() -> Result<Api> {
        let key = RsaPrivateKey::new(&mut rand::rng(), 2048)?;
        let fingerprint = consolegate::api::signature::fingerprint(&key.to_public_key());
        Ok(Api {
            port: free_port().await?,
            key_id: format!("{TENANCY}/{USER}/{fingerprint}"),
            key,
        })
    }

    /// Its `[[api_user]]` entry.
    fn toml(&self) -> String {
        let public_pem = self
            .key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("PEM");
        format!(
            "[[api_user]]\ntenancy = \"{TENANCY}\"\nuser = \"{USER}\"\n\
             public_key = \"\"\"{public_pem}\"\"\"\ncompartments = [\"{COMPARTMENT}\"]\n\n"
        )
    }

    /// Creates a console connection to `instance` for `public_key`; the
    /// API's JSON.
    pub async fn create(&self, instance: &str, public_key: &str) -> Result<serde_json::Value> {
        let body = serde_json::json!({"instanceId": instance, "publicKey": public_key});
        let (status, body) = self
            .request(
                Method::POST,
                "/20160918/instanceConsoleConnections",
                body.to_string().as_bytes(),
            )
            .await?;
        if status != 200 {
            bail!("create: {status} {}", String::from_utf8_lossy(&body));
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// Deletes the console connection `id`.
    pub async fn delete(&self, id: &str) -> Result<()> {
        let (status, body) = self
            .request(
                Method::DELETE,
                &format!("/20160918/instanceConsoleConnections/{id}"),
                b"",
            )
            .await?;
        if status != 204 {
            bail!("delete: {status} {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }

    /// One signed request; its status and body.
    async fn request(&self, method: Method, target: &str, body: &[u8]) -> Result<(u16, Vec<u8>)> {
        let host = format!("127.0.0.1:{}", self.port);
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_str(&host)?);
        consolegate::api::signature::sign(
            &method,
            target,
            &mut headers,
            body,
            &self.key_id,
            &self.key,
            SystemTime::now(),
        )
        .map_err(|e| anyhow::anyhow!("sign: {e:?}"))?;
        let lines: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {}\r\n", v.to_str().unwrap_or_default()))
            .collect();
        let mut request =
            format!("{method} {target} HTTP/1.1\r\n{lines}connection: close\r\n\r\n").into_bytes();
        request.extend_from_slice(body);
        let exchange = async {
            let mut socket = TcpStream::connect(("127.0.0.1", self.port)).await?;
            socket.write_all(&request).await?;
            let mut answer = Vec::new();
            socket.read_to_end(&mut answer).await?;
            anyhow::Ok(answer)
        };
        let answer = tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .context("the API did not answer within 30 s")??;
        parse_response(&answer)
    }
}

/// Status and body of an HTTP/1.1 response with a content-length (or none).
fn parse_response(answer: &[u8]) -> Result<(u16, Vec<u8>)> {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers in the answer")?;
    let head = String::from_utf8_lossy(&answer[..end]);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    let body = &answer[end + 4..];
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(body.len());
    Ok((status, body[..length.min(body.len())].to_vec()))
}
