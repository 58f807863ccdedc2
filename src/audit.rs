//! The audit trail: every attach, detach, write-access force, break and
//! refused attempt, and every create, tag update and delete of a console
//! connection, as a structured log line (target `consolegate::audit`) and a
//! row in the store (`Store::record_audit` writes both). The rows of
//! creates, updates and deletes are written in the transaction of the
//! change itself: a change that was answered has its row, even if the
//! process is killed right after.
//!
//! The rows of one console session (Attach, Force, Break, Timeout, Detach)
//! name it by a [`SessionRef`]: the gateway process that ran it and its
//! number there. A process killed mid-session writes no Detach row; the
//! next process of the same node writes one for each such session at
//! start-up (`Store::reconcile_detaches`, `CG-OPS-011`).
//!
//! Refused attempts are stored only when they name an existing console
//! connection (a wrong key for a real id, a channel its holder may not
//! open); anonymous noise, such as unknown user names, goes to the log only,
//! so strangers cannot grow the database.

use serde::Serialize;

/// Why a Detach row was written at start-up, for a session an earlier
/// process of this node ran and never ended (it was killed, or its machine
/// lost power): the session ended at an unknown moment before this row's
/// time, so it carries no byte counts or duration.
pub const UNENDED: &str = "CG-OPS-011 the gateway stopped without ending this session; \
     this row was written when it started again (bytes and duration unknown)";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditKind {
    /// A session attached to a console.
    Attach,
    /// A session left a console.
    Detach,
    /// A session took write access.
    Force,
    /// A serial break was sent.
    Break,
    /// Authentication or a channel was refused.
    Refused,
    /// A VNC tunnel opened.
    VncOpen,
    /// A VNC tunnel closed.
    VncClose,
    /// A session was closed by its idle timeout or maximum duration.
    Timeout,
    /// A node of a fleet could not reach the store for longer than
    /// `[cluster] store_lost_secs`, and ended or kept its sessions
    /// (written once the store answers again).
    StoreLost,
    /// A console connection was created (API or CLI).
    Create,
    /// A console connection's tags were replaced.
    Update,
    /// A console connection was deleted (DELETING from the API, DELETED
    /// from the CLI).
    Delete,
}

impl AuditKind {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Attach => "attach",
            AuditKind::Detach => "detach",
            AuditKind::Force => "force",
            AuditKind::Break => "break",
            AuditKind::Refused => "refused",
            AuditKind::VncOpen => "vnc-open",
            AuditKind::VncClose => "vnc-close",
            AuditKind::Timeout => "timeout",
            AuditKind::StoreLost => "store-lost",
            AuditKind::Create => "create",
            AuditKind::Update => "update",
            AuditKind::Delete => "delete",
        }
    }
}

/// One audit event.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// Row id (0 before it is stored).
    pub id: i64,
    /// RFC 3339 time.
    pub time: String,
    /// What happened.
    pub event: AuditKind,
    /// The console connection.
    pub connection_id: Option<String>,
    /// The instance.
    pub instance_id: Option<String>,
    /// The client key's fingerprint.
    pub fingerprint: Option<String>,
    /// The client's address.
    pub peer: Option<String>,
    /// Whether the session was read-only.
    pub read_only: Option<bool>,
    /// Bytes the client typed (detach).
    pub bytes_in: Option<u64>,
    /// Bytes the client was sent (detach).
    pub bytes_out: Option<u64>,
    /// How long the session lasted, in milliseconds (detach).
    pub duration_ms: Option<u64>,
    /// Anything else worth saying.
    pub detail: Option<String>,
    /// The console session this row is about, if it is about one.
    pub session: Option<SessionRef>,
}

/// Who asked for a change to a console connection: its audit row's `peer`
/// and `detail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    /// `api user <keyId>` for a signed API request, `cli` for the command
    /// line.
    pub name: String,
    /// The client's address, for a request that came over the network.
    pub peer: Option<String>,
}

impl Requester {
    /// The command line on the gateway's host.
    pub fn cli() -> Requester {
        Requester {
            name: "cli".into(),
            peer: None,
        }
    }
}

/// One console session, as its audit rows name it: unique across the
/// processes and nodes that share a store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRef {
    /// The `[cluster] node_id` of the process that ran it; `None` for a
    /// gateway alone.
    pub node_id: Option<String>,
    /// That process: random per start.
    pub incarnation: String,
    /// The session's number in that process (from 1).
    pub number: u64,
}

impl AuditEvent {
    /// An event of `kind`, now, with nothing else filled in.
    pub fn new(kind: AuditKind) -> AuditEvent {
        AuditEvent {
            id: 0,
            time: crate::timefmt::format_time(time::OffsetDateTime::now_utc()),
            event: kind,
            connection_id: None,
            instance_id: None,
            fingerprint: None,
            peer: None,
            read_only: None,
            bytes_in: None,
            bytes_out: None,
            duration_ms: None,
            detail: None,
            session: None,
        }
    }
}
