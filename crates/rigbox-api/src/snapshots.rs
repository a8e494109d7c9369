//! Disk snapshots, live snapshots, pause, resume, fork.

use crate::state::AppState;
use axum::Router;

/// Routes under `/api/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
}
