//! `rig workspace metrics WS [--watch]` and `rig workspace logs WS [-f] [--lines N]`.

use crate::ctx::Ctx;
use futures::StreamExt;
use rigbox_client::{Client, ClientError};
use serde_json::Value;

/// One server-sent event.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SseEvent {
    /// `event:` (empty when none was given).
    pub event: String,
    /// `data:` lines joined with newlines.
    pub data: String,
    /// `id:`.
    pub id: Option<String>,
}

/// Incremental parser of a `text/event-stream`.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: String,
    cur: SseEvent,
}

impl SseParser {
    /// Feeds bytes; returns the events they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.push_str(&String::from_utf8_lossy(bytes));
        let mut out = Vec::new();
        while let Some(i) = self.buf.find('\n') {
            let line = self.buf[..i].trim_end_matches('\r').to_string();
            self.buf.drain(..=i);
            if line.is_empty() {
                let e = std::mem::take(&mut self.cur);
                if !e.data.is_empty() || !e.event.is_empty() {
                    out.push(e);
                }
            } else if line.starts_with(':') {
                // A comment (keep-alive).
            } else {
                let (field, value) = line.split_once(':').map(|(f, v)| (f, v.strip_prefix(' ').unwrap_or(v))).unwrap_or((line.as_str(), ""));
                match field {
                    "event" => self.cur.event = value.to_string(),
                    "data" => {
                        if !self.cur.data.is_empty() {
                            self.cur.data.push('\n');
                        }
                        self.cur.data.push_str(value);
                    }
                    "id" => self.cur.id = Some(value.to_string()),
                    _ => {}
                }
            }
        }
        out
    }
}

async fn open_stream(client: &Client, path: &str, last_id: Option<&str>) -> anyhow::Result<reqwest::Response> {
    let mut req = client.request(reqwest::Method::GET, path).header("accept", "text/event-stream");
    if let Some(id) = last_id {
        req = req.header("last-event-id", id);
    }
    let r = req.send().await.map_err(|e| ClientError::Transport { url: client.base().to_string(), message: e.to_string() })?;
    if !r.status().is_success() {
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or_default();
        return Err(ClientError::Api {
            status,
            code: v["error"]["code"].as_str().unwrap_or("error").to_string(),
            message: v["error"]["message"].as_str().unwrap_or("request failed").to_string(),
            retry_after: None,
        }
        .into());
    }
    Ok(r)
}

fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

fn human_bps(bits: f64) -> String {
    if bits >= 1e6 {
        format!("{:.1} Mbit/s", bits / 1e6)
    } else if bits >= 1e3 {
        format!("{:.1} kbit/s", bits / 1e3)
    } else {
        format!("{bits:.0} bit/s")
    }
}

fn pct(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!(" ({:.0}%)", a * 100.0 / b)
    } else {
        String::new()
    }
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(0.0)
}

/// The live point as a few lines for people.
pub fn live_text(m: &Value, summary: Option<&Value>) -> String {
    let mut out = vec![
        format!("CPU       {:.1}%{}", f(m, "cpu_percent"), if m["guest_metrics_fresh"] == false { "  (host view: the guest agent did not answer)" } else { "" }),
        format!("Memory    {:.0} / {:.0} MiB{}", f(m, "ram_used_mb"), f(m, "ram_total_mb"), pct(f(m, "ram_used_mb"), f(m, "ram_total_mb"))),
        format!("Disk      {:.0} / {:.0} MiB{}", f(m, "disk_used_mb"), f(m, "disk_total_mb"), pct(f(m, "disk_used_mb"), f(m, "disk_total_mb"))),
        format!(
            "Network   in {} ({}), out {} ({})",
            human_bytes(f(m, "network_rx_bytes")),
            human_bps(f(m, "network_rx_bps")),
            human_bytes(f(m, "network_tx_bytes")),
            human_bps(f(m, "network_tx_bps"))
        ),
        format!("Updated   {}", m["updated_at"].as_str().unwrap_or("-")),
    ];
    if let Some(s) = summary {
        out.push(format!(
            "Last hour CPU avg {:.1}%, p95 {:.1}%; memory avg {:.0} MiB; in {}, out {}",
            f(s, "cpu_avg_percent"),
            f(s, "cpu_p95_percent"),
            f(s, "memory_used_mb"),
            human_bytes(f(s, "network_rx_bytes")),
            human_bytes(f(s, "network_tx_bytes"))
        ));
    }
    out.join("\n")
}

/// One line of `--watch` output.
pub fn watch_line(m: &Value) -> String {
    let time = m["updated_at"].as_str().and_then(|t| t.get(11..19)).unwrap_or("--:--:--");
    format!(
        "{time}  {:>6.1}  {:>6.0}/{:<6.0}  {:>7.0}/{:<7.0}  {:>12}  {:>12}",
        f(m, "cpu_percent"),
        f(m, "ram_used_mb"),
        f(m, "ram_total_mb"),
        f(m, "disk_used_mb"),
        f(m, "disk_total_mb"),
        human_bps(f(m, "network_rx_bps")),
        human_bps(f(m, "network_tx_bps"))
    )
}

pub async fn metrics(ctx: &Ctx, client: &Client, ws: &str, watch: bool) -> anyhow::Result<()> {
    if !watch {
        let m: Value = client.get(&format!("/workspaces/{ws}/metrics")).await?;
        let s: Option<Value> = client.get(&format!("/workspaces/{ws}/metrics/summary?range=1h")).await.ok();
        let both = serde_json::json!({ "metrics": m, "summary_1h": s });
        ctx.print(&both, || live_text(&m, s.as_ref()));
        return Ok(());
    }
    let resp = open_stream(client, &format!("/workspaces/{ws}/metrics/stream"), None).await?;
    if !ctx.json() {
        println!("{:8}  {:>6}  {:>13}  {:>15}  {:>12}  {:>12}", "TIME", "CPU%", "MEM MiB", "DISK MiB", "NET IN", "NET OUT");
    }
    let mut parser = SseParser::default();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| anyhow::anyhow!("the metrics stream broke: {e}"))?;
        for e in parser.feed(&chunk) {
            if e.event != "metrics" {
                continue;
            }
            let m: Value = serde_json::from_str(&e.data).unwrap_or_default();
            if ctx.json() {
                ctx.event(m);
            } else {
                println!("{}", watch_line(&m));
            }
        }
    }
    Ok(())
}

/// A log line for people: the journal's time (UTC, to the second), then the text.
pub fn log_text(l: &Value) -> String {
    match l["timestamp"].as_str() {
        Some(t) if t.len() >= 19 => format!("{} {}", &t[..19].replace('T', " "), l["message"].as_str().unwrap_or("")),
        _ => l["message"].as_str().unwrap_or("").to_string(),
    }
}

pub async fn logs(ctx: &Ctx, client: &Client, ws: &str, follow: bool, lines: u32) -> anyhow::Result<()> {
    let lines = lines.clamp(1, 1000);
    if !follow {
        let v: Value = client.get(&format!("/workspaces/{ws}/logs?lines={lines}&direction=newest")).await?;
        let mut text: Vec<String> = v["lines"].as_array().map(|a| a.iter().map(log_text).collect()).unwrap_or_default();
        text.reverse();
        ctx.print(&v, || text.join("\n"));
        return Ok(());
    }
    // Follow: the stream sends the last lines, then new ones; after a broken
    // connection it resumes from the last event id.
    let mut last_id: Option<String> = None;
    let mut failures = 0u32;
    loop {
        let path = format!("/workspaces/{ws}/logs/stream?lines={lines}&interval_ms=1000");
        let resp = match open_stream(client, &path, last_id.as_deref()).await {
            Ok(r) => r,
            Err(e) if last_id.is_some() && failures < 10 => {
                failures += 1;
                eprintln!("reconnecting ({e})");
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut parser = SseParser::default();
        let mut body = resp.bytes_stream();
        while let Some(Ok(chunk)) = body.next().await {
            for e in parser.feed(&chunk) {
                if e.id.is_some() {
                    last_id = e.id.clone();
                }
                let v: Value = serde_json::from_str(&e.data).unwrap_or_default();
                match e.event.as_str() {
                    "log" => {
                        failures = 0;
                        if ctx.json() {
                            ctx.event(v);
                        } else {
                            println!("{}", log_text(&v));
                        }
                    }
                    "end" => {
                        eprintln!("log stream ended: {}", v["reason"].as_str().unwrap_or(""));
                        return Ok(());
                    }
                    "error" => eprintln!("log stream: {}", v["message"].as_str().unwrap_or("error")),
                    _ => {}
                }
            }
        }
        failures += 1;
        if failures >= 10 || last_id.is_none() {
            anyhow::bail!("the log stream ended unexpectedly");
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_parsed_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.feed(b": keep-alive\n\nevent: log\ndata: {\"a\"").is_empty());
        let e = p.feed(b":1}\nid: c:10:2\n\nevent: end\r\ndata: x\r\ndata: y\r\n\r\n");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0], SseEvent { event: "log".into(), data: "{\"a\":1}".into(), id: Some("c:10:2".into()) });
        assert_eq!((e[1].event.as_str(), e[1].data.as_str()), ("end", "x\ny"));
    }

    #[test]
    fn metrics_read_well() {
        let m = serde_json::json!({"cpu_percent": 12.5, "ram_used_mb": 256, "ram_total_mb": 512, "disk_used_mb": 400, "disk_total_mb": 2000,
            "network_rx_bytes": 2048, "network_rx_bps": 1500.0, "network_tx_bytes": 10, "network_tx_bps": 0.0, "updated_at": "2026-01-02T03:04:05.000Z", "guest_metrics_fresh": true});
        let t = live_text(&m, None);
        assert!(t.contains("CPU       12.5%") && t.contains("256 / 512 MiB (50%)") && t.contains("in 2.0 KiB (1.5 kbit/s)"), "{t}");
        assert!(watch_line(&m).starts_with("03:04:05    12.5"));
        assert_eq!(log_text(&serde_json::json!({"message": "hi", "timestamp": "2026-01-02T03:04:05.123456Z"})), "2026-01-02 03:04:05 hi");
        assert_eq!(log_text(&serde_json::json!({"message": "console", "timestamp": null})), "console");
    }
}
