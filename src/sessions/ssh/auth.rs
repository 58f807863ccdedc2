//! Checking a key against a console-connection record: what both hops
//! ask before they open anything.

use std::net::SocketAddr;
use std::sync::Arc;

use russh::keys::{Algorithm, PublicKey};

use super::SshContext;
use crate::audit::{AuditEvent, AuditKind};
use crate::config::InstanceConfig;
use crate::store::LifecycleState;

/// A connection that passed public-key authentication.
#[derive(Debug, Clone)]
pub(super) struct Authorized {
    pub connection_id: String,
    pub fingerprint: String,
    pub instance: Arc<InstanceConfig>,
    pub peer: SocketAddr,
}

/// Why a key was refused. The client only hears "no" (`Permission denied
/// (publickey)`); the log and the audit trail get this, with its runbook code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum AuthRefusal {
    /// The user name cannot be a connection id.
    #[error("user name is not a connection id")]
    NotAConnectionId,
    /// No record has this id (never created, or purged).
    #[error("no such console connection")]
    UnknownConnection,
    /// The record is DELETING or DELETED.
    #[error("console connection is {0}")]
    NotActive(LifecycleState),
    /// Another key than the record's.
    #[error("key {0} is not the connection's key")]
    WrongKey(String),
    /// The record's instance is not in this gateway's config.
    #[error("instance {0} is not configured on this gateway")]
    UnknownInstance(String),
    /// An RSA signature with SHA-1 (`ssh-rsa`), which is forgeable.
    #[error("SHA-1 RSA signatures (ssh-rsa) are refused; use rsa-sha2-256 or rsa-sha2-512")]
    Sha1Signature,
    /// The store could not be read.
    #[error("store error: {0}")]
    Store(String),
}

impl AuthRefusal {
    /// The runbook entry.
    pub fn code(&self) -> &'static str {
        match self {
            AuthRefusal::NotAConnectionId => "CG-AUTH-001",
            AuthRefusal::UnknownConnection => "CG-AUTH-002",
            AuthRefusal::NotActive(_) => "CG-AUTH-003",
            AuthRefusal::WrongKey(_) => "CG-AUTH-004",
            AuthRefusal::UnknownInstance(_) => "CG-AUTH-005",
            AuthRefusal::Sha1Signature => "CG-AUTH-008",
            AuthRefusal::Store(_) => "CG-STORE-002",
        }
    }

    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthRefusal::NotAConnectionId => "not_a_connection_id",
            AuthRefusal::UnknownConnection => "unknown_connection",
            AuthRefusal::NotActive(_) => "connection_not_active",
            AuthRefusal::WrongKey(_) => "wrong_key",
            AuthRefusal::UnknownInstance(_) => "unknown_instance",
            AuthRefusal::Sha1Signature => "sha1_signature",
            AuthRefusal::Store(_) => "store_error",
        }
    }
}

/// Whether a signature algorithm is SHA-1 RSA (`ssh-rsa`).
pub(super) fn is_sha1_rsa(algorithm: &Algorithm) -> bool {
    matches!(algorithm, Algorithm::Rsa { hash: None })
}

/// Checks `key`, signing with `algorithm`, against the record named
/// `connection_id`.
pub(super) async fn authorize(
    ctx: &SshContext,
    connection_id: &str,
    key: &PublicKey,
    algorithm: &Algorithm,
    peer: SocketAddr,
) -> Result<Authorized, AuthRefusal> {
    if !crate::ids::looks_like_connection_id(connection_id) {
        return Err(AuthRefusal::NotAConnectionId);
    }
    if is_sha1_rsa(algorithm) {
        return Err(AuthRefusal::Sha1Signature);
    }
    let record = match ctx.store.get_connection(connection_id).await {
        Ok(Some(r)) => r,
        Ok(None) => return Err(AuthRefusal::UnknownConnection),
        Err(e) => return Err(AuthRefusal::Store(e.to_string())),
    };
    if record.lifecycle_state != LifecycleState::Active {
        return Err(AuthRefusal::NotActive(record.lifecycle_state));
    }
    let fingerprint = crate::keys::fingerprint(key);
    if fingerprint != record.fingerprint {
        return Err(AuthRefusal::WrongKey(fingerprint));
    }
    let Some(instance) = ctx.instance(&record.instance_id) else {
        return Err(AuthRefusal::UnknownInstance(record.instance_id));
    };
    Ok(Authorized {
        connection_id: record.id,
        fingerprint,
        instance,
        peer,
    })
}

impl Authorized {
    /// Who its sessions act for.
    pub fn principal(&self) -> crate::console::hub::Principal {
        crate::console::hub::Principal::Key {
            connection_id: self.connection_id.clone(),
            fingerprint: self.fingerprint.clone(),
        }
    }

    /// An audit event about this connection.
    pub fn audit(&self, kind: AuditKind) -> AuditEvent {
        crate::sessions::attach::audit_event(
            kind,
            &self.principal(),
            &self.instance.id,
            self.peer,
            None,
            None,
        )
    }
}
