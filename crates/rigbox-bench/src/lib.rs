//! `rigboxd bench`: measures the platform and prints a report.
//!
//! Each section measures one area and, where it makes sense, the same work
//! done by hand with the raw VMM or directly inside the slot, so the
//! platform's own overhead is visible as a ratio. Numbers are medians of
//! several runs unless stated. Nothing here is a pass/fail test.
#![warn(missing_docs)]

pub mod report;
pub mod sections;

pub use report::{Report, Row, Section};

/// Where a benchmark runs: a fresh data dir, the machine's image cache, and
/// (started on first use) the whole platform.
pub struct BenchEnv {
    /// Settings of the benchmark platform.
    pub settings: rigbox_server::Settings,
    /// Keeps the data dir alive.
    pub dir: tempfile::TempDir,
    platform: tokio::sync::OnceCell<rigbox_server::Platform>,
    /// Admin key of the benchmark platform.
    pub admin_key: String,
}

impl BenchEnv {
    /// A new environment based on `base` settings (data dir and ports replaced).
    pub fn new(base: &rigbox_server::Settings) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("rigbox-bench-").tempdir()?;
        let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let admin_key = format!("rb_bench{}", std::process::id());
        let settings = rigbox_server::Settings {
            data_dir: dir.path().to_path_buf(),
            api_listen: any,
            ssh_listen: any,
            edge_listen: any,
            node_listen: any,
            node_token: None,
            admin_key: Some(rigbox_server::Secret(admin_key.clone())),
            limits: rigbox_server::Limits {
                max_workspaces: 100_000,
                max_ram_per_workspace_mb: 1 << 20,
                max_ram_total_mb: u32::MAX,
                max_vcpu_per_workspace: 64,
                max_running_vcpus: 100_000,
                max_disk_total_mb: u32::MAX,
                max_snapshots: 100_000,
                requests_per_minute: 10_000_000,
            },
            ..base.clone()
        };
        Ok(BenchEnv { settings, dir, platform: tokio::sync::OnceCell::new(), admin_key })
    }

    /// The platform (started on first call).
    pub async fn platform(&self) -> anyhow::Result<&rigbox_server::Platform> {
        self.platform.get_or_try_init(|| rigbox_server::up(&self.settings, true)).await
    }

    /// An admin client of the platform.
    pub async fn admin(&self) -> anyhow::Result<rigbox_client::Client> {
        Ok(rigbox_client::Client::new(self.platform().await?.control.url(), Some(self.admin_key.clone())))
    }

    /// Stops the platform and kills whatever VMs are left.
    pub async fn finish(self) {
        if let Some(p) = self.platform.into_inner() {
            let prefix = format!("{}-", p.node.node.id());
            p.shutdown().await;
            for (pid, id) in rigbox_vmm::process::find_vm_processes() {
                if id.starts_with(&prefix) {
                    if let Some(v) = rigbox_vmm::VmProcess::from_pid(pid, rigbox_vmm::BackendKind::Qemu) {
                        let _ = rigbox_vmm::process::kill_and_wait(&v, std::time::Duration::from_secs(5)).await;
                    }
                }
            }
            for name in rigbox_netns::list_slots().unwrap_or_default() {
                if let Some(w) = rigbox_netns::workspace_of(&name).filter(|w| w.starts_with(&prefix)) {
                    if let Ok(s) = rigbox_netns::Slot::for_workspace(w) {
                        let _ = s.delete();
                    }
                }
            }
        }
    }
}

/// Runs the named sections (all when empty) and returns the report.
pub async fn run(base: &rigbox_server::Settings, only: &[String]) -> anyhow::Result<Report> {
    let env = BenchEnv::new(base)?;
    let mut report = Report::default();
    for (name, f) in sections::ALL {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        eprintln!("bench: {name}...");
        match f(&env).await {
            Ok(s) => report.sections.push(s),
            Err(e) => report.sections.push(Section::failed(name, &e.to_string())),
        }
    }
    env.finish().await;
    Ok(report)
}
