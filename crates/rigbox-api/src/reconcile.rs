//! The reconciler: brings workspace records in line with what the nodes
//! report. It runs every second for workspaces in transient states and every
//! ten seconds for all of them, and once at startup, so a restart of either
//! the control plane or a node leaves nothing stuck in `starting`.

use crate::state::AppState;
use crate::workspaces::finish_delete;
use chrono::{TimeZone, Utc};
use rigbox_db::{NodeRow, WorkspaceRow};
use rigbox_node_api::NodeClientError;
use rigbox_types::WorkspaceState;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const TRANSIENT: [&str; 4] = ["provisioning", "starting", "stopping", "deleting"];

/// Runs until `stop` is cancelled.
pub async fn run(st: AppState, stop: CancellationToken) {
    let mut tick: u64 = 0;
    loop {
        if tick.is_multiple_of(10) {
            refresh_nodes(&st).await;
            sync_all(&st).await;
        } else {
            sync_transient(&st).await;
        }
        tick += 1;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Asks every node for its info and records it.
pub async fn refresh_nodes(st: &AppState) {
    let rows = st.store().nodes().await.unwrap_or_default();
    for row in rows {
        let client = rigbox_node_api::NodeClient::new(&row.url, &row.token);
        if let Ok(info) = client.info().await {
            st.nodes().set_info(&row.id, info.clone());
            let updated = NodeRow {
                backend: format!("{}-{}", info.backend, info.accel),
                info: serde_json::to_value(&info).unwrap_or_default(),
                last_seen_at: Some(Utc::now()),
                ..row
            };
            let _ = st.store().upsert_node(&updated).await;
        }
    }
}

async fn sync_transient(st: &AppState) {
    for w in st.store().workspaces_in(&TRANSIENT).await.unwrap_or_default() {
        sync_one(st, w).await;
    }
}

/// Syncs every workspace with its node.
pub async fn sync_all(st: &AppState) {
    for w in st.store().all_workspaces().await.unwrap_or_default() {
        sync_one(st, w).await;
    }
}

/// Syncs one workspace now and returns its fresh row.
pub async fn refresh(st: &AppState, w: WorkspaceRow) -> WorkspaceRow {
    let id = w.id.clone();
    sync_one(st, w.clone()).await;
    st.store().workspace(&id).await.unwrap_or(w)
}

async fn sync_one(st: &AppState, mut w: WorkspaceRow) {
    if w.status == "deleting" {
        let _ = finish_delete(st, &w.id, &w.node_id).await;
        return;
    }
    let Ok(client) = st.nodes().client(&w.node_id) else { return };
    match client.get(&w.id).await {
        Ok(s) => {
            let status = s.state.to_string();
            let mut changed = status != w.status;
            w.status = status;
            if s.state == WorkspaceState::Failed {
                if let Some(f) = &s.failure {
                    if w.failure_code.as_deref() != Some(&f.code) || w.failure_reason.as_deref() != Some(&f.message) {
                        changed = true;
                    }
                    w.failure_code = Some(f.code.clone());
                    w.failure_reason = Some(f.message.clone());
                    w.failure_at = Utc.timestamp_millis_opt(f.at_unix_ms as i64).single();
                }
            }
            if changed {
                w.updated_at = Utc::now();
                tracing::info!(workspace = %w.id, status = %w.status, "workspace state from node");
                let _ = st.store().update_workspace(&w).await;
            }
        }
        Err(NodeClientError::Api { status: 404, .. }) => {
            // The node does not know it (lost disk, or a create that never finished).
            if w.status != "failed" || w.failure_code.as_deref() != Some("node_lost") {
                w.status = "failed".into();
                w.failure_code = Some("node_lost".into());
                w.failure_reason = Some(format!("node {} no longer has this workspace", w.node_id));
                w.failure_at = Some(Utc::now());
                w.updated_at = Utc::now();
                let _ = st.store().update_workspace(&w).await;
            }
        }
        Err(_) => {} // node unreachable: try again later
    }
}
