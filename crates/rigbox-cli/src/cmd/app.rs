//! `rig app` (filled in with apps and routing).

use crate::ctx::{not_yet, Ctx};
use clap::Subcommand;

/// `rig app`.
#[derive(Subcommand)]
pub enum Cmd {
    /// List apps.
    Ls {
        /// Only this workspace's.
        #[arg(long)]
        workspace: Option<String>,
    },
    /// Expose a port as an app.
    Create {
        /// Workspace.
        #[arg(long)]
        workspace: String,
        /// App name (becomes the subdomain).
        #[arg(long)]
        name: String,
        /// Port inside the workspace.
        #[arg(long)]
        port: u16,
    },
    /// Remove an app.
    Rm { app: String },
    /// Set visibility: public, private, or privileged with --emails.
    Visibility {
        app: String,
        visibility: String,
        #[arg(long, value_delimiter = ',')]
        emails: Vec<String>,
    },
    /// Check health.
    Health { app: String },
}

pub async fn run(_ctx: &Ctx, _c: Cmd) -> anyhow::Result<()> {
    not_yet("rig app")
}
