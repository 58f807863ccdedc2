//! Operating the gateway: what an on-call engineer asks of it.
//!
//! - [`metrics`]: Prometheus metrics;
//! - this file: liveness and readiness, and the HTTP routes that serve them
//!   with the metrics (`/healthz`, `/readyz`, `/metrics`), on the API
//!   listener or on `[metrics] listen`;
//! - [`admin`]: the local admin socket (`consolegate status`, `doctor`);
//! - [`status`]: `consolegate status`, as a table or JSON;
//! - [`cluster`]: `consolegate cluster status`, the nodes sharing the store;
//! - [`doctor`]: `consolegate doctor`, the runbook's checks in order;
//! - [`systemd`]: readiness notification for `Type=notify` services.
//!
//! Every finding carries its code in `docs/runbook.md`. Nothing here serves
//! secrets: fingerprints, never keys; token counts, never tokens.

pub mod admin;
pub mod cluster;
pub mod doctor;
pub mod metrics;
pub mod status;
pub mod systemd;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::console::hub::{ConsoleHubs, HubStatus};
use crate::store::Store;
use metrics::Metrics;

/// What `/readyz` reports beyond the store: set by the gateway as it runs.
#[derive(Debug, Default)]
pub struct Health {
    ssh_listening: AtomicBool,
    api_listening: AtomicBool,
    last_reload: std::sync::Mutex<Option<ReloadOutcome>>,
}

/// What the last reload of the config file did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadOutcome {
    /// When it ran (RFC 3339).
    pub at: String,
    /// Whether the new file was put in force (false: the old config serves on).
    pub ok: bool,
    /// What happened, with its runbook code when it failed.
    pub message: String,
    /// Instances added.
    pub added: Vec<String>,
    /// Instances removed (their sessions were told and closed).
    pub removed: Vec<String>,
    /// Instances whose console settings changed (their sessions were told
    /// and closed, their hub restarted).
    pub changed: Vec<String>,
    /// Instances whose session settings changed (name, compartment,
    /// timeouts, recording): new sessions get them, attached ones go on.
    pub updated: Vec<String>,
    /// Changed settings that take effect only on restart.
    pub needs_restart: Vec<String>,
}

impl Health {
    /// Records a reload's outcome for `/readyz`.
    pub fn set_last_reload(&self, outcome: ReloadOutcome) {
        *self
            .last_reload
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(outcome);
    }

    /// The last reload's outcome, if there was one.
    pub fn last_reload(&self) -> Option<ReloadOutcome> {
        self.last_reload
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Records whether the SSH accept loop runs.
    pub fn set_ssh_listening(&self, up: bool) {
        self.ssh_listening.store(up, Ordering::Relaxed);
    }

    /// Records whether the HTTP API serves.
    pub fn set_api_listening(&self, up: bool) {
        self.api_listening.store(up, Ordering::Relaxed);
    }
}

/// What the operations routes need; cheap to clone.
#[derive(Debug, Clone)]
pub struct OpsState {
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The console hubs (backend state).
    pub hubs: ConsoleHubs,
    /// The store (readiness).
    pub store: Store,
    /// Listener state.
    pub health: Arc<Health>,
}

/// `/healthz`, `/readyz` and `/metrics`. Never behind API signatures, and
/// nothing they show is secret.
pub fn routes(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

async fn metrics_text(State(state): State<OpsState>) -> Response {
    let text = state.metrics.render(&state.hubs).await;
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

/// Ready when the store answers and the SSH listener accepts; the body also
/// summarises the backends (a console that is down does not make the gateway
/// unready: the others still work).
async fn readyz(State(state): State<OpsState>) -> Response {
    let store = tokio::time::timeout(std::time::Duration::from_secs(5), state.store.ping()).await;
    let store = match store {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("CG-STORE-002 {e}")),
        Err(_) => Err("CG-STORE-002 the store did not answer within 5 s".to_owned()),
    };
    let ssh = state.health.ssh_listening.load(Ordering::Relaxed);
    let api = state.health.api_listening.load(Ordering::Relaxed);
    let hubs = state.hubs.statuses().await;
    // A console another node of the fleet holds is not down here.
    let held: Vec<&HubStatus> = hubs.iter().filter(|h| h.held).collect();
    let down: Vec<&str> = held
        .iter()
        .filter(|h| !h.connected)
        .map(|h| h.instance.as_str())
        .collect();
    let ready = store.is_ok() && ssh;
    let body = json!({
        "ready": ready,
        "store": match &store { Ok(()) => "ok".to_owned(), Err(e) => e.clone() },
        "listeners": { "ssh": ssh, "api": api },
        "reload": state.health.last_reload(),
        "backends": {
            "total": hubs.len(),
            "connected": held.len() - down.len(),
            "down": down,
            "heldElsewhere": hubs.len() - held.len(),
        },
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}
