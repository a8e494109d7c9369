//! Exec and files inside a running workspace (beyond the Rigbox reference;
//! what E2B users expect). All of it goes through the workspace's node
//! agent to the guest agent.

use crate::auth::Auth;
use crate::error::{node_error, ApiError, ApiResult};
use crate::state::AppState;
use crate::views::{ExecRequest, ExecResponse};
use crate::workspaces::load;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{SinkExt, StreamExt};
use rigbox_db::WorkspaceRow;
use rigbox_node_api::guest::{self, ServerEvent, SessionStart, STREAM_STDERR};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

/// Routes under `/api/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/workspaces/{id}/exec", post(exec))
        .route("/workspaces/{id}/exec/stream", post(exec_stream))
        .route("/workspaces/{id}/files", get(download).put(upload))
        .route("/workspaces/{id}/files/list", get(list_dir))
        .route("/workspaces/{id}/files/stat", get(stat))
}

/// The caller's running workspace.
pub async fn running(st: &AppState, auth: &Auth, id: &str) -> ApiResult<WorkspaceRow> {
    let mut w = load(st, auth, id).await?;
    if w.status == "starting" {
        // The reconciler may not have seen the boot finish yet: ask the node.
        w = crate::reconcile::refresh(st, w).await;
    }
    if w.status != "running" {
        return Err(ApiError::conflict(format!("workspace {} is {}, not running", w.name, w.status)).details(serde_json::json!({"status": w.status})));
    }
    Ok(w)
}

fn command(v: &serde_json::Value) -> ApiResult<(Option<Vec<String>>, Option<String>)> {
    match v {
        serde_json::Value::String(s) if !s.trim().is_empty() => Ok((None, Some(s.clone()))),
        serde_json::Value::Array(a) if !a.is_empty() => {
            let argv: Option<Vec<String>> = a.iter().map(|x| x.as_str().map(str::to_string)).collect();
            argv.map(|v| (Some(v), None)).ok_or_else(|| ApiError::bad_request("command array must hold strings"))
        }
        _ => Err(ApiError::bad_request("command must be a non-empty string or array of strings")),
    }
}

async fn exec(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<ExecRequest>, JsonRejection>,
) -> ApiResult<Json<ExecResponse>> {
    let Json(req) = body?;
    let (argv, shell) = command(&req.command)?;
    let w = running(&st, &auth, &id).await?;
    let client = st.nodes().client(&w.node_id)?;
    let timeout = req.timeout.unwrap_or(600).clamp(1, 24 * 3600);
    let r = client
        .exec(
            &w.id,
            &guest::ExecRequest {
                argv,
                shell,
                env: req.env,
                cwd: req.cwd,
                user: req.user,
                timeout_ms: Some(timeout * 1000),
                stdin: req.stdin,
            },
        )
        .await
        .map_err(|e| node_error(e, "exec"))?;
    Ok(Json(ExecResponse {
        exit_code: r.exit_code,
        signal: r.signal,
        stdout: r.stdout,
        stderr: r.stderr,
        timed_out: r.timed_out,
        truncated: r.truncated,
        duration_ms: r.duration_ms,
    }))
}

/// Streams a command's output as NDJSON lines:
/// `{"type":"stdout"|"stderr","data":"…"}` and finally
/// `{"type":"exit","exit_code":N,"signal":S}` (or `{"type":"error",…}`).
async fn exec_stream(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<ExecRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(req) = body?;
    let (argv, shell) = command(&req.command)?;
    let w = running(&st, &auth, &id).await?;
    let client = st.nodes().client(&w.node_id)?;
    let mut ws = client.session(&w.id).await.map_err(|e| node_error(e, "exec"))?;
    let start = SessionStart { argv, shell, pty: None, term: None, env: req.env, cwd: req.cwd, user: req.user };
    ws.send(Message::Text(serde_json::to_string(&start).unwrap_or_default().into()))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if let Some(input) = req.stdin {
        let _ = ws.send(Message::Binary(input.into_bytes().into())).await;
    }
    let _ = ws.send(Message::Text(r#"{"type":"eof"}"#.into())).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(32);
    tokio::spawn(async move {
        let line = |v: serde_json::Value| {
            let mut s = v.to_string();
            s.push('\n');
            Ok(bytes::Bytes::from(s))
        };
        while let Some(Ok(m)) = ws.next().await {
            let out = match m {
                Message::Binary(b) if !b.is_empty() => {
                    let kind = if b[0] == STREAM_STDERR { "stderr" } else { "stdout" };
                    line(serde_json::json!({"type": kind, "data": String::from_utf8_lossy(&b[1..])}))
                }
                Message::Text(t) => match serde_json::from_str::<ServerEvent>(&t) {
                    Ok(ServerEvent::Exit { code, signal }) => line(serde_json::json!({"type": "exit", "exit_code": code, "signal": signal})),
                    Ok(ServerEvent::Error { message }) => line(serde_json::json!({"type": "error", "message": message})),
                    _ => continue,
                },
                Message::Close(_) => break,
                _ => continue,
            };
            if tx.send(out).await.is_err() {
                break;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::internal(e.to_string()))
}

#[derive(Deserialize)]
struct FileQuery {
    path: String,
    mode: Option<String>,
}

fn check_path(p: &str) -> ApiResult<()> {
    if !p.starts_with('/') {
        return Err(ApiError::bad_request("path must be absolute"));
    }
    Ok(())
}

async fn download(State(st): State<AppState>, auth: Auth, Path(id): Path<String>, Query(q): Query<FileQuery>) -> ApiResult<Response> {
    check_path(&q.path)?;
    let w = running(&st, &auth, &id).await?;
    let client = st.nodes().client(&w.node_id)?;
    let resp = client.read_file_stream(&w.id, &q.path).await.map_err(|e| match e {
        rigbox_node_api::NodeClientError::Api { status: 404, .. } => ApiError::not_found("file"),
        other => node_error(other, "reading the file"),
    })?;
    let mut b = Response::builder().header("content-type", "application/octet-stream");
    if let Some(len) = resp.content_length() {
        b = b.header("content-length", len);
    }
    b.body(Body::from_stream(resp.bytes_stream())).map_err(|e| ApiError::internal(e.to_string()))
}

async fn upload(State(st): State<AppState>, auth: Auth, Path(id): Path<String>, Query(q): Query<FileQuery>, body: Body) -> ApiResult<Json<guest::FileInfo>> {
    check_path(&q.path)?;
    let w = running(&st, &auth, &id).await?;
    let client = st.nodes().client(&w.node_id)?;
    let stream = reqwest::Body::wrap_stream(body.into_data_stream());
    let info = client.write_file(&w.id, &q.path, stream, q.mode.as_deref()).await.map_err(|e| node_error(e, "writing the file"))?;
    Ok(Json(info))
}

async fn list_dir(State(st): State<AppState>, auth: Auth, Path(id): Path<String>, Query(q): Query<FileQuery>) -> ApiResult<Json<serde_json::Value>> {
    check_path(&q.path)?;
    let w = running(&st, &auth, &id).await?;
    let client = st.nodes().client(&w.node_id)?;
    let entries = client.list_dir(&w.id, &q.path).await.map_err(|e| match e {
        rigbox_node_api::NodeClientError::Api { status: 404, .. } => ApiError::not_found("directory"),
        other => node_error(other, "listing"),
    })?;
    Ok(Json(serde_json::json!({ "entries": entries })))
}

async fn stat(State(st): State<AppState>, auth: Auth, Path(id): Path<String>, Query(q): Query<FileQuery>) -> ApiResult<Json<guest::FileInfo>> {
    check_path(&q.path)?;
    let w = running(&st, &auth, &id).await?;
    let client = st.nodes().client(&w.node_id)?;
    client.stat(&w.id, &q.path).await.map(Json).map_err(|e| match e {
        rigbox_node_api::NodeClientError::Api { status: 404, .. } => ApiError::not_found("file"),
        other => node_error(other, "stat"),
    })
}
