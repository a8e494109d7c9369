//! Storage of disk and live snapshots.

use crate::SqliteStore;

/// Storage of disk and live snapshots.
#[async_trait::async_trait]
pub trait SnapshotStore: Send + Sync {}

#[async_trait::async_trait]
impl SnapshotStore for SqliteStore {}
