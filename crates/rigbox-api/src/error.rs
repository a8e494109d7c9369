//! The API's error type: every failure is `{"error":{"code","message"}}`
//! with a status that tells the client's fault from ours.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rigbox_db::DbError;
use rigbox_node_api::NodeClientError;
use serde::Serialize;
use utoipa::ToSchema;

/// Error body (the reference's `ApiErrorBody`).
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ApiErrorBody {
    /// The error.
    pub error: ApiErrorDetail,
}

/// Error detail (the reference's `ApiErrorDetail`).
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ApiErrorDetail {
    /// Stable machine-readable code.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Extra data, when useful.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// An API failure.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: &'static str,
    /// Message.
    pub message: String,
    /// Seconds to wait (429, 503).
    pub retry_after: Option<u64>,
    /// Extra data.
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after: None, details: None }
    }
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    /// 402.
    pub fn quota(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYMENT_REQUIRED, "limit_exceeded", message)
    }
    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    /// 404.
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }
    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }
    /// 503.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }
    /// With a `Retry-After`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
    /// With details.
    pub fn details(mut self, d: serde_json::Value) -> Self {
        self.details = Some(d);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body = ApiErrorBody { error: ApiErrorDetail { code: self.code.into(), message: self.message, details: self.details } };
        let mut r = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                r.headers_mut().insert("retry-after", v);
            }
        }
        r
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::NotFound => ApiError::not_found("resource"),
            DbError::Conflict(m) => ApiError::conflict(m),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError::bad_request(format!("invalid JSON body: {}", e.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::bad_request(format!("invalid query: {}", e.body_text()))
    }
}

/// Maps a node error; `what` names the operation for messages.
pub fn node_error(e: NodeClientError, what: &str) -> ApiError {
    match &e {
        NodeClientError::Transport(m) => {
            ApiError::unavailable("node_unavailable", format!("{what}: the workspace's node is unreachable ({m})")).retry_after(5)
        }
        NodeClientError::Api { status, code, message } => match (*status, code.as_str()) {
            (404, _) => ApiError::not_found("workspace"),
            (409, _) => ApiError::conflict(message.clone()),
            (400, _) => ApiError::bad_request(message.clone()),
            (412, _) => ApiError::unavailable("image_not_ready", message.clone()).retry_after(60),
            (507, _) => ApiError::unavailable("node_full", message.clone()).retry_after(60),
            (502, _) | (504, _) => ApiError::new(StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY), "guest_error", message.clone()),
            (s, _) if s < 500 => ApiError::new(StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_REQUEST), "guest_error", message.clone()),
            _ => ApiError::internal(format!("{what}: {message}")),
        },
        NodeClientError::Decode(m) => ApiError::internal(format!("{what}: {m}")),
    }
}

/// Result alias.
pub type ApiResult<T> = Result<T, ApiError>;
