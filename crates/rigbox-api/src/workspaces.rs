//! Workspaces: create, read, lifecycle (start, stop, cancel, retry,
//! delete), resources and environment.
//!
//! The control plane decides where a workspace runs (placement) and records
//! that it runs; the node agent does the work. Lifecycle calls return at once
//! with the new transient state (`starting`, `stopping`); the reconciler
//! ([`crate::reconcile`]) moves the record to the node's outcome.

use crate::auth::Auth;
use crate::error::{node_error, ApiError, ApiResult};
use crate::state::AppState;
use crate::views::*;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use axum::extract::rejection::JsonRejection;
use chrono::Utc;
use rigbox_db::{DbError, WorkspaceRow};
use rigbox_image::TemplateRecipe;
use rigbox_node_api::CreateWorkspace;
use rigbox_types::{validate_name, Event, IllegalTransition, WorkspaceState};
use std::collections::BTreeMap;

/// Default memory when a request gives none (the reference's `DEFAULT_RAM_MB`).
pub const DEFAULT_RAM_MB: i64 = 1024;

/// Routes under `/api/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/workspaces", get(list).post(create))
        .route("/workspaces/{id}", get(get_one).delete(delete))
        .route("/workspaces/{id}/start", post(start))
        .route("/workspaces/{id}/stop", post(stop))
        .route("/workspaces/{id}/cancel", post(cancel))
        .route("/workspaces/{id}/retry", post(retry))
        .route("/workspaces/{id}/resources", put(resize))
        .route("/workspaces/{id}/env", post(set_env))
}

/// The caller's workspace by id or name; another user's is a 404.
pub async fn load(st: &AppState, auth: &Auth, id: &str) -> ApiResult<WorkspaceRow> {
    match st.store().workspace_of_user(&auth.user.id, id).await {
        Ok(w) => Ok(w),
        Err(DbError::NotFound) => Err(ApiError::not_found("workspace")),
        Err(e) => Err(e.into()),
    }
}

fn state_of(w: &WorkspaceRow) -> ApiResult<WorkspaceState> {
    WorkspaceState::parse(&w.status).ok_or_else(|| ApiError::internal(format!("workspace {} has an unknown status {:?}", w.id, w.status)))
}

/// An illegal transition as the reference reports it: 400 for start/stop,
/// 409 for the others.
fn illegal(e: IllegalTransition) -> ApiError {
    match e.event {
        Event::Start | Event::Stop => ApiError::new(StatusCode::BAD_REQUEST, "invalid_state", e.to_string()),
        Event::Cancel => ApiError::new(StatusCode::CONFLICT, "not_cancellable", e.to_string()),
        Event::Retry => ApiError::new(StatusCode::CONFLICT, "not_retryable", e.to_string()),
        _ => ApiError::new(StatusCode::CONFLICT, "invalid_state", e.to_string()),
    }
}

fn template<'a>(st: &'a AppState, id: &str) -> ApiResult<&'a TemplateRecipe> {
    st.recipes()
        .template(id)
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "template_not_found", format!("template {id:?} not found")))
}

fn positive(v: Option<i64>, field: &str) -> ApiResult<Option<i64>> {
    match v {
        Some(x) if x < 0 => Err(ApiError::bad_request(format!("{field} must not be negative"))),
        Some(x) if x > i64::from(i32::MAX) => Err(ApiError::bad_request(format!("{field} is too large"))),
        other => Ok(other),
    }
}

/// Checks per-workspace and per-user quotas for a workspace of this size
/// (`existing`: the workspace being changed, not counted twice).
pub async fn check_quota(st: &AppState, user_id: &str, ram: i64, vcpu: i64, disk: i64, existing: Option<&WorkspaceRow>) -> ApiResult<()> {
    let l = &st.config().limits;
    if ram > i64::from(l.max_ram_per_workspace_mb) {
        return Err(ApiError::quota(format!("ram_mb {ram} exceeds the limit of {} MiB per workspace", l.max_ram_per_workspace_mb)));
    }
    if vcpu > i64::from(l.max_vcpu_per_workspace) {
        return Err(ApiError::quota(format!("vcpu_count {vcpu} exceeds the limit of {} per workspace", l.max_vcpu_per_workspace)));
    }
    let u = st.store().usage(user_id).await?;
    let (count, cur_ram, cur_disk) = match existing {
        Some(w) => (u.workspace_count - 1, u.total_ram_mb - w.ram_mb, u.total_disk_mb - w.disk_size_mb),
        None => (u.workspace_count, u.total_ram_mb, u.total_disk_mb),
    };
    if count + 1 > i64::from(l.max_workspaces) {
        return Err(ApiError::quota(format!("workspace limit reached ({} workspaces)", l.max_workspaces)));
    }
    if cur_ram + ram > i64::from(l.max_ram_total_mb) {
        return Err(ApiError::quota(format!(
            "total memory would be {} MiB, over the limit of {} MiB",
            cur_ram + ram,
            l.max_ram_total_mb
        )));
    }
    if cur_disk + disk > i64::from(l.max_disk_total_mb) {
        return Err(ApiError::quota(format!(
            "total disk would be {} MiB, over the limit of {} MiB",
            cur_disk + disk,
            l.max_disk_total_mb
        )));
    }
    Ok(())
}

async fn list(State(st): State<AppState>, auth: Auth) -> ApiResult<Json<ListWorkspacesResponse>> {
    let vms = st.store().workspaces_of_user(&auth.user.id).await?.iter().map(Vm::from_row).collect();
    Ok(Json(ListWorkspacesResponse { vms }))
}

async fn get_one(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<GetWorkspaceResponse>> {
    Ok(Json(GetWorkspaceResponse::from_row(&load(&st, &auth, &id).await?)))
}

/// Validated creation parameters.
#[derive(Debug, Clone)]
pub struct NewWorkspace {
    /// Name.
    pub name: String,
    /// Template.
    pub template: String,
    /// Memory.
    pub ram_mb: i64,
    /// vCPUs.
    pub vcpu_count: i64,
    /// Disk.
    pub disk_size_mb: i64,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Setup scripts.
    pub setup_script_ids: Vec<String>,
    /// Service specs.
    pub service_spec_ids: Vec<String>,
}

impl NewWorkspace {
    /// Parses a request: name rules, template, sizes raised to the floor.
    pub fn parse(st: &AppState, req: CreateWorkspaceRequest) -> ApiResult<Self> {
        validate_name(&req.name).map_err(|e| ApiError::bad_request(format!("invalid name {:?}: {e}", req.name)))?;
        let tid = req.template_id.or(req.image).unwrap_or_else(|| "base".into());
        let t = template(st, &tid)?;
        let ram = positive(req.ram_mb, "ram_mb")?.unwrap_or(DEFAULT_RAM_MB).max(i64::from(t.min_ram_mb));
        let vcpu = positive(req.vcpu_count, "vcpu_count")?.unwrap_or(1).max(i64::from(t.min_vcpu));
        let disk = positive(req.disk_size_mb, "disk_size_mb")?.unwrap_or(0).max(i64::from(t.min_disk_mb));
        let env = req.env_vars.unwrap_or_default();
        validate_env_names(env.keys())?;
        Ok(NewWorkspace {
            name: req.name,
            template: tid,
            ram_mb: ram,
            vcpu_count: vcpu,
            disk_size_mb: disk,
            env,
            setup_script_ids: req.setup_script_ids.unwrap_or_default(),
            service_spec_ids: req.service_spec_ids.unwrap_or_default(),
        })
    }
}

fn validate_env_names<'a>(mut names: impl Iterator<Item = &'a String>) -> ApiResult<()> {
    if let Some(bad) = names.find(|k| {
        k.is_empty() || k.starts_with(|c: char| c.is_ascii_digit()) || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    }) {
        return Err(ApiError::bad_request(format!("invalid environment variable name {bad:?}")));
    }
    Ok(())
}

/// Creates a workspace: quota, placement, row, disk on the node. Returns
/// the row in `provisioned`.
pub async fn create_workspace(st: &AppState, auth: &Auth, n: NewWorkspace) -> ApiResult<WorkspaceRow> {
    check_quota(st, &auth.user.id, n.ram_mb, n.vcpu_count, n.disk_size_mb, None).await?;
    let setup = crate::automation::plan_for(st, &auth.user.id, Some(&n.template), &n.setup_script_ids, &n.service_spec_ids, true).await?;
    let (node_id, client) = st.nodes().place(&n.template, n.ram_mb as u32)?;
    let now = Utc::now();
    let mut row = WorkspaceRow {
        id: rigbox_types::new_workspace_id(),
        user_id: auth.user.id.clone(),
        node_id,
        name: n.name.clone(),
        status: WorkspaceState::Provisioning.to_string(),
        image: n.template.clone(),
        template_id: Some(n.template.clone()),
        ram_mb: n.ram_mb,
        vcpu_count: n.vcpu_count,
        disk_size_mb: n.disk_size_mb,
        env_vars: n.env.clone(),
        setup_script_ids: n.setup_script_ids,
        service_spec_ids: n.service_spec_ids,
        ai_mode: None,
        failure_code: None,
        failure_reason: None,
        failure_at: None,
        creation_attempts: 0,
        creation_started_at: None,
        created_at: now,
        updated_at: now,
    };
    match st.store().create_workspace(&row).await {
        Ok(()) => {}
        Err(DbError::Conflict(_)) => {
            return Err(ApiError::new(StatusCode::CONFLICT, "name_taken", format!("a workspace named {:?} already exists", n.name)))
        }
        Err(e) => return Err(e.into()),
    }
    let spec = CreateWorkspace {
        template: n.template.clone(),
        vcpus: n.vcpu_count as u32,
        ram_mb: n.ram_mb as u32,
        disk_mb: n.disk_size_mb as u32,
        hostname: n.name.clone(),
        env: n.env,
        authorized_keys: crate::ssh::authorized_keys_of(st, &auth.user.id).await,
        metadata: serde_json::json!({ "name": n.name, "user_id": auth.user.id, "created_at": now }),
        setup,
        cold_boot: false,
    };
    if let Err(e) = client.create(&row.id, &spec).await {
        let _ = st.store().delete_workspace(&row.id).await;
        return Err(node_error(e, "creating the workspace"));
    }
    row.status = WorkspaceState::Provisioned.to_string();
    row.updated_at = Utc::now();
    st.store().update_workspace(&row).await?;
    tracing::info!(workspace = %row.id, user = %auth.user.email, "workspace created");
    Ok(row)
}

async fn create(
    State(st): State<AppState>,
    auth: Auth,
    body: Result<Json<CreateWorkspaceRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<GetWorkspaceResponse>)> {
    let Json(req) = body?;
    let n = NewWorkspace::parse(&st, req)?;
    let row = create_workspace(&st, &auth, n).await?;
    Ok((StatusCode::CREATED, Json(GetWorkspaceResponse::from_row(&row))))
}

/// Boots a workspace (provisioned, stopped).
pub async fn start_workspace(st: &AppState, mut w: WorkspaceRow) -> ApiResult<WorkspaceRow> {
    let state = state_of(&w)?;
    state.apply(Event::Start).map_err(illegal)?;
    if let Some(tid) = w.template_id.clone() {
        // Raise to the template's floor before booting (as the reference does).
        if let Ok(t) = st.recipes().template(&tid) {
            let (ram, vcpu) = (w.ram_mb.max(i64::from(t.min_ram_mb)), w.vcpu_count.max(i64::from(t.min_vcpu)));
            if (ram, vcpu) != (w.ram_mb, w.vcpu_count) {
                let client = st.nodes().client(&w.node_id)?;
                client
                    .resize(&w.id, &rigbox_node_api::Resources { ram_mb: Some(ram as u32), vcpus: Some(vcpu as u32), disk_mb: None })
                    .await
                    .map_err(|e| node_error(e, "raising resources"))?;
                w.ram_mb = ram;
                w.vcpu_count = vcpu;
            }
        }
    }
    let usage = st.store().usage(&w.user_id).await?;
    let max = i64::from(st.config().limits.max_running_vcpus);
    if usage.running_vcpus + w.vcpu_count > max {
        return Err(ApiError::quota(format!("running vCPUs would exceed the limit of {max}")));
    }
    let client = st.nodes().client(&w.node_id)?;
    // Scripts and specs may have changed since the last start: send the current plan.
    let plan = crate::automation::plan_for(st, &w.user_id, w.template_id.as_deref(), &w.setup_script_ids, &w.service_spec_ids, false).await?;
    client.set_setup(&w.id, &plan).await.map_err(|e| node_error(e, "sending the setup plan"))?;
    if !st.store().set_workspace_status(&w.id, &w.status, WorkspaceState::Starting.as_str()).await? {
        return Err(ApiError::conflict("the workspace changed state meanwhile; try again"));
    }
    let previous = w.status.clone();
    w.status = WorkspaceState::Starting.to_string();
    w.creation_attempts += 1;
    w.creation_started_at = Some(Utc::now());
    w.failure_code = None;
    w.failure_reason = None;
    w.failure_at = None;
    w.updated_at = Utc::now();
    st.store().update_workspace(&w).await?;
    if let Err(e) = client.start(&w.id).await {
        w.status = previous;
        w.updated_at = Utc::now();
        st.store().update_workspace(&w).await?;
        return Err(node_error(e, "starting the workspace"));
    }
    Ok(w)
}

async fn start(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<GetWorkspaceResponse>> {
    let w = load(&st, &auth, &id).await?;
    let w = start_workspace(&st, w).await?;
    Ok(Json(GetWorkspaceResponse::from_row(&w)))
}

/// Stops a running workspace.
pub async fn stop_workspace(st: &AppState, mut w: WorkspaceRow) -> ApiResult<WorkspaceRow> {
    let next = state_of(&w)?.apply(Event::Stop).map_err(illegal)?;
    let client = st.nodes().client(&w.node_id)?;
    if !st.store().set_workspace_status(&w.id, &w.status, next.as_str()).await? {
        return Err(ApiError::conflict("the workspace changed state meanwhile; try again"));
    }
    let previous = std::mem::replace(&mut w.status, next.to_string());
    if let Err(e) = client.stop(&w.id, false).await {
        st.store().set_workspace_status(&w.id, next.as_str(), &previous).await?;
        return Err(node_error(e, "stopping the workspace"));
    }
    Ok(st.store().workspace(&w.id).await?)
}

async fn stop(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<GetWorkspaceResponse>> {
    let w = load(&st, &auth, &id).await?;
    let w = stop_workspace(&st, w).await?;
    Ok(Json(GetWorkspaceResponse::from_row(&w)))
}

async fn cancel(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<GetWorkspaceResponse>> {
    let mut w = load(&st, &auth, &id).await?;
    state_of(&w)?.apply(Event::Cancel).map_err(illegal)?;
    let client = st.nodes().client(&w.node_id)?;
    let s = client.cancel(&w.id).await.map_err(|e| node_error(e, "cancelling the boot"))?;
    w.status = s.state.to_string();
    w.updated_at = Utc::now();
    st.store().update_workspace(&w).await?;
    Ok(Json(GetWorkspaceResponse::from_row(&w)))
}

async fn retry(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<GetWorkspaceResponse>> {
    let mut w = load(&st, &auth, &id).await?;
    state_of(&w)?.apply(Event::Retry).map_err(illegal)?;
    check_quota(&st, &w.user_id, w.ram_mb, w.vcpu_count, w.disk_size_mb, Some(&w)).await?;
    let client = st.nodes().client(&w.node_id)?;
    w.status = WorkspaceState::Provisioning.to_string();
    w.updated_at = Utc::now();
    st.store().update_workspace(&w).await?;
    match client.start(&w.id).await {
        Ok(_) => {
            w.status = WorkspaceState::Starting.to_string();
            w.creation_attempts += 1;
            w.creation_started_at = Some(Utc::now());
            w.failure_code = None;
            w.failure_reason = None;
            w.failure_at = None;
        }
        Err(e) => {
            w.status = WorkspaceState::Failed.to_string();
            w.failure_code = Some("retry_failed".into());
            w.failure_reason = Some(e.to_string());
            w.failure_at = Some(Utc::now());
        }
    }
    w.updated_at = Utc::now();
    st.store().update_workspace(&w).await?;
    Ok(Json(GetWorkspaceResponse::from_row(&w)))
}

/// Deletes a workspace everywhere. When the node cannot be reached the row
/// stays `deleting` and the reconciler finishes the job.
pub async fn delete_workspace(st: &AppState, w: &WorkspaceRow) -> ApiResult<bool> {
    let next = state_of(w)?.apply(Event::Delete).map_err(illegal)?;
    st.store().set_workspace_status(&w.id, &w.status, next.as_str()).await?;
    finish_delete(st, &w.id, &w.node_id).await
}

/// Deletes on the node, then the row. Ok(false) when the node was unreachable.
pub async fn finish_delete(st: &AppState, id: &str, node_id: &str) -> ApiResult<bool> {
    let client = st.nodes().client(node_id)?;
    match client.delete(id).await {
        Ok(()) => {}
        Err(rigbox_node_api::NodeClientError::Api { status: 404, .. }) => {}
        Err(rigbox_node_api::NodeClientError::Transport(m)) => {
            tracing::warn!(workspace = id, "node unreachable during delete ({m}); will retry");
            return Ok(false);
        }
        Err(e) => return Err(node_error(e, "deleting the workspace")),
    }
    // Its snapshots go too, except those still backing another workspace's disk.
    for s in st.store().snapshots_of_workspace(id).await.unwrap_or_default() {
        if let Err(e) = crate::snapshots::remove_snapshot(st, &s).await {
            tracing::info!(snapshot = %s.id, "kept a snapshot of a deleted workspace: {}", e.message);
        }
    }
    st.store().delete_workspace(id).await?;
    tracing::info!(workspace = id, "workspace deleted");
    Ok(true)
}

async fn delete(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<MessageResponse>> {
    let w = load(&st, &auth, &id).await?;
    let done = delete_workspace(&st, &w).await?;
    Ok(Json(MessageResponse::new(if done { "Workspace deleted" } else { "Workspace is being deleted" })))
}

async fn resize(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<ResizeWorkspaceRequest>, JsonRejection>,
) -> ApiResult<Json<ResizeWorkspaceResponse>> {
    let Json(req) = body?;
    let mut w = load(&st, &auth, &id).await?;
    let state = state_of(&w)?;
    if !matches!(state, WorkspaceState::Stopped | WorkspaceState::Provisioned) {
        return Err(ApiError::new(StatusCode::CONFLICT, "invalid_state", format!("resources can only change while the workspace is stopped (it is {state})")));
    }
    let floor = w.template_id.as_deref().and_then(|t| st.recipes().template(t).ok()).cloned();
    let ram = positive(req.ram_mb, "ram_mb")?.map(|r| r.max(floor.as_ref().map_or(128, |t| i64::from(t.min_ram_mb))));
    let vcpu = positive(req.vcpu_count, "vcpu_count")?.map(|v| v.max(floor.as_ref().map_or(1, |t| i64::from(t.min_vcpu))));
    let disk = positive(req.disk_size_mb, "disk_size_mb")?;
    if let Some(d) = disk {
        if d < w.disk_size_mb {
            return Err(ApiError::bad_request(format!("the disk cannot shrink (it is {} MiB)", w.disk_size_mb)));
        }
    }
    let (nr, nv, nd) = (ram.unwrap_or(w.ram_mb), vcpu.unwrap_or(w.vcpu_count), disk.unwrap_or(w.disk_size_mb));
    check_quota(&st, &w.user_id, nr, nv, nd, Some(&w)).await?;
    let client = st.nodes().client(&w.node_id)?;
    client
        .resize(&w.id, &rigbox_node_api::Resources { ram_mb: Some(nr as u32), vcpus: Some(nv as u32), disk_mb: Some(nd as u32) })
        .await
        .map_err(|e| node_error(e, "resizing"))?;
    w.ram_mb = nr;
    w.vcpu_count = nv;
    w.disk_size_mb = nd;
    w.updated_at = Utc::now();
    st.store().update_workspace(&w).await?;
    Ok(Json(ResizeWorkspaceResponse { message: "Resources updated; they apply on the next start".into(), vm: Vm::from_row(&w) }))
}

async fn set_env(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<UpdateWorkspaceEnvRequest>, JsonRejection>,
) -> ApiResult<Json<MessageResponse>> {
    let Json(req) = body?;
    validate_env_names(req.env_vars.keys())?;
    let mut w = load(&st, &auth, &id).await?;
    for (k, v) in req.env_vars {
        match v {
            Some(v) => {
                w.env_vars.insert(k, v);
            }
            None => {
                w.env_vars.remove(&k);
            }
        }
    }
    let client = st.nodes().client(&w.node_id)?;
    client.set_env(&w.id, &w.env_vars).await.map_err(|e| node_error(e, "applying the environment"))?;
    w.updated_at = Utc::now();
    st.store().update_workspace(&w).await?;
    let live = if w.status == "running" { " and applied to the running workspace" } else { "" };
    Ok(Json(MessageResponse::new(format!("Environment updated{live}"))))
}
