//! `rig setup-script`, `rig service-spec`, `rig tools`.

use crate::ctx::{not_yet, Ctx};
use clap::Subcommand;
use serde_json::{json, Value};

/// `rig setup-script`.
#[derive(Subcommand)]
pub enum ScriptCmd {
    /// Create from a file.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        file: std::path::PathBuf,
        /// first_boot or every_start.
        #[arg(long, default_value = "first_boot")]
        run_on: String,
        #[arg(long, default_value_t = 0)]
        order: i32,
    },
    /// List.
    Ls,
    /// Replace the content (and optionally name or run_on).
    Update {
        #[arg(long)]
        id: String,
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        run_on: Option<String>,
    },
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
        /// always, on-failure, no.
        #[arg(long, default_value = "on-failure")]
        restart: String,
        #[arg(long)]
        auto_enable: bool,
        /// K=V.
        #[arg(long = "env")]
        env: Vec<String>,
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

pub async fn scripts(ctx: &Ctx, c: ScriptCmd) -> anyhow::Result<()> {
    let client = ctx.client()?;
    match c {
        ScriptCmd::Create { name, file, run_on, order } => {
            let content = std::fs::read_to_string(&file)?;
            let r: Value = client.send(reqwest::Method::POST, "/setup-scripts", &json!({"name": name, "content": content, "run_on": run_on, "script_order": order})).await?;
            ctx.print(&r, || format!("created setup script {} ({})", r["name"].as_str().unwrap_or(""), r["id"].as_str().unwrap_or("")));
        }
        ScriptCmd::Ls => {
            let r: Value = client.get("/setup-scripts").await?;
            ctx.print(&r, || {
                r["scripts"]
                    .as_array()
                    .map(|v| {
                        v.iter()
                            .map(|s| format!("{}  {:<20} {:<12} order {}", s["id"].as_str().unwrap_or(""), s["name"].as_str().unwrap_or(""), s["run_on"].as_str().unwrap_or(""), s["script_order"]))
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .unwrap_or_default()
            });
        }
        ScriptCmd::Update { id, file, name, run_on } => {
            let content = file.map(std::fs::read_to_string).transpose()?;
            let r: Value = client.send(reqwest::Method::PUT, &format!("/setup-scripts/{id}"), &json!({"content": content, "name": name, "run_on": run_on})).await?;
            ctx.print(&r, || format!("updated {}", r["name"].as_str().unwrap_or("")));
        }
        ScriptCmd::Rm { id } => {
            let r: Value = client.call(reqwest::Method::DELETE, &format!("/setup-scripts/{id}")).await?;
            ctx.print(&r, || r["message"].as_str().unwrap_or("").to_string());
        }
    }
    Ok(())
}

pub async fn specs(ctx: &Ctx, c: SpecCmd) -> anyhow::Result<()> {
    let client = ctx.client()?;
    match c {
        SpecCmd::Create { name, exec_start, restart, auto_enable, env } => {
            let env = super::workspace::parse_env(&env)?;
            let r: Value = client
                .send(reqwest::Method::POST, "/service-specs", &json!({"name": name, "exec_start": exec_start, "restart_policy": restart, "auto_enable": auto_enable, "env_vars": env}))
                .await?;
            ctx.print(&r, || format!("created service spec {} ({})\n{}", r["name"].as_str().unwrap_or(""), r["id"].as_str().unwrap_or(""), r["systemd_unit_preview"].as_str().unwrap_or("")));
        }
        SpecCmd::Ls => {
            let r: Value = client.get("/service-specs").await?;
            ctx.print(&r, || {
                r["services"]
                    .as_array()
                    .map(|v| v.iter().map(|s| format!("{}  {:<16} {}", s["id"].as_str().unwrap_or(""), s["name"].as_str().unwrap_or(""), s["exec_start"].as_str().unwrap_or(""))).collect::<Vec<_>>().join("\n"))
                    .unwrap_or_default()
            });
        }
        SpecCmd::Rm { id } => {
            let r: Value = client.call(reqwest::Method::DELETE, &format!("/service-specs/{id}")).await?;
            ctx.print(&r, || r["message"].as_str().unwrap_or("").to_string());
        }
    }
    Ok(())
}

pub async fn tools(_ctx: &Ctx, _c: ToolsCmd) -> anyhow::Result<()> {
    not_yet("rig tools")
}
