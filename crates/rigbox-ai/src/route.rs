//! Endpoints the proxy serves, model → provider routing, and upstream targets.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Routing errors (answered as 400/404 by the proxy).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The path is not one the proxy serves.
    #[error("no such AI endpoint: {0}")]
    UnknownEndpoint(String),
    /// The model name does not map to a provider.
    #[error("unknown model {0:?} (use a provider slug like openai/gpt-4o-mini or an alias like rigbox/default)")]
    UnknownModel(String),
    /// The request names no model.
    #[error("the request names no model")]
    MissingModel,
    /// The endpoint cannot serve this provider's models.
    #[error("{endpoint} cannot serve {provider} models")]
    Unsupported {
        /// Endpoint.
        endpoint: &'static str,
        /// Provider.
        provider: &'static str,
    },
    /// Aliases refer to each other in a loop.
    #[error("alias loop at {0:?}")]
    AliasLoop(String),
}

/// An upstream provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// OpenAI.
    Openai,
    /// Anthropic.
    Anthropic,
    /// Google (Gemini).
    Google,
    /// OpenRouter (OpenAI-compatible, every slug).
    Openrouter,
}

impl Provider {
    /// All providers.
    pub const ALL: [Provider; 4] = [Provider::Openai, Provider::Anthropic, Provider::Google, Provider::Openrouter];

    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Openai => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Google => "google",
            Provider::Openrouter => "openrouter",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "openai" => Provider::Openai,
            "anthropic" => Provider::Anthropic,
            "google" | "gemini" => Provider::Google,
            "openrouter" => Provider::Openrouter,
            _ => return None,
        })
    }

    /// The environment variables that carry this provider's key.
    pub fn key_vars(self) -> &'static [&'static str] {
        match self {
            Provider::Openai => &["OPENAI_API_KEY"],
            Provider::Anthropic => &["ANTHROPIC_API_KEY"],
            Provider::Google => &["GOOGLE_API_KEY", "GEMINI_API_KEY"],
            Provider::Openrouter => &["OPENROUTER_API_KEY"],
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The wire format of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenAI chat completions (also legacy completions).
    OpenaiChat,
    /// OpenAI Responses API.
    OpenaiResponses,
    /// OpenAI embeddings.
    OpenaiEmbeddings,
    /// Anthropic Messages.
    Anthropic,
    /// Gemini generateContent.
    Gemini,
}

/// What a guest called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/responses`.
    Responses,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `GET /v1/models`.
    Models,
    /// `POST /v1/messages` (Anthropic).
    Messages,
    /// `POST /v1beta/models/{model}:generateContent|streamGenerateContent`.
    Gemini {
        /// Model from the path.
        model: String,
        /// `streamGenerateContent`.
        stream: bool,
    },
    /// `GET /rig/v1/usage?subject=&window=`.
    SubjectUsage,
    /// `GET /rig/v1/usage/requests/{id}`: one request's settled cost.
    RequestUsage(String),
}

impl Endpoint {
    /// Parses a method and path (without query). Provider prefixes
    /// (`/openai`, `/anthropic`, `/google`) are accepted and ignored.
    pub fn parse(method: &str, path: &str) -> Result<Endpoint, RouteError> {
        let unknown = || RouteError::UnknownEndpoint(format!("{method} {path}"));
        let p = ["/openai", "/anthropic", "/google", "/openrouter"]
            .iter()
            .find_map(|pre| path.strip_prefix(pre).filter(|r| r.starts_with('/')))
            .unwrap_or(path);
        let p = p.trim_end_matches('/');
        let post = method.eq_ignore_ascii_case("POST");
        let get = method.eq_ignore_ascii_case("GET");
        Ok(match p {
            "/v1/chat/completions" | "/chat/completions" if post => Endpoint::ChatCompletions,
            "/v1/completions" | "/completions" if post => Endpoint::Completions,
            "/v1/responses" | "/responses" if post => Endpoint::Responses,
            "/v1/embeddings" | "/embeddings" if post => Endpoint::Embeddings,
            "/v1/models" | "/models" if get => Endpoint::Models,
            "/v1/messages" if post => Endpoint::Messages,
            "/rig/v1/usage" if get => Endpoint::SubjectUsage,
            _ => {
                if let Some(id) = p.strip_prefix("/rig/v1/usage/requests/").filter(|_| get) {
                    if !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                        return Ok(Endpoint::RequestUsage(id.to_string()));
                    }
                    return Err(unknown());
                }
                let rest = p.strip_prefix("/v1beta/models/").or_else(|| p.strip_prefix("/v1/models/")).ok_or_else(unknown)?;
                let (model, verb) = rest.split_once(':').ok_or_else(unknown)?;
                let stream = match verb {
                    "generateContent" => false,
                    "streamGenerateContent" => true,
                    _ => return Err(unknown()),
                };
                if !post || model.is_empty() || model.contains('/') {
                    return Err(unknown());
                }
                Endpoint::Gemini { model: model.to_string(), stream }
            }
        })
    }

    /// Stable name (stored with usage).
    pub fn name(&self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Completions => "completions",
            Endpoint::Responses => "responses",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Models => "models",
            Endpoint::Messages => "messages",
            Endpoint::Gemini { stream: false, .. } => "gemini.generateContent",
            Endpoint::Gemini { stream: true, .. } => "gemini.streamGenerateContent",
            Endpoint::SubjectUsage => "usage",
            Endpoint::RequestUsage(_) => "usage.request",
        }
    }

    /// The wire format, for calls that go upstream.
    pub fn format(&self) -> Option<Format> {
        Some(match self {
            Endpoint::ChatCompletions | Endpoint::Completions => Format::OpenaiChat,
            Endpoint::Responses => Format::OpenaiResponses,
            Endpoint::Embeddings => Format::OpenaiEmbeddings,
            Endpoint::Messages => Format::Anthropic,
            Endpoint::Gemini { .. } => Format::Gemini,
            _ => return None,
        })
    }

    fn openai_suffix(&self) -> Option<&'static str> {
        Some(match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Responses => "/responses",
            Endpoint::Embeddings => "/embeddings",
            _ => return None,
        })
    }
}

/// A resolved model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    /// Provider serving it.
    pub provider: Provider,
    /// Canonical slug `provider/name` (the price table's key).
    pub slug: String,
    /// Name as the provider itself knows it.
    pub name: String,
}

fn bare_provider(name: &str) -> Option<Provider> {
    let n = name.to_ascii_lowercase();
    let openai = ["gpt-", "o1", "o3", "o4", "chatgpt-", "text-embedding-", "davinci", "babbage", "omni-", "codex-"];
    if openai.iter().any(|p| n.starts_with(p)) {
        return Some(Provider::Openai);
    }
    if n.starts_with("claude") {
        return Some(Provider::Anthropic);
    }
    if ["gemini", "gemma", "embedding-", "text-embedding-004"].iter().any(|p| n.starts_with(p)) {
        return Some(Provider::Google);
    }
    None
}

/// Resolves a model name: aliases (followed up to 8 deep), provider slugs,
/// bare provider model names. Unknown slug prefixes go to OpenRouter.
pub fn resolve(raw: &str, aliases: &BTreeMap<String, String>) -> Result<ModelRef, RouteError> {
    let mut name = raw.trim().to_string();
    if name.is_empty() {
        return Err(RouteError::MissingModel);
    }
    let mut hops = 0;
    while let Some(t) = aliases.get(&name) {
        hops += 1;
        if hops > 8 {
            return Err(RouteError::AliasLoop(raw.into()));
        }
        name = t.clone();
    }
    // Gemini clients send `models/gemini-…`.
    let name = name.strip_prefix("models/").unwrap_or(&name).to_string();
    if let Some((pre, rest)) = name.split_once('/') {
        if rest.is_empty() {
            return Err(RouteError::UnknownModel(raw.into()));
        }
        return Ok(match Provider::parse(pre) {
            Some(Provider::Openrouter) => match rest.split_once('/') {
                // `openrouter/anthropic/claude…` = the slug behind it, via OpenRouter.
                Some(_) => ModelRef { provider: Provider::Openrouter, slug: rest.to_string(), name: rest.to_string() },
                None => ModelRef { provider: Provider::Openrouter, slug: name.clone(), name: rest.to_string() },
            },
            Some(p) => ModelRef { provider: p, slug: format!("{}/{rest}", p.as_str()), name: rest.to_string() },
            None => ModelRef { provider: Provider::Openrouter, slug: name.clone(), name: name.clone() },
        });
    }
    let p = bare_provider(&name).ok_or_else(|| RouteError::UnknownModel(raw.into()))?;
    Ok(ModelRef { provider: p, slug: format!("{}/{name}", p.as_str()), name })
}

/// Upstream base URLs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Upstreams {
    /// OpenAI API base, with `/v1`.
    pub openai: String,
    /// Anthropic API base (native; `/v1/messages` is appended).
    pub anthropic: String,
    /// Anthropic's OpenAI-compatible base (for `/chat/completions`).
    pub anthropic_openai: String,
    /// Gemini API base (native; `/v1beta/models/…` is appended).
    pub google: String,
    /// Gemini's OpenAI-compatible base.
    pub google_openai: String,
    /// OpenRouter base, with `/v1`.
    pub openrouter: String,
    /// Send OpenAI-format calls of every provider through OpenRouter (when
    /// it has a key), with the full slug as model.
    pub via_openrouter: bool,
}

impl Default for Upstreams {
    fn default() -> Self {
        Upstreams {
            openai: "https://api.openai.com/v1".into(),
            anthropic: "https://api.anthropic.com".into(),
            anthropic_openai: "https://api.anthropic.com/v1".into(),
            google: "https://generativelanguage.googleapis.com".into(),
            google_openai: "https://generativelanguage.googleapis.com/v1beta/openai".into(),
            openrouter: "https://openrouter.ai/api/v1".into(),
            via_openrouter: false,
        }
    }
}

/// How the key goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStyle {
    /// `Authorization: Bearer KEY`.
    Bearer,
    /// `x-api-key: KEY` (Anthropic).
    XApiKey,
    /// `x-goog-api-key: KEY` (Gemini).
    GoogApiKey,
}

/// Where one call goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Full URL (with query).
    pub url: String,
    /// Whose key to inject.
    pub key_of: Provider,
    /// How.
    pub auth: AuthStyle,
    /// Model name to put into the body (`None`: the model is in the path).
    pub model: Option<String>,
}

fn join(base: &str, suffix: &str) -> String {
    format!("{}{suffix}", base.trim_end_matches('/'))
}

/// The upstream of a call. `openrouter` says whether OpenRouter may (and,
/// with `via_openrouter`, should) carry OpenAI-format calls.
pub fn target(up: &Upstreams, ep: &Endpoint, m: &ModelRef, query: Option<&str>, openrouter: bool) -> Result<Target, RouteError> {
    let unsupported = || RouteError::Unsupported { endpoint: ep.name(), provider: m.provider.as_str() };
    match ep {
        Endpoint::Messages => {
            if m.provider != Provider::Anthropic {
                return Err(unsupported());
            }
            Ok(Target { url: join(&up.anthropic, "/v1/messages"), key_of: Provider::Anthropic, auth: AuthStyle::XApiKey, model: Some(m.name.clone()) })
        }
        Endpoint::Gemini { stream, .. } => {
            if m.provider != Provider::Google {
                return Err(unsupported());
            }
            let verb = if *stream { "streamGenerateContent" } else { "generateContent" };
            let mut url = join(&up.google, &format!("/v1beta/models/{}:{verb}", m.name));
            // Keep `alt=sse` and the like; never a key from the guest.
            let q: Vec<&str> = query.unwrap_or("").split('&').filter(|kv| !kv.is_empty() && !kv.starts_with("key=")).collect();
            if !q.is_empty() {
                url = format!("{url}?{}", q.join("&"));
            }
            Ok(Target { url, key_of: Provider::Google, auth: AuthStyle::GoogApiKey, model: None })
        }
        _ => {
            let suffix = ep.openai_suffix().ok_or_else(unsupported)?;
            if m.provider == Provider::Openrouter || (openrouter && up.via_openrouter) {
                if !openrouter {
                    return Err(unsupported());
                }
                return Ok(Target { url: join(&up.openrouter, suffix), key_of: Provider::Openrouter, auth: AuthStyle::Bearer, model: Some(m.slug.clone()) });
            }
            let base = match (m.provider, ep) {
                (Provider::Openai, _) => &up.openai,
                (Provider::Anthropic, Endpoint::ChatCompletions) => &up.anthropic_openai,
                (Provider::Google, Endpoint::ChatCompletions | Endpoint::Embeddings) => &up.google_openai,
                _ => return Err(unsupported()),
            };
            Ok(Target { url: join(base, suffix), key_of: m.provider, auth: AuthStyle::Bearer, model: Some(m.name.clone()) })
        }
    }
}

/// Whether a guest path may be forwarded at all (checked on the node before
/// anything leaves it): a known prefix, no dot segments, no encoded slashes
/// or dots, no backslashes, printable ASCII only.
pub fn path_allowed(path_and_query: &str) -> bool {
    let path = path_and_query.split('?').next().unwrap_or("");
    if path.len() > 2048 || !path.starts_with('/') || !path_and_query.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2e") || lower.contains("%2f") || lower.contains("%5c") || path.contains('\\') || path.contains("//") {
        return false;
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return false;
    }
    ["/v1/", "/v1beta/", "/rig/v1/", "/openai/", "/anthropic/", "/google/", "/openrouter/"].iter().any(|p| path.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(Endpoint::parse("POST", "/v1/chat/completions").unwrap(), Endpoint::ChatCompletions);
        assert_eq!(Endpoint::parse("POST", "/openai/v1/chat/completions").unwrap(), Endpoint::ChatCompletions);
        assert_eq!(Endpoint::parse("POST", "/v1/messages").unwrap(), Endpoint::Messages);
        assert_eq!(Endpoint::parse("POST", "/anthropic/v1/messages").unwrap(), Endpoint::Messages);
        assert_eq!(Endpoint::parse("GET", "/v1/models").unwrap(), Endpoint::Models);
        assert_eq!(
            Endpoint::parse("POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent").unwrap(),
            Endpoint::Gemini { model: "gemini-2.5-flash".into(), stream: true }
        );
        assert_eq!(Endpoint::parse("GET", "/rig/v1/usage").unwrap(), Endpoint::SubjectUsage);
        assert_eq!(Endpoint::parse("GET", "/rig/v1/usage/requests/ai-12ab").unwrap(), Endpoint::RequestUsage("ai-12ab".into()));
        assert!(Endpoint::parse("GET", "/v1/chat/completions").is_err());
        assert!(Endpoint::parse("POST", "/v1beta/models/x:delete").is_err());
        assert!(Endpoint::parse("POST", "/v2/other").is_err());
    }

    #[test]
    fn models_route_by_name() {
        let mut aliases = BTreeMap::new();
        aliases.insert("rigbox/default".to_string(), "anthropic/claude-sonnet-4".to_string());
        aliases.insert("rigbox/fast".to_string(), "gpt-4o-mini".to_string());
        aliases.insert("loop".to_string(), "loop".to_string());
        let r = resolve("rigbox/default", &aliases).unwrap();
        assert_eq!((r.provider, r.slug.as_str(), r.name.as_str()), (Provider::Anthropic, "anthropic/claude-sonnet-4", "claude-sonnet-4"));
        let r = resolve("rigbox/fast", &aliases).unwrap();
        assert_eq!((r.provider, r.slug.as_str()), (Provider::Openai, "openai/gpt-4o-mini"));
        assert_eq!(resolve("claude-3-5-haiku-latest", &aliases).unwrap().provider, Provider::Anthropic);
        assert_eq!(resolve("models/gemini-2.5-pro", &aliases).unwrap().slug, "google/gemini-2.5-pro");
        assert_eq!(resolve("meta-llama/llama-3-8b", &aliases).unwrap().provider, Provider::Openrouter);
        assert!(matches!(resolve("mystery", &aliases), Err(RouteError::UnknownModel(_))));
        assert!(matches!(resolve("loop", &aliases), Err(RouteError::AliasLoop(_))));
        assert!(matches!(resolve(" ", &aliases), Err(RouteError::MissingModel)));
    }

    #[test]
    fn targets() {
        let up = Upstreams::default();
        let a = BTreeMap::new();
        let t = target(&up, &Endpoint::ChatCompletions, &resolve("openai/gpt-4o", &a).unwrap(), None, false).unwrap();
        assert_eq!((t.url.as_str(), t.key_of, t.model.as_deref()), ("https://api.openai.com/v1/chat/completions", Provider::Openai, Some("gpt-4o")));
        let t = target(&up, &Endpoint::ChatCompletions, &resolve("anthropic/claude-sonnet-4", &a).unwrap(), None, false).unwrap();
        assert_eq!(t.url, "https://api.anthropic.com/v1/chat/completions");
        let t = target(&up, &Endpoint::Messages, &resolve("claude-sonnet-4", &a).unwrap(), None, false).unwrap();
        assert_eq!((t.url.as_str(), t.auth), ("https://api.anthropic.com/v1/messages", AuthStyle::XApiKey));
        assert!(target(&up, &Endpoint::Messages, &resolve("gpt-4o", &a).unwrap(), None, false).is_err());
        let g = Endpoint::Gemini { model: "gemini-2.5-flash".into(), stream: true };
        let t = target(&up, &g, &resolve("gemini-2.5-flash", &a).unwrap(), Some("alt=sse&key=stolen"), false).unwrap();
        assert_eq!(t.url, "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse");
        let via = Upstreams { via_openrouter: true, ..Upstreams::default() };
        let t = target(&via, &Endpoint::ChatCompletions, &resolve("anthropic/claude-sonnet-4", &a).unwrap(), None, true).unwrap();
        assert_eq!((t.url.as_str(), t.key_of, t.model.as_deref()), ("https://openrouter.ai/api/v1/chat/completions", Provider::Openrouter, Some("anthropic/claude-sonnet-4")));
        assert!(target(&up, &Endpoint::ChatCompletions, &resolve("meta-llama/x", &a).unwrap(), None, false).is_err());
    }

    #[test]
    fn guest_paths_are_checked() {
        assert!(path_allowed("/v1/chat/completions"));
        assert!(path_allowed("/v1beta/models/gemini:streamGenerateContent?alt=sse"));
        assert!(path_allowed("/rig/v1/usage?subject=a&window=15m"));
        assert!(!path_allowed("/v1/../internal/v1/ai/proxy"));
        assert!(!path_allowed("/v1/%2e%2e/x"));
        assert!(!path_allowed("/v1//x"));
        assert!(!path_allowed("/internal/v1/ai/workspaces/ws-1/env"));
        assert!(!path_allowed("/api/v1/users/me"));
        assert!(!path_allowed("v1/chat"));
        assert!(!path_allowed("/v1/chat completions"));
    }
}
