//! `rig app`: apps (routes from `{name}.{base domain}` to a workspace port).

use crate::ctx::Ctx;
use clap::Subcommand;
use rigbox_client::Client;
use serde_json::{json, Value};

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

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_default()
}

fn line(a: &Value) -> String {
    format!(
        "{:<14} {:<20} {:<8} {:>5}  {:<10} {:<9} {}",
        s(a, "id"),
        s(a, "name"),
        s(a, "app_kind"),
        a["port"].as_i64().unwrap_or_default(),
        s(a, "visibility"),
        s(a, "status"),
        s(a, "url")
    )
}

/// Finds an app by id, name or subdomain among the caller's.
async fn resolve(client: &Client, app: &str) -> anyhow::Result<Value> {
    if app.starts_with("app-") {
        if let Ok(v) = client.get::<Value>(&format!("/apps/{app}")).await {
            return Ok(v["app"].clone());
        }
    }
    let v: Value = client.get("/apps").await?;
    let matches: Vec<&Value> = v["apps"].as_array().map(|a| a.iter().filter(|x| s(x, "name") == app || s(x, "subdomain") == app).collect()).unwrap_or_default();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => anyhow::bail!("no app {app:?}"),
        _ => anyhow::bail!("several apps are named {app:?}: use the id"),
    }
}

pub async fn run(ctx: &Ctx, c: Cmd) -> anyhow::Result<()> {
    let client = ctx.client()?;
    match c {
        Cmd::Ls { workspace } => {
            let path = match &workspace {
                Some(w) => format!("/apps?workspace_id={w}"),
                None => "/apps".into(),
            };
            let v: Value = client.get(&path).await?;
            ctx.print(&v, || {
                let apps = v["apps"].as_array().cloned().unwrap_or_default();
                if apps.is_empty() {
                    "no apps".into()
                } else {
                    apps.iter().map(line).collect::<Vec<_>>().join("\n")
                }
            });
        }
        Cmd::Create { workspace, name, port } => {
            let v: Value = client.send(reqwest::Method::POST, "/apps", &json!({"workspace_id": workspace, "name": name, "port": port})).await?;
            let a = &v["app"];
            ctx.print(&v, || format!("created {} ({}): {} ({}; share it with `rig app visibility {} public`)", s(a, "name"), s(a, "id"), s(a, "url"), s(a, "visibility"), s(a, "name")));
        }
        Cmd::Rm { app } => {
            let a = resolve(&client, &app).await?;
            let v: Value = client.call(reqwest::Method::DELETE, &format!("/apps/{}", s(&a, "id"))).await?;
            ctx.print(&json!({"type": "removed", "app": s(&a, "name"), "app_id": s(&a, "id"), "message": v["message"]}), || s(&v, "message").to_string());
        }
        Cmd::Visibility { app, visibility, emails } => {
            let a = resolve(&client, &app).await?;
            let mut body = json!({"visibility": visibility});
            if !emails.is_empty() {
                body["allowed_emails"] = json!(emails);
            }
            let v: Value = client.send(reqwest::Method::PUT, &format!("/apps/{}/visibility", s(&a, "id")), &body).await?;
            let a = &v["app"];
            ctx.print(&v, || {
                let list = a["allowed_emails"].as_array().map(|l| l.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default();
                if s(a, "visibility") == "privileged" {
                    format!("{} is privileged: the owner and {}", s(a, "name"), if list.is_empty() { "nobody else".into() } else { list })
                } else {
                    format!("{} is {}", s(a, "name"), s(a, "visibility"))
                }
            });
        }
        Cmd::Health { app } => {
            let a = resolve(&client, &app).await?;
            let v: Value = client.get(&format!("/apps/{}/health", s(&a, "id"))).await?;
            ctx.print(&v, || {
                let mut out = format!(
                    "{}: {}\n  port {} {}\n  service {}",
                    s(&a, "name"),
                    if v["live"] == true { "live" } else { "NOT live" },
                    a["port"],
                    if v["port_open"] == true { "open" } else { "closed" },
                    s(&v, "service_status")
                );
                if v["port_drift"] == true {
                    out.push_str("\n  port drift: the unit is active but the port is closed");
                }
                if let Some(d) = v["detail"].as_str() {
                    out.push_str(&format!("\n  {d}"));
                }
                out
            });
            if v["live"] != true {
                return Err(crate::ctx::Exit(1).into());
            }
        }
    }
    Ok(())
}
