//! Metrics in the Prometheus (OpenMetrics) text format, served at `/metrics`.
//!
//! Counters that events drive (SSH connections and authentication results,
//! API requests and their latency, console tokens, session cuts) are kept
//! here and bumped where the event happens. What the console hubs own
//! (backend state, bytes, reconnects, skipped bytes, who is attached) is read
//! from each hub at scrape time, so there is one source of truth for it.
//!
//! Label values are chosen by the gateway (instance ids from the config,
//! fixed reasons, route templates), never by a client: nothing a stranger
//! sends can grow the set of series, and no key material or token appears.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::console::hub::{ConsoleHubs, HubStatus};

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    hop: &'static str,
    result: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CutLabels {
    instance: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionLabels {
    instance: String,
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    instance: String,
    direction: &'static str,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The gateway's metrics; share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    ssh_connections: Counter,
    ssh_refused: Family<RefusedLabels, Counter>,
    ssh_auth: Family<AuthLabels, Counter>,
    http_connections: Counter,
    http_open: Gauge,
    http_refused: Family<RefusedLabels, Counter>,
    http_closed: Family<RefusedLabels, Counter>,
    api_requests: Family<ApiLabels, Counter>,
    api_latency: HistogramFamily,
    console_tokens: Family<ResultLabels, Counter>,
    session_cuts: Family<CutLabels, Counter>,
    // Read from the hubs at each scrape.
    sessions: Family<SessionLabels, Gauge>,
    backend_up: Family<InstanceLabels, Gauge>,
    console_held: Family<InstanceLabels, Gauge>,
    backend_reconnects: Family<InstanceLabels, Counter>,
    console_bytes: Family<BytesLabels, Counter>,
    skipped_bytes: Family<InstanceLabels, Counter>,
    runtime_tasks: Gauge,
    /// One scrape at a time refreshes and encodes the hub-owned families.
    scrape: tokio::sync::Mutex<()>,
}

/// Tasks alive in the current async runtime (0 outside one).
pub fn runtime_tasks() -> u64 {
    tokio::runtime::Handle::try_current()
        .map_or(0, |runtime| runtime.metrics().num_alive_tasks() as u64)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Empty metrics, registered under the `consolegate_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("consolegate");
        let m = Metrics {
            ssh_connections: Counter::default(),
            ssh_refused: Family::default(),
            ssh_auth: Family::default(),
            http_connections: Counter::default(),
            http_open: Gauge::default(),
            http_refused: Family::default(),
            http_closed: Family::default(),
            api_requests: Family::default(),
            api_latency: HistogramFamily::new_with_constructor(latency_histogram),
            console_tokens: Family::default(),
            session_cuts: Family::default(),
            sessions: Family::default(),
            backend_up: Family::default(),
            console_held: Family::default(),
            backend_reconnects: Family::default(),
            console_bytes: Family::default(),
            skipped_bytes: Family::default(),
            runtime_tasks: Gauge::default(),
            scrape: tokio::sync::Mutex::new(()),
            registry: Registry::default(),
        };
        registry.register(
            "ssh_connections",
            "TCP connections accepted by the SSH listener",
            m.ssh_connections.clone(),
        );
        registry.register(
            "ssh_refused",
            "SSH connections dropped before their handshake, by reason",
            m.ssh_refused.clone(),
        );
        registry.register(
            "ssh_auth",
            "SSH public-key authentication results by hop and reason",
            m.ssh_auth.clone(),
        );
        registry.register(
            "http_connections",
            "TCP connections accepted by the HTTP listeners",
            m.http_connections.clone(),
        );
        registry.register(
            "http_open_connections",
            "HTTP connections open now (WebSocket consoles count as sessions instead)",
            m.http_open.clone(),
        );
        registry.register(
            "http_refused",
            "HTTP connections closed at once, by reason (connection limits, TLS)",
            m.http_refused.clone(),
        );
        registry.register(
            "http_closed",
            "HTTP connections the gateway closed, by reason (timeouts, room for new ones)",
            m.http_closed.clone(),
        );
        registry.register(
            "api_requests",
            "HTTP API requests by route template, method and status",
            m.api_requests.clone(),
        );
        registry.register(
            "api_request_duration_seconds",
            "HTTP API request latency by route template",
            m.api_latency.clone(),
        );
        registry.register(
            "console_tokens",
            "Console tokens issued, and WebSocket attempts refused for a bad token",
            m.console_tokens.clone(),
        );
        registry.register(
            "session_cuts",
            "Console sessions closed by their idle timeout or maximum duration",
            m.session_cuts.clone(),
        );
        registry.register(
            "console_sessions",
            "Sessions attached to each console, by role",
            m.sessions.clone(),
        );
        registry.register(
            "backend_up",
            "Whether each console's serial backend is connected (1) or not (0)",
            m.backend_up.clone(),
        );
        registry.register(
            "console_held",
            "Whether this node holds each console (1) or another node of the fleet does (0); \
             backend_up is reported for held consoles only",
            m.console_held.clone(),
        );
        registry.register(
            "backend_reconnects",
            "Times each console's backend connection was re-established after a loss",
            m.backend_reconnects.clone(),
        );
        registry.register(
            "console_bytes",
            "Bytes each console printed (from_console) and was typed (to_console)",
            m.console_bytes.clone(),
        );
        registry.register(
            "console_skipped_bytes",
            "Console output bytes skipped for sessions that fell behind",
            m.skipped_bytes.clone(),
        );
        registry.register(
            "runtime_tasks",
            "Tasks alive in the gateway's async runtime (sessions, connections, consoles, \
             background work); at rest it follows the sessions open",
            m.runtime_tasks.clone(),
        );
        Metrics { registry, ..m }
    }

    /// An SSH connection was accepted.
    pub fn ssh_connection(&self) {
        self.ssh_connections.inc();
    }

    /// A connection was dropped before its handshake (`max_startups`,
    /// per-source limit, penalty).
    pub fn ssh_refused(&self, reason: &'static str) {
        self.ssh_refused
            .get_or_create(&RefusedLabels { reason })
            .inc();
    }

    /// A public key was accepted (`reason` = `None`) or refused, on `hop`.
    pub fn ssh_auth(&self, hop: &'static str, refused: Option<&'static str>) {
        let labels = AuthLabels {
            hop,
            result: if refused.is_some() {
                "refused"
            } else {
                "accepted"
            },
            reason: refused.unwrap_or("ok"),
        };
        self.ssh_auth.get_or_create(&labels).inc();
    }

    /// An HTTP connection was accepted; `open` are open now.
    pub fn http_connection(&self, open: usize) {
        self.http_connections.inc();
        self.http_open_connections(open);
    }

    /// `open` HTTP connections are open now.
    pub fn http_open_connections(&self, open: usize) {
        self.http_open.set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// An HTTP connection was closed at once (`max_connections`,
    /// `max_connections_per_source`, `tls_handshake`, `plain_http`).
    pub fn http_refused(&self, reason: &'static str) {
        self.http_refused
            .get_or_create(&RefusedLabels { reason })
            .inc();
    }

    /// The gateway closed an HTTP connection (`header_timeout`,
    /// `idle_timeout`, or to make room: `evicted`, `evicted_per_source`).
    pub fn http_closed(&self, reason: &'static str) {
        self.http_closed
            .get_or_create(&RefusedLabels { reason })
            .inc();
    }

    /// An API request was answered.
    pub fn api_request(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.api_requests
            .get_or_create(&ApiLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
        self.api_latency
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// A console token was issued.
    pub fn token_issued(&self) {
        self.console_tokens
            .get_or_create(&ResultLabels { result: "issued" })
            .inc();
    }

    /// A WebSocket was refused for its console token.
    pub fn token_refused(&self) {
        self.console_tokens
            .get_or_create(&ResultLabels { result: "refused" })
            .inc();
    }

    /// A session on `instance` was cut (`idle` or `max_session`).
    pub fn session_cut(&self, instance: &str, reason: &'static str) {
        self.session_cuts
            .get_or_create(&CutLabels {
                instance: instance.to_owned(),
                reason,
            })
            .inc();
    }

    /// The metrics text: asks every hub for its state first.
    pub async fn render(&self, hubs: &ConsoleHubs) -> String {
        let statuses = hubs.statuses().await;
        let _one_at_a_time = self.scrape.lock().await;
        self.refresh(&statuses);
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            // Writing to a String cannot fail; say so if it ever does.
            text = "# CG-OPS-004 the metrics could not be encoded\n# EOF\n".to_owned();
        }
        text
    }

    fn refresh(&self, statuses: &[HubStatus]) {
        self.runtime_tasks
            .set(i64::try_from(runtime_tasks()).unwrap_or(i64::MAX));
        self.sessions.clear();
        self.backend_up.clear();
        self.console_held.clear();
        self.backend_reconnects.clear();
        self.console_bytes.clear();
        self.skipped_bytes.clear();
        for s in statuses {
            let instance = || InstanceLabels {
                instance: s.instance.clone(),
            };
            self.console_held
                .get_or_create(&instance())
                .set(i64::from(s.held));
            if s.held {
                self.backend_up
                    .get_or_create(&instance())
                    .set(i64::from(s.connected));
            }
            set_counter(
                &self.backend_reconnects.get_or_create(&instance()),
                s.reconnects,
            );
            set_counter(
                &self.skipped_bytes.get_or_create(&instance()),
                s.skipped_bytes,
            );
            for (direction, n) in [
                ("from_console", s.bytes_from_console),
                ("to_console", s.bytes_to_console),
            ] {
                let labels = BytesLabels {
                    instance: s.instance.clone(),
                    direction,
                };
                set_counter(&self.console_bytes.get_or_create(&labels), n);
            }
            for role in ["writer", "read-write", "read-only"] {
                let n = s.sessions.iter().filter(|x| x.role == role).count();
                self.sessions
                    .get_or_create(&SessionLabels {
                        instance: s.instance.clone(),
                        role,
                    })
                    .set(n as i64);
            }
        }
    }
}

/// Sets a counter to a total the hub keeps (totals only ever grow).
fn set_counter(counter: &Counter, total: u64) {
    counter
        .inner()
        .store(total, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counters_render_in_the_text_format() {
        let m = Metrics::new();
        m.ssh_connection();
        m.ssh_auth("outer", None);
        m.ssh_auth("outer", Some("wrong_key"));
        m.api_request("/x/{id}", "GET", 404, Duration::from_millis(3));
        m.token_issued();
        m.session_cut("vm1", "idle");
        let text = m.render(&ConsoleHubs::default()).await;
        assert!(
            text.contains("consolegate_ssh_connections_total 1"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"consolegate_ssh_auth_total{hop="outer",result="refused",reason="wrong_key"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"consolegate_api_requests_total{route="/x/{id}",method="GET",status="404"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"consolegate_api_request_duration_seconds_count{route="/x/{id}"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"consolegate_session_cuts_total{instance="vm1",reason="idle"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
