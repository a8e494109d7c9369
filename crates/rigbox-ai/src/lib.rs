//! Managed AI for workspaces: the pure logic behind the AI proxy.
//!
//! - [`route`]: which endpoint a guest called, which provider a model name
//!   goes to (slugs `anthropic/…`, `openai/…`, `google/…`, bare names,
//!   aliases such as `rigbox/default`), and the upstream URL;
//! - [`wire`]: request rewriting (model name, `stream_options.include_usage`),
//!   usage extraction for every wire format (OpenAI chat/completions,
//!   responses, embeddings; Anthropic messages; Gemini generateContent), an
//!   incremental SSE parser and per-format stream meters;
//! - [`pricing`]: the operator's price table (TOML or JSON), costs and
//!   reservation estimates in integer micro-credits;
//! - [`limits`]: the per-subject headers (`X-Rigbox-Subject-Budget`,
//!   `X-Rigbox-Subject-Rate`) and windows;
//! - [`secrets`]: provider and BYOK keys sealed at rest (ChaCha20-Poly1305,
//!   key file mode 0600);
//! - [`env`]: the environment a workspace gets for managed or BYOK mode;
//! - [`fake`]: a fake provider on loopback speaking the real wire formats
//!   (tests and benchmarks only).
//!
//! # AI flow
//!
//! ```text
//! guest ──HTTP──> 169.254.0.1:9090 (node agent, listener inside the slot's netns)
//!   node: workspace = the slot the connection arrived on; path checked against
//!         an allow-list; guest Authorization / identity headers dropped
//!   ──HTTP──> control plane POST/GET /internal/v1/ai/proxy
//!         Authorization: Bearer <node token>, X-Rigbox-Node, X-Rigbox-Workspace,
//!         X-Rigbox-Ai-Path (the guest's path and query)
//!   control plane: node token checked, workspace must live on that node →
//!         owner, effective mode (workspace override, else account mode) →
//!         route + model → subject limits → managed: price (unpriced = 400),
//!         estimate, atomic reserve (one SQL transaction; 402 when short) /
//!         BYOK: the workspace's own key, no wallet → provider key injected →
//!   ──HTTPS──> provider (or OpenRouter; base URLs are settings)
//!   response: non-stream: usage read, cost settled once, hold released,
//!         X-Rigbox-Cost-Micro / -Credits headers and usage.cost_micro in the body;
//!         stream: passed through event by event as it arrives, usage read from
//!         the stream (OpenAI streams get stream_options.include_usage), hold in
//!         X-Rigbox-Hold-Micro, settled cost in the usage chunk (OpenAI formats)
//!         and in a final SSE comment `: rigbox-cost {…}`, and at
//!         GET /rig/v1/usage/requests/{X-Rigbox-Request-Id}.
//!         Upstream error: released without charge. A stream that breaks before
//!         its usage is known keeps its hold (status `broken`) for the operator
//!         (`/api/v1/admin/ai/holds`).
//! ```
//!
//! Provider keys live only in the control plane's database, sealed with the
//! key file; nodes and guests never see them. Managed workspaces get
//! `OPENAI_BASE_URL`, `ANTHROPIC_BASE_URL`, `OPENROUTER_BASE_URL` pointing at
//! the slot address and the placeholder key `managed-by-rigbox`, merged under
//! the user's own environment (the user's variables win). BYOK workspaces get
//! the same base URLs plus their key in the provider's standard variable; their
//! calls through the proxy carry the stored key upstream, are recorded and are
//! never charged. Usage rows keep metadata only (model, tokens, cost, subject),
//! never prompts or responses. Every wallet movement is an append-only ledger
//! entry.
#![warn(missing_docs)]

pub mod env;
pub mod fake;
pub mod limits;
pub mod pricing;
pub mod route;
pub mod secrets;
pub mod wire;

/// Micro-credits in one credit.
pub const MICRO_PER_CREDIT: i64 = 1_000_000;

/// The placeholder key managed workspaces use.
pub const PLACEHOLDER_KEY: &str = "managed-by-rigbox";

/// The proxy's address as guests see it (host side of every slot).
pub const PROXY_ADDR: &str = "169.254.0.1:9090";

/// Credits (for display) of an amount of micro-credits.
pub fn credits(micro: i64) -> f64 {
    micro as f64 / MICRO_PER_CREDIT as f64
}

/// Micro-credits of a number of credits (rounded to the nearest micro).
pub fn micro(credits: f64) -> i64 {
    (credits * MICRO_PER_CREDIT as f64).round() as i64
}

#[cfg(test)]
mod tests {
    #[test]
    fn credit_conversions() {
        assert_eq!(super::micro(1.5), 1_500_000);
        assert_eq!(super::credits(250_000), 0.25);
    }
}

/// Header names of the node → control plane hop (set by the node, never by a guest).
pub mod hop {
    /// The node's id.
    pub const NODE: &str = "x-rigbox-node";
    /// The workspace the node derived from the slot.
    pub const WORKSPACE: &str = "x-rigbox-workspace";
    /// The guest's path and query.
    pub const PATH: &str = "x-rigbox-ai-path";

    /// Request headers a guest may send through (everything else, keys and
    /// identity headers included, is dropped on the node).
    pub fn guest_header_allowed(name: &str) -> bool {
        matches!(
            name.to_ascii_lowercase().as_str(),
            "content-type"
                | "accept"
                | "anthropic-version"
                | "anthropic-beta"
                | "openai-beta"
                | "user-agent"
                | "x-rigbox-subject"
                | "x-rigbox-subject-budget"
                | "x-rigbox-subject-rate"
        )
    }

    /// Request headers the control plane passes on to a provider.
    pub fn upstream_header_allowed(name: &str) -> bool {
        matches!(name.to_ascii_lowercase().as_str(), "content-type" | "accept" | "anthropic-version" | "anthropic-beta" | "openai-beta")
    }

    /// Response headers passed back to the guest.
    pub fn response_header_allowed(name: &str) -> bool {
        let n = name.to_ascii_lowercase();
        matches!(n.as_str(), "content-type" | "cache-control" | "x-request-id" | "request-id" | "openai-processing-ms" | "retry-after")
            || n.starts_with("x-rigbox-")
    }
}
