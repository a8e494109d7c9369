//! Benchmark section: the app edge. Requests per second and p99 latency of
//! a small keep-alive HTTP/1.1 server inside a workspace, through the edge
//! (loopback → edge → node tunnel → VM) next to the same server reached
//! directly from inside the workspace's network namespace, with `wrk` at 1
//! and 64 connections.

use crate::report::Row;
use crate::{BenchEnv, Section};
use rigbox_client::views::{CreateWorkspaceRequest, ExecRequest};
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

/// A keep-alive server answering `ok` (Python standard library).
const SERVER_PY: &str = r#"
import sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"#;

/// One wrk run: (requests per second, p99 latency in ms, errors).
#[derive(Debug, Clone, Copy)]
struct Wrk {
    rps: f64,
    p99_ms: f64,
    errors: u64,
}

fn ms_of(v: &str) -> Option<f64> {
    let v = v.trim();
    let (num, unit) = v.find(|c: char| c.is_ascii_alphabetic()).map(|i| v.split_at(i)).unwrap_or((v, "s"));
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

fn parse_wrk(out: &str) -> anyhow::Result<Wrk> {
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no Requests/sec in wrk output:\n{out}"))?;
    let p99_ms = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(ms_of)
        .ok_or_else(|| anyhow::anyhow!("no 99% latency in wrk output:\n{out}"))?;
    let mut errors = 0;
    for l in out.lines() {
        let l = l.trim();
        if let Some(rest) = l.strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(0);
        }
        if let Some(rest) = l.strip_prefix("Socket errors:") {
            errors += rest.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum::<u64>();
        }
    }
    Ok(Wrk { rps, p99_ms, errors })
}

/// Runs wrk (optionally inside a network namespace) for `secs` seconds.
fn wrk(netns: Option<&str>, url: &str, host: Option<&str>, conns: u32, secs: u32) -> anyhow::Result<Wrk> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "wrk"]);
            c
        }
        None => Command::new("wrk"),
    };
    let threads = conns.clamp(1, 2);
    cmd.args(["-t", &threads.to_string(), "-c", &conns.to_string(), "-d", &format!("{secs}s"), "--timeout", "10s", "--latency"]);
    if let Some(h) = host {
        cmd.args(["-H", &format!("Host: {h}")]);
    }
    cmd.arg(url);
    let out = cmd.output().map_err(|e| anyhow::anyhow!("running wrk (apt-get install wrk): {e}"))?;
    anyhow::ensure!(out.status.success(), "wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// Runs the section.
pub async fn run(env: &BenchEnv) -> anyhow::Result<Section> {
    anyhow::ensure!(Command::new("wrk").arg("--version").output().is_ok(), "wrk is not installed (apt-get install wrk)");
    let c = env.admin().await?;
    let p = env.platform().await?;
    let edge = p.edge.as_ref().ok_or_else(|| anyhow::anyhow!("the edge role is not running"))?;
    let w = c.create_workspace(&CreateWorkspaceRequest { name: "bench-edge".into(), ..Default::default() }).await?;
    let ws = w.vm.id.clone();
    let result = measure(env, &c, &ws, edge.addr).await;
    let _ = c.delete_workspace(&ws).await;
    result
}

async fn measure(env: &BenchEnv, c: &rigbox_client::Client, ws: &str, edge_addr: std::net::SocketAddr) -> anyhow::Result<Section> {
    c.action(ws, "start").await?;
    let w = c.wait_settled(ws, Duration::from_secs(300), |_| {}).await?;
    anyhow::ensure!(w.vm.status == "running", "workspace did not start: {:?}", w.failure);
    c.upload(ws, "/home/developer/ok.py", SERVER_PY.to_string()).await?;
    let run = |cmd: &str| ExecRequest { command: json!(cmd), user: Some("root".into()), timeout: Some(60), ..Default::default() };
    let r = c.exec(ws, &run("systemd-run --unit=bench-ok --property=User=developer python3 /home/developer/ok.py 8000")).await?;
    anyhow::ensure!(r.exit_code == Some(0), "starting the server: {}", r.stderr);
    let app: serde_json::Value = c.send(reqwest::Method::POST, "/apps", &json!({"workspace_id": ws, "name": "bench-edge", "port": 8000, "visibility": "public"})).await?;
    let app_id = app["app"]["id"].as_str().unwrap_or_default().to_string();
    let host = format!("bench-edge.{}:{}", env.settings.base_domain, edge_addr.port());
    let edge_url = format!("http://127.0.0.1:{}/", edge_addr.port());
    // Wait until the server answers through the edge.
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = http.get(&edge_url).header("host", &host).send().await.map(|r| r.status().is_success()).unwrap_or(false);
        if ok {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the app never answered through the edge");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let slot = rigbox_netns::list_slots()?
        .into_iter()
        .find(|n| rigbox_netns::workspace_of(n).is_some_and(|w| w.ends_with(ws)))
        .ok_or_else(|| anyhow::anyhow!("no network slot for {ws}"))?;
    let direct_url = "http://169.254.0.2:8000/";

    let secs = 10;
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for conns in [1u32, 64] {
        // Warm the pool and the guest, then measure; direct first, then the edge.
        let (s2, h2, u2) = (slot.clone(), host.clone(), edge_url.clone());
        let _ = tokio::task::spawn_blocking(move || wrk(None, &u2, Some(&h2), conns, 2)).await?;
        let direct = tokio::task::spawn_blocking(move || wrk(Some(&s2), direct_url, None, conns, secs)).await??;
        let (h2, u2) = (host.clone(), edge_url.clone());
        let via = tokio::task::spawn_blocking(move || wrk(None, &u2, Some(&h2), conns, secs)).await??;
        rows.push(Row {
            what: format!("requests/s, {conns} connection{}", if conns == 1 { "" } else { "s" }),
            value: format!("{:.0}", via.rps),
            baseline: Some(format!("{:.0}", direct.rps)),
            ratio: (direct.rps > 0.0).then(|| via.rps / direct.rps),
        });
        rows.push(Row::ms(format!("p99 latency, {conns} connection{}", if conns == 1 { "" } else { "s" }), via.p99_ms, Some(direct.p99_ms)));
        if via.errors + direct.errors > 0 {
            notes.push(format!("{conns} connections: {} errors through the edge, {} direct", via.errors, direct.errors));
        }
    }
    let summary: serde_json::Value = c.get(&format!("/apps/{app_id}/metrics/summary?range=1h")).await.unwrap_or_default();
    notes.push(format!("wrk -d{secs}s --latency (threads = min(connections, 2)); edge: wrk on loopback with Host: {host}; baseline: the same wrk inside the workspace's network namespace against 169.254.0.2:8000"));
    notes.push("the server is a Python ThreadingHTTPServer (keep-alive) in a TCG guest: both columns are bounded by the emulated guest; the ratio shows what the edge path (proxy, node tunnel, extra hops) costs on top".into());
    notes.push(format!(
        "the edge's own metrics for the app over the run: {} requests, p50 {:.1} ms, p99 {:.1} ms (latency to response headers, 10 s buckets)",
        summary["total_requests"], summary["latency_p50_ms"].as_f64().unwrap_or(0.0), summary["latency_p99_ms"].as_f64().unwrap_or(0.0)
    ));
    Ok(Section { title: "edge".into(), rows, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 2s test @ http://127.0.0.1:8081/\n  1 threads and 1 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.20ms  300.00us   5.00ms   90.00%\n  Latency Distribution\n     50%    1.10ms\n     75%    1.30ms\n     90%    1.50ms\n     99%    2.50ms\n  1600 requests in 2.00s, 100.00KB read\n  Socket errors: connect 0, read 1, write 0, timeout 2\n  Non-2xx or 3xx responses: 4\nRequests/sec:    800.50\nTransfer/sec:     50.00KB\n";
        let w = parse_wrk(out).unwrap();
        assert_eq!(w.rps, 800.5);
        assert_eq!(w.p99_ms, 2.5);
        assert_eq!(w.errors, 7);
        assert_eq!(ms_of("950.00us"), Some(0.95));
        assert_eq!(ms_of("1.50s"), Some(1500.0));
    }
}
