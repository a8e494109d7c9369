//! Workspace metrics and logs with a real VM: live usage that follows what
//! the guest does (CPU, memory, disk), series and summaries that survive a
//! restart of the platform, SSE streams, journal, console and service logs,
//! and the Prometheus expositions of the control plane and the node.

use futures::StreamExt;
use rigbox_client::views::ExecRequest;
use rigbox_client::Client;
use rigbox_test_support::{is_root, reference, wait_until, TestPlatform};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The sampling interval of this test (the default is 5 s).
const SAMPLE_MS: u64 = 1000;

async fn sh(c: &Client, id: &str, cmd: &str) -> String {
    let r = c.exec(id, &ExecRequest { command: json!(cmd), timeout: Some(300), ..Default::default() }).await.unwrap();
    assert_eq!(r.exit_code, Some(0), "{cmd}: {r:?}");
    r.stdout
}

fn status<T: std::fmt::Debug>(r: Result<T, rigbox_client::ClientError>) -> u16 {
    r.unwrap_err().status().unwrap_or(0)
}

/// One server-sent event.
#[derive(Debug, Default, Clone)]
struct Sse {
    event: String,
    data: String,
    id: Option<String>,
}

/// Reads server-sent events from a response into a channel.
fn sse_events(resp: reqwest::Response) -> tokio::sync::mpsc::UnboundedReceiver<(Instant, Sse)> {
    assert!(resp.status().is_success(), "SSE status {}", resp.status());
    let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(ct.starts_with("text/event-stream"), "content type {ct}");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut body = resp.bytes_stream();
        let mut buf = String::new();
        let mut cur = Sse::default();
        while let Some(Ok(chunk)) = body.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(i) = buf.find('\n') {
                let line = buf[..i].trim_end_matches('\r').to_string();
                buf.drain(..=i);
                if line.is_empty() {
                    if (!cur.data.is_empty() || !cur.event.is_empty()) && tx.send((Instant::now(), std::mem::take(&mut cur))).is_err() {
                        return;
                    }
                    cur = Sse::default();
                } else if let Some(v) = line.strip_prefix("event:") {
                    cur.event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    if !cur.data.is_empty() {
                        cur.data.push('\n');
                    }
                    cur.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                } else if let Some(v) = line.strip_prefix("id:") {
                    cur.id = Some(v.trim().to_string());
                }
            }
        }
    });
    rx
}

async fn next_event(rx: &mut tokio::sync::mpsc::UnboundedReceiver<(Instant, Sse)>, within: Duration) -> (Instant, Sse) {
    tokio::time::timeout(within, rx.recv()).await.unwrap_or_else(|_| panic!("no event within {within:?}")).expect("stream open")
}

async fn live(c: &Client, id: &str) -> Value {
    let v: Value = c.get(&format!("/workspaces/{id}/metrics")).await.unwrap();
    reference::assert_matches("WorkspaceMetrics", &v);
    v
}

/// Waits until the live metrics satisfy `ok`, returning them.
async fn live_until(c: &Client, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    wait_until(Duration::from_secs(120), what, || async {
        let v = live(c, id).await;
        ok(&v).then_some(v)
    })
    .await
    .unwrap()
}

/// Average of `field` over `n` fresh samples.
async fn settle(c: &Client, id: &str, field: &str, n: usize) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut seen, mut last) = (Vec::new(), String::new());
    while seen.len() < n {
        assert!(Instant::now() < deadline, "no fresh samples");
        let v = live(c, id).await;
        let at = v["updated_at"].as_str().unwrap().to_string();
        if at != last && v["guest_metrics_fresh"] == true {
            last = at;
            seen.push(v[field].as_f64().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    seen.iter().sum::<f64>() / seen.len() as f64
}

fn check_series(v: &Value, range: &str, step: i64) {
    reference::assert_matches("WorkspaceMetricsSeriesResponse", v);
    assert_eq!(v["range"], range);
    assert_eq!(v["step_seconds"], step, "{range}");
    let secs = match range {
        "1h" => 3600,
        "6h" => 6 * 3600,
        "24h" => 86400,
        _ => 7 * 86400,
    };
    let now = chrono::Utc::now().timestamp();
    let cpu = v["series"]["cpu_percent"].as_array().unwrap();
    assert!(!cpu.is_empty(), "{range}: no points");
    for k in ["memory_used_mb", "memory_limit_mb", "disk_used_mb", "disk_total_mb", "network_rx_bps", "network_tx_bps"] {
        assert_eq!(v["series"][k].as_array().unwrap().len(), cpu.len(), "{range} {k}");
    }
    let mut prev = i64::MIN;
    for p in cpu {
        let t = p["t"].as_i64().unwrap();
        assert_eq!(t % step, 0, "{range}: {t} is on a {step}s boundary");
        assert!(t > now - secs - step && t <= now, "{range}: {t} within the range");
        assert!(t > prev, "ascending");
        prev = t;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_metrics_and_logs() {
    if !is_root() {
        eprintln!("SKIP: VM tests need root");
        return;
    }
    let t0 = Instant::now();
    let mut t = TestPlatform::start_with(&["base"], |s| s.metrics_sample_ms = SAMPLE_MS).await.unwrap();
    let (c, _) = t.user("mia@example.test").await.unwrap();
    let svc: Value = c
        .send(reqwest::Method::POST, "/service-specs", &json!({"name": "ticker", "exec_start": "while true; do echo svc-tick-$((n+=1)); sleep 1; done", "auto_enable": true}))
        .await
        .unwrap();
    let r: Value = c
        .send(
            reqwest::Method::POST,
            "/quick-deploy",
            &json!({"template_id": "base", "name": "metered", "ram_mb": 512, "wait": true, "service_spec_ids": [svc["id"]]}),
        )
        .await
        .unwrap();
    assert_eq!(r["workspace"]["status"], "running", "{r}");
    let id = r["workspace"]["id"].as_str().unwrap().to_string();
    eprintln!("running after {:?}", t0.elapsed());

    // ---- Live point and its stream.
    let first = live_until(&c, &id, "a live point", |v| v["guest_metrics_fresh"] == true).await;
    assert_eq!(first["workspace_id"], id.as_str());
    assert_eq!(first["ram_total_mb"], 512);
    assert!(first["ram_used_mb"].as_i64().unwrap() > 20, "{first}");
    assert!(first["disk_total_mb"].as_i64().unwrap() > 1000 && first["disk_used_mb"].as_i64().unwrap() > 100, "{first}");
    let resp = c.request(reqwest::Method::GET, &format!("/workspaces/{id}/metrics/stream")).send().await.unwrap();
    let mut ms = sse_events(resp);
    let (a, e1) = next_event(&mut ms, Duration::from_secs(5)).await;
    assert_eq!(e1.event, "metrics");
    reference::assert_matches("WorkspaceMetrics", &serde_json::from_str(&e1.data).unwrap());
    let (b, e2) = next_event(&mut ms, Duration::from_millis(SAMPLE_MS * 3 + 2000)).await;
    let (_, e3) = next_event(&mut ms, Duration::from_millis(SAMPLE_MS * 3 + 2000)).await;
    let (u2, u3): (Value, Value) = (serde_json::from_str(&e2.data).unwrap(), serde_json::from_str(&e3.data).unwrap());
    assert!(u3["updated_at"].as_str() > u2["updated_at"].as_str(), "new points");
    eprintln!("metrics stream: first event at once, next after {:?}", b - a);
    drop(ms);

    // ---- CPU follows a busy loop (after first-boot work such as host key
    // generation has finished).
    live_until(&c, &id, "the guest to go idle", |v| v["cpu_percent"].as_f64().unwrap() < 40.0).await;
    let idle = settle(&c, &id, "cpu_percent", 3).await;
    assert!(idle < 60.0, "idle guest at {idle}%");
    sh(&c, &id, "nohup sh -c 'while :; do :; done' >/dev/null 2>&1 & echo $! > /tmp/burn.pid").await;
    let busy = live_until(&c, &id, "CPU to rise", |v| v["cpu_percent"].as_f64().unwrap() > (idle + 40.0).min(85.0)).await;
    eprintln!("cpu idle {idle:.1}% → busy {}%", busy["cpu_percent"]);
    sh(&c, &id, "kill $(cat /tmp/burn.pid)").await;
    live_until(&c, &id, "CPU to fall", |v| v["cpu_percent"].as_f64().unwrap() < (idle + 25.0).max(30.0)).await;

    // ---- Memory follows an allocation (pages written, so they are in use).
    let mem0 = settle(&c, &id, "ram_used_mb", 2).await;
    sh(&c, &id, "nohup python3 -c \"import time; b = b'x' * (200 << 20); time.sleep(600)\" >/dev/null 2>&1 & echo $! > /tmp/mem.pid").await;
    let grown = live_until(&c, &id, "memory to grow", |v| v["ram_used_mb"].as_f64().unwrap() > mem0 + 150.0).await;
    eprintln!("memory {mem0:.0} MiB → {} MiB", grown["ram_used_mb"]);
    sh(&c, &id, "kill $(cat /tmp/mem.pid)").await;
    live_until(&c, &id, "memory to shrink", |v| v["ram_used_mb"].as_f64().unwrap() < mem0 + 75.0).await;

    // ---- Disk follows a file written in the guest.
    let disk0 = settle(&c, &id, "disk_used_mb", 2).await;
    sh(&c, &id, "dd if=/dev/urandom of=/home/developer/big bs=1M count=200 status=none && sync").await;
    let full = live_until(&c, &id, "disk use to grow", |v| v["disk_used_mb"].as_f64().unwrap() > disk0 + 150.0).await;
    eprintln!("disk {disk0:.0} MiB → {} MiB", full["disk_used_mb"]);
    sh(&c, &id, "rm /home/developer/big && sync").await;
    live_until(&c, &id, "disk use to shrink", |v| v["disk_used_mb"].as_f64().unwrap() < disk0 + 50.0).await;

    // ---- Network: the guest downloads nothing from outside; traffic to the
    // host side of its own slot counts (the exec above went over it).
    let net = live(&c, &id).await;
    assert!(net["network_rx_bytes"].as_u64().unwrap() > 0 && net["network_tx_bytes"].as_u64().unwrap() > 0, "{net}");

    // ---- Series and summaries.
    for (range, step) in [("1h", 60), ("6h", 300), ("24h", 900), ("7d", 3600)] {
        let v: Value = c.get(&format!("/workspaces/{id}/metrics/series?range={range}")).await.unwrap();
        check_series(&v, range, step);
        let s: Value = c.get(&format!("/workspaces/{id}/metrics/summary?range={range}")).await.unwrap();
        reference::assert_matches("WorkspaceMetricsSummaryResponse", &s);
        assert!(s["cpu_p95_percent"].as_f64().unwrap() >= s["cpu_avg_percent"].as_f64().unwrap(), "{s}");
        assert!(s["cpu_p95_percent"].as_f64().unwrap() > 50.0, "the busy loop is in the p95: {s}");
        assert_eq!(s["memory_limit_mb"], 512.0);
        assert!(s["network_rx_bytes"].as_f64().unwrap() > 0.0 && s["guest_metrics_fresh"] == true, "{s}");
    }
    assert_eq!(status(c.get::<Value>(&format!("/workspaces/{id}/metrics/series?range=2h")).await), 400);
    let before: Value = c.get(&format!("/workspaces/{id}/metrics/series?range=1h")).await.unwrap();
    let before_6h: Value = c.get(&format!("/workspaces/{id}/metrics/summary?range=6h")).await.unwrap();

    // ---- Journal logs: a line logged in the guest, pages in both directions.
    let marker = format!("hello-from-guest-{}", std::process::id());
    sh(&c, &id, &format!("logger -t rigboxtest {marker}")).await;
    let logs: Value = wait_until(Duration::from_secs(30), "the journal line", || async {
        let v: Value = c.get(&format!("/workspaces/{id}/logs?lines=50")).await.ok()?;
        v["lines"].as_array()?.iter().any(|l| l["message"].as_str().unwrap_or("").contains(&marker)).then_some(v)
    })
    .await
    .unwrap();
    reference::assert_matches("GetWorkspaceLogsResponse", &logs);
    assert_eq!(logs["source"], "journal");
    let hit = logs["lines"].as_array().unwrap().iter().find(|l| l["message"].as_str().unwrap().contains(&marker)).unwrap();
    assert!(hit["message"].as_str().unwrap().starts_with("rigboxtest"), "{hit}");
    assert!(hit["timestamp"].as_str().is_some());
    let p1: Value = c.get(&format!("/workspaces/{id}/logs?lines=5&direction=newest")).await.unwrap();
    let nums = |v: &Value| v["lines"].as_array().unwrap().iter().map(|l| l["line_number"].as_i64().unwrap()).collect::<Vec<_>>();
    let n1 = nums(&p1);
    assert_eq!(n1.len(), 5);
    assert!(n1.windows(2).all(|w| w[0] > w[1]), "newest first: {n1:?}");
    assert_eq!(p1["has_more"], true);
    let p2: Value = c.get(&format!("/workspaces/{id}/logs?lines=5&direction=newest&cursor={}", p1["cursor"].as_str().unwrap())).await.unwrap();
    let n2 = nums(&p2);
    assert!(!n2.is_empty() && n2[0] < *n1.last().unwrap(), "older page: {n1:?} then {n2:?}");
    let o1: Value = c.get(&format!("/workspaces/{id}/logs?lines=5&direction=oldest")).await.unwrap();
    let no = nums(&o1);
    assert!(no.windows(2).all(|w| w[0] < w[1]) && no[0] <= 5, "oldest first from the start: {no:?}");
    let o2: Value = c.get(&format!("/workspaces/{id}/logs?lines=5&direction=oldest&cursor={}", o1["cursor"].as_str().unwrap())).await.unwrap();
    assert!(nums(&o2)[0] > *no.last().unwrap(), "the next page continues forward");
    assert_eq!(status(c.get::<Value>(&format!("/workspaces/{id}/logs?direction=sideways")).await), 400);
    assert_eq!(status(c.get::<Value>(&format!("/workspaces/{id}/logs?cursor=j:bad%20cursor")).await), 400);

    // ---- Console logs: what the guest writes to its serial console.
    let cmarker = format!("console-marker-{}", std::process::id());
    sh(&c, &id, &format!("echo {cmarker} | sudo tee /dev/console >/dev/null")).await;
    let con: Value = wait_until(Duration::from_secs(30), "the console line", || async {
        let v: Value = c.get(&format!("/workspaces/{id}/logs?source=console&lines=200")).await.ok()?;
        v["lines"].as_array()?.iter().any(|l| l["message"].as_str().unwrap_or("").contains(&cmarker)).then_some(v)
    })
    .await
    .unwrap();
    reference::assert_matches("GetWorkspaceLogsResponse", &con);
    let c1: Value = c.get(&format!("/workspaces/{id}/logs?source=console&lines=3&direction=oldest")).await.unwrap();
    assert_eq!(nums(&c1), vec![1, 2, 3]);
    let c2: Value = c.get(&format!("/workspaces/{id}/logs?lines=3&direction=oldest&cursor={}", c1["cursor"].as_str().unwrap())).await.unwrap();
    assert_eq!((nums(&c2), c2["source"].as_str()), (vec![4, 5, 6], Some("console")), "the cursor keeps its source");

    // ---- The log stream: the last lines, then a line logged afterwards, in time.
    let resp = c.request(reqwest::Method::GET, &format!("/workspaces/{id}/logs/stream?lines=5&interval_ms=500")).send().await.unwrap();
    let mut ls = sse_events(resp);
    for _ in 0..5 {
        let (_, e) = next_event(&mut ls, Duration::from_secs(30)).await;
        assert_eq!(e.event, "log");
        reference::assert_matches("LogLine", &serde_json::from_str(&e.data).unwrap());
    }
    let marker2 = format!("streamed-line-{}", std::process::id());
    let sent = Instant::now();
    sh(&c, &id, &format!("logger -t rigboxtest {marker2}")).await;
    let got = loop {
        let (at, e) = next_event(&mut ls, Duration::from_secs(20)).await;
        if e.data.contains(&marker2) {
            // The last line of each batch carries the cursor as a resumable id.
            let mut id = e.id.clone();
            while id.is_none() {
                id = next_event(&mut ls, Duration::from_secs(5)).await.1.id;
            }
            break at;
        }
    };
    eprintln!("log line streamed {:?} after logger ran", got - sent);
    drop(ls);

    // ---- Service logs (the unit rigbox-svc-ticker.service).
    let sl: Value = wait_until(Duration::from_secs(60), "service output", || async {
        let v: Value = c.get(&format!("/workspaces/{id}/services/ticker/logs?lines=20")).await.ok()?;
        v["lines"].as_array()?.iter().any(|l| l["message"].as_str().unwrap_or("").contains("svc-tick-")).then_some(v)
    })
    .await
    .unwrap();
    reference::assert_matches("GetWorkspaceLogsResponse", &sl);
    assert!(sl["lines"].as_array().unwrap().iter().all(|l| !l["message"].as_str().unwrap().contains(&marker)), "only the unit's lines");
    assert_eq!(status(c.get::<Value>(&format!("/workspaces/{id}/services/nope/logs")).await), 404);

    // ---- Prometheus: the control plane (admin key) and the node (node token).
    let anon = reqwest::get(format!("{}/metrics", t.url())).await.unwrap();
    assert_eq!(anon.status(), 401);
    let text = reqwest::Client::new().get(format!("{}/metrics", t.url())).bearer_auth(&t.admin_key).send().await.unwrap().text().await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("control plane exposition parses");
    let find = |s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]| {
        s.samples.iter().find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))).map(|x| x.value.clone())
    };
    let gauge = |v: Option<prometheus_parse::Value>| match v {
        Some(prometheus_parse::Value::Gauge(g)) | Some(prometheus_parse::Value::Counter(g)) | Some(prometheus_parse::Value::Untyped(g)) => g,
        other => panic!("not a number: {other:?}\n{}", text.lines().filter(|l| l.starts_with("rigbox_api_requests_total")).take(20).collect::<Vec<_>>().join("\n")),
    };
    assert!(gauge(find(&scrape, "rigbox_api_requests_total", &[("route", "/api/v1/workspaces/:id/metrics"), ("method", "GET"), ("status", "200")])) >= 5.0);
    assert!(find(&scrape, "rigbox_api_request_duration_seconds", &[("route", "/api/v1/workspaces/:id/metrics/series")]).is_some(), "latency histogram");
    assert!(gauge(find(&scrape, "rigbox_workspaces", &[("state", "running")])) >= 1.0);
    assert!(gauge(find(&scrape, "rigbox_node_capacity", &[("resource", "memory_bytes"), ("kind", "total")])) > 0.0);
    assert!(gauge(find(&scrape, "rigbox_workspace_usage", &[("workspace", id.as_str()), ("metric", "memory_total_bytes")])) == (512u64 << 20) as f64);
    match find(&scrape, "rigbox_workspace_boot_duration_seconds", &[]) {
        Some(prometheus_parse::Value::Histogram(h)) => assert!(h.iter().any(|b| b.count >= 1.0), "a boot was observed: {h:?}"),
        other => panic!("boot histogram: {other:?}"),
    }
    let node = rigbox_node_api::NodeClient::new(t.p().node.url(), t.p().node.token.clone());
    let ntext = node.prometheus().await.unwrap();
    let nscrape = prometheus_parse::Scrape::parse(ntext.lines().map(|l| Ok(l.to_string()))).expect("node exposition parses");
    assert!(gauge(find(&nscrape, "rigbox_node_workspaces", &[("state", "running")])) >= 1.0);
    assert!(gauge(find(&nscrape, "rigbox_node_capacity", &[("resource", "disk_bytes"), ("kind", "free")])) > 0.0);
    assert!(gauge(find(&nscrape, "rigbox_workspace_usage", &[("workspace", id.as_str()), ("metric", "vmm_rss_bytes")])) > 0.0);
    assert_eq!(reqwest::get(format!("{}/metrics", t.p().node.url())).await.unwrap().status(), 401, "the node's metrics need the node token");

    // ---- A restart of the platform keeps the stored series; sampling goes on.
    t.restart().await.unwrap();
    let c = Client::new(t.url(), c.key().map(str::to_string));
    let after: Value = c.get(&format!("/workspaces/{id}/metrics/series?range=1h")).await.unwrap();
    check_series(&after, "1h", 60);
    let pts = |v: &Value| v["series"]["cpu_percent"].as_array().unwrap().iter().map(|p| p["t"].as_i64().unwrap()).collect::<Vec<_>>();
    let (b, a) = (pts(&before), pts(&after));
    assert_eq!(a[0], b[0], "the oldest bucket is still there");
    assert!(a.len() >= b.len());
    let s6: Value = c.get(&format!("/workspaces/{id}/metrics/summary?range=6h")).await.unwrap();
    assert!(s6["samples"].as_i64() >= before_6h["samples"].as_i64(), "{before_6h} then {s6}");
    let again = live_until(&c, &id, "sampling after the restart", |v| v["updated_at"].as_str() > first["updated_at"].as_str() && v["guest_metrics_fresh"] == true).await;
    eprintln!("after restart: {again}");

    // ---- Stopped: no live point, no journal; the console stays readable.
    c.action(&id, "stop").await.unwrap();
    c.wait_settled(&id, Duration::from_secs(120), |_| {}).await.unwrap();
    assert_eq!(status(c.get::<Value>(&format!("/workspaces/{id}/metrics")).await), 409);
    assert_eq!(status(c.get::<Value>(&format!("/workspaces/{id}/logs?source=journal")).await), 409);
    let stopped: Value = c.get(&format!("/workspaces/{id}/logs?lines=20")).await.unwrap();
    assert_eq!(stopped["source"], "console");
    assert!(!stopped["lines"].as_array().unwrap().is_empty());
    let s: Value = c.get(&format!("/workspaces/{id}/metrics/summary?range=1h")).await.unwrap();
    assert_eq!(s["guest_metrics_fresh"], false);

    // A snapshot's duration reaches both expositions.
    let _: Value = c.send(reqwest::Method::POST, &format!("/workspaces/{id}/snapshots"), &json!({"name": "metered-snap"})).await.unwrap();
    let histogram_count = |text: &str, name: &str| {
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("exposition parses");
        scrape
            .samples
            .iter()
            .filter(|x| x.metric == name && x.labels.get("kind") == Some("disk"))
            .find_map(|x| match &x.value {
                prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).reduce(f64::max),
                _ => None,
            })
            .unwrap_or(0.0)
    };
    wait_until(Duration::from_secs(60), "the snapshot duration in the control plane's metrics", || async {
        let text = reqwest::Client::new().get(format!("{}/metrics", t.url())).bearer_auth(&t.admin_key).send().await.ok()?.text().await.ok()?;
        (histogram_count(&text, "rigbox_snapshot_duration_seconds") >= 1.0).then_some(())
    })
    .await
    .unwrap();
    let node = rigbox_node_api::NodeClient::new(t.p().node.url(), t.p().node.token.clone());
    assert!(histogram_count(&node.prometheus().await.unwrap(), "rigbox_node_snapshot_duration_seconds") >= 1.0);
    assert_eq!(status(Client::new(t.url(), Some("rb_nope".into())).get::<Value>(&format!("/workspaces/{id}/metrics")).await), 401);
    c.delete_workspace(&id).await.unwrap();
    eprintln!("done after {:?}", t0.elapsed());
}
