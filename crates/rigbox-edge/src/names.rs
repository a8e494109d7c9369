//! App subdomains: validation (a DNS label, not reserved) and parsing of
//! `Host` headers into the app they name.

/// Subdomains no app may take: the platform's own names and names people
/// would mistake for the platform.
pub const RESERVED: &[&str] = &[
    "_rigbox", "account", "accounts", "acme", "admin", "api", "app", "apps", "assets", "auth", "billing", "cdn", "console",
    "dashboard", "docs", "edge", "gateway", "help", "internal", "login", "logout", "mail", "metrics", "ns1", "ns2", "rigbox",
    "root", "smtp", "ssh", "static", "status", "support", "system", "webmail", "www",
];

/// Why a subdomain is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty.
    #[error("the subdomain is empty")]
    Empty,
    /// Longer than a DNS label may be.
    #[error("the subdomain is longer than 63 characters")]
    TooLong,
    /// A character outside `a-z`, `0-9`, `-`.
    #[error("the subdomain may only hold lowercase letters, digits and dashes (found {0:?})")]
    BadChar(char),
    /// Starts or ends with a dash.
    #[error("the subdomain may not start or end with a dash")]
    Dash,
    /// `xx--…` is reserved for IDNA (punycode) labels.
    #[error("the subdomain may not have dashes in its third and fourth characters")]
    Idna,
    /// On the reserved list.
    #[error("the subdomain {0:?} is reserved")]
    Reserved(String),
}

/// Checks that `s` can be an app's subdomain: a lowercase DNS label
/// (1–63 of `a-z0-9-`, no leading or trailing dash, no `xx--` IDNA prefix)
/// that is not on the [`RESERVED`] list.
pub fn validate_subdomain(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > 63 {
        return Err(NameError::TooLong);
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
        return Err(NameError::BadChar(c));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(NameError::Dash);
    }
    if s.len() >= 4 && &s[2..4] == "--" {
        return Err(NameError::Idna);
    }
    if RESERVED.contains(&s) {
        return Err(NameError::Reserved(s.to_string()));
    }
    Ok(())
}

/// Turns a free-form app name into a subdomain candidate: lowercase, runs of
/// other characters become one dash, dashes trimmed, cut to 63.
pub fn suggest_subdomain(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let t = out.trim_matches('-');
    let mut s: String = t.chars().take(63).collect();
    while s.ends_with('-') {
        s.pop();
    }
    s
}

/// What a `Host` names, relative to the base domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `{subdomain}.{base}`.
    App(String),
    /// The base domain itself.
    Apex,
    /// Anything else (another domain, nested names, an IP address).
    Foreign,
}

/// The host part of a `Host` header or URI authority: port removed,
/// lowercased, trailing dot removed. IPv6 literals keep their brackets.
pub fn host_only(authority: &str) -> String {
    let a = authority.trim();
    let h = if a.starts_with('[') {
        match a.find(']') {
            Some(i) => &a[..=i],
            None => a,
        }
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
            _ => a,
        }
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// Maps a `Host` header to the app it names under `base` (e.g. `localhost`).
pub fn parse_host(authority: &str, base: &str) -> HostMatch {
    let host = host_only(authority);
    let base = base.trim_end_matches('.').to_ascii_lowercase();
    if host == base {
        return HostMatch::Apex;
    }
    match host.strip_suffix(&base).and_then(|p| p.strip_suffix('.')) {
        Some(label) if !label.is_empty() && !label.contains('.') && validate_label(label) => HostMatch::App(label.to_string()),
        _ => HostMatch::Foreign,
    }
}

fn validate_label(s: &str) -> bool {
    s.len() <= 63 && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') && !s.starts_with('-') && !s.ends_with('-')
}

/// The public URL of an app.
pub fn app_url(scheme: &str, subdomain: &str, base: &str, port: Option<u16>) -> String {
    let default = matches!((scheme, port), ("http", Some(80)) | ("https", Some(443)) | (_, None));
    if default {
        format!("{scheme}://{subdomain}.{base}")
    } else {
        format!("{scheme}://{subdomain}.{base}:{}", port.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomain_rules() {
        let table: &[(&str, Result<(), NameError>)] = &[
            ("myapp", Ok(())),
            ("a", Ok(())),
            ("app-1", Ok(())),
            ("0day", Ok(())),
            (&"x".repeat(63), Ok(())),
            ("", Err(NameError::Empty)),
            (&"x".repeat(64), Err(NameError::TooLong)),
            ("MyApp", Err(NameError::BadChar('M'))),
            ("my_app", Err(NameError::BadChar('_'))),
            ("my.app", Err(NameError::BadChar('.'))),
            ("-app", Err(NameError::Dash)),
            ("app-", Err(NameError::Dash)),
            ("xn--bcher-kva", Err(NameError::Idna)),
            ("api", Err(NameError::Reserved("api".into()))),
            ("www", Err(NameError::Reserved("www".into()))),
            ("admin", Err(NameError::Reserved("admin".into()))),
        ];
        for (input, want) in table {
            assert_eq!(&validate_subdomain(input), want, "{input:?}");
        }
    }

    #[test]
    fn suggestions_are_valid_labels() {
        for name in ["My App", "hello_world!!", "--x--", "Ünïcode app", "a.b.c", &"long".repeat(30)] {
            let s = suggest_subdomain(name);
            assert!(s.is_empty() || validate_label(&s), "{name:?} -> {s:?}");
        }
        assert_eq!(suggest_subdomain("My App"), "my-app");
        assert_eq!(suggest_subdomain("python3 -m http.server"), "python3-m-http-server");
    }

    #[test]
    fn hosts_map_to_apps() {
        let table = [
            ("myapp.localhost:8081", "localhost", HostMatch::App("myapp".into())),
            ("MyApp.LocalHost", "localhost", HostMatch::App("myapp".into())),
            ("myapp.localhost.", "localhost", HostMatch::App("myapp".into())),
            ("localhost:8081", "localhost", HostMatch::Apex),
            ("a.b.localhost", "localhost", HostMatch::Foreign),
            ("myapp.example.com", "localhost", HostMatch::Foreign),
            ("evillocalhost", "localhost", HostMatch::Foreign),
            ("127.0.0.1:8081", "localhost", HostMatch::Foreign),
            ("[::1]:8081", "localhost", HostMatch::Foreign),
            ("shop.apps.example.com", "apps.example.com", HostMatch::App("shop".into())),
            ("apps.example.com:443", "apps.example.com", HostMatch::Apex),
            ("-bad.localhost", "localhost", HostMatch::Foreign),
        ];
        for (host, base, want) in table {
            assert_eq!(parse_host(host, base), want, "{host} under {base}");
        }
    }

    #[test]
    fn random_hosts_never_panic_and_round_trip() {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        let alphabet: Vec<char> = "abcXYZ019-._:[]\u{e9}".chars().collect();
        for _ in 0..5000 {
            let len = rng.gen_range(0..24);
            let s: String = (0..len).map(|_| alphabet[rng.gen_range(0..alphabet.len())]).collect();
            if let HostMatch::App(label) = parse_host(&s, "localhost") {
                // Whatever parses as an app is a syntactically valid label...
                assert!(validate_label(&label), "{s:?} -> {label:?}");
                // ...and building its host again finds the same app.
                assert_eq!(parse_host(&format!("{label}.localhost:1"), "localhost"), HostMatch::App(label));
            }
            let _ = validate_subdomain(&s);
        }
    }

    #[test]
    fn urls() {
        assert_eq!(app_url("http", "a", "localhost", Some(8081)), "http://a.localhost:8081");
        assert_eq!(app_url("https", "a", "apps.example.com", Some(443)), "https://a.apps.example.com");
    }
}
