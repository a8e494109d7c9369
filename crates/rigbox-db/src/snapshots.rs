//! Storage of disk and live snapshots.

use crate::{DbError, DbResult, SqliteStore};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

/// A snapshot row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRow {
    /// `snap-…`.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Workspace it was taken from (and restores into).
    pub workspace_id: String,
    /// Node holding the artifact.
    pub node_id: String,
    /// Name.
    pub name: String,
    /// `disk` or `live`.
    pub kind: String,
    /// Bytes the artifact occupies on the node.
    pub size_bytes: i64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

fn row(r: &SqliteRow) -> DbResult<SnapshotRow> {
    Ok(SnapshotRow {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        workspace_id: r.try_get("workspace_id")?,
        node_id: r.try_get("node_id")?,
        name: r.try_get("name")?,
        kind: r.try_get("kind")?,
        size_bytes: r.try_get("size_bytes")?,
        created_at: r.try_get("created_at")?,
    })
}

/// Storage of disk and live snapshots.
#[async_trait::async_trait]
pub trait SnapshotStore: Send + Sync {
    /// Inserts a snapshot.
    async fn create_snapshot(&self, s: &SnapshotRow) -> DbResult<()>;
    /// A user's snapshot.
    async fn snapshot_of_user(&self, user_id: &str, id: &str) -> DbResult<SnapshotRow>;
    /// A user's snapshots (all, or of one workspace).
    async fn snapshots_of_user(&self, user_id: &str, workspace_id: Option<&str>) -> DbResult<Vec<SnapshotRow>>;
    /// Every snapshot taken from a workspace.
    async fn snapshots_of_workspace(&self, workspace_id: &str) -> DbResult<Vec<SnapshotRow>>;
    /// Number of snapshots a user has.
    async fn snapshot_count(&self, user_id: &str) -> DbResult<i64>;
    /// Deletes a snapshot row.
    async fn delete_snapshot(&self, id: &str) -> DbResult<()>;
}

#[async_trait::async_trait]
impl SnapshotStore for SqliteStore {
    async fn create_snapshot(&self, s: &SnapshotRow) -> DbResult<()> {
        sqlx::query("INSERT INTO snapshots (id, user_id, workspace_id, node_id, name, kind, size_bytes, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(&s.id)
            .bind(&s.user_id)
            .bind(&s.workspace_id)
            .bind(&s.node_id)
            .bind(&s.name)
            .bind(&s.kind)
            .bind(s.size_bytes)
            .bind(s.created_at)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn snapshot_of_user(&self, user_id: &str, id: &str) -> DbResult<SnapshotRow> {
        row(&sqlx::query("SELECT * FROM snapshots WHERE user_id = ? AND id = ?").bind(user_id).bind(id).fetch_one(self.pool()).await?)
    }

    async fn snapshots_of_user(&self, user_id: &str, workspace_id: Option<&str>) -> DbResult<Vec<SnapshotRow>> {
        let rows = match workspace_id {
            Some(w) => {
                sqlx::query("SELECT * FROM snapshots WHERE user_id = ? AND workspace_id = ? ORDER BY created_at")
                    .bind(user_id)
                    .bind(w)
                    .fetch_all(self.pool())
                    .await?
            }
            None => sqlx::query("SELECT * FROM snapshots WHERE user_id = ? ORDER BY created_at").bind(user_id).fetch_all(self.pool()).await?,
        };
        rows.iter().map(row).collect()
    }

    async fn snapshots_of_workspace(&self, workspace_id: &str) -> DbResult<Vec<SnapshotRow>> {
        sqlx::query("SELECT * FROM snapshots WHERE workspace_id = ? ORDER BY created_at")
            .bind(workspace_id)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(row)
            .collect()
    }

    async fn snapshot_count(&self, user_id: &str) -> DbResult<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM snapshots WHERE user_id = ?").bind(user_id).fetch_one(self.pool()).await?.try_get("n")?)
    }

    async fn delete_snapshot(&self, id: &str) -> DbResult<()> {
        let r = sqlx::query("DELETE FROM snapshots WHERE id = ?").bind(id).execute(self.pool()).await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound);
        }
        Ok(())
    }
}
