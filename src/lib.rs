//! consolegate: an SSH serial-console gateway for virtual machines.
//!
//! An operator registers an SSH public key for a *console connection* to an
//! instance; with the returned OpenSSH command line they reach the instance's
//! serial console (or tunnel to its VNC display) through this gateway.
//!
//! # Layout
//!
//! - [`config`]: `gateway.toml`, parsed strictly.
//! - [`keys`]: client key validation and fingerprints; host keys.
//! - [`ids`]: unguessable identifiers.
//! - [`connection`]: the connection record and the resource users see.
//! - [`connections`]: the console-connection operations and their rules.
//! - [`store`]: persistent state (SQLite), the one place SQL runs.
//! - [`audit`]: the audit trail of console use.
//! - [`console`]: console hubs, serial backends, escapes, the demo simulator.
//! - [`ssh`]: the SSH data plane (outer hop, nested inner hop, VNC tunnels).
//! - [`api`]: the HTTP control plane (OCI-compatible).
//! - [`ops`]: operating the gateway: metrics, health, the admin socket,
//!   `status`, `doctor` and reload.
//! - [`gateway`]: wiring it all together for `consolegate serve`.
//! - [`cli`]: the `connection` and `check` subcommands.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod audit;
pub mod cli;
pub mod config;
pub mod connection;
pub mod connections;
pub mod console;
pub mod gateway;
pub mod ids;
pub mod keys;
pub mod ops;
pub mod ssh;
pub mod store;
