//! The node API server (see `rigbox-node-api` for the contract).

use crate::error::NodeError;
use crate::node::Node;
use axum::body::Body;
use axum::extract::ws::{Message as AxMsg, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::{SinkExt, StreamExt};
use rigbox_guest_proto::{EnvRequest, ExecRequest, ExecResponse};
use rigbox_node_api::{codes, ConsoleChunk, CreateWorkspace, ErrorBody, ErrorDetail, Resources};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as TMsg;

/// State of the node API handlers.
#[derive(Clone)]
pub struct AppState {
    pub(crate) node: Node,
    pub(crate) token: Arc<String>,
}

async fn auth(State(st): State<AppState>, headers: HeaderMap, req: Request, next: Next) -> Response {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(st.token.as_bytes())) && !st.token.is_empty() {
        next.run(req).await
    } else {
        let body = ErrorBody { error: ErrorDetail { code: codes::UNAUTHORIZED.into(), message: "missing or wrong node token".into() } };
        (StatusCode::UNAUTHORIZED, Json(body)).into_response()
    }
}

/// The node API router, authenticated by `token`.
pub fn router(node: Node, token: String) -> Router {
    let st = AppState { node, token: Arc::new(token) };
    Router::new()
        .route("/v1/node", get(info))
        .route("/v1/workspaces", get(list))
        .route("/v1/workspaces/{id}", put(create).get(status).delete(delete))
        .route("/v1/workspaces/{id}/start", post(start))
        .route("/v1/workspaces/{id}/stop", post(stop))
        .route("/v1/workspaces/{id}/cancel", post(cancel))
        .route("/v1/workspaces/{id}/resources", put(resize))
        .route("/v1/workspaces/{id}/env", post(set_env))
        .route("/v1/workspaces/{id}/setup", put(set_setup).get(setup_status))
        .route("/v1/workspaces/{id}/exec", post(exec))
        .route("/v1/workspaces/{id}/session", get(session))
        .route("/v1/workspaces/{id}/tcp", get(tcp))
        .route("/v1/workspaces/{id}/connect", get(connect))
        .route("/v1/workspaces/{id}/tunnel", get(tunnel))
        .route("/v1/workspaces/{id}/files", get(files).put(files))
        .route("/v1/workspaces/{id}/files/stat", get(files))
        .route("/v1/workspaces/{id}/files/list", get(files))
        .route("/v1/workspaces/{id}/console", get(console))
        .route("/v1/workspaces/{id}/stats", get(stats))
        .route("/v1/workspaces/{id}/ports", get(guest_get))
        .route("/v1/workspaces/{id}/journal", get(guest_get))
        .merge(crate::snapshot::routes())
        .merge(crate::warm::routes())
        .merge(crate::metrics::routes())
        .merge(crate::aiproxy::routes())
        .layer(middleware::from_fn_with_state(st.clone(), auth))
        .with_state(st)
}

/// Serves the node API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Node,
    token: String,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Tunnels (edge, SSH), sessions and streams carry small writes: send
    // them at once instead of waiting on the peer's delayed ACKs.
    let listener = axum::serve::ListenerExt::tap_io(listener, |t| {
        let _ = t.set_nodelay(true);
    });
    axum::serve(listener, router(node, token)).with_graceful_shutdown(shutdown).await
}

type R<T> = Result<T, NodeError>;

async fn info(State(st): State<AppState>) -> Json<rigbox_node_api::NodeInfo> {
    Json(st.node.info().await)
}

async fn list(State(st): State<AppState>) -> Json<Vec<rigbox_node_api::WorkspaceStatus>> {
    Json(st.node.list().await)
}

async fn create(State(st): State<AppState>, Path(id): Path<String>, Json(spec): Json<CreateWorkspace>) -> R<Response> {
    let s = st.node.create(&id, spec).await?;
    Ok((StatusCode::CREATED, Json(s)).into_response())
}

async fn status(State(st): State<AppState>, Path(id): Path<String>) -> R<Json<rigbox_node_api::WorkspaceStatus>> {
    Ok(Json(st.node.status(&id).await?))
}

async fn delete(State(st): State<AppState>, Path(id): Path<String>) -> R<StatusCode> {
    st.node.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn start(State(st): State<AppState>, Path(id): Path<String>) -> R<Json<rigbox_node_api::WorkspaceStatus>> {
    Ok(Json(st.node.start(&id).await?))
}

#[derive(Deserialize)]
struct StopQuery {
    #[serde(default)]
    force: bool,
}

async fn stop(State(st): State<AppState>, Path(id): Path<String>, Query(q): Query<StopQuery>) -> R<Json<rigbox_node_api::WorkspaceStatus>> {
    Ok(Json(st.node.stop(&id, q.force).await?))
}

async fn cancel(State(st): State<AppState>, Path(id): Path<String>) -> R<Json<rigbox_node_api::WorkspaceStatus>> {
    Ok(Json(st.node.cancel(&id).await?))
}

async fn resize(State(st): State<AppState>, Path(id): Path<String>, Json(r): Json<Resources>) -> R<Json<rigbox_node_api::WorkspaceStatus>> {
    Ok(Json(st.node.resize(&id, r).await?))
}

async fn set_env(State(st): State<AppState>, Path(id): Path<String>, Json(r): Json<EnvRequest>) -> R<Json<serde_json::Value>> {
    st.node.set_env(&id, r.env).await?;
    Ok(Json(serde_json::json!({})))
}

async fn set_setup(State(st): State<AppState>, Path(id): Path<String>, Json(plan): Json<rigbox_guest_proto::SetupPlan>) -> R<StatusCode> {
    st.node.set_setup(&id, plan).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn setup_status(State(st): State<AppState>, Path(id): Path<String>) -> R<Json<rigbox_guest_proto::SetupStatus>> {
    let guest = st.node.running_guest(&id).await?;
    Ok(Json(guest.call::<(), _>(hyper::Method::GET, "/v1/setup", None, Duration::from_secs(30)).await?))
}

async fn exec(State(st): State<AppState>, Path(id): Path<String>, Json(req): Json<ExecRequest>) -> R<Json<ExecResponse>> {
    let guest = st.node.running_guest(&id).await?;
    let timeout = req.timeout_ms.map(|t| Duration::from_millis(t) + Duration::from_secs(30)).unwrap_or(Duration::from_secs(24 * 3600));
    Ok(Json(guest.call(hyper::Method::POST, "/v1/exec", Some(&req), timeout).await?))
}

/// Forwards a request to the guest agent with the same path suffix, query
/// and (streamed) body, and streams the answer back.
async fn forward(st: &AppState, id: &str, agent_path: &str, query: Option<String>, method: hyper::Method, body: Body) -> R<Response> {
    let guest = st.node.running_guest(id).await?;
    let uri = match query {
        Some(q) => format!("{agent_path}?{q}"),
        None => agent_path.to_string(),
    };
    let req = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "guest")
        .body(body)
        .map_err(|e| NodeError::Invalid(e.to_string()))?;
    let resp = guest.send(req, Duration::from_secs(3600)).await?;
    let (parts, incoming) = resp.into_parts();
    let mut out = Response::new(Body::new(incoming));
    *out.status_mut() = parts.status;
    for h in ["content-type", "content-length"] {
        if let Some(v) = parts.headers.get(h) {
            out.headers_mut().insert(h, v.clone());
        }
    }
    Ok(out)
}

async fn files(State(st): State<AppState>, Path(id): Path<String>, RawQuery(q): RawQuery, req: Request) -> R<Response> {
    let suffix = req.uri().path().rsplit_once("/files").map(|(_, s)| s.to_string()).unwrap_or_default();
    let method = req.method().clone();
    forward(&st, &id, &format!("/v1/files{suffix}"), q, method, req.into_body()).await
}

async fn guest_get(State(st): State<AppState>, Path(id): Path<String>, RawQuery(q): RawQuery, req: Request) -> R<Response> {
    let last = req.uri().path().rsplit('/').next().unwrap_or("").to_string();
    forward(&st, &id, &format!("/v1/{last}"), q, hyper::Method::GET, Body::empty()).await
}

#[derive(Deserialize)]
struct ConsoleQuery {
    #[serde(default)]
    offset: u64,
}

async fn console(State(st): State<AppState>, Path(id): Path<String>, Query(q): Query<ConsoleQuery>) -> R<Json<ConsoleChunk>> {
    let (data, next_offset) = st.node.console(&id, q.offset).await?;
    Ok(Json(ConsoleChunk { data, next_offset }))
}

async fn stats(State(st): State<AppState>, Path(id): Path<String>) -> R<Json<rigbox_node_api::WorkspaceStats>> {
    Ok(Json(st.node.stats(&id).await?))
}

async fn session(State(st): State<AppState>, Path(id): Path<String>, ws: WebSocketUpgrade) -> R<Response> {
    let guest = st.node.running_guest(&id).await?;
    let upstream = guest.websocket("/v1/session").await?;
    Ok(ws.on_upgrade(move |client| relay(client, upstream)))
}

#[derive(Deserialize)]
struct PortQuery {
    port: u16,
}

async fn tcp(State(st): State<AppState>, Path(id): Path<String>, Query(q): Query<PortQuery>, ws: WebSocketUpgrade) -> R<Response> {
    let guest = st.node.running_guest(&id).await?;
    let upstream = guest.websocket(&format!("/v1/tcp?port={}", q.port)).await?;
    Ok(ws.on_upgrade(move |client| relay(client, upstream)))
}

async fn connect(State(st): State<AppState>, Path(id): Path<String>, Query(q): Query<PortQuery>, ws: WebSocketUpgrade) -> R<Response> {
    let guest = st.node.running_guest(&id).await?;
    let stream = guest.connect(q.port, Duration::from_secs(5)).await?;
    Ok(ws.on_upgrade(move |client| pipe(client, stream)))
}

#[derive(Deserialize)]
struct TunnelQuery {
    port: u16,
    /// `guest` (default): the guest's interface; `loopback`: 127.0.0.1 inside the guest.
    #[serde(default)]
    via: Option<String>,
}

/// `GET /v1/workspaces/{id}/tunnel?port=P` with `Connection: Upgrade` and
/// `Upgrade: rigbox-tunnel`: after `101 Switching Protocols` the connection
/// carries raw bytes to the guest's port (no framing), so the edge can run
/// HTTP/1.1 or HTTP/2 over it and WebSocket upgrades pass through untouched.
async fn tunnel(State(st): State<AppState>, Path(id): Path<String>, Query(q): Query<TunnelQuery>, req: Request) -> R<Response> {
    let guest = st.node.running_guest(&id).await?;
    let wants = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(rigbox_node_api::TUNNEL_PROTOCOL));
    if !wants {
        return Err(NodeError::Invalid(format!("tunnel needs `Upgrade: {}`", rigbox_node_api::TUNNEL_PROTOCOL)));
    }
    enum Target {
        Direct(tokio::net::TcpStream),
        Agent(Box<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>>),
    }
    let target = match q.via.as_deref() {
        None | Some("guest") => Target::Direct(guest.connect(q.port, Duration::from_secs(5)).await?),
        Some("loopback") => Target::Agent(Box::new(guest.websocket(&format!("/v1/tcp?port={}", q.port)).await?)),
        Some(o) => return Err(NodeError::Invalid(format!("unknown via {o:?}"))),
    };
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!("tunnel upgrade failed: {e}");
                return;
            }
        };
        let mut io = hyper_util::rt::TokioIo::new(upgraded);
        match target {
            Target::Direct(mut s) => {
                let _ = tokio::io::copy_bidirectional(&mut io, &mut s).await;
            }
            Target::Agent(ws) => {
                let _ = crate::wsio::copy_ws_bidirectional(io, *ws).await;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", rigbox_node_api::TUNNEL_PROTOCOL)
        .body(Body::empty())
        .map_err(|e| NodeError::Invalid(e.to_string()))
}

fn to_tung(m: AxMsg) -> Option<TMsg> {
    Some(match m {
        AxMsg::Text(t) => TMsg::Text(t.as_str().into()),
        AxMsg::Binary(b) => TMsg::Binary(b),
        AxMsg::Ping(b) => TMsg::Ping(b),
        AxMsg::Pong(b) => TMsg::Pong(b),
        AxMsg::Close(_) => return None,
    })
}

fn to_axum(m: TMsg) -> Option<AxMsg> {
    Some(match m {
        TMsg::Text(t) => AxMsg::Text(t.as_str().into()),
        TMsg::Binary(b) => AxMsg::Binary(b),
        TMsg::Ping(b) => AxMsg::Ping(b),
        TMsg::Pong(b) => AxMsg::Pong(b),
        TMsg::Close(_) | TMsg::Frame(_) => return None,
    })
}

/// Relays WebSocket messages both ways until either side ends.
async fn relay<S>(client: WebSocket, upstream: tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut cs, mut cr) = client.split();
    let (mut us, mut ur) = upstream.split();
    let up = async {
        while let Some(Ok(m)) = cr.next().await {
            match to_tung(m) {
                Some(m) => {
                    if us.send(m).await.is_err() {
                        break;
                    }
                }
                None => break,
            }
        }
        let _ = us.close().await;
    };
    let down = async {
        while let Some(Ok(m)) = ur.next().await {
            match to_axum(m) {
                Some(m) => {
                    if cs.send(m).await.is_err() {
                        break;
                    }
                }
                None => break,
            }
        }
        let _ = cs.close().await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// Pipes a WebSocket (binary frames) and a TCP stream.
async fn pipe(client: WebSocket, stream: tokio::net::TcpStream) {
    let (mut cs, mut cr) = client.split();
    let (mut r, mut w) = stream.into_split();
    let up = async {
        while let Some(Ok(m)) = cr.next().await {
            match m {
                AxMsg::Binary(b)
                    if w.write_all(&b).await.is_err() => {
                        break;
                    }
                AxMsg::Text(t)
                    if w.write_all(t.as_bytes()).await.is_err() => {
                        break;
                    }
                AxMsg::Close(_) => break,
                _ => {}
            }
        }
        let _ = w.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if cs.send(AxMsg::Binary(bytes::Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = cs.close().await;
    };
    // Half-close: keep reading after the client finished sending.
    tokio::join!(up, down);
}
