//! How failures become HTTP answers: a status that says whose fault it is
//! (4xx for the client's, 503 for "not done; retry elsewhere or later", 504
//! for "done or not, nobody knows; retry with the same key") and a JSON
//! body with a stable code. A client's mistake is never a 500.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flotilla_api::{ApiErrorBody, SpecError};

use crate::raft::RaftError;
use crate::state::Rejection;

#[derive(Debug, Clone)]
pub enum ApiError {
    InvalidSpec(SpecError),
    BadRequest(String),
    NotFound(String),
    Conflict(String),
    /// No credential, or one the cluster does not know: 401.
    Unauthorized(String),
    /// A credential that does not allow this: 403.
    Forbidden(String),
    PayloadTooLarge(usize),
    UnsupportedMediaType(String),
    /// A server bug, never a client's mistake.
    Internal(String),
    /// A write reached Raft but its fate is unknown: 504, and the client
    /// retries it only with the same idempotency key.
    OutcomeUnknown(String),
    /// The request could not be served now; a retry (here or on another server) may succeed.
    Unavailable {
        code: &'static str,
        message: String,
    },
}

impl From<RaftError> for ApiError {
    fn from(error: RaftError) -> Self {
        let message = error.to_string();
        match error {
            RaftError::Rejected(
                Rejection::WorkloadNotFound(_)
                | Rejection::NodeNotFound(_)
                | Rejection::TokenNotFound(_)
                | Rejection::SecretNotFound { .. }
                | Rejection::VersionNotInHistory { .. }
                | Rejection::NoVolumes(_),
            ) => ApiError::NotFound(message),
            RaftError::Rejected(_) | RaftError::Membership(_) => ApiError::Conflict(message),
            RaftError::NoLeader => ApiError::Unavailable { code: "no_leader", message },
            RaftError::LeaderChanged => ApiError::Unavailable { code: "leader_changed", message },
            RaftError::LeaderMoving => ApiError::Unavailable { code: "leader_moving", message },
            RaftError::Timeout(_) => ApiError::Unavailable { code: "timeout", message },
            RaftError::Stopped => ApiError::Unavailable { code: "stopping", message },
            RaftError::OutcomeUnknown(_) => ApiError::OutcomeUnknown(message),
        }
    }
}

impl ApiError {
    /// The status and body this error is answered with.
    pub fn status_and_body(self) -> (StatusCode, ApiErrorBody) {
        let (status, code, message, spec) = match self {
            ApiError::InvalidSpec(spec) => {
                (StatusCode::BAD_REQUEST, "invalid_spec", format!("invalid spec: {spec}"), Some(spec))
            }
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m, None),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m, None),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m, None),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m, None),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m, None),
            ApiError::PayloadTooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the request body is larger than {limit} bytes"),
                None,
            ),
            ApiError::UnsupportedMediaType(m) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", m, None)
            }
            ApiError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", m, None),
            ApiError::OutcomeUnknown(m) => (StatusCode::GATEWAY_TIMEOUT, "outcome_unknown", m, None),
            ApiError::Unavailable { code, message } => (StatusCode::SERVICE_UNAVAILABLE, code, message, None),
        };
        (status, ApiErrorBody { code: code.to_owned(), message, spec })
    }

    /// The error another server answered with, to pass on as it is: a
    /// refusal of the request (400, 404, 409), an unknown outcome (504), or
    /// "not now" (503, with its code). Anything else means the other server
    /// could not be asked properly, which the caller may retry elsewhere.
    pub fn from_status(status: u16, body: ApiErrorBody) -> Self {
        let message = body.message;
        match status {
            400 => ApiError::BadRequest(message),
            404 => ApiError::NotFound(message),
            409 => ApiError::Conflict(message),
            504 => ApiError::OutcomeUnknown(message),
            503 => ApiError::Unavailable { code: retryable_code(&body.code), message },
            _ => ApiError::Unavailable { code: "leader_unreachable", message },
        }
    }
}

/// The stable code of a 503 another server answered, or a general one for
/// a code this server does not know.
fn retryable_code(code: &str) -> &'static str {
    const CODES: &[&str] = &[
        "no_leader",
        "leader_changed",
        "leader_moving",
        "leader_unreachable",
        "timeout",
        "stopping",
        "cannot_check_token",
        "agent_unreachable",
    ];
    CODES.iter().find(|known| **known == code).copied().unwrap_or("unavailable")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.status_and_body();
        (status, Json(body)).into_response()
    }
}
