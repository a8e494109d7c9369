//! One SSH connection: authentication, session channels bridged to the node
//! agent's session WebSocket, and `direct-tcpip` channels bridged to node
//! tunnels.

use crate::{keys, signals, GatewayConfig, Login, SshDirectory, WorkspaceTarget};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use rigbox_node_api::guest::{ClientControl, PtySize, ServerEvent, SessionStart, STREAM_STDERR};
use russh::server::{Auth, ChannelOpenHandle, Handle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelMsg, ChannelOpenFailure, ChannelReadHalf, ChannelWriteHalf};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// The program that serves the `sftp` subsystem in the guest.
pub const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";

/// Exit code the gateway reports when it could not run anything (stopped
/// workspace, unreachable node).
pub const GATEWAY_EXIT: u32 = 1;

pub(crate) struct GatewayServer {
    pub(crate) directory: Arc<dyn SshDirectory>,
    pub(crate) config: Arc<GatewayConfig>,
}

impl russh::server::Server for GatewayServer {
    type Handler = ConnectionHandler;

    fn new_client(&mut self, peer: Option<SocketAddr>) -> ConnectionHandler {
        ConnectionHandler { directory: self.directory.clone(), config: self.config.clone(), peer, who: None }
    }

    fn handle_session_error(&mut self, error: russh::Error) {
        tracing::debug!("ssh connection ended: {error}");
    }
}

/// Who an authenticated connection is and where it goes.
#[derive(Debug, Clone)]
struct Authed {
    user_id: String,
    login: Login,
    workspace_id: String,
    workspace_name: String,
}

/// Handler of one SSH connection.
pub struct ConnectionHandler {
    directory: Arc<dyn SshDirectory>,
    config: Arc<GatewayConfig>,
    peer: Option<SocketAddr>,
    who: Option<Authed>,
}

impl ConnectionHandler {
    /// Key → user, user name → that user's workspace. Every failure is the
    /// same `None` for the client; the reason goes to the log only.
    async fn authorize(&self, user: &str, key: &russh::keys::PublicKey) -> Option<Authed> {
        let fp = keys::fingerprint(key);
        let peer = self.peer.map(|p| p.to_string()).unwrap_or_default();
        let Some(login) = Login::parse(user) else {
            tracing::info!(%peer, user, "ssh: refused (malformed user name)");
            return None;
        };
        let user_id = match self.directory.user_for_key(&fp).await {
            Ok(Some(u)) => u,
            Ok(None) => {
                tracing::info!(%peer, user, fingerprint = %fp, "ssh: refused (unregistered key)");
                return None;
            }
            Err(e) => {
                tracing::warn!(%peer, "ssh: key lookup failed: {e}");
                return None;
            }
        };
        match self.directory.workspace(&user_id, &login.workspace).await {
            Ok(Some(w)) => {
                tracing::info!(%peer, user = %user_id, workspace = %w.id, "ssh: authenticated");
                Some(Authed { user_id, login, workspace_id: w.id, workspace_name: w.name })
            }
            Ok(None) => {
                tracing::info!(%peer, user = %user_id, name = %login.workspace, "ssh: refused (no such workspace for this user)");
                None
            }
            Err(e) => {
                tracing::warn!(%peer, "ssh: workspace lookup failed: {e}");
                None
            }
        }
    }
}

impl russh::server::Handler for ConnectionHandler {
    type Error = russh::Error;

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        match self.authorize(user, key.public_key).await {
            Some(a) => {
                self.who = Some(a);
                Ok(Auth::Accept)
            }
            None => Ok(Auth::reject()),
        }
    }

    async fn channel_open_session(&mut self, channel: Channel<Msg>, reply: ChannelOpenHandle, session: &mut Session) -> Result<(), Self::Error> {
        let Some(who) = self.who.clone() else {
            reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        };
        reply.accept().await;
        let ctx = ChannelCtx { directory: self.directory.clone(), config: self.config.clone(), who, handle: session.handle() };
        tokio::spawn(run_session_channel(channel, ctx));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(who) = self.who.clone() else {
            reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
            return Ok(());
        };
        let host = host_to_connect.trim_start_matches('[').trim_end_matches(']');
        let local = matches!(host, "localhost" | "127.0.0.1" | "::1" | "0.0.0.0") || host == who.workspace_name || host == who.workspace_id;
        let port = match u16::try_from(port_to_connect) {
            Ok(p) if p != 0 && local => p,
            _ => {
                tracing::info!(workspace = %who.workspace_id, host, port_to_connect, "ssh: refused forwarding target");
                reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
                return Ok(());
            }
        };
        let directory = self.directory.clone();
        tokio::spawn(async move {
            let target = match directory.workspace(&who.user_id, &who.workspace_id).await {
                Ok(Some(w)) if w.status == "running" => w,
                _ => {
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                    return;
                }
            };
            match target.node.tunnel(&target.id, port, true).await {
                Ok(mut tunnel) => {
                    reply.accept().await;
                    let mut stream = channel.into_stream();
                    match tokio::io::copy_bidirectional(&mut stream, &mut tunnel).await {
                        Ok((up, down)) => tracing::debug!(workspace = %target.id, port, up, down, "ssh: forwarded connection closed"),
                        Err(e) => tracing::debug!(workspace = %target.id, port, "ssh: forwarded connection ended: {e}"),
                    }
                }
                Err(e) => {
                    tracing::info!(workspace = %target.id, port, "ssh: forwarding failed: {e}");
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                }
            }
        });
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(&mut self, channel: ChannelId, _name: &str, _value: &str, session: &mut Session) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(&mut self, channel: ChannelId, _data: &[u8], session: &mut Session) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(&mut self, channel: ChannelId, name: &str, session: &mut Session) -> Result<(), Self::Error> {
        if name == "sftp" {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }
}

struct ChannelCtx {
    directory: Arc<dyn SshDirectory>,
    config: Arc<GatewayConfig>,
    who: Authed,
    handle: Handle,
}

/// What a session channel asked to run.
enum Kind {
    Shell,
    Exec(String),
    Sftp,
}

/// A session channel: collects `pty-req` and `env`, waits for `shell`,
/// `exec` or `subsystem`, then bridges to the guest.
async fn run_session_channel(channel: Channel<Msg>, ctx: ChannelCtx) {
    let id = channel.id();
    let (mut rd, wr) = channel.split();
    let mut pty: Option<(String, PtySize)> = None;
    let mut env = BTreeMap::new();
    let kind = loop {
        match rd.wait().await {
            Some(ChannelMsg::RequestPty { term, col_width, row_height, .. }) => {
                pty = Some((term, PtySize { rows: clamp(row_height), cols: clamp(col_width) }));
            }
            Some(ChannelMsg::SetEnv { variable_name, variable_value, .. }) => {
                if variable_name == "LANG" || variable_name.starts_with("LC_") {
                    env.insert(variable_name, variable_value);
                }
            }
            Some(ChannelMsg::RequestShell { .. }) => break Kind::Shell,
            Some(ChannelMsg::Exec { command, .. }) => break Kind::Exec(String::from_utf8_lossy(&command).into_owned()),
            Some(ChannelMsg::RequestSubsystem { name, .. }) if name == "sftp" => break Kind::Sftp,
            Some(ChannelMsg::Eof | ChannelMsg::Close) | None => return,
            Some(_) => {}
        }
    };
    let crlf = pty.is_some();
    let (argv, shell, pty) = match kind {
        Kind::Shell => (None, None, pty),
        Kind::Exec(c) => (None, Some(c), pty),
        // The SFTP server speaks a binary protocol: never through a PTY.
        Kind::Sftp => (Some(vec![SFTP_SERVER.to_string()]), None, None),
    };
    let started = Instant::now();
    let outcome = async {
        let ws = ensure_running(&ctx, &wr, crlf).await?;
        let mut sock = ws.node.session(&ws.id).await.map_err(|e| format!("cannot reach workspace {:?}: {e}", ws.name))?;
        let (term, size) = match pty {
            Some((t, s)) => ((!t.is_empty()).then_some(t), Some(s)),
            None => (None, None),
        };
        let start = SessionStart { argv, shell, pty: size, term, env, cwd: None, user: Some("developer".into()) };
        let text = serde_json::to_string(&start).map_err(|e| e.to_string())?;
        sock.send(Message::Text(text.into())).await.map_err(|e| format!("cannot start the session: {e}"))?;
        tracing::debug!(workspace = %ws.id, ms = started.elapsed().as_millis() as u64, "ssh: session started");
        Ok::<_, String>(sock)
    }
    .await;
    let sock = match outcome {
        Ok(s) => s,
        Err(message) => {
            let nl = if crlf { "\r\n" } else { "\n" };
            let _ = wr.extended_data_bytes(1, Bytes::from(format!("rigbox: {message}{nl}"))).await;
            finish(&wr, &ctx.handle, id, Exit::Code(GATEWAY_EXIT)).await;
            return;
        }
    };
    let exit = bridge(&mut rd, &wr, sock, crlf).await;
    if let Some(exit) = exit {
        finish(&wr, &ctx.handle, id, exit).await;
    }
}

/// A terminal dimension. 0 stays 0, as with OpenSSH's sshd: the client
/// did not know its size (e.g. `ssh -tt` without a local terminal), and
/// programs in the guest then fall back to terminfo's 80x24.
fn clamp(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

enum Exit {
    Code(u32),
    Signal(i32),
}

async fn finish(wr: &ChannelWriteHalf<Msg>, handle: &Handle, id: ChannelId, exit: Exit) {
    match exit {
        Exit::Code(c) => {
            let _ = wr.exit_status(c).await;
        }
        Exit::Signal(s) => {
            let _ = handle.exit_signal_request(id, signals::from_number(s), false, String::new(), String::new()).await;
        }
    }
    let _ = wr.eof().await;
    let _ = wr.close().await;
}

/// The workspace, running: started first when the user asked (`+start`).
async fn ensure_running(ctx: &ChannelCtx, wr: &ChannelWriteHalf<Msg>, crlf: bool) -> Result<WorkspaceTarget, String> {
    let who = &ctx.who;
    let nl = if crlf { "\r\n" } else { "\n" };
    let lookup = || async {
        match ctx.directory.workspace(&who.user_id, &who.workspace_id).await {
            Ok(Some(w)) => Ok(w),
            Ok(None) => Err(format!("workspace {:?} no longer exists", who.workspace_name)),
            Err(e) => Err(format!("cannot look up workspace {:?}: {e}", who.workspace_name)),
        }
    };
    let w = lookup().await?;
    if w.status == "running" {
        return Ok(w);
    }
    let startable = matches!(w.status.as_str(), "stopped" | "provisioned");
    let booting = matches!(w.status.as_str(), "starting" | "provisioning");
    if !who.login.start || !(startable || booting) {
        let host = &ctx.config.public_host;
        let port = ctx.config.public_port;
        let hint = if startable || booting {
            format!(
                "; start it with `rig workspace start {n}`, or connect as `{n}+start` (ssh -p {port} {n}+start@{host}) to start it on connect",
                n = w.name
            )
        } else {
            String::new()
        };
        return Err(format!("workspace {:?} is {}, not running{hint}", w.name, w.status));
    }
    if startable {
        ctx.directory.start_workspace(&who.user_id, &w.id).await.map_err(|e| format!("cannot start workspace {:?}: {e}", w.name))?;
    }
    let _ = wr.extended_data_bytes(1, Bytes::from(format!("rigbox: starting workspace {:?}...{nl}", w.name))).await;
    let deadline = Instant::now() + ctx.config.start_timeout;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let w = lookup().await?;
        match w.status.as_str() {
            "running" => return Ok(w),
            "starting" | "provisioning" | "provisioned" | "stopped" if Instant::now() < deadline => continue,
            "starting" | "provisioning" | "provisioned" | "stopped" => {
                return Err(format!("workspace {:?} did not start within {:?}", w.name, ctx.config.start_timeout))
            }
            other => return Err(format!("workspace {:?} is {other}; it did not start", w.name)),
        }
    }
}

type NodeSocket = rigbox_node_api::WsStream;

/// Copies both ways between the SSH channel and the guest session until the
/// guest reports the exit (returned) or the client closes the channel (`None`).
async fn bridge(rd: &mut ChannelReadHalf, wr: &ChannelWriteHalf<Msg>, sock: NodeSocket, crlf: bool) -> Option<Exit> {
    let (mut sink, mut stream) = sock.split();
    let up = async {
        loop {
            let control = match rd.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    if sink.send(Message::Binary(data)).await.is_err() {
                        break;
                    }
                    continue;
                }
                Some(ChannelMsg::Eof) => ClientControl::Eof,
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                    ClientControl::Resize { rows: clamp(row_height), cols: clamp(col_width) }
                }
                Some(ChannelMsg::Signal { signal }) => match signals::number(&signal) {
                    Some(n) => ClientControl::Signal { signal: n },
                    None => continue,
                },
                Some(ChannelMsg::Close) | None => break,
                Some(_) => continue,
            };
            let text = serde_json::to_string(&control).unwrap_or_default();
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
        // The guest agent ends the process when its client goes away.
        let _ = sink.close().await;
    };
    let down = async {
        while let Some(m) = stream.next().await {
            match m {
                Ok(Message::Binary(b)) if !b.is_empty() => {
                    let data = b.slice(1..);
                    let sent = if b[0] == STREAM_STDERR { wr.extended_data_bytes(1, data).await } else { wr.data_bytes(data).await };
                    if sent.is_err() {
                        return None;
                    }
                }
                Ok(Message::Text(t)) => match serde_json::from_str::<ServerEvent>(&t) {
                    Ok(ServerEvent::Exit { code: Some(c), .. }) => return Some(Exit::Code(c as u32)),
                    Ok(ServerEvent::Exit { signal: Some(s), .. }) => return Some(Exit::Signal(s)),
                    Ok(ServerEvent::Exit { .. }) => return Some(Exit::Code(255)),
                    Ok(ServerEvent::Error { message }) => {
                        let nl = if crlf { "\r\n" } else { "\n" };
                        let _ = wr.extended_data_bytes(1, Bytes::from(format!("rigbox: {message}{nl}"))).await;
                        return Some(Exit::Code(GATEWAY_EXIT));
                    }
                    _ => {}
                },
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let nl = if crlf { "\r\n" } else { "\n" };
        let _ = wr.extended_data_bytes(1, Bytes::from(format!("rigbox: the workspace session ended without an exit status{nl}"))).await;
        Some(Exit::Code(255))
    };
    tokio::select! {
        exit = down => exit,
        _ = up => None,
    }
}
