//! Which connections the HTTP listener keeps, decided as each is accepted,
//! before a byte of it is read.
//!
//! At most `max_connections` are open, and at most
//! `max_connections_per_source` from one address (IPv6: one /64) unless it
//! is in `exempt_sources`. Past either limit, the connection in that scope
//! that has waited longest for its next request (an idle keep-alive, a
//! client still sending headers, or one that has sent nothing yet) is
//! closed to make room, as nginx reuses idle keep-alive connections: a
//! crowd of idle or slow sockets never keeps a working client out. Only
//! when every connection in scope is busy with a request is the new one
//! refused. Either way the warning (`CG-HTTP-001`, `CG-HTTP-002`) is
//! logged at most every 10 s, and `/metrics` counts each.
//!
//! Each connection's [`Activity`] is shared with its driver
//! ([`super::connection`]), which records requests and bytes in it and
//! closes the connection when asked to make room.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{AddressRange, Source};
use crate::ops::metrics::Metrics;

/// How often a warning about the limits is logged, at most.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// No time recorded (an atomic's "none").
const NEVER: u64 = u64::MAX;

/// Why a connection was refused, or another closed for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `max_connections` are open.
    MaxConnections,
    /// Its source has `max_connections_per_source` open.
    PerSource,
}

impl Limit {
    /// A label for metrics, of a refusal.
    pub fn refused(self) -> &'static str {
        match self {
            Limit::MaxConnections => "max_connections",
            Limit::PerSource => "max_connections_per_source",
        }
    }

    /// A label for metrics, of a connection closed to make room.
    pub fn evicted(self) -> &'static str {
        match self {
            Limit::MaxConnections => "evicted",
            Limit::PerSource => "evicted_per_source",
        }
    }
}

/// What one connection is doing, shared by the listener and its driver.
/// Times are nanoseconds since the listener's epoch, so that connections
/// compare exactly.
#[derive(Debug)]
pub struct Activity {
    id: u64,
    source: Option<Source>,
    epoch: Instant,
    started: u64,
    /// Requests whose handler is running.
    busy: AtomicU32,
    /// Requests received so far.
    requests: AtomicU64,
    /// Since when it has been quiet: its last answer or written byte.
    quiet_since: AtomicU64,
    /// When the first byte of a request not yet received whole arrived.
    head_since: AtomicU64,
    /// Cancelled when it must close to make room for another.
    evict: CancellationToken,
}

/// Why a connection's time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A request's headers (or, on a new connection, its first request
    /// and TLS handshake) took longer than `header_read_timeout_secs`.
    Header,
    /// Idle between requests for `keepalive_timeout_secs`.
    Idle,
}

impl Activity {
    fn new(id: u64, source: Option<Source>, epoch: Instant) -> Activity {
        let started = since(epoch, Instant::now());
        Activity {
            id,
            source,
            epoch,
            started,
            busy: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            quiet_since: AtomicU64::new(started),
            head_since: AtomicU64::new(NEVER),
            evict: CancellationToken::new(),
        }
    }

    fn ns(&self, at: Instant) -> u64 {
        since(self.epoch, at)
    }

    fn at(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }

    /// A request's handler starts; the returned guard ends it.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.begin();
        RequestGuard(self.clone())
    }

    fn begin(&self) {
        self.busy.fetch_add(1, Ordering::SeqCst);
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.head_since.store(NEVER, Ordering::SeqCst);
    }

    fn finish_at(&self, at: Instant) {
        self.quiet_since.store(self.ns(at), Ordering::SeqCst);
        self.busy.fetch_sub(1, Ordering::SeqCst);
    }

    /// Bytes arrived from the client.
    pub fn read_some(&self) {
        self.read_some_at(Instant::now());
    }

    fn read_some_at(&self, at: Instant) {
        if self.busy.load(Ordering::SeqCst) == 0 && self.head_since.load(Ordering::SeqCst) == NEVER
        {
            self.head_since.store(self.ns(at), Ordering::SeqCst);
        }
    }

    /// Bytes went out to the client.
    pub fn wrote_some(&self) {
        self.quiet_since
            .store(self.ns(Instant::now()), Ordering::SeqCst);
    }

    /// Cancelled when the connection must close to make room.
    pub fn evicted(&self) -> &CancellationToken {
        &self.evict
    }

    /// When its time runs out and why; `None` while a handler runs (the
    /// request timeout bounds that).
    pub fn deadline(&self, header: Duration, idle: Duration) -> Option<(Instant, Expiry)> {
        if self.busy.load(Ordering::SeqCst) > 0 {
            return None;
        }
        if self.requests.load(Ordering::SeqCst) == 0 {
            return Some((self.at(self.started) + header, Expiry::Header));
        }
        match self.head_since.load(Ordering::SeqCst) {
            NEVER => Some((
                self.at(self.quiet_since.load(Ordering::SeqCst)) + idle,
                Expiry::Idle,
            )),
            since => Some((self.at(since) + header, Expiry::Header)),
        }
    }

    /// Since when it has waited for a request, if it is not busy.
    fn waiting_since(&self) -> Option<u64> {
        (self.busy.load(Ordering::SeqCst) == 0).then(|| self.quiet_since.load(Ordering::SeqCst))
    }
}

/// Nanoseconds from `epoch` to `at`.
fn since(epoch: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch).as_nanos()).unwrap_or(NEVER - 1)
}

/// Ends a request's handler when dropped (answered, or abandoned).
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.finish_at(Instant::now());
    }
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Arc<Activity>>,
    by_source: HashMap<Source, usize>,
    last_warning: [Option<Instant>; 2],
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Arc<Activity>> {
        let gone = self.open.remove(&id)?;
        if let Some(source) = gone.source
            && let Some(n) = self.by_source.get_mut(&source)
        {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&source);
            }
        }
        Some(gone)
    }

    /// The connection in scope (of `source`, or all) that has waited
    /// longest for a request, if any is waiting; the older among equals.
    fn longest_waiting(&self, source: Option<Source>) -> Option<u64> {
        self.open
            .values()
            .filter(|a| source.is_none() || a.source == source)
            .filter_map(|a| Some((a.waiting_since()?, a.id)))
            .min()
            .map(|(_, id)| id)
    }
}

/// The listener's connection limits and the connections open.
#[derive(Debug)]
pub struct Admission {
    max: usize,
    per_source: usize,
    exempt: Vec<AddressRange>,
    metrics: Arc<Metrics>,
    /// What connections' times count from.
    epoch: Instant,
    table: Mutex<Table>,
}

/// A connection's place; frees it when dropped.
#[derive(Debug)]
pub struct Place {
    admission: Arc<Admission>,
    activity: Arc<Activity>,
}

impl Place {
    /// What the connection is doing.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.admission.leave(self.activity.id);
    }
}

/// A new connection's place, and the connection closed to make room for
/// it, if one was.
#[derive(Debug)]
pub struct Admitted {
    /// The place.
    pub place: Place,
    /// Which limit made room, if one had to.
    pub evicted: Option<Limit>,
}

impl Admission {
    /// Limits of `max` in all and `per_source` (0: none) from one source
    /// outside `exempt`.
    pub fn new(
        max: usize,
        per_source: usize,
        exempt: Vec<AddressRange>,
        metrics: Arc<Metrics>,
    ) -> Admission {
        Admission {
            max,
            per_source,
            exempt,
            metrics,
            epoch: Instant::now(),
            table: Mutex::new(Table::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many connections are open.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().open.len()
    }

    /// A place for a new connection from `ip`, or the limit that refuses it.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Limit> {
        let exempt = self.exempt.iter().any(|r| r.contains(ip));
        let source = (!exempt).then(|| Source::of(ip));
        let mut table = self.lock();
        let mut evicted = None;
        if let Some(s) = source
            && self.per_source > 0
            && table.by_source.get(&s).copied().unwrap_or(0) >= self.per_source
        {
            self.make_room(&mut table, Some(s), Limit::PerSource, ip)?;
            evicted = Some(Limit::PerSource);
        }
        if table.open.len() >= self.max {
            self.make_room(&mut table, None, Limit::MaxConnections, ip)?;
            evicted = Some(Limit::MaxConnections);
        }
        table.next_id += 1;
        let activity = Arc::new(Activity::new(table.next_id, source, self.epoch));
        table.open.insert(activity.id, activity.clone());
        if let Some(s) = source {
            *table.by_source.entry(s).or_default() += 1;
        }
        self.metrics.http_connection(table.open.len());
        Ok(Admitted {
            place: Place {
                admission: self.clone(),
                activity,
            },
            evicted,
        })
    }

    /// Closes the longest-waiting connection in scope, or says the limit
    /// refuses the new one.
    fn make_room(
        &self,
        table: &mut Table,
        source: Option<Source>,
        limit: Limit,
        ip: IpAddr,
    ) -> Result<(), Limit> {
        self.warn(table, limit, ip);
        let victim = table.longest_waiting(source).ok_or(limit)?;
        if let Some(gone) = table.remove(victim) {
            gone.evict.cancel();
        }
        Ok(())
    }

    fn warn(&self, table: &mut Table, limit: Limit, ip: IpAddr) {
        let slot = &mut table.last_warning[usize::from(limit == Limit::PerSource)];
        let now = Instant::now();
        if slot.is_some_and(|at| now - at < WARN_EVERY) {
            return;
        }
        *slot = Some(now);
        match limit {
            Limit::MaxConnections => tracing::warn!(
                code = "CG-HTTP-001",
                max_connections = self.max,
                "the HTTP listener is at max_connections: closing the connections that waited longest for a request, or refusing new ones while all are busy"
            ),
            Limit::PerSource => tracing::warn!(code = "CG-HTTP-002", source = %ip,
                max_connections_per_source = self.per_source,
                "an address is at max_connections_per_source: closing its connections that waited longest, or refusing its new ones while all are busy"),
        }
    }

    fn leave(&self, id: u64) {
        let mut table = self.lock();
        table.remove(id);
        self.metrics.http_open_connections(table.open.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max: usize, per_source: usize, exempt: &[&str]) -> Arc<Admission> {
        let exempt = exempt
            .iter()
            .map(|e| AddressRange::parse(e).unwrap())
            .collect();
        Arc::new(Admission::new(
            max,
            per_source,
            exempt,
            Arc::new(Metrics::new()),
        ))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_source_gets_its_share_and_makes_room_among_its_own() {
        let a = admission(100, 3, &[]);
        let first: Vec<Admitted> = (0..3).map(|_| a.enter(ip("192.0.2.1")).unwrap()).collect();
        // The fourth closes the source's longest-waiting connection.
        let fourth = a.enter(ip("192.0.2.1")).unwrap();
        assert_eq!(fourth.evicted, Some(Limit::PerSource));
        assert!(first[0].place.activity().evicted().is_cancelled());
        assert!(!first[1].place.activity().evicted().is_cancelled());
        assert_eq!(a.open(), 3);
        // Another address, and another /64, are not affected; one /64 is
        // one source.
        assert!(a.enter(ip("192.0.2.2")).unwrap().evicted.is_none());
        let v6: Vec<Admitted> = (1..=3)
            .map(|i| a.enter(ip(&format!("2001:db8::{i}"))).unwrap())
            .collect();
        assert_eq!(
            a.enter(ip("2001:db8::ffff")).unwrap().evicted,
            Some(Limit::PerSource)
        );
        assert!(
            a.enter(ip("2001:db8:0:1::1")).unwrap().evicted.is_none(),
            "another /64"
        );
        drop((first, fourth, v6));
        assert_eq!(a.open(), 0);
        assert!(a.lock().by_source.is_empty(), "sources are forgotten");
    }

    #[test]
    fn busy_connections_are_never_closed_for_room_and_the_new_one_is_refused() {
        let a = admission(2, 0, &[]);
        let one = a.enter(ip("192.0.2.1")).unwrap();
        let two = a.enter(ip("192.0.2.2")).unwrap();
        let _busy1 = one.place.activity().request_started();
        let busy2 = two.place.activity().request_started();
        assert_eq!(a.enter(ip("192.0.2.3")).unwrap_err(), Limit::MaxConnections);
        // Once one answers, it waits for its next request: room is made.
        drop(busy2);
        let three = a.enter(ip("192.0.2.3")).unwrap();
        assert_eq!(three.evicted, Some(Limit::MaxConnections));
        assert!(two.place.activity().evicted().is_cancelled());
        assert!(!one.place.activity().evicted().is_cancelled());
        // The closed one's place is not freed twice.
        drop(two);
        assert_eq!(a.open(), 2);
    }

    #[test]
    fn exempt_sources_have_no_per_source_limit_but_count_in_all() {
        let a = admission(3, 1, &["10.0.0.0/8"]);
        let held: Vec<Admitted> = (0..3).map(|_| a.enter(ip("10.1.2.3")).unwrap()).collect();
        assert!(held.iter().all(|h| h.evicted.is_none()));
        assert_eq!(
            a.enter(ip("10.1.2.3")).unwrap().evicted,
            Some(Limit::MaxConnections)
        );
    }

    #[test]
    fn deadlines_follow_what_the_connection_is_doing() {
        let act = Activity::new(1, None, Instant::now());
        let (header, idle) = (Duration::from_secs(10), Duration::from_secs(60));
        let t0 = act.at(act.started);
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        // A new connection: its first request within the header timeout.
        assert_eq!(act.deadline(header, idle), Some((at(10), Expiry::Header)));
        act.read_some_at(at(1));
        assert_eq!(act.deadline(header, idle), Some((at(10), Expiry::Header)));
        act.begin();
        assert_eq!(act.deadline(header, idle), None, "a handler runs");
        act.finish_at(at(6));
        // Answered: idle until the next request.
        assert_eq!(act.deadline(header, idle), Some((at(66), Expiry::Idle)));
        // The next request's first byte: its headers within the timeout,
        // however many bytes follow.
        act.read_some_at(at(36));
        act.read_some_at(at(39));
        assert_eq!(act.deadline(header, idle), Some((at(46), Expiry::Header)));
        // Body bytes while a handler runs start no header clock.
        act.begin();
        act.read_some_at(at(40));
        act.finish_at(at(41));
        assert_eq!(act.deadline(header, idle), Some((at(101), Expiry::Idle)));
    }
}
