//! The admin socket: a unix socket in the data directory (`admin.sock`,
//! mode 0600 inside the 0700 data directory) through which `consolegate
//! status` and `consolegate doctor` ask a running gateway what it sees.
//!
//! One JSON request line in, one JSON answer line out, then the gateway
//! closes the connection. Only the gateway's own user can connect (the file
//! mode); requests are bounded in size and time, and a few at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::ReloadOutcome;
use crate::console::hub::{ConsoleHubs, HubStatus};

/// The socket's file name in the data directory.
pub const SOCKET_NAME: &str = "admin.sock";
/// Longest request line accepted.
const MAX_REQUEST: u64 = 4096;
/// How long a client has to send its request, and a caller waits for an answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests served at once.
const CONCURRENT: usize = 4;

/// Where the admin socket of the gateway using `data_dir` is.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// A request on the admin socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum AdminRequest {
    /// The gateway and every console hub.
    Status,
    /// Re-read the config file (as SIGHUP does).
    Reload,
}

/// A reload asked for on the admin socket, answered when it is done.
pub type ReloadRequest = tokio::sync::oneshot::Sender<ReloadOutcome>;

/// The answer to [`AdminRequest::Status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// consolegate's version.
    pub version: String,
    /// The gateway's process id.
    pub pid: u32,
    /// When it started (RFC 3339).
    pub started: String,
    /// The SSH listener's address.
    pub ssh_listen: String,
    /// The HTTP API listener's address.
    pub api_listen: String,
    /// The metrics listener's address, if it has its own.
    pub metrics_listen: Option<String>,
    /// Fingerprints of the host keys the SSH listener presents.
    pub host_key_fingerprints: Vec<String>,
    /// Every console hub.
    pub instances: Vec<HubStatus>,
    /// Tasks alive in the gateway's async runtime: at rest, a few per
    /// session and per console, and a handful of its own.
    #[serde(default)]
    pub runtime_tasks: u64,
}

/// An answer: the result or an error message with its runbook code.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum AdminAnswer {
    Status(Box<GatewayStatus>),
    Reload(ReloadOutcome),
    Error(String),
}

/// What the gateway tells about itself that does not change while it runs.
#[derive(Debug, Clone)]
pub struct GatewayInfo {
    /// When it started.
    pub started: String,
    /// The SSH listener's address.
    pub ssh_listen: String,
    /// The HTTP API listener's address.
    pub api_listen: String,
    /// The metrics listener's address.
    pub metrics_listen: Option<String>,
    /// Host key fingerprints.
    pub host_key_fingerprints: Vec<String>,
}

/// Why the admin socket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No gateway answers on the socket.
    #[error(
        "CG-OPS-002 no gateway answers on {path} ({error}); is `consolegate serve` running with this config?"
    )]
    NotRunning {
        /// The socket.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// Another gateway already serves this data directory.
    #[error(
        "CG-OPS-003 another gateway already answers on {0}: two gateways must not share a data directory"
    )]
    InUse(PathBuf),
    /// The socket could not be created.
    #[error("CG-OPS-003 cannot create the admin socket {path}: {error}")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The gateway answered something unexpected, or nothing in time.
    #[error("CG-OPS-002 the gateway's admin socket answered badly: {0}")]
    Protocol(String),
}

/// Binds the admin socket in `data_dir`, replacing a stale one; refuses if a
/// live gateway already answers there.
pub async fn bind(data_dir: &Path) -> Result<UnixListener, AdminError> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(data_dir);
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(AdminError::InUse(path));
        }
        let _ = std::fs::remove_file(&path);
    }
    let bind_error = |error| AdminError::Bind {
        path: path.clone(),
        error,
    };
    let listener = UnixListener::bind(&path).map_err(bind_error)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
    Ok(listener)
}

/// Serves the admin socket until `shutdown`, then removes it.
pub async fn serve(
    listener: UnixListener,
    info: GatewayInfo,
    hubs: ConsoleHubs,
    reloads: Option<tokio::sync::mpsc::Sender<ReloadRequest>>,
    shutdown: CancellationToken,
) {
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_owned));
    let limit = Arc::new(Semaphore::new(CONCURRENT));
    let info = Arc::new(info);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(code = "CG-OPS-003", error = %e, "admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        while tasks.try_join_next().is_some() {}
        let (info, hubs, reloads) = (info.clone(), hubs.clone(), reloads.clone());
        tasks.spawn(async move {
            let _ = tokio::time::timeout(IO_TIMEOUT, answer(stream, &info, &hubs, reloads)).await;
            drop(permit);
        });
    }
    tasks.abort_all();
    if let Some(path) = path {
        let _ = std::fs::remove_file(path);
    }
}

async fn answer(
    stream: UnixStream,
    info: &GatewayInfo,
    hubs: &ConsoleHubs,
    reloads: Option<tokio::sync::mpsc::Sender<ReloadRequest>>,
) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let answer = match serde_json::from_str::<AdminRequest>(line.trim()) {
        Ok(AdminRequest::Status) => AdminAnswer::Status(Box::new(GatewayStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            started: info.started.clone(),
            ssh_listen: info.ssh_listen.clone(),
            api_listen: info.api_listen.clone(),
            metrics_listen: info.metrics_listen.clone(),
            host_key_fingerprints: info.host_key_fingerprints.clone(),
            instances: hubs.statuses().await,
            runtime_tasks: crate::ops::metrics::runtime_tasks(),
        })),
        Ok(AdminRequest::Reload) => match reloads {
            Some(tx) => {
                let (reply, done) = tokio::sync::oneshot::channel();
                match tx.send(reply).await {
                    Ok(()) => match done.await {
                        Ok(outcome) => AdminAnswer::Reload(outcome),
                        Err(_) => AdminAnswer::Error("CG-OPS-006 the reload was abandoned".into()),
                    },
                    Err(_) => AdminAnswer::Error("CG-OPS-006 the gateway is shutting down".into()),
                }
            }
            None => AdminAnswer::Error(
                "CG-OPS-006 this gateway was started without a config file to reload".into(),
            ),
        },
        Err(e) => AdminAnswer::Error(format!("CG-OPS-002 bad admin request: {e}")),
    };
    let mut text = serde_json::to_string(&answer).unwrap_or_default();
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
    let _ = write.shutdown().await;
}

/// Asks the gateway using `data_dir` for its status.
pub async fn status(data_dir: &Path) -> Result<GatewayStatus, AdminError> {
    match request(data_dir, &AdminRequest::Status).await? {
        AdminAnswer::Status(s) => Ok(*s),
        AdminAnswer::Error(e) => Err(AdminError::Protocol(e)),
        AdminAnswer::Reload(_) => Err(AdminError::Protocol("a reload answer to status".into())),
    }
}

/// Asks the gateway using `data_dir` to re-read its config file.
pub async fn reload(data_dir: &Path) -> Result<ReloadOutcome, AdminError> {
    match request(data_dir, &AdminRequest::Reload).await? {
        AdminAnswer::Reload(outcome) => Ok(outcome),
        AdminAnswer::Error(e) => Err(AdminError::Protocol(e)),
        AdminAnswer::Status(_) => Err(AdminError::Protocol("a status answer to reload".into())),
    }
}

async fn request(data_dir: &Path, request: &AdminRequest) -> Result<AdminAnswer, AdminError> {
    let path = socket_path(data_dir);
    let mut stream = UnixStream::connect(&path)
        .await
        .map_err(|error| AdminError::NotRunning {
            path: path.clone(),
            error,
        })?;
    let exchange = async {
        let mut text = serde_json::to_string(request).map_err(|e| e.to_string())?;
        text.push('\n');
        stream
            .write_all(text.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new((&mut stream).take(64 * 1024 * 1024))
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_str::<AdminAnswer>(&line).map_err(|e| e.to_string())
    };
    match tokio::time::timeout(IO_TIMEOUT, exchange).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(AdminError::Protocol(e)),
        Err(_) => Err(AdminError::Protocol(format!(
            "no answer within {}s",
            IO_TIMEOUT.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> GatewayInfo {
        GatewayInfo {
            started: "2026-01-01T00:00:00Z".into(),
            ssh_listen: "127.0.0.1:1".into(),
            api_listen: "127.0.0.1:2".into(),
            metrics_listen: None,
            host_key_fingerprints: vec!["SHA256:x".into()],
        }
    }

    #[tokio::test]
    async fn status_round_trips_and_the_socket_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let listener = bind(dir.path()).await.unwrap();
        let mode = std::fs::metadata(socket_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            info(),
            ConsoleHubs::default(),
            None,
            shutdown.clone(),
        ));
        let s = status(dir.path()).await.unwrap();
        assert_eq!(s.ssh_listen, "127.0.0.1:1");
        assert_eq!(s.pid, std::process::id());
        // A second gateway on the same data directory is refused.
        assert!(matches!(bind(dir.path()).await, Err(AdminError::InUse(_))));
        // Junk gets an error answer, and the socket keeps serving.
        let mut junk = UnixStream::connect(socket_path(dir.path())).await.unwrap();
        junk.write_all(b"{\"command\":\"rm -rf\"}\n").await.unwrap();
        let mut line = String::new();
        BufReader::new(&mut junk)
            .read_line(&mut line)
            .await
            .unwrap();
        assert!(line.contains("CG-OPS-002 bad admin request"), "{line}");
        // An oversized request is cut at the limit and refused the same way.
        let mut big = UnixStream::connect(socket_path(dir.path())).await.unwrap();
        let _ = big.write_all(&vec![b'{'; 64 * 1024]).await;
        let mut line = String::new();
        BufReader::new(&mut big).read_line(&mut line).await.unwrap();
        assert!(line.contains("CG-OPS-002 bad admin request"), "{line}");
        assert!(status(dir.path()).await.is_ok());
        shutdown.cancel();
        task.await.unwrap();
        assert!(!socket_path(dir.path()).exists());
        let e = status(dir.path()).await.unwrap_err();
        assert!(
            e.to_string().contains("CG-OPS-002 no gateway answers"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        drop(std::os::unix::net::UnixListener::bind(socket_path(dir.path())).unwrap());
        assert!(socket_path(dir.path()).exists());
        bind(dir.path()).await.unwrap();
    }
}
