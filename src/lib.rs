//! consolegate: an SSH serial-console gateway for virtual machines.
//!
//! An operator registers an SSH public key for a *console connection* to an
//! instance; with the returned OpenSSH command line they reach the instance's
//! serial console (or tunnel to its VNC display) through this gateway.
//!
//! # Layout
//!
//! From the bottom up; a module imports only from those above it in this
//! list.
//!
//! - [`config`]: `gateway.toml`, parsed strictly.
//! - [`ids`]: unguessable identifiers. [`timefmt`]: times as printed.
//!   [`codes`]: runbook codes on the wire. [`files`]: owner-only files
//!   and directories, and the data directory's check at start.
//! - [`keys`]: client key validation and fingerprints; the gateway's host keys.
//! - [`audit`]: the audit trail's events.
//! - [`store`]: persistent state (SQLite, or PostgreSQL for a fleet), the
//!   one place SQL runs, and the
//!   records it keeps (console connections, console tokens, audit rows,
//!   instance host keys, the nodes of a fleet and their console leases).
//! - [`console`]: console hubs, serial backends, escapes, timeouts,
//!   recordings, the demo simulator.
//! - [`fleet`]: a fleet of nodes on one PostgreSQL store: the console
//!   leases this node keeps, and where each console is held.
//! - [`connections`]: the console-connection and console-token operations
//!   and their rules, the resource users see, the instances' host keys.
//! - [`ops`]: operating the gateway: metrics, health, the admin socket,
//!   `status`, `cluster status` and `doctor`.
//! - [`sessions`]: the data plane: [`Sessions`](sessions::Sessions), the one
//!   owner of every session; the attach core; the VNC copy; the SSH front
//!   end (outer hop, nested inner hop, VNC tunnels) and the web front end
//!   (the serial console and websockify behind Nova's console URLs).
//! - [`api`]: the HTTP control plane (OCI- and Nova-compatible).
//! - [`gateway`]: wiring it all together for `consolegate serve`: the
//!   shutdown order, reload.
//! - [`cli`]: the `connection` and `check` subcommands.
//!
//! `fuzzing` (hidden) holds the fuzz targets' entry points; see FUZZING.md.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod audit;
pub mod cli;
pub mod codes;
pub mod config;
pub mod connections;
pub mod console;
pub mod files;
pub mod fleet;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod ids;
pub mod keys;
pub mod ops;
pub mod sessions;
pub mod store;
pub mod timefmt;
