//! Typed JSON errors: `{"error": {"code": "...", "message": "..."}}` with a stable code and a
//! message that never carries internal detail (a database error is `internal` and nothing
//! else; its cause goes to the operator's log only).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use control_core::ControlError;
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// One error: a stable machine-readable code and a human-readable message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable code (`docs/API.md` lists them): `invalid_input`, `unauthenticated`,
    /// `forbidden`, `not_friends`, `not_a_member`, `not_found`, `handle_taken`,
    /// `device_exists`, `invalid_pairing_code`, `limit_reached`, `rate_limited`,
    /// `payload_too_large`, `method_not_allowed`, `unavailable`, `internal`.
    pub code: String,
    /// What went wrong, for people; no internal detail.
    pub message: String,
}

/// An error as the API returns it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error with an explicit status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// `400 invalid_input`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_input", message)
    }

    /// `401 unauthenticated`.
    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "a valid bearer credential is required",
        )
    }

    /// `429 rate_limited`.
    pub fn rate_limited() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests; retry later",
        )
    }

    /// `404 not_found` for a path that names no endpoint.
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<ControlError> for ApiError {
    fn from(error: ControlError) -> Self {
        let status = match &error {
            ControlError::InvalidInput(_) => StatusCode::BAD_REQUEST,
            ControlError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ControlError::Forbidden(_) | ControlError::NotFriends | ControlError::NotAMember => {
                StatusCode::FORBIDDEN
            }
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::HandleTaken
            | ControlError::DeviceExists
            | ControlError::LimitReached(_) => StatusCode::CONFLICT,
            ControlError::InvalidPairingCode => StatusCode::BAD_REQUEST,
            ControlError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ControlError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ControlError::Internal(cause) => {
                tracing::error!(error = %cause, "internal error in a control operation");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        // `ControlError`'s messages are written for clients: fixed texts, no causes.
        Self::new(status, error.code(), error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
