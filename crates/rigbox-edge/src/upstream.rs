//! Connections from the edge to apps: HTTP/1.1 over node tunnels, pooled.
//!
//! A tunnel is an HTTP upgrade on the node agent's API that then carries
//! raw bytes to a port on the guest's interface. Opening one costs a TCP
//! connection to the node, an upgrade round trip and a connect inside the
//! workspace's network namespace, so the edge keeps HTTP/1.1 connections
//! over tunnels alive and reuses them (hyper-util's pooled client with a
//! connector that opens tunnels; the pool key is workspace + port).

use crate::route::Route;
use bytes::Bytes;
use http::Uri;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rigbox_node_api::{NodeClient, NodeClientError};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

/// Request and response bodies the edge passes along.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Why no connection to the app could be had (or the app did not answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// Nothing listens on the port (the VM refused the connection).
    #[error("the workspace refused the connection: {0}")]
    Refused(String),
    /// The VM did not accept the connection, or did not answer, in time.
    #[error("the workspace did not answer in time: {0}")]
    TimedOut(String),
    /// The workspace is not running on its node.
    #[error("the workspace is not running: {0}")]
    NotRunning(String),
    /// The node agent could not be reached.
    #[error("the workspace's node is unreachable: {0}")]
    NodeUnreachable(String),
    /// The connection broke or the answer was not HTTP.
    #[error("bad answer from the workspace: {0}")]
    Protocol(String),
}

impl UpstreamError {
    /// From a tunnel setup failure reported by the node.
    pub fn from_node(e: NodeClientError) -> Self {
        match e {
            NodeClientError::Transport(m) => UpstreamError::NodeUnreachable(m),
            NodeClientError::Api { status, code, message } => {
                let lower = message.to_ascii_lowercase();
                if status == 409 || code == rigbox_node_api::codes::WRONG_STATE || status == 404 {
                    UpstreamError::NotRunning(message)
                } else if status == 504 || lower.contains("timed out") || lower.contains("timeout") {
                    UpstreamError::TimedOut(message)
                } else if lower.contains("refused") {
                    UpstreamError::Refused(message)
                } else {
                    UpstreamError::Protocol(message)
                }
            }
            NodeClientError::Decode(m) => UpstreamError::Protocol(m),
        }
    }
}

/// A tunnel as a client connection.
pub struct TunnelIo(hyper::upgrade::Upgraded);

impl hyper::rt::Read for TunnelIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: hyper::rt::ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TunnelIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}

impl Connection for TunnelIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// Opens tunnels for URIs `http://{workspace_id}:{port}/…`; the workspace's
/// node comes from a table the edge fills as it resolves routes.
#[derive(Clone)]
pub struct TunnelConnector {
    nodes: Arc<RwLock<HashMap<String, NodeClient>>>,
    timeout: Duration,
}

impl tower::Service<Uri> for TunnelConnector {
    type Response = TunnelIo;
    type Error = UpstreamError;
    type Future = Pin<Box<dyn Future<Output = Result<TunnelIo, UpstreamError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let ws = uri.host().unwrap_or_default().to_string();
        let port = uri.port_u16().unwrap_or(80);
        let node = self.nodes.read().ok().and_then(|m| m.get(&ws).cloned());
        let timeout = self.timeout;
        Box::pin(async move {
            let node = node.ok_or_else(|| UpstreamError::NotRunning(format!("no node known for {ws}")))?;
            open_tunnel(&node, &ws, port, timeout).await
        })
    }
}

async fn open_tunnel(node: &NodeClient, ws: &str, port: u16, timeout: Duration) -> Result<TunnelIo, UpstreamError> {
    match tokio::time::timeout(timeout, node.tunnel(ws, port, false)).await {
        Ok(Ok(t)) => Ok(TunnelIo(t.into_inner())),
        Ok(Err(e)) => Err(UpstreamError::from_node(e)),
        Err(_) => Err(UpstreamError::TimedOut(format!("no tunnel to port {port} within {timeout:?}"))),
    }
}

/// The pooled client of apps.
#[derive(Clone)]
pub struct Upstream {
    client: Client<TunnelConnector, Body>,
    nodes: Arc<RwLock<HashMap<String, NodeClient>>>,
}

impl Upstream {
    /// A client whose tunnels must open within `connect_timeout`, keeping
    /// idle connections for `idle` (at most `max_idle` per app port).
    pub fn new(connect_timeout: Duration, idle: Duration, max_idle: usize) -> Self {
        let nodes = Arc::new(RwLock::new(HashMap::new()));
        let conn = TunnelConnector { nodes: nodes.clone(), timeout: connect_timeout };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle)
            .pool_max_idle_per_host(max_idle)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(conn);
        Upstream { client, nodes }
    }

    /// The URI that reaches `path_and_query` of the route's app (and
    /// remembers the route's node for the connector).
    pub fn uri(&self, route: &Route, path_and_query: &str) -> Result<Uri, UpstreamError> {
        if let Ok(mut m) = self.nodes.write() {
            let stale = m.get(&route.workspace_id).is_none_or(|n| n.base() != route.node.base());
            if stale {
                m.insert(route.workspace_id.clone(), route.node.clone());
            }
        }
        let pq = if path_and_query.starts_with('/') { path_and_query.to_string() } else { format!("/{path_and_query}") };
        format!("http://{}:{}{pq}", route.workspace_id, route.port).parse().map_err(|e| UpstreamError::Protocol(format!("bad target URI: {e}")))
    }

    /// Sends a request (URI from [`Upstream::uri`]).
    pub async fn send(&self, req: http::Request<Body>) -> Result<http::Response<Incoming>, UpstreamError> {
        self.client.request(req).await.map_err(classify_client_error)
    }
}

fn classify_client_error(e: hyper_util::client::legacy::Error) -> UpstreamError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = src {
        if let Some(u) = s.downcast_ref::<UpstreamError>() {
            return u.clone();
        }
        src = s.source();
    }
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    UpstreamError::Protocol(msg)
}

/// Result of an HTTP probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The status the app answered with.
    pub status: u16,
    /// How long the answer took.
    pub elapsed: Duration,
}

/// `GET path` on `port` of workspace `ws` through a fresh tunnel, with
/// `Host: host`; the whole exchange must fit in `timeout`.
pub async fn probe_http(node: &NodeClient, ws: &str, port: u16, host: &str, path: &str, timeout: Duration) -> Result<Probe, UpstreamError> {
    let started = std::time::Instant::now();
    let work = async {
        let io = open_tunnel(node, ws, port, timeout).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, http_body_util::Empty<Bytes>>(io)
            .await
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::builder()
            .method("GET")
            .uri(if path.starts_with('/') { path.to_string() } else { format!("/{path}") })
            .header("host", host)
            .header("user-agent", "rigbox-health/1")
            .header("connection", "close")
            .body(http_body_util::Empty::new())
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        let status = resp.status().as_u16();
        // Read (and drop) up to the end of the body so the app sees a normal exchange.
        let mut body = resp.into_body();
        let mut n = 0usize;
        while let Some(Ok(f)) = body.frame().await {
            n += f.data_ref().map_or(0, |d| d.len());
            if n > 1 << 20 {
                break;
            }
        }
        Ok(Probe { status, elapsed: started.elapsed() })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamError::TimedOut(format!("no answer within {timeout:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_errors_are_classified() {
        let api = |status: u16, code: &str, message: &str| NodeClientError::Api { status, code: code.into(), message: message.into() };
        assert!(matches!(UpstreamError::from_node(NodeClientError::Transport("x".into())), UpstreamError::NodeUnreachable(_)));
        assert!(matches!(UpstreamError::from_node(api(409, "wrong_state", "not running")), UpstreamError::NotRunning(_)));
        assert!(matches!(
            UpstreamError::from_node(api(502, "guest_error", "Guest agent unreachable: connect 169.254.0.2:80 in rbx-x: Connection refused (os error 111)")),
            UpstreamError::Refused(_)
        ));
        assert!(matches!(
            UpstreamError::from_node(api(502, "guest_error", "Guest agent unreachable: connect 169.254.0.2:80 in rbx-x: connection timed out")),
            UpstreamError::TimedOut(_)
        ));
        assert!(matches!(UpstreamError::from_node(api(504, "guest_error", "slow")), UpstreamError::TimedOut(_)));
        assert!(matches!(UpstreamError::from_node(api(502, "guest_error", "no route to host")), UpstreamError::Protocol(_)));
    }
}
