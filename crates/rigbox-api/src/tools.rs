//! The tools catalog: installable web tools (file browser, Jupyter, web
//! terminal...) described by recipe files in `images/tools/`.
//!
//! - `install` runs the recipe's install script as a transient systemd unit
//!   in the guest (`rigbox-install-<tool>`), so it continues whatever happens
//!   to the API process; its output and exit code are kept in the guest and
//!   read by `install-status`. Packages come through the node's package proxy.
//! - `launch` writes and starts `rigbox-tool-<tool>.service` (as developer)
//!   and routes it like an app: `<suffix>-<workspace id>.<base domain>`,
//!   private to the owner.
//! - `stop` stops the unit; the route answers that the app is down.

use crate::auth::Auth;
use crate::error::{node_error, ApiError, ApiResult};
use crate::state::AppState;
use crate::workspaces::load;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use rigbox_db::WorkspaceRow;
use rigbox_image::ToolRecipe;
use rigbox_node_api::guest::ExecRequest;
use serde_json::{json, Value};

/// Routes under `/api/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/workspaces/{id}/tools", get(list))
        .route("/workspaces/{id}/tools/{tool}/status", get(status))
        .route("/workspaces/{id}/tools/{tool}/install", post(install))
        .route("/workspaces/{id}/tools/{tool}/install-status", get(install_status))
        .route("/workspaces/{id}/tools/{tool}/launch", post(launch))
        .route("/workspaces/{id}/tools/{tool}/stop", post(stop))
}

fn tool<'a>(st: &'a AppState, id: &str) -> ApiResult<&'a ToolRecipe> {
    st.recipes().tool(id).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "tool_not_found", format!("no tool {id:?} in the catalog")))
}

async fn root_sh(st: &AppState, w: &WorkspaceRow, script: &str, timeout_s: u64) -> ApiResult<rigbox_node_api::guest::ExecResponse> {
    let client = st.nodes().client(&w.node_id)?;
    client
        .exec(&w.id, &ExecRequest { shell: Some(script.into()), user: Some("root".into()), timeout_ms: Some(timeout_s * 1000), ..Default::default() })
        .await
        .map_err(|e| node_error(e, "running in the workspace"))
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn route_name(t: &ToolRecipe, w: &WorkspaceRow) -> String {
    format!("{}-{}", t.subdomain_suffix, w.id)
}

fn url(st: &AppState, t: &ToolRecipe, w: &WorkspaceRow) -> String {
    crate::apps::app_url(st, &route_name(t, w))
}

/// One tool as the reference's `ToolStatus`.
async fn tool_status(st: &AppState, w: &WorkspaceRow, t: &ToolRecipe) -> ApiResult<Value> {
    let mut v = json!({
        "id": t.id, "name": t.name, "description": t.description, "icon": t.icon, "category": t.category,
        "port": t.port, "subdomain_suffix": t.subdomain_suffix, "tags": t.tags,
        "discovery": {"type": "CommandAvailable", "commands": t.commands},
        "install_hint": format!("POST /api/v1/workspaces/{}/tools/{}/install", w.id, t.id),
        "available": false, "running": false, "needs_install": true,
        "project_roots": [], "project_roots_truncated": false,
        "started_at_ms": null, "status_sys": null, "unavailable_reason": null, "url": null,
    });
    if w.status != "running" {
        v["unavailable_reason"] = json!(format!("the workspace is {}", w.status));
        return Ok(v);
    }
    let checks = t.commands.iter().map(|c| format!("command -v {} >/dev/null", quote(c))).collect::<Vec<_>>().join(" && ");
    let script = format!(
        "if {checks}; then echo available; else echo missing; fi; systemctl is-active rigbox-install-{id} 2>/dev/null | head -1; systemctl is-active rigbox-tool-{id} 2>/dev/null | head -1; systemctl show -p ActiveEnterTimestampMonotonic --value rigbox-tool-{id} 2>/dev/null",
        id = t.id
    );
    let r = root_sh(st, w, &script, 30).await?;
    let lines: Vec<&str> = r.stdout.lines().collect();
    let available = lines.first() == Some(&"available");
    let installing = lines.get(1).is_some_and(|l| *l == "active" || *l == "activating");
    let running = lines.get(2) == Some(&"active");
    v["available"] = json!(available);
    v["needs_install"] = json!(!available);
    v["running"] = json!(running);
    if installing {
        v["status_sys"] = json!("installing");
    }
    if running {
        v["url"] = json!(url(st, t, w));
    }
    if !available && !installing {
        v["unavailable_reason"] = json!("not installed");
    }
    Ok(v)
}

async fn list(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let w = load(&st, &auth, &id).await?;
    let mut tools = Vec::new();
    for t in st.recipes().tools() {
        tools.push(tool_status(&st, &w, t).await?);
    }
    Ok(Json(json!({ "tools": tools })))
}

async fn status(State(st): State<AppState>, auth: Auth, Path((id, tid)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    let t = tool(&st, &tid)?;
    let w = load(&st, &auth, &id).await?;
    Ok(Json(tool_status(&st, &w, t).await?))
}

async fn running_ws(st: &AppState, auth: &Auth, id: &str) -> ApiResult<WorkspaceRow> {
    crate::exec::running(st, auth, id).await
}

async fn install(State(st): State<AppState>, auth: Auth, Path((id, tid)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    let t = tool(&st, &tid)?;
    let w = running_ws(&st, &auth, &id).await?;
    let job = format!("install-{}-{}", t.id, chrono::Utc::now().timestamp_millis());
    // Detached: the unit runs in the guest whatever happens to this request.
    let inner = format!(
        "mkdir -p /var/lib/rigbox/tools /var/log/rigbox/tools; echo {job} > /var/lib/rigbox/tools/{id}.job; rm -f /var/lib/rigbox/tools/{id}.exit; \
         ( {install} ) > /var/log/rigbox/tools/{id}.log 2>&1; echo $? > /var/lib/rigbox/tools/{id}.exit",
        id = t.id,
        install = t.install,
    );
    let script = format!(
        "systemctl reset-failed rigbox-install-{id} 2>/dev/null; systemd-run --unit rigbox-install-{id} --description={desc} --property=Type=oneshot --no-block /bin/bash -c {inner}",
        id = t.id,
        desc = quote(&format!("Install {}", t.name)),
        inner = quote(&inner)
    );
    let r = root_sh(&st, &w, &script, 60).await?;
    if r.exit_code != Some(0) {
        return Err(ApiError::new(StatusCode::CONFLICT, "install_not_started", format!("the install did not start: {}", r.stderr.trim())));
    }
    Ok(Json(json!({"status": "running", "message": format!("installing {}", t.name), "job_id": job})))
}

async fn install_status(State(st): State<AppState>, auth: Auth, Path((id, tid)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    let t = tool(&st, &tid)?;
    let w = running_ws(&st, &auth, &id).await?;
    let checks = t.commands.iter().map(|c| format!("command -v {} >/dev/null", quote(c))).collect::<Vec<_>>().join(" && ");
    let script = format!(
        "systemctl is-active rigbox-install-{id} 2>/dev/null | head -1; cat /var/lib/rigbox/tools/{id}.exit 2>/dev/null || echo none; if {checks}; then echo available; else echo missing; fi; echo ---; tail -c 4000 /var/log/rigbox/tools/{id}.log 2>/dev/null",
        id = t.id
    );
    let r = root_sh(&st, &w, &script, 30).await?;
    let (head, tail) = r.stdout.split_once("---\n").unwrap_or((r.stdout.as_str(), ""));
    let lines: Vec<&str> = head.lines().collect();
    let active = lines.first().is_some_and(|l| *l == "active" || *l == "activating");
    let exit: Option<i32> = lines.get(1).and_then(|l| l.trim().parse().ok());
    let available = lines.get(2) == Some(&"available");
    let status = match (active, exit) {
        (true, _) => "running",
        (false, Some(0)) => "done",
        (false, Some(_)) => "failed",
        (false, None) if available => "done",
        (false, None) => "not_started",
    };
    let finished = status == "done" || status == "failed";
    Ok(Json(json!({
        "status": status,
        "exit_code": if finished { exit.map(Value::from).unwrap_or(Value::Null) } else { Value::Null },
        "stdout_tail": if finished { Value::from(tail) } else { Value::Null },
        "available": available,
    })))
}

async fn launch(State(st): State<AppState>, auth: Auth, Path((id, tid)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    let t = tool(&st, &tid)?.clone();
    let w = running_ws(&st, &auth, &id).await?;
    let cmd = t.launch.replace('\\', "\\\\").replace('"', "\\\"").replace('$', "$$").replace('%', "%%");
    let unit = format!(
        "[Unit]\nDescription=Rigbox tool {name}\nAfter=network.target\n\n[Service]\nUser=developer\nGroup=developer\nWorkingDirectory=/home/developer\nEnvironmentFile=-/etc/rigbox/env\nExecStart=/bin/bash -lc \"{cmd}\"\nRestart=on-failure\nRestartSec=1\n\n[Install]\nWantedBy=multi-user.target\n",
        name = t.name,
    );
    let checks = t.commands.iter().map(|c| format!("command -v {} >/dev/null", quote(c))).collect::<Vec<_>>().join(" && ");
    let script = format!(
        "if ! ( {checks} ); then echo not-installed; exit 3; fi; printf %s {unit} > /etc/systemd/system/rigbox-tool-{id}.service && systemctl daemon-reload && systemctl restart rigbox-tool-{id}",
        unit = quote(&unit),
        id = t.id
    );
    let r = root_sh(&st, &w, &script, 60).await?;
    if r.exit_code == Some(3) {
        return Err(ApiError::new(StatusCode::CONFLICT, "not_installed", format!("{} is not installed; install it first", t.name)));
    }
    if r.exit_code != Some(0) {
        return Err(ApiError::internal(format!("launching {}: {}", t.name, r.stderr.trim())));
    }
    // Route it like an app (once).
    let name = route_name(&t, &w);
    let existing = st.store().apps_of_user(&auth.user.id, Some(&w.id)).await?;
    if !existing.iter().any(|a| a.name == name) {
        let req = crate::apps::CreateAppRequest {
            workspace_id: w.id.clone(),
            name: name.clone(),
            port: Some(i64::from(t.port)),
            protocol: Some("http".into()),
            app_kind: Some("service".into()),
            description: Some(t.description.clone()),
            metadata: Some(json!({"tool": t.id})),
            subdomain: Some(name.clone()),
            visibility: Some("private".into()),
            allowed_emails: None,
            health_path: Some("/".into()),
        };
        crate::apps::create_app(&st, &auth, req, Some(format!("rigbox-tool-{}.service", t.id)), None).await?;
    }
    Ok(Json(json!({
        "status": "running",
        "message": format!("{} is running", t.name),
        "url": url(&st, &t, &w),
        "started_at_ms": chrono::Utc::now().timestamp_millis(),
    })))
}

async fn stop(State(st): State<AppState>, auth: Auth, Path((id, tid)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    let t = tool(&st, &tid)?;
    let w = running_ws(&st, &auth, &id).await?;
    root_sh(&st, &w, &format!("systemctl stop rigbox-tool-{} 2>/dev/null; true", t.id), 60).await?;
    Ok(Json(json!({"status": "stopped", "message": format!("{} stopped", t.name)})))
}
