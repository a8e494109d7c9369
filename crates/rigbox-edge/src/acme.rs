//! Certificates from an ACME CA (Let's Encrypt) with HTTP-01 challenges.
//!
//! HTTP-01 cannot prove a wildcard, so with ACME the edge obtains one
//! certificate per host, on demand: the first TLS handshake for a host the
//! edge serves (the base domain or an existing app) orders a certificate,
//! answers the CA's `GET http://{host}/.well-known/acme-challenge/{token}`
//! from the plain-HTTP listener (which must be reachable on port 80 from
//! the internet), and finishes the handshake with the new certificate.
//! Certificates and the account key are kept under the state directory
//! (`account.json`, `certs/{host}/{cert,key}.pem`, mode 0600) and renewed
//! when less than `renew_before` of their life is left. A failed order is
//! not retried for the same host for a minute, to stay inside the CA's
//! rate limits.
//!
//! Tested against Pebble (the ACME test server packaged by Debian) with its
//! HTTP-01 validation going to the edge over loopback; it has never been
//! run against Let's Encrypt from this project's machines (no network).

use crate::tls::{self, TlsError};
use instant_acme::{Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy};
use rustls::ServerConfig;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// ACME errors.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The CA said no, or could not be reached.
    #[error("ACME: {0}")]
    Acme(String),
    /// Local files.
    #[error("ACME state: {0}")]
    State(String),
    /// The certificate did not load.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A recent order for this host failed.
    #[error("a certificate order for {0} failed recently; not retrying yet")]
    Backoff(String),
}

impl From<instant_acme::Error> for AcmeError {
    fn from(e: instant_acme::Error) -> Self {
        AcmeError::Acme(e.to_string())
    }
}

/// Pending HTTP-01 answers: token → key authorization.
#[derive(Debug, Default)]
pub struct Challenges(RwLock<HashMap<String, String>>);

impl Challenges {
    /// The answer for `token`.
    pub fn get(&self, token: &str) -> Option<String> {
        self.0.read().ok()?.get(token).cloned()
    }
    /// Publishes an answer.
    pub fn insert(&self, token: String, key_authorization: String) {
        if let Ok(mut m) = self.0.write() {
            m.insert(token, key_authorization);
        }
    }
    /// Withdraws an answer.
    pub fn remove(&self, token: &str) {
        if let Ok(mut m) = self.0.write() {
            m.remove(token);
        }
    }
}

/// ACME settings.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// Directory URL.
    pub directory_url: String,
    /// Account contact.
    pub contact_email: Option<String>,
    /// Where the account and certificates are kept.
    pub state_dir: PathBuf,
    /// Trust this CA for the ACME server's own HTTPS (test CAs only).
    pub server_root_pem: Option<PathBuf>,
    /// Renew when less than this is left.
    pub renew_before: Duration,
    /// Give up on an order after this long.
    pub order_timeout: Duration,
}

impl AcmeConfig {
    /// Let's Encrypt with state under `state_dir`.
    pub fn new(state_dir: PathBuf, contact_email: Option<String>) -> Self {
        AcmeConfig {
            directory_url: LETS_ENCRYPT.into(),
            contact_email,
            state_dir,
            server_root_pem: None,
            renew_before: Duration::from_secs(30 * 86400),
            order_timeout: Duration::from_secs(90),
        }
    }
}

struct Held {
    config: Arc<ServerConfig>,
    not_after: i64,
}

/// The ACME certificate manager.
pub struct Acme {
    cfg: AcmeConfig,
    challenges: Arc<Challenges>,
    account: tokio::sync::Mutex<Option<Account>>,
    certs: RwLock<HashMap<String, Held>>,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    failures: RwLock<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn write_private(path: &std::path::Path, data: &[u8]) -> Result<(), AcmeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| AcmeError::State(format!("{}: {e}", d.display())))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| AcmeError::State(format!("{}: {e}", tmp.display())))?;
    f.write_all(data).map_err(|e| AcmeError::State(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| AcmeError::State(e.to_string()))
}

impl Acme {
    /// A manager publishing HTTP-01 answers into `challenges` (the edge's).
    pub fn new(cfg: AcmeConfig, challenges: Arc<Challenges>) -> Self {
        // instant-acme's HTTPS client uses the process-wide rustls provider,
        // which cannot be guessed when more than one is compiled in.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        Acme {
            cfg,
            challenges,
            account: tokio::sync::Mutex::new(None),
            certs: RwLock::new(HashMap::new()),
            locks: std::sync::Mutex::new(HashMap::new()),
            failures: RwLock::new(HashMap::new()),
        }
    }

    fn cert_dir(&self, host: &str) -> PathBuf {
        self.cfg.state_dir.join("certs").join(host)
    }

    fn due(&self, not_after: i64) -> bool {
        not_after - now() < self.cfg.renew_before.as_secs() as i64
    }

    fn held(&self, host: &str, fresh_only: bool) -> Option<Arc<ServerConfig>> {
        let m = self.certs.read().ok()?;
        let h = m.get(host)?;
        if h.not_after <= now() || (fresh_only && self.due(h.not_after)) {
            return None;
        }
        Some(h.config.clone())
    }

    fn load(&self, host: &str, cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>, AcmeError> {
        let key = tls::certified_key_from_pem(cert_pem, key_pem)?;
        let not_after = tls::not_after(cert_pem)?;
        let config = tls::server_config(Arc::new(tls::SingleCert(key)))?;
        if let Ok(mut m) = self.certs.write() {
            m.insert(host.to_string(), Held { config: config.clone(), not_after });
        }
        Ok(config)
    }

    /// The TLS configuration for `host` (already checked to be served by
    /// the edge): from memory, from disk, or newly ordered.
    pub async fn config_for(&self, host: &str) -> Result<Arc<ServerConfig>, AcmeError> {
        if let Some(c) = self.held(host, true) {
            return Ok(c);
        }
        let lock = {
            let mut m = self.locks.lock().map_err(|_| AcmeError::State("lock poisoned".into()))?;
            m.entry(host.to_string()).or_default().clone()
        };
        let _g = lock.lock().await;
        if let Some(c) = self.held(host, true) {
            return Ok(c);
        }
        let dir = self.cert_dir(host);
        if let (Ok(c), Ok(k)) = (std::fs::read(dir.join("cert.pem")), std::fs::read(dir.join("key.pem"))) {
            if let Ok(cfg) = self.load(host, &c, &k) {
                if let Some(fresh) = self.held(host, true) {
                    return Ok(fresh);
                }
                tracing::info!(host, "certificate due for renewal");
                let _ = cfg;
            }
        }
        let recent = self.failures.read().ok().and_then(|m| m.get(host).copied()).is_some_and(|t| t.elapsed() < Duration::from_secs(60));
        if recent {
            return self.held(host, false).ok_or_else(|| AcmeError::Backoff(host.to_string()));
        }
        match self.issue(host).await {
            Ok((cert, key)) => {
                write_private(&dir.join("key.pem"), key.as_bytes())?;
                write_private(&dir.join("cert.pem"), cert.as_bytes())?;
                tracing::info!(host, "certificate obtained");
                self.load(host, cert.as_bytes(), key.as_bytes())
            }
            Err(e) => {
                tracing::warn!(host, "certificate order failed: {e}");
                if let Ok(mut m) = self.failures.write() {
                    m.insert(host.to_string(), Instant::now());
                }
                // An old certificate that still works beats none.
                self.held(host, false).ok_or(e)
            }
        }
    }

    async fn account(&self) -> Result<Account, AcmeError> {
        let mut slot = self.account.lock().await;
        if let Some(a) = &*slot {
            return Ok(a.clone());
        }
        let builder = || match &self.cfg.server_root_pem {
            Some(p) => Account::builder_with_root(p),
            None => Account::builder(),
        };
        let path = self.cfg.state_dir.join("account.json");
        let account = match std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<AccountCredentials>(&b).ok()) {
            Some(creds) => builder()?.from_credentials(creds).await?,
            None => {
                let contact = self.cfg.contact_email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (a, creds) = builder()?
                    .create(&NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false }, self.cfg.directory_url.clone(), None)
                    .await?;
                let json = serde_json::to_vec(&creds).map_err(|e| AcmeError::State(e.to_string()))?;
                write_private(&path, &json)?;
                tracing::info!(directory = %self.cfg.directory_url, "ACME account created");
                a
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    /// Orders a certificate for `host`: (chain PEM, key PEM).
    async fn issue(&self, host: &str) -> Result<(String, String), AcmeError> {
        let account = self.account().await?;
        let ids = [Identifier::Dns(host.to_string())];
        let mut order = account.new_order(&NewOrder::new(&ids)).await?;
        let mut tokens = Vec::new();
        let result = async {
            let mut auths = order.authorizations();
            while let Some(a) = auths.next().await {
                let mut a = a?;
                match a.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => return Err(AcmeError::Acme(format!("authorization is {other:?}"))),
                }
                let mut ch = a.challenge(ChallengeType::Http01).ok_or_else(|| AcmeError::Acme("the CA offers no http-01 challenge".into()))?;
                self.challenges.insert(ch.token.clone(), ch.key_authorization().as_str().to_string());
                tokens.push(ch.token.clone());
                ch.set_ready().await?;
            }
            let retry = RetryPolicy::new().timeout(self.cfg.order_timeout);
            let status = order.poll_ready(&retry).await?;
            if status != OrderStatus::Ready {
                return Err(AcmeError::Acme(format!("order is {status:?}")));
            }
            let key = order.finalize().await?;
            let chain = order.poll_certificate(&retry).await?;
            Ok((chain, key))
        }
        .await;
        for t in tokens {
            self.challenges.remove(&t);
        }
        result
    }

    /// Renews every certificate that is due (call daily).
    pub async fn renew_due(&self) {
        let hosts: Vec<String> = std::fs::read_dir(self.cfg.state_dir.join("certs"))
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        for h in hosts {
            if let Err(e) = self.config_for(&h).await {
                tracing::warn!(host = %h, "renewal failed: {e}");
            }
        }
    }
}
