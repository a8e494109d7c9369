//! `rig`: the Rigbox command-line client.
//!
//! Exit codes: 0 success, 1 failure, 2 missing or rejected API key; `rig
//! exec` passes the remote command's exit code through.

mod cmd;
mod config;
mod ctx;

use clap::{Parser, Subcommand, ValueEnum};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Human,
    /// JSON (one document, or NDJSON events for streams).
    Json,
}

#[derive(Parser)]
#[command(name = "rig", version, about = "Rigbox: workspaces in micro-VMs")]
struct Cli {
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "human")]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Save the API URL and key to ~/.config/rigbox/config.json.
    Login(cmd::account::LoginArgs),
    /// Forget the saved key.
    Logout,
    /// Show who the key belongs to.
    Whoami,
    /// Workspaces.
    #[command(subcommand, alias = "ws")]
    Workspace(cmd::workspace::Cmd),
    /// Run a command in a workspace: `rig exec WS -- CMD ARGS...`.
    Exec(cmd::exec::Args),
    /// Copy files: `rig cp LOCAL WS:/path` or `rig cp WS:/path LOCAL`.
    Cp(cmd::exec::CpArgs),
    /// API keys.
    #[command(subcommand)]
    ApiKey(cmd::account::KeyCmd),
    /// List workspace templates.
    Templates,
    /// Administration (users).
    #[command(subcommand)]
    Admin(cmd::account::AdminCmd),
    /// Open a shell in a workspace through the SSH gateway.
    Ssh(cmd::ssh::Args),
    /// SSH keys.
    #[command(subcommand)]
    SshKey(cmd::ssh::KeyCmd),
    /// Apps: ports exposed on subdomains.
    #[command(subcommand)]
    App(cmd::app::Cmd),
    /// Snapshots.
    #[command(subcommand)]
    Snapshot(cmd::snapshot::Cmd),
    /// AI configuration, credits and usage.
    #[command(subcommand)]
    Ai(cmd::ai::Cmd),
    /// Setup scripts.
    #[command(subcommand)]
    SetupScript(cmd::automation::ScriptCmd),
    /// Service specs.
    #[command(subcommand)]
    ServiceSpec(cmd::automation::SpecCmd),
    /// Tools.
    #[command(subcommand)]
    Tools(cmd::automation::ToolsCmd),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let ctx = ctx::Ctx::new(cli.output);
    let result = match cli.cmd {
        Cmd::Login(a) => cmd::account::login(&ctx, a).await,
        Cmd::Logout => cmd::account::logout(&ctx).await,
        Cmd::Whoami => cmd::account::whoami(&ctx).await,
        Cmd::Workspace(c) => cmd::workspace::run(&ctx, c).await,
        Cmd::Exec(a) => cmd::exec::exec(&ctx, a).await,
        Cmd::Cp(a) => cmd::exec::cp(&ctx, a).await,
        Cmd::ApiKey(c) => cmd::account::keys(&ctx, c).await,
        Cmd::Templates => cmd::workspace::templates(&ctx).await,
        Cmd::Admin(c) => cmd::account::admin(&ctx, c).await,
        Cmd::Ssh(a) => cmd::ssh::ssh(&ctx, a).await,
        Cmd::SshKey(c) => cmd::ssh::keys(&ctx, c).await,
        Cmd::App(c) => cmd::app::run(&ctx, c).await,
        Cmd::Snapshot(c) => cmd::snapshot::run(&ctx, c).await,
        Cmd::Ai(c) => cmd::ai::run(&ctx, c).await,
        Cmd::SetupScript(c) => cmd::automation::scripts(&ctx, c).await,
        Cmd::ServiceSpec(c) => cmd::automation::specs(&ctx, c).await,
        Cmd::Tools(c) => cmd::automation::tools(&ctx, c).await,
    };
    std::process::exit(ctx.finish(result));
}
