//! Storage of AI configuration, wallet and usage.

use crate::SqliteStore;

/// Storage of AI configuration, wallet and usage.
#[async_trait::async_trait]
pub trait AiStore: Send + Sync {}

#[async_trait::async_trait]
impl AiStore for SqliteStore {}
