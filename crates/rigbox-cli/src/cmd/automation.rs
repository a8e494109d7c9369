//! `rig setup-script`, `rig service-spec`, `rig tools` (filled in with quick deploy).

use crate::ctx::{not_yet, Ctx};
use clap::Subcommand;

/// `rig setup-script`.
#[derive(Subcommand)]
pub enum ScriptCmd {
    /// Create from a file.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        file: std::path::PathBuf,
        #[arg(long, default_value = "first_boot")]
        run_on: String,
    },
    /// List.
    Ls,
    /// Delete.
    Rm { id: String },
}

/// `rig service-spec`.
#[derive(Subcommand)]
pub enum SpecCmd {
    /// Create.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        exec_start: String,
        #[arg(long)]
        auto_enable: bool,
    },
    /// List.
    Ls,
    /// Delete.
    Rm { id: String },
}

/// `rig tools`.
#[derive(Subcommand)]
pub enum ToolsCmd {
    /// List tools of a workspace.
    Ls {
        #[arg(long)]
        workspace: String,
    },
    /// Install.
    Install {
        #[arg(long)]
        workspace: String,
        #[arg(long)]
        tool: String,
    },
    /// Launch.
    Launch {
        #[arg(long)]
        workspace: String,
        #[arg(long)]
        tool: String,
    },
}

pub async fn scripts(_ctx: &Ctx, _c: ScriptCmd) -> anyhow::Result<()> {
    not_yet("rig setup-script")
}

pub async fn specs(_ctx: &Ctx, _c: SpecCmd) -> anyhow::Result<()> {
    not_yet("rig service-spec")
}

pub async fn tools(_ctx: &Ctx, _c: ToolsCmd) -> anyhow::Result<()> {
    not_yet("rig tools")
}
