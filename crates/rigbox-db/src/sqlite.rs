//! SQLite implementation of [`Store`].

use crate::{ApiKey, DbError, DbResult, NodeRow, Store, Usage, User, WorkspaceRow};
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow};
use sqlx::{Row, SqlitePool};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// The embedded database.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn open(path: &Path) -> DbResult<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| DbError::Other(e.to_string()))?;
        }
        Self::connect(&format!("sqlite://{}", path.display())).await
    }

    /// Opens a database URL (`sqlite://…`) and applies migrations.
    pub async fn connect(url: &str) -> DbResult<Self> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL with NORMAL: a commit does not wait for fsync (the WAL is
            // synced at checkpoints); a crash of the process loses nothing,
            // a power cut can lose the last commits, never consistency.
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(opts).await?;
        sqlx::migrate!("./migrations").run(&pool).await.map_err(|e| DbError::Other(e.to_string()))?;
        Ok(SqliteStore { pool })
    }

    /// The pool (for other crates' migrations-free helpers and tests).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn json<T: serde::de::DeserializeOwned>(s: &str) -> DbResult<T> {
    serde_json::from_str(s).map_err(|e| DbError::Corrupt(e.to_string()))
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn user(r: &SqliteRow) -> DbResult<User> {
    Ok(User {
        id: r.try_get("id")?,
        email: r.try_get("email")?,
        is_admin: r.try_get::<i64, _>("is_admin")? != 0,
        ai_mode: r.try_get("ai_mode")?,
        created_at: r.try_get("created_at")?,
    })
}

fn key(r: &SqliteRow) -> DbResult<ApiKey> {
    Ok(ApiKey {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        name: r.try_get("name")?,
        key_hash: r.try_get("key_hash")?,
        key_preview: r.try_get("key_preview")?,
        is_workspace_key: r.try_get::<i64, _>("is_workspace_key")? != 0,
        created_at: r.try_get("created_at")?,
        last_used_at: r.try_get("last_used_at")?,
    })
}

fn node(r: &SqliteRow) -> DbResult<NodeRow> {
    Ok(NodeRow {
        id: r.try_get("id")?,
        url: r.try_get("url")?,
        token: r.try_get("token")?,
        backend: r.try_get("backend")?,
        info: json(&r.try_get::<String, _>("info")?)?,
        last_seen_at: r.try_get("last_seen_at")?,
        created_at: r.try_get("created_at")?,
    })
}

fn ws(r: &SqliteRow) -> DbResult<WorkspaceRow> {
    Ok(WorkspaceRow {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        node_id: r.try_get("node_id")?,
        name: r.try_get("name")?,
        status: r.try_get("status")?,
        image: r.try_get("image")?,
        template_id: r.try_get("template_id")?,
        ram_mb: r.try_get("ram_mb")?,
        vcpu_count: r.try_get("vcpu_count")?,
        disk_size_mb: r.try_get("disk_size_mb")?,
        env_vars: json(&r.try_get::<String, _>("env_vars")?)?,
        setup_script_ids: json(&r.try_get::<String, _>("setup_script_ids")?)?,
        service_spec_ids: json(&r.try_get::<String, _>("service_spec_ids")?)?,
        ai_mode: r.try_get("ai_mode")?,
        failure_code: r.try_get("failure_code")?,
        failure_reason: r.try_get("failure_reason")?,
        failure_at: r.try_get("failure_at")?,
        creation_attempts: r.try_get("creation_attempts")?,
        creation_started_at: r.try_get("creation_started_at")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

const WS_COLUMNS: &str = "id, user_id, node_id, name, status, image, template_id, ram_mb, vcpu_count, disk_size_mb, env_vars, setup_script_ids, service_spec_ids, ai_mode, failure_code, failure_reason, failure_at, creation_attempts, creation_started_at, created_at, updated_at";

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, u: &User) -> DbResult<()> {
        sqlx::query("INSERT INTO users (id, email, is_admin, ai_mode, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(&u.id)
            .bind(&u.email)
            .bind(i64::from(u.is_admin))
            .bind(&u.ai_mode)
            .bind(u.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn user(&self, id: &str) -> DbResult<User> {
        user(&sqlx::query("SELECT * FROM users WHERE id = ?").bind(id).fetch_one(&self.pool).await?)
    }

    async fn user_by_email(&self, email: &str) -> DbResult<User> {
        user(&sqlx::query("SELECT * FROM users WHERE email = ? COLLATE NOCASE").bind(email).fetch_one(&self.pool).await?)
    }

    async fn users(&self) -> DbResult<Vec<User>> {
        sqlx::query("SELECT * FROM users ORDER BY created_at").fetch_all(&self.pool).await?.iter().map(user).collect()
    }

    async fn user_count(&self) -> DbResult<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM users").fetch_one(&self.pool).await?.try_get("n")?)
    }

    async fn set_user_ai_mode(&self, id: &str, mode: &str) -> DbResult<()> {
        sqlx::query("UPDATE users SET ai_mode = ? WHERE id = ?").bind(mode).bind(id).execute(&self.pool).await?;
        Ok(())
    }

    async fn create_api_key(&self, k: &ApiKey) -> DbResult<()> {
        sqlx::query("INSERT INTO api_keys (id, user_id, name, key_hash, key_preview, is_workspace_key, created_at, last_used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(&k.id)
            .bind(&k.user_id)
            .bind(&k.name)
            .bind(&k.key_hash)
            .bind(&k.key_preview)
            .bind(i64::from(k.is_workspace_key))
            .bind(k.created_at)
            .bind(k.last_used_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn api_key_by_hash(&self, hash: &str) -> DbResult<(ApiKey, User)> {
        let r = sqlx::query("SELECT * FROM api_keys WHERE key_hash = ?").bind(hash).fetch_one(&self.pool).await?;
        let k = key(&r)?;
        let u = self.user(&k.user_id).await?;
        Ok((k, u))
    }

    async fn api_keys(&self, user_id: &str) -> DbResult<Vec<ApiKey>> {
        sqlx::query("SELECT * FROM api_keys WHERE user_id = ? ORDER BY created_at")
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(key)
            .collect()
    }

    async fn delete_api_key(&self, user_id: &str, id: &str) -> DbResult<()> {
        let r = sqlx::query("DELETE FROM api_keys WHERE id = ? AND user_id = ?").bind(id).bind(user_id).execute(&self.pool).await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound);
        }
        Ok(())
    }

    async fn touch_api_key(&self, id: &str, at: DateTime<Utc>) -> DbResult<()> {
        sqlx::query("UPDATE api_keys SET last_used_at = ? WHERE id = ?").bind(at).bind(id).execute(&self.pool).await?;
        Ok(())
    }

    async fn upsert_node(&self, n: &NodeRow) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO nodes (id, url, token, backend, info, last_seen_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT(id) DO UPDATE SET url = excluded.url, token = excluded.token, backend = excluded.backend,
             info = excluded.info, last_seen_at = excluded.last_seen_at",
        )
        .bind(&n.id)
        .bind(&n.url)
        .bind(&n.token)
        .bind(&n.backend)
        .bind(to_json(&n.info))
        .bind(n.last_seen_at)
        .bind(n.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn nodes(&self) -> DbResult<Vec<NodeRow>> {
        sqlx::query("SELECT * FROM nodes ORDER BY created_at").fetch_all(&self.pool).await?.iter().map(node).collect()
    }

    async fn create_workspace(&self, w: &WorkspaceRow) -> DbResult<()> {
        sqlx::query(&format!("INSERT INTO workspaces ({WS_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"))
            .bind(&w.id)
            .bind(&w.user_id)
            .bind(&w.node_id)
            .bind(&w.name)
            .bind(&w.status)
            .bind(&w.image)
            .bind(&w.template_id)
            .bind(w.ram_mb)
            .bind(w.vcpu_count)
            .bind(w.disk_size_mb)
            .bind(to_json(&w.env_vars))
            .bind(to_json(&w.setup_script_ids))
            .bind(to_json(&w.service_spec_ids))
            .bind(&w.ai_mode)
            .bind(&w.failure_code)
            .bind(&w.failure_reason)
            .bind(w.failure_at)
            .bind(w.creation_attempts)
            .bind(w.creation_started_at)
            .bind(w.created_at)
            .bind(w.updated_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn workspace(&self, id: &str) -> DbResult<WorkspaceRow> {
        ws(&sqlx::query(&format!("SELECT {WS_COLUMNS} FROM workspaces WHERE id = ?")).bind(id).fetch_one(&self.pool).await?)
    }

    async fn workspace_of_user(&self, user_id: &str, id_or_name: &str) -> DbResult<WorkspaceRow> {
        ws(&sqlx::query(&format!("SELECT {WS_COLUMNS} FROM workspaces WHERE user_id = ? AND (id = ? OR name = ?) ORDER BY id = ? DESC LIMIT 1"))
            .bind(user_id)
            .bind(id_or_name)
            .bind(id_or_name)
            .bind(id_or_name)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn workspaces_of_user(&self, user_id: &str) -> DbResult<Vec<WorkspaceRow>> {
        sqlx::query(&format!("SELECT {WS_COLUMNS} FROM workspaces WHERE user_id = ? ORDER BY created_at"))
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(ws)
            .collect()
    }

    async fn workspaces_in(&self, statuses: &[&str]) -> DbResult<Vec<WorkspaceRow>> {
        if statuses.is_empty() {
            return Ok(Vec::new());
        }
        let marks = vec!["?"; statuses.len()].join(", ");
        let sql = format!("SELECT {WS_COLUMNS} FROM workspaces WHERE status IN ({marks}) ORDER BY created_at");
        let mut q = sqlx::query(&sql);
        for s in statuses {
            q = q.bind(*s);
        }
        q.fetch_all(&self.pool).await?.iter().map(ws).collect()
    }

    async fn all_workspaces(&self) -> DbResult<Vec<WorkspaceRow>> {
        sqlx::query(&format!("SELECT {WS_COLUMNS} FROM workspaces ORDER BY created_at"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(ws)
            .collect()
    }

    async fn update_workspace(&self, w: &WorkspaceRow) -> DbResult<()> {
        let r = sqlx::query(
            "UPDATE workspaces SET node_id = ?, name = ?, status = ?, image = ?, template_id = ?, ram_mb = ?, vcpu_count = ?,
             disk_size_mb = ?, env_vars = ?, setup_script_ids = ?, service_spec_ids = ?, ai_mode = ?, failure_code = ?,
             failure_reason = ?, failure_at = ?, creation_attempts = ?, creation_started_at = ?, updated_at = ? WHERE id = ?",
        )
        .bind(&w.node_id)
        .bind(&w.name)
        .bind(&w.status)
        .bind(&w.image)
        .bind(&w.template_id)
        .bind(w.ram_mb)
        .bind(w.vcpu_count)
        .bind(w.disk_size_mb)
        .bind(to_json(&w.env_vars))
        .bind(to_json(&w.setup_script_ids))
        .bind(to_json(&w.service_spec_ids))
        .bind(&w.ai_mode)
        .bind(&w.failure_code)
        .bind(&w.failure_reason)
        .bind(w.failure_at)
        .bind(w.creation_attempts)
        .bind(w.creation_started_at)
        .bind(w.updated_at)
        .bind(&w.id)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound);
        }
        Ok(())
    }

    async fn set_workspace_status(&self, id: &str, expect: &str, status: &str) -> DbResult<bool> {
        let r = sqlx::query("UPDATE workspaces SET status = ?, updated_at = ? WHERE id = ? AND status = ?")
            .bind(status)
            .bind(Utc::now())
            .bind(id)
            .bind(expect)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn delete_workspace(&self, id: &str) -> DbResult<()> {
        sqlx::query("DELETE FROM workspaces WHERE id = ?").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    async fn usage(&self, user_id: &str) -> DbResult<Usage> {
        let r = sqlx::query(
            "SELECT COUNT(*) AS n, COALESCE(SUM(ram_mb), 0) AS ram, COALESCE(SUM(disk_size_mb), 0) AS disk,
             COALESCE(SUM(CASE WHEN status IN ('starting', 'running', 'stopping', 'provisioning') THEN vcpu_count ELSE 0 END), 0) AS vcpus
             FROM workspaces WHERE user_id = ?",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(Usage {
            workspace_count: r.try_get("n")?,
            total_ram_mb: r.try_get("ram")?,
            total_disk_mb: r.try_get("disk")?,
            running_vcpus: r.try_get("vcpus")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&d.path().join("t.db")).await.unwrap();
        (d, s)
    }

    fn wsrow(id: &str, user: &str, name: &str) -> WorkspaceRow {
        WorkspaceRow {
            id: id.into(),
            user_id: user.into(),
            node_id: "n1".into(),
            name: name.into(),
            status: "provisioned".into(),
            image: "base".into(),
            template_id: Some("base".into()),
            ram_mb: 512,
            vcpu_count: 1,
            disk_size_mb: 3072,
            env_vars: BTreeMap::from([("A".into(), "1".into())]),
            setup_script_ids: vec![],
            service_spec_ids: vec![],
            ai_mode: None,
            failure_code: None,
            failure_reason: None,
            failure_at: None,
            creation_attempts: 0,
            creation_started_at: None,
            created_at: now(),
            updated_at: now(),
        }
    }

    #[tokio::test]
    async fn users_keys_and_workspaces_round_trip() {
        let (_d, s) = store().await;
        let u = User { id: "u-1".into(), email: "a@x.test".into(), is_admin: true, ai_mode: "managed".into(), created_at: now() };
        s.create_user(&u).await.unwrap();
        assert!(matches!(s.create_user(&u).await, Err(DbError::Conflict(_))));
        assert_eq!(s.user_by_email("A@X.TEST").await.unwrap().id, "u-1");
        let k = ApiKey {
            id: "k1".into(),
            user_id: "u-1".into(),
            name: Some("ci".into()),
            key_hash: "h".into(),
            key_preview: "rb_...1".into(),
            is_workspace_key: false,
            created_at: now(),
            last_used_at: None,
        };
        s.create_api_key(&k).await.unwrap();
        let (k2, u2) = s.api_key_by_hash("h").await.unwrap();
        assert_eq!((k2.id.as_str(), u2.email.as_str()), ("k1", "a@x.test"));
        s.touch_api_key("k1", now()).await.unwrap();
        assert!(s.api_keys("u-1").await.unwrap()[0].last_used_at.is_some());
        assert!(matches!(s.delete_api_key("u-other", "k1").await, Err(DbError::NotFound)));
        s.delete_api_key("u-1", "k1").await.unwrap();

        s.create_workspace(&wsrow("ws-1", "u-1", "box")).await.unwrap();
        assert!(matches!(s.create_workspace(&wsrow("ws-2", "u-1", "box")).await, Err(DbError::Conflict(_))), "names are unique per user");
        let mut w = s.workspace_of_user("u-1", "box").await.unwrap();
        assert_eq!(w.env_vars.get("A").map(String::as_str), Some("1"));
        assert!(matches!(s.workspace_of_user("u-2", "box").await, Err(DbError::NotFound)));
        assert!(s.set_workspace_status("ws-1", "provisioned", "starting").await.unwrap());
        assert!(!s.set_workspace_status("ws-1", "provisioned", "starting").await.unwrap(), "compare and swap");
        w.status = "running".into();
        s.update_workspace(&w).await.unwrap();
        assert_eq!(s.workspaces_in(&["running"]).await.unwrap().len(), 1);
        let usage = s.usage("u-1").await.unwrap();
        assert_eq!((usage.workspace_count, usage.total_ram_mb, usage.running_vcpus), (1, 512, 1));
        s.delete_workspace("ws-1").await.unwrap();
        assert!(matches!(s.workspace("ws-1").await, Err(DbError::NotFound)));
    }
}
