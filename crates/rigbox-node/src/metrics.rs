//! Usage collection for metrics, workspace logs, and the node's Prometheus
//! exposition.
//!
//! **Collection.** One task per node samples every running workspace every
//! interval (5 s by default; the control plane's puller sets it with
//! `GET /v1/usage?interval_ms=`). Per workspace and tick it reads, on the
//! host, `/proc/<vmm>/stat` (CPU time and the start time that guards against
//! pid reuse), `/proc/<vmm>/statm` (RSS), `/proc/<vmm>/net/dev` (the tap's
//! counters: the VMM runs inside the slot's namespace, so its view of
//! `net/dev` is the slot's), and the disk file's allocation; and it asks the
//! guest agent for its own view (`GET /v1/stats`: memory, root filesystem,
//! CPU jiffies), at most 16 guests at a time with a short timeout. CPU percent
//! is the guest's busy share of its vCPUs between two answers; when the guest
//! does not answer, the VMM's CPU time per vCPU stands in (and memory and
//! disk fall back to the VMM's RSS and the disk file's allocation), and the
//! sample says `guest_fresh: false`. The first reading after a start only
//! primes the counters (it has no rates to report). Samples go into a ring (10 minutes, at
//! most 100 000) that the control plane drains with a cursor; the ring's
//! `epoch` changes when the collector restarts so a puller starts over.
//! Boots (from `on_running`) and new snapshots (a scan of the snapshot
//! directory every 10 s) become duration events in the same stream.
//!
//! **Logs.** `GET /v1/workspaces/{id}/logs` pages the serial console
//! (`console.log`, kept on the node in every state; lines numbered from 1,
//! escape sequences and incomplete last lines left out) or the guest's journal
//! (`journalctl -o json` run through the guest agent, so it can page in both
//! directions; lines numbered by the journal's sequence number). Cursors are
//! opaque: `c:<byte offset>:<line index>` and `j:<journal cursor>`.
//!
//! **Prometheus.** `GET /metrics` on the node API, behind the node token like
//! every node route (scrape with `authorization: {credentials: <node token>}`):
//! node capacity and commitments, workspaces by state, boot and snapshot
//! durations, per-workspace usage gauges, and the collector's own cost.

use crate::error::NodeError;
use crate::node::{now_ms, Node, Ws};
use crate::server::AppState;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use prometheus::{Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, Opts, Registry};
use rigbox_guest_proto::{ExecRequest, ExecResponse, GuestStats};
use rigbox_node_api::usage::{LogDirection, LogEntry, LogPage, LogQuery, LogSource, UsageBatch, UsageEvent, UsageSample};
use rigbox_types::WorkspaceState;
use serde::Deserialize;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Default sampling interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Shortest interval a puller may ask for.
pub const MIN_INTERVAL: Duration = Duration::from_millis(200);
/// Longest interval a puller may ask for.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);
const RING_AGE_MS: u64 = 10 * 60 * 1000;
const RING_MAX: usize = 100_000;
const EVENTS_MAX: usize = 1000;
const GUEST_CONCURRENCY: usize = 16;
const SNAPSHOT_SCAN_EVERY: Duration = Duration::from_secs(10);

/// Previous counters of one workspace (for rates).
#[derive(Debug, Clone, Default)]
struct Prev {
    /// Start time of the VMM process the counters belong to.
    vm_start_ticks: u64,
    at_ms: u64,
    vmm_cpu_ms: u64,
    guest_total: u64,
    guest_idle: u64,
    has_guest: bool,
    net_rx: u64,
    net_tx: u64,
}

#[derive(Default)]
struct Ring {
    next_seq: u64,
    samples: VecDeque<(u64, UsageSample)>,
    events: VecDeque<(u64, UsageEvent)>,
}

/// The node's Prometheus families.
struct Prom {
    registry: Registry,
    info: GaugeVec,
    node: GaugeVec,
    by_state: GaugeVec,
    boot: HistogramVec,
    snapshot: HistogramVec,
    tick: HistogramVec,
    ticks: IntCounter,
    guest_errors: IntCounter,
    ws: GaugeVec,
}

fn prom() -> Prom {
    let registry = Registry::new();
    let info = GaugeVec::new(Opts::new("rigbox_node_info", "The node agent (value 1)."), &["node_id", "backend", "accel", "version"]).expect("metric");
    let node = GaugeVec::new(
        Opts::new("rigbox_node_capacity", "Node capacity and commitments: vcpus, memory_bytes, disk_bytes; kind total, committed, free."),
        &["resource", "kind"],
    )
    .expect("metric");
    let by_state = GaugeVec::new(Opts::new("rigbox_node_workspaces", "Workspaces on this node by state."), &["state"]).expect("metric");
    let boot = HistogramVec::new(
        HistogramOpts::new("rigbox_node_boot_duration_seconds", "Start to running (boots and warm restores).")
            .buckets(vec![0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0]),
        &[],
    )
    .expect("metric");
    let snapshot = HistogramVec::new(
        HistogramOpts::new("rigbox_node_snapshot_duration_seconds", "Time to take a snapshot, by kind.")
            .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0]),
        &["kind"],
    )
    .expect("metric");
    let tick = HistogramVec::new(
        HistogramOpts::new("rigbox_node_metrics_collection_seconds", "Wall time of one collection pass over all running workspaces.")
            .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
        &[],
    )
    .expect("metric");
    let ticks = IntCounter::new("rigbox_node_metrics_collections_total", "Collection passes.").expect("metric");
    let guest_errors = IntCounter::new("rigbox_node_metrics_guest_errors_total", "Guest agents that did not answer a stats request in time.").expect("metric");
    let ws = GaugeVec::new(
        Opts::new(
            "rigbox_workspace_usage",
            "Latest usage sample per workspace: cpu_percent, host_cpu_percent, memory_used_bytes, memory_total_bytes, vmm_rss_bytes, disk_used_bytes, disk_total_bytes, disk_allocated_bytes, network_rx_bytes, network_tx_bytes.",
        ),
        &["workspace", "metric"],
    )
    .expect("metric");
    for c in [
        Box::new(info.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(node.clone()),
        Box::new(by_state.clone()),
        Box::new(boot.clone()),
        Box::new(snapshot.clone()),
        Box::new(tick.clone()),
        Box::new(ticks.clone()),
        Box::new(guest_errors.clone()),
        Box::new(ws.clone()),
    ] {
        registry.register(c).expect("unique metric names");
    }
    Prom { registry, info, node, by_state, boot, snapshot, tick, ticks, guest_errors, ws }
}

/// Metrics state of one node (several nodes may share a process in tests).
pub(crate) struct NodeMetrics {
    epoch: String,
    interval_ms: AtomicU64,
    paused: AtomicBool,
    /// Shutdown token of the node instance whose collector runs.
    running: Mutex<Option<CancellationToken>>,
    prev: Mutex<HashMap<String, Prev>>,
    latest: Mutex<HashMap<String, UsageSample>>,
    ring: Mutex<Ring>,
    /// Last boot duration seen per workspace (a resume keeps the old one).
    boots: Mutex<HashMap<String, u64>>,
    snapshots_seen: Mutex<Option<HashSet<String>>>,
    /// Kept-alive connections to guest agents (one per workspace), so a
    /// sample costs the guest one request, not a TCP handshake as well.
    agents: Mutex<HashMap<String, AgentConn>>,
    /// Console line counts (the file is only appended to): (inode, bytes
    /// scanned, newlines, end of the last complete line).
    console_index: Mutex<HashMap<String, (u64, u64, u64, u64)>>,
    prom: Prom,
}

fn state(node: &Node) -> Arc<NodeMetrics> {
    static ALL: OnceLock<Mutex<HashMap<String, Arc<NodeMetrics>>>> = OnceLock::new();
    let mut m = ALL.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    m.entry(node.id().to_string()).or_insert_with(|| Arc::new(NodeMetrics::new())).clone()
}

impl NodeMetrics {
    fn new() -> Self {
        let mut b = [0u8; 6];
        rand::Rng::fill(&mut rand::thread_rng(), &mut b[..]);
        NodeMetrics {
            epoch: hex::encode(b),
            interval_ms: AtomicU64::new(DEFAULT_INTERVAL.as_millis() as u64),
            paused: AtomicBool::new(false),
            running: Mutex::new(None),
            prev: Mutex::new(HashMap::new()),
            latest: Mutex::new(HashMap::new()),
            ring: Mutex::new(Ring::default()),
            boots: Mutex::new(HashMap::new()),
            snapshots_seen: Mutex::new(None),
            agents: Mutex::new(HashMap::new()),
            console_index: Mutex::new(HashMap::new()),
            prom: prom(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sets the sampling interval of `node`'s collector (clamped to 200 ms – 60 s).
pub fn set_interval(node: &Node, every: Duration) {
    let ms = every.clamp(MIN_INTERVAL, MAX_INTERVAL).as_millis() as u64;
    state(node).interval_ms.store(ms, Ordering::Relaxed);
}

/// Pauses or resumes collection (benchmarks measure the cost with and without).
pub fn set_paused(node: &Node, paused: bool) {
    state(node).paused.store(paused, Ordering::Relaxed);
}

/// Collection passes so far and the usage ring's size: (passes, samples
/// held, approximate bytes held).
pub fn collector_stats(node: &Node) -> (u64, usize, usize) {
    let m = state(node);
    let r = lock(&m.ring);
    let bytes = r.samples.iter().map(|(_, s)| std::mem::size_of::<(u64, UsageSample)>() + s.workspace_id.capacity()).sum::<usize>()
        + lock(&m.prev).len() * (std::mem::size_of::<Prev>() + 48)
        + lock(&m.latest).len() * (std::mem::size_of::<UsageSample>() + 48);
    (m.prom.ticks.get(), r.samples.len(), bytes)
}

/// Starts the collector of this node instance unless it runs.
fn ensure_collector(node: &Node) {
    let m = state(node);
    let mut r = lock(&m.running);
    if r.as_ref().is_some_and(|t| !t.is_cancelled()) {
        return;
    }
    let token = node.inner.shutdown.clone();
    if token.is_cancelled() {
        return;
    }
    *r = Some(token.clone());
    drop(r);
    let n = node.clone();
    tokio::spawn(async move { collect_loop(n, m, token).await });
}

/// Node API routes of this feature.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/usage", get(usage))
        .route("/v1/workspaces/{id}/usage", get(latest))
        .route("/v1/workspaces/{id}/logs", get(logs))
        .route("/metrics", get(prometheus_text))
}

/// Called when a workspace reached `running` (after boot or restore).
pub(crate) async fn on_running(node: &Node, ws: &Ws) {
    ensure_collector(node);
    let m = state(node);
    lock(&m.prev).remove(&ws.id);
    let Ok(rec) = tokio::time::timeout(Duration::from_secs(2), ws.rec.lock()).await else { return };
    let (boot_ms, changed) = (rec.boot_ms, rec.state_changed_unix_ms);
    drop(rec);
    let Some(b) = boot_ms else { return };
    let fresh = now_ms().saturating_sub(changed) < 60_000;
    let seen = lock(&m.boots).insert(ws.id.clone(), b);
    if fresh && seen != Some(b) {
        m.prom.boot.with_label_values(&[] as &[&str]).observe(b as f64 / 1000.0);
        push_event(&m, UsageEvent { kind: "boot".into(), detail: "start".into(), workspace_id: ws.id.clone(), seconds: b as f64 / 1000.0, at_unix_ms: now_ms() });
    }
}

/// Called before a workspace's VM and slot go away (stop, crash, delete),
/// with the workspace record locked: do not lock `ws.rec` here.
pub(crate) async fn on_halt(node: &Node, ws: &Ws) {
    let m = state(node);
    lock(&m.prev).remove(&ws.id);
    lock(&m.latest).remove(&ws.id);
    lock(&m.console_index).remove(&ws.id);
    lock(&m.agents).remove(&ws.id);
}

fn push_event(m: &NodeMetrics, e: UsageEvent) {
    let mut r = lock(&m.ring);
    r.next_seq += 1;
    let seq = r.next_seq;
    r.events.push_back((seq, e));
    while r.events.len() > EVENTS_MAX {
        r.events.pop_front();
    }
}

// ------------------------------------------------------------ collection

/// What the host tells about one VMM process.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostView {
    /// Start time (clock ticks since boot), to detect pid reuse.
    pub start_ticks: u64,
    /// User + system CPU time (ms).
    pub cpu_ms: u64,
    /// Resident memory (bytes).
    pub rss_bytes: u64,
    /// Bytes received on the slot's tap (what the guest sent).
    pub tap_rx: Option<u64>,
    /// Bytes sent on the tap (what the guest received).
    pub tap_tx: Option<u64>,
}

fn sysconf_consts() -> (u64, u64) {
    static C: OnceLock<(u64, u64)> = OnceLock::new();
    *C.get_or_init(|| {
        let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100).max(1) as u64;
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096).max(1) as u64;
        (tick, page)
    })
}

/// Reads `/proc/<pid>/{stat,statm,net/dev}`: three small files, no process
/// spawned, no namespace entered. None when the process is gone.
pub fn host_view(pid: u32) -> Option<HostView> {
    let (tick, page) = sysconf_consts();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // After "pid (comm)": state is 0, utime 11, stime 12, starttime 19.
    if matches!(f.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    let mut v = HostView { start_ticks: num(19), cpu_ms: (num(11) + num(12)) * 1000 / tick, ..Default::default() };
    v.rss_bytes = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|x| x.parse::<u64>().ok()))
        .map(|p| p * page)
        .unwrap_or(0);
    if let Ok(dev) = std::fs::read_to_string(format!("/proc/{pid}/net/dev")) {
        if let Some((rx, tx)) = tap_counters(&dev, rigbox_netns::TAP_NAME) {
            v.tap_rx = Some(rx);
            v.tap_tx = Some(tx);
        }
    }
    Some(v)
}

/// (rx bytes, tx bytes) of `iface` in a `/proc/net/dev` table.
fn tap_counters(dev: &str, iface: &str) -> Option<(u64, u64)> {
    dev.lines().skip(2).find_map(|l| {
        let (name, rest) = l.split_once(':')?;
        if name.trim() != iface {
            return None;
        }
        let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        Some((*f.first()?, *f.get(8)?))
    })
}

/// What one collection needs to know about a running workspace.
struct Target {
    ws: Arc<Ws>,
    pid: u32,
    start_ticks: u64,
    vcpus: u32,
    ram_bytes: u64,
    disk_bytes: u64,
    disk_file: PathBuf,
}

fn targets(node: &Node) -> Vec<Target> {
    let all: Vec<Arc<Ws>> = node.inner.workspaces.lock().map(|m| m.values().cloned().collect()).unwrap_or_default();
    let mut out = Vec::new();
    for ws in all {
        // A workspace busy with a long operation (a live snapshot) is skipped this time.
        let Ok(rec) = ws.try_lock_rec() else { continue };
        if rec.state != WorkspaceState::Running {
            continue;
        }
        let Some(vm) = rec.vm.clone() else { continue };
        let t = Target {
            pid: vm.pid,
            start_ticks: vm.start_ticks,
            vcpus: rec.spec.vcpus.max(1),
            ram_bytes: u64::from(rec.spec.ram_mb) << 20,
            disk_bytes: u64::from(rec.spec.disk_mb) << 20,
            disk_file: ws.disk_of(&rec),
            ws: ws.clone(),
        };
        drop(rec);
        out.push(t);
    }
    out
}

/// Turns raw readings into a sample, updating the previous counters.
fn make_sample(t: &Target, host: &HostView, guest: Option<&GuestStats>, prev: Option<&Prev>, at_ms: u64, allocated: u64) -> (UsageSample, Prev) {
    let prev = prev.filter(|p| p.vm_start_ticks == host.start_ticks);
    let dt_ms = prev.map(|p| at_ms.saturating_sub(p.at_ms)).unwrap_or(0);
    let host_cpu = match prev {
        Some(p) if dt_ms > 0 => (host.cpu_ms.saturating_sub(p.vmm_cpu_ms)) as f64 * 100.0 / dt_ms as f64,
        _ => 0.0,
    };
    let guest_cpu = match (guest, prev) {
        (Some(g), Some(p)) if p.has_guest && g.cpu_total_jiffies > p.guest_total => {
            let total = (g.cpu_total_jiffies - p.guest_total) as f64;
            let idle = g.cpu_idle_jiffies.saturating_sub(p.guest_idle) as f64;
            Some(((total - idle) / total * 100.0).clamp(0.0, 100.0))
        }
        _ => None,
    };
    let cpu = guest_cpu.unwrap_or_else(|| (host_cpu / f64::from(t.vcpus)).clamp(0.0, 100.0));
    let (rx, tx) = (host.tap_tx.unwrap_or(0), host.tap_rx.unwrap_or(0));
    let delta = |cur: u64, old: Option<u64>| match old {
        Some(o) if cur >= o => cur - o,
        Some(_) => cur,
        None => 0,
    };
    let s = UsageSample {
        workspace_id: t.ws.id.clone(),
        at_unix_ms: at_ms,
        interval_ms: dt_ms,
        cpu_percent: cpu,
        host_cpu_percent: host_cpu,
        mem_used_bytes: match guest {
            Some(g) if g.mem_total_kb > 0 => g.mem_total_kb.saturating_sub(g.mem_available_kb) * 1024,
            _ => host.rss_bytes.min(t.ram_bytes),
        },
        mem_total_bytes: t.ram_bytes,
        vmm_rss_bytes: host.rss_bytes,
        disk_used_bytes: match guest {
            Some(g) if g.disk_total_bytes > 0 => g.disk_used_bytes,
            _ => allocated.min(t.disk_bytes),
        },
        disk_total_bytes: match guest {
            Some(g) if g.disk_total_bytes > 0 => g.disk_total_bytes,
            _ => t.disk_bytes,
        },
        disk_allocated_bytes: allocated,
        net_rx_bytes: rx,
        net_tx_bytes: tx,
        net_rx_delta: delta(rx, prev.map(|p| p.net_rx)),
        net_tx_delta: delta(tx, prev.map(|p| p.net_tx)),
        guest_fresh: guest.is_some(),
    };
    let next = Prev {
        vm_start_ticks: host.start_ticks,
        at_ms,
        vmm_cpu_ms: host.cpu_ms,
        guest_total: guest.map(|g| g.cpu_total_jiffies).unwrap_or(0),
        guest_idle: guest.map(|g| g.cpu_idle_jiffies).unwrap_or(0),
        has_guest: guest.is_some(),
        net_rx: rx,
        net_tx: tx,
    };
    (s, next)
}

async fn collect_one(t: Target, m: Arc<NodeMetrics>, guest_timeout: Duration) -> Option<(UsageSample, Prev)> {
    let (host, allocated) = {
        let (pid, file) = (t.pid, t.disk_file.clone());
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::MetadataExt;
            (host_view(pid), std::fs::metadata(file).map(|md| md.blocks() * 512).unwrap_or(0))
        })
        .await
        .ok()?
    };
    let host = host.filter(|h| h.start_ticks == t.start_ticks)?;
    let guest = match guest_stats(&m, &t, guest_timeout).await {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::debug!(workspace = %t.ws.id, "guest stats: {e}");
            m.prom.guest_errors.inc();
            None
        }
    };
    let prev = lock(&m.prev).get(&t.ws.id).cloned();
    let at = now_ms();
    Some(make_sample(&t, &host, guest.as_ref(), prev.as_ref(), at, allocated))
}

/// A kept-alive HTTP/1.1 connection to one guest agent, with the VMM process it belongs to.
struct AgentConn {
    vm_start_ticks: u64,
    sender: hyper::client::conn::http1::SendRequest<axum::body::Body>,
}

/// `GET /v1/stats` over the workspace's kept-alive agent connection (opened
/// inside the slot when missing or broken).
async fn guest_stats(m: &NodeMetrics, t: &Target, timeout: Duration) -> Result<GuestStats, crate::guest::GuestError> {
    use crate::guest::GuestError;
    use http_body_util::BodyExt;
    let work = async {
        let kept = lock(&m.agents).remove(&t.ws.id).filter(|c| c.vm_start_ticks == t.start_ticks && !c.sender.is_closed());
        let mut sender = match kept {
            Some(c) => c.sender,
            None => {
                let stream = t.ws.slot().connect(crate::guest::agent_addr(), Duration::from_secs(2)).await?;
                let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| GuestError::Unreachable(e.to_string()))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                sender
            }
        };
        sender.ready().await.map_err(|e| GuestError::Unreachable(e.to_string()))?;
        let req = hyper::Request::builder()
            .method(hyper::Method::GET)
            .uri("/v1/stats")
            .header("host", "guest")
            .body(axum::body::Body::empty())
            .map_err(|e| GuestError::Decode(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| GuestError::Unreachable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(crate::guest::Guest::error_of(resp).await);
        }
        let body = resp.into_body().collect().await.map_err(|e| GuestError::Unreachable(e.to_string()))?.to_bytes();
        let stats = serde_json::from_slice(&body).map_err(|e| GuestError::Decode(e.to_string()))?;
        lock(&m.agents).insert(t.ws.id.clone(), AgentConn { vm_start_ticks: t.start_ticks, sender });
        Ok(stats)
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| GuestError::Timeout(timeout))?
}

/// Whether a sample has rates (the first one after a start only primes the counters).
fn has_rates(s: &UsageSample) -> bool {
    s.interval_ms > 0
}

/// One pass over every running workspace; returns the samples taken.
async fn collect_once(node: &Node, m: &Arc<NodeMetrics>) -> Vec<UsageSample> {
    let t0 = Instant::now();
    let every = Duration::from_millis(m.interval_ms.load(Ordering::Relaxed));
    let guest_timeout = every.clamp(Duration::from_secs(1), Duration::from_secs(3));
    let results: Vec<_> = futures::stream::iter(targets(node))
        .map(|t| collect_one(t, m.clone(), guest_timeout))
        .buffer_unordered(GUEST_CONCURRENCY)
        .collect()
        .await;
    let mut samples = Vec::with_capacity(results.len());
    {
        let mut prev = lock(&m.prev);
        let mut latest = lock(&m.latest);
        for (s, p) in results.into_iter().flatten() {
            prev.insert(s.workspace_id.clone(), p);
            if has_rates(&s) {
                latest.insert(s.workspace_id.clone(), s.clone());
                samples.push(s);
            }
        }
    }
    {
        let mut r = lock(&m.ring);
        for s in &samples {
            r.next_seq += 1;
            let seq = r.next_seq;
            r.samples.push_back((seq, s.clone()));
        }
        let oldest = now_ms().saturating_sub(RING_AGE_MS);
        while r.samples.front().is_some_and(|(_, s)| s.at_unix_ms < oldest) || r.samples.len() > RING_MAX {
            r.samples.pop_front();
        }
    }
    m.prom.tick.with_label_values(&[] as &[&str]).observe(t0.elapsed().as_secs_f64());
    m.prom.ticks.inc();
    samples
}

/// Notices snapshots that appeared since the last scan.
async fn scan_snapshots(node: &Node, m: &NodeMetrics) {
    let root = node.inner.cfg.data_dir.join("snapshots");
    let mut names = HashSet::new();
    if let Ok(mut rd) = tokio::fs::read_dir(&root).await {
        while let Ok(Some(e)) = rd.next_entry().await {
            let n = e.file_name().to_string_lossy().into_owned();
            if !n.starts_with('.') && !n.contains("tmp") {
                names.insert(n);
            }
        }
    }
    let first = lock(&m.snapshots_seen).is_none();
    if first {
        *lock(&m.snapshots_seen) = Some(names);
        return;
    }
    let new: Vec<String> = {
        let seen = lock(&m.snapshots_seen);
        names.iter().filter(|n| !seen.as_ref().is_some_and(|s| s.contains(*n))).cloned().collect()
    };
    for n in new {
        let Ok(b) = tokio::fs::read(root.join(&n).join("meta.json")).await else { continue };
        let Ok(meta) = serde_json::from_slice::<rigbox_node_api::SnapshotMeta>(&b) else { continue };
        let kind = match meta.kind {
            rigbox_node_api::SnapshotKind::Disk => "disk",
            rigbox_node_api::SnapshotKind::Live => "live",
        };
        m.prom.snapshot.with_label_values(&[kind]).observe(meta.took_ms as f64 / 1000.0);
        push_event(m, UsageEvent { kind: "snapshot".into(), detail: kind.into(), workspace_id: meta.workspace_id.clone(), seconds: meta.took_ms as f64 / 1000.0, at_unix_ms: now_ms() });
        if let Some(s) = lock(&m.snapshots_seen).as_mut() {
            s.insert(n);
        }
    }
    if let Some(s) = lock(&m.snapshots_seen).as_mut() {
        s.retain(|n| names.contains(n));
    }
}

async fn collect_loop(node: Node, m: Arc<NodeMetrics>, stop: CancellationToken) {
    tracing::debug!(node = node.id(), "usage collector started");
    let mut last_scan = Instant::now() - SNAPSHOT_SCAN_EVERY;
    loop {
        let t0 = Instant::now();
        if !m.paused.load(Ordering::Relaxed) {
            collect_once(&node, &m).await;
        }
        if last_scan.elapsed() >= SNAPSHOT_SCAN_EVERY {
            last_scan = Instant::now();
            scan_snapshots(&node, &m).await;
        }
        let every = Duration::from_millis(m.interval_ms.load(Ordering::Relaxed));
        let wait = every.saturating_sub(t0.elapsed()).max(Duration::from_millis(50));
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tracing::debug!(node = node.id(), "usage collector stopped");
}

// ------------------------------------------------------------ handlers

#[derive(Deserialize)]
struct UsageQuery {
    #[serde(default)]
    after: u64,
    interval_ms: Option<u64>,
}

async fn usage(State(st): State<AppState>, Query(q): Query<UsageQuery>) -> Json<UsageBatch> {
    ensure_collector(&st.node);
    if let Some(ms) = q.interval_ms {
        set_interval(&st.node, Duration::from_millis(ms));
    }
    let m = state(&st.node);
    let r = lock(&m.ring);
    // Cap one answer; the puller comes back for the rest.
    let samples: Vec<(u64, UsageSample)> = r.samples.iter().filter(|(s, _)| *s > q.after).take(20_000).cloned().collect();
    let events: Vec<(u64, UsageEvent)> = r.events.iter().filter(|(s, _)| *s > q.after).cloned().collect();
    let next = match samples.last() {
        Some((s, _)) if samples.len() == 20_000 => *s,
        _ => r.next_seq,
    };
    let events = events.into_iter().filter(|(s, _)| *s <= next).map(|(_, e)| e).collect();
    Json(UsageBatch {
        epoch: m.epoch.clone(),
        next,
        interval_ms: m.interval_ms.load(Ordering::Relaxed),
        samples: samples.into_iter().map(|(_, s)| s).collect(),
        events,
    })
}

async fn latest(State(st): State<AppState>, Path(id): Path<String>) -> Result<Json<UsageSample>, NodeError> {
    st.node.get(&id)?;
    ensure_collector(&st.node);
    let m = state(&st.node);
    let s = lock(&m.latest).get(&id).cloned();
    s.map(Json).ok_or_else(|| NodeError::NotFound(format!("{id} (no usage sample yet)")))
}

async fn prometheus_text(State(st): State<AppState>) -> impl IntoResponse {
    let m = state(&st.node);
    let info = st.node.info().await;
    let p = &m.prom;
    p.info.reset();
    p.info.with_label_values(&[info.node_id.as_str(), &info.backend, &info.accel, &info.version]).set(1.0);
    let free_disk = nix::sys::statvfs::statvfs(&st.node.inner.cfg.data_dir).map(|s| s.blocks_available() * s.fragment_size()).unwrap_or(0);
    let mem_avail = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("MemAvailable:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(0)
        * 1024;
    let set = |r: &str, k: &str, v: f64| p.node.with_label_values(&[r, k]).set(v);
    set("vcpus", "total", f64::from(info.capacity.vcpus));
    set("vcpus", "committed", f64::from(info.committed.vcpus));
    set("vcpus", "free", f64::from(info.capacity.vcpus) - f64::from(info.committed.vcpus));
    set("memory_bytes", "total", (info.capacity.ram_mb << 20) as f64);
    set("memory_bytes", "committed", (info.committed.ram_mb << 20) as f64);
    set("memory_bytes", "free", mem_avail as f64);
    set("disk_bytes", "total", (info.capacity.disk_mb << 20) as f64);
    set("disk_bytes", "committed", (info.committed.disk_mb << 20) as f64);
    set("disk_bytes", "free", free_disk as f64);
    p.by_state.reset();
    for s in WorkspaceState::ALL {
        p.by_state.with_label_values(&[s.as_str()]).set(f64::from(info.workspaces.get(s.as_str()).copied().unwrap_or(0)));
    }
    p.ws.reset();
    for (id, s) in lock(&m.latest).iter() {
        for (k, v) in [
            ("cpu_percent", s.cpu_percent),
            ("host_cpu_percent", s.host_cpu_percent),
            ("memory_used_bytes", s.mem_used_bytes as f64),
            ("memory_total_bytes", s.mem_total_bytes as f64),
            ("vmm_rss_bytes", s.vmm_rss_bytes as f64),
            ("disk_used_bytes", s.disk_used_bytes as f64),
            ("disk_total_bytes", s.disk_total_bytes as f64),
            ("disk_allocated_bytes", s.disk_allocated_bytes as f64),
            ("network_rx_bytes", s.net_rx_bytes as f64),
            ("network_tx_bytes", s.net_tx_bytes as f64),
        ] {
            p.ws.with_label_values(&[id.as_str(), k]).set(v);
        }
    }
    let mut out = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&p.registry.gather(), &mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out)
}

#[derive(Deserialize)]
struct LogsQuery {
    source: Option<LogSource>,
    #[serde(default)]
    direction: LogDirection,
    lines: Option<u32>,
    cursor: Option<String>,
    unit: Option<String>,
}

async fn logs(State(st): State<AppState>, Path(id): Path<String>, Query(q): Query<LogsQuery>) -> Result<Json<LogPage>, NodeError> {
    let ws = st.node.get(&id)?;
    let source = match (q.source, q.cursor.as_deref()) {
        (Some(s), _) => s,
        (None, Some(c)) if c.starts_with("c:") => LogSource::Console,
        (None, Some(_)) => LogSource::Journal,
        (None, None) => LogSource::Journal,
    };
    let query = LogQuery { source, direction: q.direction, lines: q.lines.unwrap_or(100).clamp(1, 1000), cursor: q.cursor, unit: q.unit };
    let page = match source {
        LogSource::Console => {
            let m = state(&st.node);
            let path = ws.dir.join("console.log");
            let id = ws.id.clone();
            tokio::task::spawn_blocking(move || console_page(&m, &id, &path, &query))
                .await
                .map_err(|e| NodeError::Invalid(e.to_string()))??
        }
        LogSource::Journal => journal_page(&st.node, &id, &query).await?,
    };
    Ok(Json(page))
}

// ------------------------------------------------------------ console

/// A position at the start of a console line: (byte offset, 0-based line index).
type Pos = (u64, u64);

fn parse_console_cursor(c: &str) -> Result<Pos, NodeError> {
    let bad = || NodeError::Invalid(format!("invalid console cursor {c:?}"));
    let rest = c.strip_prefix("c:").ok_or_else(bad)?;
    let (a, b) = rest.split_once(':').ok_or_else(bad)?;
    Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
}

fn console_cursor(p: Pos) -> String {
    format!("c:{}:{}", p.0, p.1)
}

/// Removes escape sequences, carriage returns and other control characters.
pub fn clean_console_line(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\u{1b}' => match it.peek() {
                Some('[') => {
                    it.next();
                    // CSI: parameters and intermediates, then one final byte @..~.
                    for x in it.by_ref() {
                        if ('@'..='~').contains(&x) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    // OSC: up to BEL or ESC \.
                    it.next();
                    while let Some(x) = it.next() {
                        if x == '\u{7}' || (x == '\u{1b}' && it.peek() == Some(&'\\')) {
                            if x == '\u{1b}' {
                                it.next();
                            }
                            break;
                        }
                    }
                }
                Some(_) => {
                    it.next();
                }
                None => {}
            },
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Counts complete lines of the console file (incrementally, per workspace).
fn console_extent(m: &NodeMetrics, id: &str, f: &mut std::fs::File) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let md = f.metadata()?;
    let len = md.len();
    let (ino, mut scanned, mut lines, mut end) = lock(&m.console_index).get(id).copied().unwrap_or((md.ino(), 0, 0, 0));
    if len < scanned || ino != md.ino() {
        (scanned, lines, end) = (0, 0, 0);
    }
    if len > scanned {
        f.seek(SeekFrom::Start(scanned))?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut pos = scanned;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            for (i, b) in buf[..n].iter().enumerate() {
                if *b == b'\n' {
                    lines += 1;
                    end = pos + i as u64 + 1;
                }
            }
            pos += n as u64;
        }
        scanned = pos;
        lock(&m.console_index).insert(id.to_string(), (md.ino(), scanned, lines, end));
    }
    Ok((end, lines))
}

fn read_range(f: &mut std::fs::File, from: u64, to: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; (to - from) as usize];
    f.seek(SeekFrom::Start(from))?;
    f.read_exact(&mut buf)?;
    Ok(buf)
}

fn console_page(m: &NodeMetrics, id: &str, path: &std::path::Path, q: &LogQuery) -> Result<LogPage, NodeError> {
    let n = q.lines as usize;
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(LogPage { source: LogSource::Console, lines: vec![], cursor: None, has_more: false, follow: console_cursor((0, 0)) });
        }
        Err(e) => return Err(NodeError::Io { context: "reading the console log".into(), source: e }),
    };
    let io = |e: std::io::Error| NodeError::Io { context: "reading the console log".into(), source: e };
    let (end, total) = console_extent(m, id, &mut f).map_err(&io)?;
    let start = match &q.cursor {
        Some(c) => {
            let p = parse_console_cursor(c)?;
            if p.0 > end || p.1 > total {
                return Err(NodeError::Invalid("the console cursor is past the end of the log".into()));
            }
            Some(p)
        }
        None => None,
    };
    match q.direction {
        LogDirection::Oldest => {
            let (mut off, mut idx) = start.unwrap_or((0, 0));
            let mut lines = Vec::new();
            // Read forward in chunks until n+1 lines or the end of complete lines.
            let mut has_more = false;
            while off < end {
                let to = (off + 1024 * 1024).min(end);
                let chunk = read_range(&mut f, off, to).map_err(&io)?;
                let mut consumed = 0usize;
                for piece in chunk.split_inclusive(|b| *b == b'\n') {
                    if piece.last() != Some(&b'\n') {
                        break;
                    }
                    if lines.len() == n {
                        has_more = true;
                        break;
                    }
                    lines.push(LogEntry { number: idx + 1, timestamp_us: None, message: clean_console_line(&piece[..piece.len() - 1]) });
                    idx += 1;
                    consumed += piece.len();
                }
                off += consumed as u64;
                if has_more || consumed == 0 {
                    break;
                }
            }
            let here = console_cursor((off, idx));
            Ok(LogPage { source: LogSource::Console, lines, cursor: Some(here.clone()), has_more, follow: here })
        }
        LogDirection::Newest => {
            let (stop, stop_idx) = start.unwrap_or((end, total));
            // Read backwards with a growing window until n+1 complete lines.
            let mut window = 64 * 1024u64;
            loop {
                let from = stop.saturating_sub(window);
                let chunk = read_range(&mut f, from, stop).map_err(&io)?;
                let mut pieces: Vec<&[u8]> = chunk.split_inclusive(|b| *b == b'\n').collect();
                if from > 0 && !pieces.is_empty() {
                    // The first piece may be the tail of a longer line.
                    pieces.remove(0);
                }
                if pieces.len() > n || from == 0 {
                    let has_more = pieces.len() > n || (from > 0);
                    let take = pieces.len().min(n);
                    let mut lines = Vec::with_capacity(take);
                    let mut off = stop;
                    let mut idx = stop_idx;
                    for p in pieces.iter().rev().take(take) {
                        off -= p.len() as u64;
                        idx -= 1;
                        let body = p.strip_suffix(b"\n").unwrap_or(p);
                        lines.push(LogEntry { number: idx + 1, timestamp_us: None, message: clean_console_line(body) });
                    }
                    let has_more = has_more && idx > 0;
                    let follow = console_cursor(if q.cursor.is_some() { (stop, stop_idx) } else { (end, total) });
                    return Ok(LogPage {
                        source: LogSource::Console,
                        lines,
                        cursor: has_more.then(|| console_cursor((off, idx))),
                        has_more,
                        follow,
                    });
                }
                window *= 4;
            }
        }
    }
}

// ------------------------------------------------------------ journal

fn valid_unit(u: &str) -> bool {
    !u.is_empty() && u.len() <= 256 && u.bytes().all(|b| b.is_ascii_alphanumeric() || b"@._:-\\".contains(&b))
}

fn valid_journal_cursor(c: &str) -> bool {
    !c.is_empty() && c.len() <= 512 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"=;_-".contains(&b))
}

/// The journal's sequence number in a cursor (`i=<hex>`).
fn seqnum(cursor: &str) -> u64 {
    cursor.split(';').find_map(|kv| kv.strip_prefix("i=")).and_then(|h| u64::from_str_radix(h, 16).ok()).unwrap_or(0)
}

/// One `journalctl -o json` line as a log entry and its cursor.
pub fn journal_entry(line: &str) -> Option<(LogEntry, String)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let cursor = s("__CURSOR");
    if cursor.is_empty() {
        return None;
    }
    let message = match v.get("MESSAGE") {
        Some(serde_json::Value::String(m)) => m.clone(),
        Some(serde_json::Value::Array(bytes)) => {
            String::from_utf8_lossy(&bytes.iter().filter_map(|b| b.as_u64().map(|x| x as u8)).collect::<Vec<_>>()).into_owned()
        }
        _ => String::new(),
    };
    let mut ident = s("SYSLOG_IDENTIFIER");
    if ident.is_empty() {
        ident = s("_COMM");
    }
    if ident.is_empty() {
        ident = s("_SYSTEMD_UNIT");
    }
    let pid = s("_PID");
    let prefix = match (ident.is_empty(), pid.is_empty()) {
        (true, _) => String::new(),
        (false, true) => format!("{ident}: "),
        (false, false) => format!("{ident}[{pid}]: "),
    };
    let text = format!("{prefix}{}", message.trim_end_matches('\n'));
    let number = seqnum(&cursor);
    Some((LogEntry { number, timestamp_us: s("__REALTIME_TIMESTAMP").parse().ok(), message: text }, cursor))
}

async fn journal_page(node: &Node, id: &str, q: &LogQuery) -> Result<LogPage, NodeError> {
    let n = q.lines as usize;
    let guest = node.running_guest(id).await?;
    let given = match &q.cursor {
        Some(c) => {
            let raw = c.strip_prefix("j:").filter(|r| valid_journal_cursor(r)).ok_or_else(|| NodeError::Invalid(format!("invalid journal cursor {c:?}")))?;
            Some(raw.to_string())
        }
        None => None,
    };
    let mut argv: Vec<String> = ["journalctl", "-o", "json", "--no-pager", "-q", "--output-fields=MESSAGE,SYSLOG_IDENTIFIER,_COMM,_PID,_SYSTEMD_UNIT"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Some(u) = &q.unit {
        if !valid_unit(u) {
            return Err(NodeError::Invalid(format!("invalid unit name {u:?}")));
        }
        argv.push(format!("--unit={u}"));
    }
    if q.direction == LogDirection::Newest {
        argv.push("--reverse".into());
    }
    // `--cursor` includes the entry at the cursor (dropped below when it is
    // the one given); `--after-cursor` would skip one entry too many when the
    // cursor's own entry does not match the filter.
    match (&given, q.direction) {
        (Some(c), _) => argv.push(format!("--cursor={c}")),
        (None, LogDirection::Oldest) => argv.push("--cursor=t=0".into()),
        (None, LogDirection::Newest) => {}
    }
    argv.push(format!("--lines={}", n + 2));
    let req = ExecRequest { argv: Some(argv), user: Some("root".into()), timeout_ms: Some(20_000), ..Default::default() };
    let out: ExecResponse = guest.call(hyper::Method::POST, "/v1/exec", Some(&req), Duration::from_secs(40)).await?;
    if out.exit_code != Some(0) && out.stdout.is_empty() {
        return Err(NodeError::Command(format!("journalctl failed: {}", out.stderr.trim())));
    }
    let mut entries: Vec<(LogEntry, String)> = out.stdout.lines().filter_map(journal_entry).collect();
    if let (Some(c), Some(first)) = (&given, entries.first()) {
        if &first.1 == c {
            entries.remove(0);
        }
    }
    let has_more = entries.len() > n;
    entries.truncate(n);
    let last_cursor = entries.last().map(|e| format!("j:{}", e.1));
    let (cursor, follow) = match q.direction {
        LogDirection::Oldest => {
            let c = last_cursor.or_else(|| q.cursor.clone()).unwrap_or_else(|| "j:t=0".into());
            (Some(c.clone()), c)
        }
        LogDirection::Newest => {
            let newest = entries.first().map(|e| format!("j:{}", e.1));
            let follow = match (&q.cursor, newest) {
                (_, Some(c)) => c,
                (Some(c), None) => c.clone(),
                (None, None) => "j:t=0".into(),
            };
            (if has_more { last_cursor } else { None }, follow)
        }
    };
    Ok(LogPage { source: LogSource::Journal, lines: entries.into_iter().map(|e| e.0).collect(), cursor, has_more, follow })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_dev_tap_counters() {
        let dev = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n  tap0:    1234      10    0    0    0     0          0         0     5678      20    0    0    0     0       0          0\n";
        assert_eq!(tap_counters(dev, "tap0"), Some((1234, 5678)));
        assert_eq!(tap_counters(dev, "eth0"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let v = host_view(std::process::id()).unwrap();
        assert!(v.rss_bytes > 0 && v.start_ticks > 0);
    }

    #[test]
    fn console_lines_are_cleaned() {
        assert_eq!(clean_console_line(b"\x1b[0;32m  OK  \x1b[0m] Started x.\r"), "  OK  ] Started x.");
        assert_eq!(clean_console_line(b"a\tb\x07c"), "a\tbc");
        assert_eq!(clean_console_line(b"\x1b]0;title\x07after"), "after");
    }

    #[test]
    fn journal_lines_parse() {
        let l = r#"{"__CURSOR":"s=ab;i=1f;b=cd;m=1;t=2;x=3","__REALTIME_TIMESTAMP":"1700000000000000","SYSLOG_IDENTIFIER":"sshd","_PID":"42","MESSAGE":"hello\n"}"#;
        let (e, c) = journal_entry(l).unwrap();
        assert_eq!(e.message, "sshd[42]: hello");
        assert_eq!(e.number, 31);
        assert_eq!(e.timestamp_us, Some(1_700_000_000_000_000));
        assert!(c.starts_with("s=ab"));
        let bin = r#"{"__CURSOR":"i=2","MESSAGE":[104,105],"SYSLOG_IDENTIFIER":"kernel"}"#;
        assert_eq!(journal_entry(bin).unwrap().0.message, "kernel: hi");
        assert!(valid_journal_cursor("s=ab;i=1f;b=cd;m=1;t=2;x=3") && !valid_journal_cursor("x' ; rm"));
        assert!(valid_unit("rigbox-svc-web.service") && !valid_unit("a b"));
    }

    fn page(m: &NodeMetrics, path: &std::path::Path, direction: LogDirection, lines: u32, cursor: Option<String>) -> LogPage {
        console_page(m, "w", path, &LogQuery { source: LogSource::Console, direction, lines, cursor, unit: None }).unwrap()
    }

    fn nums(p: &LogPage) -> Vec<u64> {
        p.lines.iter().map(|l| l.number).collect()
    }

    #[test]
    fn console_pages_both_ways_and_follows() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("console.log");
        let mut text = String::new();
        for i in 1..=10 {
            text.push_str(&format!("line {i}\r\n"));
        }
        text.push_str("login: ");
        std::fs::write(&path, &text).unwrap();
        let m = NodeMetrics::new();
        // Oldest first, page by page; the incomplete prompt is left out.
        let p1 = page(&m, &path, LogDirection::Oldest, 4, None);
        assert_eq!((nums(&p1), p1.has_more), (vec![1, 2, 3, 4], true));
        assert_eq!(p1.lines[0].message, "line 1");
        let p3 = page(&m, &path, LogDirection::Oldest, 4, Some(page(&m, &path, LogDirection::Oldest, 4, p1.cursor.clone()).cursor.unwrap()));
        assert_eq!((nums(&p3), p3.has_more), (vec![9, 10], false));
        // Newest first walks back to the start.
        let n1 = page(&m, &path, LogDirection::Newest, 4, None);
        assert_eq!((nums(&n1), n1.has_more), (vec![10, 9, 8, 7], true));
        let n2 = page(&m, &path, LogDirection::Newest, 4, n1.cursor.clone());
        assert_eq!(nums(&n2), vec![6, 5, 4, 3]);
        let n3 = page(&m, &path, LogDirection::Newest, 4, n2.cursor.clone());
        assert_eq!((nums(&n3), n3.has_more, n3.cursor.clone()), (vec![2, 1], false, None));
        // Following: nothing new, then the prompt line completes and more arrive.
        let f = page(&m, &path, LogDirection::Oldest, 100, Some(n1.follow.clone()));
        assert!(f.lines.is_empty());
        std::fs::write(&path, format!("{text}root\nline 12\n")).unwrap();
        let f = page(&m, &path, LogDirection::Oldest, 100, Some(n1.follow.clone()));
        assert_eq!(nums(&f), vec![11, 12]);
        assert_eq!(f.lines[0].message, "login: root");
        assert!(console_page(&m, "w", &path, &LogQuery { source: LogSource::Console, direction: LogDirection::Oldest, lines: 1, cursor: Some("c:99999:5".into()), unit: None }).is_err());
        // Long lines and a window smaller than the page still work.
        let big: String = (1..=3000).map(|i| format!("{}{i}\n", "x".repeat(100))).collect();
        let path = d.path().join("console2.log");
        std::fs::write(&path, &big).unwrap();
        let n = page(&m, &path, LogDirection::Newest, 1000, None);
        assert_eq!((n.lines.len(), n.lines[0].number, n.lines[999].number), (1000, 3000, 2001));
        let missing = page(&m, &d.path().join("none.log"), LogDirection::Newest, 10, None);
        assert!(missing.lines.is_empty() && !missing.has_more);
    }

    fn target(vcpus: u32) -> Target {
        let ws = Arc::new(Ws {
            id: "w".into(),
            scoped: "n-w".into(),
            dir: PathBuf::from("/nonexistent"),
            rec: tokio::sync::Mutex::new(crate::node::Record {
                id: "w".into(),
                spec: serde_json::from_value(serde_json::json!({"template": "base", "vcpus": vcpus, "ram_mb": 512, "disk_mb": 2048, "hostname": "w"})).unwrap(),
                state: WorkspaceState::Running,
                vm: None,
                backend: rigbox_vmm::BackendKind::Qemu,
                accel: rigbox_vmm::Accel::Tcg,
                failure: None,
                boot_ms: None,
                state_changed_unix_ms: 0,
                disk_format: Default::default(),
                backing_snapshot: None,
                warm_snapshot: None,
                backing_base: None,
            }),
            boot: std::sync::Mutex::new(None),
        });
        Target { ws, pid: 1, start_ticks: 7, vcpus, ram_bytes: 512 << 20, disk_bytes: 2048 << 20, disk_file: PathBuf::new() }
    }

    #[test]
    fn samples_combine_host_and_guest() {
        let t = target(2);
        let h1 = HostView { start_ticks: 7, cpu_ms: 1000, rss_bytes: 300 << 20, tap_rx: Some(100), tap_tx: Some(1000) };
        let g1 = GuestStats { mem_total_kb: 500_000, mem_available_kb: 400_000, disk_total_bytes: 2 << 30, disk_used_bytes: 1 << 30, cpu_total_jiffies: 1000, cpu_idle_jiffies: 900, cpus: 2, ..Default::default() };
        let (s1, p1) = make_sample(&t, &h1, Some(&g1), None, 10_000, 5 << 20);
        assert_eq!((s1.interval_ms, s1.net_rx_delta, s1.guest_fresh), (0, 0, true));
        assert_eq!(s1.mem_used_bytes, 100_000 * 1024);
        // Second sample: guest busy 50%, host used 1 s of CPU in 2 s.
        let h2 = HostView { start_ticks: 7, cpu_ms: 2000, rss_bytes: 300 << 20, tap_rx: Some(300), tap_tx: Some(1500) };
        let g2 = GuestStats { cpu_total_jiffies: 1400, cpu_idle_jiffies: 1100, ..g1.clone() };
        let (s2, p2) = make_sample(&t, &h2, Some(&g2), Some(&p1), 12_000, 5 << 20);
        assert!((s2.cpu_percent - 50.0).abs() < 1e-9, "{}", s2.cpu_percent);
        assert!((s2.host_cpu_percent - 50.0).abs() < 1e-9);
        assert_eq!((s2.net_rx_delta, s2.net_tx_delta), (500, 200), "guest rx is the tap's tx");
        // Guest silent: host CPU per vCPU stands in, memory from RSS.
        let h3 = HostView { cpu_ms: 4000, ..h2.clone() };
        let (s3, _) = make_sample(&t, &h3, None, Some(&p2), 14_000, 5 << 20);
        assert!((s3.cpu_percent - 50.0).abs() < 1e-9, "2 s of CPU in 2 s over 2 vCPUs");
        assert!(!s3.guest_fresh && s3.mem_used_bytes == 300 << 20 && s3.disk_used_bytes == 5 << 20);
        // A new VM process: no rates from the old one.
        let h4 = HostView { start_ticks: 8, ..h3 };
        let (s4, _) = make_sample(&t, &h4, None, Some(&p2), 16_000, 0);
        assert_eq!((s4.interval_ms, s4.host_cpu_percent), (0, 0.0));
    }
}
