//! Snapshots (Rigbox-compatible disk snapshots, plus live snapshots),
//! pause and resume, fork.
//!
//! The reference snapshots only a stopped workspace's disk
//! (`POST /workspaces/{id}/snapshots {name}`). Beyond it:
//! `{"live": true}` snapshots a running workspace with its memory;
//! `POST /workspaces/{id}/pause` and `/resume` keep a running workspace's
//! processes across a stop of its VM; `POST /workspaces/{id}/fork
//! {count, names}` makes running copies of a running workspace.

use crate::auth::Auth;
use crate::error::{node_error, ApiError, ApiResult};
use crate::state::AppState;
use crate::views::{GetWorkspaceResponse, Vm};
use crate::workspaces::{check_quota, load};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::Utc;
use rigbox_db::snapshots::SnapshotRow;
use rigbox_db::{DbError, WorkspaceRow};
use rigbox_node_api::{CreateSnapshot, ForkRequest, ForkTarget, NodeClientError};
use rigbox_types::{validate_name, WorkspaceState};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Routes under `/api/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/workspaces/{id}/snapshots", get(list_of_workspace).post(create))
        .route("/workspaces/{id}/snapshots/{sid}", delete(delete_of_workspace))
        .route("/workspaces/{id}/snapshots/{sid}/restore", post(restore_of_workspace))
        .route("/snapshots", get(list_all))
        .route("/snapshots/{sid}", delete(delete_one))
        .route("/snapshots/{sid}/restore", post(restore_one))
        .route("/workspaces/{id}/pause", post(pause))
        .route("/workspaces/{id}/resume", post(resume))
        .route("/workspaces/{id}/fork", post(fork))
}

/// A snapshot (the reference's `SnapshotView`, plus `kind` and `size_bytes`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct SnapshotView {
    /// `snap-…`.
    pub id: String,
    /// The workspace it was taken from.
    pub workspace_id: String,
    /// Name.
    pub name: String,
    /// Space it takes on the node (MiB, rounded up).
    pub size_mb: i32,
    /// Creation time.
    pub created_at: chrono::DateTime<Utc>,
    /// `disk` (stopped workspace) or `live` (memory included).
    pub kind: String,
    /// Space it takes on the node (bytes).
    pub size_bytes: i64,
}

impl SnapshotView {
    fn of(s: &SnapshotRow) -> Self {
        SnapshotView {
            id: s.id.clone(),
            workspace_id: s.workspace_id.clone(),
            name: s.name.clone(),
            size_mb: i32::try_from((s.size_bytes + (1 << 20) - 1) >> 20).unwrap_or(i32::MAX),
            created_at: s.created_at,
            kind: s.kind.clone(),
            size_bytes: s.size_bytes,
        }
    }
}

/// `{snapshots}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ListSnapshotsResponse {
    /// Snapshots.
    pub snapshots: Vec<SnapshotView>,
}

/// `{snapshot}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateSnapshotResponse {
    /// The new snapshot.
    pub snapshot: SnapshotView,
}

/// `POST /workspaces/{id}/snapshots`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CreateSnapshotRequest {
    /// Name (default: a timestamp).
    pub name: Option<String>,
    /// Snapshot a running workspace with its memory (extension).
    #[serde(default)]
    pub live: bool,
}

/// `{message, workspace_id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RestoreSnapshotResponse {
    /// What happened.
    pub message: String,
    /// The workspace restored.
    pub workspace_id: String,
}

/// `POST /workspaces/{id}/fork`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ForkWorkspaceRequest {
    /// How many copies (default 1, or the number of names).
    pub count: Option<u32>,
    /// Their names (default `<name>-fork-<n>`).
    #[serde(default)]
    pub names: Vec<String>,
}

/// Answer of a fork.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ForkWorkspaceResponse {
    /// The new workspaces.
    pub workspaces: Vec<Vm>,
    /// The live snapshot they start from.
    pub snapshot: SnapshotView,
}

fn new_snapshot_id() -> String {
    rigbox_types::ids::new_snapshot_id()
}

fn in_use_or(e: NodeClientError, what: &str) -> ApiError {
    match e {
        NodeClientError::Api { status: 409, message, .. } => ApiError::new(StatusCode::CONFLICT, "snapshot_in_use", message),
        NodeClientError::Api { status: 422, message, .. } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "corrupt_snapshot", message),
        NodeClientError::Api { status: 507, message, .. } => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage", message),
        other => node_error(other, what),
    }
}

async fn snapshot_of(st: &AppState, auth: &Auth, sid: &str) -> ApiResult<SnapshotRow> {
    match st.store().snapshot_of_user(&auth.user.id, sid).await {
        Ok(s) => Ok(s),
        Err(DbError::NotFound) => Err(ApiError::not_found("snapshot")),
        Err(e) => Err(e.into()),
    }
}

async fn list_of_workspace(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<ListSnapshotsResponse>> {
    let w = load(&st, &auth, &id).await?;
    let snapshots = st.store().snapshots_of_user(&auth.user.id, Some(&w.id)).await?.iter().map(SnapshotView::of).collect();
    Ok(Json(ListSnapshotsResponse { snapshots }))
}

async fn list_all(State(st): State<AppState>, auth: Auth) -> ApiResult<Json<ListSnapshotsResponse>> {
    let snapshots = st.store().snapshots_of_user(&auth.user.id, None).await?.iter().map(SnapshotView::of).collect();
    Ok(Json(ListSnapshotsResponse { snapshots }))
}

async fn check_snapshot_quota(st: &AppState, user_id: &str) -> ApiResult<()> {
    let max = i64::from(st.config().limits.max_snapshots);
    if st.store().snapshot_count(user_id).await? >= max {
        return Err(ApiError::quota(format!("snapshot limit reached ({max} snapshots)")));
    }
    Ok(())
}

/// Takes a snapshot of `w` and records it.
pub async fn take_snapshot(st: &AppState, w: &WorkspaceRow, name: Option<String>, live: bool) -> ApiResult<SnapshotRow> {
    let state = WorkspaceState::parse(&w.status).unwrap_or(WorkspaceState::Failed);
    if live && state != WorkspaceState::Running {
        return Err(ApiError::new(StatusCode::CONFLICT, "invalid_state", format!("a live snapshot needs a running workspace ({} is {state})", w.name)));
    }
    if !live && !matches!(state, WorkspaceState::Stopped | WorkspaceState::Provisioned) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_state",
            format!("a snapshot of the disk needs a stopped workspace ({} is {state}); stop it, or ask for a live snapshot", w.name),
        ));
    }
    check_snapshot_quota(st, &w.user_id).await?;
    let client = st.nodes().client(&w.node_id)?;
    let id = new_snapshot_id();
    let meta = client.snapshot(&w.id, &CreateSnapshot { snapshot_id: id.clone(), live }).await.map_err(|e| in_use_or(e, "taking the snapshot"))?;
    let row = SnapshotRow {
        id,
        user_id: w.user_id.clone(),
        workspace_id: w.id.clone(),
        node_id: w.node_id.clone(),
        name: name.unwrap_or_else(|| format!("{}-{}", w.name, Utc::now().format("%Y%m%d-%H%M%S"))),
        kind: if live { "live".into() } else { "disk".into() },
        size_bytes: meta.allocated_bytes as i64,
        created_at: Utc::now(),
    };
    st.store().create_snapshot(&row).await?;
    Ok(row)
}

async fn create(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<CreateSnapshotRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<CreateSnapshotResponse>)> {
    let req = body.map(|Json(b)| b).unwrap_or_default();
    if let Some(n) = &req.name {
        if n.trim().is_empty() || n.len() > 100 {
            return Err(ApiError::bad_request("name must be 1 to 100 characters"));
        }
    }
    let w = load(&st, &auth, &id).await?;
    let row = take_snapshot(&st, &w, req.name, req.live).await?;
    Ok((StatusCode::CREATED, Json(CreateSnapshotResponse { snapshot: SnapshotView::of(&row) })))
}

/// Deletes a snapshot artifact and its row (409 while in use).
pub async fn remove_snapshot(st: &AppState, s: &SnapshotRow) -> ApiResult<()> {
    let client = st.nodes().client(&s.node_id)?;
    match client.delete_snapshot(&s.id).await {
        Ok(()) | Err(NodeClientError::Api { status: 404, .. }) => {}
        Err(e) => return Err(in_use_or(e, "deleting the snapshot")),
    }
    st.store().delete_snapshot(&s.id).await?;
    Ok(())
}

async fn delete_of_workspace(State(st): State<AppState>, auth: Auth, Path((id, sid)): Path<(String, String)>) -> ApiResult<Json<crate::views::MessageResponse>> {
    let w = load(&st, &auth, &id).await?;
    let s = snapshot_of(&st, &auth, &sid).await?;
    if s.workspace_id != w.id {
        return Err(ApiError::not_found("snapshot"));
    }
    remove_snapshot(&st, &s).await?;
    Ok(Json(crate::views::MessageResponse::new("Snapshot deleted")))
}

async fn delete_one(State(st): State<AppState>, auth: Auth, Path(sid): Path<String>) -> ApiResult<Json<crate::views::MessageResponse>> {
    let s = snapshot_of(&st, &auth, &sid).await?;
    remove_snapshot(&st, &s).await?;
    Ok(Json(crate::views::MessageResponse::new("Snapshot deleted")))
}

async fn restore_into(st: &AppState, auth: &Auth, s: &SnapshotRow) -> ApiResult<RestoreSnapshotResponse> {
    let mut w = match st.store().workspace_of_user(&auth.user.id, &s.workspace_id).await {
        Ok(w) => w,
        Err(DbError::NotFound) => return Err(ApiError::new(StatusCode::CONFLICT, "workspace_gone", "the snapshot's workspace no longer exists")),
        Err(e) => return Err(e.into()),
    };
    let state = WorkspaceState::parse(&w.status).unwrap_or(WorkspaceState::Failed);
    if !matches!(state, WorkspaceState::Stopped | WorkspaceState::Provisioned | WorkspaceState::Paused | WorkspaceState::Failed) {
        return Err(ApiError::new(StatusCode::CONFLICT, "invalid_state", format!("restore needs a stopped workspace ({} is {state})", w.name)));
    }
    let client = st.nodes().client(&w.node_id)?;
    let status = client.restore(&w.id, &s.id).await.map_err(|e| in_use_or(e, "restoring the snapshot"))?;
    w.status = status.state.to_string();
    w.disk_size_mb = i64::from(status.disk_mb);
    w.ram_mb = i64::from(status.ram_mb);
    w.vcpu_count = i64::from(status.vcpus);
    w.failure_code = None;
    w.failure_reason = None;
    w.updated_at = Utc::now();
    st.store().update_workspace(&w).await?;
    let message = if s.kind == "live" {
        "Snapshot restored; the workspace is paused where the snapshot was taken (resume it)".to_string()
    } else {
        "Snapshot restored".to_string()
    };
    Ok(RestoreSnapshotResponse { message, workspace_id: w.id })
}

async fn restore_of_workspace(State(st): State<AppState>, auth: Auth, Path((id, sid)): Path<(String, String)>) -> ApiResult<Json<RestoreSnapshotResponse>> {
    let w = load(&st, &auth, &id).await?;
    let s = snapshot_of(&st, &auth, &sid).await?;
    if s.workspace_id != w.id {
        // Same workspace only, as in the reference.
        return Err(ApiError::not_found("snapshot"));
    }
    Ok(Json(restore_into(&st, &auth, &s).await?))
}

async fn restore_one(State(st): State<AppState>, auth: Auth, Path(sid): Path<String>) -> ApiResult<Json<RestoreSnapshotResponse>> {
    let s = snapshot_of(&st, &auth, &sid).await?;
    Ok(Json(restore_into(&st, &auth, &s).await?))
}

fn paused_or_running_error(e: NodeClientError, what: &str) -> ApiError {
    match e {
        NodeClientError::Api { status: 409, message, .. } => ApiError::new(StatusCode::CONFLICT, "invalid_state", message),
        other => in_use_or(other, what),
    }
}

async fn pause(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<GetWorkspaceResponse>> {
    let mut w = load(&st, &auth, &id).await?;
    if w.status != "running" {
        return Err(ApiError::new(StatusCode::CONFLICT, "invalid_state", format!("only a running workspace can be paused ({} is {})", w.name, w.status)));
    }
    let client = st.nodes().client(&w.node_id)?;
    let s = client.pause(&w.id).await.map_err(|e| paused_or_running_error(e, "pausing"))?;
    w.status = s.state.to_string();
    w.updated_at = Utc::now();
    st.store().update_workspace(&w).await?;
    Ok(Json(GetWorkspaceResponse::from_row(&w)))
}

async fn resume(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<GetWorkspaceResponse>> {
    let mut w = load(&st, &auth, &id).await?;
    if w.status != "paused" {
        return Err(ApiError::new(StatusCode::CONFLICT, "invalid_state", format!("only a paused workspace can be resumed ({} is {})", w.name, w.status)));
    }
    let client = st.nodes().client(&w.node_id)?;
    let s = client.resume(&w.id).await.map_err(|e| paused_or_running_error(e, "resuming"))?;
    w.status = s.state.to_string();
    w.updated_at = Utc::now();
    st.store().update_workspace(&w).await?;
    Ok(Json(GetWorkspaceResponse::from_row(&w)))
}

async fn fork(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<ForkWorkspaceRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<ForkWorkspaceResponse>)> {
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let src = load(&st, &auth, &id).await?;
    if src.status != "running" {
        return Err(ApiError::new(StatusCode::CONFLICT, "invalid_state", format!("only a running workspace can be forked ({} is {})", src.name, src.status)));
    }
    let count = req.count.unwrap_or(req.names.len().max(1) as u32);
    if count == 0 || count > 16 {
        return Err(ApiError::bad_request("count must be between 1 and 16"));
    }
    if !req.names.is_empty() && req.names.len() != count as usize {
        return Err(ApiError::bad_request("give as many names as count"));
    }
    let existing: Vec<String> = st.store().workspaces_of_user(&auth.user.id).await?.into_iter().map(|w| w.name).collect();
    let mut names = Vec::new();
    for i in 0..count as usize {
        let name = match req.names.get(i) {
            Some(n) => n.clone(),
            None => {
                let mut k = i + 1;
                loop {
                    let n = format!("{}-fork-{k}", src.name);
                    if !existing.contains(&n) && !names.contains(&n) {
                        break n;
                    }
                    k += 1;
                }
            }
        };
        validate_name(&name).map_err(|e| ApiError::bad_request(format!("invalid name {name:?}: {e}")))?;
        if existing.contains(&name) || names.contains(&name) {
            return Err(ApiError::new(StatusCode::CONFLICT, "name_taken", format!("a workspace named {name:?} already exists")));
        }
        names.push(name);
    }
    // Quotas as if the copies were created one by one.
    let u = st.store().usage(&auth.user.id).await?;
    let l = &st.config().limits;
    if u.workspace_count + i64::from(count) > i64::from(l.max_workspaces) {
        return Err(ApiError::quota(format!("workspace limit reached ({} workspaces)", l.max_workspaces)));
    }
    check_quota(&st, &auth.user.id, src.ram_mb * i64::from(count), src.vcpu_count, src.disk_size_mb * i64::from(count), None).await?;
    check_snapshot_quota(&st, &auth.user.id).await?;
    let now = Utc::now();
    let mut rows: Vec<WorkspaceRow> = Vec::new();
    for name in &names {
        let row = WorkspaceRow {
            id: rigbox_types::new_workspace_id(),
            name: name.clone(),
            status: WorkspaceState::Starting.to_string(),
            creation_attempts: 1,
            creation_started_at: Some(now),
            failure_code: None,
            failure_reason: None,
            failure_at: None,
            created_at: now,
            updated_at: now,
            ..src.clone()
        };
        if let Err(e) = st.store().create_workspace(&row).await {
            for r in &rows {
                let _ = st.store().delete_workspace(&r.id).await;
            }
            return Err(match e {
                DbError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "name_taken", format!("a workspace named {name:?} already exists")),
                other => other.into(),
            });
        }
        rows.push(row);
    }
    let client = st.nodes().client(&src.node_id)?;
    let snapshot_id = new_snapshot_id();
    let forks = rows
        .iter()
        .map(|r| ForkTarget {
            id: r.id.clone(),
            hostname: r.name.clone(),
            metadata: serde_json::json!({ "name": r.name, "user_id": r.user_id, "forked_from": src.id }),
        })
        .collect();
    let resp = match client.fork(&src.id, &ForkRequest { snapshot_id: snapshot_id.clone(), forks }).await {
        Ok(r) => r,
        Err(e) => {
            for r in &rows {
                let _ = st.store().delete_workspace(&r.id).await;
            }
            return Err(in_use_or(e, "forking"));
        }
    };
    let snap = SnapshotRow {
        id: snapshot_id,
        user_id: src.user_id.clone(),
        workspace_id: src.id.clone(),
        node_id: src.node_id.clone(),
        name: format!("fork of {}", src.name),
        kind: "live".into(),
        size_bytes: resp.snapshot.allocated_bytes as i64,
        created_at: now,
    };
    st.store().create_snapshot(&snap).await?;
    let mut vms = Vec::new();
    for mut r in rows {
        if let Some(s) = resp.workspaces.iter().find(|s| s.id == r.id) {
            r.status = s.state.to_string();
            if let Some(f) = &s.failure {
                r.failure_code = Some(f.code.clone());
                r.failure_reason = Some(f.message.clone());
                r.failure_at = Some(Utc::now());
            }
            r.updated_at = Utc::now();
            st.store().update_workspace(&r).await?;
        }
        vms.push(Vm::from_row(&r));
    }
    Ok((StatusCode::CREATED, Json(ForkWorkspaceResponse { workspaces: vms, snapshot: SnapshotView::of(&snap) })))
}
