//! Visibility decisions and the edge's login sessions.
//!
//! A caller proves who they are with an `X-Rigbox-Key: rb_…` header or with
//! the session cookie the edge sets after `/_rigbox/login` on the app's host.
//! The cookie is host-only (no `Domain`), `HttpOnly`, `SameSite=Lax`, and
//! holds `user.key.expiry.mac`, where the MAC (HMAC-SHA256 with the edge's
//! secret) also covers the host, so a cookie is worth nothing on another
//! app. The session names the key used to log in: revoking that key ends the
//! session. Neither the header nor the cookie is ever forwarded to the VM.

use crate::route::{EdgeUser, Visibility};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "__rigbox_session";
/// Header carrying an API key.
pub const KEY_HEADER: &str = "x-rigbox-key";

/// What the edge does with a request, given who the caller is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Forward it.
    Allow,
    /// No (valid) credentials: log in first.
    Unauthenticated,
    /// Authenticated, but not someone this app lets in.
    Forbidden,
}

/// The visibility rule. `caller` is `None` when no valid credential came
/// with the request. CORS preflights (`OPTIONS` with
/// `Access-Control-Request-Method`) always pass: browsers send them without
/// credentials, and the app answers them itself.
pub fn decide(visibility: Visibility, owner: &EdgeUser, allowed_emails: &[String], caller: Option<&EdgeUser>, preflight: bool) -> Decision {
    if preflight || visibility == Visibility::Public {
        return Decision::Allow;
    }
    let Some(c) = caller else { return Decision::Unauthenticated };
    if c.id == owner.id {
        return Decision::Allow;
    }
    if visibility == Visibility::Privileged && allowed_emails.iter().any(|e| e.trim().eq_ignore_ascii_case(c.email.trim())) {
        return Decision::Allow;
    }
    Decision::Forbidden
}

/// Signs and checks session cookies.
#[derive(Clone)]
pub struct Sessions {
    secret: Vec<u8>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions(<secret>)")
    }
}

/// A verified session cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// User id.
    pub user_id: String,
    /// Key used to log in.
    pub key_id: String,
    /// Expiry (seconds since the epoch).
    pub expires: u64,
}

impl Sessions {
    /// With a secret (at least 32 random bytes; keep it to keep sessions
    /// valid across restarts).
    pub fn new(secret: Vec<u8>) -> Self {
        Sessions { secret }
    }

    /// A fresh random secret.
    pub fn random() -> Self {
        let mut b = vec![0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut b[..]);
        Sessions { secret: b }
    }

    fn mac(&self, host: &str, user_id: &str, key_id: &str, expires: u64) -> Vec<u8> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        m.update(format!("rigbox-session-v1|{host}|{user_id}|{key_id}|{expires}").as_bytes());
        m.finalize().into_bytes().to_vec()
    }

    /// The cookie value for a session on `host`.
    pub fn issue(&self, host: &str, user_id: &str, key_id: &str, expires: u64) -> String {
        let mac = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.mac(host, user_id, key_id, expires));
        format!("{user_id}.{key_id}.{expires}.{mac}")
    }

    /// Checks a cookie value for `host` at time `now` (seconds).
    pub fn verify(&self, host: &str, value: &str, now: u64) -> Option<Session> {
        let mut parts = value.split('.');
        let (user_id, key_id, expires, mac) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let expires: u64 = expires.parse().ok()?;
        if expires <= now {
            return None;
        }
        let given = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(mac).ok()?;
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).ok()?;
        m.update(format!("rigbox-session-v1|{host}|{user_id}|{key_id}|{expires}").as_bytes());
        m.verify_slice(&given).ok()?;
        Some(Session { user_id: user_id.into(), key_id: key_id.into(), expires })
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').map(str::trim).find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
}

/// A `Cookie` header without cookie `name` (`None` when nothing is left).
pub fn strip_cookie(header: &str, name: &str) -> Option<String> {
    let rest: Vec<&str> = header
        .split(';')
        .map(str::trim)
        .filter(|kv| !kv.is_empty() && kv.split_once('=').map(|(k, _)| k) != Some(name) && *kv != name)
        .collect();
    (!rest.is_empty()).then(|| rest.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(id: &str, email: &str) -> EdgeUser {
        EdgeUser { id: id.into(), email: email.into() }
    }

    #[test]
    fn visibility_table() {
        use Decision::*;
        use Visibility::*;
        let owner = u("u-own", "owner@x.test");
        let friend = u("u-fr", "Friend@X.test");
        let stranger = u("u-st", "stranger@x.test");
        let allowed = vec!["friend@x.test".to_string()];
        // (visibility, caller, preflight, expected)
        let table: Vec<(Visibility, Option<&EdgeUser>, bool, Decision)> = vec![
            (Public, None, false, Allow),
            (Public, Some(&stranger), false, Allow),
            (Private, None, false, Unauthenticated),
            (Private, Some(&owner), false, Allow),
            (Private, Some(&friend), false, Forbidden),
            (Private, Some(&stranger), false, Forbidden),
            (Private, None, true, Allow),
            (Privileged, None, false, Unauthenticated),
            (Privileged, Some(&owner), false, Allow),
            (Privileged, Some(&friend), false, Allow),
            (Privileged, Some(&stranger), false, Forbidden),
            (Privileged, None, true, Allow),
        ];
        for (vis, caller, pre, want) in table {
            assert_eq!(decide(vis, &owner, &allowed, caller, pre), want, "{vis:?} {caller:?} preflight={pre}");
        }
        // The allowed list only matters for privileged apps.
        assert_eq!(decide(Private, &owner, &allowed, Some(&friend), false), Forbidden);
        // A user with the owner's email but another id is not the owner.
        assert_eq!(decide(Private, &owner, &[], Some(&u("u-other", "owner@x.test")), false), Forbidden);
    }

    #[test]
    fn sessions_are_bound_to_host_expiry_and_secret() {
        let s = Sessions::random();
        let c = s.issue("a.localhost", "u-1", "k-1", 2000);
        let got = s.verify("a.localhost", &c, 1000).unwrap();
        assert_eq!((got.user_id.as_str(), got.key_id.as_str(), got.expires), ("u-1", "k-1", 2000));
        assert!(s.verify("b.localhost", &c, 1000).is_none(), "another host");
        assert!(s.verify("a.localhost", &c, 2000).is_none(), "expired");
        assert!(Sessions::random().verify("a.localhost", &c, 1000).is_none(), "another secret");
        let forged = c.replacen("u-1", "u-2", 1);
        assert!(s.verify("a.localhost", &forged, 1000).is_none(), "tampered user");
        let longer = c.replacen(".2000.", ".9999.", 1);
        assert!(s.verify("a.localhost", &longer, 1000).is_none(), "tampered expiry");
        assert!(s.verify("a.localhost", "garbage", 1000).is_none());
        assert!(s.verify("a.localhost", &format!("{c}.x"), 1000).is_none());
    }

    #[test]
    fn cookies() {
        let h = "a=1; __rigbox_session=xyz; b=2";
        assert_eq!(cookie(h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(h, "b"), Some("2"));
        assert_eq!(cookie(h, "c"), None);
        assert_eq!(strip_cookie(h, SESSION_COOKIE).as_deref(), Some("a=1; b=2"));
        assert_eq!(strip_cookie("__rigbox_session=xyz", SESSION_COOKIE), None);
    }
}
