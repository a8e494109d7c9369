//! Benchmark sections, one module per area.

use crate::{BenchEnv, Section};
use std::future::Future;
use std::pin::Pin;

/// Polls the guest agent of a VM run by hand in `slot` (169.254.0.2:10000)
/// until it answers HTTP, for the raw-VMM baselines.
pub(crate) async fn agent_answers(slot: &rigbox_netns::Slot, timeout: std::time::Duration) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr: std::net::SocketAddr = "169.254.0.2:10000".parse()?;
    let t0 = std::time::Instant::now();
    loop {
        if let Ok(mut s) = slot.connect(addr, std::time::Duration::from_millis(500)).await {
            if s.write_all(b"GET /v1/health HTTP/1.0\r\nHost: g\r\n\r\n").await.is_ok() {
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).await.is_ok() && buf.starts_with(b"HTTP/1.") {
                    return Ok(());
                }
            }
        }
        anyhow::ensure!(t0.elapsed() < timeout, "the guest agent did not answer within {} s", timeout.as_secs());
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

pub mod ai;
pub mod api;
pub mod edge;
pub mod metrics;
pub mod quickdeploy;
pub mod snapshots;
pub mod ssh;
pub mod substrate;

/// A section runner.
pub type Runner = for<'a> fn(&'a BenchEnv) -> Pin<Box<dyn Future<Output = anyhow::Result<Section>> + 'a>>;

/// Every section, in report order: (name for `--section`, runner).
pub const ALL: &[(&str, Runner)] = &[
    ("substrate", |e| Box::pin(substrate::run(e))),
    ("api", |e| Box::pin(api::run(e))),
    ("ssh", |e| Box::pin(ssh::run(e))),
    ("snapshots", |e| Box::pin(snapshots::run(e))),
    ("edge", |e| Box::pin(edge::run(e))),
    ("metrics", |e| Box::pin(metrics::run(e))),
    ("quickdeploy", |e| Box::pin(quickdeploy::run(e))),
    ("ai", |e| Box::pin(ai::run(e))),
];
