//! The AI proxy listener inside each workspace's slot (169.254.0.1:9090).
//!
//! When a workspace reaches `running`, the node opens a listener on the host
//! side of its slot, inside the slot's network namespace, so only that
//! workspace's guest can connect to it: the connection itself says which
//! workspace calls, whatever the guest sends. Each request whose path is on
//! the allow-list (`rigbox_ai::route::path_allowed`) goes to the control
//! plane (`{url}/internal/v1/ai/proxy`) with the node token, the node id,
//! the workspace id and the guest's path in headers; the guest's
//! `Authorization`, key and identity headers are dropped. The control plane
//! injects the provider key and meters the call; the answer streams back as
//! it arrives. The node never holds a provider key.
//!
//! The control plane announces its URL (`PUT /v1/ai/control-plane`) and
//! each workspace's AI variables (`PUT /v1/workspaces/{id}/ai-env`, also
//! fetched from `GET /internal/v1/ai/workspaces/{id}/env` after every
//! start); the node merges them under the workspace's own environment (the
//! user's variables win) whenever it pushes the environment to the guest.

use crate::error::NodeError;
use crate::node::{Node, Ws};
use crate::server::AppState;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::{Json, Router};
use futures::TryStreamExt;
use rigbox_node_api::{AiControlPlane, AiEnv};
use rigbox_types::WorkspaceState;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Port of the proxy on the host side of every slot.
pub const PROXY_PORT: u16 = 9090;

#[derive(Clone)]
struct ControlPlane {
    url: String,
    token: String,
}

/// AI proxy state of one node.
struct NodeAi {
    cp: RwLock<Option<ControlPlane>>,
    listeners: Mutex<HashMap<String, CancellationToken>>,
    env: Mutex<HashMap<String, BTreeMap<String, String>>>,
    http: reqwest::Client,
}

/// Per node id (several nodes may share a process in tests).
fn state(node_id: &str) -> Arc<NodeAi> {
    static ALL: OnceLock<Mutex<HashMap<String, Arc<NodeAi>>>> = OnceLock::new();
    let mut m = ALL.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    m.entry(node_id.to_string())
        .or_insert_with(|| {
            Arc::new(NodeAi {
                cp: RwLock::new(None),
                listeners: Mutex::new(HashMap::new()),
                env: Mutex::new(HashMap::new()),
                http: reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).pool_idle_timeout(Duration::from_secs(60)).build().unwrap_or_default(),
            })
        })
        .clone()
}

/// The environment to push to a guest: its AI variables under `user` (the user's win).
pub(crate) fn with_ai_env(node: &Node, ws_id: &str, user: BTreeMap<String, String>) -> BTreeMap<String, String> {
    let ai = state(node.id()).env.lock().ok().and_then(|m| m.get(ws_id).cloned()).unwrap_or_default();
    let mut out = ai;
    out.extend(user);
    out
}

/// Node API routes of this feature.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/v1/ai/control-plane", put(set_control_plane)).route("/v1/workspaces/{id}/ai-env", put(set_ai_env))
}

async fn set_control_plane(State(st): State<AppState>, Json(req): Json<AiControlPlane>) -> Result<Json<serde_json::Value>, NodeError> {
    let url = req.url.trim_end_matches('/').to_string();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(NodeError::Invalid(format!("control plane URL must be http(s), not {url:?}")));
    }
    let ai = state(st.node.id());
    let changed = ai.cp.read().map(|c| c.as_ref().map(|c| c.url.as_str()) != Some(url.as_str())).unwrap_or(true);
    if let Ok(mut c) = ai.cp.write() {
        *c = Some(ControlPlane { url: url.clone(), token: st.token.to_string() });
    }
    if changed {
        tracing::info!(%url, "AI proxy forwards to this control plane");
    }
    Ok(Json(serde_json::json!({})))
}

async fn set_ai_env(State(st): State<AppState>, Path(id): Path<String>, Json(req): Json<AiEnv>) -> Result<Json<serde_json::Value>, NodeError> {
    let ws = st.node.get(&id)?;
    if let Ok(mut m) = state(st.node.id()).env.lock() {
        m.insert(id.clone(), req.env);
    }
    push_env(&st.node, &ws).await?;
    Ok(Json(serde_json::json!({})))
}

/// Pushes the merged environment to a running guest.
async fn push_env(node: &Node, ws: &Ws) -> Result<(), NodeError> {
    let (running, user_env) = {
        let rec = ws.rec.lock().await;
        (rec.state == WorkspaceState::Running, rec.spec.env.clone())
    };
    if !running {
        return Ok(());
    }
    let env = with_ai_env(node, &ws.id, user_env);
    ws.guest()
        .call::<_, serde_json::Value>(hyper::Method::POST, "/v1/env", Some(&rigbox_guest_proto::EnvRequest { env }), Duration::from_secs(30))
        .await?;
    Ok(())
}

/// Called when a workspace reached `running` (after boot or restore).
pub(crate) async fn on_running(node: &Node, ws: &Ws) {
    let ai = state(node.id());
    let token = CancellationToken::new();
    {
        let Ok(mut l) = ai.listeners.lock() else { return };
        if let Some(old) = l.get(&ws.id) {
            if !old.is_cancelled() {
                return;
            }
        }
        l.insert(ws.id.clone(), token.clone());
    }
    let addr = SocketAddr::from((rigbox_guest_proto::HOST_ADDR, PROXY_PORT));
    match ws.slot().listen(addr).await {
        Ok(listener) => {
            let ctx = Ctx { ai: ai.clone(), node_id: node.id().to_string(), ws_id: ws.id.clone() };
            tokio::spawn(serve(listener, ctx, token.clone()));
            tracing::debug!(workspace = %ws.id, "AI proxy listening on {addr} in the slot");
        }
        Err(e) => {
            tracing::warn!(workspace = %ws.id, "cannot open the AI proxy in the slot: {e}");
            token.cancel();
            return;
        }
    }
    // Fetch this workspace's AI variables and push them (the control plane
    // may not have announced itself yet right after a node restart).
    let (node, id) = (node.clone(), ws.id.clone());
    tokio::spawn(async move {
        let mut wait = Duration::from_millis(500);
        for _ in 0..40 {
            if token.is_cancelled() {
                return;
            }
            match fetch_env(&ai, node.id(), &id).await {
                Ok(env) => {
                    if let Ok(mut m) = ai.env.lock() {
                        m.insert(id.clone(), env);
                    }
                    if let Ok(ws) = node.get(&id) {
                        if let Err(e) = push_env(&node, &ws).await {
                            tracing::warn!(workspace = %id, "pushing the AI environment: {e}");
                        }
                    }
                    return;
                }
                Err(e) => tracing::debug!(workspace = %id, "AI environment not available yet: {e}"),
            }
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(15));
        }
    });
}

async fn fetch_env(ai: &NodeAi, node_id: &str, ws_id: &str) -> Result<BTreeMap<String, String>, String> {
    let cp = ai.cp.read().ok().and_then(|c| c.clone()).ok_or("the control plane has not announced itself")?;
    let r = ai
        .http
        .get(format!("{}/internal/v1/ai/workspaces/{ws_id}/env", cp.url))
        .bearer_auth(&cp.token)
        .header(rigbox_ai::hop::NODE, node_id)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("control plane answered {}", r.status()));
    }
    r.json::<AiEnv>().await.map(|e| e.env).map_err(|e| e.to_string())
}

/// Called before a workspace's VM and slot go away (stop, crash, delete),
/// with the workspace record locked: do not lock `ws.rec` here.
pub(crate) async fn on_halt(node: &Node, ws: &Ws) {
    let ai = state(node.id());
    if let Some(t) = ai.listeners.lock().ok().and_then(|mut l| l.remove(&ws.id)) {
        t.cancel();
    }
}

#[derive(Clone)]
struct Ctx {
    ai: Arc<NodeAi>,
    node_id: String,
    ws_id: String,
}

/// Serves guest connections until cancelled (see [`crate::slotsrv`]).
async fn serve(listener: tokio::net::TcpListener, ctx: Ctx, token: CancellationToken) {
    let app = Router::new().fallback(forward).with_state(ctx);
    crate::slotsrv::accept_until(listener, token, |stream| {
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(io, svc).await;
        }
    })
    .await
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message, "type": "rigbox_gateway_error", "param": null, "details": null}});
    (status, Json(body)).into_response()
}

async fn forward(State(ctx): State<Ctx>, req: Request) -> Response {
    let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    if !rigbox_ai::route::path_allowed(&path) {
        return error(StatusCode::NOT_FOUND, "not_found", "no such AI endpoint");
    }
    let Some(cp) = ctx.ai.cp.read().ok().and_then(|c| c.clone()) else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "proxy_not_ready", "the AI proxy is not connected to the control plane yet");
    };
    let (parts, body) = req.into_parts();
    let mut rb = ctx.ai.http.request(parts.method.clone(), format!("{}/internal/v1/ai/proxy", cp.url));
    for (k, v) in parts.headers.iter() {
        if rigbox_ai::hop::guest_header_allowed(k.as_str()) {
            rb = rb.header(k.as_str(), v.clone());
        }
    }
    rb = rb
        .bearer_auth(&cp.token)
        .header(rigbox_ai::hop::NODE, ctx.node_id.as_str())
        .header(rigbox_ai::hop::WORKSPACE, ctx.ws_id.as_str())
        .header(rigbox_ai::hop::PATH, path.as_str())
        .body(reqwest::Body::wrap_stream(body.into_data_stream()));
    let resp = match rb.send().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(workspace = %ctx.ws_id, "AI proxy: control plane unreachable: {e}");
            return error(StatusCode::BAD_GATEWAY, "control_plane_unreachable", "the AI proxy cannot reach the control plane");
        }
    };
    let status = resp.status();
    let headers = resp.headers().clone();
    let mut out = Response::new(Body::from_stream(resp.bytes_stream().map_err(std::io::Error::other)));
    *out.status_mut() = status;
    for (k, v) in headers.iter() {
        if rigbox_ai::hop::response_header_allowed(k.as_str()) {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out.headers_mut().entry("cache-control").or_insert(HeaderValue::from_static("no-cache"));
    out
}
