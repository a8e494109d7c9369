//! Storage of setup scripts, service specs, tools.

use crate::SqliteStore;

/// Storage of setup scripts, service specs, tools.
#[async_trait::async_trait]
pub trait AutomationStore: Send + Sync {}

#[async_trait::async_trait]
impl AutomationStore for SqliteStore {}
