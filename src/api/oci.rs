//! The OCI `InstanceConsoleConnection` endpoints under `/20160918`.
//!
//! Lifecycle, as the API shows it: a create answers ACTIVE (the connection
//! is usable the moment the answer arrives; there is no CREATING window);
//! DELETE moves it to DELETING at once, which live sessions notice within
//! their re-validation interval; the gateway's lifecycle task then makes it
//! DELETED, readable as such for `[api] deleted_retention_secs`, after which
//! it is gone (404). CREATING and FAILED are never produced.

use std::net::SocketAddr;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::ApiState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use crate::audit::Requester;
use crate::connections::{ConnectionView, NewConnection};
use crate::store::{
    ConnectionFilter, ConnectionRecord, DefinedTags, FreeformTags, LifecycleState, PageKey,
    RetryKey, StoreError,
};

/// The details of a create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateInstanceConsoleConnectionDetails {
    /// The instance to connect to.
    pub instance_id: Option<String>,
    /// The SSH public key (a `.pub` file's contents).
    pub public_key: Option<String>,
    /// Free-form tags.
    #[schema(value_type = Option<std::collections::BTreeMap<String, String>>)]
    pub freeform_tags: Option<FreeformTags>,
    /// Defined tags.
    #[schema(value_type = Option<Object>)]
    pub defined_tags: Option<DefinedTags>,
}

/// The details of an update: tags only.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateInstanceConsoleConnectionDetails {
    /// New free-form tags (replacing the old ones), if given.
    #[schema(value_type = Option<std::collections::BTreeMap<String, String>>)]
    pub freeform_tags: Option<FreeformTags>,
    /// New defined tags (replacing the old ones), if given.
    #[schema(value_type = Option<Object>)]
    pub defined_tags: Option<DefinedTags>,
}

/// Query parameters of a list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// The compartment to list (required).
    pub compartment_id: Option<String>,
    /// Only connections to this instance.
    pub instance_id: Option<String>,
    /// Most items in one page.
    pub limit: Option<String>,
    /// The `opc-next-page` value of the previous page.
    pub page: Option<String>,
}

const TAG: &str = "InstanceConsoleConnection";

/// Create a console connection.
#[utoipa::path(
    post,
    path = "/20160918/instanceConsoleConnections",
    tag = TAG,
    request_body = CreateInstanceConsoleConnectionDetails,
    params(("opc-retry-token" = Option<String>, Header, description = "Makes retries of this create idempotent for 24 hours")),
    responses(
        (status = 200, description = "The connection, ACTIVE and usable", body = ConnectionView,
         headers(("etag" = String), ("opc-request-id" = String))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 500, body = ErrorBody),
    )
)]
pub async fn create_connection(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let details: CreateInstanceConsoleConnectionDetails =
        parse_body(&body, "CreateInstanceConsoleConnectionDetails")?;
    let instance_id = details
        .instance_id
        .ok_or_else(|| ApiError::missing("instanceId"))?;
    let public_key = details
        .public_key
        .ok_or_else(|| ApiError::missing("publicKey"))?;
    // An instance in a compartment the caller may not use does not exist for them.
    let visible = state
        .connections()
        .config()
        .instance(&instance_id)
        .is_some_and(|i| caller.may_use(&i.compartment));
    if !visible {
        return Err(ApiError::not_found());
    }
    let retry = retry_key(&headers, &caller, &body)?;
    if let Some(retry) = &retry
        && let Some((hash, id)) = state
            .connections()
            .find_retry(&retry.caller, &retry.token)
            .await
            .map_err(ApiError::from)?
    {
        return replay(&state, &hash, &id, retry).await;
    }
    let new = NewConnection {
        instance_id,
        public_key,
        freeform_tags: details.freeform_tags.unwrap_or_default(),
        defined_tags: details.defined_tags.unwrap_or_default(),
    };
    let by = requester(&caller, peer);
    let record = match state.connections().create(new, retry.as_ref(), &by).await {
        Ok(record) => record,
        Err(crate::connections::ConnectionError::Store(StoreError::RetryTokenUsed {
            connection_id,
            same_request,
        })) => {
            // Two retries raced: answer as for a replay.
            let hash = if same_request {
                retry.as_ref().map(|r| r.request_hash.clone())
            } else {
                None
            };
            let retry = retry
                .as_ref()
                .ok_or_else(|| ApiError::internal(&"retry token without key"))?;
            return replay(&state, hash.as_deref().unwrap_or(""), &connection_id, retry).await;
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(connection = %record.id, instance = %record.instance_id, caller = %caller.key_id, "console connection created");
    resource(&state, &record, StatusCode::OK).await
}

async fn replay(
    state: &ApiState,
    stored_hash: &str,
    connection_id: &str,
    retry: &RetryKey,
) -> Result<Response, ApiError> {
    if stored_hash != retry.request_hash {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "InvalidatedRetryToken",
            "This opc-retry-token was already used for a different request; use a new token for a new request.",
        ));
    }
    let record = state.connections().get(connection_id).await?;
    resource(state, &record, StatusCode::OK).await
}

/// List the console connections of a compartment.
#[utoipa::path(
    get,
    path = "/20160918/instanceConsoleConnections",
    tag = TAG,
    params(ListParams),
    responses(
        (status = 200, description = "One page, oldest first; `opc-next-page` when there is more",
         body = Vec<ConnectionView>, headers(("opc-next-page" = String), ("opc-request-id" = String))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
    )
)]
pub async fn list_connections(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params: ListParams = serde_urlencoded_params(query.as_deref().unwrap_or(""))?;
    let compartment = params
        .compartment_id
        .ok_or_else(|| ApiError::missing("compartmentId"))?;
    if !caller.may_use(&compartment) {
        return Err(ApiError::not_found());
    }
    let config = state.config();
    let limit = match params.limit.as_deref() {
        None => config.default_page_size,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=config.max_page_size).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "limit must be a number from 1 to {}",
                    config.max_page_size
                ))
            })?,
    };
    let page = params.page.as_deref().map(decode_page).transpose()?;
    let filter = ConnectionFilter {
        compartment_id: Some(compartment),
        instance_id: params.instance_id,
        lifecycle_state: None,
    };
    let mut records = state
        .connections()
        .list(&filter, page.as_ref(), Some(limit + 1))
        .await?;
    let next = if records.len() > limit {
        records.truncate(limit);
        records.last().map(|r| encode_page(&PageKey::after(r)))
    } else {
        None
    };
    let mut views = Vec::with_capacity(records.len());
    for record in &records {
        views.push(state.connections().view(record).await?);
    }
    let mut response = Json(views).into_response();
    if let Some(next) = next
        && let Ok(value) = HeaderValue::from_str(&next)
    {
        response.headers_mut().insert("opc-next-page", value);
    }
    Ok(response)
}

/// Get one console connection.
#[utoipa::path(
    get,
    path = "/20160918/instanceConsoleConnections/{instanceConsoleConnectionId}",
    tag = TAG,
    params(("instanceConsoleConnectionId" = String, Path, description = "The connection id")),
    responses(
        (status = 200, body = ConnectionView, headers(("etag" = String), ("opc-request-id" = String))),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
    )
)]
pub async fn get_connection(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = visible_record(&state, &caller, &id).await?;
    resource(&state, &record, StatusCode::OK).await
}

/// Update a console connection's tags.
#[utoipa::path(
    put,
    path = "/20160918/instanceConsoleConnections/{instanceConsoleConnectionId}",
    tag = TAG,
    request_body = UpdateInstanceConsoleConnectionDetails,
    params(
        ("instanceConsoleConnectionId" = String, Path, description = "The connection id"),
        ("if-match" = Option<String>, Header, description = "Update only if the etag matches"),
    ),
    responses(
        (status = 200, body = ConnectionView, headers(("etag" = String), ("opc-request-id" = String))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 412, body = ErrorBody),
    )
)]
pub async fn update_connection(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let details: UpdateInstanceConsoleConnectionDetails =
        parse_body(&body, "UpdateInstanceConsoleConnectionDetails")?;
    let record = visible_record(&state, &caller, &id).await?;
    check_if_match(&state, &headers, &record).await?;
    let record = state
        .connections()
        .update_tags(
            &id,
            details.freeform_tags.as_ref(),
            details.defined_tags.as_ref(),
            &requester(&caller, peer),
        )
        .await?;
    resource(&state, &record, StatusCode::OK).await
}

/// Delete a console connection; its live sessions end.
#[utoipa::path(
    delete,
    path = "/20160918/instanceConsoleConnections/{instanceConsoleConnectionId}",
    tag = TAG,
    params(
        ("instanceConsoleConnectionId" = String, Path, description = "The connection id"),
        ("if-match" = Option<String>, Header, description = "Delete only if the etag matches"),
    ),
    responses(
        (status = 204, description = "Deleting (DELETING, then DELETED)", headers(("opc-request-id" = String))),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 412, body = ErrorBody),
    )
)]
pub async fn delete_connection(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let record = visible_record(&state, &caller, &id).await?;
    check_if_match(&state, &headers, &record).await?;
    if matches!(
        record.lifecycle_state,
        LifecycleState::Active | LifecycleState::Creating | LifecycleState::Failed
    ) {
        state
            .connections()
            .begin_delete(&id, &requester(&caller, peer))
            .await?;
        tracing::info!(connection = %id, caller = %caller.key_id, "console connection deleted");
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Who made a request, as the audit row of its change names them.
fn requester(caller: &Caller, peer: Option<Extension<ConnectInfo<SocketAddr>>>) -> Requester {
    Requester {
        name: format!("api user {}", caller.key_id),
        peer: peer.map(|Extension(ConnectInfo(peer))| peer.to_string()),
    }
}

async fn visible_record(
    state: &ApiState,
    caller: &Caller,
    id: &str,
) -> Result<ConnectionRecord, ApiError> {
    if !crate::ids::looks_like_connection_id(id) {
        return Err(ApiError::not_found());
    }
    let record = state.connections().get(id).await?;
    if !caller.may_use(&record.compartment_id) {
        return Err(ApiError::not_found());
    }
    Ok(record)
}

/// The resource with its etag.
async fn resource(
    state: &ApiState,
    record: &ConnectionRecord,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let view = state.connections().view(record).await?;
    let etag = etag(&view);
    let mut response = (status, Json(view)).into_response();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert("etag", value);
    }
    Ok(response)
}

/// The etag of a resource: changes whenever anything in it does.
fn etag(view: &ConnectionView) -> String {
    let json = serde_json::to_vec(view).unwrap_or_default();
    let digest = Sha256::digest(&json);
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

async fn check_if_match(
    state: &ApiState,
    headers: &HeaderMap,
    record: &ConnectionRecord,
) -> Result<(), ApiError> {
    let Some(wanted) = headers.get("if-match") else {
        return Ok(());
    };
    let current = etag(&state.connections().view(record).await?);
    let wanted = wanted.to_str().unwrap_or_default().trim_matches('"');
    if wanted == "*" || wanted == current {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "NoEtagMatch",
            "The if-match etag does not match the resource's current etag; get the resource again and retry.",
        ))
    }
}

fn retry_key(
    headers: &HeaderMap,
    caller: &Caller,
    body: &[u8],
) -> Result<Option<RetryKey>, ApiError> {
    let Some(token) = headers.get("opc-retry-token") else {
        return Ok(None);
    };
    let token = token
        .to_str()
        .ok()
        .filter(|t| (1..=64).contains(&t.len()))
        .ok_or_else(|| ApiError::invalid("opc-retry-token must be 1 to 64 visible characters"))?;
    // The same request is the same JSON, whatever its whitespace or key order.
    let canonical = serde_json::from_slice::<serde_json::Value>(body)
        .map(|v| v.to_string())
        .unwrap_or_default();
    let request_hash = hex(&Sha256::digest(canonical.as_bytes()));
    Ok(Some(RetryKey {
        caller: caller.key_id.clone(),
        token: token.to_owned(),
        request_hash,
    }))
}

pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &str,
) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::missing(&format!("a JSON body ({what})")));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the body is not a valid {what}: {e}")))
}

pub(crate) fn serde_urlencoded_params(query: &str) -> Result<ListParams, ApiError> {
    let uri: axum::http::Uri = format!("/?{query}")
        .parse()
        .map_err(|_| ApiError::invalid("the query string is malformed"))?;
    axum::extract::Query::<ListParams>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::invalid(format!("the query string is malformed: {e}")))
}

pub(crate) fn encode_page(key: &PageKey) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{}", key.time_created_ms, key.id))
}

pub(crate) fn decode_page(token: &str) -> Result<PageKey, ApiError> {
    let bad =
        || ApiError::invalid("page is not a token this API issued (use the opc-next-page header)");
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (ms, id) = text.split_once(':').ok_or_else(bad)?;
    Ok(PageKey {
        time_created_ms: ms.parse().map_err(|_| bad())?,
        id: id.to_owned(),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_junk_is_refused() {
        let key = PageKey {
            time_created_ms: 1_700_000_000_123,
            id: "ocid1.x..abc".into(),
        };
        assert_eq!(decode_page(&encode_page(&key)).unwrap(), key);
        for junk in ["", "!!!", "bm9jb2xvbg", "YTpi"] {
            assert!(decode_page(junk).is_err(), "{junk}");
        }
    }
}
