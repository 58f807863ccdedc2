//! The HTTP control plane.
//!
//! - [`oci`]: the OCI-compatible `instanceConsoleConnections` endpoints;
//! - [`nova`]: the Nova-compatible console API (X-Auth-Token);
//! - [`auth`]: API users, request-signature verification, request ids;
//! - [`signature`]: OCI HTTP request signatures (verify and sign);
//! - [`error`]: OCI's error model;
//! - [`hosts`]: the names requests may be signed for;
//! - [`listener`]: the HTTP listener's accept loop, with `admission`
//!   (connection limits), `connection` (one connection's deadlines) and
//!   [`tls`] (HTTPS).
//!
//! [`app`] builds the router (tested with `oneshot`, no socket needed);
//! [`serve`] runs it on a bound listener until shutdown. A stranger is
//! bounded by the listener (connections in all and per source, header and
//! keep-alive timeouts) and by a request timeout (a tower layer); bodies
//! by `max_body_bytes` as they arrive, chunked ones included. The
//! `max_concurrent_requests` slots are taken only once a request has
//! authenticated (OCI signature or Nova token): past them, 429
//! TooManyRequests, so slow strangers never make anyone else wait.

mod admission;
pub mod auth;
mod connection;
pub mod error;
pub mod hosts;
pub mod listener;
pub mod nova;
pub mod oci;
pub mod signature;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::ApiConfig;
use crate::connections::{ConsoleConnections, ConsoleTokens};
use crate::console::hub::ConsoleHubs;
use crate::ops::metrics::Metrics;
use auth::ApiUsers;
use error::ApiError;
use hosts::ServedHosts;
pub use listener::{ListenerSettings, serve};

/// What the handlers share; cheap to clone.
#[derive(Clone, Debug)]
pub struct ApiState {
    shared: Arc<ApiShared>,
}

#[derive(Debug)]
struct ApiShared {
    connections: ConsoleConnections,
    tokens: ConsoleTokens,
    /// Replaced whole by a reload.
    users: std::sync::RwLock<Arc<ApiUsers>>,
    config: ApiConfig,
    hubs: ConsoleHubs,
    metrics: Arc<Metrics>,
    public_url: String,
    /// The names OCI requests may be signed for.
    hosts: ServedHosts,
    /// `max_concurrent_requests`: taken once a request has authenticated.
    slots: Arc<tokio::sync::Semaphore>,
}

impl ApiState {
    /// State for the API of `connections`' config; fails if an API user's
    /// key cannot be used.
    pub fn new(
        connections: ConsoleConnections,
        hubs: ConsoleHubs,
        metrics: Arc<Metrics>,
    ) -> Result<ApiState, String> {
        let users = ApiUsers::from_config(&connections.config().api_users)?;
        let config = connections.config().api.clone();
        let scheme = if config.tls() { "https" } else { "http" };
        let public_url = connections
            .config()
            .nova
            .public_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{}", config.listen))
            .trim_end_matches('/')
            .to_owned();
        let hosts = ServedHosts::from_config(&connections.config());
        let slots = Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_requests));
        Ok(ApiState {
            shared: Arc::new(ApiShared {
                tokens: connections.tokens(),
                connections,
                users: std::sync::RwLock::new(Arc::new(users)),
                config,
                hubs,
                metrics,
                public_url,
                hosts,
                slots,
            }),
        })
    }

    /// The names OCI requests may be signed for.
    pub fn hosts(&self) -> &ServedHosts {
        &self.shared.hosts
    }

    /// One of the `max_concurrent_requests` slots, for an authenticated
    /// request; `None` when every one is taken.
    pub fn slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.shared.slots.clone().try_acquire_owned().ok()
    }

    /// The console hubs (a console URL is refused while the console is down).
    pub fn hubs(&self) -> &ConsoleHubs {
        &self.shared.hubs
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The base URL console URLs start with.
    pub fn public_url(&self) -> &str {
        &self.shared.public_url
    }

    /// The console-connection operations.
    pub fn connections(&self) -> &ConsoleConnections {
        &self.shared.connections
    }

    /// The console tokens the Nova API issues.
    pub fn tokens(&self) -> &ConsoleTokens {
        &self.shared.tokens
    }

    /// The `[api]` settings.
    pub fn config(&self) -> &ApiConfig {
        &self.shared.config
    }

    fn users(&self) -> Arc<ApiUsers> {
        self.shared
            .users
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Puts reloaded `[[api_user]]` keys in force for the next request.
    pub fn set_users(&self, users: ApiUsers) {
        *self
            .shared
            .users
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(users);
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "consolegate control plane",
        description = "OCI-compatible console connections: create one with an SSH public key, \
                       then use its connectionString with a stock OpenSSH client. Every request \
                       is signed with an OCI API signing key (draft-cavage HTTP signatures, rsa-sha256)."
    ),
    tags((name = "InstanceConsoleConnection", description = "Console connections to instances"))
)]
struct ApiDoc;

fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(oci::create_connection, oci::list_connections))
        .routes(routes!(
            oci::get_connection,
            oci::update_connection,
            oci::delete_connection
        ))
}

/// The OpenAPI document of this API (also served at `/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().split_for_parts().1
}

/// The whole HTTP API.
pub fn app(state: ApiState) -> Router {
    app_with(state, Router::new())
}

/// The HTTP API with `more` routes served beside it (the web consoles),
/// under the same request timeout, request ids and metrics.
pub fn app_with(state: ApiState, more: Router) -> Router {
    let config = state.config().clone();
    let (api, doc) = routes().split_for_parts();
    let doc_json = doc.to_pretty_json().unwrap_or_default();
    let authenticated = api.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::authenticate,
    ));
    let nova = nova::routes(state.clone());
    let novnc_dir = state.connections().config().nova.novnc_dir.clone();
    let xterm_dir = state.connections().config().nova.xterm_dir.clone();
    Router::new()
        .merge(authenticated)
        .nest("/v2.1", nova.clone())
        .nest("/v2/{project_id}", nova)
        .route("/", axum::routing::get(nova::versions))
        .route("/v2.1", axum::routing::get(nova::version))
        .route("/v2.1/", axum::routing::get(nova::version))
        .nest_service("/novnc", static_dir(&novnc_dir, "novnc"))
        .nest_service(
            "/xterm",
            static_dir(&xterm_dir, "@xterm/xterm (npm install --prefix web)"),
        )
        .route(
            "/openapi.json",
            axum::routing::get(move || async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    doc_json,
                )
            }),
        )
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                "There is no operation at this path; see /openapi.json.",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "This path does not support that method; see /openapi.json.",
            )
        })
        .with_state(state.clone())
        .merge(more)
        .route_layer(axum::middleware::from_fn(note_route))
        .layer(
            ServiceBuilder::new()
                .layer(axum::middleware::from_fn_with_state(state, count_request))
                .layer(axum::middleware::from_fn(auth::request_id))
                .layer(HandleErrorLayer::new(timed_out))
                .timeout(Duration::from_secs(config.request_timeout_secs)),
        )
}

/// The route template a request matched, passed out to [`count_request`].
#[derive(Clone)]
struct RouteTemplate(String);

async fn note_route(
    path: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(request).await;
    if let Some(path) = path {
        response
            .extensions_mut()
            .insert(RouteTemplate(path.as_str().to_owned()));
    }
    response
}

/// Counts every answer (429s and timeouts too) by route template, method
/// and status; requests that matched no route count as `unmatched`, so a
/// scan of random paths adds no series.
async fn count_request(
    axum::extract::State(state): axum::extract::State<ApiState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let method = match method.as_str() {
        "GET" | "POST" | "PUT" | "DELETE" | "HEAD" | "OPTIONS" | "PATCH" => method.as_str(),
        _ => "other",
    }
    .to_owned();
    let response = next.run(request).await;
    let route = response
        .extensions()
        .get::<RouteTemplate>()
        .map_or("unmatched", |r| r.0.as_str());
    state.metrics().api_request(
        route,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Files of a web console's JavaScript project (a Debian or npm package);
/// if it is not installed, every path says which package to install.
fn static_dir(dir: &std::path::Path, package: &'static str) -> axum::routing::MethodRouter {
    if dir.is_dir() {
        axum::routing::get_service(tower_http::services::ServeDir::new(dir))
    } else {
        let message = format!(
            "CG-WEB-005 {} is missing on the gateway: install {package} (or point [nova] in gateway.toml at it)",
            dir.display()
        );
        axum::routing::get(move || async move {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(error::CODE_HEADER, "CG-WEB-005")],
                message,
            )
        })
    }
}

/// 429 TooManyRequests: every `max_concurrent_requests` slot is taken.
pub(crate) fn too_many_requests() -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequests",
        "Too many requests are in progress; retry with backoff.",
    )
}

async fn timed_out(error: tower::BoxError) -> Response {
    if error.is::<tower::timeout::error::Elapsed>() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "The request took too long; retry.",
        )
        .into_response()
    } else {
        ApiError::internal(&error).into_response()
    }
}
