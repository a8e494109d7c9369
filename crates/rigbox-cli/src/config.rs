//! `~/.config/rigbox/config.json` (or `$XDG_CONFIG_HOME/rigbox/config.json`),
//! overridden by `RIG_API_KEY`/`RIGBOX_API_KEY` and `RIG_API_URL`/`RIGBOX_API_URL`.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Default API URL (the all-in-one server on this machine).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Saved login.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Config {
    /// API URL.
    #[serde(default)]
    pub api_url: Option<String>,
    /// API key.
    #[serde(default)]
    pub api_key: Option<String>,
}

/// Where the config lives.
pub fn path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from(".config"));
    base.join("rigbox").join("config.json")
}

/// Loads the file (missing is empty).
pub fn load() -> Config {
    std::fs::read(path()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Saves the file, readable by the user only.
pub fn save(c: &Config) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let p = path();
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    let mut f = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&p)?;
    f.write_all(serde_json::to_string_pretty(c)?.as_bytes())?;
    Ok(p)
}

fn env(names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

/// The effective URL and key.
pub fn effective() -> (String, Option<String>) {
    let c = load();
    let url = env(&["RIG_API_URL", "RIGBOX_API_URL"]).or(c.api_url).unwrap_or_else(|| DEFAULT_URL.into());
    let key = env(&["RIG_API_KEY", "RIGBOX_API_KEY"]).or(c.api_key);
    (url, key)
}
