//! Storage of apps and routes.

use crate::SqliteStore;

/// Storage of apps and routes.
#[async_trait::async_trait]
pub trait AppStore: Send + Sync {}

#[async_trait::async_trait]
impl AppStore for SqliteStore {}
