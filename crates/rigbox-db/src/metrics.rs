//! Storage of metric samples and logs.

use crate::SqliteStore;

/// Storage of metric samples and logs.
#[async_trait::async_trait]
pub trait MetricsStore: Send + Sync {}

#[async_trait::async_trait]
impl MetricsStore for SqliteStore {}
