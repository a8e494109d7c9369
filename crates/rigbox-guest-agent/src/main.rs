//! `rigbox-agent`: runs inside every workspace VM (see `rigbox-guest-proto`
//! for the wire contract). Started by systemd very early in boot; the node
//! agent reaches it over the workspace's private network slot.

mod exec;
mod files;
mod identity;
mod server;
mod setup;
mod stats;

use std::net::SocketAddr;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RIGBOX_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .without_time()
        .init();
    let listen: SocketAddr = std::env::var("RIGBOX_AGENT_LISTEN")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], rigbox_guest_proto::AGENT_PORT)));
    // Only for running the agent on a development host: accept any peer.
    let allow_any = std::env::var("RIGBOX_AGENT_ALLOW_ANY").is_ok_and(|v| v == "1");
    let state = server::AgentState::new(allow_any);
    loop {
        match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => {
                tracing::info!(%listen, "rigbox-agent listening");
                if let Err(e) = server::serve(listener, state.clone()).await {
                    tracing::error!("server stopped: {e}");
                }
            }
            Err(e) => {
                tracing::warn!("bind {listen}: {e}; retrying");
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
