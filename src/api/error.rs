//! OCI's error model: a status, a `code` for programs and a `message` for
//! people, in the body `{"code": …, "message": …}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::connections::ConnectionError;
use crate::store::StoreError;

pub use crate::codes::CODE_HEADER;

/// The runbook entry for an error answer with this status: the codes are
/// the statuses, so an operator can look up any failed call.
pub fn runbook_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "CG-API-400",
        401 => "CG-API-401",
        403 => "CG-API-403",
        404 => "CG-API-404",
        405 => "CG-API-405",
        406 => "CG-API-406",
        409 => "CG-API-409",
        412 => "CG-API-412",
        413 => "CG-API-413",
        429 => "CG-API-429",
        501 => "CG-API-501",
        503 => "CG-API-503",
        _ => "CG-API-500",
    }
}

/// The message OCI gives for anything the caller may not see.
pub const NOT_FOUND_MESSAGE: &str = "Authorization failed or requested resource not found.";

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// The runbook entry, when it is not the status's own.
    runbook: Option<&'static str>,
}

/// The error body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A short error code, for programs.
    pub code: String,
    /// What went wrong and what to do, for people.
    pub message: String,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            runbook: None,
        }
    }

    /// The same error, naming runbook entry `code` instead of its status's.
    pub fn with_runbook_code(self, code: &'static str) -> Self {
        ApiError {
            runbook: Some(code),
            ..self
        }
    }

    /// 400 InvalidParameter.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidParameter", message)
    }

    /// 400 MissingParameter.
    pub fn missing(parameter: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "MissingParameter",
            format!("{parameter} is required"),
        )
    }

    /// 401 NotAuthenticated.
    pub fn not_authenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "NotAuthenticated", message)
    }

    /// 404 NotAuthorizedOrNotFound: never says which.
    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotAuthorizedOrNotFound",
            NOT_FOUND_MESSAGE,
        )
    }

    /// 409 Conflict.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", message)
    }

    /// 500 InternalError; the detail goes to the log, not to the client.
    pub fn internal(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(code = "CG-API-500", error = %detail, "internal error answering an API request");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "An internal error occurred; try again, and report the opc-request-id if it persists.",
        )
    }

    /// 500 InternalError naming `CG-STORE-002`: the store failed at run
    /// time (locked by another process past its busy timeout, out of disk
    /// space, an I/O error); the detail goes to the log.
    pub fn store_failed(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(code = "CG-STORE-002", error = %detail, "the store failed answering an API request");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "The gateway's store could not take the request (it may be locked by another process \
             or out of disk space); retry later.",
        )
        .with_runbook_code("CG-STORE-002")
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The OCI error code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.runbook.unwrap_or_else(|| runbook_code(self.status));
        let body = ErrorBody {
            code: self.code.to_owned(),
            message: format!("{code} {}", self.message),
        };
        (self.status, [(CODE_HEADER, code)], Json(body)).into_response()
    }
}

impl From<ConnectionError> for ApiError {
    fn from(e: ConnectionError) -> Self {
        match e {
            // An instance the caller cannot see looks like one that does not exist.
            ConnectionError::UnknownInstance { .. } | ConnectionError::NotFound(_) => {
                ApiError::not_found()
            }
            ConnectionError::Key(k) => ApiError::invalid(format!("publicKey: {k}")),
            ConnectionError::BadTags(m) => ApiError::invalid(m),
            e @ ConnectionError::WrongState { .. } => ApiError::conflict(e.to_string()),
            ConnectionError::Store(e @ StoreError::Conflict { .. }) => {
                ApiError::conflict(e.to_string())
            }
            ConnectionError::Store(e @ StoreError::Database(_)) => ApiError::store_failed(&e),
            ConnectionError::Store(e) => ApiError::internal(&e),
        }
    }
}
