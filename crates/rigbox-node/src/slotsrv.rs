//! Servers the node runs inside a workspace's slot (package proxy, AI
//! proxy): an accept loop that ends with the slot.

use std::future::Future;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Accepts connections until `token` is cancelled, running `conn` for each
/// (with TCP_NODELAY: proxied streams go out as they come); then drops the
/// listener and every open connection, so nothing keeps the namespace alive.
pub(crate) async fn accept_until<F, Fut>(listener: TcpListener, token: CancellationToken, conn: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            r = listener.accept() => {
                let Ok((stream, _)) = r else { continue };
                let _ = stream.set_nodelay(true);
                conns.spawn(conn(stream));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}
