//! Control-plane storage.
//!
//! [`Store`] is what the API uses; [`SqliteStore`] implements it on an
//! embedded SQLite database (the single-machine default) with append-only
//! migrations in `migrations/`. A Postgres implementation can follow behind
//! the same traits.
//!
//! Migrations are numbered by concern: `0001` core, `0002` SSH keys, `0003`
//! snapshots, `0004` apps, `0005` metrics and logs, `0006` automation,
//! `0007` AI; later changes take the next free number.
#![warn(missing_docs)]

pub mod ai;
pub mod apps;
pub mod automation;
pub mod metrics;
pub mod snapshots;
mod sqlite;
pub mod ssh;

/// Every storage trait; `use rigbox_db::prelude::*` to call them on a [`Db`].
pub mod prelude {
    pub use crate::ai::AiStore;
    pub use crate::apps::AppStore;
    pub use crate::automation::AutomationStore;
    pub use crate::metrics::MetricsStore;
    pub use crate::snapshots::SnapshotStore;
    pub use crate::ssh::SshKeyStore;
    pub use crate::{Db, Store};
}

/// All of the control plane's storage, one trait per concern.
pub trait Db: Store + ssh::SshKeyStore + snapshots::SnapshotStore + apps::AppStore + metrics::MetricsStore + automation::AutomationStore + ai::AiStore {}

impl<T> Db for T where T: Store + ssh::SshKeyStore + snapshots::SnapshotStore + apps::AppStore + metrics::MetricsStore + automation::AutomationStore + ai::AiStore {}

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
pub use sqlite::SqliteStore;
use std::collections::BTreeMap;

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No such row.
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was violated.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A stored value did not decode.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Anything else.
    #[error("database error: {0}")]
    Other(String),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::RowNotFound => DbError::NotFound,
            sqlx::Error::Database(d) if d.is_unique_violation() => DbError::Conflict(d.message().to_string()),
            other => DbError::Other(other.to_string()),
        }
    }
}

/// Result alias.
pub type DbResult<T> = Result<T, DbError>;

/// A platform user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// `u-…`.
    pub id: String,
    /// Email (unique).
    pub email: String,
    /// Administrator.
    pub is_admin: bool,
    /// Account AI mode (`managed` or `byok`).
    pub ai_mode: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// An API key (the secret itself is never stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    /// UUID.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Optional label.
    pub name: Option<String>,
    /// SHA-256 of the key (hex).
    pub key_hash: String,
    /// `rb_...abcd1234`.
    pub key_preview: String,
    /// Scoped to a workspace.
    pub is_workspace_key: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last use.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A registered node agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRow {
    /// Node id.
    pub id: String,
    /// Its API URL.
    pub url: String,
    /// Its token.
    pub token: String,
    /// Backend it reported.
    pub backend: String,
    /// Last `NodeInfo` it reported (JSON).
    pub info: serde_json::Value,
    /// Last successful contact.
    pub last_seen_at: Option<DateTime<Utc>>,
    /// Registration time.
    pub created_at: DateTime<Utc>,
}

/// A workspace row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceRow {
    /// `ws-…`.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Where it runs.
    pub node_id: String,
    /// Name (unique per user).
    pub name: String,
    /// Lifecycle state (wire name).
    pub status: String,
    /// Image (the template's image name).
    pub image: String,
    /// Template.
    pub template_id: Option<String>,
    /// Memory.
    pub ram_mb: i64,
    /// vCPUs.
    pub vcpu_count: i64,
    /// Disk.
    pub disk_size_mb: i64,
    /// Environment.
    pub env_vars: BTreeMap<String, String>,
    /// Setup scripts attached.
    pub setup_script_ids: Vec<String>,
    /// Service specs attached.
    pub service_spec_ids: Vec<String>,
    /// AI mode override.
    pub ai_mode: Option<String>,
    /// Failure code.
    pub failure_code: Option<String>,
    /// Failure reason.
    pub failure_reason: Option<String>,
    /// When it failed.
    pub failure_at: Option<DateTime<Utc>>,
    /// Boot attempts.
    pub creation_attempts: i64,
    /// Start of the current attempt.
    pub creation_started_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// Usage totals of one user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Workspaces.
    pub workspace_count: i64,
    /// RAM over all workspaces.
    pub total_ram_mb: i64,
    /// Disk over all workspaces.
    pub total_disk_mb: i64,
    /// vCPUs of running workspaces.
    pub running_vcpus: i64,
}

/// Control-plane storage.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    // Users and keys.
    /// Creates a user.
    async fn create_user(&self, u: &User) -> DbResult<()>;
    /// A user by id.
    async fn user(&self, id: &str) -> DbResult<User>;
    /// A user by email.
    async fn user_by_email(&self, email: &str) -> DbResult<User>;
    /// All users.
    async fn users(&self) -> DbResult<Vec<User>>;
    /// Number of users.
    async fn user_count(&self) -> DbResult<i64>;
    /// Sets the account AI mode.
    async fn set_user_ai_mode(&self, id: &str, mode: &str) -> DbResult<()>;
    /// Stores a key.
    async fn create_api_key(&self, k: &ApiKey) -> DbResult<()>;
    /// A key and its user by hash.
    async fn api_key_by_hash(&self, hash: &str) -> DbResult<(ApiKey, User)>;
    /// A user's keys.
    async fn api_keys(&self, user_id: &str) -> DbResult<Vec<ApiKey>>;
    /// Deletes a user's key.
    async fn delete_api_key(&self, user_id: &str, id: &str) -> DbResult<()>;
    /// Records use of a key.
    async fn touch_api_key(&self, id: &str, at: DateTime<Utc>) -> DbResult<()>;

    // Nodes.
    /// Registers or updates a node.
    async fn upsert_node(&self, n: &NodeRow) -> DbResult<()>;
    /// All nodes.
    async fn nodes(&self) -> DbResult<Vec<NodeRow>>;

    // Workspaces.
    /// Inserts a workspace (name unique per user → Conflict).
    async fn create_workspace(&self, w: &WorkspaceRow) -> DbResult<()>;
    /// A workspace by id.
    async fn workspace(&self, id: &str) -> DbResult<WorkspaceRow>;
    /// A user's workspace by id or name.
    async fn workspace_of_user(&self, user_id: &str, id_or_name: &str) -> DbResult<WorkspaceRow>;
    /// A user's workspaces.
    async fn workspaces_of_user(&self, user_id: &str) -> DbResult<Vec<WorkspaceRow>>;
    /// Workspaces in any of `statuses`.
    async fn workspaces_in(&self, statuses: &[&str]) -> DbResult<Vec<WorkspaceRow>>;
    /// All workspaces.
    async fn all_workspaces(&self) -> DbResult<Vec<WorkspaceRow>>;
    /// Replaces a workspace row (by id).
    async fn update_workspace(&self, w: &WorkspaceRow) -> DbResult<()>;
    /// Sets the status only if it is still `expect` (compare and swap).
    async fn set_workspace_status(&self, id: &str, expect: &str, status: &str) -> DbResult<bool>;
    /// Deletes a workspace row.
    async fn delete_workspace(&self, id: &str) -> DbResult<()>;
    /// A user's usage.
    async fn usage(&self, user_id: &str) -> DbResult<Usage>;
}
