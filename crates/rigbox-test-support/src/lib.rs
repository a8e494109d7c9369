//! Shared test fixtures for Rigbox integration tests.
//!
//! - [`settings`]: settings with a fresh temporary data dir and port 0
//!   everywhere, sharing the machine's image cache (so images are built once);
//! - [`ensure_images`]: builds missing images with the guest agent of this
//!   build (progress on stderr);
//! - [`TestNode`]: a real node agent serving its API on port 0; dropping it
//!   kills every VM and removes every slot it created, even if the test failed;
//! - [`wait_until`]: polls a condition with a deadline.
#![warn(missing_docs)]

use rigbox_image::Progress;
use rigbox_node_api::NodeClient;
use rigbox_server::{NodeHandle, Settings};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Logs of the code under test go to the test's output (`RIGBOX_LOG`).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RIGBOX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

/// Whether the test runs as root (VM tests need it).
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// The cargo target directory of this build (`target/debug`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/<test binary>
    exe.parent().and_then(|d| d.parent()).map(PathBuf::from).expect("target dir")
}

/// Settings for a test: fresh data dir, loopback port 0 everywhere, the
/// machine's image cache, this build's guest agent.
pub fn settings(data_dir: &std::path::Path) -> Settings {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    Settings {
        data_dir: data_dir.to_path_buf(),
        image_cache: std::env::var_os("RIGBOX_IMAGE_CACHE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/cache/rigbox")),
        api_listen: any,
        ssh_listen: any,
        edge_listen: any,
        node_listen: any,
        guest_agent: Some(target_dir().join("rigbox-agent")),
        vmm: std::env::var("RIGBOX_VMM").unwrap_or_else(|_| "auto".into()),
        accel: std::env::var("RIGBOX_ACCEL").unwrap_or_else(|_| "auto".into()),
        boot_timeout_secs: 240,
        stop_timeout_secs: 30,
        // Tests that want warm templates ask for them; booting one in the
        // background of every test would only slow the others down.
        warm_templates: false,
        ..Settings::default()
    }
}

/// Builds the images of `templates` if they are missing (minutes on a fresh machine).
pub async fn ensure_images(s: &Settings, templates: &[&str]) -> anyhow::Result<()> {
    let agent = s.guest_agent_path();
    anyhow::ensure!(agent.exists(), "guest agent not built at {} (cargo build -p rigbox-guest-agent)", agent.display());
    rigbox_server::build_images(s, templates.iter().map(|t| t.to_string()).collect(), Progress::stderr()).await?;
    Ok(())
}

/// A node agent for a test.
pub struct TestNode {
    /// Keeps the data dir alive.
    pub dir: tempfile::TempDir,
    /// Settings used.
    pub settings: Settings,
    /// The running node (None after [`TestNode::restart`] failed).
    pub handle: Option<NodeHandle>,
    /// Client of its API.
    pub client: NodeClient,
    prefix: String,
}

impl TestNode {
    /// Starts a node agent with images for `templates` built.
    pub async fn start(templates: &[&str]) -> anyhow::Result<Self> {
        init_logging();
        let dir = tempfile::Builder::new().prefix("rigbox-test-").tempdir_in(std::env::temp_dir())?;
        let s = settings(dir.path());
        ensure_images(&s, templates).await?;
        let handle = rigbox_server::start_node(&s).await?;
        let client = NodeClient::new(handle.url(), handle.token.clone());
        let prefix = format!("{}-", handle.node.id());
        Ok(TestNode { dir, settings: s, handle: Some(handle), client, prefix })
    }

    /// Stops the node agent process-equivalent (VMs keep running) and starts
    /// a new one on the same data dir, as after a crash or upgrade.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
        let h = rigbox_server::start_node(&self.settings).await?;
        self.client = NodeClient::new(h.url(), h.token.clone());
        self.handle = Some(h);
        Ok(())
    }

    /// VM processes of this node still alive.
    pub fn vm_processes(&self) -> Vec<(u32, String)> {
        rigbox_vmm::process::find_vm_processes().into_iter().filter(|(_, id)| id.starts_with(&self.prefix)).collect()
    }

    /// Network slots of this node.
    pub fn slots(&self) -> Vec<String> {
        rigbox_netns::list_slots()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| rigbox_netns::workspace_of(n).is_some_and(|w| w.starts_with(&self.prefix)))
            .collect()
    }

    /// The scoped name (slot and VM marker) of workspace `id`.
    pub fn scoped(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        // Kill every VM and remove every slot of this node, whatever the test did.
        for (pid, _) in self.vm_processes() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
        for name in self.slots() {
            if let Some(s) = rigbox_netns::workspace_of(&name).and_then(|w| rigbox_netns::Slot::for_workspace(w).ok()) {
                let _ = s.delete();
            }
        }
    }
}

/// The whole platform in this process, for a test.
pub struct TestPlatform {
    /// Keeps the data dir alive.
    pub dir: tempfile::TempDir,
    /// Settings used.
    pub settings: Settings,
    /// The running roles.
    pub platform: Option<rigbox_server::Platform>,
    /// Admin API key.
    pub admin_key: String,
    prefix: String,
}

impl TestPlatform {
    /// Starts everything (images for `templates` built first).
    pub async fn start(templates: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(templates, |_| {}).await
    }

    /// Starts everything after `tweak` adjusted the settings.
    pub async fn start_with(templates: &[&str], tweak: impl FnOnce(&mut Settings)) -> anyhow::Result<Self> {
        init_logging();
        let dir = tempfile::Builder::new().prefix("rigbox-test-").tempdir_in(std::env::temp_dir())?;
        let mut s = settings(dir.path());
        let admin_key = format!("rb_test{}", std::process::id());
        s.admin_key = Some(rigbox_server::Secret(admin_key.clone()));
        tweak(&mut s);
        ensure_images(&s, templates).await?;
        let p = rigbox_server::up(&s, false).await?;
        let prefix = format!("{}-", p.node.node.id());
        Ok(TestPlatform { dir, settings: s, platform: Some(p), admin_key, prefix })
    }

    /// The running platform.
    pub fn p(&self) -> &rigbox_server::Platform {
        self.platform.as_ref().expect("platform running")
    }

    /// API base URL.
    pub fn url(&self) -> String {
        self.p().control.url()
    }

    /// A client with the admin key.
    pub fn admin(&self) -> rigbox_client::Client {
        rigbox_client::Client::new(self.url(), Some(self.admin_key.clone()))
    }

    /// Creates a user and returns a client with their first key.
    pub async fn user(&self, email: &str) -> anyhow::Result<(rigbox_client::Client, String)> {
        let r: rigbox_api::views::CreateUserResponse = self
            .admin()
            .send(reqwest::Method::POST, "/admin/users", &serde_json::json!({ "email": email }))
            .await?;
        Ok((rigbox_client::Client::new(self.url(), Some(r.api_key.key.clone())), r.api_key.key))
    }

    /// Stops the roles and starts them again on the same data dir.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(p) = self.platform.take() {
            p.shutdown().await;
        }
        self.platform = Some(rigbox_server::up(&self.settings, false).await?);
        Ok(())
    }

    /// VM processes of this platform's node still alive.
    pub fn vm_processes(&self) -> Vec<(u32, String)> {
        rigbox_vmm::process::find_vm_processes().into_iter().filter(|(_, id)| id.starts_with(&self.prefix)).collect()
    }

    /// Network slots of this platform's node.
    pub fn slots(&self) -> Vec<String> {
        rigbox_netns::list_slots()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| rigbox_netns::workspace_of(n).is_some_and(|w| w.starts_with(&self.prefix)))
            .collect()
    }
}

impl Drop for TestPlatform {
    fn drop(&mut self) {
        for (pid, _) in self.vm_processes() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
        for name in self.slots() {
            if let Some(s) = rigbox_netns::workspace_of(&name).and_then(|w| rigbox_netns::Slot::for_workspace(w).ok()) {
                let _ = s.delete();
            }
        }
    }
}

/// Polls `f` until it returns `Some`, or fails after `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks API responses against the public Rigbox OpenAPI export
/// (`tests/reference/rigbox-api.json`, a copy of the reference).
pub mod reference {
    use std::sync::OnceLock;

    fn spec() -> &'static serde_json::Value {
        static SPEC: OnceLock<serde_json::Value> = OnceLock::new();
        SPEC.get_or_init(|| {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/reference/rigbox-api.json");
            let text = std::fs::read_to_string(path).expect("reference OpenAPI export");
            serde_json::from_str(&text).expect("reference export parses")
        })
    }

    /// Every schema error of `value` against the reference schema `name`.
    pub fn errors(name: &str, value: &serde_json::Value) -> Vec<String> {
        let spec = spec();
        assert!(spec["components"]["schemas"].get(name).is_some(), "no schema {name} in the reference");
        let root = serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": format!("#/components/schemas/{name}"),
            "components": spec["components"],
        });
        let v = jsonschema::validator_for(&root).expect("reference schema compiles");
        v.iter_errors(value).map(|e| format!("{} at {}", e, e.instance_path())).collect()
    }

    /// Panics when `value` does not match the reference schema `name`.
    pub fn assert_matches(name: &str, value: &serde_json::Value) {
        let errs = errors(name, value);
        assert!(errs.is_empty(), "response does not match the reference schema {name}:\n{}\n{value:#}", errs.join("\n"));
    }

    /// The response schema the reference gives for `method path` and `status`.
    pub fn response_schema(method: &str, path: &str, status: u16) -> Option<String> {
        let op = &spec()["paths"][path][method.to_lowercase()];
        op["responses"][status.to_string()]["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .map(|r| r.rsplit('/').next().unwrap_or(r).to_string())
    }
}
