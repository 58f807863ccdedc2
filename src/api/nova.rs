//! The Nova-compatible console API (OpenStack compute), under `/v2.1` and
//! `/v2/{project_id}`: remote consoles (microversion 2.6+), the legacy
//! `os-getVNCConsole` / `os-getSerialConsole` actions, console-token lookup
//! (admin only), the `os-consoles` resource, and the version documents
//! openstacksdk's discovery reads.
//!
//! Callers present an `X-Auth-Token` configured in `[[nova_token]]` (kept
//! as a SHA-256 only); a member token sees its project's instances (the
//! project is the instance's compartment), an admin token all of them. A
//! console URL carries a fresh console token (160 random bits, stored
//! hashed, bound to one instance and one protocol, `[nova] token_ttl_secs`
//! long) for the gateway's own web consoles (`/serial`, `/websockify`).
//! Errors use Nova's body, `{"itemNotFound": {"message", "code"}}`.
//!
//! Once the token is accepted, the body is read up to `[api]
//! max_body_bytes` (refused with Nova's `413 overLimit` as soon as it
//! passes it, chunked or not) and one of the `max_concurrent_requests`
//! slots is taken (`429 overLimit` when none is free).

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::ApiState;
use crate::config::{InstanceConfig, NovaRole, SerialTarget, VncTarget};
use crate::connections::tokens::ConsoleProtocol;

/// Lowest microversion served.
pub const MIN_VERSION: (u32, u32) = (2, 1);
/// Highest microversion served: remote consoles (2.6) and token lookup for
/// every console type (2.31) are in; nothing later is implemented.
pub const MAX_VERSION: (u32, u32) = (2, 31);

/// A Nova error answer.
#[derive(Debug)]
pub struct NovaError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl NovaError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        NovaError {
            status,
            kind,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "badRequest", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "itemNotFound", message)
    }

    fn no_server(server: &str) -> Self {
        let shown: String = server.chars().take(64).collect();
        Self::not_found(format!("Instance {shown} could not be found."))
    }
}

impl IntoResponse for NovaError {
    fn into_response(self) -> Response {
        // Nova's messages are the contract (clients match on them): the
        // runbook code travels in a header only.
        let body = json!({ self.kind: { "message": self.message, "code": self.status.as_u16() } });
        let code = super::error::runbook_code(self.status);
        (self.status, [(super::error::CODE_HEADER, code)], Json(body)).into_response()
    }
}

/// An authenticated Nova caller.
#[derive(Debug, Clone)]
pub struct NovaCaller {
    project: String,
    role: NovaRole,
}

impl NovaCaller {
    fn may_use(&self, instance: &InstanceConfig) -> bool {
        self.role == NovaRole::Admin || instance.compartment == self.project
    }
}

/// Checks `X-Auth-Token`, then reads the body (bounded) and takes a slot.
pub async fn authenticate(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(token) = request
        .headers()
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty() && t.len() <= 1024)
    else {
        return NovaError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "The request you have made requires authentication (X-Auth-Token).",
        )
        .into_response();
    };
    let hash = crate::connections::tokens::token_hash(token);
    let config = state.connections().config();
    let found = config
        .nova_tokens
        .iter()
        .find(|t| t.token_sha256.eq_ignore_ascii_case(&hash));
    let Some(found) = found else {
        return NovaError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "The X-Auth-Token is not valid.",
        )
        .into_response();
    };
    request.extensions_mut().insert(NovaCaller {
        project: found.project.clone(),
        role: found.role,
    });
    let limit = state.config().max_body_bytes;
    let too_large = || {
        NovaError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "overLimit",
            format!("Request is too large: the body may have at most {limit} bytes."),
        )
        .into_response()
    };
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return too_large();
    };
    let Some(_slot) = state.slot() else {
        return NovaError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "overLimit",
            "Too many requests are in progress; retry with backoff.",
        )
        .into_response();
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// The authenticated routes, to nest under `/v2.1` and `/v2/{project_id}`.
pub fn routes(state: ApiState) -> axum::Router<ApiState> {
    axum::Router::new()
        .route("/servers/{server_id}/remote-consoles", post(remote_console))
        .route("/servers/{server_id}/action", post(server_action))
        .route("/os-console-auth-tokens/{console_token}", get(token_lookup))
        .route(
            "/servers/{server_id}/consoles",
            get(list_consoles).post(create_console),
        )
        .route(
            "/servers/{server_id}/consoles/{console_id}",
            get(show_console).delete(delete_console),
        )
        .route_layer(axum::middleware::from_fn_with_state(state, authenticate))
}

fn version_doc(state: &ApiState) -> Value {
    let base = state.public_url();
    json!({
        "id": "v2.1",
        "status": "CURRENT",
        "version": format!("{}.{}", MAX_VERSION.0, MAX_VERSION.1),
        "min_version": format!("{}.{}", MIN_VERSION.0, MIN_VERSION.1),
        "updated": "2013-07-23T11:33:21Z",
        "links": [{"rel": "self", "href": format!("{base}/v2.1/")}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.compute+json;version=2.1"}],
    })
}

/// `GET /v2.1`: the version document (unauthenticated, for discovery).
pub async fn version(State(state): State<ApiState>) -> Json<Value> {
    Json(json!({ "version": version_doc(&state) }))
}

/// `GET /`: the versions list.
pub async fn versions(State(state): State<ApiState>) -> Json<Value> {
    Json(json!({ "versions": [version_doc(&state)] }))
}

/// The requested microversion: `OpenStack-API-Version: compute 2.x`,
/// `X-OpenStack-Nova-API-Version: 2.x`, `latest`, or 2.1 when absent.
pub(crate) fn microversion(headers: &HeaderMap) -> Result<(u32, u32), NovaError> {
    let from_new = headers
        .get_all("openstack-api-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|item| {
            let mut parts = item.split_whitespace();
            (parts.next()? == "compute").then(|| parts.next().unwrap_or("").to_owned())
        });
    let wanted = from_new.or_else(|| {
        headers
            .get("x-openstack-nova-api-version")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
    });
    let Some(wanted) = wanted else {
        return Ok(MIN_VERSION);
    };
    if wanted == "latest" {
        return Ok(MAX_VERSION);
    }
    let bad = || {
        NovaError::bad_request(format!(
            "API Version String {} is of invalid format. Must be of format MajorNum.MinorNum.",
            wanted.chars().take(20).collect::<String>()
        ))
    };
    let (major, minor) = wanted.split_once('.').ok_or_else(bad)?;
    let version = (
        major.parse().map_err(|_| bad())?,
        minor.parse().map_err(|_| bad())?,
    );
    if version < MIN_VERSION || version > MAX_VERSION {
        return Err(NovaError::new(
            StatusCode::NOT_ACCEPTABLE,
            "notAcceptable",
            format!(
                "Version {}.{} is not supported by the API. Minimum is {}.{} and maximum is {}.{}.",
                version.0, version.1, MIN_VERSION.0, MIN_VERSION.1, MAX_VERSION.0, MAX_VERSION.1
            ),
        ));
    }
    Ok(version)
}

/// A JSON answer with the microversion headers, or Nova's error body.
fn versioned(result: Result<((u32, u32), Value), NovaError>) -> Response {
    match result {
        Ok((version, body)) => with_version(Json(body).into_response(), version),
        Err(e) => e.into_response(),
    }
}

fn with_version(mut response: Response, version: (u32, u32)) -> Response {
    let v = format!("{}.{}", version.0, version.1);
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&format!("compute {v}")) {
        headers.insert("openstack-api-version", value);
    }
    if let Ok(value) = HeaderValue::from_str(&v) {
        headers.insert("x-openstack-nova-api-version", value);
    }
    headers.insert(
        "vary",
        HeaderValue::from_static("OpenStack-API-Version, X-OpenStack-Nova-API-Version"),
    );
    response
}

/// The instance `server_id` names, if the caller may see it; also checks
/// the `{project_id}` of `/v2/{project_id}` URLs.
fn visible_instance(
    state: &ApiState,
    caller: &NovaCaller,
    params: &HashMap<String, String>,
) -> Result<InstanceConfig, NovaError> {
    if let Some(project) = params.get("project_id")
        && caller.role != NovaRole::Admin
        && *project != caller.project
    {
        return Err(NovaError::bad_request(
            "Malformed request URL: URL's project_id does not match the token's project.",
        ));
    }
    let server = params.get("server_id").map(String::as_str).unwrap_or("");
    state
        .connections()
        .config()
        .instance(server)
        .filter(|i| caller.may_use(i))
        .cloned()
        .ok_or_else(|| NovaError::no_server(server))
}

/// Issues a console token and returns the URL that carries it.
async fn console_url(
    state: &ApiState,
    instance: &InstanceConfig,
    protocol: ConsoleProtocol,
) -> Result<String, NovaError> {
    let token = issue_token(state, instance, protocol).await?;
    Ok(url_for(state, protocol, &token))
}

/// The console URL for `token`.
fn url_for(state: &ApiState, protocol: ConsoleProtocol, token: &str) -> String {
    let base = state.public_url();
    let ws = base.replacen("http", "ws", 1);
    match protocol {
        ConsoleProtocol::Serial => format!("{ws}/serial?token={token}"),
        ConsoleProtocol::Vnc => {
            format!("{base}/novnc/vnc_lite.html?path=websockify%3Ftoken%3D{token}")
        }
    }
}

/// Issues a new console token for `instance` and `protocol`.
async fn issue_token(
    state: &ApiState,
    instance: &InstanceConfig,
    protocol: ConsoleProtocol,
) -> Result<String, NovaError> {
    let token = state
        .tokens()
        .issue(&instance.id, protocol)
        .await
        .map_err(|e| {
            tracing::error!(code = "CG-STORE-002", error = %e, "cannot store a console token");
            NovaError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "computeFault",
                "internal error",
            )
        })?;
    state.metrics().token_issued();
    Ok(token)
}

/// Pairs Nova knows; the ones consolegate serves are vnc/novnc and serial/serial.
fn check_pair(protocol: &str, kind: &str) -> Result<ConsoleProtocol, NovaError> {
    match (protocol, kind) {
        ("vnc", "novnc") => Ok(ConsoleProtocol::Vnc),
        ("serial", "serial") => Ok(ConsoleProtocol::Serial),
        ("spice", "spice-html5") | ("rdp", "rdp-html5") | ("mks", "webmks") | ("vnc", "xvpvnc") => {
            Err(NovaError::new(
                StatusCode::NOT_IMPLEMENTED,
                "notImplemented",
                format!("Unable to get {protocol} console, functionality not implemented"),
            ))
        }
        _ if !["vnc", "spice", "rdp", "serial", "mks"].contains(&protocol) => {
            Err(NovaError::bad_request(format!(
                "Invalid input for field/attribute protocol: '{protocol}'"
            )))
        }
        _ => Err(NovaError::bad_request(format!(
            "Invalid parameter combination: protocol {protocol} with type {kind}"
        ))),
    }
}

async fn open_console(
    state: &ApiState,
    instance: &InstanceConfig,
    protocol: ConsoleProtocol,
) -> Result<String, NovaError> {
    match protocol {
        ConsoleProtocol::Vnc if instance.vnc.is_none() => {
            return Err(NovaError::new(
                StatusCode::NOT_IMPLEMENTED,
                "notImplemented",
                format!("Instance {} has no VNC console.", instance.id),
            ));
        }
        ConsoleProtocol::Serial => {
            if let Some(hub) = state.hubs().get(&instance.id)
                && let Ok(status) = hub.status().await
                && !status.connected
            {
                let reason = status.state;
                return Err(NovaError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!(
                        "The console of instance {} is not available: {reason}",
                        instance.id
                    ),
                ));
            }
        }
        _ => {}
    }
    console_url(state, instance, protocol).await
}

/// `POST /servers/{id}/remote-consoles` (2.6+).
pub async fn remote_console(
    State(state): State<ApiState>,
    Extension(caller): Extension<NovaCaller>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let version = microversion(&headers)?;
        if version < (2, 6) {
            return Err(NovaError::not_found("The resource could not be found."));
        }
        let (protocol, kind, asked) = remote_console_request(&body)?;
        let instance = visible_instance(&state, &caller, &params)?;
        let url = open_console(&state, &instance, asked).await?;
        Ok((
            version,
            json!({"remote_console": {"protocol": protocol, "type": kind, "url": url}}),
        ))
    }
    .await;
    versioned(result)
}

/// What a `remote-consoles` body asks for: its `protocol` and `type` as
/// sent (the answer echoes them), and the console they name.
pub(crate) fn remote_console_request(
    body: &[u8],
) -> Result<(String, String, ConsoleProtocol), NovaError> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| NovaError::bad_request(format!("Malformed request body: {e}")))?;
    let console = body
        .get("remote_console")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            NovaError::bad_request("Invalid input for field/attribute remote_console: required")
        })?;
    let field = |name| {
        console
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (protocol, kind) = (field("protocol"), field("type"));
    let asked = check_pair(&protocol, &kind)?;
    Ok((protocol, kind, asked))
}

/// What a server action body asks for: the console `type` as sent, and the
/// console it names.
pub(crate) fn console_action(body: &[u8]) -> Result<(String, ConsoleProtocol), NovaError> {
    // Like Nova: a body that is not a JSON object names no action.
    let action = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .and_then(|o| o.into_iter().next());
    let Some((name, args)) = action else {
        return Err(NovaError::bad_request("There is no such action: None"));
    };
    let kind = args
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let protocol = match (name.as_str(), kind.as_str()) {
        ("os-getVNCConsole", "novnc") => ConsoleProtocol::Vnc,
        ("os-getVNCConsole", "xvpvnc") => {
            return Err(NovaError::bad_request("Unavailable console type xvpvnc."));
        }
        ("os-getSerialConsole", "serial") => ConsoleProtocol::Serial,
        ("os-getVNCConsole" | "os-getSerialConsole", _) => {
            return Err(NovaError::bad_request(format!(
                "Invalid console type {kind}"
            )));
        }
        (other, _) => {
            let shown: String = other.chars().take(64).collect();
            return Err(NovaError::bad_request(format!(
                "There is no such action: {shown}"
            )));
        }
    };
    Ok((kind, protocol))
}

/// `POST /servers/{id}/action` with `os-getVNCConsole` or `os-getSerialConsole`.
pub async fn server_action(
    State(state): State<ApiState>,
    Extension(caller): Extension<NovaCaller>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let version = microversion(&headers)?;
        let (kind, protocol) = console_action(&body)?;
        let instance = visible_instance(&state, &caller, &params)?;
        let url = open_console(&state, &instance, protocol).await?;
        Ok((version, json!({"console": {"type": kind, "url": url}})))
    }
    .await;
    versioned(result)
}

/// `GET /os-console-auth-tokens/{token}` (admin only).
pub async fn token_lookup(
    State(state): State<ApiState>,
    Extension(caller): Extension<NovaCaller>,
    Path(params): Path<HashMap<String, String>>,
) -> Response {
    if caller.role != NovaRole::Admin {
        return NovaError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Policy doesn't allow os_compute_api:os-console-auth-tokens to be performed.",
        )
        .into_response();
    }
    let token = params
        .get("console_token")
        .map(String::as_str)
        .unwrap_or("");
    let found = state.tokens().peek(token).await.ok().flatten();
    let instance = found.as_ref().and_then(|t| {
        state
            .connections()
            .config()
            .instance(&t.instance_id)
            .cloned()
            .map(|i| (t, i))
    });
    let Some((token, instance)) = instance else {
        return NovaError::not_found("The console token is invalid or has expired.")
            .into_response();
    };
    let (host, port, path) = match token.protocol {
        ConsoleProtocol::Vnc => match &instance.vnc {
            Some(VncTarget::Tcp(h, p)) => (Some(h.clone()), Some(*p), None),
            Some(VncTarget::Unix(p)) => (None, None, Some(p.display().to_string())),
            None => (None, None, None),
        },
        ConsoleProtocol::Serial => match &instance.serial {
            SerialTarget::Tcp(h, p) | SerialTarget::Telnet(h, p) => {
                (Some(h.clone()), Some(*p), None)
            }
            SerialTarget::Unix(p) | SerialTarget::Pty(p) | SerialTarget::Device(p, _) => {
                (None, None, Some(p.display().to_string()))
            }
            SerialTarget::Simulator => (None, None, Some("simulator".into())),
        },
    };
    Json(json!({"console": {
        "instance_uuid": instance.id,
        "host": host,
        "port": port,
        "internal_access_path": path,
    }}))
    .into_response()
}

fn consoles_of(instance: &InstanceConfig) -> Vec<(u32, &'static str)> {
    let mut list = vec![(1, "serial")];
    if instance.vnc.is_some() {
        list.push((2, "novnc"));
    }
    list
}

/// `GET /servers/{id}/consoles`: the console kinds the instance offers.
pub async fn list_consoles(
    State(state): State<ApiState>,
    Extension(caller): Extension<NovaCaller>,
    Path(params): Path<HashMap<String, String>>,
) -> Response {
    match visible_instance(&state, &caller, &params) {
        Ok(instance) => {
            let consoles: Vec<Value> = consoles_of(&instance)
                .into_iter()
                .map(|(id, kind)| json!({"console": {"console_type": kind, "id": id}}))
                .collect();
            Json(json!({ "consoles": consoles })).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /servers/{id}/consoles`: consoles exist with the instance; nothing to create.
pub async fn create_console(
    State(state): State<ApiState>,
    Extension(caller): Extension<NovaCaller>,
    Path(params): Path<HashMap<String, String>>,
) -> Response {
    match visible_instance(&state, &caller, &params) {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

fn console_by_id(
    instance: &InstanceConfig,
    params: &HashMap<String, String>,
) -> Result<(u32, &'static str), NovaError> {
    let id = params.get("console_id").map(String::as_str).unwrap_or("");
    consoles_of(instance)
        .into_iter()
        .find(|(n, _)| n.to_string() == id)
        .ok_or_else(|| NovaError::not_found("Console could not be found."))
}

/// `GET /servers/{id}/consoles/{console_id}`: its details; the password is
/// a fresh console token for the WebSocket proxy.
pub async fn show_console(
    State(state): State<ApiState>,
    Extension(caller): Extension<NovaCaller>,
    Path(params): Path<HashMap<String, String>>,
) -> Response {
    let result: Result<Value, NovaError> = async {
        let instance = visible_instance(&state, &caller, &params)?;
        let (id, kind) = console_by_id(&instance, &params)?;
        let protocol = if kind == "novnc" {
            ConsoleProtocol::Vnc
        } else {
            ConsoleProtocol::Serial
        };
        let password = issue_token(&state, &instance, protocol).await?;
        let listen = state.connections().config().api.listen;
        Ok(json!({"console": {
            "console_type": kind,
            "host": listen.ip().to_string(),
            "id": id,
            "instance_name": instance.name(),
            "password": password,
            "port": listen.port(),
        }}))
    }
    .await;
    match result {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `DELETE /servers/{id}/consoles/{console_id}`: revokes its outstanding tokens.
pub async fn delete_console(
    State(state): State<ApiState>,
    Extension(caller): Extension<NovaCaller>,
    Path(params): Path<HashMap<String, String>>,
) -> Response {
    let result: Result<(), NovaError> = async {
        let instance = visible_instance(&state, &caller, &params)?;
        let (_, kind) = console_by_id(&instance, &params)?;
        let protocol = if kind == "novnc" {
            ConsoleProtocol::Vnc
        } else {
            ConsoleProtocol::Serial
        };
        let _ = state.tokens().revoke(&instance.id, protocol).await;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn microversions_parse_like_nova() {
        assert_eq!(microversion(&headers(&[])).unwrap(), (2, 1));
        assert_eq!(
            microversion(&headers(&[("x-openstack-nova-api-version", "2.6")])).unwrap(),
            (2, 6)
        );
        assert_eq!(
            microversion(&headers(&[("openstack-api-version", "compute 2.27")])).unwrap(),
            (2, 27)
        );
        assert_eq!(
            microversion(&headers(&[("openstack-api-version", "compute latest")])).unwrap(),
            MAX_VERSION
        );
        assert_eq!(
            microversion(&headers(&[("openstack-api-version", "compute 2.99")]))
                .unwrap_err()
                .status,
            StatusCode::NOT_ACCEPTABLE
        );
        assert_eq!(
            microversion(&headers(&[("x-openstack-nova-api-version", "two")]))
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn protocol_type_pairs() {
        assert_eq!(check_pair("vnc", "novnc").unwrap(), ConsoleProtocol::Vnc);
        assert_eq!(
            check_pair("serial", "serial").unwrap(),
            ConsoleProtocol::Serial
        );
        assert_eq!(
            check_pair("vnc", "serial").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            check_pair("spice", "spice-html5").unwrap_err().status,
            StatusCode::NOT_IMPLEMENTED
        );
        assert_eq!(
            check_pair("ftp", "novnc").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }
}
