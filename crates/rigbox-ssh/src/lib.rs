//! The Rigbox SSH gateway.
//!
//! One listening port (`RIGBOX_SSH_LISTEN`, default `127.0.0.1:2222`) serves
//! every workspace of every user. The SSH user name picks the workspace:
//!
//! ```text
//! ssh -p 2222 my-box@host              # login shell as `developer`, with a PTY
//! ssh -p 2222 my-box@host 'make test'  # a command without PTY; its exit code
//! scp -P 2222 f my-box@host:/tmp/      # scp (SFTP protocol) and sftp
//! ssh -p 2222 -L 8000:localhost:8000 my-box@host   # port forwarding
//! ssh -p 2222 my-box+start@host        # start the workspace if it is stopped
//! ```
//!
//! `my-box` is the workspace's name or id (`ws-…`). The optional `+start`
//! suffix asks the gateway to start a stopped workspace and wait for it;
//! without it a stopped workspace gets a one-line message and exit code 1.
//!
//! ## SSH flow
//!
//! 1. **Authentication** is public-key only. Every offered key may proceed to
//!    a signature (so an offer reveals nothing); after russh has verified
//!    the signature, the gateway asks its [`SshDirectory`] for the user who
//!    registered that key (by SHA-256 fingerprint, `POST /api/v1/ssh-keys`)
//!    and for that user's workspace named by the SSH user name. An
//!    unregistered key, an unknown workspace and another user's workspace
//!    are all the same rejection (`Permission denied (publickey)`), taken in
//!    constant time, so nothing tells which workspaces exist.
//! 2. **Sessions** (`shell`, `exec`, `subsystem sftp`): the gateway looks the
//!    workspace up again (its state may have changed), starts it when asked
//!    (`+start`), then opens the node agent's `session` WebSocket
//!    (`GET /v1/workspaces/{id}/session`) and sends a `SessionStart`: a login
//!    shell, `bash -lc COMMAND`, or `/usr/lib/openssh/sftp-server` (scp uses
//!    SFTP since OpenSSH 9), always as `developer`, with a PTY of the
//!    client's size when it asked for one. Channel data becomes stdin
//!    frames, `window-change` becomes `resize`, `signal` becomes `signal`,
//!    EOF becomes `eof`; stdout goes back as channel data, stderr as
//!    extended data, and the guest's `exit` event as `exit-status` (or
//!    `exit-signal`), then EOF and close.
//! 3. **Port forwarding** (`direct-tcpip`, `ssh -L`) to `localhost`,
//!    `127.0.0.1`, `::1` or the workspace's own name opens the node's raw
//!    tunnel with `via=loopback`, so services bound to 127.0.0.1 in the
//!    guest are reachable; bytes are copied both ways. Other hosts are
//!    refused (the gateway is no general proxy). Remote forwarding (`-R`),
//!    agent and X11 forwarding are refused.
//! 4. The gateway holds **no guest credentials**: it never speaks SSH to the
//!    guest's sshd. It reaches a guest only through the node agent's API,
//!    with the node token the control plane gave it, and the guest agent runs
//!    the process as `developer`. Its own secret is its host key
//!    (`<data_dir>/ssh_host_ed25519_key`, generated on first start, 0600).
//!
//! The gateway has no database code: [`SshDirectory`] is implemented by the
//! server over the control plane's storage and node directory.
#![warn(missing_docs)]

pub mod keys;
mod session;
pub mod signals;

use rigbox_node_api::NodeClient;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use russh;
pub use session::ConnectionHandler;

/// OpenSSH client options for unattended use against the gateway (tests,
/// benchmarks, scripts): no config file, no agent, no known_hosts, only the
/// given key, never a prompt.
pub fn batch_client_options(key: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = [
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=60",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push("-i".into());
    v.push(key.display().to_string());
    v
}

/// Failures of the directory (storage down, node unknown...).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DirectoryError(pub String);

/// A workspace as the gateway needs it.
#[derive(Debug, Clone)]
pub struct WorkspaceTarget {
    /// `ws-…`.
    pub id: String,
    /// Name.
    pub name: String,
    /// Lifecycle state (wire name: `running`, `stopped`...).
    pub status: String,
    /// The node agent that hosts it.
    pub node: NodeClient,
}

/// Lookups the gateway needs from the control plane.
#[async_trait::async_trait]
pub trait SshDirectory: Send + Sync + 'static {
    /// The user who registered the key with this SHA-256 fingerprint (`SHA256:…`).
    async fn user_for_key(&self, fingerprint: &str) -> Result<Option<String>, DirectoryError>;
    /// The user's workspace by name or id (`None` when the user has none by that name).
    async fn workspace(&self, user_id: &str, name_or_id: &str) -> Result<Option<WorkspaceTarget>, DirectoryError>;
    /// Starts the user's stopped workspace (returns once the boot is under way).
    async fn start_workspace(&self, user_id: &str, workspace_id: &str) -> Result<(), DirectoryError>;
}

/// What the SSH user name asks for: `WORKSPACE[+start]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// Workspace name or id.
    pub workspace: String,
    /// Start the workspace when it is stopped.
    pub start: bool,
}

impl Login {
    /// Parses an SSH user name.
    pub fn parse(user: &str) -> Option<Login> {
        let (ws, start) = match user.strip_suffix("+start") {
            Some(w) => (w, true),
            None => (user, false),
        };
        let ok = !ws.is_empty() && ws.len() <= 63 && ws.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        ok.then(|| Login { workspace: ws.to_string(), start })
    }
}

/// Gateway configuration.
#[derive(Clone)]
pub struct GatewayConfig {
    /// The host key.
    pub host_key: russh::keys::PrivateKey,
    /// How long a `+start` waits for the workspace to run.
    pub start_timeout: Duration,
    /// Time every rejected authentication takes.
    pub auth_rejection_time: Duration,
    /// The SSH host name users type (for messages).
    pub public_host: String,
    /// The port users type (for messages).
    pub public_port: u16,
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("host_key", &keys::fingerprint(self.host_key.public_key()))
            .field("start_timeout", &self.start_timeout)
            .finish_non_exhaustive()
    }
}

impl GatewayConfig {
    /// Defaults around a host key.
    pub fn new(host_key: russh::keys::PrivateKey) -> Self {
        GatewayConfig {
            host_key,
            start_timeout: Duration::from_secs(300),
            auth_rejection_time: Duration::from_millis(500),
            public_host: "127.0.0.1".into(),
            public_port: 2222,
        }
    }

    fn russh(&self) -> russh::server::Config {
        use russh::{MethodKind, MethodSet};
        russh::server::Config {
            server_id: russh::SshId::Standard("SSH-2.0-rigbox_gateway".into()),
            methods: MethodSet::from(&[MethodKind::PublicKey][..]),
            auth_rejection_time: self.auth_rejection_time,
            // OpenSSH probes with "none" first: answer that at once.
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: vec![self.host_key.clone()],
            // Interactive shells may idle; dead peers are found by keepalives.
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 4,
            nodelay: true,
            max_auth_attempts: 10,
            ..Default::default()
        }
    }
}

/// Serves SSH on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: GatewayConfig,
    directory: Arc<dyn SshDirectory>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    use russh::server::Server as _;
    let rc = Arc::new(config.russh());
    let mut server = session::GatewayServer { directory, config: Arc::new(config) };
    let running = server.run_on_socket(rc, &listener);
    let handle = running.handle();
    tokio::select! {
        r = running => r,
        _ = shutdown => {
            handle.shutdown("gateway shutting down".into());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        assert_eq!(Login::parse("box"), Some(Login { workspace: "box".into(), start: false }));
        assert_eq!(Login::parse("ws-abc123+start"), Some(Login { workspace: "ws-abc123".into(), start: true }));
        for bad in ["", "+start", "a b", "../x", "a@b", "x+stop"] {
            assert_eq!(Login::parse(bad), None, "{bad:?}");
        }
    }
}
