//! Storage of SSH public keys (interactive access).
//!
//! A key is stored as the OpenSSH line the user gave (`type base64 [comment]`,
//! normalized by the API) with its SHA-256 fingerprint (`SHA256:…`). The
//! fingerprint is unique across all users: the SSH gateway identifies the
//! user by the key alone. Names are unique per user.

use crate::{DbError, DbResult, SqliteStore};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

/// A registered SSH public key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SshKeyRow {
    /// UUID.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Label (unique per user).
    pub name: String,
    /// The public key, one OpenSSH `authorized_keys` line.
    pub public_key: String,
    /// `SHA256:…` fingerprint (unique).
    pub fingerprint: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Storage of SSH keys.
#[async_trait::async_trait]
pub trait SshKeyStore: Send + Sync {
    /// Stores a key (same fingerprint or same name for the user → `Conflict`).
    async fn create_ssh_key(&self, k: &SshKeyRow) -> DbResult<()>;
    /// A user's keys, oldest first.
    async fn ssh_keys(&self, user_id: &str) -> DbResult<Vec<SshKeyRow>>;
    /// A key by fingerprint (any user).
    async fn ssh_key_by_fingerprint(&self, fingerprint: &str) -> DbResult<SshKeyRow>;
    /// Deletes a user's key by id.
    async fn delete_ssh_key(&self, user_id: &str, id: &str) -> DbResult<()>;
}

fn row(r: &SqliteRow) -> DbResult<SshKeyRow> {
    Ok(SshKeyRow {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        name: r.try_get("name")?,
        public_key: r.try_get("public_key")?,
        fingerprint: r.try_get("fingerprint")?,
        created_at: r.try_get("created_at")?,
    })
}

#[async_trait::async_trait]
impl SshKeyStore for SqliteStore {
    async fn create_ssh_key(&self, k: &SshKeyRow) -> DbResult<()> {
        sqlx::query("INSERT INTO ssh_keys (id, user_id, name, public_key, fingerprint, created_at) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(&k.id)
            .bind(&k.user_id)
            .bind(&k.name)
            .bind(&k.public_key)
            .bind(&k.fingerprint)
            .bind(k.created_at)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn ssh_keys(&self, user_id: &str) -> DbResult<Vec<SshKeyRow>> {
        sqlx::query("SELECT * FROM ssh_keys WHERE user_id = ? ORDER BY created_at, name")
            .bind(user_id)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(row)
            .collect()
    }

    async fn ssh_key_by_fingerprint(&self, fingerprint: &str) -> DbResult<SshKeyRow> {
        row(&sqlx::query("SELECT * FROM ssh_keys WHERE fingerprint = ?").bind(fingerprint).fetch_one(self.pool()).await?)
    }

    async fn delete_ssh_key(&self, user_id: &str, id: &str) -> DbResult<()> {
        let r = sqlx::query("DELETE FROM ssh_keys WHERE id = ? AND user_id = ?").bind(id).bind(user_id).execute(self.pool()).await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Store, User};

    #[tokio::test]
    async fn keys_round_trip_and_conflict() {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&d.path().join("t.db")).await.unwrap();
        for (id, email) in [("u-1", "a@x.test"), ("u-2", "b@x.test")] {
            s.create_user(&User { id: id.into(), email: email.into(), is_admin: false, ai_mode: "managed".into(), created_at: Utc::now() })
                .await
                .unwrap();
        }
        let k = SshKeyRow {
            id: "k1".into(),
            user_id: "u-1".into(),
            name: "laptop".into(),
            public_key: "ssh-ed25519 AAAA x".into(),
            fingerprint: "SHA256:abc".into(),
            created_at: Utc::now(),
        };
        s.create_ssh_key(&k).await.unwrap();
        let dup_fp = SshKeyRow { id: "k2".into(), user_id: "u-2".into(), name: "other".into(), ..k.clone() };
        assert!(matches!(s.create_ssh_key(&dup_fp).await, Err(DbError::Conflict(_))), "a key belongs to one user");
        let dup_name = SshKeyRow { id: "k3".into(), fingerprint: "SHA256:def".into(), ..k.clone() };
        assert!(matches!(s.create_ssh_key(&dup_name).await, Err(DbError::Conflict(_))), "names are unique per user");
        assert_eq!(s.ssh_keys("u-1").await.unwrap(), vec![k.clone()]);
        assert_eq!(s.ssh_key_by_fingerprint("SHA256:abc").await.unwrap().user_id, "u-1");
        assert!(matches!(s.delete_ssh_key("u-2", "k1").await, Err(DbError::NotFound)));
        s.delete_ssh_key("u-1", "k1").await.unwrap();
        assert!(s.ssh_keys("u-1").await.unwrap().is_empty());
    }
}
