//! Composition of the Rigbox roles from [`Settings`].
//!
//! `rigboxd` is a thin binary over this crate, and the integration tests
//! start the platform through the same functions (on port 0, with a fresh
//! data directory), so what is tested is what runs.
#![warn(missing_docs)]

pub mod settings;

use anyhow::Context;
use rigbox_image::{ImageCache, Pipeline, Progress, RecipeSet};
use rigbox_node::{Node, NodeConfig};
use rigbox_vmm::probe::{AccelPreference, Choice, HostProbe, VmmPreference};
pub use settings::{Limits, Secret, Settings};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The image pipeline described by the settings.
pub fn pipeline(s: &Settings, progress: Progress) -> anyhow::Result<Pipeline> {
    let mut recipes = RecipeSet::embedded()?;
    if let Some(dir) = &s.templates_dir {
        recipes = recipes.with_template_dir(dir)?;
    }
    Ok(Pipeline::new(ImageCache::new(&s.image_cache), recipes, s.guest_agent_path()).with_progress(progress))
}

/// Builds the images of `templates` (kernel, rootfs, layers) if missing.
pub async fn build_images(s: &Settings, templates: Vec<String>, progress: Progress) -> anyhow::Result<Vec<rigbox_image::GuestImage>> {
    let p = pipeline(s, progress)?;
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = templates.iter().map(String::as_str).collect();
        p.build(&refs)
    })
    .await?
    .context("building guest images")
}

/// Probes the host and applies the VMM settings.
pub fn probe(s: &Settings) -> (HostProbe, Result<Choice, rigbox_vmm::VmmError>) {
    let p = HostProbe::run(s.firecracker_bin.as_deref());
    let vmm: VmmPreference = s.vmm.parse().unwrap_or_default();
    let accel: AccelPreference = s.accel.parse().unwrap_or_default();
    let c = p.choose(vmm, accel, s.pvm_guest_kernel);
    (p, c)
}

/// The node token: the setting, else the one kept in the data dir, else a
/// new one written there (mode 0600).
pub fn node_token(s: &Settings) -> anyhow::Result<String> {
    if let Some(t) = &s.node_token {
        return Ok(t.expose().to_string());
    }
    let path = s.data_dir.join("node-token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    std::fs::create_dir_all(&s.data_dir).with_context(|| format!("creating {}", s.data_dir.display()))?;
    let mut b = [0u8; 32];
    rand::Rng::fill(&mut rand::thread_rng(), &mut b[..]);
    let t = format!("rbn_{}", hex::encode(b));
    write_private(&path, &t)?;
    Ok(t)
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(content.as_bytes())?;
    Ok(())
}

/// A running node agent.
#[derive(Debug)]
pub struct NodeHandle {
    /// The node.
    pub node: Node,
    /// Where its API listens.
    pub addr: SocketAddr,
    /// Its token.
    pub token: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl NodeHandle {
    /// The node API URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving (VMs keep running; a new node agent re-adopts them).
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.node.close();
        let _ = self.task.await;
    }
}

/// Starts the node agent role.
pub async fn start_node(s: &Settings) -> anyhow::Result<NodeHandle> {
    let (probe, choice) = probe(s);
    let choice = choice.context("no usable VMM backend (see `rigboxd doctor`)")?;
    let vmm = probe.build(&choice)?;
    tracing::info!(backend = %choice.backend, accel = %choice.accel, "VMM selected");
    let images = pipeline(s, Progress::stderr())?;
    let mut cfg = NodeConfig::new(s.data_dir.join("node"));
    cfg.boot_timeout = Duration::from_secs(s.boot_timeout_secs);
    cfg.stop_timeout = Duration::from_secs(s.stop_timeout_secs);
    let node = Node::open(cfg, vmm, images).await?;
    let token = node_token(s)?;
    let listener = tokio::net::TcpListener::bind(s.node_listen)
        .await
        .with_context(|| format!("binding the node API on {}", s.node_listen))?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let st = stop.clone();
    let n = node.clone();
    let t = token.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = rigbox_node::server::serve(listener, n, t, async move { st.cancelled().await }).await {
            tracing::error!("node API stopped: {e}");
        }
    });
    tracing::info!(%addr, node_id = node.id(), "node agent listening");
    Ok(NodeHandle { node, addr, token, stop, task })
}
