//! `rig workspace …` and `rig templates`.

use crate::ctx::Ctx;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rigbox_client::views::{CreateWorkspaceRequest, GetWorkspaceResponse, ResizeWorkspaceRequest, TemplatesResponse, Vm};
use rigbox_client::Client;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// Sizes and template of a new workspace.
#[derive(Args, Clone)]
pub struct NewArgs {
    /// Name (lowercase letters, digits, dashes).
    #[arg(value_name = "NAME", required_unless_present = "name")]
    pub positional_name: Option<String>,
    /// Name (alternative to the positional argument).
    #[arg(long)]
    pub name: Option<String>,
    /// Template (base, dev, python, …).
    #[arg(long, short = 't', alias = "image")]
    pub template: Option<String>,
    /// Memory in MiB.
    #[arg(long, short = 'r')]
    pub ram: Option<i64>,
    /// vCPUs.
    #[arg(long)]
    pub vcpu: Option<i64>,
    /// Disk in MiB.
    #[arg(long, short = 'd')]
    pub disk: Option<i64>,
    /// Environment variables K=V.
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Setup scripts to run.
    #[arg(long = "setup-script-id")]
    pub setup_script_ids: Vec<String>,
    /// Service specs to install.
    #[arg(long = "service-spec-id")]
    pub service_spec_ids: Vec<String>,
}

impl NewArgs {
    fn name(&self) -> String {
        self.name.clone().or_else(|| self.positional_name.clone()).unwrap_or_default()
    }
    pub fn env_map(&self) -> anyhow::Result<BTreeMap<String, String>> {
        parse_env(&self.env)
    }
    fn request(&self) -> anyhow::Result<CreateWorkspaceRequest> {
        Ok(CreateWorkspaceRequest {
            name: self.name(),
            template_id: self.template.clone(),
            ram_mb: self.ram,
            vcpu_count: self.vcpu,
            disk_size_mb: self.disk,
            env_vars: Some(self.env_map()?).filter(|m| !m.is_empty()),
            setup_script_ids: Some(self.setup_script_ids.clone()).filter(|v| !v.is_empty()),
            service_spec_ids: Some(self.service_spec_ids.clone()).filter(|v| !v.is_empty()),
            ..Default::default()
        })
    }
}

/// Parses `K=V` pairs.
pub fn parse_env(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| p.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| anyhow::anyhow!("expected K=V, got {p:?}")))
        .collect()
}

/// `rig workspace`.
#[derive(Subcommand)]
pub enum Cmd {
    /// List workspaces.
    Ls,
    /// Create a workspace (does not boot it).
    New(NewArgs),
    /// Create, start and wait until it is running (quick deploy).
    Spawn(NewArgs),
    /// Show one workspace.
    Show { workspace: String },
    /// Start.
    Start {
        workspace: String,
        /// Wait until it is running.
        #[arg(long)]
        wait: bool,
    },
    /// Stop.
    Stop {
        workspace: String,
        /// Wait until it is stopped.
        #[arg(long)]
        wait: bool,
    },
    /// Stop then start.
    Restart { workspace: String },
    /// Delete (irreversible).
    Rm { workspace: String },
    /// Abort a boot.
    Cancel { workspace: String },
    /// Boot again after a failure.
    Retry { workspace: String },
    /// Change resources (stopped workspaces only).
    Resize {
        workspace: String,
        #[arg(long)]
        ram: Option<i64>,
        #[arg(long)]
        vcpu: Option<i64>,
        #[arg(long)]
        disk: Option<i64>,
    },
    /// Environment variables.
    #[command(subcommand)]
    Env(EnvCmd),
    /// Pause a running workspace (memory kept).
    Pause { workspace: String },
    /// Resume a paused workspace.
    Resume { workspace: String },
    /// Fork a running workspace into copies.
    Fork {
        workspace: String,
        /// How many.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Names of the forks.
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Live metrics.
    Metrics {
        workspace: String,
        /// Keep printing.
        #[arg(long)]
        watch: bool,
    },
    /// Logs.
    Logs {
        workspace: String,
        /// Follow.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Lines.
        #[arg(long, default_value_t = 200)]
        lines: u32,
    },
}

/// `rig workspace env`.
#[derive(Subcommand)]
pub enum EnvCmd {
    /// List.
    Ls { workspace: String },
    /// Set K=V pairs.
    Set { workspace: String, pairs: Vec<String> },
    /// Remove keys.
    Unset { workspace: String, keys: Vec<String> },
}

fn line(v: &Vm) -> String {
    format!("{:<14} {:<20} {:<12} {:>6} MiB {:>2} vCPU {:>6} MiB  {}", v.id, v.name, v.status, v.ram_mb, v.vcpu_count, v.disk_size_mb, v.template_id.clone().unwrap_or_default())
}

fn detail(w: &GetWorkspaceResponse) -> String {
    let v = &w.vm;
    let mut s = format!(
        "id:       {}\nname:     {}\nstatus:   {}\ntemplate: {}\nsize:     {} MiB RAM, {} vCPU, {} MiB disk\nnode:     {}\ncreated:  {}",
        v.id,
        v.name,
        v.status,
        v.template_id.clone().unwrap_or_default(),
        v.ram_mb,
        v.vcpu_count,
        v.disk_size_mb,
        v.node_id,
        v.created_at.to_rfc3339()
    );
    if let Some(f) = &w.failure {
        s.push_str(&format!("\nfailure:  {} ({}): {}", f.code, if f.retryable { "retryable" } else { "not retryable" }, f.message));
    }
    s
}

/// Waits with a spinner (or NDJSON events) until the workspace settles.
pub async fn wait(ctx: &Ctx, client: &Client, id: &str, want: &str) -> anyhow::Result<GetWorkspaceResponse> {
    let pb = (!ctx.json()).then(|| {
        let pb = ProgressBar::new_spinner();
        pb.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("static template"));
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    });
    let w = client
        .wait_settled(id, Duration::from_secs(600), |status| {
            if let Some(pb) = &pb {
                pb.set_message(format!("{id}: {status}"));
            }
            ctx.event(json!({"type": "vm_status", "id": id, "status": status}));
        })
        .await;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let w = w?;
    if w.vm.status != want {
        anyhow::bail!(
            "workspace {} is {} (wanted {want}){}",
            w.vm.name,
            w.vm.status,
            w.failure.as_ref().map(|f| format!(": {} {}", f.code, f.message)).unwrap_or_default()
        );
    }
    Ok(w)
}

pub async fn run(ctx: &Ctx, c: Cmd) -> anyhow::Result<()> {
    let client = ctx.client()?;
    match c {
        Cmd::Ls => {
            let vms = client.list_workspaces().await?;
            ctx.print(&json!({ "vms": vms }), || {
                if vms.is_empty() {
                    "no workspaces".into()
                } else {
                    vms.iter().map(line).collect::<Vec<_>>().join("\n")
                }
            });
        }
        Cmd::New(a) => {
            let w = client.create_workspace(&a.request()?).await?;
            ctx.print(&w, || format!("created {} ({}), status {}", w.vm.name, w.vm.id, w.vm.status));
        }
        Cmd::Spawn(a) => {
            // One call: quick deploy creates and starts (restoring a warm
            // template when one is ready); then wait with progress.
            let req = a.request()?;
            ctx.event(json!({"type": "creating", "name": req.name}));
            let body = json!({
                "template_id": req.template_id.clone().unwrap_or_else(|| "base".into()),
                "name": req.name,
                "ram_mb": req.ram_mb,
                "vcpu_count": req.vcpu_count,
                "disk_size_mb": req.disk_size_mb,
                "env_vars": req.env_vars,
                "setup_script_ids": req.setup_script_ids,
                "service_spec_ids": req.service_spec_ids,
            });
            let r: serde_json::Value = client.send(reqwest::Method::POST, "/quick-deploy", &body).await?;
            let id = r["workspace"]["id"].as_str().unwrap_or_default().to_string();
            ctx.event(json!({"type": "created", "id": id, "status": r["workspace"]["status"]}));
            ctx.event(json!({"type": "starting", "id": id}));
            let w = wait(ctx, &client, &id, "running").await?;
            ctx.print(&json!({"type": "ready", "id": w.vm.id, "name": w.vm.name, "status": w.vm.status}), || {
                format!("{} ({}) is running", w.vm.name, w.vm.id)
            });
        }
        Cmd::Show { workspace } => {
            let w = client.workspace(&workspace).await?;
            ctx.print(&w, || detail(&w));
        }
        Cmd::Start { workspace, wait: w } => {
            let r = client.action(&workspace, "start").await?;
            let r = if w { wait(ctx, &client, &r.vm.id, "running").await? } else { r };
            ctx.print(&r, || format!("{} is {}", r.vm.name, r.vm.status));
        }
        Cmd::Stop { workspace, wait: w } => {
            let r = client.action(&workspace, "stop").await?;
            let r = if w { wait(ctx, &client, &r.vm.id, "stopped").await? } else { r };
            ctx.print(&r, || format!("{} is {}", r.vm.name, r.vm.status));
        }
        Cmd::Restart { workspace } => {
            let r = client.action(&workspace, "stop").await?;
            wait(ctx, &client, &r.vm.id, "stopped").await?;
            client.action(&r.vm.id, "start").await?;
            let r = wait(ctx, &client, &r.vm.id, "running").await?;
            ctx.print(&r, || format!("{} is {}", r.vm.name, r.vm.status));
        }
        Cmd::Rm { workspace } => {
            let w = client.workspace(&workspace).await?;
            let r = client.delete_workspace(&w.vm.id).await?;
            ctx.print(&json!({"type": "removed", "workspace": w.vm.name, "workspace_id": w.vm.id, "message": r.message}), || r.message.clone());
        }
        Cmd::Cancel { workspace } => {
            let r = client.action(&workspace, "cancel").await?;
            ctx.print(&r, || format!("{} is {}", r.vm.name, r.vm.status));
        }
        Cmd::Retry { workspace } => {
            let r = client.action(&workspace, "retry").await?;
            ctx.print(&r, || format!("{} is {}", r.vm.name, r.vm.status));
        }
        Cmd::Resize { workspace, ram, vcpu, disk } => {
            let r = client.resize(&workspace, &ResizeWorkspaceRequest { ram_mb: ram, vcpu_count: vcpu, disk_size_mb: disk }).await?;
            ctx.print(&r, || format!("{}: {} MiB RAM, {} vCPU, {} MiB disk. {}", r.vm.name, r.vm.ram_mb, r.vm.vcpu_count, r.vm.disk_size_mb, r.message));
        }
        Cmd::Env(e) => env(ctx, &client, e).await?,
        Cmd::Pause { workspace } => super::snapshot::pause(ctx, &client, &workspace).await?,
        Cmd::Resume { workspace } => super::snapshot::resume(ctx, &client, &workspace).await?,
        Cmd::Fork { workspace, count, names } => super::snapshot::fork(ctx, &client, &workspace, count, names).await?,
        Cmd::Metrics { workspace, watch } => super::observe::metrics(ctx, &client, &workspace, watch).await?,
        Cmd::Logs { workspace, follow, lines } => super::observe::logs(ctx, &client, &workspace, follow, lines).await?,
    }
    Ok(())
}

async fn env(ctx: &Ctx, client: &Client, e: EnvCmd) -> anyhow::Result<()> {
    match e {
        EnvCmd::Ls { workspace } => {
            let w = client.workspace(&workspace).await?;
            let env = w.vm.env_vars.unwrap_or_default();
            ctx.print(&env, || env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("\n"));
        }
        EnvCmd::Set { workspace, pairs } => {
            let m = parse_env(&pairs)?;
            let keys: Vec<String> = m.keys().cloned().collect();
            let r = client.set_env(&workspace, m.into_iter().map(|(k, v)| (k, Some(v))).collect()).await?;
            ctx.print(&json!({"type": "env_set", "workspace": workspace, "keys": keys}), || r.message.clone());
        }
        EnvCmd::Unset { workspace, keys } => {
            let r = client.set_env(&workspace, keys.iter().map(|k| (k.clone(), None)).collect()).await?;
            ctx.print(&json!({"type": "env_unset", "workspace": workspace, "keys": keys}), || r.message.clone());
        }
    }
    Ok(())
}

pub async fn templates(ctx: &Ctx) -> anyhow::Result<()> {
    let r: TemplatesResponse = ctx.anonymous().get("/templates").await?;
    ctx.print(&r, || {
        r.templates
            .iter()
            .map(|t| format!("{:<10} {:>5} MiB {:>2} vCPU {:>6} MiB  {}", t.id, t.ram_mb, t.vcpu_count, t.disk_size_mb, t.description))
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}
