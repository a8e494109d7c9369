//! Quick deploy, setup scripts, service specs, workspace services.
//!
//! A workspace's setup plan (template scripts, then the user's attached
//! scripts in `script_order`, then the attached service specs as systemd
//! units) is sent to its node at create and again before every start; the
//! guest agent runs it after each start (first-boot scripts once) and
//! reports per-script output and exit status, and the units' state.

use crate::auth::Auth;
use crate::error::{node_error, ApiError, ApiResult};
use crate::state::AppState;
use crate::views::{CreateWorkspaceRequest, MessageResponse, Vm};
use crate::workspaces::{create_workspace, load, start_workspace, NewWorkspace};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use rigbox_db::automation::{ServiceSpecRow, SetupScriptRow};
use rigbox_db::DbError;
use rigbox_node_api::guest::{RunOn, ServiceUnit, SetupPlan, SetupScript, SetupStatus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use utoipa::ToSchema;

/// Largest setup script accepted.
pub const MAX_SCRIPT_BYTES: usize = 64 * 1024;

/// Routes under `/api/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/setup-scripts", get(list_scripts).post(create_script))
        .route("/setup-scripts/{id}", get(get_script).put(update_script).delete(delete_script))
        .route("/service-specs", get(list_specs).post(create_spec))
        .route("/service-specs/{id}", get(get_spec).put(update_spec).delete(delete_spec))
        .route("/quick-deploy", post(quick_deploy))
        .route("/workspaces/{id}/services", get(services))
        .route("/workspaces/{id}/services/{name}", get(service))
        .route("/workspaces/{id}/setup", get(setup_status))
}

/// The reference's `SetupScriptResponse`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SetupScriptResponse {
    /// UUID.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Name.
    pub name: String,
    /// Shell script.
    pub content: String,
    /// `first_boot` or `every_start`.
    pub run_on: String,
    /// Order.
    pub script_order: i32,
    /// `user`.
    pub source: String,
    /// Creation.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
}

/// `{scripts}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SetupScriptsListResponse {
    /// Scripts.
    pub scripts: Vec<SetupScriptResponse>,
}

/// `POST /setup-scripts` and `PUT /setup-scripts/{id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupScriptRequest {
    /// Name.
    pub name: Option<String>,
    /// Shell script.
    pub content: Option<String>,
    /// `first_boot` (default) or `every_start`.
    pub run_on: Option<String>,
    /// Order (default 0).
    pub script_order: Option<i32>,
}

/// The reference's `ServiceSpecResponse`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceSpecResponse {
    /// UUID.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Name.
    pub name: String,
    /// Command line.
    pub exec_start: String,
    /// Environment.
    pub env_vars: BTreeMap<String, String>,
    /// `always`, `on-failure`, `no`.
    pub restart_policy: String,
    /// Started after the setup scripts.
    pub auto_enable: bool,
    /// `user`.
    pub source: String,
    /// The unit written into workspaces.
    pub systemd_unit_preview: String,
    /// Creation.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
}

/// `{services}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceSpecsListResponse {
    /// Specs.
    pub services: Vec<ServiceSpecResponse>,
}

/// `POST /service-specs` and `PUT /service-specs/{id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ServiceSpecRequest {
    /// Name: letters, digits, `-`, `_`.
    pub name: Option<String>,
    /// Command line (one line; run by `bash -lc`).
    pub exec_start: Option<String>,
    /// Environment.
    pub env_vars: Option<BTreeMap<String, String>>,
    /// `always`, `on-failure` (default), `no`.
    pub restart_policy: Option<String>,
    /// Start after the setup scripts.
    pub auto_enable: Option<bool>,
    /// An EnvironmentFile for the unit.
    pub environment_file: Option<String>,
    /// Accepted for compatibility; use setup scripts.
    pub setup_script: Option<String>,
}

fn script_view(s: &SetupScriptRow) -> SetupScriptResponse {
    SetupScriptResponse {
        id: s.id.clone(),
        user_id: s.user_id.clone(),
        name: s.name.clone(),
        content: s.content.clone(),
        run_on: s.run_on.clone(),
        script_order: i32::try_from(s.script_order).unwrap_or(0),
        source: s.source.clone(),
        created_at: s.created_at.to_rfc3339(),
        updated_at: s.updated_at.to_rfc3339(),
    }
}

fn spec_view(s: &ServiceSpecRow) -> ServiceSpecResponse {
    ServiceSpecResponse {
        id: s.id.clone(),
        user_id: s.user_id.clone(),
        name: s.name.clone(),
        exec_start: s.exec_start.clone(),
        env_vars: s.env_vars.clone(),
        restart_policy: s.restart_policy.clone(),
        auto_enable: s.auto_enable,
        source: s.source.clone(),
        systemd_unit_preview: unit_text(s),
        created_at: s.created_at.to_rfc3339(),
        updated_at: s.updated_at.to_rfc3339(),
    }
}

/// Quotes a value for a systemd unit (`$` and `%` are special there).
fn systemd_quote(v: &str) -> String {
    let escaped = v.replace('\\', "\\\\").replace('"', "\\\"").replace('$', "$$").replace('%', "%%");
    format!("\"{escaped}\"")
}

/// The unit `rigbox-svc-<name>.service` of a spec.
pub fn unit_text(s: &ServiceSpecRow) -> String {
    let mut u = format!(
        "[Unit]\nDescription=Rigbox service {name}\nAfter=network.target\n\n[Service]\nType=simple\nUser=developer\nGroup=developer\nWorkingDirectory=/home/developer\nEnvironmentFile=-/etc/rigbox/env\n",
        name = s.name
    );
    for (k, v) in &s.env_vars {
        u.push_str(&format!("Environment={}\n", systemd_quote(&format!("{k}={v}"))));
    }
    u.push_str(&format!("ExecStart=/bin/bash -lc {}\n", systemd_quote(&s.exec_start)));
    u.push_str(&format!("Restart={}\nRestartSec=1\n\n[Install]\nWantedBy=multi-user.target\n", s.restart_policy));
    u
}

fn valid_service_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn check_run_on(r: &str) -> ApiResult<()> {
    match r {
        "first_boot" | "every_start" => Ok(()),
        o => Err(ApiError::bad_request(format!("run_on must be first_boot or every_start, not {o:?}"))),
    }
}

fn check_content(c: &str) -> ApiResult<()> {
    if c.len() > MAX_SCRIPT_BYTES {
        return Err(ApiError::bad_request(format!("a script may be at most {MAX_SCRIPT_BYTES} bytes")));
    }
    if c.trim().is_empty() {
        return Err(ApiError::bad_request("the script is empty"));
    }
    Ok(())
}

fn not_found_or(e: DbError, what: &str) -> ApiError {
    match e {
        DbError::NotFound => ApiError::not_found(what),
        other => other.into(),
    }
}

async fn list_scripts(State(st): State<AppState>, auth: Auth) -> ApiResult<Json<SetupScriptsListResponse>> {
    Ok(Json(SetupScriptsListResponse { scripts: st.store().setup_scripts(&auth.user.id).await?.iter().map(script_view).collect() }))
}

async fn create_script(State(st): State<AppState>, auth: Auth, body: Result<Json<SetupScriptRequest>, JsonRejection>) -> ApiResult<(StatusCode, Json<SetupScriptResponse>)> {
    let Json(r) = body?;
    let name = r.name.filter(|n| !n.trim().is_empty()).ok_or_else(|| ApiError::bad_request("name is required"))?;
    let content = r.content.ok_or_else(|| ApiError::bad_request("content is required"))?;
    check_content(&content)?;
    let run_on = r.run_on.unwrap_or_else(|| "first_boot".into());
    check_run_on(&run_on)?;
    let now = Utc::now();
    let row = SetupScriptRow {
        id: uuid::Uuid::new_v4().to_string(),
        user_id: auth.user.id.clone(),
        name,
        content,
        run_on,
        script_order: i64::from(r.script_order.unwrap_or(0)),
        source: "user".into(),
        created_at: now,
        updated_at: now,
    };
    st.store().put_setup_script(&row).await?;
    Ok((StatusCode::CREATED, Json(script_view(&row))))
}

async fn get_script(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<SetupScriptResponse>> {
    let s = st.store().setup_script(&auth.user.id, &id).await.map_err(|e| not_found_or(e, "setup script"))?;
    Ok(Json(script_view(&s)))
}

async fn update_script(State(st): State<AppState>, auth: Auth, Path(id): Path<String>, body: Result<Json<SetupScriptRequest>, JsonRejection>) -> ApiResult<Json<SetupScriptResponse>> {
    let Json(r) = body?;
    let mut s = st.store().setup_script(&auth.user.id, &id).await.map_err(|e| not_found_or(e, "setup script"))?;
    if let Some(n) = r.name {
        if n.trim().is_empty() {
            return Err(ApiError::bad_request("name must not be empty"));
        }
        s.name = n;
    }
    if let Some(c) = r.content {
        check_content(&c)?;
        s.content = c;
    }
    if let Some(ro) = r.run_on {
        check_run_on(&ro)?;
        s.run_on = ro;
    }
    if let Some(o) = r.script_order {
        s.script_order = i64::from(o);
    }
    s.updated_at = Utc::now();
    st.store().put_setup_script(&s).await?;
    Ok(Json(script_view(&s)))
}

async fn delete_script(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<MessageResponse>> {
    st.store().delete_setup_script(&auth.user.id, &id).await.map_err(|e| not_found_or(e, "setup script"))?;
    Ok(Json(MessageResponse::new("Setup script deleted")))
}

fn check_spec(s: &ServiceSpecRow) -> ApiResult<()> {
    if !valid_service_name(&s.name) {
        return Err(ApiError::bad_request(format!(
            "invalid service name {:?}: use letters, digits, '-' and '_' (it becomes the unit rigbox-svc-<name>.service)",
            s.name
        )));
    }
    if s.exec_start.trim().is_empty() {
        return Err(ApiError::bad_request("exec_start is required"));
    }
    if s.exec_start.contains('\n') || s.exec_start.contains('\r') {
        return Err(ApiError::bad_request("exec_start must be a single line"));
    }
    if !matches!(s.restart_policy.as_str(), "always" | "on-failure" | "no") {
        return Err(ApiError::bad_request("restart_policy must be always, on-failure or no"));
    }
    for (k, v) in &s.env_vars {
        if k.is_empty() || k.starts_with(|c: char| c.is_ascii_digit()) || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ApiError::bad_request(format!("invalid environment variable name {k:?}")));
        }
        if v.contains('\n') {
            return Err(ApiError::bad_request(format!("the value of {k} must be a single line")));
        }
    }
    Ok(())
}

async fn list_specs(State(st): State<AppState>, auth: Auth) -> ApiResult<Json<ServiceSpecsListResponse>> {
    Ok(Json(ServiceSpecsListResponse { services: st.store().service_specs(&auth.user.id).await?.iter().map(spec_view).collect() }))
}

async fn create_spec(State(st): State<AppState>, auth: Auth, body: Result<Json<ServiceSpecRequest>, JsonRejection>) -> ApiResult<(StatusCode, Json<ServiceSpecResponse>)> {
    let Json(r) = body?;
    let now = Utc::now();
    let mut env = r.env_vars.unwrap_or_default();
    if let Some(f) = r.environment_file.filter(|f| !f.is_empty()) {
        env.insert("RIGBOX_ENVIRONMENT_FILE".into(), f);
    }
    let row = ServiceSpecRow {
        id: uuid::Uuid::new_v4().to_string(),
        user_id: auth.user.id.clone(),
        name: r.name.unwrap_or_default(),
        exec_start: r.exec_start.unwrap_or_default(),
        env_vars: env,
        restart_policy: r.restart_policy.unwrap_or_else(|| "on-failure".into()),
        auto_enable: r.auto_enable.unwrap_or(false),
        source: "user".into(),
        created_at: now,
        updated_at: now,
    };
    check_spec(&row)?;
    match st.store().put_service_spec(&row).await {
        Ok(()) => {}
        Err(DbError::Conflict(_)) => return Err(ApiError::new(StatusCode::CONFLICT, "name_taken", format!("a service spec named {:?} exists", row.name))),
        Err(e) => return Err(e.into()),
    }
    Ok((StatusCode::CREATED, Json(spec_view(&row))))
}

async fn get_spec(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<ServiceSpecResponse>> {
    let s = st.store().service_spec(&auth.user.id, &id).await.map_err(|e| not_found_or(e, "service spec"))?;
    Ok(Json(spec_view(&s)))
}

async fn update_spec(State(st): State<AppState>, auth: Auth, Path(id): Path<String>, body: Result<Json<ServiceSpecRequest>, JsonRejection>) -> ApiResult<Json<ServiceSpecResponse>> {
    let Json(r) = body?;
    let mut s = st.store().service_spec(&auth.user.id, &id).await.map_err(|e| not_found_or(e, "service spec"))?;
    if let Some(v) = r.name {
        s.name = v;
    }
    if let Some(v) = r.exec_start {
        s.exec_start = v;
    }
    if let Some(v) = r.env_vars {
        s.env_vars = v;
    }
    if let Some(v) = r.restart_policy {
        s.restart_policy = v;
    }
    if let Some(v) = r.auto_enable {
        s.auto_enable = v;
    }
    check_spec(&s)?;
    s.updated_at = Utc::now();
    match st.store().put_service_spec(&s).await {
        Ok(()) => {}
        Err(DbError::Conflict(_)) => return Err(ApiError::new(StatusCode::CONFLICT, "name_taken", format!("a service spec named {:?} exists", s.name))),
        Err(e) => return Err(e.into()),
    }
    Ok(Json(spec_view(&s)))
}

async fn delete_spec(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<MessageResponse>> {
    st.store().delete_service_spec(&auth.user.id, &id).await.map_err(|e| not_found_or(e, "service spec"))?;
    Ok(Json(MessageResponse::new("Service spec deleted")))
}

/// The setup plan of a workspace: template scripts, the user's scripts in
/// `script_order` (then attachment order), the service units. Unknown ids
/// are a 400.
/// With `strict`, unknown ids are a 400; otherwise they are skipped (a script
/// deleted after it was attached).
pub async fn plan_for(st: &AppState, user_id: &str, template: Option<&str>, script_ids: &[String], spec_ids: &[String], strict: bool) -> ApiResult<SetupPlan> {
    let mut scripts = Vec::new();
    if let Some(t) = template.and_then(|t| st.recipes().template(t).ok()) {
        for (i, s) in t.setup_scripts.iter().enumerate() {
            scripts.push(SetupScript {
                id: format!("tpl-{}-{i}", t.id),
                name: s.name.clone(),
                content: s.content.clone(),
                run_on: if s.run_on == "every_start" { RunOn::EveryStart } else { RunOn::FirstBoot },
            });
        }
    }
    let mut mine = Vec::new();
    for (pos, id) in script_ids.iter().enumerate() {
        let s = match st.store().setup_script(user_id, id).await {
            Ok(s) => s,
            Err(DbError::NotFound) if !strict => continue,
            Err(DbError::NotFound) => return Err(ApiError::bad_request(format!("unknown setup script {id}"))),
            Err(e) => return Err(e.into()),
        };
        mine.push((s.script_order, pos, s));
    }
    mine.sort_by_key(|(o, p, _)| (*o, *p));
    for (_, _, s) in mine {
        scripts.push(SetupScript {
            id: s.id.clone(),
            name: s.name.clone(),
            content: s.content.clone(),
            run_on: if s.run_on == "every_start" { RunOn::EveryStart } else { RunOn::FirstBoot },
        });
    }
    let mut services = Vec::new();
    for id in spec_ids {
        let s = match st.store().service_spec(user_id, id).await {
            Ok(s) => s,
            Err(DbError::NotFound) if !strict => continue,
            Err(DbError::NotFound) => return Err(ApiError::bad_request(format!("unknown service spec {id}"))),
            Err(e) => return Err(e.into()),
        };
        services.push(ServiceUnit { name: s.name.clone(), unit: unit_text(&s), auto_enable: s.auto_enable });
    }
    Ok(SetupPlan { scripts, services, is_start: true })
}

/// `POST /quick-deploy`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct QuickDeployRequest {
    /// Template.
    pub template_id: String,
    /// Name (default `<template>-<random>`).
    pub name: Option<String>,
    /// Memory.
    pub ram_mb: Option<i64>,
    /// vCPUs.
    pub vcpu_count: Option<i64>,
    /// Disk.
    pub disk_size_mb: Option<i64>,
    /// Environment.
    pub env_vars: Option<BTreeMap<String, String>>,
    /// Setup scripts.
    pub setup_script_ids: Option<Vec<String>>,
    /// Service specs.
    pub service_spec_ids: Option<Vec<String>>,
    /// Catalog apps (none are installable yet).
    #[serde(default)]
    pub catalog_ids: Vec<String>,
    /// Return only when the workspace runs and its setup finished (extension).
    #[serde(default)]
    pub wait: bool,
    /// Seconds to wait at most (default 600).
    pub wait_timeout: Option<u64>,
}

/// The reference's `QuickDeployResponse`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QuickDeployResponse {
    /// The workspace.
    pub workspace: Vm,
    /// What happened.
    pub message: String,
    /// Catalog apps installed.
    pub installed_apps: Vec<String>,
    /// Apps the template is expected to serve.
    #[schema(value_type = Vec<Object>)]
    pub expected_apps: Vec<serde_json::Value>,
    /// The setup run (with `wait`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub setup: Option<SetupStatus>,
}

async fn quick_deploy(State(st): State<AppState>, auth: Auth, body: Result<Json<QuickDeployRequest>, JsonRejection>) -> ApiResult<Json<QuickDeployResponse>> {
    let Json(r) = body?;
    if !r.catalog_ids.is_empty() {
        return Err(ApiError::bad_request("catalog apps are not available on this platform yet"));
    }
    let name = r.name.clone().unwrap_or_else(|| {
        let mut b = [0u8; 3];
        rand::Rng::fill(&mut rand::thread_rng(), &mut b[..]);
        format!("{}-{}", r.template_id, hex::encode(b))
    });
    let n = NewWorkspace::parse(
        &st,
        CreateWorkspaceRequest {
            name,
            template_id: Some(r.template_id.clone()),
            ram_mb: r.ram_mb,
            vcpu_count: r.vcpu_count,
            disk_size_mb: r.disk_size_mb,
            env_vars: r.env_vars.clone(),
            setup_script_ids: r.setup_script_ids.clone(),
            service_spec_ids: r.service_spec_ids.clone(),
            ..Default::default()
        },
    )?;
    let row = create_workspace(&st, &auth, n).await?;
    let row = match start_workspace(&st, row.clone()).await {
        Ok(r) => r,
        Err(e) => {
            let _ = crate::workspaces::delete_workspace(&st, &row).await;
            return Err(e);
        }
    };
    let mut setup = None;
    let mut w = row.clone();
    if r.wait {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(r.wait_timeout.unwrap_or(600).clamp(1, 3600));
        loop {
            w = st.store().workspace(&row.id).await?;
            if w.status == "running" {
                let client = st.nodes().client(&w.node_id)?;
                match client.setup_status(&w.id).await {
                    Ok(s) if s.state == "done" || (s.state == "none" && w.setup_script_ids.is_empty() && w.service_spec_ids.is_empty() && !has_template_scripts(&st, &w)) => {
                        setup = Some(s);
                        break;
                    }
                    Ok(_) | Err(_) => {}
                }
            }
            if w.status == "failed" {
                return Err(ApiError::new(StatusCode::BAD_GATEWAY, "boot_failed", format!("the workspace failed to start: {}", w.failure_reason.clone().unwrap_or_default())));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", format!("the workspace is still {} after the wait timeout", w.status)));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let expected_apps = st
        .recipes()
        .template(&r.template_id)
        .map(|t| t.expected_apps.iter().map(|a| serde_json::json!({"name": a.name, "port": a.port, "protocol": a.protocol, "status": "installing"})).collect())
        .unwrap_or_default();
    let message = if r.wait { "Workspace is running and its setup finished" } else { "Workspace is starting" };
    Ok(Json(QuickDeployResponse { workspace: Vm::from_row(&w), message: message.into(), installed_apps: vec![], expected_apps, setup }))
}

fn has_template_scripts(st: &AppState, w: &rigbox_db::WorkspaceRow) -> bool {
    w.template_id.as_deref().and_then(|t| st.recipes().template(t).ok()).is_some_and(|t| !t.setup_scripts.is_empty())
}

/// Asks the workspace's node to keep a warm snapshot of its template at its
/// memory and vCPUs (no-op when one exists or is being built). The snapshot's
/// disk is the template's floor: larger disks are grown after a restore.
pub fn warm_in_background(st: &AppState, w: &rigbox_db::WorkspaceRow) {
    let Some(t) = w.template_id.clone() else { return };
    let Ok(client) = st.nodes().client(&w.node_id) else { return };
    let floor = st.recipes().template(&t).map(|r| r.min_disk_mb).unwrap_or(w.disk_size_mb as u32);
    let req = rigbox_node_api::WarmRequest { ram_mb: w.ram_mb as u32, vcpus: w.vcpu_count as u32, disk_mb: floor.min(w.disk_size_mb as u32) };
    tokio::spawn(async move {
        if let Err(e) = client.warm_template(&t, &req).await {
            tracing::debug!(template = %t, "warming request failed: {e}");
        }
    });
}

/// One service as the reference's `WorkspaceService`.
fn service_view(w: &rigbox_db::WorkspaceRow, s: &rigbox_node_api::guest::ServiceState) -> serde_json::Value {
    let status = match s.active_state.as_str() {
        "active" => "healthy",
        "activating" | "reloading" => "installing",
        _ => "unhealthy",
    };
    serde_json::json!({
        "id": format!("{}-{}", w.id, s.name),
        "workspace_id": w.id,
        "name": s.name,
        "kind": "service_spec",
        "health_cmd": format!("systemctl is-active {}", s.unit),
        "status": status,
        "exposed": false,
        "port": null,
        "unit_name": s.unit,
        "source": "service_spec",
        "log_sources": [{"source_type": "systemd_unit", "source_ref": s.unit}],
        "active_state": s.active_state,
        "sub_state": s.sub_state,
        "restarts": s.restarts,
        "enabled": s.enabled,
        "created_at": w.created_at,
        "updated_at": Utc::now(),
    })
}

async fn live_setup(st: &AppState, w: &rigbox_db::WorkspaceRow) -> ApiResult<SetupStatus> {
    if w.status != "running" {
        return Ok(SetupStatus { state: "none".into(), ..Default::default() });
    }
    let client = st.nodes().client(&w.node_id)?;
    client.setup_status(&w.id).await.map_err(|e| node_error(e, "reading the setup status"))
}

async fn services(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    let w = load(&st, &auth, &id).await?;
    let s = live_setup(&st, &w).await?;
    let services: Vec<_> = s.services.iter().map(|x| service_view(&w, x)).collect();
    Ok(Json(serde_json::json!({ "services": services })))
}

async fn service(State(st): State<AppState>, auth: Auth, Path((id, name)): Path<(String, String)>) -> ApiResult<Json<serde_json::Value>> {
    let w = load(&st, &auth, &id).await?;
    let s = live_setup(&st, &w).await?;
    s.services.iter().find(|x| x.name == name).map(|x| Json(service_view(&w, x))).ok_or_else(|| ApiError::not_found("service"))
}

async fn setup_status(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<SetupStatus>> {
    let w = load(&st, &auth, &id).await?;
    Ok(Json(live_setup(&st, &w).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(exec: &str) -> ServiceSpecRow {
        ServiceSpecRow {
            id: "1".into(),
            user_id: "u".into(),
            name: "web".into(),
            exec_start: exec.into(),
            env_vars: BTreeMap::from([("GREETING".into(), "a \"b\" $c".into())]),
            restart_policy: "on-failure".into(),
            auto_enable: true,
            source: "user".into(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn units_quote_for_systemd() {
        let u = unit_text(&spec("python3 -m http.server 8000 --bind 0.0.0.0 && echo $HOME 100%"));
        assert!(u.contains("ExecStart=/bin/bash -lc \"python3 -m http.server 8000 --bind 0.0.0.0 && echo $$HOME 100%%\""), "{u}");
        assert!(u.contains("Environment=\"GREETING=a \\\"b\\\" $$c\""), "{u}");
        assert!(u.contains("Restart=on-failure") && u.contains("User=developer"));
    }

    #[test]
    fn specs_are_validated() {
        assert!(check_spec(&spec("ok")).is_ok());
        assert!(check_spec(&spec("two\nlines")).is_err());
        let mut s = spec("ok");
        s.name = "bad name".into();
        assert!(check_spec(&s).is_err());
        let mut s = spec("ok");
        s.restart_policy = "sometimes".into();
        assert!(check_spec(&s).is_err());
        assert!(check_content(&"x".repeat(MAX_SCRIPT_BYTES + 1)).is_err());
        assert!(check_run_on("first_boot").is_ok() && check_run_on("later").is_err());
    }
}
