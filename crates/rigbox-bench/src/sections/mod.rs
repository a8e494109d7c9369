//! Benchmark sections, one module per area.

use crate::{BenchEnv, Section};
use std::future::Future;
use std::pin::Pin;

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
