//! What the outer and inner hops share: checking a key against a connection
//! record, and opening console sessions and VNC tunnels for an authorised
//! connection.

use std::net::SocketAddr;
use std::sync::Arc;

use russh::Channel;
use russh::keys::PublicKey;
use russh::server::{ChannelOpenHandle, Msg, Session};
use russh::{ChannelId, ChannelOpenFailure};
use tokio::task::JoinSet;

use super::SshContext;
use crate::audit::{AuditEvent, AuditKind};
use crate::config::InstanceConfig;
use crate::connection::LifecycleState;

/// Most channels one SSH connection may have open at once.
pub(super) const MAX_CHANNELS: usize = 16;

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
            AuthRefusal::Store(_) => "store_error",
        }
    }
}

/// Checks `key` against the record named `connection_id`.
pub(super) async fn authorize(
    ctx: &SshContext,
    connection_id: &str,
    key: &PublicKey,
    peer: SocketAddr,
) -> Result<Authorized, AuthRefusal> {
    if !crate::ids::looks_like_connection_id(connection_id) {
        return Err(AuthRefusal::NotAConnectionId);
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

/// Channel tasks of one SSH connection; dropping it stops them all.
#[derive(Debug, Default)]
pub(super) struct ChannelTasks {
    tasks: JoinSet<()>,
}

impl ChannelTasks {
    /// Whether another channel may be opened.
    pub fn has_room(&mut self) -> bool {
        while self.tasks.try_join_next().is_some() {}
        self.tasks.len() < MAX_CHANNELS
    }

    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }
}

impl Authorized {
    /// Accepts a session channel and attaches it to the console once the
    /// client asks for a shell.
    pub async fn open_console(
        &self,
        ctx: &Arc<SshContext>,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        tasks: &mut ChannelTasks,
        hop: &'static str,
        user_name: &str,
    ) {
        let Some(hub) = ctx.hubs.get(&self.instance.id) else {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        };
        if !tasks.has_room() {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return;
        }
        reply.accept().await;
        let me = self.clone();
        tasks.spawn(super::console_session::serve(
            channel,
            ctx.clone(),
            hub,
            me,
            hop,
            user_name.to_owned(),
        ));
    }

    /// Opens the instance's VNC target for a `direct-tcpip` channel.
    pub async fn open_vnc(
        &self,
        ctx: &Arc<SshContext>,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        tasks: &mut ChannelTasks,
    ) {
        let Some(target) = self.instance.vnc.clone() else {
            tracing::info!(code = "CG-VNC-002", connection = %self.connection_id,
                instance = %self.instance.id, "VNC requested but the instance has no VNC target");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        };
        if !tasks.has_room() {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return;
        }
        tasks.spawn(super::tunnel::forward_vnc(
            ctx.clone(),
            channel,
            reply,
            target,
            self.clone(),
        ));
    }

    /// Refuses a channel to anywhere else, and audits the attempt.
    pub async fn refuse(&self, ctx: &SshContext, reply: ChannelOpenHandle, what: &str, hop: &str) {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        let mut e = self.audit(AuditKind::Refused);
        e.detail = Some(format!(
            "CG-CHAN-001 {hop} hop: channel to {what} refused (only the instance's console and VNC display are reachable)"
        ));
        crate::audit::record(&ctx.store, e).await;
    }

    /// An audit event about this connection.
    pub fn audit(&self, kind: AuditKind) -> AuditEvent {
        let mut e = AuditEvent::new(kind);
        e.connection_id = Some(self.connection_id.clone());
        e.instance_id = Some(self.instance.id.clone());
        e.fingerprint = Some(self.fingerprint.clone());
        e.peer = Some(self.peer.to_string());
        e
    }
}

/// Answers a channel request that needs an explicit reply.
pub(super) fn answer(
    session: &mut Session,
    channel: ChannelId,
    ok: bool,
) -> Result<(), russh::Error> {
    if ok {
        session.channel_success(channel)
    } else {
        session.channel_failure(channel)
    }
}

/// The session-channel requests both hops answer alike: a pty and a shell
/// are granted (the console task takes it from there); `exec` and
/// subsystems are refused, as the console is the only thing to run; `none`
/// authentication is pointed at `publickey`. Expands to `Handler` methods.
macro_rules! console_session_requests {
    () => {
        async fn auth_none(&mut self, _user: &str) -> Result<russh::server::Auth, Self::Error> {
            Ok(super::channels::publickey_only())
        }

        #[allow(clippy::too_many_arguments)]
        async fn pty_request(
            &mut self,
            channel: russh::ChannelId,
            _term: &str,
            _cols: u32,
            _rows: u32,
            _pix_w: u32,
            _pix_h: u32,
            _modes: &[(russh::Pty, u32)],
            session: &mut russh::server::Session,
        ) -> Result<(), Self::Error> {
            super::channels::answer(session, channel, true)
        }

        async fn shell_request(
            &mut self,
            channel: russh::ChannelId,
            session: &mut russh::server::Session,
        ) -> Result<(), Self::Error> {
            super::channels::answer(session, channel, true)
        }

        async fn exec_request(
            &mut self,
            channel: russh::ChannelId,
            _data: &[u8],
            session: &mut russh::server::Session,
        ) -> Result<(), Self::Error> {
            super::channels::answer(session, channel, false)
        }

        async fn subsystem_request(
            &mut self,
            channel: russh::ChannelId,
            _name: &str,
            session: &mut russh::server::Session,
        ) -> Result<(), Self::Error> {
            super::channels::answer(session, channel, false)
        }
    };
}
pub(super) use console_session_requests;

/// The answer to anything but `publickey`: try `publickey`.
pub(super) fn publickey_only() -> russh::server::Auth {
    russh::server::Auth::Reject {
        proceed_with_methods: Some(russh::MethodSet::from(&[russh::MethodKind::PublicKey][..])),
        partial_success: false,
    }
}
