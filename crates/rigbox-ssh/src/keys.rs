//! Public keys as users give them (OpenSSH `authorized_keys` lines) and the
//! gateway's host key.

use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey, PublicKey};
use std::path::Path;

/// Errors of key handling.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is not one OpenSSH public key.
    #[error("invalid public key: {0}")]
    Invalid(String),
    /// The host key file could not be read or written.
    #[error("host key {path}: {message}")]
    HostKey {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// Key types accepted for registration.
const ALLOWED: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// A parsed public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedKey {
    /// Algorithm name (`ssh-ed25519`, `ssh-rsa`, ...).
    pub key_type: String,
    /// `SHA256:<base64>` fingerprint, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// The comment (may be empty).
    pub comment: String,
    /// The normalized line: `type base64 [comment]`.
    pub openssh: String,
}

/// The SHA-256 fingerprint of a key (`SHA256:…`).
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Parses one public key in OpenSSH format (`type base64 [comment]`).
/// Options prefixes, several keys, private keys and certificates are refused.
pub fn parse_public_key(text: &str) -> Result<AuthorizedKey, KeyError> {
    let line = text.trim();
    if line.is_empty() {
        return Err(KeyError::Invalid("empty".into()));
    }
    if line.contains('\n') || line.contains('\r') {
        return Err(KeyError::Invalid("give exactly one key (one line)".into()));
    }
    if line.contains("PRIVATE KEY") {
        return Err(KeyError::Invalid("this is a private key; give the .pub file".into()));
    }
    let kind = line.split_whitespace().next().unwrap_or_default();
    if !ALLOWED.contains(&kind) {
        return Err(KeyError::Invalid(format!("unsupported key type {kind:?} (expected one of {})", ALLOWED.join(", "))));
    }
    let key = PublicKey::from_openssh(line).map_err(|e| KeyError::Invalid(e.to_string()))?;
    let key_type = key.algorithm().as_str().to_string();
    if key_type != kind {
        return Err(KeyError::Invalid(format!("key type {kind:?} does not match the key data ({key_type})")));
    }
    let comment = String::from_utf8_lossy(key.comment().as_bytes()).trim().to_string();
    let mut bare = key.clone();
    bare.set_comment("");
    let body = bare.to_openssh().map_err(|e| KeyError::Invalid(e.to_string()))?;
    let openssh = if comment.is_empty() { body.trim().to_string() } else { format!("{} {comment}", body.trim()) };
    Ok(AuthorizedKey { key_type, fingerprint: fingerprint(&key), comment, openssh })
}

/// The keys of an `authorized_keys` file; lines with options are read past
/// their options, comments and lines that do not parse are skipped.
pub fn parse_authorized_keys(text: &str) -> Vec<AuthorizedKey> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Ok(k) = parse_public_key(line) {
            out.push(k);
            continue;
        }
        // `options type base64 comment`: start at the first known key type.
        let mut rest = line;
        while let Some((_, tail)) = rest.split_once(char::is_whitespace) {
            rest = tail.trim_start();
            if ALLOWED.iter().any(|t| rest.starts_with(t)) {
                if let Ok(k) = parse_public_key(rest) {
                    out.push(k);
                }
                break;
            }
        }
    }
    out
}

/// The gateway's host key: read from `path`, or generated (Ed25519) and
/// written there with mode 0600 when the file does not exist.
pub fn load_or_generate_host_key(path: &Path) -> Result<PrivateKey, KeyError> {
    let err = |m: String| KeyError::HostKey { path: path.display().to_string(), message: m };
    match std::fs::read_to_string(path) {
        Ok(text) => PrivateKey::from_openssh(text.as_bytes()).map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use rand::RngCore;
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut seed = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut seed);
            let pair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
            let mut key = PrivateKey::from(pair);
            key.set_comment("rigbox-ssh-gateway");
            let text = key.to_openssh(LineEnding::LF).map_err(|e| err(e.to_string()))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| err(e.to_string()))?;
            f.write_all(text.as_bytes()).map_err(|e| err(e.to_string()))?;
            tracing::info!(path = %path.display(), fingerprint = %fingerprint(key.public_key()), "generated the SSH gateway host key");
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIsjAZfcbyE7F2diV70UpDxTI9Z678RVIrCNYFon6ZN/ alice@laptop";

    #[test]
    fn parses_and_normalizes() {
        let k = parse_public_key(&format!("  {ED}\n")).unwrap();
        assert_eq!(k.key_type, "ssh-ed25519");
        assert_eq!(k.comment, "alice@laptop");
        assert!(k.fingerprint.starts_with("SHA256:"), "{}", k.fingerprint);
        assert_eq!(k.openssh, ED);
        let bare = parse_public_key(ED.rsplit_once(' ').unwrap().0).unwrap();
        assert_eq!(bare.fingerprint, k.fingerprint, "the comment is not part of the key");
        assert_eq!(bare.comment, "");
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            "",
            "hello",
            "ssh-ed25519",
            "ssh-ed25519 not-base64!!",
            "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ",
            "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
            "-----BEGIN OPENSSH PRIVATE KEY-----",
        ] {
            assert!(parse_public_key(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_public_key(&format!("{ED}\n{ED}")).is_err(), "two keys");
        // The type must match the key data.
        let lie = ED.replace("ssh-ed25519", "ssh-rsa");
        assert!(parse_public_key(&lie).is_err());
    }

    #[test]
    fn reads_authorized_keys_files() {
        let text = format!("# keys\n\n{ED}\nno-pty,command=\"x y\" {ED}\ngarbage line\n");
        let keys = parse_authorized_keys(&text);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0], keys[1]);
    }

    #[test]
    fn host_key_is_generated_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/ssh_host_ed25519_key");
        let a = load_or_generate_host_key(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let b = load_or_generate_host_key(&p).unwrap();
        assert_eq!(fingerprint(a.public_key()), fingerprint(b.public_key()));
    }
}
