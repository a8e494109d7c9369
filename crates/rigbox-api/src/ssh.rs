//! SSH keys, SSH connection info and the browser terminal.
//!
//! ## SSH keys
//! | Route | Answer |
//! |---|---|
//! | `GET /ssh-keys` | `{ssh_keys:[{id, user_id, name, public_key, fingerprint, created_at}]}` |
//! | `POST /ssh-keys` `{name, public_key}` | 201 `SshKey`; 400 for a malformed key, 409 when the key (any user) or the name is taken |
//! | `DELETE /ssh-keys/{id}` | `{message}` |
//! | `GET /workspaces/{id}/ssh-keys` | `{keys:[{key_type, fingerprint, comment}]}` parsed from the guest's `~developer/.ssh/authorized_keys` |
//! | `POST /workspaces/{id}/ssh-keys/sync` | `{synced, keys}`: the user's keys written to that file |
//! | `GET /workspaces/{id}/ssh-info` | `{workspace, workspace_id, status, user, host, port, ssh_target, command, host_key_fingerprint}` |
//!
//! Public keys are OpenSSH lines (`ssh-ed25519 AAAA… comment`), validated
//! and stored with their SHA-256 fingerprint; a key belongs to one user only,
//! since the SSH gateway identifies users by key. Adding or removing a key
//! also rewrites `authorized_keys` in the user's running workspaces (in the
//! background), and new workspaces get the keys at creation. The gateway
//! itself does not need the file: it authenticates against the database.
//!
//! ## Browser terminal
//! `GET /workspaces/{id}/terminal` is a WebSocket to a login shell (as
//! `developer`, with a PTY) in a running workspace. Authentication is the
//! usual `Authorization: Bearer rb_…` header or, for browsers that cannot
//! set headers, `?token=…` from `POST /workspaces/{id}/terminal/token`
//! (`{token, expires_at}`: single use, valid 60 s, bound to the user and the
//! workspace). Optional query parameters: `rows`, `cols` (initial size,
//! default 24×80) and `term` (default `xterm-256color`).
//!
//! Frames, client → server (text, JSON):
//! - `{"type":"input","data":"ls\r"}`: keystrokes (UTF-8); a binary frame
//!   is taken as raw input bytes too;
//! - `{"type":"resize","rows":40,"cols":120}`;
//! - `{"type":"signal","signal":2}`: a signal (number) to the shell's
//!   process group (Ctrl-C as input works too, through the PTY).
//!
//! Server → client:
//! - binary frames: terminal output bytes, to write to xterm.js as they are
//!   (`term.write(new Uint8Array(ev.data))`);
//! - a final text frame `{"type":"exit","code":N}` when the shell ends
//!   (`code` is 128+signal when it was killed; `signal` is then set too),
//!   or `{"type":"error","message":…}` when the session could not run;
//!   the server then closes the socket.
//!
//! Every connection is its own shell: sessions on one workspace are
//! independent. Closing the socket hangs up the shell (SIGHUP).
//!
//! With xterm.js (the token request is made with the API key by the page's
//! backend, or by the page itself when it holds the key):
//!
//! ```js
//! const { token } = await (await fetch(`/api/v1/workspaces/${ws}/terminal/token`,
//!   { method: "POST", headers: { Authorization: `Bearer ${key}` } })).json();
//! const term = new Terminal(); term.open(el);
//! const sock = new WebSocket(`wss://${host}/api/v1/workspaces/${ws}/terminal` +
//!   `?token=${token}&rows=${term.rows}&cols=${term.cols}`);
//! sock.binaryType = "arraybuffer";
//! sock.onmessage = (e) => {
//!   if (typeof e.data !== "string") return term.write(new Uint8Array(e.data));
//!   const m = JSON.parse(e.data);
//!   if (m.type === "exit") term.write(`\r\n[exited with ${m.code}]\r\n`);
//!   if (m.type === "error") term.write(`\r\n[error: ${m.message}]\r\n`);
//! };
//! term.onData((data) => sock.send(JSON.stringify({ type: "input", data })));
//! term.onResize(({ rows, cols }) => sock.send(JSON.stringify({ type: "resize", rows, cols })));
//! ```

use crate::auth::Auth;
use crate::error::{node_error, ApiError, ApiResult};
use crate::state::AppState;
use crate::views::MessageResponse;
use crate::workspaces::load;
use axum::extract::rejection::JsonRejection;
use axum::extract::ws::{Message as AxMsg, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures::{SinkExt, StreamExt};
use rigbox_db::ssh::SshKeyRow;
use rigbox_db::{DbError, WorkspaceRow};
use rigbox_node_api::guest::{ClientControl, PtySize, ServerEvent, SessionStart};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message as WsMsg;

/// Where the developer user's keys live in the guest.
pub const AUTHORIZED_KEYS: &str = "/home/developer/.ssh/authorized_keys";
/// Lifetime of a terminal token.
pub const TERMINAL_TOKEN_TTL: Duration = Duration::from_secs(60);

/// Routes under `/api/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ssh-keys", get(list_keys).post(add_key))
        .route("/ssh-keys/{id}", axum::routing::delete(delete_key))
        .route("/workspaces/{id}/ssh-keys", get(workspace_keys))
        .route("/workspaces/{id}/ssh-keys/sync", post(sync_keys))
        .route("/workspaces/{id}/ssh-info", get(ssh_info))
        .route("/workspaces/{id}/terminal", get(terminal))
        .route("/workspaces/{id}/terminal/token", post(terminal_token))
}

/// Where the SSH gateway really listens (registered by the server once the
/// gateway is bound; the configured address is used until then).
#[derive(Debug, Clone)]
pub struct GatewayAddress {
    /// Host users connect to.
    pub host: String,
    /// Port.
    pub port: u16,
    /// SHA-256 fingerprint of the gateway's host key (to check on first connect).
    pub host_key_fingerprint: Option<String>,
}

/// `POST /ssh-keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddSshKeyRequest {
    /// Label (unique per user).
    pub name: String,
    /// One OpenSSH public key line.
    pub public_key: String,
}

/// A registered key (the reference's `SshKeyWithFingerprint`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SshKeyView {
    /// UUID.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Label.
    pub name: String,
    /// The key line.
    pub public_key: String,
    /// `SHA256:…`.
    pub fingerprint: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

impl From<SshKeyRow> for SshKeyView {
    fn from(r: SshKeyRow) -> Self {
        SshKeyView { id: r.id, user_id: r.user_id, name: r.name, public_key: r.public_key, fingerprint: Some(r.fingerprint), created_at: r.created_at }
    }
}

/// `GET /ssh-keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SshKeysResponse {
    /// Keys, oldest first.
    pub ssh_keys: Vec<SshKeyView>,
}

/// A key found in a workspace's `authorized_keys`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SshKeyEntry {
    /// `ssh-ed25519`, ...
    pub key_type: String,
    /// `SHA256:…`.
    pub fingerprint: String,
    /// Comment.
    pub comment: String,
}

/// `GET /workspaces/{id}/ssh-keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListWorkspaceSshKeysResponse {
    /// Keys in the file.
    pub keys: Vec<SshKeyEntry>,
}

/// `POST /workspaces/{id}/ssh-keys/sync`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncSshKeysResponse {
    /// Keys written.
    pub synced: u32,
    /// The keys now in the file.
    pub keys: Vec<SshKeyEntry>,
}

/// `GET /workspaces/{id}/ssh-info`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SshInfo {
    /// Workspace name.
    pub workspace: String,
    /// Workspace id.
    pub workspace_id: String,
    /// Its state.
    pub status: String,
    /// SSH user name (the workspace name).
    pub user: String,
    /// Gateway host.
    pub host: String,
    /// Gateway port.
    pub port: u16,
    /// `user@host`.
    pub ssh_target: String,
    /// A ready `ssh` command line.
    pub command: String,
    /// The gateway's host key fingerprint (`SHA256:…`), as `ssh` shows it on first connect.
    pub host_key_fingerprint: Option<String>,
}

/// `POST /workspaces/{id}/terminal/token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TerminalToken {
    /// Pass as `?token=` to the terminal WebSocket.
    pub token: String,
    /// After this the token is refused.
    pub expires_at: DateTime<Utc>,
}

fn entry(k: &rigbox_ssh::keys::AuthorizedKey) -> SshKeyEntry {
    SshKeyEntry { key_type: k.key_type.clone(), fingerprint: k.fingerprint.clone(), comment: k.comment.clone() }
}

async fn list_keys(State(st): State<AppState>, auth: Auth) -> ApiResult<Json<SshKeysResponse>> {
    let keys = st.store().ssh_keys(&auth.user.id).await?;
    Ok(Json(SshKeysResponse { ssh_keys: keys.into_iter().map(SshKeyView::from).collect() }))
}

async fn add_key(
    State(st): State<AppState>,
    auth: Auth,
    body: Result<Json<AddSshKeyRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<SshKeyView>)> {
    let Json(req) = body?;
    let name = req.name.trim();
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request("name must be 1 to 100 printable characters"));
    }
    let key = rigbox_ssh::keys::parse_public_key(&req.public_key)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_public_key", e.to_string()))?;
    let row = SshKeyRow {
        id: uuid::Uuid::new_v4().to_string(),
        user_id: auth.user.id.clone(),
        name: name.to_string(),
        public_key: key.openssh,
        fingerprint: key.fingerprint,
        created_at: Utc::now(),
    };
    if let Err(e) = st.store().create_ssh_key(&row).await {
        return Err(match e {
            DbError::Conflict(_) => {
                let mine = st.store().ssh_keys(&auth.user.id).await.unwrap_or_default();
                let msg = match mine.iter().find(|k| k.fingerprint == row.fingerprint) {
                    Some(k) => format!("this key is already registered as {:?}", k.name),
                    None if mine.iter().any(|k| k.name == row.name) => format!("a key named {:?} already exists", row.name),
                    None => "this key is already registered".to_string(),
                };
                ApiError::new(StatusCode::CONFLICT, "ssh_key_exists", msg)
            }
            other => other.into(),
        });
    }
    tracing::info!(user = %auth.user.email, fingerprint = %row.fingerprint, "ssh key added");
    sync_running_in_background(&st, &auth.user.id);
    Ok((StatusCode::CREATED, Json(row.into())))
}

async fn delete_key(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<MessageResponse>> {
    match st.store().delete_ssh_key(&auth.user.id, &id).await {
        Ok(()) => {}
        Err(DbError::NotFound) => return Err(ApiError::not_found("SSH key")),
        Err(e) => return Err(e.into()),
    }
    sync_running_in_background(&st, &auth.user.id);
    Ok(Json(MessageResponse::new("SSH key deleted")))
}

/// The user's keys as `authorized_keys` lines (empty on storage errors:
/// the gateway does not need the file).
pub async fn authorized_keys_of(st: &AppState, user_id: &str) -> Vec<String> {
    st.store().ssh_keys(user_id).await.map(|ks| ks.into_iter().map(|k| k.public_key).collect()).unwrap_or_default()
}

/// Writes the user's keys to the workspace's `authorized_keys`.
async fn write_keys(st: &AppState, w: &WorkspaceRow) -> ApiResult<usize> {
    let lines = authorized_keys_of(st, &w.user_id).await;
    let mut text = String::from("# Managed by Rigbox: the account's SSH keys (POST /api/v1/workspaces/{id}/ssh-keys/sync)\n");
    for l in &lines {
        text.push_str(l);
        text.push('\n');
    }
    let client = st.nodes().client(&w.node_id)?;
    client.write_file(&w.id, AUTHORIZED_KEYS, text, Some("0600")).await.map_err(|e| node_error(e, "writing authorized_keys"))?;
    Ok(lines.len())
}

fn sync_running_in_background(st: &AppState, user_id: &str) {
    let st = st.clone();
    let user_id = user_id.to_string();
    tokio::spawn(async move {
        let Ok(ws) = st.store().workspaces_of_user(&user_id).await else { return };
        for w in ws.iter().filter(|w| w.status == "running") {
            if let Err(e) = write_keys(&st, w).await {
                tracing::warn!(workspace = %w.id, "syncing SSH keys: {e}");
            }
        }
    });
}

async fn read_keys(st: &AppState, w: &WorkspaceRow) -> ApiResult<Vec<SshKeyEntry>> {
    let client = st.nodes().client(&w.node_id)?;
    let text = match client.read_file(&w.id, AUTHORIZED_KEYS).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(rigbox_node_api::NodeClientError::Api { status: 404, .. }) => String::new(),
        Err(e) => return Err(node_error(e, "reading authorized_keys")),
    };
    Ok(rigbox_ssh::keys::parse_authorized_keys(&text).iter().map(entry).collect())
}

async fn workspace_keys(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<ListWorkspaceSshKeysResponse>> {
    let w = crate::exec::running(&st, &auth, &id).await?;
    Ok(Json(ListWorkspaceSshKeysResponse { keys: read_keys(&st, &w).await? }))
}

async fn sync_keys(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<SyncSshKeysResponse>> {
    let w = crate::exec::running(&st, &auth, &id).await?;
    let n = write_keys(&st, &w).await?;
    Ok(Json(SyncSshKeysResponse { synced: n as u32, keys: read_keys(&st, &w).await? }))
}

/// The gateway's address as users reach it.
pub fn gateway_address(st: &AppState) -> GatewayAddress {
    st.ext::<GatewayAddress>()
        .map(|a| (*a).clone())
        .unwrap_or_else(|| GatewayAddress { host: st.config().ssh_host.clone(), port: st.config().ssh_port, host_key_fingerprint: None })
}

async fn ssh_info(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<SshInfo>> {
    let w = load(&st, &auth, &id).await?;
    let a = gateway_address(&st);
    let target = format!("{}@{}", w.name, a.host);
    Ok(Json(SshInfo {
        command: format!("ssh -p {} {target}", a.port),
        workspace: w.name.clone(),
        workspace_id: w.id,
        status: w.status,
        user: w.name,
        host: a.host,
        port: a.port,
        ssh_target: target,
        host_key_fingerprint: a.host_key_fingerprint,
    }))
}

/// Single-use terminal tokens: token → (user, workspace, deadline).
#[derive(Debug, Default)]
pub struct TerminalTokens {
    map: Mutex<HashMap<String, (String, String, Instant)>>,
}

impl TerminalTokens {
    fn of(st: &AppState) -> Arc<TerminalTokens> {
        static INIT: Mutex<()> = Mutex::new(());
        if let Some(t) = st.ext::<TerminalTokens>() {
            return t;
        }
        let _g = INIT.lock();
        if let Some(t) = st.ext::<TerminalTokens>() {
            return t;
        }
        let t = Arc::new(TerminalTokens::default());
        st.set_ext(t.clone());
        t
    }

    fn mint(&self, user_id: &str, workspace_id: &str) -> String {
        use rand::distributions::Alphanumeric;
        use rand::Rng;
        let token: String = format!("rbt_{}", rand::thread_rng().sample_iter(&Alphanumeric).take(40).map(char::from).collect::<String>());
        if let Ok(mut m) = self.map.lock() {
            let now = Instant::now();
            m.retain(|_, (_, _, exp)| *exp > now);
            m.insert(token.clone(), (user_id.to_string(), workspace_id.to_string(), now + TERMINAL_TOKEN_TTL));
        }
        token
    }

    /// Takes (consumes) a token: its user id when valid for `workspace_id`.
    fn take(&self, token: &str, workspace: &WorkspaceRow) -> Option<String> {
        let mut m = self.map.lock().ok()?;
        let (user, ws, exp) = m.remove(token)?;
        (exp > Instant::now() && ws == workspace.id && user == workspace.user_id).then_some(user)
    }

    /// The workspace id a token was minted for (without consuming it).
    fn workspace_of(&self, token: &str) -> Option<(String, String)> {
        let m = self.map.lock().ok()?;
        m.get(token).map(|(u, w, _)| (u.clone(), w.clone()))
    }
}

async fn terminal_token(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<TerminalToken>> {
    let w = load(&st, &auth, &id).await?;
    let token = TerminalTokens::of(&st).mint(&auth.user.id, &w.id);
    let ttl = chrono::Duration::from_std(TERMINAL_TOKEN_TTL).unwrap_or_else(|_| chrono::Duration::seconds(60));
    Ok(Json(TerminalToken { token, expires_at: Utc::now() + ttl }))
}

/// Query of the terminal WebSocket.
#[derive(Debug, Deserialize)]
pub struct TerminalQuery {
    token: Option<String>,
    rows: Option<u16>,
    cols: Option<u16>,
    term: Option<String>,
}

/// Messages a terminal client sends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TerminalInput {
    /// Keystrokes.
    Input {
        /// UTF-8 text.
        data: String,
    },
    /// New terminal size.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// A signal number for the shell's process group.
    Signal {
        /// Signal number.
        signal: i32,
    },
}

async fn terminal(
    State(st): State<AppState>,
    auth: Result<Auth, ApiError>,
    Path(id): Path<String>,
    Query(q): Query<TerminalQuery>,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let w = match (auth, &q.token) {
        (Ok(a), _) => crate::exec::running(&st, &a, &id).await?,
        (Err(_), Some(token)) => {
            let tokens = TerminalTokens::of(&st);
            let invalid = || ApiError::unauthorized("invalid or expired terminal token");
            let (user_id, ws_id) = tokens.workspace_of(token).ok_or_else(invalid)?;
            let w = match st.store().workspace_of_user(&user_id, &id).await {
                Ok(w) if w.id == ws_id => w,
                Ok(_) | Err(DbError::NotFound) => return Err(invalid()),
                Err(e) => return Err(e.into()),
            };
            tokens.take(token, &w).ok_or_else(invalid)?;
            if w.status != "running" {
                return Err(ApiError::conflict(format!("workspace {} is {}, not running", w.name, w.status)));
            }
            w
        }
        (Err(e), None) => return Err(e),
    };
    let client = st.nodes().client(&w.node_id)?;
    let upstream = client.session(&w.id).await.map_err(|e| node_error(e, "opening the terminal"))?;
    let start = SessionStart {
        argv: None,
        shell: None,
        pty: Some(PtySize { rows: q.rows.unwrap_or(24).max(1), cols: q.cols.unwrap_or(80).max(1) }),
        term: Some(q.term.unwrap_or_else(|| "xterm-256color".into())),
        env: Default::default(),
        cwd: None,
        user: Some("developer".into()),
    };
    tracing::info!(workspace = %w.id, "terminal session");
    Ok(ws.on_upgrade(move |socket| relay_terminal(socket, upstream, start)))
}

async fn relay_terminal(browser: WebSocket, upstream: rigbox_node_api::WsStream, start: SessionStart) {
    let (mut b_tx, mut b_rx) = browser.split();
    let (mut u_tx, mut u_rx) = upstream.split();
    let text = serde_json::to_string(&start).unwrap_or_default();
    if u_tx.send(WsMsg::Text(text.into())).await.is_err() {
        let _ = b_tx.send(AxMsg::Text(r#"{"type":"error","message":"the workspace session did not start"}"#.into())).await;
        return;
    }
    let up = async {
        while let Some(Ok(m)) = b_rx.next().await {
            let out = match m {
                AxMsg::Binary(b) => WsMsg::Binary(b),
                AxMsg::Text(t) => match serde_json::from_str::<TerminalInput>(&t) {
                    Ok(TerminalInput::Input { data }) => WsMsg::Binary(data.into_bytes().into()),
                    Ok(TerminalInput::Resize { rows, cols }) => ctl(&ClientControl::Resize { rows: rows.max(1), cols: cols.max(1) }),
                    Ok(TerminalInput::Signal { signal }) => ctl(&ClientControl::Signal { signal }),
                    Err(_) => continue,
                },
                AxMsg::Close(_) => break,
                _ => continue,
            };
            if u_tx.send(out).await.is_err() {
                break;
            }
        }
        // Hang up: the guest agent sends SIGHUP to the shell.
        let _ = u_tx.close().await;
    };
    let down = async {
        let mut last = serde_json::json!({"type": "error", "message": "the workspace session ended without an exit status"});
        while let Some(m) = u_rx.next().await {
            match m {
                Ok(WsMsg::Binary(b)) if !b.is_empty() => {
                    if b_tx.send(AxMsg::Binary(b.slice(1..))).await.is_err() {
                        return;
                    }
                }
                Ok(WsMsg::Text(t)) => match serde_json::from_str::<ServerEvent>(&t) {
                    Ok(ServerEvent::Exit { code, signal }) => {
                        let code = code.or(signal.map(|s| 128 + s)).unwrap_or(255);
                        last = serde_json::json!({"type": "exit", "code": code, "signal": signal});
                        break;
                    }
                    Ok(ServerEvent::Error { message }) => {
                        last = serde_json::json!({"type": "error", "message": message});
                        break;
                    }
                    _ => {}
                },
                Ok(WsMsg::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = b_tx.send(AxMsg::Text(last.to_string().into())).await;
        let _ = b_tx.close().await;
    };
    tokio::select! {
        _ = down => {}
        _ = up => {}
    }
}

fn ctl(c: &ClientControl) -> WsMsg {
    WsMsg::Text(serde_json::to_string(c).unwrap_or_default().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_protocol_parses() {
        let m: TerminalInput = serde_json::from_str(r#"{"type":"input","data":"ls\r"}"#).unwrap();
        assert_eq!(m, TerminalInput::Input { data: "ls\r".into() });
        let m: TerminalInput = serde_json::from_str(r#"{"type":"resize","rows":40,"cols":120}"#).unwrap();
        assert_eq!(m, TerminalInput::Resize { rows: 40, cols: 120 });
    }

    #[test]
    fn tokens_are_single_use_and_bound() {
        let t = TerminalTokens::default();
        let tok = t.mint("u-1", "ws-1");
        let mut w = WorkspaceRow {
            id: "ws-2".into(),
            user_id: "u-1".into(),
            node_id: "n".into(),
            name: "b".into(),
            status: "running".into(),
            image: "base".into(),
            template_id: None,
            ram_mb: 1,
            vcpu_count: 1,
            disk_size_mb: 1,
            env_vars: Default::default(),
            setup_script_ids: vec![],
            service_spec_ids: vec![],
            ai_mode: None,
            failure_code: None,
            failure_reason: None,
            failure_at: None,
            creation_attempts: 0,
            creation_started_at: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        assert_eq!(t.take(&tok, &w), None, "another workspace");
        let tok = t.mint("u-1", "ws-1");
        w.id = "ws-1".into();
        assert_eq!(t.take(&tok, &w).as_deref(), Some("u-1"));
        assert_eq!(t.take(&tok, &w), None, "single use");
    }
}
