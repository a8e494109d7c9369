//! Templates, limits, capacity.

use crate::auth::Auth;
use crate::error::ApiResult;
use crate::state::AppState;
use crate::views::*;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

/// Routes under `/api/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/templates", get(templates))
        .route("/users/me/limits", get(limits))
        .route("/capacity", get(capacity))
}

/// The view of every template.
pub fn template_views(st: &AppState) -> Vec<WorkspaceTemplate> {
    st.recipes()
        .templates()
        .map(|t| WorkspaceTemplate {
            id: t.id.clone(),
            name: t.name.clone(),
            description: t.description.clone(),
            icon: "box".into(),
            image: t.id.clone(),
            ram_mb: t.min_ram_mb as i32,
            vcpu_count: t.min_vcpu as i32,
            disk_size_mb: t.min_disk_mb as i32,
            category: if t.id == "base" { "general".into() } else { "development".into() },
            default_log_sources: vec![],
            expected_apps: t
                .expected_apps
                .iter()
                .map(|a| TemplateExpectedApp { name: a.name.clone(), port: i32::from(a.port), system_tags: vec![], protocol: a.protocol.clone(), managed: true })
                .collect(),
            workspace_services: t
                .services
                .iter()
                .map(|s| WorkspaceServiceSpec {
                    name: s.name.clone(),
                    kind: s.kind.clone(),
                    health_cmd: s.health_cmd.clone(),
                    port: s.port.map(i32::from),
                    unit_name: Some(s.unit.clone()),
                })
                .collect(),
            verify_binaries: t.verify.clone(),
            has_tools: false,
            managed_ai_config: true,
            image_bound: false,
            coming_soon: false,
        })
        .collect()
}

async fn templates(State(st): State<AppState>) -> Json<TemplatesResponse> {
    Json(TemplatesResponse { templates: template_views(&st) })
}

async fn limits(State(st): State<AppState>, auth: Auth) -> ApiResult<Json<GetUserLimitsResponse>> {
    let l = &st.config().limits;
    let u = st.store().usage(&auth.user.id).await?;
    let c = |v: i64| i32::try_from(v).unwrap_or(i32::MAX);
    Ok(Json(GetUserLimitsResponse {
        plan: "self-hosted".into(),
        custom: false,
        limits: EffectiveLimits {
            max_vms: l.max_workspaces as i32,
            max_ram_per_vm_mb: l.max_ram_per_workspace_mb as i32,
            max_ram_total_mb: l.max_ram_total_mb as i32,
            max_disk_total_mb: l.max_disk_total_mb as i32,
            max_vcpu_per_vm: l.max_vcpu_per_workspace as i32,
            max_running_vcpus: l.max_running_vcpus as i32,
        },
        usage: LimitsUsage {
            workspace_count: c(u.workspace_count),
            running_vcpus: c(u.running_vcpus),
            total_disk_mb: c(u.total_disk_mb),
            total_ram_mb: c(u.total_ram_mb),
        },
    }))
}

async fn capacity(State(st): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let mut total = 0u64;
    let mut used = 0u64;
    for (_, c) in st.nodes().all() {
        if let Ok(info) = c.info().await {
            // Slots: how many 512 MiB workspaces the node's memory holds.
            total += info.capacity.ram_mb / 512;
            used += info.committed.ram_mb / 512;
        }
    }
    Ok(Json(serde_json::json!({ "available": used < total, "total": total, "used": used })))
}
