//! Apps and routing: an app routes `{subdomain}.{base_domain}` to a port of
//! a workspace through the edge (`rigbox-edge`).
//!
//! - `GET/POST /apps` (`?workspace_id=` filters), `GET/PATCH/DELETE /apps/{id}`,
//!   `POST /apps/{id}/start|stop|restart`, `PUT /apps/{id}/visibility`;
//! - `GET /apps/{id}/health` checks now: an HTTP probe of the app's
//!   `health_path` through a node tunnel (`live`: any answer below 500),
//!   the port among the guest's listeners (`port_open`), and the systemd
//!   unit behind the app (`service_status`, via exec). A background loop
//!   checks every active app every 15 s; each change is kept
//!   (`GET /apps/{id}/health/history`, an extension);
//! - `GET /workspaces/{id}/listening-ports`, `POST /workspaces/{id}/expose-port`
//!   (`detect` the process on a port, then `wrap` it: a systemd unit written
//!   into the guest for its command, cwd, user and environment, plus the app);
//! - `GET /apps/{id}/metrics[/summary]?range=1h|6h|24h|7d`: edge metrics from
//!   the samples the edge stores in the database.
//!
//! Extensions beyond the reference, in requests and the `App` body:
//! `subdomain` (default: the name), `health_path` (default `/`), `url`,
//! `service_name`. This module also implements the edge's lookups over
//! the database ([`DbRoutes`], [`DbAuth`], [`DbMetrics`]).

use crate::auth::{hash_key, Auth};
use crate::error::{node_error, ApiError, ApiResult};
use crate::state::AppState;
use crate::views::MessageResponse;
use crate::workspaces::load;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine;
use chrono::{DateTime, Utc};
use rigbox_db::apps::{AppHealthRow, AppMetricRow, AppRow};
use rigbox_db::{DbError, WorkspaceRow};
use rigbox_edge::metrics::{merge_hist, percentile, MetricSample, Recorder};
use rigbox_edge::{names, EdgeUser, Epoch, KeyIdentity, LookupError, Route, Visibility};
use rigbox_node_api::guest;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Routes under `/api/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/apps", get(list).post(create))
        .route("/apps/{id}", get(get_one).patch(update).delete(delete))
        .route("/apps/{id}/start", post(start))
        .route("/apps/{id}/stop", post(stop))
        .route("/apps/{id}/restart", post(restart))
        .route("/apps/{id}/health", get(health))
        .route("/apps/{id}/health/history", get(health_history))
        .route("/apps/{id}/visibility", put(set_visibility))
        .route("/apps/{id}/metrics", get(metrics))
        .route("/apps/{id}/metrics/summary", get(metrics_summary))
        .route("/workspaces/{id}/listening-ports", get(listening_ports))
        .route("/workspaces/{id}/expose-port", post(expose_port))
}

/// How apps are reached from outside (registered by the edge role with
/// [`AppState::set_ext`]; without it URLs are `http://{sub}.{base}`).
#[derive(Debug, Clone)]
pub struct EdgeInfo {
    /// `http` or `https`.
    pub public_scheme: String,
    /// Port users connect to (none: the scheme's default).
    pub public_port: Option<u16>,
}

/// The port of the guest agent, never exposable.
const AGENT_PORT: u16 = guest::AGENT_PORT;
/// The guest agent's own unit.
const AGENT_UNIT: &str = "rigbox-agent.service";

// ---------------------------------------------------------------- views

/// An app (the reference's `App`, plus `url`, `health_path`, `service_name`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AppView {
    /// `app-…`.
    pub id: String,
    /// Workspace.
    pub workspace_id: String,
    /// Owner.
    pub user_id: String,
    /// Node.
    pub node_id: String,
    /// Name.
    pub name: String,
    /// Host label.
    pub subdomain: String,
    /// Port inside the workspace.
    pub port: i32,
    /// `http` (empty for `cli`).
    pub protocol: String,
    /// `service` or `cli`.
    pub app_kind: String,
    /// `active`, `inactive`, `installing`, `error`.
    pub status: String,
    /// `private`, `public`, `privileged`.
    pub visibility: String,
    /// Users let in when privileged.
    pub allowed_emails: Vec<String>,
    /// Custom domain (stored; not routed yet).
    pub custom_domain: Option<String>,
    /// Custom domain verified.
    pub custom_domain_verified: bool,
    /// Template- or catalog-owned.
    pub managed: bool,
    /// Backing services.
    pub depends_on: Vec<String>,
    /// Tags.
    pub system_tags: Vec<String>,
    /// Description.
    pub description: Option<String>,
    /// Metadata.
    pub metadata: serde_json::Value,
    /// Creation.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Public URL (services only).
    pub url: Option<String>,
    /// Path of the health probe.
    pub health_path: String,
    /// The systemd unit behind the app, when known.
    pub service_name: Option<String>,
}

/// `{app}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetAppResponse {
    /// The app.
    pub app: AppView,
}

/// `{apps}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListAppsResponse {
    /// Apps.
    pub apps: Vec<AppView>,
}

/// `POST /apps`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateAppRequest {
    /// Workspace (id or name).
    pub workspace_id: String,
    /// Name (unique in the workspace).
    pub name: String,
    /// Port (services: default 3000; cli: 0).
    pub port: Option<i64>,
    /// `http` (services).
    pub protocol: Option<String>,
    /// `service` (default) or `cli`.
    pub app_kind: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Metadata.
    pub metadata: Option<serde_json::Value>,
    /// Host label (extension; default: the name).
    pub subdomain: Option<String>,
    /// Visibility (extension; default `private`).
    pub visibility: Option<String>,
    /// Users of a privileged app (extension).
    pub allowed_emails: Option<Vec<String>>,
    /// Health probe path (extension; default `/`).
    pub health_path: Option<String>,
}

/// `PATCH /apps/{id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdateAppRequest {
    /// New name (the subdomain follows when it was the name).
    pub name: Option<String>,
    /// New port.
    pub port: Option<i64>,
    /// Description.
    pub description: Option<String>,
    /// Metadata.
    pub metadata: Option<serde_json::Value>,
    /// `active` or `inactive`.
    pub status: Option<String>,
    /// Visibility.
    pub visibility: Option<String>,
    /// Users of a privileged app.
    pub allowed_emails: Option<Vec<String>>,
    /// Custom domain (`""` removes).
    pub custom_domain: Option<String>,
    /// New host label (extension).
    pub subdomain: Option<String>,
    /// Health probe path (extension).
    pub health_path: Option<String>,
}

/// `PUT /apps/{id}/visibility`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateAppVisibilityRequest {
    /// `public`, `private`, `privileged`.
    pub visibility: String,
    /// Replaces the whole list.
    pub allowed_emails: Option<Vec<String>>,
}

/// Answer of start, stop, restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceActionResponse {
    /// What happened.
    pub message: String,
    /// The unit acted on (empty when the app has none).
    pub service_name: String,
    /// The app.
    pub app: AppView,
}

/// `GET /apps/{id}/health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppHealthResponse {
    /// The HTTP probe got an answer below 500.
    pub live: bool,
    /// `active`, `inactive`, `failed`, `unknown`, `unmanaged`.
    pub service_status: String,
    /// The port listens inside the workspace.
    pub port_open: bool,
    /// The unit is active but the port is closed.
    pub port_drift: bool,
    /// Status code of the probe (extension).
    pub http_status: Option<i64>,
    /// Why not live (extension).
    pub detail: Option<String>,
    /// When checked (extension).
    pub checked_at: DateTime<Utc>,
}

impl From<&AppHealthRow> for AppHealthResponse {
    fn from(h: &AppHealthRow) -> Self {
        AppHealthResponse {
            live: h.live,
            service_status: h.service_status.clone(),
            port_open: h.port_open,
            port_drift: h.port_drift,
            http_status: h.http_status,
            detail: h.detail.clone(),
            checked_at: h.checked_at,
        }
    }
}

/// A listener inside a workspace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListeningPortView {
    /// Port.
    pub port: i32,
    /// Bound address.
    pub address: String,
    /// Process name.
    pub process: Option<String>,
    /// An app routes to it already.
    pub already_exposed: bool,
    /// Process id (extension).
    pub pid: Option<u32>,
    /// Command line (extension).
    pub command: Option<String>,
    /// Its systemd unit (extension).
    pub systemd_unit: Option<String>,
}

/// `{ports}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListListeningPortsResponse {
    /// Listeners.
    pub ports: Vec<ListeningPortView>,
}

/// `POST /workspaces/{id}/expose-port`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExposePortRequest {
    /// Port.
    pub port: i64,
    /// `detect` or `wrap`.
    pub step: String,
    /// App name (wrap; default: the suggested name).
    pub name: Option<String>,
}

/// Query of the metrics endpoints.
#[derive(Debug, Clone, Deserialize)]
pub struct RangeQuery {
    /// `1h` (default), `6h`, `24h`, `7d`.
    pub range: Option<String>,
}

/// A point of a series.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricPoint {
    /// Seconds since the epoch.
    pub t: i64,
    /// Value.
    pub v: f64,
}

/// `series` of the metrics response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppMetricsSeries {
    /// Requests per second.
    pub request_rate: Vec<MetricPoint>,
    /// Fraction of answers that were 5xx.
    pub error_rate_5xx: Vec<MetricPoint>,
    /// Latency to response headers, ms.
    pub latency_p50_ms: Vec<MetricPoint>,
    /// p95.
    pub latency_p95_ms: Vec<MetricPoint>,
    /// p99.
    pub latency_p99_ms: Vec<MetricPoint>,
    /// Response body bits per second.
    pub bandwidth_out_bps: Vec<MetricPoint>,
}

/// Answers per status class.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppStatusCodeMetric {
    /// `2xx`, ...
    pub class: String,
    /// Count.
    pub count: f64,
    /// Share of all answers.
    pub ratio: f64,
}

/// `GET /apps/{id}/metrics`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppMetricsResponse {
    /// Range asked for.
    pub range: String,
    /// Width of a point.
    pub step_seconds: i64,
    /// Hosts seen.
    pub hosts: Vec<String>,
    /// Series.
    pub series: AppMetricsSeries,
    /// Answers per class.
    pub status_codes: Vec<AppStatusCodeMetric>,
}

/// `GET /apps/{id}/metrics/summary`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppMetricsSummaryResponse {
    /// Range.
    pub range: String,
    /// Hosts seen.
    pub hosts: Vec<String>,
    /// Requests.
    pub total_requests: f64,
    /// Requests per second over the range.
    pub request_rate_avg: f64,
    /// 5xx answers.
    pub total_errors_5xx: f64,
    /// Their share.
    pub error_rate_5xx: f64,
    /// p50 latency, ms.
    pub latency_p50_ms: f64,
    /// p95.
    pub latency_p95_ms: f64,
    /// p99.
    pub latency_p99_ms: f64,
    /// Response body bytes.
    pub bandwidth_out_bytes: f64,
}

// ------------------------------------------------------------- helpers

fn bump(st: &AppState) {
    if let Some(e) = st.ext::<Epoch>() {
        e.bump();
    }
}

/// The public URL of an app.
pub fn app_url(st: &AppState, subdomain: &str) -> String {
    let (scheme, port) = st.ext::<EdgeInfo>().map(|e| (e.public_scheme.clone(), e.public_port)).unwrap_or_else(|| ("http".into(), None));
    names::app_url(&scheme, subdomain, &st.config().base_domain, port)
}

/// The API view of a row.
pub fn view(st: &AppState, a: &AppRow) -> AppView {
    AppView {
        id: a.id.clone(),
        workspace_id: a.workspace_id.clone(),
        user_id: a.user_id.clone(),
        node_id: a.node_id.clone(),
        name: a.name.clone(),
        subdomain: a.subdomain.clone(),
        port: i32::try_from(a.port).unwrap_or(0),
        protocol: a.protocol.clone(),
        app_kind: a.app_kind.clone(),
        status: a.status.clone(),
        visibility: a.visibility.clone(),
        allowed_emails: a.allowed_emails.clone(),
        custom_domain: a.custom_domain.clone(),
        custom_domain_verified: a.custom_domain_verified,
        managed: a.managed,
        depends_on: a.depends_on.clone(),
        system_tags: a.system_tags.clone(),
        description: a.description.clone(),
        metadata: a.metadata.clone(),
        created_at: a.created_at,
        updated_at: a.updated_at,
        url: (a.app_kind == "service").then(|| app_url(st, &a.subdomain)),
        health_path: a.health_path.clone(),
        service_name: a.service_name.clone(),
    }
}

/// The caller's app; another user's is a 404.
async fn load_app(st: &AppState, auth: &Auth, id: &str) -> ApiResult<AppRow> {
    match st.store().app(id).await {
        Ok(a) if a.user_id == auth.user.id => Ok(a),
        Ok(_) | Err(DbError::NotFound) => Err(ApiError::not_found("app")),
        Err(e) => Err(e.into()),
    }
}

fn conflict(e: DbError, subdomain: &str, name: &str) -> ApiError {
    match e {
        DbError::Conflict(m) if m.contains("subdomain") => {
            ApiError::new(StatusCode::CONFLICT, "subdomain_taken", format!("the subdomain {subdomain:?} is taken"))
        }
        DbError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "name_taken", format!("an app named {name:?} already exists in this workspace")),
        other => other.into(),
    }
}

fn check_subdomain(s: &str) -> ApiResult<()> {
    names::validate_subdomain(s).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_subdomain", e.to_string()))
}

fn check_name(n: &str) -> ApiResult<()> {
    if n.trim().is_empty() || n.len() > 63 || n.chars().any(char::is_control) {
        return Err(ApiError::bad_request("name must be 1 to 63 characters without control characters"));
    }
    Ok(())
}

fn check_port(p: i64) -> ApiResult<u16> {
    match u16::try_from(p) {
        Ok(0) | Err(_) => Err(ApiError::bad_request(format!("port must be between 1 and 65535 (got {p})"))),
        Ok(AGENT_PORT) => Err(ApiError::bad_request(format!("port {AGENT_PORT} belongs to the guest agent"))),
        Ok(p) => Ok(p),
    }
}

fn check_visibility(v: &str) -> ApiResult<Visibility> {
    Visibility::parse(v).ok_or_else(|| ApiError::bad_request(format!("visibility must be public, private or privileged (got {v:?})")))
}

fn check_emails(list: Vec<String>) -> ApiResult<Vec<String>> {
    let mut out = Vec::new();
    for e in list {
        let e = e.trim().to_ascii_lowercase();
        let valid = e.len() <= 254 && e.split_once('@').is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !e.contains(char::is_whitespace));
        if !valid {
            return Err(ApiError::bad_request(format!("{e:?} is not an email address")));
        }
        if !out.contains(&e) {
            out.push(e);
        }
    }
    Ok(out)
}

fn check_health_path(p: &str) -> ApiResult<String> {
    if !p.starts_with('/') || p.len() > 1024 || p.chars().any(|c| c.is_control() || c == ' ') {
        return Err(ApiError::bad_request("health_path must be an absolute path without spaces"));
    }
    Ok(p.to_string())
}

async fn root_exec(st: &AppState, w: &WorkspaceRow, script: &str, timeout_s: u64) -> ApiResult<guest::ExecResponse> {
    let client = st.nodes().client(&w.node_id)?;
    client
        .exec(
            &w.id,
            &guest::ExecRequest {
                argv: None,
                shell: Some(script.to_string()),
                env: BTreeMap::new(),
                cwd: Some("/".into()),
                user: Some("root".into()),
                timeout_ms: Some(timeout_s * 1000),
                stdin: None,
            },
        )
        .await
        .map_err(|e| node_error(e, "running a command in the workspace"))
}

fn running(w: &WorkspaceRow) -> ApiResult<()> {
    if w.status != "running" {
        return Err(ApiError::conflict(format!("workspace {} is {}, not running", w.name, w.status)).details(serde_json::json!({"status": w.status})));
    }
    Ok(())
}

/// Whether a unit is one the app's process was started by on purpose (not
/// the guest agent's exec or a login session).
fn is_app_unit(unit: &str) -> bool {
    unit.ends_with(".service") && unit != AGENT_UNIT && !unit.starts_with("user@") && !unit.starts_with("session-")
}

// ------------------------------------------------------------ handlers

#[derive(Deserialize)]
struct ListQuery {
    workspace_id: Option<String>,
}

async fn list(State(st): State<AppState>, auth: Auth, Query(q): Query<ListQuery>) -> ApiResult<Json<ListAppsResponse>> {
    let ws = match q.workspace_id.as_deref().filter(|s| !s.is_empty()) {
        Some(w) => Some(load(&st, &auth, w).await?.id),
        None => None,
    };
    let apps = st.store().apps_of_user(&auth.user.id, ws.as_deref()).await?;
    Ok(Json(ListAppsResponse { apps: apps.iter().map(|a| view(&st, a)).collect() }))
}

/// Creates an app after validation (shared by `POST /apps` and expose-port).
pub async fn create_app(st: &AppState, auth: &Auth, req: CreateAppRequest, service_name: Option<String>, metadata_extra: Option<serde_json::Value>) -> ApiResult<AppRow> {
    check_name(&req.name)?;
    let w = load(st, auth, &req.workspace_id).await?;
    let kind = req.app_kind.clone().unwrap_or_else(|| "service".into());
    let subdomain = req.subdomain.clone().unwrap_or_else(|| req.name.trim().to_string());
    check_subdomain(&subdomain)?;
    let (port, protocol) = match kind.as_str() {
        "service" => {
            let port = check_port(req.port.unwrap_or(3000))?;
            let protocol = req.protocol.clone().unwrap_or_else(|| "http".into());
            if protocol != "http" {
                return Err(ApiError::bad_request(format!("protocol {protocol:?} is not supported (the edge speaks http to apps)")));
            }
            (i64::from(port), protocol)
        }
        "cli" => {
            if req.port.is_some_and(|p| p != 0) {
                return Err(ApiError::bad_request("cli apps have no port"));
            }
            (0, String::new())
        }
        other => return Err(ApiError::bad_request(format!("app_kind must be service or cli (got {other:?})"))),
    };
    let visibility = check_visibility(req.visibility.as_deref().unwrap_or("private"))?;
    let allowed = check_emails(req.allowed_emails.clone().unwrap_or_default())?;
    let health_path = check_health_path(req.health_path.as_deref().unwrap_or("/"))?;
    let mut metadata = req.metadata.clone().unwrap_or_else(|| serde_json::json!({}));
    if let (Some(serde_json::Value::Object(extra)), serde_json::Value::Object(m)) = (metadata_extra, &mut metadata) {
        m.extend(extra);
    }
    // A unit behind the listener, if the workspace runs and one is there.
    let service_name = match service_name {
        Some(s) => Some(s),
        None if kind == "service" && w.status == "running" => match st.nodes().client(&w.node_id) {
            Ok(c) => c
                .ports(&w.id)
                .await
                .ok()
                .and_then(|ps| ps.into_iter().find(|p| i64::from(p.port) == port))
                .and_then(|p| p.systemd_unit)
                .filter(|u| is_app_unit(u)),
            Err(_) => None,
        },
        None => None,
    };
    let now = Utc::now();
    let row = AppRow {
        id: rigbox_types::ids::new_app_id(),
        workspace_id: w.id.clone(),
        user_id: auth.user.id.clone(),
        node_id: w.node_id.clone(),
        name: req.name.trim().to_string(),
        subdomain: subdomain.clone(),
        port,
        protocol,
        app_kind: kind,
        status: "active".into(),
        visibility: visibility.as_str().into(),
        allowed_emails: allowed,
        custom_domain: None,
        custom_domain_verified: false,
        managed: false,
        depends_on: vec![],
        system_tags: vec![],
        description: req.description.clone(),
        metadata,
        service_name,
        health_path,
        created_at: now,
        updated_at: now,
    };
    st.store().create_app(&row).await.map_err(|e| conflict(e, &subdomain, &row.name))?;
    bump(st);
    tracing::info!(app = %row.id, subdomain = %row.subdomain, workspace = %row.workspace_id, "app created");
    Ok(row)
}

async fn create(State(st): State<AppState>, auth: Auth, body: Result<Json<CreateAppRequest>, JsonRejection>) -> ApiResult<(StatusCode, Json<GetAppResponse>)> {
    let Json(req) = body?;
    let row = create_app(&st, &auth, req, None, None).await?;
    Ok((StatusCode::CREATED, Json(GetAppResponse { app: view(&st, &row) })))
}

async fn get_one(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<GetAppResponse>> {
    let a = load_app(&st, &auth, &id).await?;
    Ok(Json(GetAppResponse { app: view(&st, &a) }))
}

async fn update(State(st): State<AppState>, auth: Auth, Path(id): Path<String>, body: Result<Json<UpdateAppRequest>, JsonRejection>) -> ApiResult<Json<GetAppResponse>> {
    let Json(req) = body?;
    let mut a = load_app(&st, &auth, &id).await?;
    let is_cli = a.app_kind == "cli";
    if let Some(n) = req.name {
        check_name(&n)?;
        let n = n.trim().to_string();
        if req.subdomain.is_none() && a.subdomain == a.name && n != a.name {
            // The URL follows the name (renaming changes the public URL).
            check_subdomain(&n)?;
            a.subdomain = n.clone();
        }
        a.name = n;
    }
    if let Some(s) = req.subdomain {
        check_subdomain(&s)?;
        a.subdomain = s;
    }
    if let Some(p) = req.port {
        if is_cli {
            return Err(ApiError::bad_request("cli apps have no port"));
        }
        a.port = i64::from(check_port(p)?);
    }
    if let Some(d) = req.description {
        a.description = Some(d);
    }
    if let Some(m) = req.metadata {
        a.metadata = m;
    }
    if let Some(s) = req.status {
        match s.as_str() {
            "active" | "inactive" => a.status = s,
            other => return Err(ApiError::bad_request(format!("status must be active or inactive (got {other:?})"))),
        }
    }
    if let Some(v) = req.visibility {
        a.visibility = check_visibility(&v)?.as_str().into();
    }
    if let Some(e) = req.allowed_emails {
        a.allowed_emails = check_emails(e)?;
    }
    if let Some(d) = req.custom_domain {
        let d = d.trim().to_ascii_lowercase();
        a.custom_domain = (!d.is_empty()).then_some(d);
        a.custom_domain_verified = false;
    }
    if let Some(p) = req.health_path {
        a.health_path = check_health_path(&p)?;
    }
    a.updated_at = Utc::now();
    let (sub, name) = (a.subdomain.clone(), a.name.clone());
    st.store().update_app(&a).await.map_err(|e| conflict(e, &sub, &name))?;
    bump(&st);
    Ok(Json(GetAppResponse { app: view(&st, &a) }))
}

#[derive(Deserialize)]
struct DeleteQuery {
    force: Option<bool>,
}

async fn delete(State(st): State<AppState>, auth: Auth, Path(id): Path<String>, Query(q): Query<DeleteQuery>) -> ApiResult<Json<MessageResponse>> {
    let a = load_app(&st, &auth, &id).await?;
    if a.managed && !q.force.unwrap_or(false) {
        return Err(ApiError::new(StatusCode::CONFLICT, "managed_app", "this app is managed by its template: delete with ?force=true"));
    }
    st.store().delete_app(&a.id).await?;
    bump(&st);
    tracing::info!(app = %a.id, "app deleted");
    Ok(Json(MessageResponse::new(format!("App {} deleted; the process inside the workspace, if any, keeps running", a.name))))
}

async fn set_visibility(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<UpdateAppVisibilityRequest>, JsonRejection>,
) -> ApiResult<Json<GetAppResponse>> {
    let Json(req) = body?;
    let mut a = load_app(&st, &auth, &id).await?;
    if a.app_kind == "cli" {
        return Err(ApiError::bad_request("cli apps have no route"));
    }
    a.visibility = check_visibility(&req.visibility)?.as_str().into();
    if let Some(e) = req.allowed_emails {
        a.allowed_emails = check_emails(e)?;
    }
    a.updated_at = Utc::now();
    st.store().update_app(&a).await?;
    bump(&st);
    Ok(Json(GetAppResponse { app: view(&st, &a) }))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Start,
    Stop,
    Restart,
}

/// Kills the process an app was wrapped from if it still runs outside its
/// unit (it holds the port), then runs `systemctl {verb} {unit}`.
fn unit_script(verb: &str, unit: &str, wrapped_pid: Option<i64>) -> String {
    let handover = match wrapped_pid {
        Some(pid) if verb != "stop" => format!(
            "pid={pid}; if [ -d /proc/$pid ] && ! grep -q '/{unit}' /proc/$pid/cgroup; then kill $pid 2>/dev/null; \
             for i in $(seq 50); do [ -d /proc/$pid ] || break; sleep 0.1; done; kill -9 $pid 2>/dev/null; sleep 0.2; fi; "
        ),
        _ => String::new(),
    };
    format!("{handover}systemctl {verb} {unit}")
}

async fn act(st: AppState, auth: Auth, id: String, action: Action) -> ApiResult<Json<ServiceActionResponse>> {
    let mut a = load_app(&st, &auth, &id).await?;
    if a.app_kind == "cli" {
        return Err(ApiError::bad_request("cli apps cannot be started or stopped"));
    }
    let w = st.store().workspace(&a.workspace_id).await?;
    let verb = match action {
        Action::Start => "start",
        Action::Stop => "stop",
        Action::Restart => "restart",
    };
    let mut message = match action {
        Action::Stop => "Route disabled".to_string(),
        _ => "Route enabled".to_string(),
    };
    if let Some(unit) = a.service_name.clone() {
        if w.status == "running" {
            let wrapped = a.metadata.get("wrapped_pid").and_then(|v| v.as_i64());
            let r = root_exec(&st, &w, &unit_script(verb, &unit, wrapped), 60).await?;
            if r.exit_code != Some(0) {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "service_action_failed",
                    format!("systemctl {verb} {unit} failed: {}{}", r.stderr.trim(), r.stdout.trim()),
                ));
            }
            if action != Action::Stop && wrapped.is_some() {
                if let serde_json::Value::Object(m) = &mut a.metadata {
                    m.remove("wrapped_pid");
                }
            }
            message = format!("{message}; systemctl {verb} {unit} done");
        } else {
            message = format!("{message}; the workspace is {}, so {unit} was not touched", w.status);
        }
    }
    a.status = if action == Action::Stop { "inactive".into() } else { "active".into() };
    a.updated_at = Utc::now();
    st.store().update_app(&a).await?;
    bump(&st);
    Ok(Json(ServiceActionResponse { message, service_name: a.service_name.clone().unwrap_or_default(), app: view(&st, &a) }))
}

async fn start(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<ServiceActionResponse>> {
    act(st, auth, id, Action::Start).await
}

async fn stop(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<ServiceActionResponse>> {
    act(st, auth, id, Action::Stop).await
}

async fn restart(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<ServiceActionResponse>> {
    act(st, auth, id, Action::Restart).await
}

// ---------------------------------------------------------------- health

/// Checks an app now (probe, listeners, unit) and records the result.
pub async fn check_health(st: &AppState, a: &AppRow) -> ApiResult<AppHealthRow> {
    let w = st.store().workspace(&a.workspace_id).await?;
    let now = Utc::now();
    let mut h = AppHealthRow {
        app_id: a.id.clone(),
        live: false,
        port_open: false,
        service_status: if a.service_name.is_some() { "unknown".into() } else { "unmanaged".into() },
        port_drift: false,
        http_status: None,
        detail: None,
        checked_at: now,
    };
    if a.app_kind == "cli" {
        h.detail = Some("cli apps have no route".into());
    } else if w.status != "running" {
        h.detail = Some(format!("the workspace is {}", w.status));
    } else {
        let client = st.nodes().client(&w.node_id)?;
        let port = u16::try_from(a.port).unwrap_or(0);
        let host = names::host_only(app_url(st, &a.subdomain).split("://").nth(1).unwrap_or_default());
        let probe = rigbox_edge::probe_http(&client, &w.id, port, &host, &a.health_path, Duration::from_secs(5));
        let ports = client.ports(&w.id);
        let (probe, ports) = tokio::join!(probe, ports);
        let listener = ports.ok().and_then(|ps| ps.into_iter().find(|p| p.port == port));
        h.port_open = listener.is_some();
        // An app created before its server listened learns its unit now.
        let mut unit_name = a.service_name.clone();
        if unit_name.is_none() {
            if let Some(u) = listener.as_ref().and_then(|l| l.systemd_unit.clone()).filter(|u| is_app_unit(u)) {
                let mut updated = a.clone();
                updated.service_name = Some(u.clone());
                updated.updated_at = now;
                if st.store().update_app(&updated).await.is_ok() {
                    unit_name = Some(u);
                }
            }
        }
        h.service_status = match &unit_name {
            Some(u) => match root_exec(st, &w, &format!("systemctl is-active {u}"), 10).await {
                Ok(r) => Some(r.stdout.trim().to_string()).filter(|s| !s.is_empty()).unwrap_or_else(|| "unknown".into()),
                Err(_) => "unknown".into(),
            },
            None => "unmanaged".into(),
        };
        match probe {
            Ok(p) => {
                h.http_status = Some(i64::from(p.status));
                h.live = p.status < 500;
                if !h.live {
                    h.detail = Some(format!("the probe of {} answered {}", a.health_path, p.status));
                }
            }
            Err(e) => {
                let loopback_only = listener.as_ref().is_some_and(|l| l.address.starts_with("127.") || l.address == "::1");
                h.detail = Some(if loopback_only { format!("port {port} listens on {} only: bind 0.0.0.0", listener.map(|l| l.address).unwrap_or_default()) } else { e.to_string() });
            }
        }
        h.port_drift = h.service_status == "active" && !h.port_open;
    }
    if st.store().record_app_health(&h).await? {
        tracing::info!(app = %a.id, live = h.live, port_open = h.port_open, service = %h.service_status, "app health changed");
    }
    Ok(h)
}

async fn health(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<AppHealthResponse>> {
    let a = load_app(&st, &auth, &id).await?;
    let h = check_health(&st, &a).await?;
    Ok(Json(AppHealthResponse::from(&h)))
}

/// `{events}`: state changes, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthHistoryResponse {
    /// Changes.
    pub events: Vec<AppHealthResponse>,
}

async fn health_history(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<HealthHistoryResponse>> {
    let a = load_app(&st, &auth, &id).await?;
    let ev = st.store().app_health_events(&a.id, 100).await?;
    Ok(Json(HealthHistoryResponse { events: ev.iter().map(AppHealthResponse::from).collect() }))
}

/// Checks every active service app of a running workspace every `every`,
/// drains edge metrics into the database, and prunes samples older than
/// eight days (hourly), until `stop`.
pub async fn background(st: AppState, every: Duration, stop: CancellationToken) {
    let mut last_prune = std::time::Instant::now() - Duration::from_secs(3600);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        flush_metrics(&st).await;
        if last_prune.elapsed() >= Duration::from_secs(3600) {
            last_prune = std::time::Instant::now();
            let _ = st.store().prune_app_metrics(Utc::now().timestamp() - 8 * 86400).await;
        }
        let apps = st.store().apps_by_status("service", "active").await.unwrap_or_default();
        let running: BTreeSet<String> = st.store().workspaces_in(&["running"]).await.unwrap_or_default().into_iter().map(|w| w.id).collect();
        let sem = Arc::new(tokio::sync::Semaphore::new(4));
        let mut tasks = Vec::new();
        for a in apps.into_iter().filter(|a| running.contains(&a.workspace_id)) {
            let st = st.clone();
            let sem = sem.clone();
            tasks.push(tokio::spawn(async move {
                let _p = sem.acquire().await;
                if let Err(e) = check_health(&st, &a).await {
                    tracing::debug!(app = %a.id, "health check failed: {e}");
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
    flush_metrics(&st).await;
}

// ----------------------------------------------------------- listeners

async fn listening_ports(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<ListListeningPortsResponse>> {
    let w = load(&st, &auth, &id).await?;
    running(&w)?;
    let client = st.nodes().client(&w.node_id)?;
    let ports = client.ports(&w.id).await.map_err(|e| node_error(e, "listing ports"))?;
    let exposed: BTreeSet<i64> = st.store().apps_of_workspace(&w.id).await?.iter().map(|a| a.port).collect();
    Ok(Json(ListListeningPortsResponse {
        ports: ports
            .into_iter()
            .map(|p| ListeningPortView {
                port: i32::from(p.port),
                already_exposed: exposed.contains(&i64::from(p.port)),
                address: p.address,
                process: p.process,
                pid: p.pid,
                command: p.command,
                systemd_unit: p.systemd_unit,
            })
            .collect(),
    }))
}

/// What `detect` finds about the process on a port.
#[derive(Debug, Clone)]
struct Detected {
    pid: u32,
    process_name: String,
    argv: Vec<String>,
    exe: String,
    cwd: String,
    user: String,
    env: Vec<(String, String)>,
    unit: Option<String>,
}

/// Environment variables that belong to the process's old context, not to the app.
const ENV_NOISE: &[&str] =
    &["INVOCATION_ID", "JOURNAL_STREAM", "SYSTEMD_EXEC_PID", "MANAGERPID", "NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "_", "SHLVL", "PWD", "OLDPWD", "TERM"];

async fn detect(st: &AppState, w: &WorkspaceRow, port: u16) -> ApiResult<Detected> {
    let client = st.nodes().client(&w.node_id)?;
    let ports = client.ports(&w.id).await.map_err(|e| node_error(e, "listing ports"))?;
    let Some(l) = ports.into_iter().find(|p| p.port == port) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "port_not_listening", format!("nothing listens on port {port} in workspace {}", w.name)));
    };
    let Some(pid) = l.pid else {
        return Err(ApiError::conflict(format!("the process listening on port {port} cannot be seen")));
    };
    let script = format!(
        "p=/proc/{pid}; echo \"exe=$(readlink $p/exe)\"; echo \"cwd=$(readlink $p/cwd)\"; echo \"user=$(stat -c %U $p)\"; \
         echo \"argv=$(base64 -w0 < $p/cmdline)\"; echo \"env=$(base64 -w0 < $p/environ)\""
    );
    let r = root_exec(st, w, &script, 20).await?;
    if r.exit_code != Some(0) {
        return Err(ApiError::conflict(format!("could not inspect process {pid}: {}", r.stderr.trim())));
    }
    let mut f: BTreeMap<&str, &str> = BTreeMap::new();
    for line in r.stdout.lines() {
        if let Some((k, v)) = line.split_once('=') {
            f.insert(k, v);
        }
    }
    let b64 = |k: &str| base64::engine::general_purpose::STANDARD.decode(f.get(k).copied().unwrap_or_default()).unwrap_or_default();
    let split0 = |b: Vec<u8>| -> Vec<String> { b.split(|c| *c == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect() };
    let argv = split0(b64("argv"));
    let env = split0(b64("env"))
        .into_iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .filter(|(k, v)| !ENV_NOISE.contains(&k.as_str()) && !k.is_empty() && !v.contains('\n'))
        .collect();
    if argv.is_empty() {
        return Err(ApiError::conflict(format!("process {pid} has no command line (a kernel thread?)")));
    }
    Ok(Detected {
        pid,
        process_name: l.process.unwrap_or_default(),
        exe: f.get("exe").map(|s| s.to_string()).filter(|s| !s.is_empty()).unwrap_or_else(|| argv[0].clone()),
        cwd: f.get("cwd").map(|s| s.to_string()).filter(|s| !s.is_empty()).unwrap_or_else(|| "/".into()),
        user: f.get("user").map(|s| s.to_string()).filter(|s| !s.is_empty()).unwrap_or_else(|| "root".into()),
        argv,
        env,
        unit: l.systemd_unit,
    })
}

/// Quotes one word for a systemd `ExecStart=` line.
fn systemd_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '$' => out.push_str("$$"),
            '%' => out.push_str("%%"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The unit file for a detected process.
fn unit_file(name: &str, d: &Detected, env_file: &str) -> String {
    let exec = std::iter::once(format!("@{}", systemd_quote(&d.exe))).chain(d.argv.iter().map(|a| systemd_quote(a))).collect::<Vec<_>>().join(" ");
    format!(
        "[Unit]\nDescription=Rigbox app {name} (wrapped from pid {pid}, {proc})\nAfter=network.target\n\n\
         [Service]\nType=simple\nUser={user}\nWorkingDirectory={cwd}\nEnvironmentFile=-{env_file}\nExecStart={exec}\n\
         Restart=always\nRestartSec=2\n\n[Install]\nWantedBy=multi-user.target\n",
        pid = d.pid,
        proc = d.process_name.replace('\n', " "),
        user = d.user,
        cwd = d.cwd.replace('%', "%%"),
    )
}

fn env_file(env: &[(String, String)]) -> String {
    env.iter().map(|(k, v)| format!("{k}=\"{}\"\n", v.replace('\\', "\\\\").replace('"', "\\\""))).collect()
}

async fn expose_port(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<ExposePortRequest>, JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Json(req) = body?;
    let port = check_port(req.port)?;
    let w = load(&st, &auth, &id).await?;
    running(&w)?;
    let d = detect(&st, &w, port).await?;
    let is_systemd = d.unit.as_deref().is_some_and(is_app_unit);
    let mut suggested = names::suggest_subdomain(&format!("{}-{}", w.name, if d.process_name.is_empty() { "app" } else { &d.process_name }));
    if names::validate_subdomain(&suggested).is_err() {
        suggested = format!("app-{port}");
    }
    match req.step.as_str() {
        "detect" => Ok(Json(serde_json::json!({
            "step": "detect",
            "port": port,
            "pid": d.pid,
            "process_name": d.process_name,
            "command": d.argv.join(" "),
            "cwd": d.cwd,
            "env_vars": d.env.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            "is_systemd": is_systemd,
            "systemd_unit": d.unit,
            "suggested_name": suggested,
        }))),
        "wrap" => {
            let name = req.name.clone().unwrap_or(suggested);
            let subdomain = names::suggest_subdomain(&name);
            check_subdomain(&subdomain)?;
            let create = CreateAppRequest {
                workspace_id: w.id.clone(),
                name: name.clone(),
                port: Some(i64::from(port)),
                subdomain: Some(subdomain.clone()),
                ..Default::default()
            };
            if is_systemd {
                let unit = d.unit.clone().unwrap_or_default();
                let row = create_app(&st, &auth, create, Some(unit.clone()), None).await?;
                return Ok(Json(serde_json::json!({
                    "step": "wrap",
                    "message": format!("Port {port} is served by {unit}; app {} created", row.name),
                    "app": view(&st, &row),
                    "service_name": unit,
                    "needs_restart": false,
                })));
            }
            // Refuse clashes before writing anything into the guest.
            if st.store().app_by_subdomain(&subdomain).await.is_ok() {
                return Err(ApiError::new(StatusCode::CONFLICT, "subdomain_taken", format!("the subdomain {subdomain:?} is taken")));
            }
            let unit = format!("rigbox-app-{subdomain}.service");
            let env_path = format!("/etc/rigbox/apps/{subdomain}.env");
            let client = st.nodes().client(&w.node_id)?;
            client.write_file(&w.id, &env_path, env_file(&d.env), Some("0600")).await.map_err(|e| node_error(e, "writing the environment file"))?;
            client
                .write_file(&w.id, &format!("/etc/systemd/system/{unit}"), unit_file(&name, &d, &env_path), Some("0644"))
                .await
                .map_err(|e| node_error(e, "writing the unit"))?;
            let r = root_exec(&st, &w, &format!("systemctl daemon-reload && systemctl enable {unit}"), 60).await?;
            if r.exit_code != Some(0) {
                return Err(ApiError::new(StatusCode::BAD_GATEWAY, "wrap_failed", format!("enabling {unit} failed: {}", r.stderr.trim())));
            }
            let extra = serde_json::json!({"wrapped_pid": d.pid, "wrapped_command": d.argv.join(" ")});
            let row = create_app(&st, &auth, create, Some(unit.clone()), Some(extra)).await?;
            Ok(Json(serde_json::json!({
                "step": "wrap",
                "message": format!(
                    "Wrote and enabled {unit} for `{}`; the running process (pid {}) keeps the port until the app restarts (POST /apps/{}/restart hands it over to the unit)",
                    d.argv.join(" "), d.pid, row.id
                ),
                "app": view(&st, &row),
                "service_name": unit,
                "needs_restart": true,
            })))
        }
        other => Err(ApiError::bad_request(format!("step must be detect or wrap (got {other:?})"))),
    }
}

// ----------------------------------------------------------------- metrics

fn to_row(s: MetricSample) -> AppMetricRow {
    let c = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
    AppMetricRow {
        app_id: s.app_id,
        host: s.host,
        t: s.t,
        step_secs: s.step_secs,
        requests: c(s.requests),
        errors_5xx: c(s.errors_5xx),
        status_classes: s.status_classes.map(c),
        bytes_out: c(s.bytes_out),
        latency_hist: s.latency_hist,
    }
}

/// Moves what the edge recorded into the database.
pub async fn flush_metrics(st: &AppState) {
    if let Some(r) = st.ext::<Recorder>() {
        let rows: Vec<AppMetricRow> = r.drain().into_iter().map(to_row).collect();
        if let Err(e) = st.store().insert_app_metrics(&rows).await {
            tracing::warn!("storing edge metrics failed: {e}");
        }
    }
}

fn range_of(q: &RangeQuery) -> ApiResult<(String, i64, i64)> {
    let r = q.range.clone().unwrap_or_else(|| "1h".into());
    let (secs, step) = match r.as_str() {
        "1h" => (3600, 60),
        "6h" => (6 * 3600, 300),
        "24h" => (86400, 900),
        "7d" => (7 * 86400, 3600),
        other => return Err(ApiError::bad_request(format!("range must be 1h, 6h, 24h or 7d (got {other:?})"))),
    };
    Ok((r, secs, step))
}

#[derive(Default, Clone)]
struct Agg {
    requests: i64,
    errors: i64,
    classes: [i64; 5],
    bytes: i64,
    hist: Vec<u64>,
}

impl Agg {
    fn add(&mut self, m: &AppMetricRow) {
        self.requests += m.requests;
        self.errors += m.errors_5xx;
        for (a, b) in self.classes.iter_mut().zip(m.status_classes) {
            *a += b;
        }
        self.bytes += m.bytes_out;
        merge_hist(&mut self.hist, &m.latency_hist);
    }
}

async fn samples(st: &AppState, auth: &Auth, id: &str, q: &RangeQuery) -> ApiResult<(AppRow, String, i64, i64, Vec<AppMetricRow>, Vec<String>)> {
    let a = load_app(st, auth, id).await?;
    let (range, secs, step) = range_of(q)?;
    flush_metrics(st).await;
    let since = (Utc::now().timestamp() - secs) / step * step;
    let rows = st.store().app_metrics(&a.id, since).await?;
    let mut hosts: Vec<String> = rows.iter().map(|r| r.host.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    if hosts.is_empty() {
        hosts.push(names::host_only(app_url(st, &a.subdomain).split("://").nth(1).unwrap_or_default()));
    }
    Ok((a, range, secs, step, rows, hosts))
}

fn ratio(a: i64, b: i64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

async fn metrics(State(st): State<AppState>, auth: Auth, Path(id): Path<String>, Query(q): Query<RangeQuery>) -> ApiResult<Json<AppMetricsResponse>> {
    let (_, range, secs, step, rows, hosts) = samples(&st, &auth, &id, &q).await?;
    let now = Utc::now().timestamp();
    let first = (now - secs) / step * step;
    let mut buckets: BTreeMap<i64, Agg> = (0..=(secs / step)).map(|i| (first + i * step, Agg::default())).filter(|(t, _)| *t <= now).collect();
    let mut total = Agg::default();
    for r in &rows {
        let t = r.t / step * step;
        buckets.entry(t).or_default().add(r);
        total.add(r);
    }
    let mut series =
        AppMetricsSeries { request_rate: vec![], error_rate_5xx: vec![], latency_p50_ms: vec![], latency_p95_ms: vec![], latency_p99_ms: vec![], bandwidth_out_bps: vec![] };
    for (t, b) in &buckets {
        let p = |v: f64| MetricPoint { t: *t, v };
        series.request_rate.push(p(b.requests as f64 / step as f64));
        series.error_rate_5xx.push(p(ratio(b.errors, b.requests)));
        series.latency_p50_ms.push(p(percentile(&b.hist, 50.0)));
        series.latency_p95_ms.push(p(percentile(&b.hist, 95.0)));
        series.latency_p99_ms.push(p(percentile(&b.hist, 99.0)));
        series.bandwidth_out_bps.push(p(b.bytes as f64 * 8.0 / step as f64));
    }
    let status_codes = total
        .classes
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| AppStatusCodeMetric { class: format!("{}xx", i + 1), count: *n as f64, ratio: ratio(*n, total.requests) })
        .collect();
    Ok(Json(AppMetricsResponse { range, step_seconds: step, hosts, series, status_codes }))
}

async fn metrics_summary(State(st): State<AppState>, auth: Auth, Path(id): Path<String>, Query(q): Query<RangeQuery>) -> ApiResult<Json<AppMetricsSummaryResponse>> {
    let (_, range, secs, _, rows, hosts) = samples(&st, &auth, &id, &q).await?;
    let mut total = Agg::default();
    for r in &rows {
        total.add(r);
    }
    Ok(Json(AppMetricsSummaryResponse {
        range,
        hosts,
        total_requests: total.requests as f64,
        request_rate_avg: total.requests as f64 / secs as f64,
        total_errors_5xx: total.errors as f64,
        error_rate_5xx: ratio(total.errors, total.requests),
        latency_p50_ms: percentile(&total.hist, 50.0),
        latency_p95_ms: percentile(&total.hist, 95.0),
        latency_p99_ms: percentile(&total.hist, 99.0),
        bandwidth_out_bytes: total.bytes as f64,
    }))
}

// ------------------------------------------------- the edge's lookups

fn lookup_err(e: DbError) -> LookupError {
    LookupError(e.to_string())
}

/// Routes from the database and the node directory.
#[derive(Debug, Clone)]
pub struct DbRoutes(pub AppState);

#[async_trait::async_trait]
impl rigbox_edge::RouteLookup for DbRoutes {
    async fn route(&self, subdomain: &str) -> Result<Option<Route>, LookupError> {
        let st = &self.0;
        let a = match st.store().app_by_subdomain(subdomain).await {
            Ok(a) if a.app_kind == "service" => a,
            Ok(_) | Err(DbError::NotFound) => return Ok(None),
            Err(e) => return Err(lookup_err(e)),
        };
        let w = match st.store().workspace(&a.workspace_id).await {
            Ok(w) => w,
            Err(DbError::NotFound) => return Ok(None),
            Err(e) => return Err(lookup_err(e)),
        };
        let owner = st.store().user(&a.user_id).await.map_err(lookup_err)?;
        let node = st.nodes().client(&w.node_id).map_err(|e| LookupError(e.message))?;
        Ok(Some(Route {
            app_id: a.id,
            app_name: a.name,
            subdomain: a.subdomain,
            status: rigbox_edge::AppRunState::parse(&a.status),
            workspace_id: w.id,
            workspace_status: w.status,
            node_id: w.node_id,
            node,
            port: u16::try_from(a.port).unwrap_or(0),
            visibility: Visibility::parse(&a.visibility).unwrap_or(Visibility::Private),
            owner: EdgeUser { id: owner.id, email: owner.email },
            allowed_emails: a.allowed_emails,
        }))
    }
}

/// Identities from the API keys table.
#[derive(Debug, Clone)]
pub struct DbAuth(pub AppState);

#[async_trait::async_trait]
impl rigbox_edge::Authenticator for DbAuth {
    async fn by_key(&self, key: &str) -> Result<Option<KeyIdentity>, LookupError> {
        match self.0.store().api_key_by_hash(&hash_key(key)).await {
            Ok((k, u)) => Ok(Some(KeyIdentity { user: EdgeUser { id: u.id, email: u.email }, key_id: k.id })),
            Err(DbError::NotFound) => Ok(None),
            Err(e) => Err(lookup_err(e)),
        }
    }

    async fn by_key_id(&self, user_id: &str, key_id: &str) -> Result<Option<EdgeUser>, LookupError> {
        let keys = self.0.store().api_keys(user_id).await.map_err(lookup_err)?;
        if !keys.iter().any(|k| k.id == key_id) {
            return Ok(None);
        }
        match self.0.store().user(user_id).await {
            Ok(u) => Ok(Some(EdgeUser { id: u.id, email: u.email })),
            Err(DbError::NotFound) => Ok(None),
            Err(e) => Err(lookup_err(e)),
        }
    }
}

/// Stores drained edge samples.
#[derive(Debug, Clone)]
pub struct DbMetrics(pub AppState);

#[async_trait::async_trait]
impl rigbox_edge::metrics::MetricsSink for DbMetrics {
    async fn store(&self, samples: Vec<MetricSample>) -> Result<(), LookupError> {
        let rows: Vec<AppMetricRow> = samples.into_iter().map(to_row).collect();
        self.0.store().insert_app_metrics(&rows).await.map_err(lookup_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_files_quote_the_command() {
        let d = Detected {
            pid: 42,
            process_name: "python3".into(),
            argv: vec!["python3".into(), "-c".into(), "print(\"$HOME 100%\")".into()],
            exe: "/usr/bin/python3.11".into(),
            cwd: "/home/developer/my app".into(),
            user: "developer".into(),
            env: vec![("A".into(), "x\"y".into())],
            unit: None,
        };
        let u = unit_file("web", &d, "/etc/rigbox/apps/web.env");
        assert!(u.contains("ExecStart=@\"/usr/bin/python3.11\" \"python3\" \"-c\" \"print(\\\"$$HOME 100%%\\\")\""), "{u}");
        assert!(u.contains("WorkingDirectory=/home/developer/my app\n"), "{u}");
        assert!(u.contains("User=developer"));
        assert_eq!(env_file(&d.env), "A=\"x\\\"y\"\n");
    }

    #[test]
    fn units_of_apps() {
        assert!(is_app_unit("myapp.service"));
        assert!(!is_app_unit(AGENT_UNIT));
        assert!(!is_app_unit("user@1000.service"));
        assert!(!is_app_unit("session-1.scope"));
    }

    #[test]
    fn inputs_are_validated() {
        assert!(check_port(0).is_err() && check_port(70000).is_err() && check_port(i64::from(AGENT_PORT)).is_err());
        assert_eq!(check_port(8080).unwrap(), 8080);
        assert_eq!(check_emails(vec![" A@X.test ".into(), "a@x.test".into()]).unwrap(), vec!["a@x.test".to_string()]);
        assert!(check_emails(vec!["nope".into()]).is_err());
        assert!(check_health_path("/healthz").is_ok() && check_health_path("healthz").is_err());
        assert!(check_subdomain("api").is_err() && check_subdomain("my-app").is_ok());
        assert!(range_of(&RangeQuery { range: Some("2h".into()) }).is_err());
        assert_eq!(range_of(&RangeQuery { range: None }).unwrap().2, 60);
        let s = unit_script("restart", "u.service", Some(7));
        assert!(s.starts_with("pid=7;") && s.ends_with("systemctl restart u.service"));
        assert_eq!(unit_script("stop", "u.service", Some(7)), "systemctl stop u.service");
    }
}
