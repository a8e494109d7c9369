//! Identifiers and names.

use rand::Rng;

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

fn random_suffix(n: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..n).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

/// A new workspace id, `ws-` and 10 lowercase alphanumerics (as the reference: `ws-[a-z0-9]+`).
pub fn new_workspace_id() -> String {
    format!("ws-{}", random_suffix(10))
}

/// A new app id, `app-` and 8 lowercase alphanumerics.
pub fn new_app_id() -> String {
    format!("app-{}", random_suffix(8))
}

/// A new snapshot id, `snap-` and 10 lowercase alphanumerics.
pub fn new_snapshot_id() -> String {
    format!("snap-{}", random_suffix(10))
}

/// Whether `id` has the shape of a workspace id.
pub fn valid_workspace_id(id: &str) -> bool {
    id.len() > 3
        && id.len() <= 40
        && id.starts_with("ws-")
        && id[3..].bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Why a name is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty.
    #[error("name must not be empty")]
    Empty,
    /// Too long.
    #[error("name must be at most {0} characters")]
    TooLong(usize),
    /// Bad characters or shape.
    #[error("name may contain only lowercase letters, digits and dashes, and must start with a letter and not end with a dash")]
    Characters,
}

/// Validates a workspace (or app) name: a DNS label, so it can be used as a
/// hostname and an SSH user: `[a-z][a-z0-9-]{0,62}`, not ending in `-`.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > 63 {
        return Err(NameError::TooLong(63));
    }
    let b = name.as_bytes();
    if !b[0].is_ascii_lowercase()
        || b[b.len() - 1] == b'-'
        || !b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    {
        return Err(NameError::Characters);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_reference_shape() {
        let id = new_workspace_id();
        assert!(valid_workspace_id(&id), "{id}");
        assert!(!valid_workspace_id("ws-"));
        assert!(!valid_workspace_id("ws-ABC"));
        assert!(!valid_workspace_id("abc"));
        assert_ne!(new_workspace_id(), new_workspace_id());
        assert!(new_app_id().starts_with("app-"));
    }

    #[test]
    fn names_are_dns_labels() {
        assert!(validate_name("my-box-1").is_ok());
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name("1abc"), Err(NameError::Characters));
        assert_eq!(validate_name("abc-"), Err(NameError::Characters));
        assert_eq!(validate_name("Abc"), Err(NameError::Characters));
        assert_eq!(validate_name("a b"), Err(NameError::Characters));
        assert!(matches!(validate_name(&"a".repeat(64)), Err(NameError::TooLong(63))));
    }
}
