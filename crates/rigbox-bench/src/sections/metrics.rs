//! Benchmark section: what usage collection costs per workspace.
//!
//! - Synthetic: the host-side reads of one sample (`/proc/<vmm>/{stat,statm,
//!   net/dev}`), storing samples (raw + rollups) for 300 workspaces per
//!   tick, the database size per workspace once retention is reached (a
//!   simulated 8 days), and a 7-day series query.
//! - Real: with 1, 10 and 30 running workspaces, the platform process's CPU
//!   time (node collector + control-plane sampler + storage, all in this
//!   process) and the VMM processes' CPU time (the guest agent answering
//!   `/v1/stats`) over alternating equal windows with collection on (1 s
//!   interval, to amplify) and paused; the difference divided by the samples taken is the
//!   cost of one sample. Memory: the node's sample ring and per-workspace
//!   state, per workspace at the default 5 s interval.

use crate::report::Row;
use crate::{BenchEnv, Section};
use rigbox_db::metrics::{MetricsStore, UsageSampleRow};
use std::time::{Duration, Instant};

/// CPU time of this process (all threads), from /proc.
fn process_cpu_ms() -> f64 {
    rigbox_node::metrics::host_view(std::process::id()).map(|v| v.cpu_ms as f64).unwrap_or(0.0)
}

/// CPU time (ms) of each VMM process of this node.
fn vmm_cpu(prefix: &str) -> std::collections::HashMap<u32, f64> {
    rigbox_vmm::process::find_vm_processes()
        .into_iter()
        .filter(|(_, id)| id.starts_with(prefix))
        .filter_map(|(pid, _)| rigbox_node::metrics::host_view(pid).map(|v| (pid, v.cpu_ms as f64)))
        .collect()
}

/// CPU time spent between two readings by the VMM processes alive at both.
fn vmm_delta(a: &std::collections::HashMap<u32, f64>, b: &std::collections::HashMap<u32, f64>) -> f64 {
    a.iter().filter_map(|(pid, x)| b.get(pid).map(|y| (y - x).max(0.0))).sum()
}

fn synthetic_row(ws: &str, t_ms: i64, i: i64) -> UsageSampleRow {
    UsageSampleRow {
        workspace_id: ws.into(),
        t_ms,
        dt_ms: 5000,
        cpu: (i % 100) as f64,
        mem_used_mb: 200.0 + (i % 50) as f64,
        mem_total_mb: 512.0,
        disk_used_mb: 400.0,
        disk_total_mb: 2988.0,
        rx_bytes: 1500,
        tx_bytes: 900,
        guest_fresh: true,
    }
}

async fn db_bytes(db: &rigbox_db::SqliteStore) -> anyhow::Result<i64> {
    use sqlx::Row;
    sqlx::query("VACUUM").execute(db.pool()).await?;
    let pages: i64 = sqlx::query("PRAGMA page_count").fetch_one(db.pool()).await?.try_get(0)?;
    let size: i64 = sqlx::query("PRAGMA page_size").fetch_one(db.pool()).await?.try_get(0)?;
    Ok(pages * size)
}

async fn synthetic(rows: &mut Vec<Row>, notes: &mut Vec<String>) -> anyhow::Result<()> {
    // Host-side reads of one sample, against this process.
    let me = std::process::id();
    let n = 5000;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(rigbox_node::metrics::host_view(me));
    }
    rows.push(Row::new("host reads per sample (/proc stat, statm, net/dev)", format!("{:.1} µs", t.elapsed().as_secs_f64() * 1e6 / n as f64)));

    // Storing: 300 workspaces per tick, one transaction per tick.
    let dir = tempfile::tempdir()?;
    let db = rigbox_db::SqliteStore::open(&dir.path().join("bench.db")).await?;
    let wss: Vec<String> = (0..300).map(|i| format!("ws-bench{i:04}")).collect();
    let t0 = 1_800_000_000_000i64;
    let ticks = 20;
    let t = Instant::now();
    for k in 0..ticks {
        let batch: Vec<UsageSampleRow> = wss.iter().map(|w| synthetic_row(w, t0 + k * 5000, k)).collect();
        db.insert_usage(&batch).await?;
    }
    let per_tick = t.elapsed().as_secs_f64() * 1000.0 / ticks as f64;
    rows.push(Row::new("store one tick of 300 workspaces (raw + 2 rollups)", format!("{per_tick:.1} ms")));
    rows.push(Row::new("store one sample", format!("{:.0} µs", per_tick * 1000.0 / 300.0)));

    // Size at retention: 2 workspaces sampled every 5 s for 8 simulated days,
    // pruned every simulated hour as the sampler does every minute.
    let dir2 = tempfile::tempdir()?;
    let db2 = rigbox_db::SqliteStore::open(&dir2.path().join("week.db")).await?;
    let empty = db_bytes(&db2).await?;
    let per_hour = 720;
    let t = Instant::now();
    let mut i = 0i64;
    for hour in 0..(8 * 24) {
        let mut batch = Vec::with_capacity(per_hour * 2);
        for k in 0..per_hour as i64 {
            let at = t0 + (hour * 3600 + k * 5) * 1000;
            batch.push(synthetic_row("ws-week-a", at, i));
            batch.push(synthetic_row("ws-week-b", at, i));
            i += 1;
        }
        db2.insert_usage(&batch).await?;
        db2.prune_usage(t0 + (hour + 1) * 3600 * 1000).await?;
    }
    let simulated = t.elapsed();
    let (raw, rollups) = db2.usage_row_counts().await?;
    let size = db_bytes(&db2).await? - empty;
    rows.push(Row::new("rows kept per workspace (raw, rollups)", format!("{}, {}", raw / 2, rollups / 2)));
    rows.push(Row::new("database bytes per workspace at retention", format!("{:.2} MiB", size as f64 / 2.0 / 1048576.0)));
    rows.push(Row::new("  x 300 workspaces", format!("{:.0} MiB", size as f64 * 150.0 / 1048576.0)));
    let t = Instant::now();
    let q = 50;
    for _ in 0..q {
        std::hint::black_box(db2.usage_buckets("ws-week-a", 900, (t0 / 1000) + 86400).await?);
    }
    rows.push(Row::ms("read 7 days of 15-min buckets (one workspace)", t.elapsed().as_secs_f64() * 1000.0 / q as f64, None));
    notes.push(format!(
        "synthetic retention run: {} samples over 8 simulated days in {:.1} s; retention raw 70 min, 1-min buckets 7 h, 15-min buckets 8 days",
        i * 2,
        simulated.as_secs_f64()
    ));
    Ok(())
}

/// The collector's wall time so far: (sum seconds, passes), from the node's exposition.
async fn collection_wall(node: &rigbox_node_api::NodeClient) -> (f64, f64) {
    let text = node.prometheus().await.unwrap_or_default();
    let get = |name: &str| text.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().last()).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (get("rigbox_node_metrics_collection_seconds_sum"), get("rigbox_node_metrics_collection_seconds_count"))
}

struct Window {
    process_ms: f64,
    vmm_ms: f64,
    samples: f64,
    pass_ms: f64,
}

async fn window(env: &BenchEnv, on: bool, secs: u64) -> anyhow::Result<Window> {
    let p = env.platform().await?;
    let prefix = format!("{}-", p.node.node.id());
    let sampler = rigbox_api::sampler::sampler_of(&p.control.state);
    let nc = rigbox_node_api::NodeClient::new(p.node.url(), p.node.token.clone());
    sampler.set_paused(!on);
    rigbox_node::metrics::set_paused(&p.node.node, !on);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (s0, c0) = collection_wall(&nc).await;
    let before = rigbox_db::metrics::MetricsStore::usage_row_counts(p.control.state.store().as_ref()).await?.0;
    let (cpu0, vmm0) = (process_cpu_ms(), vmm_cpu(&prefix));
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (cpu1, vmm1) = (process_cpu_ms(), vmm_cpu(&prefix));
    let after = rigbox_db::metrics::MetricsStore::usage_row_counts(p.control.state.store().as_ref()).await?.0;
    let (s1, c1) = collection_wall(&nc).await;
    Ok(Window {
        process_ms: cpu1 - cpu0,
        vmm_ms: vmm_delta(&vmm0, &vmm1),
        samples: (after - before).max(0) as f64,
        pass_ms: if c1 > c0 { (s1 - s0) * 1000.0 / (c1 - c0) } else { 0.0 },
    })
}

/// Alternating windows with collection on and paused (`rounds` of each), summed.
async fn compare(env: &BenchEnv, rounds: usize, secs: u64) -> anyhow::Result<(Window, Window)> {
    let mut on = Window { process_ms: 0.0, vmm_ms: 0.0, samples: 0.0, pass_ms: 0.0 };
    let mut off = Window { process_ms: 0.0, vmm_ms: 0.0, samples: 0.0, pass_ms: 0.0 };
    for _ in 0..rounds {
        let a = window(env, true, secs).await?;
        on.process_ms += a.process_ms;
        on.vmm_ms += a.vmm_ms;
        on.samples += a.samples;
        on.pass_ms += a.pass_ms / rounds as f64;
        let b = window(env, false, secs).await?;
        off.process_ms += b.process_ms;
        off.vmm_ms += b.vmm_ms;
    }
    Ok((on, off))
}

async fn real(env: &BenchEnv, rows: &mut Vec<Row>, notes: &mut Vec<String>) -> anyhow::Result<()> {
    let p = env.platform().await?;
    let client = env.admin().await?;
    let sampler = rigbox_api::sampler::sampler_of(&p.control.state);
    sampler.set_interval(Duration::from_secs(1));
    let budget = Instant::now() + Duration::from_secs(15 * 60);
    let mut ids: Vec<String> = Vec::new();
    for target in [1usize, 10, 30] {
        while ids.len() < target && Instant::now() < budget {
            let name = format!("metrics-bench-{}", ids.len());
            let r: serde_json::Value = client
                .send(reqwest::Method::POST, "/quick-deploy", &serde_json::json!({"template_id": "base", "name": name, "ram_mb": 512, "wait": true}))
                .await?;
            anyhow::ensure!(r["workspace"]["status"] == "running", "workspace did not start: {r}");
            ids.push(r["workspace"]["id"].as_str().unwrap_or_default().to_string());
        }
        if ids.len() < target {
            notes.push(format!("{target} workspaces: only {} were running within the 15-minute budget; measured with {}", ids.len(), ids.len()));
        }
        let n = ids.len();
        // Let first-boot work settle (host keys, units) before measuring.
        let settle = Instant::now();
        loop {
            let busy = ids
                .iter()
                .filter(|id| sampler.latest(id).is_none_or(|l| l.sample.cpu_percent > 30.0))
                .count();
            if busy == 0 || settle.elapsed() > Duration::from_secs(180) {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let (rounds, each) = (2, 15);
        let secs = rounds as u64 * each;
        let (on, off) = compare(env, rounds, each).await?;
        rigbox_node::metrics::set_paused(&p.node.node, false);
        sampler.set_paused(false);
        let samples = on.samples.max(1.0);
        let host_per = (on.process_ms - off.process_ms).max(0.0) / samples;
        let vmm_per = (on.vmm_ms - off.vmm_ms).max(0.0) / samples;
        rows.push(Row::new(format!("{n} running: samples in {secs} s at 1 s"), format!("{samples:.0}")));
        rows.push(Row::new(format!("{n} running: platform CPU per sample"), format!("{host_per:.2} ms")));
        rows.push(Row::new(format!("{n} running: guest-side (VMM) CPU per sample"), format!("{vmm_per:.2} ms")));
        rows.push(Row::new(
            format!("{n} running: % of a core per workspace at 5 s"),
            format!("{:.3}% + {:.3}%", host_per / 5000.0 * 100.0, vmm_per / 5000.0 * 100.0),
        ));
        rows.push(Row::new(format!("{n} running: collection pass wall time"), format!("{:.1} ms", on.pass_ms)));
        notes.push(format!(
            "{n} running: platform CPU {:.0} ms with collection vs {:.0} ms paused; VMMs {:.0} ms vs {:.0} ms (over {secs} s each, alternating {rounds} x {each} s)",
            on.process_ms, off.process_ms, on.vmm_ms, off.vmm_ms
        ));
        // Memory: at 1 s the ring holds 10 minutes = 600 samples per workspace;
        // at the default 5 s it holds 120.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (_, held, bytes) = rigbox_node::metrics::collector_stats(&p.node.node);
        if held > 0 {
            let per_sample = bytes as f64 / held as f64;
            rows.push(Row::new(format!("{n} running: node memory per workspace at 5 s"), format!("{:.1} KiB", per_sample * 120.0 / 1024.0)));
        }
        if Instant::now() >= budget {
            break;
        }
    }
    sampler.set_interval(Duration::from_millis(env.settings.metrics_sample_ms));
    if let Some((pid, _)) = rigbox_vmm::process::find_vm_processes().into_iter().find(|(_, id)| id.starts_with(&format!("{}-", p.node.node.id()))) {
        let t = Instant::now();
        for _ in 0..2000 {
            std::hint::black_box(rigbox_node::metrics::host_view(pid));
        }
        rows.push(Row::new("host reads per sample, a real VMM", format!("{:.1} µs", t.elapsed().as_secs_f64() * 1e6 / 2000.0)));
    }
    for id in ids {
        let _ = client.delete_workspace(&id).await;
    }
    Ok(())
}

/// Runs the section.
pub async fn run(env: &BenchEnv) -> anyhow::Result<Section> {
    let mut rows = Vec::new();
    let mut notes = vec![
        "platform CPU = this process (node agent, control plane, SQLite) with collection on minus paused, per sample; guest-side = the QEMU processes, same difference".to_string(),
        "real workspaces: base template, 512 MiB (the template floor), 1 vCPU, TCG; restored from the warm template when it is ready".to_string(),
    ];
    synthetic(&mut rows, &mut notes).await?;
    if let Err(e) = real(env, &mut rows, &mut notes).await {
        notes.push(format!("real workspaces not measured: {e}"));
    }
    Ok(Section { title: "metrics".into(), rows, notes })
}
