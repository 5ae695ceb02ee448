//! The one mapping from what went wrong to an HTTP answer: a status, a stable reason and a
//! sentence the page shows as it is.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keepsake_transport::client::CallError;

/// A refused or failed request, as the page receives it: `{"reason": …, "message": …}`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct WebError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable UPPER_SNAKE reason (the cloud's own where it gave one).
    pub reason: String,
    /// What to tell the person.
    pub message: String,
}

impl WebError {
    /// A refusal with its own status and reason.
    pub fn new(status: StatusCode, reason: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.to_string(),
            message: message.into(),
        }
    }

    /// The request itself is wrong.
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message)
    }

    /// Not signed in (or the session ended).
    pub fn signed_out() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "sign in to see your library",
        )
    }

    /// Nothing of the caller's by that name; another account's things answer the same.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", "not found")
    }
}

impl From<CallError> for WebError {
    fn from(e: CallError) -> Self {
        use tonic::Code;
        let status = match (e.code, e.reason()) {
            (_, "QUOTA_EXCEEDED" | "STORAGE_FULL") => StatusCode::INSUFFICIENT_STORAGE,
            (_, "DEVICE_REVOKED") => StatusCode::UNAUTHORIZED,
            (Code::NotFound, _) => StatusCode::NOT_FOUND,
            (Code::Unauthenticated, _) => StatusCode::UNAUTHORIZED,
            (Code::PermissionDenied, _) => StatusCode::FORBIDDEN,
            (Code::InvalidArgument | Code::OutOfRange, _) => StatusCode::BAD_REQUEST,
            (Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted, _) => {
                StatusCode::CONFLICT
            }
            (Code::ResourceExhausted, _) => StatusCode::TOO_MANY_REQUESTS,
            (Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled, _) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::BAD_GATEWAY,
        };
        if status == StatusCode::NOT_FOUND {
            // The cloud's sentence may name the id; the page needs only the fact.
            return Self::not_found();
        }
        Self::new(status, e.reason(), e.message())
    }
}

impl From<tonic::Status> for WebError {
    fn from(status: tonic::Status) -> Self {
        CallError::from(status).into()
    }
}

impl From<std::io::Error> for WebError {
    fn from(e: std::io::Error) -> Self {
        tracing::warn!(error = %e, "web library: a file operation failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "the server could not keep the upload; try again",
        )
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "reason": self.reason, "message": self.message });
        (self.status, Json(body)).into_response()
    }
}
