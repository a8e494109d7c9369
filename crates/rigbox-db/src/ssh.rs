//! Storage of SSH keys (issue: interactive access).

use crate::SqliteStore;

/// Storage of SSH keys (issue: interactive access).
#[async_trait::async_trait]
pub trait SshKeyStore: Send + Sync {}

#[async_trait::async_trait]
impl SshKeyStore for SqliteStore {}
