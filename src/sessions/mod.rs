//! The data plane: every way a user reaches a console or a VNC display.
//!
//! - [`ssh`]: the SSH front end (outer hop, nested inner hop, VNC tunnels);
//! - [`web`]: the web front end behind Nova's console URLs (the serial
//!   console and websockify over WebSockets), with its own router;
//! - [`attach`]: the one attach core both front ends run a console session
//!   through: what the user is shown, the `&` escapes, the timeouts, the
//!   recording and the Attach/Detach audit;
//! - [`proxy`]: the one VNC copy, for SSH tunnels and websockify alike;
//! - [`caps`]: the caps on sessions per instance, console connection and
//!   key;
//! - [`link`]: sessions on any node of a fleet, relayed to the node that
//!   holds their console over the authenticated node link;
//! - this file: [`Sessions`], the one owner of every session.
//!
//! The gateway is never an open proxy: the only places a session can lead
//! are its instance's console and its configured VNC target.

pub mod attach;
pub mod caps;
pub mod link;
pub mod proxy;
pub mod ssh;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ops::metrics::Metrics;
use crate::store::Store;
use attach::{AttachContext, SessionNumbering};
use caps::SessionCaps;

/// The owner of every session: SSH connections (and their channels), web
/// consoles and VNC proxies are all tracked here, admitted under one limit
/// (`[ssh] max_connections`), and ended through one cancellation, before
/// the store closes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Sessions {
    tracker: TaskTracker,
    cancel: CancellationToken,
    limit: Arc<Semaphore>,
    caps: SessionCaps,
    fleet: Option<crate::fleet::FleetLink>,
    /// Set while console sessions must end at once, with the reason.
    cut: Arc<tokio::sync::watch::Sender<Option<Arc<str>>>>,
    /// This process, as its console sessions' audit rows name it.
    numbering: Arc<SessionNumbering>,
}

/// A place under the connection limit; the session holds it until it ends.
#[derive(Debug)]
pub struct Admission {
    _permit: OwnedSemaphorePermit,
}

impl Sessions {
    /// At most `max_connections` sessions at once, with no caps per
    /// instance, connection or key.
    pub fn new(max_connections: usize) -> Sessions {
        Sessions::capped(max_connections, SessionCaps::unlimited())
    }

    /// At most `max_connections` sessions at once, and at most `caps`'
    /// per instance, console connection and key.
    pub fn capped(max_connections: usize, caps: SessionCaps) -> Sessions {
        Sessions {
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            limit: Arc::new(Semaphore::new(max_connections)),
            caps,
            fleet: None,
            cut: Arc::new(tokio::sync::watch::channel(None).0),
            numbering: Arc::new(SessionNumbering::new(None, crate::ids::random_hex(8))),
        }
    }

    /// Names this process in its console sessions' audit rows: the process
    /// `incarnation` of node `node_id` (`None`: a gateway alone), the
    /// names `Store::reconcile_detaches` looks for after a crash. Unnamed,
    /// a gateway alone with an incarnation of its own.
    pub fn named(self, node_id: Option<String>, incarnation: String) -> Sessions {
        Sessions {
            numbering: Arc::new(SessionNumbering::new(node_id, incarnation)),
            ..self
        }
    }

    /// At most `max_connections` sessions at once, on a node of `fleet`:
    /// console sessions reach their console wherever it is held.
    pub fn in_fleet(
        max_connections: usize,
        caps: SessionCaps,
        fleet: crate::fleet::FleetLink,
    ) -> Sessions {
        Sessions {
            fleet: Some(fleet),
            ..Sessions::capped(max_connections, caps)
        }
    }

    /// The caps on sessions per instance, console connection and key.
    pub fn caps(&self) -> &SessionCaps {
        &self.caps
    }

    /// Waits for a place (SSH: excess clients wait in the listen backlog);
    /// `None` once sessions are ending.
    pub async fn admit(&self) -> Option<Admission> {
        tokio::select! {
            permit = self.limit.clone().acquire_owned() => permit.ok().map(|p| Admission { _permit: p }),
            () = self.cancel.cancelled() => None,
        }
    }

    /// A place now, or `None` if every place is taken or sessions are
    /// ending (web: the browser is told to retry).
    pub fn try_admit(&self) -> Option<Admission> {
        if self.cancel.is_cancelled() {
            return None;
        }
        self.limit
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|p| Admission { _permit: p })
    }

    /// Runs `session` as a tracked task.
    pub fn spawn<F>(&self, session: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(session);
    }

    /// Tracks a session something else spawns (an upgraded WebSocket).
    pub fn track<F: Future>(&self, session: F) -> tokio_util::task::task_tracker::TrackedFuture<F> {
        self.tracker.track_future(session)
    }

    /// What console sessions of this owner need: where their audit rows
    /// go, where their timeouts are counted, when they must end.
    pub fn attach_context(&self, store: Store, metrics: Arc<Metrics>) -> AttachContext {
        AttachContext {
            store,
            metrics,
            ending: self.cancel.clone(),
            cut: self.cut.subscribe(),
            fleet: self.fleet.clone(),
            caps: self.caps.clone(),
            numbering: self.numbering.clone(),
        }
    }

    /// Ends every console session now with `reason` (they say so and write
    /// their Detach rows), without stopping the gateway; sessions that
    /// attach later are not affected once [`Sessions::uncut`] is called.
    pub fn cut_all(&self, reason: &str) {
        self.cut.send_replace(Some(Arc::from(reason)));
    }

    /// Lets console sessions attach and run again after [`Sessions::cut_all`].
    pub fn uncut(&self) {
        self.cut.send_replace(None);
    }

    /// Cancelled when sessions must end.
    pub fn ending(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Ends every session: each is told why and writes its Detach audit
    /// row and recording; waits up to `grace` for them. Returns how many
    /// were still running when the grace ran out.
    pub async fn end_all(&self, grace: Duration) -> usize {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            let left = self.tracker.len();
            tracing::warn!(
                code = "CG-OPS-010",
                left,
                "sessions still running after the shutdown grace"
            );
            return left;
        }
        0
    }
}
