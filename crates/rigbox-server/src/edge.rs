//! The edge proxy role (listens on RIGBOX_EDGE_LISTEN).

use crate::{ControlPlaneHandle, Settings};
use std::net::SocketAddr;

/// A running edge role.
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

/// Starts the role next to a control plane; `None` while it is not built in.
pub async fn start(_s: &Settings, _cp: &ControlPlaneHandle) -> anyhow::Result<Option<Handle>> {
    let _ = |addr, stop, task| Handle { addr, stop, task };
    Ok(None)
}
