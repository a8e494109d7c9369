//! `rig snapshot` and `rig workspace pause|resume|fork` (filled in with snapshots).

use crate::ctx::{not_yet, Ctx};
use clap::Subcommand;
use rigbox_client::Client;

/// `rig snapshot`.
#[derive(Subcommand)]
pub enum Cmd {
    /// Snapshot a stopped workspace's disk.
    Create {
        workspace: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// List snapshots (of one workspace, or all).
    Ls {
        #[arg(long)]
        workspace: Option<String>,
    },
    /// Restore a snapshot into its workspace.
    Restore { snapshot: String },
    /// Delete a snapshot.
    Rm { snapshot: String },
}

pub async fn run(_ctx: &Ctx, _c: Cmd) -> anyhow::Result<()> {
    not_yet("rig snapshot")
}

pub async fn pause(_ctx: &Ctx, _client: &Client, _ws: &str) -> anyhow::Result<()> {
    not_yet("pause")
}

pub async fn resume(_ctx: &Ctx, _client: &Client, _ws: &str) -> anyhow::Result<()> {
    not_yet("resume")
}

pub async fn fork(_ctx: &Ctx, _client: &Client, _ws: &str, _count: u32, _names: Vec<String>) -> anyhow::Result<()> {
    not_yet("fork")
}
