//! Composition of the Rigbox roles from [`Settings`].
//!
//! `rigboxd` is a thin binary over this crate, and the integration tests
//! start the platform through the same functions (on port 0, with a fresh
//! data directory), so what is tested is what runs.
#![warn(missing_docs)]

pub mod ai;
pub mod edge;
pub mod settings;
pub mod ssh;

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

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlaneHandle {
    /// API state (storage, nodes).
    pub state: rigbox_api::AppState,
    /// Where the API listens.
    pub addr: SocketAddr,
    /// The admin key when it was generated at this start (shown once).
    pub generated_admin_key: Option<String>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ControlPlaneHandle {
    /// The API base URL (`http://addr`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and background work.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Opens the control-plane database named by the settings.
pub async fn open_store(s: &Settings) -> anyhow::Result<std::sync::Arc<dyn rigbox_db::Db>> {
    let store = match &s.database_url {
        Some(url) => rigbox_db::SqliteStore::connect(url).await,
        None => rigbox_db::SqliteStore::open(&s.data_dir.join("rigbox.db")).await,
    }
    .context("opening the database")?;
    Ok(std::sync::Arc::new(store))
}

/// Starts the control plane: database, admin bootstrap, node registration
/// (`local_node`: the node of an all-in-one process), reconciler, API.
pub async fn start_control_plane(s: &Settings, local_node: Option<(&str, &str)>) -> anyhow::Result<ControlPlaneHandle> {
    std::fs::create_dir_all(&s.data_dir).with_context(|| format!("creating {}", s.data_dir.display()))?;
    let store = open_store(s).await?;
    let mut recipes = RecipeSet::embedded()?;
    if let Some(dir) = &s.templates_dir {
        recipes = recipes.with_template_dir(dir)?;
    }
    let cfg = rigbox_api::ApiConfig {
        limits: s.limits.clone(),
        base_domain: s.base_domain.clone(),
        ssh_host: s.ssh_listen.ip().to_string(),
        ssh_port: s.ssh_listen.port(),
    };
    let state = rigbox_api::AppState::new(store.clone(), recipes, cfg);
    let generated = rigbox_api::bootstrap_admin(&state, &s.admin_email, s.admin_key.as_ref().map(Secret::expose)).await?;
    if let Some(k) = &generated {
        let path = s.data_dir.join("admin-key");
        write_private(&path, &format!("{k}\n"))?;
        eprintln!("\n  Admin API key (shown once, also saved to {} readable by root only):\n\n    {k}\n", path.display());
    }
    for row in store.nodes().await? {
        state.nodes().insert(&row);
    }
    if let Some((url, token)) = local_node {
        rigbox_api::keys::register(&state, url, token).await.map_err(|e| anyhow::anyhow!("registering the local node: {e}"))?;
    }
    // Bring records in line with the nodes before serving.
    rigbox_api::reconcile::refresh_nodes(&state).await;
    rigbox_api::reconcile::sync_all(&state).await;
    let listener = tokio::net::TcpListener::bind(s.api_listen)
        .await
        .with_context(|| format!("binding the API on {}", s.api_listen))?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let ai_task = ai::start(s, &state, addr, stop.clone())?;
    let app = rigbox_api::router(state.clone());
    let st = stop.clone();
    let api = tokio::spawn(async move {
        // Small writes (SSE events, streamed AI responses) go out at once.
        let listener = axum::serve::ListenerExt::tap_io(listener, |t| {
            let _ = t.set_nodelay(true);
        });
        let r = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move { st.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::error!("API server stopped: {e}");
        }
    });
    let rec = tokio::spawn(rigbox_api::reconcile::run(state.clone(), stop.clone()));
    let sampler = rigbox_api::sampler::start(&state, Duration::from_millis(s.metrics_sample_ms), stop.clone());
    tracing::info!(%addr, "control plane listening");
    Ok(ControlPlaneHandle { state, addr, generated_admin_key: generated, stop, tasks: vec![api, rec, ai_task, sampler] })
}

/// Everything on one machine.
#[derive(Debug)]
pub struct Platform {
    /// The node agent.
    pub node: NodeHandle,
    /// The control plane.
    pub control: ControlPlaneHandle,
    /// The SSH gateway.
    pub ssh: Option<ssh::Handle>,
    /// The edge proxy.
    pub edge: Option<edge::Handle>,
}

impl Platform {
    /// Stops the roles (VMs keep running and are re-adopted at the next start).
    pub async fn shutdown(self) {
        if let Some(e) = self.edge {
            e.shutdown().await;
        }
        if let Some(g) = self.ssh {
            g.shutdown().await;
        }
        self.control.shutdown().await;
        self.node.shutdown().await;
    }
}

/// Starts all roles in this process (`rigboxd up`), building the default
/// templates' images first when they are missing.
pub async fn up(s: &Settings, build_missing: bool) -> anyhow::Result<Platform> {
    if build_missing {
        let p = pipeline(s, Progress::stderr())?;
        let missing: Vec<String> = s.default_templates.iter().filter(|t| p.resolve(t).is_err()).cloned().collect();
        if !missing.is_empty() {
            eprintln!("building guest images for {} (first start only; about 10 minutes on 2 cores)", missing.join(", "));
            build_images(s, missing, Progress::stderr()).await?;
        }
    }
    let node = start_node(s).await?;
    let url = if s.node_url.is_some() { s.node_url() } else { node.url() };
    let control = start_control_plane(s, Some((&url, &node.token))).await?;
    // Keep a warm snapshot of each default template at its floor sizes, so
    // quick deploys restore instead of booting (built in the background).
    for t in &s.default_templates {
        if let Ok(r) = control.state.recipes().template(t) {
            let req = rigbox_node_api::WarmRequest { ram_mb: r.min_ram_mb, vcpus: r.min_vcpu, disk_mb: r.min_disk_mb };
            let client = rigbox_node_api::NodeClient::new(node.url(), node.token.clone());
            let t = t.clone();
            if s.warm_templates {
                tokio::spawn(async move {
                    if let Err(e) = client.warm_template(&t, &req).await {
                        tracing::warn!(template = %t, "warming failed to start: {e}");
                    }
                });
            }
        }
    }
    let ssh = ssh::start(s, &control).await?;
    let edge = edge::start(s, &control).await?;
    Ok(Platform { node, control, ssh, edge })
}
