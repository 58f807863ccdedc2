//! Configuration: the `gateway.toml` file, parsed strictly.
//!
//! Every table rejects unknown keys (the error names the key, the line and the
//! keys that are allowed), and every value that has a syntax of its own — listen
//! addresses, serial and VNC targets, instance ids — is parsed here, so that the
//! rest of the gateway only ever sees valid settings. Relative paths are
//! resolved against the directory holding the config file.
//!
//! The syntaxes of serial and VNC targets live in [`targets`].
//!
//! This module touches nothing but the file system (to read the file).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod http;
mod limits;
mod replay;
mod targets;
pub use http::{ApiHost, split_host_port};
pub use limits::{AddressRange, Source, StartupLimits};
pub use replay::Replay;
use targets::is_valid_host;
pub use targets::{SerialTarget, VncTarget};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("CG-CONF-001 cannot read config file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The TOML did not parse, or a key or value was not allowed.
    #[error("CG-CONF-001 {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key, its line and what is allowed.
        message: String,
    },
    /// The file parsed, but its settings do not fit together.
    #[error("CG-CONF-001 {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// The configuration in force, shared by everything that reads it: read
/// often, replaced whole when `consolegate reload` (or SIGHUP) succeeds.
#[derive(Debug, Clone)]
pub struct SharedConfig(std::sync::Arc<std::sync::RwLock<std::sync::Arc<Config>>>);

impl SharedConfig {
    /// Shares `config`.
    pub fn new(config: std::sync::Arc<Config>) -> SharedConfig {
        SharedConfig(std::sync::Arc::new(std::sync::RwLock::new(config)))
    }

    /// The configuration now in force.
    pub fn get(&self) -> std::sync::Arc<Config> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Puts `config` in force.
    pub fn replace(&self, config: std::sync::Arc<Config>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = config;
    }
}

impl From<std::sync::Arc<Config>> for SharedConfig {
    fn from(config: std::sync::Arc<Config>) -> Self {
        SharedConfig::new(config)
    }
}

/// The whole gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (`None` when built from text), which a
    /// reload reads again.
    pub source: Option<PathBuf>,
    /// Where host keys, the admin socket and the SQLite database live.
    pub data_dir: PathBuf,
    /// Which database holds the gateway's state.
    pub store: StoreConfig,
    /// This gateway as a node of a fleet sharing the store.
    pub cluster: ClusterConfig,
    /// The SSH data plane.
    pub ssh: SshConfig,
    /// Logging.
    pub log: LogConfig,
    /// The HTTP control plane.
    pub api: ApiConfig,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics: MetricsConfig,
    /// Who may use the HTTP API.
    pub api_users: Vec<ApiUserConfig>,
    /// The Nova-compatible API and its console tokens.
    pub nova: NovaConfig,
    /// X-Auth-Token holders of the Nova-compatible API.
    pub nova_tokens: Vec<NovaTokenConfig>,
    /// Days audit events are kept.
    pub audit_retention_days: u64,
    /// Audit rows of refused attempts one console connection (and one
    /// source address) may write at once, before they are collapsed.
    pub audit_refused_burst: u32,
    /// How fast that allowance refills, rows per hour.
    pub audit_refused_per_hour: u32,
    /// Session timeouts every instance gets unless it sets its own.
    pub session: SessionConfig,
    /// The instances whose consoles the gateway serves.
    pub instances: Vec<InstanceConfig>,
}

/// `[api]`: the HTTP control plane (OCI-compatible).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address the HTTP API binds (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Seconds a request may take before it is answered with an error.
    pub request_timeout_secs: u64,
    /// Requests served at once; more are answered 429 TooManyRequests.
    pub max_concurrent_requests: usize,
    /// Seconds a signed request's `date` may differ from the gateway's clock.
    pub max_clock_skew_secs: u64,
    /// Page size of list calls without `limit`.
    pub default_page_size: usize,
    /// Largest `limit` a list call may ask for.
    pub max_page_size: usize,
    /// Seconds a deleted connection stays readable as DELETED.
    pub deleted_retention_secs: u64,
    /// HTTP connections open at once; past it, the one waiting longest for
    /// its next request is closed to make room, or (none waiting) the new
    /// one is refused.
    pub max_connections: usize,
    /// HTTP connections open at once from one address (IPv6: one /64),
    /// handled the same way; 0: no per-source limit.
    pub max_connections_per_source: usize,
    /// Addresses and CIDR ranges without a per-source limit (a reverse
    /// proxy or load balancer in front of the listener).
    pub exempt_sources: Vec<AddressRange>,
    /// Seconds a client has to send a request's headers (from its first
    /// byte, or from the connection's start for its first request).
    pub header_read_timeout_secs: u64,
    /// Seconds an idle keep-alive connection is kept between requests.
    pub keepalive_timeout_secs: u64,
    /// PEM certificate chain for HTTPS; with `tls_key_file`, the listener
    /// speaks only TLS.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// The names (and `name:port`s) clients may sign OCI requests for (the
    /// signed `host` header); empty: derived from `listen`, the address
    /// each connection reached and `[nova] public_url`.
    pub hosts: Vec<ApiHost>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 64 * 1024,
            request_timeout_secs: 30,
            max_concurrent_requests: 64,
            max_clock_skew_secs: 300,
            default_page_size: 50,
            max_page_size: 1000,
            deleted_retention_secs: 3600,
            max_connections: 512,
            max_connections_per_source: 32,
            exempt_sources: Vec::new(),
            header_read_timeout_secs: 10,
            keepalive_timeout_secs: 60,
            tls_cert_file: None,
            tls_key_file: None,
            hosts: Vec::new(),
        }
    }
}

impl ApiConfig {
    /// Whether the listener speaks TLS.
    pub fn tls(&self) -> bool {
        self.tls_cert_file.is_some()
    }
}

/// `[store]`: which database holds console connections, tokens, host keys
/// and the audit trail.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// A PostgreSQL URL (`postgres://user:password@host:port/database`),
    /// for several gateway nodes sharing one store; unset, an SQLite file
    /// in the data directory (one node).
    pub url: Option<String>,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a password.
        f.debug_struct("StoreConfig")
            .field("url", &self.url.as_ref().map(|_| "…"))
            .finish()
    }
}

/// `[cluster]`: this gateway as one node of several sharing a PostgreSQL
/// store. Absent, the gateway runs alone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's name, unique in the fleet (letters, digits, `.`, `_`,
    /// `-`); unset, the gateway is not a node of a fleet.
    pub node_id: Option<String>,
    /// Where the other nodes reach this one's node link (`host:port`);
    /// unset, `listen`.
    pub advertise: Option<String>,
    /// Where this node listens for the node link (relayed sessions from
    /// the other nodes); unset, the address `advertise` names.
    pub listen: Option<SocketAddr>,
    /// Seconds between this node's heartbeats in the store.
    pub heartbeat_secs: u64,
    /// Seconds without a heartbeat after which a node counts as missing.
    pub node_timeout_secs: u64,
    /// Seconds a console lease lasts unless renewed: how long a dead
    /// node's consoles wait before another node takes them.
    pub lease_secs: u64,
    /// What this node does with its sessions when it cannot reach the
    /// store for `store_lost_secs`.
    pub store_lost: StoreLost,
    /// Seconds without the store before `store_lost` applies.
    pub store_lost_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: None,
            advertise: None,
            listen: None,
            heartbeat_secs: 2,
            node_timeout_secs: 10,
            lease_secs: 10,
            store_lost: StoreLost::EndSessions,
            store_lost_secs: 30,
        }
    }
}

impl ClusterConfig {
    /// The address the node link listens on: `listen`, else `advertise`
    /// when it is an IP address and port.
    pub fn link_listen(&self) -> Option<SocketAddr> {
        self.listen
            .or_else(|| self.advertise.as_deref().and_then(|a| a.parse().ok()))
    }

    /// The address the other nodes dial: `advertise`, else `listen`.
    pub fn link_advertise(&self) -> Option<String> {
        self.advertise
            .clone()
            .or_else(|| self.listen.map(|l| l.to_string()))
    }
}

/// `[cluster] store_lost`: what a node does with its sessions once it has
/// not reached the store for `store_lost_secs` (it can no longer see
/// deletes, so it cannot tell whether a session is still allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreLost {
    /// End them (the default): access that cannot be checked is refused.
    EndSessions,
    /// Keep them: the console stays reachable to those already on it.
    Keep,
}

/// `[metrics]`: where the operations endpoints are served.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// A listener of their own for `/metrics`, `/healthz` and `/readyz`;
    /// unset, they are served on the `[api]` listener.
    pub listen: Option<SocketAddr>,
}

/// `[nova]`: the Nova-compatible API and web consoles.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NovaConfig {
    /// Base of the console URLs handed out (`http://host:port`); defaults
    /// to the API listener's address.
    pub public_url: Option<String>,
    /// Seconds a console token is valid (Nova's default is 600).
    pub token_ttl_secs: u64,
    /// Whether a console token opens only one WebSocket (the default; the
    /// serial page's own `GET` does not spend it).
    pub single_use_tokens: bool,
    /// noVNC's files (Debian package `novnc`), served under `/novnc/`.
    pub novnc_dir: PathBuf,
    /// xterm.js's files (npm package `@xterm/xterm`, installed with
    /// `npm install --prefix web`), served under `/xterm/`.
    pub xterm_dir: PathBuf,
}

impl Default for NovaConfig {
    fn default() -> Self {
        NovaConfig {
            public_url: None,
            token_ttl_secs: 600,
            single_use_tokens: true,
            novnc_dir: PathBuf::from("/usr/share/novnc"),
            xterm_dir: PathBuf::from("web/node_modules/@xterm/xterm"),
        }
    }
}

/// One `[[nova_token]]`: an `X-Auth-Token`, stored as its SHA-256.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NovaTokenConfig {
    /// Lower-case hex SHA-256 of the token (`printf %s TOKEN | sha256sum`).
    pub token_sha256: String,
    /// The project (a compartment of instances) the token belongs to.
    pub project: String,
    /// `member` (its project's servers) or `admin` (all, and token lookups).
    pub role: NovaRole,
}

/// What a Nova token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NovaRole {
    /// Its own project's servers.
    Member,
    /// Every server, and console-token lookups.
    Admin,
}

/// One `[[api_user]]`: an API signing key and what it may reach.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiUserConfig {
    /// The tenancy OCID, first part of the request signature's keyId.
    pub tenancy: String,
    /// The user OCID, second part of the keyId.
    pub user: String,
    /// PEM file of the user's API public key (the key's fingerprint is
    /// computed from it: the third part of the keyId).
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// The PEM text itself, instead of a file.
    #[serde(default)]
    pub public_key: Option<String>,
    /// Compartments this user may use (`"*"` for all).
    pub compartments: Vec<String>,
}

impl ApiUserConfig {
    /// Whether this user may use `compartment`.
    pub fn may_use(&self, compartment: &str) -> bool {
        self.compartments
            .iter()
            .any(|c| c == "*" || c == compartment)
    }
}

/// `[ssh]`: the SSH listener and what connection strings advertise.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// Address the SSH listener binds (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Host name written into connection strings.
    pub public_host: String,
    /// Port written into connection strings; defaults to the listen port.
    pub public_port: Option<u16>,
    /// Most simultaneous sessions: authenticated SSH connections and web
    /// console sockets together. Further SSH clients are told so when they
    /// authenticate (CG-SSH-005); further web sockets are refused with 503
    /// (CG-WEB-006).
    pub max_connections: usize,
    /// Unauthenticated SSH connections (OpenSSH's `MaxStartups`): past
    /// `start`, new ones are dropped at random, `rate` % rising to all at
    /// `full`. They never take places under `max_connections`.
    pub max_startups: StartupLimits,
    /// Unauthenticated SSH connections from one address (IPv6: one /64);
    /// 0: no limit.
    pub per_source_max_startups: u32,
    /// Addresses and CIDR ranges with no per-source limit and no penalties
    /// (a load balancer that does not pass client addresses on).
    pub exempt_sources: Vec<AddressRange>,
    /// Per-source penalties (OpenSSH's `PerSourcePenalties`).
    pub penalties: PenaltyConfig,
    /// Seconds a client has to finish key exchange and authentication
    /// (it has 10 s, or this if less, to send its SSH identification).
    pub handshake_timeout_secs: u64,
    /// Seconds between checks that a session's connection record is still
    /// ACTIVE (and a web console's token still stands).
    pub revalidate_interval_secs: u64,
    /// Seconds between keepalives to an idle client: SSH keepalives, and
    /// WebSocket pings on the web consoles (a socket that answers nothing
    /// for three of them is closed, CG-WEB-007); 0 disables them.
    pub keepalive_interval_secs: u64,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 2222)),
            public_host: "127.0.0.1".to_owned(),
            public_port: None,
            max_connections: 1024,
            max_startups: StartupLimits::default(),
            per_source_max_startups: 10,
            exempt_sources: Vec::new(),
            penalties: PenaltyConfig::default(),
            handshake_timeout_secs: 20,
            revalidate_interval_secs: 2,
            keepalive_interval_secs: 30,
        }
    }
}

impl SshConfig {
    /// The port connection strings use.
    pub fn advertised_port(&self) -> u16 {
        self.public_port.unwrap_or(self.listen.port())
    }

    /// How long a client may take to authenticate.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }

    /// How often live sessions re-read their connection record.
    pub fn revalidate_interval(&self) -> Duration {
        Duration::from_secs(self.revalidate_interval_secs)
    }
}

/// `[ssh.penalties]`: seconds of penalty a source earns for each
/// connection that ends before it authenticates, and when they are
/// enforced (OpenSSH's `PerSourcePenalties`, with its defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PenaltyConfig {
    /// Off: no source is ever refused for what it did before.
    pub enabled: bool,
    /// Keys offered or signed, none accepted.
    pub authfail_secs: u64,
    /// Left without trying a key.
    pub noauth_secs: u64,
    /// Ran out `handshake_timeout_secs`.
    pub grace_exceeded_secs: u64,
    /// Not SSH, or broke the protocol.
    pub junk_secs: u64,
    /// A source's penalty is enforced (its connections refused) once it
    /// reaches this.
    pub min_secs: u64,
    /// The longest penalty.
    pub max_secs: u64,
    /// The most sources remembered at once; past it, new sources go
    /// without per-source limits until entries expire.
    pub max_sources: usize,
}

impl Default for PenaltyConfig {
    fn default() -> Self {
        PenaltyConfig {
            enabled: true,
            authfail_secs: 5,
            noauth_secs: 1,
            grace_exceeded_secs: 10,
            junk_secs: 10,
            min_secs: 15,
            max_secs: 600,
            max_sources: 65_536,
        }
    }
}

/// `[session]`: console session timeouts, the defaults of every instance.
/// 0 turns a timeout off.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Seconds without input and without output after which a session is
    /// closed (a read-only viewer counts its own input only).
    pub idle_timeout_secs: u64,
    /// Seconds a session may last in all.
    pub max_session_secs: u64,
    /// Seconds before either cut that the session is warned.
    pub timeout_warning_secs: u64,
    /// Sessions (console sessions and VNC tunnels) one instance may have
    /// at once on this gateway; 0: no cap.
    pub max_sessions_per_instance: usize,
    /// Sessions one console connection (or console token) may have at once.
    pub max_sessions_per_connection: usize,
    /// Sessions one key may have at once, over every console connection
    /// it is registered in.
    pub max_sessions_per_key: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        let caps = SessionCaps::default();
        SessionConfig {
            idle_timeout_secs: 0,
            max_session_secs: 0,
            timeout_warning_secs: 60,
            max_sessions_per_instance: caps.max_sessions_per_instance,
            max_sessions_per_connection: caps.max_sessions_per_connection,
            max_sessions_per_key: caps.max_sessions_per_key,
        }
    }
}

impl SessionConfig {
    /// The session caps.
    pub fn caps(&self) -> SessionCaps {
        SessionCaps {
            max_sessions_per_instance: self.max_sessions_per_instance,
            max_sessions_per_connection: self.max_sessions_per_connection,
            max_sessions_per_key: self.max_sessions_per_key,
        }
    }
}

/// How many sessions one instance, console connection and key may have at
/// once (`[session]`; 0: no cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCaps {
    /// Sessions of one instance.
    pub max_sessions_per_instance: usize,
    /// Sessions of one console connection (or console token).
    pub max_sessions_per_connection: usize,
    /// Sessions of one key, over all its console connections.
    pub max_sessions_per_key: usize,
}

impl Default for SessionCaps {
    fn default() -> Self {
        SessionCaps {
            max_sessions_per_instance: 64,
            max_sessions_per_connection: 8,
            max_sessions_per_key: 16,
        }
    }
}

/// The timeouts of one instance's sessions, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimeouts {
    /// No input and no output for this long closes the session.
    pub idle: Option<Duration>,
    /// A session lasts at most this long.
    pub max_session: Option<Duration>,
    /// Warn this long before either cut (zero: no warning).
    pub warning: Duration,
}

/// `[log]`: how the gateway writes its log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (human readable) or `json` (one object a line).
    pub format: LogFormat,
    /// A tracing filter such as `info` or `consolegate=debug,russh=warn`;
    /// the `RUST_LOG` environment variable overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// One `[[instance]]`: a machine whose console the gateway serves.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// The instance id users name in connection strings (letters, digits, `.`, `_`, `-`).
    pub id: String,
    /// A human-friendly name shown in the banner.
    #[serde(default)]
    pub display_name: Option<String>,
    /// The compartment (tenant) the instance belongs to.
    #[serde(default = "default_compartment")]
    pub compartment: String,
    /// The serial console.
    pub serial: SerialTarget,
    /// The VNC display, if any.
    #[serde(default)]
    pub vnc: Option<VncTarget>,
    /// Who may type: `shared` (every read-write session) or `exclusive`
    /// (one writer at a time; others read-only until they force).
    #[serde(default)]
    pub input: InputPolicy,
    /// Whether `&F` (and the `force` option) may take exclusive write
    /// access from a session that holds it (default `true`); `false`: the
    /// writer keeps it until it leaves, and `&F` only takes free access.
    #[serde(default = "default_true")]
    pub allow_force: bool,
    /// Bytes of recent output kept for replay (default 1 MiB).
    #[serde(default = "default_history_bytes")]
    pub history_bytes: usize,
    /// What a session sees again on attach unless it asks otherwise:
    /// `none`, `all`, `N lines` or `N bytes` (default `1000 lines`).
    #[serde(default)]
    pub replay: Replay,
    /// Append all console output to this file (rotated by size).
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// Rotate the console log when it reaches this size (default 10 MiB).
    #[serde(default = "default_log_max_bytes")]
    pub log_max_bytes: u64,
    /// Rotated console logs kept (`.1` … `.N`, default 5).
    #[serde(default = "default_log_keep")]
    pub log_keep: usize,
    /// Record each session as an asciicast v2 file: `off`, `output` or
    /// `output+input` (default `off`).
    #[serde(default)]
    pub record: RecordMode,
    /// Where recordings go (required when `record` is not `off`).
    #[serde(default)]
    pub record_dir: Option<PathBuf>,
    /// A recording stops (never its session) when its file reaches this
    /// size (default 100 MiB).
    #[serde(default = "default_record_max_bytes")]
    pub record_max_bytes: u64,
    /// This instance's `[session] idle_timeout_secs` (0: off).
    #[serde(default)]
    pub idle_timeout_secs: Option<u64>,
    /// This instance's `[session] max_session_secs` (0: off).
    #[serde(default)]
    pub max_session_secs: Option<u64>,
    /// This instance's `[session] timeout_warning_secs`.
    #[serde(default)]
    pub timeout_warning_secs: Option<u64>,
}

fn default_history_bytes() -> usize {
    1024 * 1024
}

fn default_log_max_bytes() -> u64 {
    10 * 1024 * 1024
}

fn default_log_keep() -> usize {
    5
}

/// Who may type on a console.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputPolicy {
    /// Every read-write session types.
    #[default]
    Shared,
    /// One writer at a time.
    Exclusive,
}

/// What session recordings hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum RecordMode {
    /// No recordings.
    #[default]
    #[serde(rename = "off")]
    Off,
    /// What the session saw.
    #[serde(rename = "output")]
    Output,
    /// What it saw and what it typed.
    #[serde(rename = "output+input")]
    OutputAndInput,
}

fn default_record_max_bytes() -> u64 {
    100 * 1024 * 1024
}

fn default_true() -> bool {
    true
}

fn default_compartment() -> String {
    "default".to_owned()
}

impl InstanceConfig {
    /// The name shown to users: the display name, or the id.
    pub fn name(&self) -> &str {
        self.display_name.as_deref().unwrap_or(&self.id)
    }

    /// Its sessions' timeouts (the `[session]` defaults are filled in when
    /// the config is loaded).
    pub fn session_timeouts(&self) -> SessionTimeouts {
        let secs = |s: Option<u64>| s.filter(|&s| s > 0).map(Duration::from_secs);
        SessionTimeouts {
            idle: secs(self.idle_timeout_secs),
            max_session: secs(self.max_session_secs),
            warning: Duration::from_secs(self.timeout_warning_secs.unwrap_or(0)),
        }
    }
}

/// The file as written; turned into [`Config`] by [`Config::from_toml`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default = "default_audit_retention_days")]
    audit_retention_days: u64,
    #[serde(default = "default_audit_refused_burst")]
    audit_refused_burst: u32,
    #[serde(default = "default_audit_refused_per_hour")]
    audit_refused_per_hour: u32,
    #[serde(default)]
    ssh: SshConfig,
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    session: SessionConfig,
    #[serde(default)]
    api: ApiConfig,
    #[serde(default)]
    metrics: MetricsConfig,
    #[serde(default)]
    store: StoreConfig,
    #[serde(default)]
    cluster: ClusterConfig,
    #[serde(default)]
    api_user: Vec<ApiUserConfig>,
    #[serde(default)]
    nova: NovaConfig,
    #[serde(default)]
    nova_token: Vec<NovaTokenConfig>,
    #[serde(default)]
    instance: Vec<InstanceConfig>,
}

/// Each `[[instance]]`: a valid, unique id and settings in range.
fn check_instances(instances: &[InstanceConfig]) -> Result<(), String> {
    let mut seen = HashSet::new();
    for instance in instances {
        validate_instance_id(&instance.id).map_err(|m| format!("[[instance]] id: {m}"))?;
        if !seen.insert(instance.id.as_str()) {
            return Err(format!(
                "[[instance]] id `{}` appears twice; instance ids must be unique",
                instance.id
            ));
        }
        if instance.history_bytes == 0 || instance.history_bytes > 256 * 1024 * 1024 {
            return Err(format!(
                "[[instance]] `{}`: history_bytes must be from 1 to 268435456",
                instance.id
            ));
        }
        if instance.record != RecordMode::Off && instance.record_dir.is_none() {
            return Err(format!(
                "[[instance]] `{}`: record = \"{}\" needs record_dir",
                instance.id,
                if instance.record == RecordMode::Output {
                    "output"
                } else {
                    "output+input"
                }
            ));
        }
        if instance.log_max_bytes < 1024 {
            return Err(format!(
                "[[instance]] `{}`: log_max_bytes must be at least 1024",
                instance.id
            ));
        }
        if instance.compartment.is_empty() || instance.compartment.len() > 255 {
            return Err(format!(
                "[[instance]] `{}`: compartment must be 1 to 255 characters",
                instance.id
            ));
        }
    }
    Ok(())
}

/// `[ssh]`: a public host and port clients can use, limits of at least 1.
fn check_ssh(ssh: &SshConfig) -> Result<(), String> {
    if !is_valid_host(&ssh.public_host) {
        return Err(format!(
            "[ssh] public_host `{}` is not a host name or IP address",
            ssh.public_host
        ));
    }
    if ssh.public_port == Some(0) {
        return Err("[ssh] public_port must be between 1 and 65535".into());
    }
    if ssh.max_connections == 0 {
        return Err("[ssh] max_connections must be at least 1".into());
    }
    let p = &ssh.penalties;
    if p.min_secs == 0 || p.max_secs < p.min_secs || p.max_sources == 0 {
        return Err(
            "[ssh.penalties] needs 1 <= min_secs <= max_secs and max_sources of at least 1".into(),
        );
    }
    if ssh.handshake_timeout_secs == 0 || ssh.revalidate_interval_secs == 0 {
        return Err(
            "[ssh] handshake_timeout_secs and revalidate_interval_secs must be at least 1".into(),
        );
    }
    Ok(())
}

/// `[store]`: a PostgreSQL URL, if any.
fn check_store(store: &StoreConfig) -> Result<(), String> {
    match &store.url {
        Some(url) if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) => Err(
            "[store] url must be a PostgreSQL URL (postgres://user:password@host:port/database); \
             leave it out for the SQLite file in data_dir"
                .into(),
        ),
        _ => Ok(()),
    }
}

/// `[cluster]`: a valid node id, on a shared store, beating faster than
/// it times out.
fn check_cluster(cluster: &ClusterConfig, store: &StoreConfig) -> Result<(), String> {
    let Some(node_id) = &cluster.node_id else {
        return Ok(());
    };
    validate_instance_id(node_id).map_err(|m| format!("[cluster] node_id: {m}"))?;
    if store.url.is_none() {
        return Err(
            "[cluster] node_id is set but the store is the local SQLite file: the nodes of a \
             fleet share one PostgreSQL database ([store] url)"
                .into(),
        );
    }
    if let Some(advertise) = &cluster.advertise {
        let valid = advertise.rsplit_once(':').is_some_and(|(host, port)| {
            is_valid_host(host.trim_start_matches('[').trim_end_matches(']'))
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !valid {
            return Err(format!(
                "[cluster] advertise `{advertise}` must be host:port"
            ));
        }
    }
    if cluster.heartbeat_secs == 0 || cluster.node_timeout_secs <= cluster.heartbeat_secs {
        return Err(
            "[cluster] heartbeat_secs must be at least 1 and node_timeout_secs longer than it"
                .into(),
        );
    }
    if cluster.link_listen().is_none() {
        return Err(
            "[cluster] a node needs `listen` (an IP address and port for the node link) or an \
             `advertise` address that is one"
                .into(),
        );
    }
    if cluster.lease_secs < 2 || cluster.store_lost_secs == 0 {
        return Err(
            "[cluster] lease_secs must be at least 2 and store_lost_secs at least 1".into(),
        );
    }
    Ok(())
}

/// `[api]`: limits of at least 1, the listener's limits and TLS files.
fn check_api(api: &ApiConfig) -> Result<(), String> {
    if api.max_body_bytes == 0
        || api.request_timeout_secs == 0
        || api.max_concurrent_requests == 0
        || api.default_page_size == 0
        || api.max_page_size < api.default_page_size
    {
        return Err(
            "[api] max_body_bytes, request_timeout_secs, max_concurrent_requests and \
             default_page_size must be at least 1, and max_page_size at least default_page_size"
                .into(),
        );
    }
    http::check_listener(api)
}

/// `[[api_user]]`: each with one key (a key file is read here, relative to
/// `base`) and at least one compartment.
fn load_api_users(
    mut api_users: Vec<ApiUserConfig>,
    base: &Path,
) -> Result<Vec<ApiUserConfig>, String> {
    for user in &mut api_users {
        let who = format!("[[api_user]] {}", user.user);
        if user.tenancy.is_empty() || user.user.is_empty() {
            return Err("[[api_user]] tenancy and user must not be empty".into());
        }
        match (&user.public_key, &user.public_key_file) {
            (Some(_), None) => {}
            (None, Some(file)) => {
                let path = if file.is_absolute() {
                    file.clone()
                } else {
                    base.join(file)
                };
                let pem = std::fs::read_to_string(&path).map_err(|e| {
                    format!("{who}: cannot read public_key_file {}: {e}", path.display())
                })?;
                user.public_key = Some(pem);
            }
            _ => {
                return Err(format!(
                    "{who}: give exactly one of public_key_file or public_key"
                ));
            }
        }
        if user.compartments.is_empty() {
            return Err(format!(
                "{who}: compartments is empty; list the compartments this user may use, or \"*\""
            ));
        }
    }
    Ok(api_users)
}

/// `[nova]` and `[[nova_token]]`: token hashes that can match, a token
/// lifetime, the web consoles' directories relative to `base`.
fn load_nova(
    mut nova: NovaConfig,
    tokens: &[NovaTokenConfig],
    base: &Path,
) -> Result<NovaConfig, String> {
    for token in tokens {
        if token.token_sha256.len() != 64
            || !token.token_sha256.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(format!(
                "[[nova_token]] of project `{}`: token_sha256 must be 64 hex digits \
                 (printf %s TOKEN | sha256sum)",
                token.project
            ));
        }
    }
    if nova.token_ttl_secs == 0 {
        return Err("[nova] token_ttl_secs must be at least 1".into());
    }
    for dir in [&mut nova.novnc_dir, &mut nova.xterm_dir] {
        if dir.is_relative() {
            *dir = base.join(&*dir);
        }
    }
    Ok(nova)
}

/// Fills each instance's session timeouts from `[session]` and checks the
/// warning comes before them; resolves its paths against `base`.
fn finish_instances(
    mut instances: Vec<InstanceConfig>,
    defaults: &SessionConfig,
    base: &Path,
) -> Result<Vec<InstanceConfig>, String> {
    for instance in &mut instances {
        instance
            .idle_timeout_secs
            .get_or_insert(defaults.idle_timeout_secs);
        instance
            .max_session_secs
            .get_or_insert(defaults.max_session_secs);
        instance
            .timeout_warning_secs
            .get_or_insert(defaults.timeout_warning_secs);
        let t = instance.session_timeouts();
        for (name, limit) in [
            ("idle_timeout_secs", t.idle),
            ("max_session_secs", t.max_session),
        ] {
            if let Some(limit) = limit
                && t.warning >= limit
            {
                return Err(format!(
                    "[[instance]] `{}`: timeout_warning_secs ({}) must be shorter than {name} ({})",
                    instance.id,
                    t.warning.as_secs(),
                    limit.as_secs()
                ));
            }
        }
        for path in [&mut instance.log_file, &mut instance.record_dir]
            .into_iter()
            .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }
    Ok(instances)
}

fn default_audit_retention_days() -> u64 {
    90
}

fn default_audit_refused_burst() -> u32 {
    10
}

fn default_audit_refused_per_hour() -> u32 {
    10
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Config::from_toml(&text, path, base)?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// The data directory a config file names, read leniently (the rest
    /// of the file may be invalid): what `consolegate reload` needs to find
    /// the running gateway, whose own check of the file is the one that counts.
    pub fn data_dir_of(path: &Path) -> PathBuf {
        let base = path.parent().unwrap_or(Path::new("."));
        let named = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.parse::<toml::Table>().ok())
            .and_then(|t| t.get("data_dir")?.as_str().map(PathBuf::from))
            .unwrap_or_else(default_data_dir);
        if named.is_absolute() {
            named
        } else {
            base.join(named)
        }
    }

    /// Parses and validates config text; `origin` names it in errors and
    /// relative paths are resolved against `base`.
    pub fn from_toml(text: &str, origin: &Path, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.to_owned(),
            message,
        };
        check_instances(&raw.instance).map_err(invalid)?;
        check_ssh(&raw.ssh).map_err(invalid)?;
        check_api(&raw.api).map_err(invalid)?;
        check_store(&raw.store).map_err(invalid)?;
        check_cluster(&raw.cluster, &raw.store).map_err(invalid)?;
        let api_users = load_api_users(raw.api_user, base).map_err(invalid)?;
        let mut api = raw.api;
        http::resolve_tls_paths(&mut api, base);
        let nova = load_nova(raw.nova, &raw.nova_token, base).map_err(invalid)?;
        let instances = finish_instances(raw.instance, &raw.session, base).map_err(invalid)?;
        let data_dir = if raw.data_dir.is_absolute() {
            raw.data_dir
        } else {
            base.join(raw.data_dir)
        };
        Ok(Config {
            source: None,
            data_dir,
            ssh: raw.ssh,
            log: raw.log,
            api,
            metrics: raw.metrics,
            store: raw.store,
            cluster: raw.cluster,
            api_users,
            audit_retention_days: raw.audit_retention_days,
            audit_refused_burst: raw.audit_refused_burst,
            audit_refused_per_hour: raw.audit_refused_per_hour,
            session: raw.session,
            nova,
            nova_tokens: raw.nova_token,
            instances,
        })
    }

    /// The instance with this id.
    pub fn instance(&self, id: &str) -> Option<&InstanceConfig> {
        self.instances.iter().find(|i| i.id == id)
    }

    /// The SQLite database file.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("consolegate.db")
    }
}

/// Instance ids end up in shell command lines and `known_hosts`, so they are
/// restricted to characters that need no quoting anywhere.
pub fn validate_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 255 {
        return Err("must be 1 to 255 characters".into());
    }
    if id.starts_with(['-', '.']) {
        return Err(format!("`{id}` must not start with `-` or `.`"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "`{id}` contains {c:?}; allowed are letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"), Path::new("/etc/cg"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.ssh.listen.to_string(), "127.0.0.1:2222");
        assert_eq!(c.ssh.advertised_port(), 2222);
        assert_eq!(c.data_dir, PathBuf::from("/etc/cg/data"));
        assert!(c.instances.is_empty());
    }

    #[test]
    fn the_store_is_sqlite_unless_a_postgres_url_is_given() {
        assert_eq!(parse("").unwrap().store.url, None);
        let url = "postgres://cg:secret@db.example:5432/consolegate";
        let c = parse(&format!("[store]\nurl = \"{url}\"\n")).unwrap();
        assert_eq!(c.store.url.as_deref(), Some(url));
        // The password never reaches a debug print of the config.
        assert!(!format!("{c:?}").contains("secret"));
        let e = parse("[store]\nurl = \"mysql://db/cg\"\n").unwrap_err();
        assert!(e.to_string().contains("must be a PostgreSQL URL"), "{e}");
        let e = parse("[store]\npath = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("path"), "{e}");
    }

    #[test]
    fn a_node_of_a_fleet_needs_a_name_and_a_shared_store() {
        let pg = "[store]\nurl = \"postgres://db/cg\"\n";
        let c = parse(&format!(
            "{pg}[cluster]\nnode_id = \"gw1\"\nadvertise = \"10.0.0.5:7022\"\n"
        ))
        .unwrap();
        assert_eq!(c.cluster.node_id.as_deref(), Some("gw1"));
        assert_eq!(c.cluster.node_timeout_secs, 10);
        assert_eq!(c.cluster.lease_secs, 10);
        assert_eq!(c.cluster.store_lost, StoreLost::EndSessions);
        assert_eq!(
            c.cluster.link_listen(),
            Some("10.0.0.5:7022".parse().unwrap())
        );
        // A name to dial needs an address to listen on, and leases a length.
        let e = parse(&format!(
            "{pg}[cluster]\nnode_id = \"gw1\"\nadvertise = \"gw1.example:7022\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("`listen`"), "{e}");
        let c = parse(&format!(
            "{pg}[cluster]\nnode_id = \"gw1\"\nadvertise = \"gw1.example:7022\"\n\
             listen = \"0.0.0.0:7022\"\nstore_lost = \"keep\"\n"
        ))
        .unwrap();
        assert_eq!(c.cluster.store_lost, StoreLost::Keep);
        assert_eq!(
            c.cluster.link_advertise().as_deref(),
            Some("gw1.example:7022")
        );
        let e = parse(&format!(
            "{pg}[cluster]\nnode_id = \"gw1\"\nlisten = \"0.0.0.0:7022\"\nlease_secs = 1\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("lease_secs"), "{e}");
        let e = parse(&format!(
            "{pg}[cluster]\nnode_id = \"gw1\"\nlisten = \"0.0.0.0:7022\"\nstore_lost = \"shrug\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("store_lost"), "{e}");
        let e = parse("[cluster]\nnode_id = \"gw1\"\n").unwrap_err();
        assert!(e.to_string().contains("share one PostgreSQL"), "{e}");
        let e = parse(&format!(
            "{pg}[cluster]\nnode_id = \"gw 1\"\nlisten = \"0.0.0.0:7022\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("node_id"), "{e}");
        let e = parse(&format!(
            "{pg}[cluster]\nnode_id = \"gw1\"\nadvertise = \"gw1\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("host:port"), "{e}");
        let e = parse(&format!(
            "{pg}[cluster]\nnode_id = \"gw1\"\nlisten = \"0.0.0.0:7022\"\nheartbeat_secs = 10\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("node_timeout_secs"), "{e}");
    }

    #[test]
    fn every_serial_form_parses_and_round_trips() {
        for s in [
            "simulator",
            "unix:/run/vm.sock",
            "tcp:127.0.0.1:4555",
            "tcp:[::1]:4555",
            "telnet:console.example:7001",
            "/dev/ttyS0@115200",
            "pty:/dev/pts/7",
        ] {
            let t: SerialTarget = s.parse().unwrap();
            assert_eq!(t.to_string(), s);
        }
    }

    #[test]
    fn bad_serial_values_say_what_is_allowed() {
        let e = "ftp:host:1".parse::<SerialTarget>().unwrap_err();
        assert!(e.contains("telnet:host:port"), "{e}");
        let e = "/dev/ttyS0".parse::<SerialTarget>().unwrap_err();
        assert!(e.contains("baud"), "{e}");
        let e = "/dev/ttyS0@fast".parse::<SerialTarget>().unwrap_err();
        assert!(e.contains("fast"), "{e}");
        let e = "tcp:host:70000".parse::<SerialTarget>().unwrap_err();
        assert!(e.contains("70000"), "{e}");
        let e = "tcp:host".parse::<SerialTarget>().unwrap_err();
        assert!(e.contains("port"), "{e}");
        assert!("unix:".parse::<SerialTarget>().is_err());
        assert!("vnc:x".parse::<VncTarget>().is_err());
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = parse("[ssh]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap_err();
        let m = e.to_string();
        assert!(m.contains("listen_port"), "{m}");
        assert!(m.contains("line 3"), "{m}");
        let e =
            parse("[[instance]]\nid = \"a\"\nserial = \"simulator\"\ncolour = 1\n").unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }

    #[test]
    fn bad_instance_ids_and_duplicates_are_refused() {
        let e = parse("[[instance]]\nid = \"a b\"\nserial = \"simulator\"\n").unwrap_err();
        assert!(e.to_string().contains("allowed are"), "{e}");
        let e = parse(
            "[[instance]]\nid = \"a\"\nserial = \"simulator\"\n[[instance]]\nid = \"a\"\nserial = \"simulator\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let e = parse("[[instance]]\nid = \"-o\"\nserial = \"simulator\"\n").unwrap_err();
        assert!(e.to_string().contains("must not start"), "{e}");
    }

    #[test]
    fn session_timeouts_default_from_the_session_table() {
        let c = parse(
            "[session]\nidle_timeout_secs = 600\ntimeout_warning_secs = 30\n\
             [[instance]]\nid = \"a\"\nserial = \"simulator\"\n\
             [[instance]]\nid = \"b\"\nserial = \"simulator\"\nidle_timeout_secs = 0\nmax_session_secs = 3600\n",
        )
        .unwrap();
        let a = c.instance("a").unwrap().session_timeouts();
        assert_eq!(a.idle, Some(Duration::from_secs(600)));
        assert_eq!(a.max_session, None);
        assert_eq!(a.warning, Duration::from_secs(30));
        let b = c.instance("b").unwrap().session_timeouts();
        assert_eq!(b.idle, None);
        assert_eq!(b.max_session, Some(Duration::from_secs(3600)));
        let none = parse("[[instance]]\nid = \"a\"\nserial = \"simulator\"\n").unwrap();
        let t = none.instance("a").unwrap().session_timeouts();
        assert_eq!((t.idle, t.max_session), (None, None));
    }

    #[test]
    fn a_warning_longer_than_its_timeout_is_refused() {
        let e = parse("[[instance]]\nid = \"a\"\nserial = \"simulator\"\nidle_timeout_secs = 30\n")
            .unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("timeout_warning_secs (60)") && m.contains("idle_timeout_secs (30)"),
            "{m}"
        );
        let e = parse("[session]\nmax_session_secs = 10\ntimeout_warning_secs = 10\n[[instance]]\nid = \"a\"\nserial = \"simulator\"\n").unwrap_err();
        assert!(e.to_string().contains("max_session_secs (10)"), "{e}");
        let e = parse("[session]\nidle_timeout = 10\n").unwrap_err();
        assert!(e.to_string().contains("idle_timeout"), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        let e = parse("[log]\nformat = \"xml\"\n").unwrap_err();
        assert!(e.to_string().contains("xml"), "{e}");
        let e = parse("[ssh]\npublic_host = \"a b\"\n").unwrap_err();
        assert!(e.to_string().contains("public_host"), "{e}");
        let e = parse("[ssh]\nlisten = \"nowhere\"\n").unwrap_err();
        assert!(e.to_string().contains("listen"), "{e}");
    }
}
