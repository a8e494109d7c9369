//! Node agent errors and their mapping to the node API.

use crate::guest::GuestError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rigbox_node_api::{codes, ErrorBody, ErrorDetail};
use rigbox_types::IllegalTransition;

/// Errors of node operations.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Unknown workspace.
    #[error("Workspace {0} not found on this node")]
    NotFound(String),
    /// Already exists.
    #[error("Workspace {0} already exists on this node")]
    Exists(String),
    /// Not allowed in the current state.
    #[error(transparent)]
    State(#[from] IllegalTransition),
    /// Needs a running workspace.
    #[error("Workspace {0} is not running")]
    NotRunning(String),
    /// Invalid input.
    #[error("{0}")]
    Invalid(String),
    /// A guest image is missing.
    #[error("{0}")]
    ImageMissing(String),
    /// Not enough room on the node.
    #[error("{0}")]
    Capacity(String),
    /// Image pipeline failure.
    #[error(transparent)]
    Image(#[from] rigbox_image::ImageError),
    /// VMM failure.
    #[error(transparent)]
    Vmm(#[from] rigbox_vmm::VmmError),
    /// Network slot failure.
    #[error(transparent)]
    Netns(#[from] rigbox_netns::NetnsError),
    /// Guest agent failure.
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// Filesystem failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A host command failed.
    #[error("{0}")]
    Command(String),
    /// No such snapshot.
    #[error("Snapshot {0} not found on this node")]
    SnapshotNotFound(String),
    /// A snapshot artifact is damaged or of an unknown format.
    #[error("Snapshot artifact is not usable: {0}")]
    Corrupt(String),
    /// The resource is used by another one.
    #[error("{0}")]
    InUse(String),
}

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let context = context.into();
    move |source| NodeError::Io { context, source }
}

impl NodeError {
    /// HTTP status and stable code.
    pub fn status_code(&self) -> (StatusCode, &'static str) {
        match self {
            NodeError::NotFound(_) | NodeError::SnapshotNotFound(_) => (StatusCode::NOT_FOUND, codes::NOT_FOUND),
            NodeError::Corrupt(_) => (StatusCode::UNPROCESSABLE_ENTITY, codes::CORRUPT),
            NodeError::InUse(_) => (StatusCode::CONFLICT, codes::IN_USE),
            NodeError::Exists(_) => (StatusCode::CONFLICT, codes::EXISTS),
            NodeError::State(_) | NodeError::NotRunning(_) => (StatusCode::CONFLICT, codes::WRONG_STATE),
            NodeError::Invalid(_) => (StatusCode::BAD_REQUEST, codes::INVALID),
            NodeError::ImageMissing(_) => (StatusCode::PRECONDITION_FAILED, codes::IMAGE_MISSING),
            NodeError::Image(rigbox_image::ImageError::NotBuilt { .. }) => {
                (StatusCode::PRECONDITION_FAILED, codes::IMAGE_MISSING)
            }
            NodeError::Image(rigbox_image::ImageError::Recipe(rigbox_image::RecipeError::UnknownTemplate(_))) => {
                (StatusCode::BAD_REQUEST, codes::INVALID)
            }
            NodeError::Capacity(_) => (StatusCode::INSUFFICIENT_STORAGE, codes::CAPACITY),
            NodeError::Guest(GuestError::Agent { status, .. }) if *status < 500 => {
                (StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY), codes::GUEST)
            }
            NodeError::Guest(GuestError::Timeout(_)) => (StatusCode::GATEWAY_TIMEOUT, codes::GUEST),
            NodeError::Guest(_) => (StatusCode::BAD_GATEWAY, codes::GUEST),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, codes::INTERNAL),
        }
    }
}

impl IntoResponse for NodeError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_code();
        if status.is_server_error() {
            tracing::warn!(error = %self, "node request failed");
        }
        (status, Json(ErrorBody { error: ErrorDetail { code: code.into(), message: self.to_string() } })).into_response()
    }
}
