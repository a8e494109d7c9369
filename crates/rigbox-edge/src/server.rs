//! Listeners: accept, optional TLS, HTTP/1.1 or HTTP/2 (h2c with prior
//! knowledge on plain connections, ALPN on TLS), upgrades, graceful stop.

use crate::acme::Acme;
use crate::proxy::{Edge, Scheme};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;

/// How a listener does TLS.
#[derive(Clone)]
pub enum Tls {
    /// Fixed certificates.
    Static(Arc<ServerConfig>),
    /// ACME certificates per host (with an optional fallback for names
    /// ACME does not cover).
    Acme {
        /// The manager.
        acme: Arc<Acme>,
        /// Used when no ACME certificate can be had.
        fallback: Option<Arc<ServerConfig>>,
    },
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tls::Static(_) => "Tls::Static",
            Tls::Acme { .. } => "Tls::Acme",
        })
    }
}

/// Serves `listener` until `stop`, then lets open requests finish (up to
/// ten seconds).
pub async fn serve(edge: Arc<Edge>, listener: TcpListener, tls: Option<Tls>, stop: CancellationToken) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("edge accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let edge = edge.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            match tls {
                None => serve_conn(edge, TokioIo::new(stream), peer, Scheme::Http, watcher).await,
                Some(t) => {
                    if let Some(s) = handshake(&edge, stream, t).await {
                        serve_conn(edge, TokioIo::new(s), peer, Scheme::Https, watcher).await
                    }
                }
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => tracing::debug!("edge: some connections were still open at shutdown"),
    }
}

async fn handshake(edge: &Edge, stream: TcpStream, tls: Tls) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let start = match tokio::time::timeout(Duration::from_secs(10), LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)).await {
        Ok(Ok(s)) => s,
        _ => return None,
    };
    let config = match tls {
        Tls::Static(c) => c,
        Tls::Acme { acme, fallback } => {
            let host = start.client_hello().server_name().map(|s| s.trim_end_matches('.').to_ascii_lowercase());
            let mut chosen = None;
            if let Some(h) = host {
                if edge.serves_host(&h).await {
                    match acme.config_for(&h).await {
                        Ok(c) => chosen = Some(c),
                        Err(e) => tracing::warn!(host = %h, "no ACME certificate: {e}"),
                    }
                }
            }
            chosen.or(fallback)?
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), start.into_stream(config)).await {
        Ok(Ok(s)) => Some(s),
        _ => None,
    }
}

async fn serve_conn<I>(edge: Arc<Edge>, io: TokioIo<I>, peer: std::net::SocketAddr, scheme: Scheme, watcher: hyper_util::server::graceful::Watcher)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let edge = edge.clone();
        async move { Ok::<_, std::convert::Infallible>(edge.handle(req, peer, scheme).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(hyper_util::rt::TokioTimer::new()).max_concurrent_streams(250);
    let conn = builder.serve_connection_with_upgrades(io, svc).into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!("edge connection ended: {e}");
    }
}
