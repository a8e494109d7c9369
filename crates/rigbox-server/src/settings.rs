//! Settings: defaults, then a TOML file, then `RIGBOX_*` environment
//! variables (nested keys with `__`, e.g. `RIGBOX_LIMITS__MAX_WORKSPACES`).
//!
//! | Variable | Default | Meaning |
//! |---|---|---|
//! | `RIGBOX_CONFIG` | `/etc/rigbox/rigbox.toml` if present | the TOML file |
//! | `RIGBOX_DATA_DIR` | `/var/lib/rigbox` | state, disks, snapshots |
//! | `RIGBOX_IMAGE_CACHE` | `/var/cache/rigbox` | built kernels and images, shared by every data dir |
//! | `RIGBOX_API_LISTEN` | `127.0.0.1:8080` | public API |
//! | `RIGBOX_SSH_LISTEN` | `127.0.0.1:2222` | SSH gateway |
//! | `RIGBOX_EDGE_LISTEN` | `127.0.0.1:8081` | app edge proxy |
//! | `RIGBOX_NODE_LISTEN` | `127.0.0.1:9100` | node agent's internal API |
//! | `RIGBOX_BASE_DOMAIN` | `localhost` | apps are `{name}.{base_domain}` |
//! | `RIGBOX_ADMIN_KEY` | generated on first start | the admin's API key |
//! | `RIGBOX_NODE_TOKEN` | generated, kept in the data dir | node ↔ control plane token |
//! | `RIGBOX_VMM` | `auto` | `auto`, `qemu`, `firecracker` |
//! | `RIGBOX_ACCEL` | `auto` | `auto`, `kvm`, `tcg` |
//! | `RIGBOX_FIRECRACKER_BIN` | on `PATH` | Firecracker binary |
//! | `RIGBOX_GUEST_AGENT` | next to `rigboxd` | guest agent binary put into images |
//! | `RIGBOX_BOOT_TIMEOUT_SECS` | `180` | boot deadline |
//! | `RIGBOX_DATABASE_URL` | `sqlite://<data dir>/rigbox.db` | database |
//! | `RIGBOX_SSH_HOST_KEY` | `<data dir>/ssh_host_ed25519_key` | SSH gateway host key |
//! | `RIGBOX_EDGE_TLS_LISTEN` | unset | HTTPS listener of the edge |
//! | `RIGBOX_EDGE_TLS_CERT`, `RIGBOX_EDGE_TLS_KEY` | unset | PEM files (wildcard certificate) |
//! | `RIGBOX_ACME_ENABLED`, `RIGBOX_ACME_EMAIL`, `RIGBOX_ACME_DIRECTORY` | off | ACME certificates |
//! | `RIGBOX_EDGE_UPSTREAM_TIMEOUT_SECS` | `60` | edge: deadline for an app's response headers (then 504) |
//! | `RIGBOX_METRICS_SAMPLE_MS` | `5000` | how often nodes sample workspace usage and the control plane pulls it |
//! | `RIGBOX_AI__*` | see [`crate::ai`] | managed AI: provider base URLs, price table, key file, callback URL |

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A secret string: never printed by `Debug`.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"<redacted>\"" })
    }
}

impl Secret {
    /// The value.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

pub use rigbox_api::Limits;

/// All settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Settings {
    /// State, disks, snapshots.
    pub data_dir: PathBuf,
    /// Built kernels and images.
    pub image_cache: PathBuf,
    /// Public API address.
    pub api_listen: SocketAddr,
    /// SSH gateway address.
    pub ssh_listen: SocketAddr,
    /// Edge proxy address.
    pub edge_listen: SocketAddr,
    /// Node agent API address.
    pub node_listen: SocketAddr,
    /// How the control plane reaches the node (default: `http://{node_listen}`).
    pub node_url: Option<String>,
    /// Base domain of app URLs.
    pub base_domain: String,
    /// Admin API key.
    pub admin_key: Option<Secret>,
    /// Admin email.
    pub admin_email: String,
    /// Node token.
    pub node_token: Option<Secret>,
    /// VMM preference.
    pub vmm: String,
    /// Acceleration preference.
    pub accel: String,
    /// A PVM-enlightened guest kernel is configured (lets PVM hosts use KVM).
    pub pvm_guest_kernel: bool,
    /// Firecracker binary.
    pub firecracker_bin: Option<PathBuf>,
    /// Guest agent binary.
    pub guest_agent: Option<PathBuf>,
    /// Extra template recipes.
    pub templates_dir: Option<PathBuf>,
    /// Boot deadline in seconds.
    pub boot_timeout_secs: u64,
    /// Clean-shutdown deadline in seconds.
    pub stop_timeout_secs: u64,
    /// Database URL.
    pub database_url: Option<String>,
    /// Templates built by `rigboxd up` when missing.
    pub default_templates: Vec<String>,
    /// Keep warm snapshots of the default templates (fast quick deploys).
    pub warm_templates: bool,
    /// Quotas.
    pub limits: Limits,
    /// SSH gateway host key (default `<data_dir>/ssh_host_ed25519_key`, generated).
    pub ssh_host_key: Option<PathBuf>,
    /// Edge TLS listener (HTTPS); off when unset.
    pub edge_tls_listen: Option<SocketAddr>,
    /// PEM certificate chain for the edge (a wildcard for the base domain).
    pub edge_tls_cert: Option<PathBuf>,
    /// PEM private key for the edge.
    pub edge_tls_key: Option<PathBuf>,
    /// Obtain certificates with ACME (Let's Encrypt) instead of files.
    pub acme_enabled: bool,
    /// ACME account email.
    pub acme_email: Option<String>,
    /// ACME directory URL (default Let's Encrypt production).
    pub acme_directory: Option<String>,
    /// Public URL scheme of apps (`http` on loopback, `https` with TLS).
    pub public_scheme: String,
    /// Edge: seconds an app has to send its response headers (then 504).
    pub edge_upstream_timeout_secs: u64,
    /// Managed AI.
    pub ai: crate::ai::AiSettings,
    /// Workspace usage sampling interval (ms): nodes sample, the control plane pulls.
    pub metrics_sample_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            data_dir: PathBuf::from("/var/lib/rigbox"),
            image_cache: PathBuf::from("/var/cache/rigbox"),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            ssh_listen: SocketAddr::from(([127, 0, 0, 1], 2222)),
            edge_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            node_listen: SocketAddr::from(([127, 0, 0, 1], 9100)),
            node_url: None,
            base_domain: "localhost".into(),
            admin_key: None,
            admin_email: "admin@rigbox.local".into(),
            node_token: None,
            vmm: "auto".into(),
            accel: "auto".into(),
            pvm_guest_kernel: false,
            firecracker_bin: None,
            guest_agent: None,
            templates_dir: None,
            boot_timeout_secs: 180,
            stop_timeout_secs: 30,
            database_url: None,
            default_templates: vec!["base".into()],
            warm_templates: true,
            limits: Limits::default(),
            ssh_host_key: None,
            edge_tls_listen: None,
            edge_tls_cert: None,
            edge_tls_key: None,
            acme_enabled: false,
            acme_email: None,
            acme_directory: None,
            public_scheme: "http".into(),
            edge_upstream_timeout_secs: 60,
            ai: Default::default(),
            metrics_sample_ms: 5000,
        }
    }
}

impl Settings {
    /// Loads defaults, then the TOML file (`path`, else `RIGBOX_CONFIG`, else
    /// `/etc/rigbox/rigbox.toml` if it exists), then the environment.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let file = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("RIGBOX_CONFIG").map(PathBuf::from))
            .or_else(|| {
                let p = PathBuf::from("/etc/rigbox/rigbox.toml");
                p.exists().then_some(p)
            });
        let mut fig = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(f) = &file {
            if !f.exists() {
                anyhow::bail!("config file {} does not exist", f.display());
            }
            fig = fig.merge(Toml::file(f));
        }
        fig = fig.merge(Env::prefixed("RIGBOX_").ignore(&["CONFIG"]).split("__"));
        let mut s: Settings = fig.extract().map_err(|e| anyhow::anyhow!("invalid settings: {e}"))?;
        s.data_dir = absolute(&s.data_dir)?;
        s.image_cache = absolute(&s.image_cache)?;
        Ok(s)
    }

    /// The guest agent binary: the setting, else `rigbox-agent` next to the running binary.
    pub fn guest_agent_path(&self) -> PathBuf {
        if let Some(p) = &self.guest_agent {
            return p.clone();
        }
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("rigbox-agent")))
            .unwrap_or_else(|| PathBuf::from("/usr/local/bin/rigbox-agent"))
    }

    /// The node API URL as the control plane uses it.
    pub fn node_url(&self) -> String {
        self.node_url.clone().unwrap_or_else(|| format!("http://{}", self.node_listen))
    }
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)]
    fn layers_defaults_file_and_env() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("r.toml", "base_domain = \"example.test\"\napi_listen = \"127.0.0.1:9999\"\n[limits]\nmax_workspaces = 3\n")?;
            jail.set_env("RIGBOX_API_LISTEN", "127.0.0.1:7777");
            jail.set_env("RIGBOX_LIMITS__MAX_SNAPSHOTS", "7");
            jail.set_env("RIGBOX_ADMIN_KEY", "rb_secret");
            let s = Settings::load(Some(Path::new("r.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.base_domain, "example.test");
            assert_eq!(s.api_listen.port(), 7777, "env beats the file");
            assert_eq!(s.limits.max_workspaces, 3);
            assert_eq!(s.limits.max_snapshots, 7);
            assert_eq!(s.ssh_listen.port(), 2222, "defaults stay");
            assert!(!format!("{s:?}").contains("rb_secret"), "secrets are redacted");
            assert_eq!(s.admin_key.as_ref().map(Secret::expose), Some("rb_secret"));
            Ok(())
        });
    }

    #[test]
    fn missing_config_file_is_an_error() {
        assert!(Settings::load(Some(Path::new("/nonexistent/rigbox.toml"))).is_err());
    }
}
