//! Per-subject controls a workspace sends with its calls:
//!
//! - `X-Rigbox-Subject: <id>` (≤ 256 printable characters; beats the body's `user`);
//! - `X-Rigbox-Subject-Budget: <amount>;period=<window>` (at most one);
//! - `X-Rigbox-Subject-Rate: <amount>;window=<window>` (repeatable, or comma-separated);
//!
//! where `<amount>` is credits (a decimal number) or `<n>req`, and `<window>`
//! is `30s`, `15m`, `5h`, `7d` or a number of seconds.

/// A malformed header (answered 400 `subject_limit_malformed`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LimitError(pub String);

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    /// Spend, in micro-credits.
    Micro(i64),
    /// Requests.
    Requests(u64),
}

/// One budget or rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// How much.
    pub amount: Amount,
    /// Over how many seconds.
    pub window_secs: u64,
}

/// Longest window accepted (31 days).
pub const MAX_WINDOW_SECS: u64 = 31 * 86_400;

/// Parses a window: `30s`, `15m`, `5h`, `7d`, or plain seconds.
pub fn parse_window(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 's') => (&s[..i], 1),
        (i, 'm') => (&s[..i], 60),
        (i, 'h') => (&s[..i], 3600),
        (i, 'd') => (&s[..i], 86_400),
        _ => (s, 1),
    };
    let n: u64 = num.parse().ok()?;
    let secs = n.checked_mul(mult)?;
    (secs > 0 && secs <= MAX_WINDOW_SECS).then_some(secs)
}

/// Parses `<amount>;<key>=<window>`.
pub fn parse_limit(value: &str, key: &str) -> Result<Limit, LimitError> {
    let bad = |why: &str| LimitError(format!("malformed subject limit {value:?}: {why}"));
    let mut parts = value.split(';').map(str::trim);
    let amount = parts.next().filter(|a| !a.is_empty()).ok_or_else(|| bad("missing amount"))?;
    let amount = if let Some(n) = amount.strip_suffix("req") {
        Amount::Requests(n.trim().parse().map_err(|_| bad("request count must be a whole number"))?)
    } else {
        let c: f64 = amount.parse().map_err(|_| bad("amount must be credits or <n>req"))?;
        if !c.is_finite() || c < 0.0 {
            return Err(bad("amount must be non-negative"));
        }
        Amount::Micro(crate::micro(c))
    };
    let mut window = None;
    for p in parts {
        let (k, v) = p.split_once('=').ok_or_else(|| bad("expected key=value"))?;
        if k.trim() != key {
            return Err(bad(&format!("unknown parameter {:?} (expected {key})", k.trim())));
        }
        window = Some(parse_window(v).ok_or_else(|| bad("invalid window"))?);
    }
    let window_secs = window.ok_or_else(|| bad(&format!("missing {key}=")))?;
    Ok(Limit { amount, window_secs })
}

/// Checks a subject id.
pub fn parse_subject(s: &str) -> Result<String, LimitError> {
    let s = s.trim();
    if s.is_empty() || s.chars().count() > 256 || s.chars().any(char::is_control) {
        return Err(LimitError("X-Rigbox-Subject must be 1 to 256 printable characters".into()));
    }
    Ok(s.to_string())
}

/// Parses every rate header value (each may hold several, comma-separated).
pub fn parse_rates<'a>(values: impl Iterator<Item = &'a str>) -> Result<Vec<Limit>, LimitError> {
    let mut v = Vec::new();
    for h in values {
        for part in h.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            v.push(parse_limit(part, "window")?);
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        assert_eq!(parse_window("30s"), Some(30));
        assert_eq!(parse_window("15m"), Some(900));
        assert_eq!(parse_window("5h"), Some(18_000));
        assert_eq!(parse_window("7d"), Some(604_800));
        assert_eq!(parse_window("86400"), Some(86_400));
        assert_eq!(parse_window("0s"), None);
        assert_eq!(parse_window("1y"), None);
        assert_eq!(parse_window("99d"), None);
    }

    #[test]
    fn limits() {
        assert_eq!(parse_limit("2.5;period=1h", "period").unwrap(), Limit { amount: Amount::Micro(2_500_000), window_secs: 3600 });
        assert_eq!(parse_limit("10req; window=60", "window").unwrap(), Limit { amount: Amount::Requests(10), window_secs: 60 });
        assert!(parse_limit("abc;period=1h", "period").is_err());
        assert!(parse_limit("1", "period").is_err());
        assert!(parse_limit("1;window=1h", "period").is_err());
        assert!(parse_limit("-1;period=1h", "period").is_err());
        let r = parse_rates(["5req;window=1m, 1;window=1h", "2req;window=10s"].into_iter()).unwrap();
        assert_eq!(r.len(), 3);
        assert!(parse_subject(&"x".repeat(257)).is_err());
        assert_eq!(parse_subject(" tenant-1 ").unwrap(), "tenant-1");
    }
}
