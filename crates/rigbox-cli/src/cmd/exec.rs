//! `rig exec` and `rig cp`.

use crate::ctx::{Ctx, Exit};
use clap::Args as ClapArgs;
use futures::StreamExt;
use rigbox_client::views::ExecRequest;
use serde_json::json;
use std::io::Write;

/// `rig exec WS [--env K=V] [--cwd DIR] [--user U] -- CMD ARGS...`
#[derive(ClapArgs)]
pub struct Args {
    /// Workspace name or id.
    workspace: String,
    /// Extra environment K=V.
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Working directory.
    #[arg(long)]
    cwd: Option<String>,
    /// User (default developer).
    #[arg(long)]
    user: Option<String>,
    /// Timeout in seconds.
    #[arg(long)]
    timeout: Option<u64>,
    /// The command: one argument is a shell line, several are an argv.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub async fn exec(ctx: &Ctx, a: Args) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let command = if a.command.len() == 1 { json!(a.command[0]) } else { json!(a.command) };
    let req = ExecRequest {
        command,
        env: super::workspace::parse_env(&a.env)?,
        cwd: a.cwd,
        user: a.user,
        timeout: a.timeout,
        stdin: None,
    };
    let resp = client.exec_stream(&a.workspace, &req).await?;
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut code = 1;
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let Ok(ev) = serde_json::from_slice::<serde_json::Value>(&line) else { continue };
            if ctx.json() {
                println!("{ev}");
            }
            match ev["type"].as_str() {
                Some("stdout") if !ctx.json() => {
                    let mut o = std::io::stdout().lock();
                    let _ = o.write_all(ev["data"].as_str().unwrap_or("").as_bytes());
                    let _ = o.flush();
                }
                Some("stderr") if !ctx.json() => {
                    let mut e = std::io::stderr().lock();
                    let _ = e.write_all(ev["data"].as_str().unwrap_or("").as_bytes());
                    let _ = e.flush();
                }
                Some("exit") => {
                    code = ev["exit_code"].as_i64().map(|c| c as i32).unwrap_or_else(|| 128 + ev["signal"].as_i64().unwrap_or(9) as i32);
                }
                Some("error") => anyhow::bail!("{}", ev["message"].as_str().unwrap_or("exec failed")),
                _ => {}
            }
        }
    }
    if code == 0 {
        Ok(())
    } else {
        Err(Exit(code).into())
    }
}

/// `rig cp SRC DST` where one side is `WS:/path`.
#[derive(ClapArgs)]
pub struct CpArgs {
    /// Source: a local path or WS:/path.
    src: String,
    /// Destination: a local path or WS:/path.
    dst: String,
}

fn remote(s: &str) -> Option<(&str, &str)> {
    let (ws, path) = s.split_once(':')?;
    path.starts_with('/').then_some((ws, path))
}

pub async fn cp(ctx: &Ctx, a: CpArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    match (remote(&a.src), remote(&a.dst)) {
        (None, Some((ws, path))) => {
            let data = tokio::fs::read(&a.src).await?;
            let n = data.len();
            let info = client.upload(ws, path, data).await?;
            ctx.print(&info, || format!("{n} bytes -> {ws}:{path}"));
        }
        (Some((ws, path)), None) => {
            let data = client.download(ws, path).await?;
            tokio::fs::write(&a.dst, &data).await?;
            ctx.print(&json!({"bytes": data.len(), "path": a.dst}), || format!("{ws}:{path} -> {} ({} bytes)", a.dst, data.len()));
        }
        _ => anyhow::bail!("exactly one side must be WORKSPACE:/absolute/path"),
    }
    Ok(())
}
