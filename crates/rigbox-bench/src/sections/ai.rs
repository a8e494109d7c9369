//! AI proxy overhead: the same OpenAI-format calls against the fake provider
//! (`rigbox_ai::fake`, on loopback) made directly, and through the whole
//! managed path: a client inside a running workspace's network namespace →
//! the node's slot listener (169.254.0.1:9090) → the control plane (node
//! token, reservation, key injection) → the fake provider, metered on the
//! way back (settlement, cost headers, SSE usage and cost comment).
//!
//! - added latency of a non-streamed chat completion (median and p95 of
//!   sequential calls);
//! - time to the first streamed byte (`data:`) and to the end of the stream,
//!   with 1 and with 32 concurrent streams.
//!
//! The client is the same minimal HTTP/1.1 client on both paths (one
//! connection per call, `Connection: close`); time starts once the TCP
//! connection is up, so the cost of entering the namespace is not counted.
//! This section starts its own platform (its provider URLs point at the
//! fake), with one workspace. Run with `rigboxd bench --section ai`.

use crate::report::{median, percentile, Row};
use crate::{BenchEnv, Section};
use rigbox_ai::fake::FakeProvider;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SEQ: usize = 40;
const ROUNDS_32: usize = 3;

/// (ms to the first body byte that carries data, ms to the end).
async fn call(mut s: TcpStream, path: &str, auth: Option<&str>, body: &str) -> anyhow::Result<(f64, f64)> {
    let t0 = Instant::now();
    let auth = auth.map(|a| format!("Authorization: Bearer {a}\r\n")).unwrap_or_default();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{auth}\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(16 << 10);
    let mut chunk = vec![0u8; 16 << 10];
    let mut first = None;
    let mut head_end = None;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(60), s.read(&mut chunk)).await??;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if head_end.is_none() {
            head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
            if let Some(h) = head_end {
                let status = String::from_utf8_lossy(&buf[..h.min(20)]).to_string();
                anyhow::ensure!(status.contains(" 200"), "{}", String::from_utf8_lossy(&buf));
            }
        }
        if first.is_none() {
            if let Some(h) = head_end {
                let b = &buf[h..];
                if b.windows(5).any(|w| w == b"data:") || b.windows(9).any(|w| w == b"\"choices\"") {
                    first = Some(t0.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }
    }
    let total = t0.elapsed().as_secs_f64() * 1000.0;
    Ok((first.unwrap_or(total), total))
}

struct Paths {
    fake: std::net::SocketAddr,
    slot: rigbox_netns::Slot,
}

impl Paths {
    async fn direct(&self, stream: bool) -> anyhow::Result<(f64, f64)> {
        let s = TcpStream::connect(self.fake).await?;
        s.set_nodelay(true)?;
        call(s, "/openai/v1/chat/completions", Some("sk-bench"), &body(stream, true)).await
    }

    async fn proxied(&self, stream: bool) -> anyhow::Result<(f64, f64)> {
        let s = self.slot.connect("169.254.0.1:9090".parse()?, Duration::from_secs(5)).await?;
        call(s, "/v1/chat/completions", None, &body(stream, false)).await
    }
}

fn body(stream: bool, direct: bool) -> String {
    let model = if direct { "gpt-bench" } else { "openai/gpt-bench" };
    let mut b = json!({"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": "benchmark words=20"}]});
    if stream {
        b["stream"] = json!(true);
        if direct {
            // What the proxy adds, so both sides stream the same events.
            b["stream_options"] = json!({"include_usage": true});
        }
    }
    b.to_string()
}

async fn concurrent(p: &Paths, n: usize, proxied: bool) -> anyhow::Result<Vec<(f64, f64)>> {
    let calls = (0..n).map(|_| async { if proxied { p.proxied(true).await } else { p.direct(true).await } });
    futures::future::join_all(calls).await.into_iter().collect()
}

/// Runs the section.
pub async fn run(env: &BenchEnv) -> anyhow::Result<Section> {
    let fake = FakeProvider::start().await?;
    let dir = tempfile::Builder::new().prefix("rigbox-bench-ai-").tempdir()?;
    let mut s = env.settings.clone();
    s.data_dir = dir.path().to_path_buf();
    s.ai.upstreams = fake.upstreams();
    let platform = rigbox_server::up(&s, true).await?;
    let result = measure(&platform, &fake, env).await;
    let prefix = format!("{}-", platform.node.node.id());
    platform.shutdown().await;
    for (pid, id) in rigbox_vmm::process::find_vm_processes() {
        if id.starts_with(&prefix) {
            if let Some(v) = rigbox_vmm::VmProcess::from_pid(pid, rigbox_vmm::BackendKind::Qemu) {
                let _ = rigbox_vmm::process::kill_and_wait(&v, Duration::from_secs(5)).await;
            }
        }
    }
    for name in rigbox_netns::list_slots().unwrap_or_default() {
        if let Some(w) = rigbox_netns::workspace_of(&name).filter(|w| w.starts_with(&prefix)) {
            if let Ok(sl) = rigbox_netns::Slot::for_workspace(w) {
                let _ = sl.delete();
            }
        }
    }
    result
}

async fn measure(platform: &rigbox_server::Platform, fake: &FakeProvider, env: &BenchEnv) -> anyhow::Result<Section> {
    let admin = rigbox_client::Client::new(platform.control.url(), Some(env.admin_key.clone()));
    let _: serde_json::Value = admin.send(reqwest::Method::PUT, "/admin/ai/providers/openai", &json!({"api_key": "sk-bench"})).await?;
    let prices = json!({"models": {"openai/gpt-bench": {"input": 0.1, "output": 0.1}}});
    let _: serde_json::Value = admin.send(reqwest::Method::PUT, "/admin/ai/prices", &prices).await?;
    let me = admin.me().await?;
    let _: serde_json::Value = admin.send(reqwest::Method::POST, &format!("/admin/users/{}/credits", me.id), &json!({"credits": 1_000_000})).await?;
    let w = admin
        .create_workspace(&rigbox_client::views::CreateWorkspaceRequest { name: "bench-ai".into(), ..Default::default() })
        .await?;
    admin.action(&w.vm.id, "start").await?;
    let got = admin.wait_settled(&w.vm.id, Duration::from_secs(600), |_| {}).await?;
    anyhow::ensure!(got.vm.status == "running", "the workspace did not start: {:?}", got.failure);
    let slot = rigbox_netns::Slot::for_workspace(&format!("{}-{}", platform.node.node.id(), w.vm.id))?;
    let p = Paths { fake: fake.addr, slot };
    // Wait for the listener and the control plane's announcement; warm up.
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.proxied(false).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the AI proxy did not answer in the workspace's slot");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for _ in 0..5 {
        p.direct(false).await?;
        p.proxied(true).await?;
    }

    let (mut d, mut x) = (Vec::new(), Vec::new());
    for _ in 0..SEQ {
        d.push(p.direct(false).await?.1);
        x.push(p.proxied(false).await?.1);
    }
    let (mut dt, mut xt, mut de, mut xe) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..SEQ / 2 {
        let (a, b) = p.direct(true).await?;
        dt.push(a);
        de.push(b);
        let (a, b) = p.proxied(true).await?;
        xt.push(a);
        xe.push(b);
    }
    let (mut d32t, mut x32t, mut d32e, mut x32e) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS_32 {
        for (a, b) in concurrent(&p, 32, false).await? {
            d32t.push(a);
            d32e.push(b);
        }
        for (a, b) in concurrent(&p, 32, true).await? {
            x32t.push(a);
            x32e.push(b);
        }
    }
    let added = median(x.clone()) - median(d.clone());
    let rows = vec![
        Row::ms("chat completion, sequential (median)", median(x.clone()), Some(median(d.clone()))),
        Row::ms("chat completion, sequential (p95)", percentile(x, 95.0), Some(percentile(d, 95.0))),
        Row::new("added latency per call (median)", format!("{added:.1} ms")),
        Row::ms("stream, 1 at a time: first byte (median)", median(xt), Some(median(dt))),
        Row::ms("stream, 1 at a time: end (median)", median(xe), Some(median(de))),
        Row::ms("stream, 32 concurrent: first byte (median)", median(x32t.clone()), Some(median(d32t.clone()))),
        Row::ms("stream, 32 concurrent: first byte (p95)", percentile(x32t, 95.0), Some(percentile(d32t, 95.0))),
        Row::ms("stream, 32 concurrent: end (median)", median(x32e), Some(median(d32e))),
    ];
    let notes = vec![
        format!("{SEQ} sequential calls per path; streams: {} sequential, then {ROUNDS_32} rounds of 32 at once", SEQ / 2),
        "platform = client in the workspace's namespace → node slot listener → control plane (auth, reserve, settle, key injection) → fake provider; baseline = the same client straight to the fake provider on loopback".into(),
        "each call opens its own connection (no keep-alive on the guest side); the fake answers at once (20 words, no delay)".into(),
    ];
    Ok(Section { title: "ai".into(), rows, notes })
}
