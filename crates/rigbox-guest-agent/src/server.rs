//! HTTP routes of the agent.

use crate::{exec, files, identity, stats};
use axum::extract::{ConnectInfo, Query, Request, State, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rigbox_guest_proto::{EnvRequest, ErrorBody, ErrorDetail, ExecRequest, Health, InitRequest, HOST_ADDR};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::RwLock;

/// Shared agent state.
#[derive(Clone)]
pub struct AgentState {
    pub allow_any: bool,
    pub initialized: Arc<AtomicBool>,
    /// Workspace environment (also persisted under /etc/rigbox).
    pub env: Arc<RwLock<BTreeMap<String, String>>>,
    /// Setup scripts and services.
    pub setup: crate::setup::Setup,
}

impl AgentState {
    pub fn new(allow_any: bool) -> Self {
        AgentState {
            allow_any,
            initialized: Arc::new(AtomicBool::new(false)),
            env: Arc::new(RwLock::new(identity::load_env())),
            setup: crate::setup::Setup::load(),
        }
    }
}

/// An error answered as `{"error":{code,message}}`.
#[derive(Debug)]
pub struct AgentError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl AgentError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        AgentError { status: StatusCode::BAD_REQUEST, code: "bad_request", message: message.into() }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        AgentError { status: StatusCode::NOT_FOUND, code: "not_found", message: message.into() }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        AgentError { status: StatusCode::INTERNAL_SERVER_ERROR, code: "internal", message: message.into() }
    }
}

impl From<std::io::Error> for AgentError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::NotFound => AgentError::not_found(e.to_string()),
            std::io::ErrorKind::PermissionDenied => AgentError {
                status: StatusCode::FORBIDDEN,
                code: "forbidden",
                message: e.to_string(),
            },
            _ => AgentError::internal(e.to_string()),
        }
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.into(), message: self.message } };
        (self.status, Json(body)).into_response()
    }
}

async fn only_the_host(State(st): State<AgentState>, ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request, next: Next) -> Response {
    let host = IpAddr::V4(Ipv4Addr::from(HOST_ADDR));
    if st.allow_any || peer.ip() == host {
        next.run(req).await
    } else {
        tracing::warn!(%peer, "refused a connection that is not from the host side of the slot");
        AgentError { status: StatusCode::FORBIDDEN, code: "forbidden", message: "not the host".into() }.into_response()
    }
}

pub async fn serve(listener: tokio::net::TcpListener, state: AgentState) -> std::io::Result<()> {
    let app = Router::new()
        .route("/v1/health", get(health))
        .route("/v1/init", post(init))
        .route("/v1/exec", post(exec_handler))
        .route("/v1/session", get(session))
        .route("/v1/tcp", get(tcp))
        .route("/v1/files", get(files::read).put(files::write))
        .route("/v1/files/stat", get(files::stat))
        .route("/v1/files/list", get(files::list))
        .route("/v1/env", post(set_env))
        .route("/v1/stats", get(stats::stats))
        .route("/v1/ports", get(stats::ports))
        .route("/v1/journal", get(stats::journal))
        .route("/v1/shutdown", post(shutdown))
        .route("/v1/setup", get(setup_status).post(setup_start))
        .layer(middleware::from_fn_with_state(state.clone(), only_the_host))
        .with_state(state);
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
}

async fn health(State(st): State<AgentState>) -> Json<Health> {
    Json(identity::health(st.initialized.load(Ordering::SeqCst)).await)
}

async fn init(State(st): State<AgentState>, Json(req): Json<InitRequest>) -> Result<Json<Health>, AgentError> {
    identity::apply(&st, req).await?;
    st.initialized.store(true, Ordering::SeqCst);
    Ok(Json(identity::health(true).await))
}

async fn exec_handler(State(st): State<AgentState>, Json(req): Json<ExecRequest>) -> Result<Json<rigbox_guest_proto::ExecResponse>, AgentError> {
    let env = st.env.read().await.clone();
    Ok(Json(exec::run(req, &env).await?))
}

async fn session(State(st): State<AgentState>, ws: WebSocketUpgrade) -> Response {
    let env = st.env.read().await.clone();
    ws.on_upgrade(move |socket| exec::session(socket, env))
}

#[derive(Deserialize)]
struct TcpQuery {
    port: u16,
}

async fn tcp(Query(q): Query<TcpQuery>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| exec::tcp_forward(socket, q.port))
}

async fn set_env(State(st): State<AgentState>, Json(req): Json<EnvRequest>) -> Result<Json<serde_json::Value>, AgentError> {
    identity::write_env(&req.env).await?;
    *st.env.write().await = req.env;
    Ok(Json(serde_json::json!({})))
}

async fn setup_start(State(st): State<AgentState>, Json(plan): Json<rigbox_guest_proto::SetupPlan>) -> Result<Json<rigbox_guest_proto::SetupStatus>, AgentError> {
    Ok(Json(st.setup.start(plan).await?))
}

async fn setup_status(State(st): State<AgentState>) -> Json<rigbox_guest_proto::SetupStatus> {
    Json(st.setup.status().await)
}

async fn shutdown() -> Json<serde_json::Value> {
    tokio::spawn(async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let _ = tokio::process::Command::new("systemctl").arg("poweroff").status().await;
    });
    Json(serde_json::json!({}))
}
