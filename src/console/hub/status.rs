//! What a hub reports about itself, for `consolegate status` and
//! `/metrics`: the backend's state and counters, and each attached session.

use super::{Hub, Principal, SessionId};
use crate::timefmt::format_time;

/// What a hub is doing, for `consolegate status` and `/metrics`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubStatus {
    /// The instance.
    pub instance: String,
    /// The serial target.
    pub target: String,
    /// Whether the backend is connected.
    pub connected: bool,
    /// Whether this node holds the console (always, alone; in a fleet, while
    /// it holds the console's lease; another node holds it otherwise).
    #[serde(default = "held_by_default")]
    pub held: bool,
    /// `connected`, or why not (with its runbook code).
    pub state: String,
    /// When the backend entered this state (RFC 3339).
    pub since: String,
    /// When the machine last printed something (RFC 3339).
    pub last_output: Option<String>,
    /// Bytes the machine printed since the gateway started.
    pub bytes_from_console: u64,
    /// Bytes typed into the machine since the gateway started.
    pub bytes_to_console: u64,
    /// Output bytes that slow sessions skipped.
    pub skipped_bytes: u64,
    /// Times the backend connection was re-established after a loss.
    pub reconnects: u64,
    /// The attached sessions.
    pub sessions: Vec<SessionStatus>,
}

fn held_by_default() -> bool {
    true
}

/// One attached session, as `consolegate status` shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatus {
    /// Its id within the hub.
    pub id: SessionId,
    /// Its console connection (SSH sessions).
    pub connection_id: Option<String>,
    /// Its client key's fingerprint (SSH sessions).
    pub fingerprint: Option<String>,
    /// Its console token's id (web sessions).
    pub console_token: Option<String>,
    /// Where it connects from.
    pub peer: String,
    /// `writer`, `read-write` or `read-only`.
    pub role: String,
    /// When it attached (RFC 3339).
    pub since: String,
    /// Output bytes queued for it.
    pub bytes_out: u64,
    /// Bytes it typed.
    pub bytes_in: u64,
    /// Times it fell behind and had output skipped.
    pub lag_drops: u64,
    /// Output bytes it skipped.
    pub skipped_bytes: u64,
}

/// What a session moved, for `consolegate status`.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct SessionCounters {
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub lag_drops: u64,
    pub skipped_bytes: u64,
}

/// The hub's own figures, for `consolegate status` and `/metrics`.
#[derive(Debug)]
pub(super) struct HubCounters {
    pub state_since: time::OffsetDateTime,
    pub last_output: Option<time::OffsetDateTime>,
    pub bytes_from_console: u64,
    pub bytes_to_console: u64,
    pub skipped_bytes: u64,
    pub reconnects: u64,
    /// Whether the backend was ever connected (a later connect is a reconnect).
    pub ever_connected: bool,
}

impl Default for HubCounters {
    fn default() -> Self {
        HubCounters {
            state_since: time::OffsetDateTime::now_utc(),
            last_output: None,
            bytes_from_console: 0,
            bytes_to_console: 0,
            skipped_bytes: 0,
            reconnects: 0,
            ever_connected: false,
        }
    }
}

impl Hub {
    pub(super) fn status(&mut self) -> HubStatus {
        self.prune();
        let who = self.who();
        let sessions = self
            .sessions
            .iter()
            .zip(who)
            .map(|(s, w)| SessionStatus {
                id: s.id,
                connection_id: match &s.info.principal {
                    Principal::Key { connection_id, .. } => Some(connection_id.clone()),
                    Principal::ConsoleToken { .. } => None,
                },
                fingerprint: match &s.info.principal {
                    Principal::Key { fingerprint, .. } => Some(fingerprint.clone()),
                    Principal::ConsoleToken { .. } => None,
                },
                console_token: match &s.info.principal {
                    Principal::ConsoleToken { id } => Some(id.clone()),
                    Principal::Key { .. } => None,
                },
                peer: s.info.peer.to_string(),
                role: w.role.as_str().to_owned(),
                since: format_time(s.since_wall),
                bytes_out: s.counters.bytes_out,
                bytes_in: s.counters.bytes_in,
                lag_drops: s.counters.lag_drops,
                skipped_bytes: s.counters.skipped_bytes,
            })
            .collect();
        HubStatus {
            instance: self.instance.id.clone(),
            target: self.instance.serial.to_string(),
            connected: self.unavailable.is_none(),
            held: self.unavailable.as_deref() != Some(super::NOT_HELD),
            state: self
                .unavailable
                .clone()
                .unwrap_or_else(|| "connected".to_owned()),
            since: format_time(self.counters.state_since),
            last_output: self.counters.last_output.map(format_time),
            bytes_from_console: self.counters.bytes_from_console,
            bytes_to_console: self.counters.bytes_to_console,
            skipped_bytes: self.counters.skipped_bytes,
            reconnects: self.counters.reconnects,
            sessions,
        }
    }
}
