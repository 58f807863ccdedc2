//! The console hub: one per instance, owner of its serial backend.
//!
//! A serial console accepts one client (QEMU's chardev socket serves one at a
//! time), while any number of SSH sessions may want it. The hub is a task that
//! holds the one backend connection, opened at start-up and reopened with
//! backoff when it drops, and:
//!
//! - publishes console output to every attached session through a bounded
//!   broadcast channel: a session that cannot keep up loses output (and is
//!   told), it never slows the machine or the other sessions;
//! - keeps the last [`REPLAY_BYTES`] of output, replayed on attach, so a
//!   session arriving after the boot still sees how it went;
//! - takes input and break requests from sessions through a bounded queue
//!   (a session typing faster than the console accepts waits, alone);
//! - tells sessions in plain words when the backend is unreachable, lost or
//!   back, so nobody stares at a silent terminal.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::backend::BackendConnection;
use crate::config::InstanceConfig;

/// Output kept for replay on attach.
pub const REPLAY_BYTES: usize = 64 * 1024;
/// Events a session may fall behind by before it starts losing output.
const EVENT_CAPACITY: usize = 256;
/// Input and break requests queued towards the backend.
const COMMAND_CAPACITY: usize = 64;
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Something a session shows.
#[derive(Debug, Clone)]
pub enum ConsoleEvent {
    /// Bytes the machine printed.
    Output(Bytes),
    /// A message from the gateway about the console's state.
    Notice(String),
}

/// What a session receives when it attaches.
#[derive(Debug)]
pub struct Attachment {
    /// Recent output, oldest first.
    pub replay: Vec<u8>,
    /// Why the console is not connected, if it is not.
    pub unavailable: Option<String>,
    /// Everything from now on.
    pub events: broadcast::Receiver<ConsoleEvent>,
}

/// The hub has stopped (the gateway is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the console hub has stopped")]
pub struct HubStopped;

enum HubCommand {
    Input(Bytes),
    Break(oneshot::Sender<Result<(), String>>),
}

struct HubState {
    history: VecDeque<u8>,
    unavailable: Option<String>,
    events: broadcast::Sender<ConsoleEvent>,
}

struct HubShared {
    instance: InstanceConfig,
    state: Mutex<HubState>,
}

impl HubShared {
    fn state(&self) -> MutexGuard<'_, HubState> {
        // The lock is never held across an await or a panic-prone call.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish_output(&self, data: &[u8]) {
        let mut state = self.state();
        let overflow = (state.history.len() + data.len()).saturating_sub(REPLAY_BYTES);
        let len = state.history.len();
        state.history.drain(..overflow.min(len));
        let keep = &data[data.len().saturating_sub(REPLAY_BYTES)..];
        state.history.extend(keep);
        let _ = state
            .events
            .send(ConsoleEvent::Output(Bytes::copy_from_slice(data)));
    }

    fn set_unavailable(&self, reason: Option<String>) {
        let mut state = self.state();
        if let Some(r) = &reason {
            let _ = state.events.send(ConsoleEvent::Notice(r.clone()));
        } else if state.unavailable.is_some() {
            let _ = state
                .events
                .send(ConsoleEvent::Notice("console connected".into()));
        }
        state.unavailable = reason;
    }
}

/// A handle on an instance's console hub; cheap to clone.
#[derive(Clone)]
pub struct ConsoleHub {
    shared: Arc<HubShared>,
    commands: mpsc::Sender<HubCommand>,
}

impl std::fmt::Debug for ConsoleHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleHub")
            .field("instance", &self.shared.instance.id)
            .finish_non_exhaustive()
    }
}

impl ConsoleHub {
    /// Starts the hub task for `instance`; it stops when `shutdown` is cancelled.
    pub fn start(
        instance: InstanceConfig,
        shutdown: CancellationToken,
    ) -> (ConsoleHub, tokio::task::JoinHandle<()>) {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let shared = Arc::new(HubShared {
            instance,
            state: Mutex::new(HubState {
                history: VecDeque::with_capacity(REPLAY_BYTES),
                unavailable: Some("connecting to the console".into()),
                events,
            }),
        });
        let (tx, rx) = mpsc::channel(COMMAND_CAPACITY);
        let task = tokio::spawn(run_hub(shared.clone(), rx, shutdown));
        (
            ConsoleHub {
                shared,
                commands: tx,
            },
            task,
        )
    }

    /// The instance this hub serves.
    pub fn instance(&self) -> &InstanceConfig {
        &self.shared.instance
    }

    /// Attaches a new session: recent output plus everything that follows,
    /// with nothing lost or repeated in between.
    pub fn attach(&self) -> Attachment {
        let state = self.shared.state();
        Attachment {
            replay: state.history.iter().copied().collect(),
            unavailable: state.unavailable.clone(),
            events: state.events.subscribe(),
        }
    }

    /// Sends typed bytes to the console (dropped while it is disconnected).
    pub async fn input(&self, data: Bytes) -> Result<(), HubStopped> {
        self.commands
            .send(HubCommand::Input(data))
            .await
            .map_err(|_| HubStopped)
    }

    /// Sends a serial break; the error says why it could not be sent.
    pub async fn send_break(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(HubCommand::Break(tx))
            .await
            .map_err(|_| HubStopped.to_string())?;
        rx.await.map_err(|_| HubStopped.to_string())?
    }
}

async fn run_hub(
    shared: Arc<HubShared>,
    mut commands: mpsc::Receiver<HubCommand>,
    shutdown: CancellationToken,
) {
    let target = shared.instance.serial.clone();
    let mut backoff = MIN_BACKOFF;
    let mut last_error = String::new();
    loop {
        let connected = tokio::select! {
            c = BackendConnection::connect(&target, &shared.instance.id) => c,
            () = shutdown.cancelled() => return,
        };
        match connected {
            Ok(mut conn) => {
                tracing::info!(instance = %shared.instance.id, %target, "console connected");
                shared.set_unavailable(None);
                backoff = MIN_BACKOFF;
                last_error.clear();
                let Some(reason) = pump(&shared, &mut conn, &mut commands, &shutdown).await else {
                    return;
                };
                tracing::warn!(instance = %shared.instance.id, %target, %reason, "console connection lost");
                shared.set_unavailable(Some(format!(
                    "console connection lost ({reason}); reconnecting"
                )));
            }
            Err(e) => {
                let message = format!("console {target} is unavailable ({e}); retrying");
                if message != last_error {
                    tracing::warn!(instance = %shared.instance.id, %target, error = %e, "console unavailable");
                    shared.set_unavailable(Some(message.clone()));
                    last_error = message;
                }
            }
        }
        if !wait_disconnected(&mut commands, &shutdown, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Moves bytes while connected. Returns why the connection ended, or `None`
/// when the hub must stop.
async fn pump(
    shared: &HubShared,
    conn: &mut BackendConnection,
    commands: &mut mpsc::Receiver<HubCommand>,
    shutdown: &CancellationToken,
) -> Option<String> {
    let mut out = Vec::with_capacity(16 * 1024);
    loop {
        tokio::select! {
            read = conn.read_raw() => match read {
                Ok(0) => return Some("the console closed the connection".into()),
                Ok(n) => {
                    if let Err(e) = conn.decode(n, &mut out).await {
                        return Some(e.to_string());
                    }
                    if !out.is_empty() {
                        shared.publish_output(&out);
                    }
                }
                Err(e) => return Some(e.to_string()),
            },
            command = commands.recv() => match command {
                Some(HubCommand::Input(data)) => {
                    if let Err(e) = conn.write(&data).await {
                        return Some(e.to_string());
                    }
                }
                Some(HubCommand::Break(reply)) => {
                    let result = conn.send_break().await.map_err(|e| e.to_string());
                    let _ = reply.send(result);
                }
                None => return None,
            },
            () = shutdown.cancelled() => return None,
        }
    }
}

/// Waits out a backoff while disconnected, refusing breaks and dropping
/// input. Returns `false` when the hub must stop.
async fn wait_disconnected(
    commands: &mut mpsc::Receiver<HubCommand>,
    shutdown: &CancellationToken,
    backoff: Duration,
) -> bool {
    let sleep = tokio::time::sleep(backoff);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return true,
            command = commands.recv() => match command {
                Some(HubCommand::Break(reply)) => {
                    let _ = reply.send(Err("the console is not connected".into()));
                }
                Some(HubCommand::Input(_)) => {}
                None => return false,
            },
            () = shutdown.cancelled() => return false,
        }
    }
}

/// The hubs of all configured instances.
#[derive(Debug, Default)]
pub struct ConsoleHubs {
    hubs: std::collections::HashMap<String, ConsoleHub>,
}

impl ConsoleHubs {
    /// Starts one hub per instance; their tasks go into `tasks`.
    pub fn start(
        instances: &[InstanceConfig],
        shutdown: &CancellationToken,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> ConsoleHubs {
        let mut hubs = std::collections::HashMap::new();
        for instance in instances {
            let (hub, task) = ConsoleHub::start(instance.clone(), shutdown.clone());
            tasks.spawn(async move {
                let _ = task.await;
            });
            hubs.insert(instance.id.clone(), hub);
        }
        ConsoleHubs { hubs }
    }

    /// The hub of `instance_id`.
    pub fn get(&self, instance_id: &str) -> Option<&ConsoleHub> {
        self.hubs.get(instance_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SerialTarget;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn instance(serial: SerialTarget) -> InstanceConfig {
        InstanceConfig {
            id: "vm1".into(),
            display_name: None,
            compartment: "c".into(),
            serial,
            vnc: None,
        }
    }

    async fn next_output(a: &mut Attachment) -> Vec<u8> {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), a.events.recv())
                .await
                .expect("no event within 10 s")
                .unwrap()
            {
                ConsoleEvent::Output(b) => return b.to_vec(),
                ConsoleEvent::Notice(_) => continue,
            }
        }
    }

    #[tokio::test]
    async fn fans_out_replays_and_reconnects() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shutdown = CancellationToken::new();
        let (hub, task) = ConsoleHub::start(
            instance(SerialTarget::Tcp("127.0.0.1".into(), port)),
            shutdown.clone(),
        );
        let mut a = hub.attach();
        let (mut console, _) = listener.accept().await.unwrap();
        console.write_all(b"boot log\r\n").await.unwrap();
        assert_eq!(next_output(&mut a).await, b"boot log\r\n");

        // A late session gets the replay; both see new output.
        let mut b = hub.attach();
        assert_eq!(b.replay, b"boot log\r\n");
        console.write_all(b"login: ").await.unwrap();
        assert_eq!(next_output(&mut a).await, b"login: ");
        assert_eq!(next_output(&mut b).await, b"login: ");

        // Input from any session reaches the console.
        hub.input(Bytes::from_static(b"root\r")).await.unwrap();
        let mut buf = [0u8; 5];
        console.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"root\r");
        assert!(hub.send_break().await.unwrap_err().contains("cannot carry"));

        // The machine goes away and comes back: sessions are told, and resume.
        drop(console);
        loop {
            match a.events.recv().await.unwrap() {
                ConsoleEvent::Notice(n) if n.contains("lost") => break,
                _ => {}
            }
        }
        let (mut console, _) = listener.accept().await.unwrap();
        console.write_all(b"rebooted").await.unwrap();
        assert_eq!(next_output(&mut a).await, b"rebooted");

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(hub.input(Bytes::from_static(b"x")).await.is_err());
    }

    #[tokio::test]
    async fn unreachable_backend_is_reported_not_hung() {
        let shutdown = CancellationToken::new();
        let (hub, _task) = ConsoleHub::start(
            instance(SerialTarget::Unix("/nonexistent/console.sock".into())),
            shutdown.clone(),
        );
        let mut a = hub.attach();
        let notice = loop {
            match tokio::time::timeout(Duration::from_secs(10), a.events.recv())
                .await
                .unwrap()
                .unwrap()
            {
                ConsoleEvent::Notice(n) => break n,
                ConsoleEvent::Output(_) => {}
            }
        };
        assert!(notice.contains("unavailable"), "{notice}");
        assert!(notice.contains("/nonexistent/console.sock"), "{notice}");
        assert!(
            hub.send_break()
                .await
                .unwrap_err()
                .contains("not connected")
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn replay_is_bounded() {
        let shutdown = CancellationToken::new();
        let (hub, _task) = ConsoleHub::start(instance(SerialTarget::Simulator), shutdown.clone());
        let big = vec![b'x'; REPLAY_BYTES * 3 + 7];
        hub.shared.publish_output(&big);
        hub.shared.publish_output(b"tail");
        let a = hub.attach();
        assert_eq!(a.replay.len(), REPLAY_BYTES);
        assert!(a.replay.ends_with(b"xtail"));
        shutdown.cancel();
    }
}
