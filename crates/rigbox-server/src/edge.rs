//! The edge proxy role (listens on RIGBOX_EDGE_LISTEN, and on
//! RIGBOX_EDGE_TLS_LISTEN with TLS).
//!
//! Wires `rigbox-edge` to the control plane: routes and identities come
//! from the database through `rigbox_api::apps::{DbRoutes, DbAuth}` behind
//! short caches (1 s for routes, 30 s for keys, both dropped whenever the
//! apps API bumps the shared [`Epoch`]); metrics recorded by the edge are
//! drained into the database by the apps background loop, which also runs
//! the periodic health checks. TLS uses the certificate files
//! (`edge_tls_cert`, `edge_tls_key`: a wildcard for the base domain) or,
//! with `acme_enabled`, per-host ACME certificates over HTTP-01 (the plain
//! listener must then be reachable on port 80 from the CA).

use crate::{write_private, ControlPlaneHandle, Settings};
use anyhow::Context;
use rigbox_api::apps::{DbAuth, DbRoutes, EdgeInfo};
use rigbox_edge::acme::{Acme, AcmeConfig};
use rigbox_edge::access::Sessions;
use rigbox_edge::metrics::Recorder;
use rigbox_edge::{CachedAuth, CachedRoutes, Edge, EdgeConfig, Epoch, Tls};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A running edge role.
#[derive(Debug)]
pub struct Handle {
    /// Where it listens (plain HTTP).
    pub addr: SocketAddr,
    /// Where it listens with TLS.
    pub tls_addr: Option<SocketAddr>,
    /// The edge itself.
    pub edge: Arc<Edge>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// Stops it.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The secret that signs edge sessions: kept in the data dir so sessions
/// survive restarts.
fn session_secret(s: &Settings) -> anyhow::Result<Vec<u8>> {
    let path = s.data_dir.join("edge-session-key");
    if let Ok(t) = std::fs::read_to_string(&path) {
        if let Ok(b) = hex::decode(t.trim()) {
            if b.len() >= 32 {
                return Ok(b);
            }
        }
    }
    let mut b = vec![0u8; 32];
    rand::Rng::fill(&mut rand::thread_rng(), &mut b[..]);
    write_private(&path, &hex::encode(&b))?;
    Ok(b)
}

/// Starts the role next to a control plane.
pub async fn start(s: &Settings, cp: &ControlPlaneHandle) -> anyhow::Result<Option<Handle>> {
    let st = cp.state.clone();
    let epoch = Arc::new(Epoch::default());
    st.set_ext(epoch.clone());
    let recorder = Arc::new(Recorder::new());
    st.set_ext(recorder.clone());

    let listener = tokio::net::TcpListener::bind(s.edge_listen).await.with_context(|| format!("binding the edge on {}", s.edge_listen))?;
    let addr = listener.local_addr()?;
    let tls_listener = match s.edge_tls_listen {
        Some(a) => Some(tokio::net::TcpListener::bind(a).await.with_context(|| format!("binding the edge's TLS listener on {a}"))?),
        None => None,
    };
    let tls_addr = tls_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let https = s.public_scheme == "https" && tls_addr.is_some();
    let public_port = if https { tls_addr.map(|a| a.port()).filter(|p| *p != 443) } else { Some(addr.port()).filter(|p| *p != 80) };
    st.set_ext(Arc::new(EdgeInfo { public_scheme: if https { "https".into() } else { "http".into() }, public_port }));

    let cfg = EdgeConfig {
        base_domain: s.base_domain.clone(),
        https_redirect: https,
        upstream_timeout: Duration::from_secs(s.edge_upstream_timeout_secs.max(1)),
        ..EdgeConfig::default()
    };
    let routes = CachedRoutes::new(DbRoutes(st.clone()), Duration::from_secs(1), epoch.clone());
    let auth = CachedAuth::new(DbAuth(st.clone()), Duration::from_secs(30), epoch);
    let edge = Arc::new(Edge::new(cfg, Arc::new(routes), Arc::new(auth), Sessions::new(session_secret(s)?), recorder));

    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    let files = match (&s.edge_tls_cert, &s.edge_tls_key) {
        (Some(c), Some(k)) => Some(rigbox_edge::tls::config_from_files(c, k).with_context(|| format!("loading the edge certificate {}", c.display()))?),
        (None, None) => None,
        _ => anyhow::bail!("edge_tls_cert and edge_tls_key go together"),
    };
    let tls = match (&tls_listener, s.acme_enabled) {
        (None, _) => None,
        (Some(_), true) => {
            let mut ac = AcmeConfig::new(s.data_dir.join("acme"), s.acme_email.clone());
            if let Some(d) = &s.acme_directory {
                ac.directory_url = d.clone();
            }
            let acme = Arc::new(Acme::new(ac, edge.challenges()));
            let (a, st2) = (acme.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = st2.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(12 * 3600)) => a.renew_due().await,
                    }
                }
            }));
            Some(Tls::Acme { acme, fallback: files })
        }
        (Some(_), false) => Some(Tls::Static(files.context("edge_tls_listen needs edge_tls_cert and edge_tls_key (or acme_enabled)")?)),
    };
    tasks.push(tokio::spawn(rigbox_edge::serve(edge.clone(), listener, None, stop.clone())));
    if let Some(l) = tls_listener {
        tasks.push(tokio::spawn(rigbox_edge::serve(edge.clone(), l, tls, stop.clone())));
    }
    tasks.push(tokio::spawn(rigbox_api::apps::background(st, Duration::from_secs(15), stop.clone())));
    let task = tokio::spawn(async move {
        for t in tasks {
            let _ = t.await;
        }
    });
    tracing::info!(%addr, tls = ?tls_addr, base_domain = %s.base_domain, "edge listening");
    Ok(Some(Handle { addr, tls_addr, edge, stop, task }))
}
