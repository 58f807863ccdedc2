//! Refused attempts that name a real console connection are audit rows,
//! kept `audit_retention_days`; a brute force against one id, or an
//! authenticated client opening forbidden channels in a loop, must not be
//! able to fill the disk with them. Rows are therefore rationed: each
//! connection id and each source address has a bucket of
//! `audit_refused_burst` rows that refills at `audit_refused_per_hour`. An
//! attempt that finds either bucket empty is held back and counted; the
//! next row written for that id says how many were collapsed into it, from
//! how many sources, since when. Nothing is lost: a summary is written as
//! soon as the buckets allow (a sweep runs every minute), and at shutdown.
//!
//! Rows are bounded by the number of real console connections times the
//! refill rate, whatever the attacker's number of addresses or attempts.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::audit::{AuditEvent, AuditKind};
use crate::config::Source;
use crate::store::Store;

/// Distinct sources named in one summary, at most.
const MAX_NAMED_SOURCES: usize = 64;
/// Ids and sources tracked at once, each; past it, the quietest go.
const MAX_TRACKED: usize = 65_536;

/// The audit rows of refused attempts, rationed; cheap to clone.
#[derive(Debug, Clone)]
pub struct RefusalAudit {
    store: Store,
    table: Arc<Mutex<Table>>,
}

impl RefusalAudit {
    /// Rows of `store`, `burst` at once per id and per source, refilled at
    /// `per_hour`.
    pub fn new(store: Store, burst: u32, per_hour: u32) -> RefusalAudit {
        RefusalAudit {
            store,
            table: Arc::new(Mutex::new(Table::new(burst, per_hour))),
        }
    }

    /// Writes `event` (a refused attempt of a real connection, from `peer`),
    /// or holds it back to be collapsed into a later row.
    pub async fn record(&self, mut event: AuditEvent, peer: IpAddr) {
        let Some(id) = event.connection_id.clone() else {
            self.store.record_audit(event).await;
            return;
        };
        let verdict = self.table().refused(&id, peer, Instant::now());
        match verdict {
            Verdict::Write(collapsed) => {
                if let Some(c) = collapsed {
                    event.detail = Some(format!(
                        "{}; {}",
                        event.detail.as_deref().unwrap_or("refused"),
                        c.describe()
                    ));
                }
                self.store.record_audit(event).await;
            }
            Verdict::Hold => {
                tracing::debug!(connection = %id, %peer,
                    "refused attempt held back: its audit row will be collapsed");
            }
        }
    }

    /// Writes the summaries the buckets allow now (or all, with `all`).
    pub async fn sweep(&self, all: bool) {
        let due = self.table().due(Instant::now(), all);
        for (id, collapsed) in due {
            let mut e = AuditEvent::new(AuditKind::Refused);
            e.connection_id = Some(id);
            e.detail = Some(format!("CG-AUTH-009 {}", collapsed.describe()));
            self.store.record_audit(e).await;
        }
    }

    /// Sweeps every minute until `ending`, then writes what is left.
    pub async fn run_sweeper(self, ending: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sweep(false).await,
                () = ending.cancelled() => break,
            }
        }
        self.sweep(true).await;
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether a refused attempt gets its row.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Yes, saying what was collapsed before it, if anything.
    Write(Option<Collapsed>),
    Hold,
}

/// Attempts held back for one id.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Collapsed {
    attempts: u64,
    sources: Vec<IpAddr>,
    /// More sources than are named.
    more_sources: bool,
    since: time::OffsetDateTime,
}

impl Collapsed {
    fn describe(&self) -> String {
        let sources = self
            .sources
            .iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let more = if self.more_sources { ", and more" } else { "" };
        format!(
            "{} more refused attempts collapsed since {} (from {sources}{more}); \
             refused attempts are rationed per connection and per source",
            self.attempts,
            crate::timefmt::format_time(self.since)
        )
    }
}

/// A token bucket of rows.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
struct Table {
    burst: f64,
    /// Tokens per second.
    rate: f64,
    ids: HashMap<String, IdState>,
    sources: HashMap<Source, Bucket>,
}

#[derive(Debug)]
struct IdState {
    bucket: Bucket,
    held: u64,
    held_since: Option<time::OffsetDateTime>,
    held_sources: HashSet<IpAddr>,
    more_sources: bool,
}

impl Table {
    fn new(burst: u32, per_hour: u32) -> Table {
        Table {
            burst: f64::from(burst.max(1)),
            rate: f64::from(per_hour) / 3600.0,
            ids: HashMap::new(),
            sources: HashMap::new(),
        }
    }

    fn full(&self, now: Instant) -> Bucket {
        Bucket {
            tokens: self.burst,
            at: now,
        }
    }

    fn refused(&mut self, id: &str, peer: IpAddr, now: Instant) -> Verdict {
        self.make_room(now);
        let source = Source::of(peer);
        let mut source_bucket = self
            .sources
            .get(&source)
            .copied()
            .unwrap_or_else(|| self.full(now));
        refill(&mut source_bucket, now, self.burst, self.rate);
        let mut state = self.ids.remove(id).unwrap_or_else(|| IdState {
            bucket: self.full(now),
            held: 0,
            held_since: None,
            held_sources: HashSet::new(),
            more_sources: false,
        });
        refill(&mut state.bucket, now, self.burst, self.rate);
        let verdict = if state.bucket.tokens >= 1.0 && source_bucket.tokens >= 1.0 {
            state.bucket.tokens -= 1.0;
            source_bucket.tokens -= 1.0;
            Verdict::Write(state.take_held())
        } else {
            state.hold(peer);
            Verdict::Hold
        };
        self.ids.insert(id.to_owned(), state);
        self.sources.insert(source, source_bucket);
        verdict
    }

    /// Summaries of held attempts whose id has a row to spend (any, with
    /// `all`); forgets what is full and has nothing held.
    fn due(&mut self, now: Instant, all: bool) -> Vec<(String, Collapsed)> {
        let mut out = Vec::new();
        let (burst, rate) = (self.burst, self.rate);
        for (id, state) in &mut self.ids {
            refill(&mut state.bucket, now, burst, rate);
            if state.held > 0 && (all || state.bucket.tokens >= 1.0) {
                state.bucket.tokens = (state.bucket.tokens - 1.0).max(0.0);
                if let Some(c) = state.take_held() {
                    out.push((id.clone(), c));
                }
            }
        }
        self.ids
            .retain(|_, s| s.held > 0 || s.bucket.tokens < burst);
        for bucket in self.sources.values_mut() {
            refill(bucket, now, burst, rate);
        }
        self.sources.retain(|_, b| b.tokens < burst);
        out
    }

    /// Keeps the tables within [`MAX_TRACKED`]: what has refilled goes
    /// first, then (for sources) the fullest buckets.
    fn make_room(&mut self, now: Instant) {
        if self.ids.len() >= MAX_TRACKED || self.sources.len() >= MAX_TRACKED {
            let _ = self.due(now, false);
        }
        if self.sources.len() >= MAX_TRACKED
            && let Some(fullest) = self
                .sources
                .iter()
                .max_by(|a, b| a.1.tokens.total_cmp(&b.1.tokens))
                .map(|(s, _)| *s)
        {
            self.sources.remove(&fullest);
        }
        // Ids are real console connections: only a store of more than
        // MAX_TRACKED of them under attack at once gets here. The one
        // dropped has nothing held, or its summary is lost with it.
        if self.ids.len() >= MAX_TRACKED
            && let Some(quiet) = self
                .ids
                .iter()
                .min_by_key(|(_, s)| s.held)
                .map(|(id, _)| id.clone())
        {
            self.ids.remove(&quiet);
        }
    }
}

fn refill(bucket: &mut Bucket, now: Instant, burst: f64, rate: f64) {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
    bucket.at = now;
}

impl IdState {
    fn hold(&mut self, peer: IpAddr) {
        self.held += 1;
        self.held_since
            .get_or_insert_with(time::OffsetDateTime::now_utc);
        if self.held_sources.len() < MAX_NAMED_SOURCES {
            self.held_sources.insert(peer);
        } else if !self.held_sources.contains(&peer) {
            self.more_sources = true;
        }
    }

    fn take_held(&mut self) -> Option<Collapsed> {
        if self.held == 0 {
            return None;
        }
        let mut sources: Vec<IpAddr> = self.held_sources.drain().collect();
        sources.sort();
        let c = Collapsed {
            attempts: self.held,
            sources,
            more_sources: self.more_sources,
            since: self
                .held_since
                .take()
                .unwrap_or_else(time::OffsetDateTime::now_utc),
        };
        self.held = 0;
        self.more_sources = false;
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    /// Rows written, and attempts they (and held summaries) account for.
    fn tally(verdicts: &[Verdict]) -> (usize, u64) {
        let rows = verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Write(_)))
            .count();
        let collapsed = verdicts
            .iter()
            .map(|v| match v {
                Verdict::Write(Some(c)) => c.attempts,
                _ => 0,
            })
            .sum::<u64>();
        (rows, collapsed)
    }

    #[test]
    fn a_brute_force_on_one_id_writes_its_burst_then_collapses_the_rest_losing_none() {
        let mut table = Table::new(10, 10);
        let t0 = Instant::now();
        let verdicts: Vec<_> = (0..10_000)
            .map(|n| table.refused("c1", ip(n % 500), t0))
            .collect();
        let (rows, _) = tally(&verdicts);
        assert_eq!(rows, 10, "from 500 sources, the id's burst and no more");
        // An hour on, the bucket has refilled: the next row says what was
        // held, every attempt counted.
        let later = t0 + Duration::from_secs(3600);
        let Verdict::Write(Some(c)) = table.refused("c1", ip(9999), later) else {
            panic!("the next row should carry the collapsed attempts");
        };
        assert_eq!(c.attempts, 9_990);
        assert_eq!(c.sources.len(), MAX_NAMED_SOURCES);
        assert!(c.more_sources);
        assert!(
            c.describe()
                .contains("9990 more refused attempts collapsed")
        );
    }

    #[test]
    fn one_source_against_many_ids_is_rationed_too() {
        let mut table = Table::new(10, 10);
        let t0 = Instant::now();
        let verdicts: Vec<_> = (0..1000)
            .map(|n| table.refused(&format!("c{n}"), ip(1), t0))
            .collect();
        assert_eq!(tally(&verdicts).0, 10, "the source's burst and no more");
        // Another source is not held back by that one.
        assert_eq!(table.refused("c1", ip(2), t0), Verdict::Write(None));
    }

    #[test]
    fn held_attempts_are_summarised_when_a_row_is_free_and_all_at_shutdown() {
        let mut table = Table::new(2, 60);
        let t0 = Instant::now();
        for _ in 0..5 {
            table.refused("c1", ip(1), t0);
            table.refused("c2", ip(2), t0);
        }
        assert!(table.due(t0, false).is_empty(), "no row to spend yet");
        // A minute refills one row per id: both summaries go out.
        let mut due = table.due(t0 + Duration::from_secs(60), false);
        due.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(due.len(), 2);
        assert_eq!((due[0].1.attempts, due[1].1.attempts), (3, 3));
        assert_eq!(due[0].1.sources, vec![ip(1)]);
        // The summary spent c1's row: more are held, and shutdown writes
        // them anyway.
        let at = t0 + Duration::from_secs(60);
        assert_eq!(table.refused("c1", ip(1), at), Verdict::Hold);
        assert_eq!(table.refused("c1", ip(1), at), Verdict::Hold);
        assert!(table.due(at, false).is_empty());
        let at_end = table.due(at, true);
        assert_eq!(at_end.len(), 1);
        assert_eq!(at_end[0].1.attempts, 2);
    }

    #[test]
    fn quiet_ids_and_sources_are_forgotten() {
        let mut table = Table::new(2, 3600);
        let t0 = Instant::now();
        for n in 0..100 {
            table.refused(&format!("c{n}"), ip(n), t0);
        }
        assert_eq!(table.ids.len(), 100);
        assert!(table.due(t0 + Duration::from_secs(2), false).is_empty());
        assert!(table.ids.is_empty() && table.sources.is_empty());
    }
}
