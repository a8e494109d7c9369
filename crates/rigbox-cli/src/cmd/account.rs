//! login, logout, whoami, api-key, admin.

use crate::config;
use crate::ctx::Ctx;
use clap::{Args, Subcommand};
use rigbox_client::views::{CreateApiKeyResponse, CreateUserResponse, ListApiKeysResponse, ListUsersResponse, MessageResponse};
use rigbox_client::Client;
use serde_json::json;

/// `rig login`.
#[derive(Args)]
pub struct LoginArgs {
    /// API URL (default: the saved one, or http://127.0.0.1:8080).
    #[arg(long)]
    url: Option<String>,
    /// The API key (default: read from standard input).
    #[arg(long)]
    key: Option<String>,
}

pub async fn login(ctx: &Ctx, a: LoginArgs) -> anyhow::Result<()> {
    let url = a.url.unwrap_or_else(|| ctx.url.clone());
    let key = match a.key {
        Some(k) => k,
        None => {
            if !ctx.json() {
                eprint!("API key: ");
            }
            let mut s = String::new();
            std::io::stdin().read_line(&mut s)?;
            s.trim().to_string()
        }
    };
    let me = Client::new(&url, Some(key.clone())).me().await?;
    let path = config::save(&config::Config { api_url: Some(url.clone()), api_key: Some(key) })?;
    ctx.print(&json!({"type": "saved", "path": path, "user_email": me.email, "api_url": url}), || {
        format!("Logged in to {url} as {} (saved to {})", me.email, path.display())
    });
    Ok(())
}

pub async fn logout(ctx: &Ctx) -> anyhow::Result<()> {
    let mut c = config::load();
    c.api_key = None;
    let path = config::save(&c)?;
    ctx.print(&json!({"type": "logged_out", "path": path}), || "Logged out".into());
    Ok(())
}

pub async fn whoami(ctx: &Ctx) -> anyhow::Result<()> {
    let me = ctx.client()?.me().await?;
    ctx.print(&json!({"authed": true, "user_email": me.email, "user_id": me.id, "is_admin": me.is_admin, "api_url": ctx.url}), || {
        format!("{} ({}){} at {}", me.email, me.id, if me.is_admin { ", admin" } else { "" }, ctx.url)
    });
    Ok(())
}

/// `rig api-key`.
#[derive(Subcommand)]
pub enum KeyCmd {
    /// Mint a key (shown once).
    Create {
        /// Label.
        #[arg(long)]
        name: Option<String>,
    },
    /// List keys.
    Ls,
    /// Revoke a key.
    Rm {
        /// Key id.
        id: String,
    },
}

pub async fn keys(ctx: &Ctx, c: KeyCmd) -> anyhow::Result<()> {
    let client = ctx.client()?;
    match c {
        KeyCmd::Create { name } => {
            let r: CreateApiKeyResponse = client.send(reqwest::Method::POST, "/api-keys", &json!({ "name": name })).await?;
            ctx.print(&r, || format!("{}\n(key id {}; this is the only time the key is shown)", r.key, r.id));
        }
        KeyCmd::Ls => {
            let r: ListApiKeysResponse = client.get("/api-keys").await?;
            ctx.print(&r, || {
                r.api_keys
                    .iter()
                    .map(|k| {
                        format!(
                            "{}  {:<16} {}  last used {}",
                            k.id,
                            k.name.clone().unwrap_or_default(),
                            k.key_preview,
                            k.last_used_at.map(|t| t.to_rfc3339()).unwrap_or_else(|| "never".into())
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        KeyCmd::Rm { id } => {
            let r: MessageResponse = client.call(reqwest::Method::DELETE, &format!("/api-keys/{id}")).await?;
            ctx.print(&r, || r.message.clone());
        }
    }
    Ok(())
}

/// `rig admin`.
#[derive(Subcommand)]
pub enum AdminCmd {
    /// Create a user and mint their first key.
    UserAdd {
        /// Email.
        email: String,
        /// Make them an administrator.
        #[arg(long)]
        admin: bool,
    },
    /// List users.
    Users,
}

pub async fn admin(ctx: &Ctx, c: AdminCmd) -> anyhow::Result<()> {
    let client = ctx.client()?;
    match c {
        AdminCmd::UserAdd { email, admin } => {
            let r: CreateUserResponse = client.send(reqwest::Method::POST, "/admin/users", &json!({"email": email, "is_admin": admin})).await?;
            ctx.print(&r, || format!("user {} ({})\nAPI key (shown once): {}", r.user.email, r.user.id, r.api_key.key));
        }
        AdminCmd::Users => {
            let r: ListUsersResponse = client.get("/admin/users").await?;
            ctx.print(&r, || r.users.iter().map(|u| format!("{}  {}{}", u.id, u.email, if u.is_admin { "  admin" } else { "" })).collect::<Vec<_>>().join("\n"));
        }
    }
    Ok(())
}
