//! API keys and authentication.
//!
//! Keys look like `rb_` followed by 40 random alphanumerics. Only their
//! SHA-256 is stored; the plaintext is shown once, when minted. Every key has
//! its own request budget (`requests_per_minute`); beyond it the API answers
//! 429 with `Retry-After`.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::Utc;
use rand::distributions::Alphanumeric;
use rand::Rng;
use rigbox_db::{ApiKey, DbError, User};
use sha2::{Digest, Sha256};

/// A new plaintext API key.
pub fn generate_key() -> String {
    let body: String = rand::thread_rng().sample_iter(&Alphanumeric).take(40).map(char::from).collect();
    format!("rb_{body}")
}

/// SHA-256 (hex) of a key.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// `rb_...` plus the last 8 characters.
pub fn preview(key: &str) -> String {
    let tail: String = key.chars().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
    format!("rb_...{tail}")
}

/// Stores a new key for `user_id` and returns (row, plaintext).
pub async fn mint_key(st: &AppState, user_id: &str, name: Option<String>, plaintext: Option<String>) -> Result<(ApiKey, String), ApiError> {
    let key = plaintext.unwrap_or_else(generate_key);
    let row = ApiKey {
        id: uuid::Uuid::new_v4().to_string(),
        user_id: user_id.into(),
        name,
        key_hash: hash_key(&key),
        key_preview: preview(&key),
        is_workspace_key: false,
        created_at: Utc::now(),
        last_used_at: None,
    };
    st.store().create_api_key(&row).await?;
    Ok((row, key))
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Auth {
    /// The user.
    pub user: User,
    /// The key used.
    pub key: ApiKey,
}

impl Auth {
    /// Fails unless the caller is an administrator.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.user.is_admin {
            Ok(())
        } else {
            Err(ApiError::forbidden("administrator only"))
        }
    }
}

/// Resolves a plaintext key to its user (no rate limiting).
pub async fn lookup_key(st: &AppState, key: &str) -> Result<Auth, ApiError> {
    match st.store().api_key_by_hash(&hash_key(key)).await {
        Ok((key, user)) => Ok(Auth { user, key }),
        Err(DbError::NotFound) => Err(ApiError::unauthorized("Invalid API key")),
        Err(e) => Err(e.into()),
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let Some(key) = bearer(parts) else {
            return Err(ApiError::unauthorized("Missing Authorization header"));
        };
        let auth = lookup_key(st, key).await?;
        st.check_rate(&auth.key.id)?;
        // Record use at most once a minute per key.
        let stale = auth.key.last_used_at.is_none_or(|t| Utc::now() - t > chrono::Duration::seconds(60));
        if stale {
            let store = st.store().clone();
            let id = auth.key.id.clone();
            tokio::spawn(async move {
                let _ = store.touch_api_key(&id, Utc::now()).await;
            });
        }
        Ok(auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape() {
        let k = generate_key();
        assert!(k.starts_with("rb_") && k.len() == 43);
        assert_ne!(generate_key(), k);
        assert_eq!(hash_key(&k).len(), 64);
        assert_eq!(preview("rb_abcdefghij12345678"), "rb_...12345678");
    }
}
