//! Who may start an SSH handshake, decided before russh reads a byte: the
//! equivalents of OpenSSH's `MaxStartups`, `PerSourceMaxStartups` and
//! `PerSourcePenalties`.
//!
//! - **Startups**: connections that have not authenticated yet. Past
//!   `start` of them, a new one is dropped at random (`rate` percent,
//!   rising linearly to every one at `full`), so a flood of silent sockets
//!   cannot take every place while real users keep a chance; authenticated
//!   sessions do not count here, and take their place under
//!   `max_connections` only once they authenticate.
//! - **Per source**: at most `per_source_max_startups` unauthenticated
//!   connections from one address (IPv6: one /64).
//! - **Penalties**: a source whose connections fail authentication, send
//!   junk, leave before authenticating or run out the login grace time
//!   earns seconds of penalty for each; once its penalty reaches
//!   `min_secs` it is refused outright until the penalty runs out (at most
//!   `max_secs`). One address brute-forcing never locks out another.
//!
//! Addresses in `exempt_sources` get neither the per-source cap nor
//! penalties (a balancer that does not pass client addresses on). The
//! table of sources is bounded (`max_sources`); when it is full of live
//! entries, new sources go untracked (OpenSSH's `overflow=permissive`)
//! rather than refused.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{AddressRange, Source, SshConfig, StartupLimits};

/// How often a full table may be swept for expired entries.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How often a warning about dropped startups or a full table is logged.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Why a connection was dropped before its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `full` unauthenticated connections are open.
    Full,
    /// Dropped at random between `start` and `full`.
    EarlyDrop,
    /// Its source has `per_source_max_startups` open.
    PerSource,
    /// Its source is serving a penalty.
    Penalized,
}

impl Refusal {
    /// A label for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Full => "max_startups_full",
            Refusal::EarlyDrop => "max_startups_drop",
            Refusal::PerSource => "per_source_max_startups",
            Refusal::Penalized => "penalized",
        }
    }
}

/// How a connection that never authenticated ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offence {
    /// It offered or signed with keys, and none was accepted.
    AuthFail,
    /// It left without trying a key.
    NoAuth,
    /// It ran out the login grace time.
    GraceExceeded,
    /// It did not speak SSH, or broke the protocol.
    Junk,
}

/// The penalty settings, in force.
#[derive(Debug, Clone)]
struct Penalties {
    /// Off: no source is ever penalised.
    enabled: bool,
    authfail: Duration,
    noauth: Duration,
    grace_exceeded: Duration,
    junk: Duration,
    /// A source is refused once its penalty reaches this.
    min: Duration,
    /// No penalty runs longer.
    max: Duration,
    /// The most sources tracked at once.
    max_sources: usize,
}

impl Penalties {
    fn of(&self, offence: Offence) -> Duration {
        match offence {
            Offence::AuthFail => self.authfail,
            Offence::NoAuth => self.noauth,
            Offence::GraceExceeded => self.grace_exceeded,
            Offence::Junk => self.junk,
        }
    }
}

#[derive(Debug, Default)]
struct SourceState {
    /// Its unauthenticated connections.
    startups: u32,
    /// When its penalty runs out.
    penalty_until: Option<Instant>,
    /// Its penalty reached `min` and is enforced.
    enforced: bool,
}

impl SourceState {
    fn penalized(&self, now: Instant) -> bool {
        self.enforced && self.penalty_until.is_some_and(|until| now < until)
    }

    fn idle(&self, now: Instant) -> bool {
        self.startups == 0 && self.penalty_until.is_none_or(|until| until <= now)
    }
}

#[derive(Debug)]
struct State {
    startups: usize,
    sources: HashMap<Source, SourceState>,
    last_sweep: Option<Instant>,
    last_warning: Option<Instant>,
}

/// The gate every SSH connection passes before its handshake.
#[derive(Debug)]
pub struct Gate {
    limits: StartupLimits,
    per_source: u32,
    exempt: Vec<AddressRange>,
    penalties: Penalties,
    state: Mutex<State>,
}

/// An unauthenticated connection's place; dropped when it authenticates or
/// ends (call [`Startup::ended`] to say how, for the penalties).
#[derive(Debug)]
pub struct Startup {
    gate: Arc<Gate>,
    /// `None`: exempt or untracked.
    source: Option<Source>,
    done: bool,
}

impl Gate {
    /// The gate of `[ssh]`.
    pub fn new(ssh: &SshConfig) -> Gate {
        let p = &ssh.penalties;
        Gate {
            limits: ssh.max_startups,
            per_source: ssh.per_source_max_startups,
            exempt: ssh.exempt_sources.clone(),
            penalties: Penalties {
                enabled: p.enabled,
                authfail: Duration::from_secs(p.authfail_secs),
                noauth: Duration::from_secs(p.noauth_secs),
                grace_exceeded: Duration::from_secs(p.grace_exceeded_secs),
                junk: Duration::from_secs(p.junk_secs),
                min: Duration::from_secs(p.min_secs),
                max: Duration::from_secs(p.max_secs),
                max_sources: p.max_sources,
            },
            state: Mutex::new(State {
                startups: 0,
                sources: HashMap::new(),
                last_sweep: None,
                last_warning: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        self.exempt.iter().any(|range| range.contains(ip))
    }

    /// How many connections are unauthenticated now.
    pub fn startups(&self) -> usize {
        self.lock().startups
    }

    /// How many sources are tracked now.
    pub fn tracked_sources(&self) -> usize {
        self.lock().sources.len()
    }

    /// A place for a new connection from `ip`, or why not. `roll` is a
    /// uniform random number in `[0, 1)` for the early drop.
    pub fn enter(self: &Arc<Self>, ip: IpAddr, roll: f64) -> Result<Startup, Refusal> {
        self.enter_at(ip, roll, Instant::now())
    }

    fn enter_at(self: &Arc<Self>, ip: IpAddr, roll: f64, now: Instant) -> Result<Startup, Refusal> {
        let exempt = self.exempt(ip);
        let mut state = self.lock();
        let source = Source::of(ip);
        if !exempt && let Some(s) = state.sources.get(&source) {
            if s.penalized(now) {
                return Err(Refusal::Penalized);
            }
            if self.per_source > 0 && s.startups >= self.per_source {
                return Err(Refusal::PerSource);
            }
        }
        let StartupLimits { start, rate, full } = self.limits;
        if state.startups >= full {
            self.warn_dropping(&mut state, now);
            return Err(Refusal::Full);
        }
        if state.startups >= start {
            // OpenSSH's curve: `rate` % at `start`, every one at `full`.
            let over = (state.startups - start) as f64 / (full - start) as f64;
            let p = f64::from(rate) / 100.0;
            if roll < p + (1.0 - p) * over {
                self.warn_dropping(&mut state, now);
                return Err(Refusal::EarlyDrop);
            }
        }
        state.startups += 1;
        let tracked = !exempt && self.track(&mut state, source, now);
        if tracked {
            state.sources.entry(source).or_default().startups += 1;
        }
        Ok(Startup {
            gate: self.clone(),
            source: tracked.then_some(source),
            done: false,
        })
    }

    /// Whether `source` has (or can get) an entry in the bounded table.
    fn track(&self, state: &mut State, source: Source, now: Instant) -> bool {
        if state.sources.contains_key(&source) || state.sources.len() < self.penalties.max_sources {
            return true;
        }
        if state.last_sweep.is_none_or(|at| now - at >= SWEEP_EVERY) {
            state.last_sweep = Some(now);
            state.sources.retain(|_, s| !s.idle(now));
        }
        if state.sources.len() < self.penalties.max_sources {
            return true;
        }
        if state.last_warning.is_none_or(|at| now - at >= WARN_EVERY) {
            state.last_warning = Some(now);
            tracing::warn!(
                code = "CG-SSH-004",
                max_sources = self.penalties.max_sources,
                "the table of SSH sources is full; new sources go without per-source limits until entries expire"
            );
        }
        false
    }

    fn warn_dropping(&self, state: &mut State, now: Instant) {
        if state.last_warning.is_none_or(|at| now - at >= WARN_EVERY) {
            state.last_warning = Some(now);
            let StartupLimits { start, rate, full } = self.limits;
            tracing::warn!(code = "CG-SSH-004", startups = state.startups,
                max_startups = %format!("{start}:{rate}:{full}"),
                "too many unauthenticated SSH connections; dropping new ones");
        }
    }

    fn leave(&self, source: Option<Source>, offence: Option<Offence>, now: Instant) {
        let mut state = self.lock();
        state.startups = state.startups.saturating_sub(1);
        let Some(source) = source else {
            return;
        };
        let Some(s) = state.sources.get_mut(&source) else {
            return;
        };
        s.startups = s.startups.saturating_sub(1);
        if s.penalty_until.is_some_and(|until| until <= now) {
            s.penalty_until = None;
            s.enforced = false;
        }
        if let Some(offence) = offence.filter(|_| self.penalties.enabled) {
            let base = s.penalty_until.filter(|&until| until > now).unwrap_or(now);
            let until = (base + self.penalties.of(offence)).min(now + self.penalties.max);
            s.penalty_until = Some(until);
            if !s.enforced && until - now >= self.penalties.min {
                s.enforced = true;
                tracing::info!(code = "CG-SSH-003", source = ?source, ?offence,
                    for_secs = (until - now).as_secs(),
                    "SSH source penalised: its new connections are refused");
            }
        }
        if s.idle(now) {
            state.sources.remove(&source);
        }
    }
}

impl Startup {
    /// The connection authenticated: it no longer counts as a startup.
    pub fn authenticated(mut self) {
        self.done = true;
        self.gate.leave(self.source, None, Instant::now());
    }

    /// The connection ended before authenticating, as `offence`.
    pub fn ended(self, offence: Offence) {
        self.ended_at(offence, Instant::now());
    }

    fn ended_at(mut self, offence: Offence, now: Instant) {
        self.done = true;
        self.gate.leave(self.source, Some(offence), now);
    }
}

impl Drop for Startup {
    fn drop(&mut self) {
        if !self.done {
            self.gate.leave(self.source, None, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(extra: &str) -> Arc<Gate> {
        let ssh: SshConfig = toml::from_str(extra).unwrap();
        Arc::new(Gate::new(&ssh))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn startups_drop_at_random_past_start_and_all_at_full() {
        let g = gate("max_startups = \"2:50:4\"\nper_source_max_startups = 0\n");
        let a = ip("192.0.2.1");
        let held: Vec<_> = (0..2).map(|_| g.enter(a, 0.99).unwrap()).collect();
        // At start (2 open): 50 % are dropped.
        assert_eq!(g.enter(a, 0.49).unwrap_err(), Refusal::EarlyDrop);
        let third = g.enter(a, 0.5).unwrap();
        // 3 open: 75 %.
        assert_eq!(g.enter(a, 0.74).unwrap_err(), Refusal::EarlyDrop);
        let fourth = g.enter(a, 0.76).unwrap();
        // At full: every one, whatever the roll.
        assert_eq!(g.enter(a, 0.999).unwrap_err(), Refusal::Full);
        // Authenticating frees the place.
        third.authenticated();
        drop(fourth);
        assert_eq!(g.startups(), 2);
        assert!(g.enter(a, 0.0).is_err());
        drop(held);
        assert_eq!(g.startups(), 0);
        assert!(g.enter(a, 0.0).is_ok());
    }

    #[test]
    fn one_source_cannot_take_every_startup() {
        let g = gate("max_startups = \"100:30:200\"\nper_source_max_startups = 3\n");
        let held: Vec<_> = (0..3)
            .map(|_| g.enter(ip("192.0.2.1"), 0.0).unwrap())
            .collect();
        assert_eq!(
            g.enter(ip("192.0.2.1"), 0.0).unwrap_err(),
            Refusal::PerSource
        );
        // Another address, and another /64, are not affected; one /64 is
        // one source.
        assert!(g.enter(ip("192.0.2.2"), 0.0).is_ok());
        let v6: Vec<_> = (1..=3)
            .map(|i| g.enter(ip(&format!("2001:db8::{i}")), 0.0).unwrap())
            .collect();
        assert_eq!(
            g.enter(ip("2001:db8::ffff"), 0.0).unwrap_err(),
            Refusal::PerSource
        );
        assert!(g.enter(ip("2001:db8:0:1::1"), 0.0).is_ok());
        drop((held, v6));
        assert_eq!(g.startups(), 0);
        assert_eq!(g.tracked_sources(), 0, "idle sources are forgotten");
    }

    #[test]
    fn penalties_add_up_lock_out_the_source_only_and_run_out() {
        let g = gate(
            "per_source_max_startups = 0\nmax_startups = \"200\"\n\
             [penalties]\nauthfail_secs = 5\nnoauth_secs = 1\nmin_secs = 15\nmax_secs = 60\n",
        );
        let (bad, good) = (ip("192.0.2.66"), ip("192.0.2.7"));
        let t0 = Instant::now();
        let fail = |t: Instant| {
            g.enter_at(bad, 0.0, t)
                .unwrap()
                .ended_at(Offence::AuthFail, t)
        };
        // Two failed logins: 10 s of penalty, below the minimum.
        fail(t0);
        fail(t0);
        assert!(g.enter_at(bad, 0.0, t0).is_ok());
        // The third reaches 15 s: refused from now on.
        fail(t0);
        assert_eq!(g.enter_at(bad, 0.0, t0).unwrap_err(), Refusal::Penalized);
        assert!(
            g.enter_at(good, 0.0, t0).is_ok(),
            "another address is let in"
        );
        // It runs out, and the next offence starts from nothing.
        let t1 = t0 + Duration::from_secs(16);
        assert!(g.enter_at(bad, 0.0, t1).is_ok());
        fail(t1);
        assert!(g.enter_at(bad, 0.0, t1).is_ok());
        // It never runs longer than max, however many offences (from
        // connections opened before it was enforced).
        let open: Vec<_> = (0..100)
            .map(|_| g.enter_at(bad, 0.0, t1).unwrap())
            .collect();
        for startup in open {
            startup.ended_at(Offence::AuthFail, t1);
        }
        assert_eq!(g.enter_at(bad, 0.0, t1).unwrap_err(), Refusal::Penalized);
        let t2 = t1 + Duration::from_secs(59);
        assert_eq!(g.enter_at(bad, 0.0, t2).unwrap_err(), Refusal::Penalized);
        assert!(g.enter_at(bad, 0.0, t1 + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn exempt_sources_and_disabled_penalties_are_never_refused_per_source() {
        let g = gate(
            "per_source_max_startups = 1\nexempt_sources = [\"192.0.2.0/24\", \"::1\"]\n\
             [penalties]\nauthfail_secs = 100\nmin_secs = 1\n",
        );
        for addr in ["192.0.2.9", "::1"] {
            let _held = g.enter(ip(addr), 0.0).unwrap();
            g.enter(ip(addr), 0.0).unwrap().ended(Offence::AuthFail);
            assert!(g.enter(ip(addr), 0.0).is_ok());
        }
        assert_eq!(g.tracked_sources(), 0);
        let off = gate("[penalties]\nenabled = false\nauthfail_secs = 100\nmin_secs = 1\n");
        off.enter(ip("192.0.2.1"), 0.0)
            .unwrap()
            .ended(Offence::AuthFail);
        assert!(off.enter(ip("192.0.2.1"), 0.0).is_ok());
    }

    #[test]
    fn the_table_of_sources_is_bounded() {
        let g = gate(
            "max_startups = \"10000:30:10001\"\n\
             [penalties]\nmax_sources = 100\njunk_secs = 30\nmin_secs = 15\n",
        );
        let t0 = Instant::now();
        let junk =
            |a: IpAddr, t: Instant| g.enter_at(a, 0.0, t).unwrap().ended_at(Offence::Junk, t);
        // 100 sources serving penalties fill the table.
        for i in 0..100u32 {
            junk(IpAddr::from((0x0a00_0000u32 + i).to_be_bytes()), t0);
        }
        assert_eq!(g.tracked_sources(), 100);
        // More go untracked (let in, not remembered) rather than refused.
        for i in 0..1000u32 {
            junk(IpAddr::from((0x0b00_0000u32 + i).to_be_bytes()), t0);
        }
        assert_eq!(g.tracked_sources(), 100);
        assert!(g.enter_at(ip("11.0.0.1"), 0.0, t0).is_ok());
        // Once the penalties run out, their entries make room.
        let t1 = t0 + Duration::from_secs(31);
        let late = ip("192.0.2.200");
        junk(late, t1);
        assert_eq!(g.tracked_sources(), 1);
        assert_eq!(g.enter_at(late, 0.0, t1).unwrap_err(), Refusal::Penalized);
    }
}
