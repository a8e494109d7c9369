//! Storage of setup scripts and service specs.

use crate::{DbError, DbResult, SqliteStore};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use std::collections::BTreeMap;

/// A setup script.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetupScriptRow {
    /// UUID.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Name.
    pub name: String,
    /// Shell script.
    pub content: String,
    /// `first_boot` or `every_start`.
    pub run_on: String,
    /// Order among a workspace's scripts.
    pub script_order: i64,
    /// `user` or `template`.
    pub source: String,
    /// Creation.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A service spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpecRow {
    /// UUID.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Name (unit `rigbox-svc-<name>.service`).
    pub name: String,
    /// Command line.
    pub exec_start: String,
    /// Environment.
    pub env_vars: BTreeMap<String, String>,
    /// `always`, `on-failure`, `no`.
    pub restart_policy: String,
    /// Start after the setup scripts.
    pub auto_enable: bool,
    /// `user` or `template`.
    pub source: String,
    /// Creation.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

fn script(r: &SqliteRow) -> DbResult<SetupScriptRow> {
    Ok(SetupScriptRow {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        name: r.try_get("name")?,
        content: r.try_get("content")?,
        run_on: r.try_get("run_on")?,
        script_order: r.try_get("script_order")?,
        source: r.try_get("source")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn spec(r: &SqliteRow) -> DbResult<ServiceSpecRow> {
    Ok(ServiceSpecRow {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        name: r.try_get("name")?,
        exec_start: r.try_get("exec_start")?,
        env_vars: serde_json::from_str(&r.try_get::<String, _>("env_vars")?).map_err(|e| DbError::Corrupt(e.to_string()))?,
        restart_policy: r.try_get("restart_policy")?,
        auto_enable: r.try_get::<i64, _>("auto_enable")? != 0,
        source: r.try_get("source")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// Storage of setup scripts and service specs.
#[async_trait::async_trait]
pub trait AutomationStore: Send + Sync {
    /// Inserts or replaces (by id) a script.
    async fn put_setup_script(&self, s: &SetupScriptRow) -> DbResult<()>;
    /// A user's script.
    async fn setup_script(&self, user_id: &str, id: &str) -> DbResult<SetupScriptRow>;
    /// A user's scripts, in order.
    async fn setup_scripts(&self, user_id: &str) -> DbResult<Vec<SetupScriptRow>>;
    /// Deletes a user's script.
    async fn delete_setup_script(&self, user_id: &str, id: &str) -> DbResult<()>;
    /// Inserts or replaces (by id) a service spec (names unique per user).
    async fn put_service_spec(&self, s: &ServiceSpecRow) -> DbResult<()>;
    /// A user's service spec.
    async fn service_spec(&self, user_id: &str, id: &str) -> DbResult<ServiceSpecRow>;
    /// A user's service specs.
    async fn service_specs(&self, user_id: &str) -> DbResult<Vec<ServiceSpecRow>>;
    /// Deletes a user's service spec.
    async fn delete_service_spec(&self, user_id: &str, id: &str) -> DbResult<()>;
}

#[async_trait::async_trait]
impl AutomationStore for SqliteStore {
    async fn put_setup_script(&self, s: &SetupScriptRow) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO setup_scripts (id, user_id, name, content, run_on, script_order, source, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT(id) DO UPDATE SET name = excluded.name, content = excluded.content, run_on = excluded.run_on,
             script_order = excluded.script_order, updated_at = excluded.updated_at",
        )
        .bind(&s.id)
        .bind(&s.user_id)
        .bind(&s.name)
        .bind(&s.content)
        .bind(&s.run_on)
        .bind(s.script_order)
        .bind(&s.source)
        .bind(s.created_at)
        .bind(s.updated_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn setup_script(&self, user_id: &str, id: &str) -> DbResult<SetupScriptRow> {
        script(&sqlx::query("SELECT * FROM setup_scripts WHERE user_id = ? AND id = ?").bind(user_id).bind(id).fetch_one(self.pool()).await?)
    }

    async fn setup_scripts(&self, user_id: &str) -> DbResult<Vec<SetupScriptRow>> {
        sqlx::query("SELECT * FROM setup_scripts WHERE user_id = ? ORDER BY script_order, created_at")
            .bind(user_id)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(script)
            .collect()
    }

    async fn delete_setup_script(&self, user_id: &str, id: &str) -> DbResult<()> {
        let r = sqlx::query("DELETE FROM setup_scripts WHERE user_id = ? AND id = ?").bind(user_id).bind(id).execute(self.pool()).await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound);
        }
        Ok(())
    }

    async fn put_service_spec(&self, s: &ServiceSpecRow) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO service_specs (id, user_id, name, exec_start, env_vars, restart_policy, auto_enable, source, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT(id) DO UPDATE SET name = excluded.name, exec_start = excluded.exec_start, env_vars = excluded.env_vars,
             restart_policy = excluded.restart_policy, auto_enable = excluded.auto_enable, updated_at = excluded.updated_at",
        )
        .bind(&s.id)
        .bind(&s.user_id)
        .bind(&s.name)
        .bind(&s.exec_start)
        .bind(serde_json::to_string(&s.env_vars).unwrap_or_else(|_| "{}".into()))
        .bind(&s.restart_policy)
        .bind(i64::from(s.auto_enable))
        .bind(&s.source)
        .bind(s.created_at)
        .bind(s.updated_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn service_spec(&self, user_id: &str, id: &str) -> DbResult<ServiceSpecRow> {
        spec(&sqlx::query("SELECT * FROM service_specs WHERE user_id = ? AND id = ?").bind(user_id).bind(id).fetch_one(self.pool()).await?)
    }

    async fn service_specs(&self, user_id: &str) -> DbResult<Vec<ServiceSpecRow>> {
        sqlx::query("SELECT * FROM service_specs WHERE user_id = ? ORDER BY created_at")
            .bind(user_id)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(spec)
            .collect()
    }

    async fn delete_service_spec(&self, user_id: &str, id: &str) -> DbResult<()> {
        let r = sqlx::query("DELETE FROM service_specs WHERE user_id = ? AND id = ?").bind(user_id).bind(id).execute(self.pool()).await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound);
        }
        Ok(())
    }
}
