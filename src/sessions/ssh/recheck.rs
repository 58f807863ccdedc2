//! The periodic re-check of the console connections that this node's SSH
//! sessions stand for.
//!
//! A connection deleted here, or announced deleted by another node, ends
//! its sessions at once (the `revoked` broadcast). The re-check covers what
//! no announcement reached: every `revalidate_interval_secs` one query
//! reads the state of every connection with a live session on this node,
//! and each one no longer ACTIVE is broadcast like a delete (its sessions
//! then read their own record and end). One query per interval for the
//! node, not one per session: at 10,000 idle sessions and the default 2 s,
//! a query per session was 5,000 store reads a second and most of the
//! gateway's CPU at rest.
//!
//! A store that cannot be read is published to the sessions as
//! [`StoreHealth::Unreadable`], again after every failed re-check, so that
//! each can end itself once `store_lost_secs` have passed (see
//! [`super::unchecked_too_long`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::{LifecycleState, Store};

/// Whether the last re-check could read the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StoreHealth {
    /// It could (or none has failed yet).
    Readable,
    /// Every re-check has failed since `since`.
    Unreadable { since: Instant },
}

/// The connections this node's sessions stand for, and the store's health
/// as the last re-check found it.
pub(super) struct Rechecks {
    /// Connection id → sessions of it on this node.
    watched: Mutex<HashMap<String, usize>>,
    health: watch::Sender<StoreHealth>,
}

impl Rechecks {
    pub fn new() -> Arc<Rechecks> {
        Arc::new(Rechecks {
            watched: Mutex::new(HashMap::new()),
            health: watch::channel(StoreHealth::Readable).0,
        })
    }

    /// Keeps connection `id` re-checked while the guard lives.
    pub fn watch(self: &Arc<Self>, id: &str) -> Watching {
        *self.lock().entry(id.to_owned()).or_insert(0) += 1;
        Watching {
            rechecks: self.clone(),
            id: id.to_owned(),
        }
    }

    /// The store's health, as each re-check publishes it.
    pub fn health(&self) -> watch::Receiver<StoreHealth> {
        self.health.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn watched_ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Re-checks every `every` until `stop`: connections no longer ACTIVE
    /// (or gone) are sent on `revoked`.
    pub async fn run(
        self: Arc<Self>,
        store: Store,
        revoked: broadcast::Sender<String>,
        every: Duration,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: nothing is watched yet.
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let ids = self.watched_ids();
            if ids.is_empty() {
                continue;
            }
            match store.connection_states(&ids).await {
                Ok(states) => {
                    for id in ids {
                        if states.get(&id) != Some(&LifecycleState::Active) {
                            tracing::debug!(connection = %id, state = ?states.get(&id),
                                "re-check: console connection no longer active");
                            // No receiver: its sessions have just ended.
                            let _ = revoked.send(id);
                        }
                    }
                    self.health.send_if_modified(|h| {
                        let changed = *h != StoreHealth::Readable;
                        *h = StoreHealth::Readable;
                        changed
                    });
                }
                Err(e) => {
                    let since = match *self.health.borrow() {
                        StoreHealth::Unreadable { since } => since,
                        StoreHealth::Readable => Instant::now(),
                    };
                    tracing::warn!(code = "CG-STORE-002", connections = ids.len(), error = %e,
                        "could not re-check the console connections of live sessions");
                    // Sent even if unchanged: each session weighs how long.
                    self.health.send_replace(StoreHealth::Unreadable { since });
                }
            }
        }
    }
}

/// A session's hold on its connection's re-check.
pub(super) struct Watching {
    rechecks: Arc<Rechecks>,
    id: String,
}

impl Drop for Watching {
    fn drop(&mut self) {
        let mut watched = self.rechecks.lock();
        if let Some(n) = watched.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                watched.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_watched_while_any_session_of_it_lives() {
        let rechecks = Rechecks::new();
        let a = rechecks.watch("c1");
        let b = rechecks.watch("c1");
        let c = rechecks.watch("c2");
        let mut ids = rechecks.watched_ids();
        ids.sort();
        assert_eq!(ids, ["c1", "c2"]);
        drop(a);
        drop(c);
        assert_eq!(rechecks.watched_ids(), ["c1"]);
        drop(b);
        assert!(rechecks.watched_ids().is_empty());
    }
}
