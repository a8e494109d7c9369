//! `rig ai` (filled in with the AI proxy).

use crate::ctx::{not_yet, Ctx};
use clap::Subcommand;

/// `rig ai`.
#[derive(Subcommand)]
pub enum Cmd {
    /// Show or change a workspace's AI configuration.
    Config {
        workspace: String,
        #[arg(long)]
        mode: Option<String>,
        #[arg(long)]
        provider: Option<String>,
        #[arg(long)]
        model: Option<String>,
        /// Read the API key from standard input.
        #[arg(long)]
        api_key_stdin: bool,
    },
    /// Credit balance.
    Credits,
    /// Usage.
    Usage,
}

pub async fn run(_ctx: &Ctx, _c: Cmd) -> anyhow::Result<()> {
    not_yet("rig ai")
}
