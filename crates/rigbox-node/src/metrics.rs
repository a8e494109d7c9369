//! Usage collection for metrics (host side: VMM process and tap; guest side: the agent).

use crate::node::{Node, Ws};
use crate::server::AppState;
use axum::Router;

/// Node API routes of this feature.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
}

/// Called when a workspace reached `running` (after boot or restore).
pub(crate) async fn on_running(_node: &Node, _ws: &Ws) {}

/// Called before a workspace's VM and slot go away (stop, crash, delete),
/// with the workspace record locked: do not lock `ws.rec` here.
pub(crate) async fn on_halt(_node: &Node, _ws: &Ws) {}
