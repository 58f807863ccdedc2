//! Who is attached to a hub, and where each stands: typed answers that
//! each front end (SSH, web) renders in its own words.

use std::net::SocketAddr;
use std::time::Duration;

use super::SessionId;

/// Who a session acts for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Principal {
    /// A console connection, authenticated by its registered key.
    Key {
        /// The console connection.
        connection_id: String,
        /// The client key's fingerprint.
        fingerprint: String,
    },
    /// A web console, admitted by a console token.
    ConsoleToken {
        /// The token's id (a prefix of its SHA-256: never the token).
        id: String,
    },
}

impl Principal {
    /// A short label for lists and notices: the connection id's tail and
    /// the key, or the token's id.
    pub fn label(&self) -> String {
        match self {
            Principal::Key {
                connection_id,
                fingerprint,
            } => {
                let tail = &connection_id[connection_id.len().saturating_sub(8)..];
                format!("…{tail}, {fingerprint}")
            }
            Principal::ConsoleToken { id } => format!("console token {id}"),
        }
    }
}

/// Who a session is, as others see it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Whom it acts for.
    pub principal: Principal,
    /// Where it connects from.
    pub peer: SocketAddr,
    /// Attach read-only.
    pub read_only: bool,
    /// Take write access on attach.
    pub force: bool,
    /// Disconnect rather than skip output when falling behind.
    pub disconnect_when_lagging: bool,
    /// The node of the fleet it came in through, when not this one.
    pub via_node: Option<String>,
}

/// Where a session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// It holds the exclusive write access.
    Writer,
    /// It types, as every read-write session does (shared input).
    ReadWrite,
    /// It watches, because it asked to.
    ReadOnlyAsked,
    /// It watches, because this session holds exclusive write access
    /// (its label, as [`Principal::label`] and the session id make it).
    ReadOnlyWhile(String),
}

impl Role {
    /// `writer`, `read-write` or `read-only`: the word lists and metrics use.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Writer => "writer",
            Role::ReadWrite => "read-write",
            Role::ReadOnlyAsked | Role::ReadOnlyWhile(_) => "read-only",
        }
    }
}

/// A line of `who`.
#[derive(Debug, Clone)]
pub struct WhoEntry {
    /// The session.
    pub id: SessionId,
    /// Who.
    pub info: SessionInfo,
    /// Where it stands.
    pub role: Role,
    /// How long it has been attached.
    pub attached_for: Duration,
}

/// Why a break was not sent.
#[derive(Debug, thiserror::Error)]
pub enum BreakError {
    /// The console is not connected (it is reconnecting).
    #[error("CG-BRK-002 the console is not connected; the break was not sent")]
    NotConnected,
    /// The session may not write (it attached `ro`, or another session
    /// holds exclusive write access): a break is input like any other.
    #[error("CG-INPUT-001 you are read-only here: the break was not sent (&F takes write access)")]
    ReadOnly,
    /// The backend cannot carry a break, or sending it failed.
    #[error(transparent)]
    Backend(#[from] crate::console::backend::BreakError),
    /// The hub has stopped.
    #[error(transparent)]
    Stopped(#[from] super::HubStopped),
}
