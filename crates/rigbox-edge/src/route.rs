//! What the edge needs to know, behind traits: routes (host → app,
//! workspace, node, visibility, owner and allowed users) and identities
//! (API key → user). The control plane implements them over its database;
//! [`CachedRoutes`] and [`CachedAuth`] put a short-lived cache in front so a
//! busy app does not cost a database query per request.

use rigbox_node_api::NodeClient;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Errors of the lookups (storage down, ...).
#[derive(Debug, Clone, thiserror::Error)]
#[error("lookup failed: {0}")]
pub struct LookupError(pub String);

/// Who may reach an app through the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Visibility {
    /// Anyone.
    Public,
    /// The owner only.
    Private,
    /// The owner and the users whose email is listed.
    Privileged,
}

impl Visibility {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Private => "private",
            Visibility::Privileged => "privileged",
        }
    }

    /// From the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "public" => Some(Visibility::Public),
            "private" => Some(Visibility::Private),
            "privileged" => Some(Visibility::Privileged),
            _ => None,
        }
    }
}

/// The app's own switch (the reference's `AppStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppRunState {
    /// Routed.
    Active,
    /// Stopped by its owner: the route answers an error page.
    Inactive,
    /// Being installed.
    Installing,
    /// Installation or start failed.
    Error,
}

impl AppRunState {
    /// From the wire name (unknown names count as `Error`).
    pub fn parse(s: &str) -> Self {
        match s {
            "active" => AppRunState::Active,
            "inactive" => AppRunState::Inactive,
            "installing" => AppRunState::Installing,
            _ => AppRunState::Error,
        }
    }
}

/// A platform user as the edge sees one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeUser {
    /// `u-…`.
    pub id: String,
    /// Email (compared case-insensitively).
    pub email: String,
}

/// A key resolved to its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIdentity {
    /// The user.
    pub user: EdgeUser,
    /// The key's id (sessions remember it, so revoking the key ends them).
    pub key_id: String,
}

/// Everything the edge needs to serve one app host.
#[derive(Debug, Clone)]
pub struct Route {
    /// `app-…`.
    pub app_id: String,
    /// App name.
    pub app_name: String,
    /// The host label.
    pub subdomain: String,
    /// App status.
    pub status: AppRunState,
    /// Workspace.
    pub workspace_id: String,
    /// Workspace state (wire name: `running`, `stopped`, ...).
    pub workspace_status: String,
    /// The workspace's node.
    pub node_id: String,
    /// Client of that node.
    pub node: NodeClient,
    /// Port inside the workspace.
    pub port: u16,
    /// Who may pass.
    pub visibility: Visibility,
    /// The owner.
    pub owner: EdgeUser,
    /// Extra users of a privileged app (emails).
    pub allowed_emails: Vec<String>,
}

/// Host label → route.
#[async_trait::async_trait]
pub trait RouteLookup: Send + Sync + 'static {
    /// The routed app behind `subdomain` (`None`: no such app, or an app
    /// without a route such as a `cli` app).
    async fn route(&self, subdomain: &str) -> Result<Option<Route>, LookupError>;
}

/// Credentials → user.
#[async_trait::async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// The owner of a plaintext API key.
    async fn by_key(&self, key: &str) -> Result<Option<KeyIdentity>, LookupError>;
    /// The user of a session: `None` when the user or the key is gone.
    async fn by_key_id(&self, user_id: &str, key_id: &str) -> Result<Option<EdgeUser>, LookupError>;
}

/// A counter bumped whenever routes change (app created, edited, deleted):
/// cached routes older than the last bump are not used again, so visibility
/// changes apply on the next request.
#[derive(Debug, Default)]
pub struct Epoch(AtomicU64);

impl Epoch {
    /// Invalidates every cached route.
    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

struct Entry<T> {
    value: T,
    at: Instant,
    epoch: u64,
}

type Table<T> = RwLock<HashMap<String, Entry<T>>>;

fn cached<T: Clone>(table: &Table<T>, key: &str, ttl: Duration, epoch: u64) -> Option<T> {
    let m = table.read().ok()?;
    let e = m.get(key)?;
    (e.at.elapsed() < ttl && e.epoch == epoch).then(|| e.value.clone())
}

fn remember<T>(table: &Table<T>, key: String, value: T, epoch: u64, max: usize) {
    if let Ok(mut m) = table.write() {
        if m.len() >= max {
            m.retain(|_, e| e.epoch == epoch && e.at.elapsed() < Duration::from_secs(60));
            if m.len() >= max {
                m.clear();
            }
        }
        m.insert(key, Entry { value, at: Instant::now(), epoch });
    }
}

/// A [`RouteLookup`] with a per-host cache (entries live `ttl` or until the
/// [`Epoch`] moves). Misses are cached too, so scanning random hosts does
/// not hammer the database.
pub struct CachedRoutes<L> {
    inner: L,
    ttl: Duration,
    epoch: Arc<Epoch>,
    table: Table<Option<Route>>,
}

impl<L: RouteLookup> CachedRoutes<L> {
    /// Wraps `inner`.
    pub fn new(inner: L, ttl: Duration, epoch: Arc<Epoch>) -> Self {
        CachedRoutes { inner, ttl, epoch, table: RwLock::new(HashMap::new()) }
    }
}

#[async_trait::async_trait]
impl<L: RouteLookup> RouteLookup for CachedRoutes<L> {
    async fn route(&self, subdomain: &str) -> Result<Option<Route>, LookupError> {
        let epoch = self.epoch.get();
        if let Some(r) = cached(&self.table, subdomain, self.ttl, epoch) {
            return Ok(r);
        }
        let r = self.inner.route(subdomain).await?;
        remember(&self.table, subdomain.to_string(), r.clone(), epoch, 10_000);
        Ok(r)
    }
}

/// An [`Authenticator`] with a cache keyed by a hash of the key (the
/// plaintext is never kept), `ttl` for hits and a few seconds for misses.
pub struct CachedAuth<A> {
    inner: A,
    ttl: Duration,
    epoch: Arc<Epoch>,
    keys: Table<Option<KeyIdentity>>,
    sessions: Table<Option<EdgeUser>>,
}

impl<A: Authenticator> CachedAuth<A> {
    /// Wraps `inner`.
    pub fn new(inner: A, ttl: Duration, epoch: Arc<Epoch>) -> Self {
        CachedAuth { inner, ttl, epoch, keys: RwLock::new(HashMap::new()), sessions: RwLock::new(HashMap::new()) }
    }
}

fn key_digest(key: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(key.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[async_trait::async_trait]
impl<A: Authenticator> Authenticator for CachedAuth<A> {
    async fn by_key(&self, key: &str) -> Result<Option<KeyIdentity>, LookupError> {
        let epoch = self.epoch.get();
        let k = key_digest(key);
        let miss_ttl = self.ttl.min(Duration::from_secs(5));
        if let Some(Some(id)) = cached(&self.keys, &k, self.ttl, epoch) {
            return Ok(Some(id));
        }
        if let Some(None) = cached(&self.keys, &k, miss_ttl, epoch) {
            return Ok(None);
        }
        let v = self.inner.by_key(key).await?;
        remember(&self.keys, k, v.clone(), epoch, 10_000);
        Ok(v)
    }

    async fn by_key_id(&self, user_id: &str, key_id: &str) -> Result<Option<EdgeUser>, LookupError> {
        let epoch = self.epoch.get();
        let k = format!("{user_id}/{key_id}");
        if let Some(v) = cached(&self.sessions, &k, self.ttl, epoch) {
            return Ok(v);
        }
        let v = self.inner.by_key_id(user_id, key_id).await?;
        remember(&self.sessions, k, v.clone(), epoch, 10_000);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Counting(Arc<AtomicUsize>);

    #[async_trait::async_trait]
    impl RouteLookup for Counting {
        async fn route(&self, _s: &str) -> Result<Option<Route>, LookupError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(None)
        }
    }

    #[tokio::test]
    async fn cache_serves_until_ttl_or_epoch() {
        let n = Arc::new(AtomicUsize::new(0));
        let epoch = Arc::new(Epoch::default());
        let c = CachedRoutes::new(Counting(n.clone()), Duration::from_secs(60), epoch.clone());
        c.route("a").await.unwrap();
        c.route("a").await.unwrap();
        assert_eq!(n.load(Ordering::SeqCst), 1, "second lookup is cached");
        epoch.bump();
        c.route("a").await.unwrap();
        assert_eq!(n.load(Ordering::SeqCst), 2, "a bump invalidates");
        let short = CachedRoutes::new(Counting(n.clone()), Duration::from_millis(1), epoch);
        short.route("b").await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        short.route("b").await.unwrap();
        assert_eq!(n.load(Ordering::SeqCst), 4, "entries expire");
    }
}
