//! `rig ssh` and `rig ssh-key`.
//!
//! `rig ssh WS` asks the API where the SSH gateway is
//! (`GET /workspaces/{id}/ssh-info`) and replaces itself with the system
//! `ssh -p PORT WS@HOST`, so the terminal, the exit code and the user's SSH
//! agent and config behave as with plain `ssh`. `RIGBOX_SSH_HOST` overrides
//! the host (e.g. when the gateway is reached through another name).

use crate::ctx::{Ctx, Exit};
use clap::{Args as ClapArgs, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};
use std::path::PathBuf;

/// `rig ssh WS`.
#[derive(ClapArgs)]
pub struct Args {
    /// Workspace name or id.
    pub workspace: String,
    /// Start the workspace first when it is stopped (user `WS+start`).
    #[arg(long)]
    pub start: bool,
    /// Identity file passed to ssh (`-i`).
    #[arg(long, short = 'i')]
    pub identity: Option<PathBuf>,
    /// Print the ssh command instead of running it.
    #[arg(long)]
    pub print: bool,
    /// Extra argument for ssh, e.g. `--ssh-arg=-oStrictHostKeyChecking=accept-new` (repeatable).
    #[arg(long = "ssh-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub ssh_args: Vec<String>,
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
        /// Public key file (default ~/.ssh/id_ed25519.pub, else id_ecdsa.pub, else id_rsa.pub).
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// List keys.
    Ls,
    /// Remove a key (by id or name).
    Rm { key: String },
}

/// The `ssh` argv for a gateway target.
pub fn ssh_argv(info: &Value, a: &Args, host_override: Option<String>) -> anyhow::Result<Vec<String>> {
    let user = info["user"].as_str().ok_or_else(|| anyhow::anyhow!("ssh-info has no user"))?;
    let host = host_override.or_else(|| info["host"].as_str().map(str::to_string)).ok_or_else(|| anyhow::anyhow!("ssh-info has no host"))?;
    let port = info["port"].as_u64().ok_or_else(|| anyhow::anyhow!("ssh-info has no port"))?;
    let mut argv = vec!["ssh".to_string(), "-p".into(), port.to_string()];
    if let Some(i) = &a.identity {
        argv.push("-i".into());
        argv.push(i.display().to_string());
    }
    argv.extend(a.ssh_args.iter().cloned());
    let suffix = if a.start { "+start" } else { "" };
    argv.push(format!("{user}{suffix}@{host}"));
    if !a.command.is_empty() {
        argv.push("--".into());
        argv.extend(a.command.iter().cloned());
    }
    Ok(argv)
}

pub async fn ssh(ctx: &Ctx, a: Args) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let info: Value = client.get(&format!("/workspaces/{}/ssh-info", a.workspace)).await?;
    let host = std::env::var("RIGBOX_SSH_HOST").ok().filter(|h| !h.is_empty());
    let argv = ssh_argv(&info, &a, host)?;
    if a.print || ctx.json() {
        ctx.print(&json!({"type": "ssh_info", "workspace": info["workspace"], "workspace_id": info["workspace_id"], "status": info["status"], "user": info["user"], "host": info["host"], "port": info["port"], "ssh_target": info["ssh_target"], "argv": argv}), || argv.join(" "));
        return Ok(());
    }
    if info["status"].as_str() != Some("running") && !a.start {
        eprintln!("note: workspace {} is {}; use --start to start it on connect", a.workspace, info["status"].as_str().unwrap_or("?"));
    }
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
    // exec only returns on failure.
    eprintln!("error: cannot run ssh: {err} (install the OpenSSH client)");
    Err(Exit(255).into())
}

fn default_key_file() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from).ok_or_else(|| anyhow::anyhow!("HOME is not set; pass --file"))?;
    for name in ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"] {
        let p = home.join(".ssh").join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    anyhow::bail!("no public key in ~/.ssh (create one with `ssh-keygen -t ed25519`, or pass --file)")
}

pub async fn keys(ctx: &Ctx, c: KeyCmd) -> anyhow::Result<()> {
    let client = ctx.client()?;
    match c {
        KeyCmd::Add { name, file } => {
            let path = match file {
                Some(f) => f,
                None => default_key_file()?,
            };
            let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            let k: Value = client.send(Method::POST, "/ssh-keys", &json!({"name": name, "public_key": text.trim()})).await?;
            ctx.print(&k, || format!("Added SSH key {:?} ({}) from {}", k["name"].as_str().unwrap_or(""), k["fingerprint"].as_str().unwrap_or(""), path.display()));
        }
        KeyCmd::Ls => {
            let r: Value = client.get("/ssh-keys").await?;
            ctx.print(&r, || {
                let keys = r["ssh_keys"].as_array().cloned().unwrap_or_default();
                if keys.is_empty() {
                    return "No SSH keys. Add one with `rig ssh-key add --name laptop`.".into();
                }
                let mut out = format!("{:<36}  {:<20}  {:<50}  CREATED", "ID", "NAME", "FINGERPRINT");
                for k in keys {
                    out.push_str(&format!(
                        "\n{:<36}  {:<20}  {:<50}  {}",
                        k["id"].as_str().unwrap_or(""),
                        k["name"].as_str().unwrap_or(""),
                        k["fingerprint"].as_str().unwrap_or(""),
                        k["created_at"].as_str().unwrap_or("")
                    ));
                }
                out
            });
        }
        KeyCmd::Rm { key } => {
            let r: Value = client.get("/ssh-keys").await?;
            let keys = r["ssh_keys"].as_array().cloned().unwrap_or_default();
            let found = keys.iter().find(|k| k["id"].as_str() == Some(&key)).or_else(|| keys.iter().find(|k| k["name"].as_str() == Some(&key)));
            let Some(k) = found else {
                anyhow::bail!("no SSH key with id or name {key:?}");
            };
            let id = k["id"].as_str().unwrap_or_default().to_string();
            let m: Value = client.call(Method::DELETE, &format!("/ssh-keys/{id}")).await?;
            ctx.print(&m, || format!("Removed SSH key {:?}", k["name"].as_str().unwrap_or(&id)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_ssh_command() {
        let info = json!({"user": "box", "host": "127.0.0.1", "port": 2222, "status": "running"});
        let mut a = Args { workspace: "box".into(), start: false, identity: None, print: false, ssh_args: vec![], command: vec![] };
        assert_eq!(ssh_argv(&info, &a, None).unwrap(), ["ssh", "-p", "2222", "box@127.0.0.1"]);
        a.start = true;
        a.command = vec!["uname".into(), "-a".into()];
        assert_eq!(ssh_argv(&info, &a, Some("gw.example".into())).unwrap(), ["ssh", "-p", "2222", "box+start@gw.example", "--", "uname", "-a"]);
    }
}
