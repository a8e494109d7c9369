//! `rig ssh` and `rig ssh-key` (filled in with the SSH gateway).

use crate::ctx::{not_yet, Ctx};
use clap::{Args as ClapArgs, Subcommand};

/// `rig ssh WS`.
#[derive(ClapArgs)]
pub struct Args {
    /// Workspace name or id.
    pub workspace: String,
    /// Command to run instead of a shell.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// `rig ssh-key`.
#[derive(Subcommand)]
pub enum KeyCmd {
    /// Register a public key.
    Add {
        /// Name.
        #[arg(long)]
        name: String,
        /// Public key file (default ~/.ssh/id_ed25519.pub).
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// List keys.
    Ls,
    /// Remove a key (by id or name).
    Rm { key: String },
}

pub async fn ssh(_ctx: &Ctx, _a: Args) -> anyhow::Result<()> {
    not_yet("rig ssh")
}

pub async fn keys(_ctx: &Ctx, _c: KeyCmd) -> anyhow::Result<()> {
    not_yet("rig ssh-key")
}
