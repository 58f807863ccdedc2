//! What the outer and inner hops share: opening console sessions and VNC
//! tunnels for an authorised connection, refusing everything else, and the
//! session-channel requests both answer alike.

use std::sync::Arc;

use russh::Channel;
use russh::server::{ChannelOpenHandle, Msg, Session};
use russh::{ChannelId, ChannelOpenFailure};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use super::SshContext;
use super::auth::Authorized;
use super::console_session::ConsoleChannel;
use crate::audit::AuditKind;
use crate::sessions::Sessions;
use crate::sessions::caps::OverCap;

/// The VNC port on the instance.
pub(super) const VNC_PORT: u32 = 5900;

/// Most channels one SSH connection may have open at once.
pub(super) const MAX_CHANNELS: usize = 16;

/// The channel tasks of one SSH connection, both hops together. They
/// belong to the gateway's [`Sessions`]: dropping this (as russh drops a
/// handler when its connection ends) does not stop them. Each ends by
/// itself when its channel closes, which the connection's end does to
/// all, so its Detach row and recording are always written.
#[derive(Debug, Clone)]
pub(super) struct ChannelTasks {
    sessions: Sessions,
    connection: TaskTracker,
    /// [`MAX_CHANNELS`] places, taken before a channel is accepted: hops
    /// run on tasks of their own, so counting the tasks would let two of
    /// them take the last place at once.
    places: Arc<Semaphore>,
}

/// A channel's place on its connection, held by its task.
#[derive(Debug)]
pub(super) struct ChannelPlace {
    _permit: OwnedSemaphorePermit,
}

impl ChannelTasks {
    pub fn new(sessions: Sessions) -> ChannelTasks {
        ChannelTasks {
            sessions,
            connection: TaskTracker::new(),
            places: Arc::new(Semaphore::new(MAX_CHANNELS)),
        }
    }

    /// A place for another channel, if the connection has one left.
    pub fn reserve(&self) -> Option<ChannelPlace> {
        self.places
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|p| ChannelPlace { _permit: p })
    }

    /// Runs a channel's task, which holds `place` until it ends.
    ///
    /// Not `async move { task.await; drop(place) }`: rustc keeps a moved-in
    /// future twice in such a block's state (once captured, once awaited),
    /// and a console session's task is about 5.5 KB, held for its whole
    /// life (`BENCHMARKS.md`, memory per idle session).
    pub fn spawn(&self, place: ChannelPlace, task: impl Future<Output = ()> + Send + 'static) {
        use futures_util::FutureExt;
        self.sessions.spawn(
            self.connection
                .track_future(task.map(move |()| drop(place))),
        );
    }

    /// Waits up to `grace` for every channel task to end.
    pub async fn wind_down(&self, grace: std::time::Duration) {
        self.connection.close();
        let _ = tokio::time::timeout(grace, self.connection.wait()).await;
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
        tasks: &ChannelTasks,
        via: &'static str,
        user_name: &str,
    ) {
        let Some(hub) = ctx.hubs.get(&self.instance.id) else {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        };
        let Some(place) = tasks.reserve() else {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return;
        };
        reply.accept().await;
        let me = self.clone();
        tasks.spawn(
            place,
            super::console_session::serve(Box::new(ConsoleChannel {
                channel,
                ctx: ctx.clone(),
                hub,
                who: me,
                via,
                user_name: user_name.to_owned(),
            })),
        );
    }

    /// Opens the instance's VNC target for a `direct-tcpip` channel.
    pub async fn open_vnc(
        &self,
        ctx: &Arc<SshContext>,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        tasks: &ChannelTasks,
        via: &'static str,
    ) {
        let Some(target) = self.instance.vnc.clone() else {
            tracing::info!(code = "CG-VNC-002", connection = %self.connection_id,
                instance = %self.instance.id, "VNC requested but the instance has no VNC target");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        };
        let Some(channel_place) = tasks.reserve() else {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return;
        };
        let place = match ctx
            .sessions
            .caps()
            .take(&self.instance.id, &self.principal())
        {
            Ok(place) => place,
            Err(over) => {
                tracing::info!(code = OverCap::CODE, connection = %self.connection_id,
                    instance = %self.instance.id, peer = %self.peer, %over,
                    "VNC tunnel refused: over a session cap");
                reply.reject(ChannelOpenFailure::ResourceShortage).await;
                return;
            }
        };
        tasks.spawn(
            channel_place,
            super::tunnel::forward_vnc(
                ctx.clone(),
                channel,
                reply,
                target,
                self.clone(),
                via,
                place,
            ),
        );
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
        ctx.refusals.record(e, self.peer.ip()).await;
    }
}

/// Answers a channel request that needs an explicit reply.
pub(crate) fn answer(
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
/// are granted (the console task takes it from there); `exec`,
/// subsystems and X11 are refused, as the console is the only thing to run; `none`
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

        // Clients ask for a reply to x11-req (OpenSSH and PuTTY do):
        // unanswered, every later reply is taken for the one before it.
        async fn x11_request(
            &mut self,
            channel: russh::ChannelId,
            _single_connection: bool,
            _x11_auth_protocol: &str,
            _x11_auth_cookie: &str,
            _x11_screen_number: u32,
            session: &mut russh::server::Session,
        ) -> Result<(), Self::Error> {
            super::channels::answer(session, channel, false)
        }
    };
}
pub(super) use console_session_requests;

/// The answer to anything but `publickey`: try `publickey`.
pub(crate) fn publickey_only() -> russh::server::Auth {
    russh::server::Auth::Reject {
        proceed_with_methods: Some(russh::MethodSet::from(&[russh::MethodKind::PublicKey][..])),
        partial_success: false,
    }
}

/// Bounds what a client-chosen string can put in the log.
pub(crate) fn truncate(s: &str) -> String {
    s.chars().take(100).flat_map(char::escape_default).collect()
}
