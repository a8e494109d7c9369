//! `rig ai`: a workspace's AI configuration, the credit wallet, usage.

use crate::ctx::Ctx;
use clap::Subcommand;
use serde_json::{json, Map, Value};

/// `rig ai`.
#[derive(Subcommand)]
pub enum Cmd {
    /// Show or change a workspace's AI configuration (`--mode inherit` clears the override).
    Config {
        workspace: String,
        /// `managed`, `byok`, or `inherit` (use the account mode).
        #[arg(long)]
        mode: Option<String>,
        /// `openai`, `anthropic` or `google` (BYOK).
        #[arg(long)]
        provider: Option<String>,
        /// Default model.
        #[arg(long)]
        model: Option<String>,
        /// Read the API key (BYOK) from standard input; it is stored encrypted and never shown.
        #[arg(long)]
        api_key_stdin: bool,
        /// Remove the stored API key.
        #[arg(long, conflicts_with = "api_key_stdin")]
        clear_key: bool,
    },
    /// Credit balance (1 credit = 1,000,000 micro-credits).
    Credits {
        /// Also list the latest wallet movements.
        #[arg(long)]
        ledger: bool,
    },
    /// Usage: daily and per workspace, or totals and series for a range.
    Usage {
        /// Only this workspace (with --range).
        #[arg(long)]
        workspace: Option<String>,
        /// `1h`, `6h`, `24h` or `7d`: totals and series instead of the daily report.
        #[arg(long)]
        range: Option<String>,
        /// Days of the daily report.
        #[arg(long, default_value_t = 30)]
        days: i64,
    },
}

fn credits_line(c: &Value) -> String {
    format!(
        "{:.6} credits remaining ({} micro) of {:.6} granted; account mode {}",
        c["remaining"].as_f64().unwrap_or(0.0),
        c["remaining_micro"],
        c["total"].as_f64().unwrap_or(0.0),
        c["mode"].as_str().unwrap_or("?")
    )
}

pub async fn run(ctx: &Ctx, c: Cmd) -> anyhow::Result<()> {
    let client = ctx.client()?;
    match c {
        Cmd::Config { workspace, mode, provider, model, api_key_stdin, clear_key } => {
            let mut patch = Map::new();
            if let Some(m) = mode {
                patch.insert("mode".into(), if m == "inherit" { Value::Null } else { json!(m) });
            }
            if let Some(p) = provider {
                patch.insert("provider".into(), json!(p));
            }
            if let Some(m) = model {
                patch.insert("model".into(), json!(m));
            }
            if api_key_stdin {
                let key = std::io::read_to_string(std::io::stdin())?.trim().to_string();
                anyhow::ensure!(!key.is_empty(), "no API key on standard input");
                patch.insert("api_key".into(), json!(key));
            }
            if clear_key {
                patch.insert("api_key".into(), Value::Null);
            }
            let path = format!("/workspaces/{workspace}/ai-config");
            let r: Value = if patch.is_empty() { client.get(&path).await? } else { client.send(reqwest::Method::PUT, &path, &Value::Object(patch)).await? };
            let m: Value = client.get(&format!("/workspaces/{workspace}/mode")).await?;
            ctx.print(&r, || {
                format!(
                    "mode      {} (from {})\nprovider  {}\nmodel     {}\nstatus    {}\nupdated   {}",
                    r["mode"].as_str().unwrap_or(""),
                    m["source"].as_str().unwrap_or(""),
                    r["provider"].as_str().unwrap_or(""),
                    r["model"].as_str().unwrap_or(""),
                    r["status"].as_str().unwrap_or(""),
                    r["updated_at"].as_str().unwrap_or("")
                )
            });
        }
        Cmd::Credits { ledger } => {
            let c: Value = client.get("/users/me/credits").await?;
            if !ledger {
                ctx.print(&c, || credits_line(&c));
                return Ok(());
            }
            let l: Value = client.get("/users/me/ai-ledger?limit=20").await?;
            let both = json!({"credits": c, "ledger": l["entries"]});
            ctx.print(&both, || {
                let mut s = credits_line(&c);
                for e in l["entries"].as_array().cloned().unwrap_or_default() {
                    s.push_str(&format!(
                        "\n{:>6}  {:<8} {:>14} micro  {}",
                        e["id"],
                        e["kind"].as_str().unwrap_or(""),
                        e["amount_micro"],
                        e["request_id"].as_str().or(e["note"].as_str()).unwrap_or("")
                    ));
                }
                s
            });
        }
        Cmd::Usage { workspace, range, days } => match range {
            Some(r) => {
                let base = match &workspace {
                    Some(w) => format!("/workspaces/{w}/ai-usage/metrics"),
                    None => "/users/me/ai-usage/metrics".into(),
                };
                let s: Value = client.get(&format!("{base}/summary?range={r}")).await?;
                let m: Value = client.get(&format!("{base}?range={r}")).await?;
                let both = json!({"summary": s, "metrics": m});
                ctx.print(&both, || {
                    format!(
                        "last {}: {} requests, {} input + {} output tokens, {:.6} credits",
                        s["range"].as_str().unwrap_or(""),
                        s["total_requests"],
                        s["input_tokens"],
                        s["output_tokens"],
                        s["total_credits"].as_f64().unwrap_or(0.0)
                    )
                });
            }
            None => {
                anyhow::ensure!(workspace.is_none(), "--workspace needs --range");
                let u: Value = client.get(&format!("/users/me/ai-usage?days={days}")).await?;
                ctx.print(&u, || {
                    let mut s = format!("{:<12} {:>8} {:>12} {:>12} {:>14}", "day", "requests", "input", "output", "credits");
                    for d in u["daily"].as_array().cloned().unwrap_or_default() {
                        s.push_str(&format!(
                            "\n{:<12} {:>8} {:>12} {:>12} {:>14.6}",
                            d["day"].as_str().unwrap_or(""),
                            d["requests"],
                            d["input_tokens"],
                            d["output_tokens"],
                            d["credits"].as_f64().unwrap_or(0.0)
                        ));
                    }
                    s.push_str(&format!("\n\n{:<16} {:<20} {:>8} {:>14}", "workspace", "name", "requests", "credits"));
                    for w in u["by_workspace"].as_array().cloned().unwrap_or_default() {
                        s.push_str(&format!(
                            "\n{:<16} {:<20} {:>8} {:>14.6}",
                            w["workspace_id"].as_str().unwrap_or(""),
                            w["workspace_name"].as_str().unwrap_or(""),
                            w["requests"],
                            w["credits"].as_f64().unwrap_or(0.0)
                        ));
                    }
                    s
                });
            }
        },
    }
    Ok(())
}
