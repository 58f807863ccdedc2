//! Who is calling: API users from the config, OCI request-signature
//! verification as a middleware, and request ids.
//!
//! The authentication middleware reads the whole body (bounded by
//! `[api] max_body_bytes`, so an oversized body, chunked or not, is refused
//! as soon as it passes the limit), verifies the signature over it, checks
//! that the signed `host` is one of the gateway's own names
//! ([`ServedHosts`](super::hosts::ServedHosts), `CG-HTTP-004`), takes one
//! of the `max_concurrent_requests` slots, and hands the handler the body
//! and the [`Caller`]. What a client sent reaches the log only through
//! [`loggable`]: bounded, with control characters escaped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rsa::RsaPublicKey;

use super::ApiState;
use super::connection::LocalAddr;
use super::error::ApiError;
use super::signature;
use crate::config::ApiUserConfig;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The signature's keyId: `<tenancy>/<user>/<fingerprint>`.
    pub key_id: String,
    compartments: Arc<[String]>,
}

impl Caller {
    /// Whether the caller may use `compartment`.
    pub fn may_use(&self, compartment: &str) -> bool {
        self.compartments
            .iter()
            .any(|c| c == "*" || c == compartment)
    }
}

struct ApiUser {
    key: RsaPublicKey,
    compartments: Arc<[String]>,
}

/// The API users of the config, by keyId.
#[derive(Default)]
pub struct ApiUsers {
    by_key_id: HashMap<String, ApiUser>,
}

impl std::fmt::Debug for ApiUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiUsers")
            .field("key_ids", &self.by_key_id.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ApiUsers {
    /// Parses every `[[api_user]]`'s key; the error names the user.
    pub fn from_config(users: &[ApiUserConfig]) -> Result<ApiUsers, String> {
        let mut by_key_id = HashMap::new();
        for user in users {
            let pem = user.public_key.as_deref().unwrap_or_default();
            let key = signature::parse_public_key_pem(pem)
                .map_err(|e| format!("[[api_user]] {}: public key: {e}", user.user))?;
            let key_id = format!(
                "{}/{}/{}",
                user.tenancy,
                user.user,
                signature::fingerprint(&key)
            );
            let entry = ApiUser {
                key,
                compartments: user.compartments.clone().into(),
            };
            if by_key_id.insert(key_id.clone(), entry).is_some() {
                return Err(format!("[[api_user]] key {key_id} is configured twice"));
            }
        }
        Ok(ApiUsers { by_key_id })
    }

    /// The keyIds users sign with (for logs and `check`).
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.by_key_id.keys().map(String::as_str)
    }
}

/// Verifies the request signature; on success the handler gets the
/// [`Caller`] as an extension and the body, already read.
pub async fn authenticate(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let limit = state.config().max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return too_large(limit).into_response();
    }
    let (mut parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => return too_large(limit).into_response(),
    };
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let verified = signature::verify(
        &parts.method,
        &target,
        &parts.headers,
        &bytes,
        SystemTime::now(),
        Duration::from_secs(state.config().max_clock_skew_secs),
        |key_id| state.users().by_key_id.get(key_id).map(|u| u.key.clone()),
    );
    let caller = match verified {
        Ok(v) => {
            let compartments = state
                .users()
                .by_key_id
                .get(&v.key_id)
                .map(|u| u.compartments.clone())
                .unwrap_or_else(|| Arc::from(Vec::new()));
            Caller {
                key_id: v.key_id,
                compartments,
            }
        }
        Err(e) => {
            tracing::info!(method = %loggable(parts.method.as_str(), 20),
                path = %loggable_path(parts.uri.path()), reason = %e, "API request not authenticated");
            return ApiError::not_authenticated(format!(
                "The request signature was not accepted: {e}"
            ))
            .into_response();
        }
    };
    // Signed (verify requires it), so exactly one.
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let local = parts.extensions.get::<LocalAddr>().map(|l| l.0);
    if !state.hosts().allows(host, local) {
        let shown = loggable(host, 100);
        tracing::warn!(code = "CG-HTTP-004", key_id = %loggable(&caller.key_id, 200), host = %shown,
            "a signed API request names a host that is not one of this gateway's; refused");
        return ApiError::not_authenticated(format!(
            "The request was signed for host `{shown}`, which is not a name of this gateway \
             ({}); use the endpoint it is configured for ([api] hosts).",
            state.hosts().describe()
        ))
        .with_runbook_code("CG-HTTP-004")
        .into_response();
    }
    let Some(_slot) = state.slot() else {
        return super::too_many_requests().into_response();
    };
    parts.extensions.insert(caller);
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PayloadTooLarge",
        format!("The request body is larger than the {limit} bytes this API accepts."),
    )
}

/// The request id of a request: the client's `opc-request-id` if usable.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Gives every request an id and every response the `opc-request-id` header.
pub async fn request_id(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get("opc-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 98 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| crate::ids::random_hex(16).to_uppercase(), str::to_owned);
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("api", request_id = %id, method = %request.method(), path = %loggable_path(request.uri().path()));
    let mut response = tracing::Instrument::instrument(next.run(request), span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("opc-request-id", value);
    }
    response
}

/// Most characters of a request path written to the log.
const LOGGED_PATH_CHARS: usize = 200;

/// The request path as logged: console tokens in paths are secrets, and
/// the rest is [`loggable`].
fn loggable_path(path: &str) -> String {
    match path.find("/os-console-auth-tokens/") {
        Some(i) => format!(
            "{}/os-console-auth-tokens/<token>",
            loggable(&path[..i], LOGGED_PATH_CHARS)
        ),
        None => loggable(path, LOGGED_PATH_CHARS),
    }
}

/// `text` (chosen by a client) as it may be written to the log: every
/// character outside printable ASCII, and `\`, escaped (`\u{85}`), at
/// most `max` characters of it, and a marker saying it was cut.
pub fn loggable(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 32);
    for (shown, c) in text.chars().enumerate() {
        if shown == max {
            out.push_str(&format!("...[cut: {} bytes in all]", text.len()));
            break;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            _ => out.extend(c.escape_unicode()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn client_text_is_logged_bounded_and_escaped() {
        assert_eq!(super::loggable("/v1/plain", 200), "/v1/plain");
        assert_eq!(
            super::loggable("/a\u{85}b\u{202e}c\\d\n", 200),
            "/a\\u{85}b\\u{202e}c\\\\d\\u{a}"
        );
        let long = format!("/{}", "x".repeat(5000));
        let logged = super::loggable(&long, 200);
        assert!(logged.starts_with(&long[..200]), "{logged}");
        assert!(logged.ends_with("...[cut: 5001 bytes in all]"), "{logged}");
        assert!(logged.len() < 240);
        let logged = super::loggable_path(&format!("/v2.1/os-console-auth-tokens/{long}"));
        assert_eq!(logged, "/v2.1/os-console-auth-tokens/<token>");
    }

    #[test]
    fn console_tokens_never_reach_the_log() {
        assert_eq!(
            super::loggable_path("/v2.1/os-console-auth-tokens/secret123"),
            "/v2.1/os-console-auth-tokens/<token>"
        );
        assert_eq!(
            super::loggable_path("/v2.1/servers/vm1/action"),
            "/v2.1/servers/vm1/action"
        );
    }
}
