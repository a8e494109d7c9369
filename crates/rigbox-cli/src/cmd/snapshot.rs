//! `rig snapshot` and `rig workspace pause|resume|fork`.

use crate::ctx::Ctx;
use clap::Subcommand;
use rigbox_client::Client;
use serde_json::{json, Value};

/// `rig snapshot`.
#[derive(Subcommand)]
pub enum Cmd {
    /// Snapshot a workspace: its disk when stopped, or with --live its memory too.
    Create {
        workspace: String,
        /// Name.
        #[arg(long)]
        name: Option<String>,
        /// Snapshot a running workspace with its memory.
        #[arg(long)]
        live: bool,
    },
    /// List snapshots (of one workspace, or all).
    Ls {
        #[arg(long)]
        workspace: Option<String>,
    },
    /// Restore a snapshot into its workspace (which must be stopped).
    Restore { snapshot: String },
    /// Delete a snapshot.
    Rm { snapshot: String },
}

fn line(s: &Value) -> String {
    format!(
        "{:<16} {:<14} {:<5} {:>7} MiB  {}  {}",
        s["id"].as_str().unwrap_or(""),
        s["workspace_id"].as_str().unwrap_or(""),
        s["kind"].as_str().unwrap_or(""),
        s["size_mb"],
        s["created_at"].as_str().unwrap_or(""),
        s["name"].as_str().unwrap_or("")
    )
}

pub async fn run(ctx: &Ctx, c: Cmd) -> anyhow::Result<()> {
    let client = ctx.client()?;
    match c {
        Cmd::Create { workspace, name, live } => {
            let r: Value = client.send(reqwest::Method::POST, &format!("/workspaces/{workspace}/snapshots"), &json!({"name": name, "live": live})).await?;
            ctx.print(&r, || format!("created {}", line(&r["snapshot"])));
        }
        Cmd::Ls { workspace } => {
            let path = match &workspace {
                Some(w) => format!("/workspaces/{w}/snapshots"),
                None => "/snapshots".into(),
            };
            let r: Value = client.get(&path).await?;
            ctx.print(&r, || {
                let v = r["snapshots"].as_array().cloned().unwrap_or_default();
                if v.is_empty() {
                    "no snapshots".into()
                } else {
                    v.iter().map(line).collect::<Vec<_>>().join("\n")
                }
            });
        }
        Cmd::Restore { snapshot } => {
            let r: Value = client.call(reqwest::Method::POST, &format!("/snapshots/{snapshot}/restore")).await?;
            ctx.print(&r, || r["message"].as_str().unwrap_or("restored").to_string());
        }
        Cmd::Rm { snapshot } => {
            let r: Value = client.call(reqwest::Method::DELETE, &format!("/snapshots/{snapshot}")).await?;
            ctx.print(&r, || r["message"].as_str().unwrap_or("deleted").to_string());
        }
    }
    Ok(())
}

pub async fn pause(ctx: &Ctx, client: &Client, ws: &str) -> anyhow::Result<()> {
    let r = client.action(ws, "pause").await?;
    ctx.print(&r, || format!("{} is {}", r.vm.name, r.vm.status));
    Ok(())
}

pub async fn resume(ctx: &Ctx, client: &Client, ws: &str) -> anyhow::Result<()> {
    let r = client.action(ws, "resume").await?;
    ctx.print(&r, || format!("{} is {}", r.vm.name, r.vm.status));
    Ok(())
}

pub async fn fork(ctx: &Ctx, client: &Client, ws: &str, count: u32, names: Vec<String>) -> anyhow::Result<()> {
    let count = if names.is_empty() { count } else { names.len() as u32 };
    let r: Value = client.send(reqwest::Method::POST, &format!("/workspaces/{ws}/fork"), &json!({"count": count, "names": names})).await?;
    ctx.print(&r, || {
        r["workspaces"]
            .as_array()
            .map(|v| v.iter().map(|w| format!("{} ({}) is {}", w["name"].as_str().unwrap_or(""), w["id"].as_str().unwrap_or(""), w["status"].as_str().unwrap_or(""))).collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    });
    Ok(())
}
