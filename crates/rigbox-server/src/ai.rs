//! The managed AI service of the control plane (see `rigbox_ai` for the flow).
//!
//! Settings (`[ai]` in the TOML file, `RIGBOX_AI__*` in the environment):
//!
//! | Setting | Default | Meaning |
//! |---|---|---|
//! | `ai.upstreams.openai` | `https://api.openai.com/v1` | OpenAI base (with `/v1`) |
//! | `ai.upstreams.anthropic` | `https://api.anthropic.com` | Anthropic native base |
//! | `ai.upstreams.anthropic_openai` | `https://api.anthropic.com/v1` | Anthropic's OpenAI-compatible base |
//! | `ai.upstreams.google` | `https://generativelanguage.googleapis.com` | Gemini native base |
//! | `ai.upstreams.google_openai` | `…/v1beta/openai` | Gemini's OpenAI-compatible base |
//! | `ai.upstreams.openrouter` | `https://openrouter.ai/api/v1` | OpenRouter base |
//! | `ai.upstreams.via_openrouter` | `false` | send OpenAI-format calls through OpenRouter when it has a key |
//! | `ai.price_table` | `<data_dir>/ai-prices.toml` | the price table (written with defaults when missing) |
//! | `ai.key_file` | `<data_dir>/ai-secret.key` | the key that seals provider and BYOK keys (0600) |
//! | `ai.callback_url` | `http://<API address>` | how nodes reach this control plane |
//! | `ai.max_body_mb` | `32` | largest request a guest may send |
//!
//! Provider keys are set by an administrator (`PUT /api/v1/admin/ai/providers/{p}`)
//! and stored sealed in the database; they are never in a setting, a log or a node.
//! The control plane tells every registered node its callback URL at start and
//! every 10 s (`PUT /v1/ai/control-plane`), so nodes registered later or
//! restarted learn it without configuration.

use crate::Settings;
use rigbox_ai::route::Upstreams;
use rigbox_api::ai::{AiConfig, AiService};
use rigbox_api::AppState;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// AI settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AiSettings {
    /// Provider base URLs.
    pub upstreams: Upstreams,
    /// Price table file.
    pub price_table: Option<PathBuf>,
    /// Sealing key file.
    pub key_file: Option<PathBuf>,
    /// The control plane's URL as nodes reach it.
    pub callback_url: Option<String>,
    /// Largest guest request (MiB).
    pub max_body_mb: u64,
}

impl Default for AiSettings {
    fn default() -> Self {
        AiSettings { upstreams: Upstreams::default(), price_table: None, key_file: None, callback_url: None, max_body_mb: 32 }
    }
}

/// The callback URL nodes use.
pub fn callback_url(s: &Settings, api_addr: SocketAddr) -> String {
    if let Some(u) = &s.ai.callback_url {
        return u.trim_end_matches('/').to_string();
    }
    let addr = if api_addr.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], api_addr.port())) } else { api_addr };
    format!("http://{addr}")
}

/// Registers the AI service on the API state and starts telling nodes the callback URL.
pub fn start(s: &Settings, st: &AppState, api_addr: SocketAddr, stop: CancellationToken) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let cfg = AiConfig {
        upstreams: s.ai.upstreams.clone(),
        price_file: s.ai.price_table.clone().unwrap_or_else(|| s.data_dir.join("ai-prices.toml")),
        key_file: s.ai.key_file.clone().unwrap_or_else(|| s.data_dir.join("ai-secret.key")),
        max_body_bytes: (s.ai.max_body_mb.max(1) << 20) as usize,
    };
    st.set_ext(Arc::new(AiService::new(cfg)?));
    let url = callback_url(s, api_addr);
    let st = st.clone();
    Ok(tokio::spawn(async move {
        loop {
            announce(&st, &url).await;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            }
        }
    }))
}

/// Tells every registered node where to forward AI calls.
pub async fn announce(st: &AppState, url: &str) {
    for row in st.store().nodes().await.unwrap_or_default() {
        let c = rigbox_node_api::NodeClient::new(&row.url, &row.token);
        if let Err(e) = c.set_ai_control_plane(url).await {
            tracing::debug!(node = %row.id, "announcing the AI callback URL: {e}");
        }
    }
}
