//! Caps on how many sessions (console sessions and VNC tunnels alike) one
//! instance, one console connection and one key may hold at once on this
//! gateway, beside `[ssh] max_connections` for the whole gateway: no one
//! record, key or token can take every place, and no console can be
//! buried under viewers.
//!
//! A [`Place`] is taken before a session is accepted and given back when it
//! is dropped. A session relayed from another node of a fleet is counted on
//! the node the user reached, once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::config::SessionCaps as Limits;
use crate::console::hub::Principal;

/// The session counts of this gateway; cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionCaps {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    limits: Limits,
    counts: Mutex<Counts>,
}

/// Live sessions by what they are counted under. An entry is removed when
/// its count returns to zero, so the tables hold only what is in use.
#[derive(Debug, Default)]
struct Counts {
    instance: HashMap<String, usize>,
    /// A console connection's id, or a console token's id.
    record: HashMap<String, usize>,
    /// A key's fingerprint.
    key: HashMap<String, usize>,
}

/// Which cap a session would pass, and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverCap {
    /// `max_sessions_per_instance`.
    Instance(usize),
    /// `max_sessions_per_connection` (a console token's too).
    Record(usize),
    /// `max_sessions_per_key`.
    Key(usize),
}

impl OverCap {
    /// The runbook code of the refusal.
    pub const CODE: &'static str = "CG-SESS-005";
}

impl std::fmt::Display for OverCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, setting, n) = match self {
            OverCap::Instance(n) => ("this instance", "max_sessions_per_instance", n),
            OverCap::Record(n) => ("this console connection", "max_sessions_per_connection", n),
            OverCap::Key(n) => ("this key", "max_sessions_per_key", n),
        };
        write!(
            f,
            "{} {what} already has {n} sessions open ([session] {setting}); close one and retry",
            OverCap::CODE
        )
    }
}

/// A session's place under the caps; given back when dropped.
#[derive(Debug)]
pub struct Place {
    caps: SessionCaps,
    instance: String,
    record: String,
    key: Option<String>,
}

impl SessionCaps {
    /// Counts under `limits` (0: that count is not capped).
    pub fn new(limits: Limits) -> SessionCaps {
        SessionCaps {
            shared: Arc::new(Shared {
                limits,
                counts: Mutex::default(),
            }),
        }
    }

    /// No caps at all.
    pub fn unlimited() -> SessionCaps {
        SessionCaps::new(Limits {
            max_sessions_per_instance: 0,
            max_sessions_per_connection: 0,
            max_sessions_per_key: 0,
        })
    }

    /// A place for a session of `principal` on `instance`, or the cap it
    /// would pass.
    pub fn take(&self, instance: &str, principal: &Principal) -> Result<Place, OverCap> {
        let (record, key) = match principal {
            Principal::Key {
                connection_id,
                fingerprint,
            } => (connection_id.as_str(), Some(fingerprint.as_str())),
            Principal::ConsoleToken { id } => (id.as_str(), None),
        };
        let limits = &self.shared.limits;
        let mut counts = self.counts();
        let over = |table: &HashMap<String, usize>, name: &str, cap: usize| {
            cap != 0 && table.get(name).copied().unwrap_or(0) >= cap
        };
        if over(&counts.instance, instance, limits.max_sessions_per_instance) {
            return Err(OverCap::Instance(limits.max_sessions_per_instance));
        }
        if over(&counts.record, record, limits.max_sessions_per_connection) {
            return Err(OverCap::Record(limits.max_sessions_per_connection));
        }
        if let Some(key) = key
            && over(&counts.key, key, limits.max_sessions_per_key)
        {
            return Err(OverCap::Key(limits.max_sessions_per_key));
        }
        *counts.instance.entry(instance.to_owned()).or_default() += 1;
        *counts.record.entry(record.to_owned()).or_default() += 1;
        if let Some(key) = key {
            *counts.key.entry(key.to_owned()).or_default() += 1;
        }
        Ok(Place {
            caps: self.clone(),
            instance: instance.to_owned(),
            record: record.to_owned(),
            key: key.map(str::to_owned),
        })
    }

    /// Sessions open on `instance` now.
    pub fn on_instance(&self, instance: &str) -> usize {
        self.counts().instance.get(instance).copied().unwrap_or(0)
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.shared
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut counts = self.caps.counts();
        release(&mut counts.instance, &self.instance);
        release(&mut counts.record, &self.record);
        if let Some(key) = &self.key {
            release(&mut counts.key, key);
        }
    }
}

fn release(table: &mut HashMap<String, usize>, name: &str) {
    if let Some(n) = table.get_mut(name) {
        *n -= 1;
        if *n == 0 {
            table.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(record: &str, fingerprint: &str) -> Principal {
        Principal::Key {
            connection_id: record.into(),
            fingerprint: fingerprint.into(),
        }
    }

    fn caps(instance: usize, record: usize, key: usize) -> SessionCaps {
        SessionCaps::new(Limits {
            max_sessions_per_instance: instance,
            max_sessions_per_connection: record,
            max_sessions_per_key: key,
        })
    }

    #[test]
    fn each_cap_refuses_the_session_past_it_and_a_place_comes_back_when_dropped() {
        let caps = caps(4, 2, 3);
        let a = caps.take("vm", &key("c1", "k1")).unwrap();
        let _b = caps.take("vm", &key("c1", "k1")).unwrap();
        assert_eq!(
            caps.take("vm", &key("c1", "k1")).unwrap_err(),
            OverCap::Record(2)
        );
        // The same key under another record: the key's cap is next.
        let _c = caps.take("vm", &key("c2", "k1")).unwrap();
        assert_eq!(
            caps.take("vm", &key("c3", "k1")).unwrap_err(),
            OverCap::Key(3)
        );
        let _d = caps.take("vm", &key("c3", "k2")).unwrap();
        assert_eq!(
            caps.take("vm", &key("c4", "k3")).unwrap_err(),
            OverCap::Instance(4)
        );
        // Other instances are not affected by this one's cap.
        let _e = caps.take("other", &key("c9", "k9")).unwrap();
        drop(a);
        assert_eq!(caps.on_instance("vm"), 3);
        caps.take("vm", &key("c1", "k1")).unwrap();
        assert_eq!(
            caps.on_instance("vm"),
            3,
            "the place was given back on drop"
        );
    }

    #[test]
    fn console_tokens_are_capped_per_token_and_zero_means_no_cap() {
        let caps = caps(0, 1, 0);
        let token = Principal::ConsoleToken { id: "t1".into() };
        let held = caps.take("vm", &token).unwrap();
        assert_eq!(caps.take("vm", &token).unwrap_err(), OverCap::Record(1));
        let many: Vec<_> = (0..100)
            .map(|i| caps.take("vm", &key(&format!("c{i}"), "k")).unwrap())
            .collect();
        assert_eq!(caps.on_instance("vm"), 101);
        drop(many);
        drop(held);
        assert!(
            caps.counts().instance.is_empty() && caps.counts().record.is_empty(),
            "nothing is kept for names no session uses"
        );
    }

    #[test]
    fn the_refusal_names_the_code_and_the_setting() {
        let text = OverCap::Key(16).to_string();
        assert!(text.starts_with("CG-SESS-005 "), "{text}");
        assert!(text.contains("max_sessions_per_key"), "{text}");
    }
}
