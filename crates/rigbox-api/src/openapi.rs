//! The OpenAPI document, generated from the code: schemas from the request
//! and response types (utoipa), operations from [`OPERATIONS`], the table of
//! every route this API serves with its request and response schemas.

use axum::Json;
use serde_json::{json, Value};
use utoipa::OpenApi;

/// Schemas of the API's types.
#[derive(OpenApi)]
#[openapi(
    info(title = "Rigbox API", description = "Self-hosted Rigbox: workspaces in micro-VMs", version = "1.0.0"),
    components(schemas(
        crate::views::Vm,
        crate::views::WorkspaceFailure,
        crate::views::GetWorkspaceResponse,
        crate::views::ListWorkspacesResponse,
        crate::views::CreateWorkspaceRequest,
        crate::views::ResizeWorkspaceRequest,
        crate::views::ResizeWorkspaceResponse,
        crate::views::UpdateWorkspaceEnvRequest,
        crate::views::MessageResponse,
        crate::views::ApiKeyView,
        crate::views::ListApiKeysResponse,
        crate::views::CreateApiKeyRequest,
        crate::views::CreateApiKeyResponse,
        crate::views::UserView,
        crate::views::CreateUserRequest,
        crate::views::CreateUserResponse,
        crate::views::ExecRequest,
        crate::views::ExecResponse,
        crate::views::WorkspaceTemplate,
        crate::views::TemplatesResponse,
        crate::views::GetUserLimitsResponse,
        crate::views::EffectiveLimits,
        crate::views::LimitsUsage,
        crate::error::ApiErrorBody,
        crate::error::ApiErrorDetail,
        crate::snapshots::SnapshotView,
        crate::snapshots::ListSnapshotsResponse,
        crate::snapshots::CreateSnapshotResponse,
        crate::snapshots::CreateSnapshotRequest,
        crate::snapshots::RestoreSnapshotResponse,
        crate::snapshots::ForkWorkspaceRequest,
        crate::snapshots::ForkWorkspaceResponse,
        crate::automation::SetupScriptResponse,
        crate::automation::SetupScriptsListResponse,
        crate::automation::SetupScriptRequest,
        crate::automation::ServiceSpecResponse,
        crate::automation::ServiceSpecsListResponse,
        crate::automation::ServiceSpecRequest,
        crate::automation::QuickDeployRequest,
        crate::automation::QuickDeployResponse,
    ))
)]
pub struct ApiDoc;

/// One operation: method, path under `/api/v1`, id, tag, request schema,
/// success status and response schema (`None`: JSON object or a stream).
pub struct Op(pub &'static str, pub &'static str, pub &'static str, pub &'static str, pub Option<&'static str>, pub u16, pub Option<&'static str>);

/// Every route of the public API.
pub const OPERATIONS: &[Op] = &[
    Op("get", "/workspaces", "list_vms", "Workspaces", None, 200, Some("ListWorkspacesResponse")),
    Op("post", "/workspaces", "create_vm", "Workspaces", Some("CreateWorkspaceRequest"), 201, Some("GetWorkspaceResponse")),
    Op("get", "/workspaces/{id}", "get_vm", "Workspaces", None, 200, Some("GetWorkspaceResponse")),
    Op("delete", "/workspaces/{id}", "delete_vm", "Workspaces", None, 200, Some("MessageResponse")),
    Op("post", "/workspaces/{id}/start", "start_vm", "Workspaces", None, 200, Some("GetWorkspaceResponse")),
    Op("post", "/workspaces/{id}/stop", "stop_vm", "Workspaces", None, 200, Some("GetWorkspaceResponse")),
    Op("post", "/workspaces/{id}/cancel", "cancel_vm", "Workspaces", None, 200, Some("GetWorkspaceResponse")),
    Op("post", "/workspaces/{id}/retry", "retry_vm", "Workspaces", None, 200, Some("GetWorkspaceResponse")),
    Op("put", "/workspaces/{id}/resources", "update_workspace_resources", "Workspaces", Some("ResizeWorkspaceRequest"), 200, Some("ResizeWorkspaceResponse")),
    Op("post", "/workspaces/{id}/env", "update_workspace_env", "Workspaces", Some("UpdateWorkspaceEnvRequest"), 200, Some("MessageResponse")),
    Op("post", "/workspaces/{id}/exec", "exec", "Exec and files", Some("ExecRequest"), 200, Some("ExecResponse")),
    Op("post", "/workspaces/{id}/exec/stream", "exec_stream", "Exec and files", Some("ExecRequest"), 200, None),
    Op("get", "/workspaces/{id}/files", "download_file", "Exec and files", None, 200, None),
    Op("put", "/workspaces/{id}/files", "upload_file", "Exec and files", None, 200, None),
    Op("get", "/workspaces/{id}/files/list", "list_files", "Exec and files", None, 200, None),
    Op("get", "/workspaces/{id}/files/stat", "stat_file", "Exec and files", None, 200, None),
    Op("get", "/workspaces/{id}/snapshots", "list_workspace_snapshots", "Snapshots", None, 200, Some("ListSnapshotsResponse")),
    Op("post", "/workspaces/{id}/snapshots", "create_workspace_snapshot", "Snapshots", Some("CreateSnapshotRequest"), 201, Some("CreateSnapshotResponse")),
    Op("delete", "/workspaces/{id}/snapshots/{snapshot_id}", "delete_workspace_snapshot", "Snapshots", None, 200, Some("MessageResponse")),
    Op("post", "/workspaces/{id}/snapshots/{snapshot_id}/restore", "restore_workspace_snapshot", "Snapshots", None, 200, Some("RestoreSnapshotResponse")),
    Op("get", "/snapshots", "list_user_snapshots", "Snapshots", None, 200, Some("ListSnapshotsResponse")),
    Op("delete", "/snapshots/{snapshot_id}", "delete_user_snapshot", "Snapshots", None, 200, Some("MessageResponse")),
    Op("post", "/snapshots/{snapshot_id}/restore", "restore_user_snapshot", "Snapshots", None, 200, Some("RestoreSnapshotResponse")),
    Op("post", "/workspaces/{id}/pause", "pause_vm", "Snapshots", None, 200, Some("GetWorkspaceResponse")),
    Op("post", "/workspaces/{id}/resume", "resume_vm", "Snapshots", None, 200, Some("GetWorkspaceResponse")),
    Op("post", "/workspaces/{id}/fork", "fork_vm", "Snapshots", Some("ForkWorkspaceRequest"), 201, Some("ForkWorkspaceResponse")),
    Op("get", "/templates", "list_templates", "Templates", None, 200, Some("TemplatesResponse")),
    Op("post", "/quick-deploy", "quick_deploy", "Templates", Some("QuickDeployRequest"), 200, Some("QuickDeployResponse")),
    Op("get", "/setup-scripts", "list_setup_scripts", "Setup Scripts", None, 200, Some("SetupScriptsListResponse")),
    Op("post", "/setup-scripts", "create_setup_script", "Setup Scripts", Some("SetupScriptRequest"), 201, Some("SetupScriptResponse")),
    Op("get", "/setup-scripts/{id}", "get_setup_script", "Setup Scripts", None, 200, Some("SetupScriptResponse")),
    Op("put", "/setup-scripts/{id}", "update_setup_script", "Setup Scripts", Some("SetupScriptRequest"), 200, Some("SetupScriptResponse")),
    Op("delete", "/setup-scripts/{id}", "delete_setup_script", "Setup Scripts", None, 200, Some("MessageResponse")),
    Op("get", "/service-specs", "list_service_specs", "Service Specs", None, 200, Some("ServiceSpecsListResponse")),
    Op("post", "/service-specs", "create_service_spec", "Service Specs", Some("ServiceSpecRequest"), 201, Some("ServiceSpecResponse")),
    Op("get", "/service-specs/{id}", "get_service_spec", "Service Specs", None, 200, Some("ServiceSpecResponse")),
    Op("put", "/service-specs/{id}", "update_service_spec", "Service Specs", Some("ServiceSpecRequest"), 200, Some("ServiceSpecResponse")),
    Op("delete", "/service-specs/{id}", "delete_service_spec", "Service Specs", None, 200, Some("MessageResponse")),
    Op("get", "/workspaces/{id}/services", "list_services", "Workspace Services", None, 200, None),
    Op("get", "/workspaces/{id}/services/{name}", "get_service", "Workspace Services", None, 200, None),
    Op("get", "/workspaces/{id}/setup", "get_setup_status", "Workspace Services", None, 200, None),
    Op("get", "/workspaces/{id}/tools", "list_tools", "Tools", None, 200, None),
    Op("get", "/workspaces/{id}/tools/{tool}/status", "get_tool_status", "Tools", None, 200, None),
    Op("post", "/workspaces/{id}/tools/{tool}/install", "install_tool", "Tools", None, 200, None),
    Op("get", "/workspaces/{id}/tools/{tool}/install-status", "get_tool_install_status", "Tools", None, 200, None),
    Op("post", "/workspaces/{id}/tools/{tool}/launch", "launch_tool", "Tools", None, 200, None),
    Op("post", "/workspaces/{id}/tools/{tool}/stop", "stop_tool", "Tools", None, 200, None),
    Op("get", "/api-keys", "list_api_keys", "API Keys", None, 200, Some("ListApiKeysResponse")),
    Op("post", "/api-keys", "create_api_key", "API Keys", Some("CreateApiKeyRequest"), 201, Some("CreateApiKeyResponse")),
    Op("delete", "/api-keys/{id}", "delete_api_key", "API Keys", None, 200, Some("MessageResponse")),
    Op("get", "/users/me", "get_me", "Account", None, 200, Some("UserView")),
    Op("get", "/users/me/limits", "get_user_limits", "Account", None, 200, Some("GetUserLimitsResponse")),
    Op("get", "/capacity", "get_capacity", "System", None, 200, None),
    Op("get", "/admin/users", "list_users", "Admin", None, 200, None),
    Op("post", "/admin/users", "create_user", "Admin", Some("CreateUserRequest"), 201, Some("CreateUserResponse")),
    Op("post", "/admin/users/{id}/api-keys", "admin_create_api_key", "Admin", None, 201, Some("CreateApiKeyResponse")),
    Op("get", "/admin/nodes", "list_nodes", "Admin", None, 200, None),
    Op("post", "/admin/nodes", "register_node", "Admin", None, 201, None),
    Op("get", "/ssh-keys", "list_ssh_keys", "SSH Keys", None, 200, None),
    Op("post", "/ssh-keys", "add_ssh_key", "SSH Keys", None, 201, None),
    Op("delete", "/ssh-keys/{id}", "delete_ssh_key", "SSH Keys", None, 200, Some("MessageResponse")),
    Op("get", "/workspaces/{id}/ssh-keys", "list_workspace_ssh_keys", "SSH Keys", None, 200, None),
    Op("post", "/workspaces/{id}/ssh-keys/sync", "sync_workspace_ssh_keys", "SSH Keys", None, 200, None),
    Op("get", "/workspaces/{id}/ssh-info", "get_ssh_info", "SSH Keys", None, 200, None),
    Op("get", "/workspaces/{id}/terminal", "open_terminal", "Terminal", None, 101, None),
    Op("post", "/workspaces/{id}/terminal/token", "create_terminal_token", "Terminal", None, 200, None),
    Op("get", "/apps", "list_apps", "Apps", None, 200, None),
    Op("post", "/apps", "create_app", "Apps", None, 201, None),
    Op("get", "/apps/{id}", "get_app", "Apps", None, 200, None),
    Op("patch", "/apps/{id}", "update_app", "Apps", None, 200, None),
    Op("delete", "/apps/{id}", "delete_app", "Apps", None, 200, Some("MessageResponse")),
    Op("post", "/apps/{id}/start", "start_app_service", "Apps", None, 200, None),
    Op("post", "/apps/{id}/stop", "stop_app_service", "Apps", None, 200, None),
    Op("post", "/apps/{id}/restart", "restart_app_service", "Apps", None, 200, None),
    Op("get", "/apps/{id}/health", "check_app_health", "Apps", None, 200, None),
    Op("put", "/apps/{id}/visibility", "update_app_visibility", "Apps", None, 200, None),
    Op("get", "/apps/{id}/metrics", "get_app_metrics", "Apps", None, 200, None),
    Op("get", "/apps/{id}/metrics/summary", "get_app_metrics_summary", "Apps", None, 200, None),
    Op("get", "/workspaces/{id}/listening-ports", "get_listening_ports", "Apps", None, 200, None),
    Op("post", "/workspaces/{id}/expose-port", "expose_port", "Apps", None, 200, None),
    Op("get", "/workspaces/{id}/metrics", "get_workspace_metrics", "Metrics", None, 200, None),
    Op("get", "/workspaces/{id}/metrics/series", "get_workspace_metrics_series", "Metrics", None, 200, None),
    Op("get", "/workspaces/{id}/metrics/summary", "get_workspace_metrics_summary", "Metrics", None, 200, None),
    Op("get", "/workspaces/{id}/metrics/stream", "stream_workspace_metrics", "Metrics", None, 200, None),
    Op("get", "/workspaces/{id}/logs", "get_workspace_logs", "Logs", None, 200, None),
    Op("get", "/workspaces/{id}/logs/stream", "stream_workspace_logs", "Logs", None, 200, None),
    Op("get", "/users/me/credits", "get_ai_credits", "AI", None, 200, None),
    Op("get", "/users/me/ai-usage", "get_ai_usage", "AI", None, 200, None),
    Op("get", "/workspaces/{id}/ai-config", "get_workspace_ai_config", "AI", None, 200, None),
    Op("put", "/workspaces/{id}/ai-config", "update_workspace_ai_config", "AI", None, 200, None),
    Op("get", "/users/me/ai-ledger", "get_ai_ledger", "AI", None, 200, None),
    Op("put", "/users/me/ai-mode", "update_ai_mode", "AI", None, 200, None),
    Op("get", "/users/me/ai-defaults", "get_user_ai_defaults", "AI", None, 200, None),
    Op("put", "/users/me/ai-defaults", "update_user_ai_defaults", "AI", None, 200, None),
    Op("get", "/users/me/ai-usage/metrics", "get_account_ai_usage_metrics", "AI", None, 200, None),
    Op("get", "/users/me/ai-usage/metrics/summary", "get_account_ai_usage_metrics_summary", "AI", None, 200, None),
    Op("get", "/workspaces/{id}/ai-usage/metrics", "get_workspace_ai_usage_metrics", "Workspaces", None, 200, None),
    Op("get", "/workspaces/{id}/ai-usage/metrics/summary", "get_workspace_ai_usage_metrics_summary", "Workspaces", None, 200, None),
    Op("get", "/workspaces/{id}/mode", "get_workspace_ai_mode", "AI", None, 200, None),
    Op("put", "/workspaces/{id}/mode", "update_workspace_ai_mode", "AI", None, 200, None),
    Op("get", "/admin/users/{id}/credits", "admin_get_credits", "Admin", None, 200, None),
    Op("post", "/admin/users/{id}/credits", "admin_grant_credits", "Admin", None, 200, None),
    Op("get", "/admin/ai/providers", "admin_list_ai_providers", "Admin", None, 200, None),
    Op("put", "/admin/ai/providers/{provider}", "admin_set_ai_provider", "Admin", None, 200, None),
    Op("get", "/admin/ai/prices", "admin_get_ai_prices", "Admin", None, 200, None),
    Op("put", "/admin/ai/prices", "admin_set_ai_prices", "Admin", None, 200, None),
    Op("get", "/admin/ai/holds", "admin_list_ai_holds", "Admin", None, 200, None),
    Op("post", "/admin/ai/holds/{id}/settle", "admin_settle_ai_hold", "Admin", None, 200, None),
    Op("post", "/admin/ai/holds/{id}/release", "admin_release_ai_hold", "Admin", None, 200, None),
    Op("get", "/apps/{id}/health/history", "get_app_health_history", "Apps", None, 200, None),
    Op("get", "/workspaces/{id}/services/{name}/logs", "get_service_logs", "Workspace Services", None, 200, None),
];

/// Routes outside `/api/v1` that [`OPERATIONS`] does not list: the node
/// agents' channel to the control plane, and the server's root routes.
#[cfg(test)]
const UNLISTED_ROUTES: &[&str] = &["/ai/proxy", "/ai/workspaces/{id}/env", "/api-docs/openapi.json", "/healthz", "/metrics"];

fn schema_ref(name: Option<&str>) -> Value {
    match name {
        Some(n) => json!({"$ref": format!("#/components/schemas/{n}")}),
        None => json!({"type": "object"}),
    }
}

/// The whole document.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    let mut paths = serde_json::Map::new();
    for Op(method, path, id, tag, req, status, resp) in OPERATIONS {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut op = json!({
            "operationId": id,
            "tags": [tag],
            "responses": {
                status.to_string(): {"description": "Success", "content": {"application/json": {"schema": schema_ref(*resp)}}},
                "default": {"description": "Error", "content": {"application/json": {"schema": schema_ref(Some("ApiErrorBody"))}}},
            },
        });
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if !["/templates", "/capacity"].contains(path) {
            op["security"] = json!([{"bearer": []}]);
        }
        if let Some(r) = req {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": schema_ref(Some(r))}}});
        }
        let entry = paths.entry(format!("/api/v1{path}")).or_insert_with(|| json!({}));
        entry[*method] = op;
    }
    doc["paths"] = Value::Object(paths);
    doc["components"]["securitySchemes"] = json!({"bearer": {"type": "http", "scheme": "bearer"}});
    doc["servers"] = json!([{"url": "/", "description": "This Rigbox control plane"}]);
    doc
}

/// `GET /api-docs/openapi.json`.
pub async fn serve() -> Json<Value> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> Value {
        serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/reference/rigbox-api.json")).unwrap()).unwrap()
    }

    #[test]
    fn every_referenced_schema_exists_and_paths_match_the_reference() {
        let doc = document();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for Op(_, path, _, _, req, _, resp) in OPERATIONS {
            for s in [req, resp].into_iter().flatten() {
                assert!(schemas.contains_key(*s), "{path}: schema {s} is not generated");
            }
        }
        // Operations that exist in the reference use its path, method and
        // (where both name one) its success response schema.
        let r = reference();
        let mut shared = 0;
        for Op(method, path, _, _, _, status, resp) in OPERATIONS {
            let Some(op) = r["paths"][format!("/api/v1{path}")].get(*method) else { continue };
            shared += 1;
            let theirs = op["responses"][status.to_string()]["content"]["application/json"]["schema"]["$ref"].as_str();
            if let (Some(mine), Some(theirs)) = (resp, theirs) {
                assert_eq!(theirs.rsplit('/').next(), Some(*mine), "{method} {path}");
            }
        }
        assert!(shared >= 50, "only {shared} operations shared with the reference");
    }

    /// `{anything}` path parameters compare equal.
    fn shape(path: &str) -> String {
        path.split('/').map(|seg| if seg.starts_with('{') { "{}" } else { seg }).collect::<Vec<_>>().join("/")
    }

    /// Every `.route(...)` in this crate's sources is in [`OPERATIONS`], so the
    /// served document lists every route the API serves.
    #[test]
    fn every_route_in_the_code_is_documented() {
        // Every source file of the crate, so a new module is covered too.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let sources: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "rs"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .collect();
        let documented: std::collections::HashSet<(String, String)> =
            OPERATIONS.iter().map(|Op(m, p, ..)| (m.to_string(), shape(p))).collect();
        let mut missing = Vec::new();
        let mut seen = 0;
        for src in &sources {
            let mut rest = src.as_str();
            while let Some(i) = rest.find(".route(\"") {
                rest = &rest[i + 8..];
                let Some(end) = rest.find('"') else { break };
                let path = &rest[..end];
                // The handler expression: up to the parenthesis closing `.route(`.
                let (mut depth, mut j) = (1, end);
                for (k, c) in rest[end..].char_indices() {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    if depth == 0 {
                        j = end + k;
                        break;
                    }
                }
                let handlers = &rest[end..j];
                for m in ["get", "post", "put", "patch", "delete"] {
                    let called = handlers.match_indices(&format!("{m}(")).any(|(at, _)| {
                        at == 0 || !handlers[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_')
                    });
                    if called && !UNLISTED_ROUTES.contains(&path) {
                        seen += 1;
                        if !documented.contains(&(m.to_string(), shape(path))) {
                            missing.push(format!("{m} {path}"));
                        }
                    }
                }
            }
        }
        assert!(seen >= 100, "found only {seen} routes: is the scan broken?");
        assert!(missing.is_empty(), "routes missing from OPERATIONS: {missing:?}");
    }
}
