//! Shared state of the API: storage, the node directory, templates, limits.

use crate::error::ApiError;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rigbox_db::{Db, NodeRow};
use rigbox_image::RecipeSet;
use rigbox_node_api::{NodeClient, NodeInfo};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};

/// Per-user quotas (defaults for every user).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Limits {
    /// Workspaces per user.
    pub max_workspaces: u32,
    /// RAM per workspace (MiB).
    pub max_ram_per_workspace_mb: u32,
    /// Total RAM over a user's workspaces (MiB).
    pub max_ram_total_mb: u32,
    /// vCPUs per workspace.
    pub max_vcpu_per_workspace: u32,
    /// vCPUs over a user's running workspaces.
    pub max_running_vcpus: u32,
    /// Total disk over a user's workspaces (MiB).
    pub max_disk_total_mb: u32,
    /// Snapshots per user.
    pub max_snapshots: u32,
    /// Requests per minute per API key.
    pub requests_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_workspaces: 10,
            max_ram_per_workspace_mb: 8192,
            max_ram_total_mb: 16384,
            max_vcpu_per_workspace: 4,
            max_running_vcpus: 8,
            max_disk_total_mb: 102_400,
            max_snapshots: 20,
            requests_per_minute: 600,
        }
    }
}

/// API configuration.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Quotas.
    pub limits: Limits,
    /// Base domain of app URLs.
    pub base_domain: String,
    /// Host of the SSH gateway, as users reach it.
    pub ssh_host: String,
    /// Port of the SSH gateway.
    pub ssh_port: u16,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig { limits: Limits::default(), base_domain: "localhost".into(), ssh_host: "127.0.0.1".into(), ssh_port: 2222 }
    }
}

#[derive(Debug, Clone)]
struct NodeEntry {
    client: NodeClient,
    info: Option<NodeInfo>,
}

/// The nodes the control plane can place workspaces on.
#[derive(Debug, Default)]
pub struct NodeDirectory {
    nodes: RwLock<HashMap<String, NodeEntry>>,
}

impl NodeDirectory {
    /// Adds or replaces a node.
    pub fn insert(&self, row: &NodeRow) {
        let info = serde_json::from_value(row.info.clone()).ok();
        if let Ok(mut m) = self.nodes.write() {
            m.insert(row.id.clone(), NodeEntry { client: NodeClient::new(&row.url, &row.token), info });
        }
    }

    /// Records fresh node info.
    pub fn set_info(&self, id: &str, info: NodeInfo) {
        if let Ok(mut m) = self.nodes.write() {
            if let Some(e) = m.get_mut(id) {
                e.info = Some(info);
            }
        }
    }

    /// The client of node `id`.
    pub fn client(&self, id: &str) -> Result<NodeClient, ApiError> {
        self.nodes
            .read()
            .ok()
            .and_then(|m| m.get(id).map(|e| e.client.clone()))
            .ok_or_else(|| ApiError::unavailable("node_unavailable", format!("node {id} is not registered")))
    }

    /// All (id, client).
    pub fn all(&self) -> Vec<(String, NodeClient)> {
        self.nodes.read().map(|m| m.iter().map(|(k, v)| (k.clone(), v.client.clone())).collect()).unwrap_or_default()
    }

    /// Picks a node for a workspace of `ram_mb` from `template`: among nodes
    /// that have the template's image, the one with the most free memory.
    pub fn place(&self, template: &str, ram_mb: u32) -> Result<(String, NodeClient), ApiError> {
        let m = self.nodes.read().map_err(|_| ApiError::internal("node directory poisoned"))?;
        if m.is_empty() {
            return Err(ApiError::unavailable("no_nodes", "no node is registered").retry_after(30));
        }
        let mut best: Option<(i64, &String, &NodeEntry)> = None;
        let mut any_with_template = false;
        for (id, e) in m.iter() {
            let Some(info) = &e.info else { continue };
            if !info.templates.iter().any(|t| t == template) {
                continue;
            }
            any_with_template = true;
            let free = info.capacity.ram_mb as i64 - info.committed.ram_mb as i64;
            if best.as_ref().is_none_or(|(f, _, _)| free > *f) {
                best = Some((free, id, e));
            }
        }
        match best {
            Some((free, id, e)) => {
                if free < i64::from(ram_mb) {
                    tracing::warn!(node = %id, free, ram_mb, "placing on a node without enough free memory (overcommit)");
                }
                Ok((id.clone(), e.client.clone()))
            }
            None if !any_with_template => Err(ApiError::unavailable(
                "image_not_ready",
                format!("no node has the image of template {template:?} built yet"),
            )
            .retry_after(60)),
            None => Err(ApiError::unavailable("no_capacity", "no node can take this workspace").retry_after(30)),
        }
    }
}

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    ext: RwLock<HashMap<std::any::TypeId, Arc<dyn std::any::Any + Send + Sync>>>,
    store: Arc<dyn Db>,
    nodes: NodeDirectory,
    recipes: RecipeSet,
    config: ApiConfig,
    limiter: DefaultKeyedRateLimiter<String>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    /// New state.
    pub fn new(store: Arc<dyn Db>, recipes: RecipeSet, config: ApiConfig) -> Self {
        let rpm = NonZeroU32::new(config.limits.requests_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        AppState {
            inner: Arc::new(Inner {
                ext: RwLock::new(HashMap::new()),
                store,
                nodes: NodeDirectory::default(),
                recipes,
                limiter: RateLimiter::keyed(Quota::per_minute(rpm)),
                config,
            }),
        }
    }

    /// Registers a feature's shared state (one value per type).
    pub fn set_ext<T: std::any::Any + Send + Sync>(&self, value: Arc<T>) {
        if let Ok(mut m) = self.inner.ext.write() {
            m.insert(std::any::TypeId::of::<T>(), value);
        }
    }

    /// A feature's shared state.
    pub fn ext<T: std::any::Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.inner.ext.read().ok()?.get(&std::any::TypeId::of::<T>()).cloned()?.downcast::<T>().ok()
    }

    /// Storage.
    pub fn store(&self) -> &Arc<dyn Db> {
        &self.inner.store
    }

    /// Nodes.
    pub fn nodes(&self) -> &NodeDirectory {
        &self.inner.nodes
    }

    /// Templates.
    pub fn recipes(&self) -> &RecipeSet {
        &self.inner.recipes
    }

    /// Configuration.
    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }

    /// Spends one request of `key_id`'s budget.
    pub fn check_rate(&self, key_id: &str) -> Result<(), ApiError> {
        match self.inner.limiter.check_key(&key_id.to_string()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Err(ApiError::new(axum::http::StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests for this API key")
                    .retry_after(secs.max(1)))
            }
        }
    }
}
