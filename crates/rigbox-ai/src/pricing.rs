//! The price table: per model, USD per million tokens, converted to integer
//! micro-credits (1 credit = 1,000,000 micro; by default 1 credit = $0.01, so
//! `micro = ceil(usd × 100 × 1,000,000)`).
//!
//! The operator keeps it in a TOML or JSON file (or edits it with the admin
//! API, which writes the file):
//!
//! ```toml
//! credits_per_usd = 100.0      # 1 credit = $0.01
//! default_max_tokens = 4096    # output bound when a request sets none
//! [aliases]
//! "rigbox/default" = "anthropic/claude-sonnet-4"
//! [models."openai/gpt-4o-mini"]
//! input = 0.15                 # USD per million input tokens
//! output = 0.60                # USD per million output tokens
//! [models."anthropic/claude-sonnet-4*"]   # trailing * matches a prefix
//! input = 3.0
//! output = 15.0
//! ```

use crate::wire::Usage;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Price table errors.
#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    /// The file does not parse.
    #[error("invalid price table: {0}")]
    Invalid(String),
}

/// One model's prices.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModelPrice {
    /// USD per million input tokens.
    pub input: f64,
    /// USD per million output tokens.
    pub output: f64,
}

/// The whole table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTable {
    /// Credits per USD (100: 1 credit = $0.01). A markup goes here (130 = 30%).
    #[serde(default = "default_cpu")]
    pub credits_per_usd: f64,
    /// Output-token bound used for the reservation when a request sets none.
    #[serde(default = "default_max")]
    pub default_max_tokens: u64,
    /// Model aliases (`rigbox/default` → a slug).
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// Prices by slug (`provider/name`, or a prefix ending in `*`).
    #[serde(default)]
    pub models: BTreeMap<String, ModelPrice>,
}

fn default_cpu() -> f64 {
    100.0
}

fn default_max() -> u64 {
    4096
}

/// A price in micro-credits per million tokens (integer math from here on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MicroPrice {
    /// Micro-credits per million input tokens.
    pub input: u64,
    /// Micro-credits per million output tokens.
    pub output: u64,
}

impl MicroPrice {
    /// Cost of `usage`, rounded up to a whole micro-credit.
    pub fn cost(&self, usage: &Usage) -> i64 {
        let total = u128::from(usage.input_tokens) * u128::from(self.input) + u128::from(usage.output_tokens) * u128::from(self.output);
        let micro = total.div_ceil(1_000_000);
        i64::try_from(micro).unwrap_or(i64::MAX)
    }
}

impl Default for PriceTable {
    /// A starting table; operators should check the prices against their contracts.
    fn default() -> Self {
        let mut models = BTreeMap::new();
        let mut put = |k: &str, i: f64, o: f64| {
            models.insert(k.to_string(), ModelPrice { input: i, output: o });
        };
        put("openai/gpt-4o-mini*", 0.15, 0.60);
        put("openai/gpt-4o*", 2.50, 10.0);
        put("openai/gpt-4.1-mini*", 0.40, 1.60);
        put("openai/gpt-4.1*", 2.00, 8.00);
        put("openai/text-embedding-3-small", 0.02, 0.0);
        put("openai/text-embedding-3-large", 0.13, 0.0);
        put("anthropic/claude-sonnet-4*", 3.0, 15.0);
        put("anthropic/claude-3-5-haiku*", 0.80, 4.0);
        put("anthropic/claude-haiku-4*", 1.0, 5.0);
        put("anthropic/claude-opus-4*", 15.0, 75.0);
        put("google/gemini-2.5-flash*", 0.30, 2.50);
        put("google/gemini-2.5-pro*", 1.25, 10.0);
        let mut aliases = BTreeMap::new();
        aliases.insert("rigbox/default".to_string(), "anthropic/claude-sonnet-4".to_string());
        aliases.insert("rigbox/fast".to_string(), "openai/gpt-4o-mini".to_string());
        PriceTable { credits_per_usd: 100.0, default_max_tokens: 4096, aliases, models }
    }
}

impl PriceTable {
    /// Parses TOML, or JSON when the text starts with `{`.
    pub fn parse(text: &str) -> Result<Self, PricingError> {
        let t: PriceTable = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| PricingError::Invalid(e.to_string()))?
        } else {
            toml::from_str(text).map_err(|e| PricingError::Invalid(e.to_string()))?
        };
        t.validate()?;
        Ok(t)
    }

    /// Checks values.
    pub fn validate(&self) -> Result<(), PricingError> {
        if !(self.credits_per_usd.is_finite() && self.credits_per_usd > 0.0) {
            return Err(PricingError::Invalid("credits_per_usd must be positive".into()));
        }
        if self.default_max_tokens == 0 {
            return Err(PricingError::Invalid("default_max_tokens must be positive".into()));
        }
        for (k, p) in &self.models {
            let ok = |v: f64| v.is_finite() && v >= 0.0;
            if !ok(p.input) || !ok(p.output) {
                return Err(PricingError::Invalid(format!("prices of {k} must be non-negative numbers")));
            }
            if k.is_empty() || k[..k.len() - 1].contains('*') {
                return Err(PricingError::Invalid(format!("bad model key {k:?} (a * may only end it)")));
            }
        }
        Ok(())
    }

    /// TOML text of the table.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The price of a slug: an exact key, else the longest matching `prefix*`.
    pub fn price(&self, slug: &str) -> Option<MicroPrice> {
        let p = self.models.get(slug).or_else(|| {
            self.models
                .iter()
                .filter_map(|(k, v)| k.strip_suffix('*').filter(|pre| slug.starts_with(pre)).map(|pre| (pre.len(), v)))
                .max_by_key(|(n, _)| *n)
                .map(|(_, v)| v)
        })?;
        let conv = |usd: f64| (usd * self.credits_per_usd * 1_000_000.0).round() as u64;
        Some(MicroPrice { input: conv(p.input), output: conv(p.output) })
    }

    /// Model ids to list at `/v1/models` (exact keys and aliases).
    pub fn listed_models(&self) -> Vec<String> {
        let mut v: Vec<String> = self.models.keys().map(|k| k.trim_end_matches('*').to_string()).collect();
        v.extend(self.aliases.keys().cloned());
        v.sort();
        v.dedup();
        v
    }
}

/// Input tokens assumed for a request body of `bytes` bytes when reserving
/// (about three bytes per token: a deliberate over-estimate for text).
pub fn input_bound(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(3)
}

/// The reservation for a call: input bound from the body size, output bound
/// from the request's max tokens (or the table's default).
pub fn estimate(price: &MicroPrice, body_bytes: usize, max_output: Option<u64>, default_max: u64, has_output: bool) -> i64 {
    let out = if has_output { max_output.unwrap_or(default_max) } else { 0 };
    price.cost(&Usage { input_tokens: input_bound(body_bytes), output_tokens: out })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_convert_to_integer_micro_credits() {
        let t = PriceTable::default();
        let p = t.price("openai/gpt-4o-mini").unwrap();
        // $0.15 / Mtok × 100 credits/$ = 15 credits / Mtok = 15,000,000 micro / Mtok.
        assert_eq!(p, MicroPrice { input: 15_000_000, output: 60_000_000 });
        assert_eq!(p.cost(&Usage { input_tokens: 1000, output_tokens: 1000 }), 75_000);
        assert_eq!(p.cost(&Usage { input_tokens: 1, output_tokens: 0 }), 15);
        // Rounded up, never down.
        let tiny = MicroPrice { input: 1, output: 0 };
        assert_eq!(tiny.cost(&Usage { input_tokens: 1, output_tokens: 0 }), 1);
        assert_eq!(tiny.cost(&Usage::default()), 0);
    }

    #[test]
    fn longest_prefix_wins_and_unknown_is_none() {
        let t = PriceTable::default();
        assert_eq!(t.price("openai/gpt-4o-2024-08-06").unwrap().input, 250_000_000);
        assert_eq!(t.price("openai/gpt-4o-mini-2024-07-18").unwrap().input, 15_000_000);
        assert!(t.price("openai/unpriced").is_none());
    }

    #[test]
    fn toml_and_json_round_trip() {
        let text = "credits_per_usd = 130.0\n[aliases]\n\"rigbox/fast\" = \"openai/x\"\n[models.\"openai/x\"]\ninput = 1.0\noutput = 2.0\n";
        let t = PriceTable::parse(text).unwrap();
        assert_eq!(t.price("openai/x").unwrap(), MicroPrice { input: 130_000_000, output: 260_000_000 });
        assert_eq!(t.default_max_tokens, 4096);
        let j = serde_json::to_string(&t).unwrap();
        assert_eq!(PriceTable::parse(&j).unwrap(), t);
        assert_eq!(PriceTable::parse(&t.to_toml()).unwrap(), t);
        assert!(PriceTable::parse("[models.\"a\"]\ninput = -1.0\noutput = 1.0\n").is_err());
        assert!(PriceTable::parse("unknown_field = 1\n").is_err());
    }

    #[test]
    fn estimates_bound_the_call() {
        let p = MicroPrice { input: 1_000_000, output: 2_000_000 };
        // 300 bytes → 100 input tokens; 50 output tokens.
        assert_eq!(estimate(&p, 300, Some(50), 4096, true), 100 + 100);
        assert_eq!(estimate(&p, 300, None, 10, true), 100 + 20);
        assert_eq!(estimate(&p, 300, Some(50), 4096, false), 100);
    }
}
