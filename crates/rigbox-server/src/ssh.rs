//! The SSH gateway role (listens on RIGBOX_SSH_LISTEN).
//!
//! The gateway itself (`rigbox-ssh`) has no database code; this module gives
//! it an [`SshDirectory`] over the control plane's storage and node
//! directory, loads (or creates, mode 0600) the host key
//! (`settings.ssh_host_key`, default `<data_dir>/ssh_host_ed25519_key`) and
//! tells the API where the gateway really listens (for `ssh-info`).

use crate::{ControlPlaneHandle, Settings};
use anyhow::Context;
use rigbox_api::AppState;
use rigbox_db::DbError;
use rigbox_ssh::{DirectoryError, GatewayConfig, SshDirectory, WorkspaceTarget};
use std::net::SocketAddr;
use std::sync::Arc;

/// A running ssh role.
#[derive(Debug)]
pub struct Handle {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// Stops it.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The control plane as the gateway sees it.
#[derive(Debug, Clone)]
pub struct Directory {
    st: AppState,
}

impl Directory {
    /// A directory over the API state.
    pub fn new(st: AppState) -> Self {
        Directory { st }
    }
}

fn db(e: DbError) -> DirectoryError {
    DirectoryError(e.to_string())
}

#[async_trait::async_trait]
impl SshDirectory for Directory {
    async fn user_for_key(&self, fingerprint: &str) -> Result<Option<String>, DirectoryError> {
        match self.st.store().ssh_key_by_fingerprint(fingerprint).await {
            Ok(k) => Ok(Some(k.user_id)),
            Err(DbError::NotFound) => Ok(None),
            Err(e) => Err(db(e)),
        }
    }

    async fn workspace(&self, user_id: &str, name_or_id: &str) -> Result<Option<WorkspaceTarget>, DirectoryError> {
        let w = match self.st.store().workspace_of_user(user_id, name_or_id).await {
            Ok(w) => w,
            Err(DbError::NotFound) => return Ok(None),
            Err(e) => return Err(db(e)),
        };
        let node = self.st.nodes().client(&w.node_id).map_err(|e| DirectoryError(e.message))?;
        Ok(Some(WorkspaceTarget { id: w.id, name: w.name, status: w.status, node }))
    }

    async fn start_workspace(&self, user_id: &str, workspace_id: &str) -> Result<(), DirectoryError> {
        let w = self.st.store().workspace_of_user(user_id, workspace_id).await.map_err(db)?;
        rigbox_api::workspaces::start_workspace(&self.st, w).await.map(|_| ()).map_err(|e| DirectoryError(e.message))
    }
}

/// Starts the gateway next to a control plane.
pub async fn start(s: &Settings, cp: &ControlPlaneHandle) -> anyhow::Result<Option<Handle>> {
    let key_path = s.ssh_host_key.clone().unwrap_or_else(|| s.data_dir.join("ssh_host_ed25519_key"));
    let key = rigbox_ssh::keys::load_or_generate_host_key(&key_path)?;
    let listener = tokio::net::TcpListener::bind(s.ssh_listen)
        .await
        .with_context(|| format!("binding the SSH gateway on {}", s.ssh_listen))?;
    let addr = listener.local_addr()?;
    let host = if addr.ip().is_unspecified() { "localhost".to_string() } else { addr.ip().to_string() };
    let fingerprint = rigbox_ssh::keys::fingerprint(key.public_key());
    cp.state.set_ext(Arc::new(rigbox_api::ssh::GatewayAddress {
        host: host.clone(),
        port: addr.port(),
        host_key_fingerprint: Some(fingerprint.clone()),
    }));
    let mut cfg = GatewayConfig::new(key);
    cfg.public_host = host;
    cfg.public_port = addr.port();
    cfg.start_timeout = std::time::Duration::from_secs(s.boot_timeout_secs + 30);
    let stop = tokio_util::sync::CancellationToken::new();
    let st = stop.clone();
    let dir: Arc<dyn SshDirectory> = Arc::new(Directory::new(cp.state.clone()));
    let task = tokio::spawn(async move {
        if let Err(e) = rigbox_ssh::serve(listener, cfg, dir, async move { st.cancelled().await }).await {
            tracing::error!("SSH gateway stopped: {e}");
        }
    });
    tracing::info!(%addr, host_key = %key_path.display(), %fingerprint, "SSH gateway listening");
    Ok(Some(Handle { addr, stop, task }))
}
