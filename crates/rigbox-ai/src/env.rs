//! The environment a workspace gets for its AI mode.

use crate::route::Provider;
use std::collections::BTreeMap;

/// Variables the platform manages (removed when the mode changes).
pub const MANAGED_VARS: &[&str] = &[
    "RIGBOX_AI_MODE",
    "RIGBOX_AI_PROXY_URL",
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_API_KEY",
    "OPENROUTER_BASE_URL",
    "OPENROUTER_API_KEY",
    "GOOGLE_GEMINI_BASE_URL",
    "GOOGLE_API_KEY",
    "GEMINI_API_KEY",
];

/// The AI environment of a workspace. `byok`: the workspace's provider and
/// key (BYOK mode); `None` is managed mode.
pub fn ai_env(byok: Option<(Provider, &str)>) -> BTreeMap<String, String> {
    let base = format!("http://{}", crate::PROXY_ADDR);
    let mut e = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        e.insert(k.to_string(), v.to_string());
    };
    set("RIGBOX_AI_PROXY_URL", &base);
    set("OPENAI_BASE_URL", &format!("{base}/v1"));
    set("OPENROUTER_BASE_URL", &format!("{base}/v1"));
    set("ANTHROPIC_BASE_URL", &base);
    set("GOOGLE_GEMINI_BASE_URL", &base);
    match byok {
        None => {
            set("RIGBOX_AI_MODE", "managed");
            for k in ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENROUTER_API_KEY", "GEMINI_API_KEY"] {
                set(k, crate::PLACEHOLDER_KEY);
            }
        }
        Some((p, key)) => {
            set("RIGBOX_AI_MODE", "byok");
            for k in p.key_vars() {
                set(k, key);
            }
        }
    }
    e
}

/// Merges the AI environment under the user's (the user's variables win).
pub fn merge(ai: &BTreeMap<String, String>, user: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out = ai.clone();
    out.extend(user.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_and_byok() {
        let m = ai_env(None);
        assert_eq!(m["OPENAI_BASE_URL"], "http://169.254.0.1:9090/v1");
        assert_eq!(m["ANTHROPIC_BASE_URL"], "http://169.254.0.1:9090");
        assert_eq!(m["OPENAI_API_KEY"], "managed-by-rigbox");
        assert!(m.keys().all(|k| MANAGED_VARS.contains(&k.as_str())));
        let b = ai_env(Some((Provider::Anthropic, "sk-ant-1")));
        assert_eq!(b["ANTHROPIC_API_KEY"], "sk-ant-1");
        assert_eq!(b["RIGBOX_AI_MODE"], "byok");
        assert!(!b.contains_key("OPENAI_API_KEY"));
        let user = BTreeMap::from([("OPENAI_BASE_URL".to_string(), "mine".to_string()), ("A".to_string(), "1".to_string())]);
        let merged = merge(&m, &user);
        assert_eq!(merged["OPENAI_BASE_URL"], "mine");
        assert_eq!(merged["A"], "1");
        assert_eq!(merged["ANTHROPIC_API_KEY"], "managed-by-rigbox");
    }
}
