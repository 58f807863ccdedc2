//! Who is calling: API users from the config, OCI request-signature
//! verification as a middleware, and request ids.
//!
//! The authentication middleware reads the whole body (bounded by
//! `[api] max_body_bytes`, so an oversized body is refused before it is
//! buffered past the limit), verifies the signature over it, and hands the
//! handler the body and the [`Caller`].

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
            tracing::info!(method = %parts.method, path = %parts.uri.path(), reason = %e, "API request not authenticated");
            return ApiError::not_authenticated(format!(
                "The request signature was not accepted: {e}"
            ))
            .into_response();
        }
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

/// The request path as logged: console tokens in paths are secrets.
fn loggable_path(path: &str) -> String {
    match path.find("/os-console-auth-tokens/") {
        Some(i) => format!("{}/os-console-auth-tokens/<token>", &path[..i]),
        None => path.chars().take(256).collect(),
    }
}

#[cfg(test)]
mod tests {
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
