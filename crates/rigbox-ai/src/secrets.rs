//! Keys sealed at rest: ChaCha20-Poly1305 with a 32-byte key kept in a file
//! (mode 0600, created on first use). Each sealed value is bound to a
//! context string (its row), so a ciphertext cannot be moved to another row.
//! Stored form: `v1:` + base64(nonce ‖ ciphertext).

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use std::path::Path;

/// Sealing errors.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The key file could not be read or written.
    #[error("secret key file {path}: {message}")]
    KeyFile {
        /// File.
        path: String,
        /// Cause.
        message: String,
    },
    /// A sealed value did not open (wrong key, wrong context, or tampered).
    #[error("a sealed secret did not open (wrong key file or tampered data)")]
    Open,
}

/// The sealing key.
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(<redacted>)")
    }
}

impl SecretBox {
    /// A box with this key.
    pub fn new(key: [u8; 32]) -> Self {
        SecretBox { cipher: ChaCha20Poly1305::new(Key::from_slice(&key)) }
    }

    /// Loads the key file, creating it (0600, 32 random bytes, hex) if missing.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        let err = |m: String| SecretError::KeyFile { path: path.display().to_string(), message: m };
        if let Ok(text) = std::fs::read_to_string(path) {
            let bytes = hex_decode(text.trim()).ok_or_else(|| err("not 64 hex digits".into()))?;
            let key: [u8; 32] = bytes.try_into().map_err(|_| err("not 64 hex digits".into()))?;
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = std::fs::metadata(path) {
                if m.permissions().mode() & 0o077 != 0 {
                    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
                }
            }
            return Ok(Self::new(key));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let mut key = [0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut key[..]);
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().create_new(true).write(true).mode(0o600).open(path).map_err(|e| err(e.to_string()))?;
        f.write_all(hex_encode(&key).as_bytes()).map_err(|e| err(e.to_string()))?;
        Ok(Self::new(key))
    }

    /// Seals `plaintext` for `context`.
    pub fn seal(&self, context: &str, plaintext: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::Rng::fill(&mut rand::thread_rng(), &mut nonce[..]);
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext.as_bytes(), aad: context.as_bytes() })
            .unwrap_or_default();
        let mut all = nonce.to_vec();
        all.extend_from_slice(&ct);
        format!("v1:{}", base64::engine::general_purpose::STANDARD.encode(all))
    }

    /// Opens a value sealed for `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<String, SecretError> {
        let b64 = sealed.strip_prefix("v1:").ok_or(SecretError::Open)?;
        let all = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| SecretError::Open)?;
        if all.len() < 12 + 16 {
            return Err(SecretError::Open);
        }
        let (nonce, ct) = all.split_at(12);
        let pt = self.cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: context.as_bytes() }).map_err(|_| SecretError::Open)?;
        String::from_utf8(pt).map_err(|_| SecretError::Open)
    }
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_bind_to_context() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("k");
        let b = SecretBox::load_or_create(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let s = b.seal("provider:openai", "sk-secret");
        assert!(!s.contains("sk-secret"));
        assert_ne!(s, b.seal("provider:openai", "sk-secret"), "fresh nonce each time");
        assert_eq!(b.open("provider:openai", &s).unwrap(), "sk-secret");
        assert!(b.open("provider:anthropic", &s).is_err(), "bound to its row");
        // The same file opens it again; another key does not.
        assert_eq!(SecretBox::load_or_create(&path).unwrap().open("provider:openai", &s).unwrap(), "sk-secret");
        assert!(SecretBox::new([7u8; 32]).open("provider:openai", &s).is_err());
        assert!(format!("{b:?}").contains("redacted"));
    }
}
