//! Session timeouts: when an idle or over-long console session is warned,
//! and when it is cut.
//!
//! [`SessionClock`] is pure bookkeeping over instants handed in by its
//! caller (no timers of its own), so that every rule is tested without
//! waiting. A front end keeps the time of the session's last activity (its
//! input; its output too unless it is read-only), asks [`SessionClock::next`]
//! what is due, sleeps until then and asks again.

use std::time::{Duration, Instant};

use crate::config::SessionTimeouts;

/// Something a session's clock asks its front end to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// Warn that the idle cut comes in `warning`.
    IdleWarning,
    /// Close the session: idle for the whole idle timeout.
    IdleCut,
    /// Warn that the session reaches its maximum duration in `warning`.
    MaxWarning,
    /// Close the session: it lasted its maximum duration.
    MaxCut,
}

impl Deadline {
    /// Whether the session ends here.
    pub fn is_cut(self) -> bool {
        matches!(self, Deadline::IdleCut | Deadline::MaxCut)
    }
}

/// The timeout state of one session.
#[derive(Debug, Clone)]
pub struct SessionClock {
    timeouts: SessionTimeouts,
    started: Instant,
    /// The last activity the idle warning was given for (a newer activity
    /// voids it).
    idle_warned_for: Option<Instant>,
    max_warned: bool,
}

impl SessionClock {
    /// A clock for a session that starts at `started`.
    pub fn new(timeouts: SessionTimeouts, started: Instant) -> SessionClock {
        SessionClock {
            timeouts,
            started,
            idle_warned_for: None,
            max_warned: false,
        }
    }

    /// The timeouts this clock applies.
    pub fn timeouts(&self) -> SessionTimeouts {
        self.timeouts
    }

    /// What is due next, and when, for a session last active at
    /// `last_activity`; `None` if no timeout is set.
    pub fn next(&self, last_activity: Instant) -> Option<(Instant, Deadline)> {
        let warn = self.timeouts.warning;
        let idle = self.timeouts.idle.map(|limit| {
            let cut = last_activity + limit;
            if warn.is_zero() || self.idle_warned_for == Some(last_activity) {
                (cut, Deadline::IdleCut)
            } else {
                (cut - warn, Deadline::IdleWarning)
            }
        });
        let max = self.timeouts.max_session.map(|limit| {
            let cut = self.started + limit;
            if warn.is_zero() || self.max_warned {
                (cut, Deadline::MaxCut)
            } else {
                (cut - warn, Deadline::MaxWarning)
            }
        });
        match (idle, max) {
            (Some(i), Some(m)) => Some(if m.0 <= i.0 { m } else { i }),
            (i, m) => i.or(m),
        }
    }

    /// What is due at `now` (if anything), marking a warning as given.
    pub fn due(&mut self, now: Instant, last_activity: Instant) -> Option<Deadline> {
        let (at, what) = self.next(last_activity)?;
        if at > now {
            return None;
        }
        match what {
            Deadline::IdleWarning => self.idle_warned_for = Some(last_activity),
            Deadline::MaxWarning => self.max_warned = true,
            Deadline::IdleCut | Deadline::MaxCut => {}
        }
        Some(what)
    }

    /// How long the session has been idle at `now`, for messages.
    pub fn idle_for(now: Instant, last_activity: Instant) -> Duration {
        now.saturating_duration_since(last_activity)
    }
}

/// A session closed by its clock: what to tell, log and audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// `idle` or `max_session` (a metrics label).
    pub kind: &'static str,
    /// The runbook code.
    pub code: &'static str,
    /// What the user is told (it starts with the code).
    pub message: String,
}

/// What a session is shown for a due `deadline`: `Ok(warning)`, or
/// `Err(cut)` when the session ends. `idle_for` is how long it has been idle.
pub fn announce(
    deadline: Deadline,
    timeouts: SessionTimeouts,
    idle_for: Duration,
) -> Result<String, Cut> {
    let warn = human(timeouts.warning);
    match deadline {
        Deadline::IdleWarning => Ok(format!(
            "CG-SESS-001 this session has been idle for {}; it will be closed in {warn} \
             unless you type something",
            human(idle_for)
        )),
        Deadline::MaxWarning => Ok(format!(
            "CG-SESS-003 this session reaches its maximum duration of {} in {warn}; \
             reconnect to go on after that",
            human(timeouts.max_session.unwrap_or_default())
        )),
        Deadline::IdleCut => Err(Cut {
            kind: "idle",
            code: "CG-SESS-002",
            message: format!(
                "CG-SESS-002 idle for {} (the idle timeout): session closed",
                human(timeouts.idle.unwrap_or_default())
            ),
        }),
        Deadline::MaxCut => Err(Cut {
            kind: "max_session",
            code: "CG-SESS-004",
            message: format!(
                "CG-SESS-004 this session lasted its maximum duration of {}: session closed",
                human(timeouts.max_session.unwrap_or_default())
            ),
        }),
    }
}

/// A duration as people say it: `90s`, `25m`, `2h 5m`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7200 if s.is_multiple_of(60) => format!("{}m", s / 60),
        120..7200 => format!("{}m {}s", s / 60, s % 60),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(idle: Option<u64>, max: Option<u64>, warning: u64) -> (SessionClock, Instant) {
        let t0 = Instant::now();
        let timeouts = SessionTimeouts {
            idle: idle.map(Duration::from_secs),
            max_session: max.map(Duration::from_secs),
            warning: Duration::from_secs(warning),
        };
        (SessionClock::new(timeouts, t0), t0)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn no_timeouts_nothing_is_ever_due() {
        let (mut c, t0) = clock(None, None, 60);
        assert_eq!(c.next(t0), None);
        assert_eq!(c.due(t0 + secs(1_000_000), t0), None);
    }

    #[test]
    fn idle_warns_then_cuts() {
        let (mut c, t0) = clock(Some(600), None, 60);
        assert_eq!(c.next(t0), Some((t0 + secs(540), Deadline::IdleWarning)));
        assert_eq!(c.due(t0 + secs(539), t0), None);
        assert_eq!(c.due(t0 + secs(540), t0), Some(Deadline::IdleWarning));
        // The warning is given once.
        assert_eq!(c.next(t0), Some((t0 + secs(600), Deadline::IdleCut)));
        assert_eq!(c.due(t0 + secs(599), t0), None);
        assert_eq!(c.due(t0 + secs(600), t0), Some(Deadline::IdleCut));
    }

    #[test]
    fn activity_after_the_warning_starts_over_and_warns_again() {
        let (mut c, t0) = clock(Some(600), None, 60);
        assert_eq!(c.due(t0 + secs(550), t0), Some(Deadline::IdleWarning));
        let typed = t0 + secs(560);
        assert_eq!(
            c.next(typed),
            Some((typed + secs(540), Deadline::IdleWarning))
        );
        assert_eq!(c.due(t0 + secs(600), typed), None);
        assert_eq!(c.due(typed + secs(540), typed), Some(Deadline::IdleWarning));
        assert_eq!(c.due(typed + secs(600), typed), Some(Deadline::IdleCut));
    }

    #[test]
    fn max_session_ignores_activity() {
        let (mut c, t0) = clock(None, Some(3600), 60);
        let busy = t0 + secs(3599);
        assert_eq!(c.due(t0 + secs(3540), busy), Some(Deadline::MaxWarning));
        assert_eq!(c.due(t0 + secs(3599), busy), None);
        assert_eq!(c.due(t0 + secs(3600), busy), Some(Deadline::MaxCut));
    }

    #[test]
    fn the_earlier_deadline_wins() {
        let (c, t0) = clock(Some(600), Some(300), 60);
        assert_eq!(c.next(t0), Some((t0 + secs(240), Deadline::MaxWarning)));
        let (c, t0) = clock(Some(100), Some(3600), 10);
        assert_eq!(c.next(t0), Some((t0 + secs(90), Deadline::IdleWarning)));
    }

    #[test]
    fn zero_warning_cuts_without_warning() {
        let (mut c, t0) = clock(Some(10), None, 0);
        assert_eq!(c.next(t0), Some((t0 + secs(10), Deadline::IdleCut)));
        assert_eq!(c.due(t0 + secs(10), t0), Some(Deadline::IdleCut));
        assert!(Deadline::IdleCut.is_cut() && !Deadline::MaxWarning.is_cut());
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(human(secs(45)), "45s");
        assert_eq!(human(secs(1500)), "25m");
        assert_eq!(human(secs(150)), "2m 30s");
        assert_eq!(human(secs(28800)), "8h");
        assert_eq!(human(secs(7500)), "2h 5m");
    }
}
