//! The usage sampler: pulls workspace usage samples from every node each
//! interval, stores them (raw and rolled up, see `rigbox_db::metrics`),
//! keeps the latest point per workspace in memory and hands it to the live
//! streams. See [`crate::observe`] for the whole flow.

use crate::observe::{control_metrics, LivePoint};
use crate::state::AppState;
use rigbox_db::metrics::UsageSampleRow;
use rigbox_node_api::usage::{UsageBatch, UsageSample};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// How often old samples are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Sampler state shared with the handlers (`AppState::ext::<Sampler>()`).
#[derive(Debug)]
pub struct Sampler {
    interval_ms: AtomicU64,
    paused: AtomicBool,
    latest: RwLock<HashMap<String, LivePoint>>,
    tx: broadcast::Sender<LivePoint>,
    /// Per node: (collector epoch, cursor).
    cursors: Mutex<HashMap<String, (String, u64)>>,
}

impl Sampler {
    fn new(interval: Duration) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let interval_ms = AtomicU64::new(interval.as_millis() as u64);
        Sampler { interval_ms, paused: AtomicBool::new(false), latest: RwLock::new(HashMap::new()), tx, cursors: Mutex::new(HashMap::new()) }
    }

    /// The sampling interval.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.load(Ordering::Relaxed))
    }

    /// Changes the sampling interval (the nodes follow at the next pull).
    pub fn set_interval(&self, every: Duration) {
        let every = every.clamp(Duration::from_millis(200), Duration::from_secs(60));
        self.interval_ms.store(every.as_millis() as u64, Ordering::Relaxed);
    }

    /// Pauses or resumes pulling (benchmarks compare the cost).
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// The latest point of a workspace.
    pub fn latest(&self, workspace_id: &str) -> Option<LivePoint> {
        self.latest.read().ok()?.get(workspace_id).cloned()
    }

    /// The latest points of all workspaces.
    pub fn all_latest(&self) -> Vec<LivePoint> {
        self.latest.read().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// New points as they arrive.
    pub fn subscribe(&self) -> broadcast::Receiver<LivePoint> {
        self.tx.subscribe()
    }

    /// How old a point may be and still count as live.
    pub fn fresh_for(&self) -> Duration {
        self.interval() * 3 + Duration::from_secs(5)
    }
}

/// The sampler of `st`, or one with the default interval when none was started.
pub fn sampler_of(st: &AppState) -> Arc<Sampler> {
    if let Some(s) = st.ext::<Sampler>() {
        return s;
    }
    let s = Arc::new(Sampler::new(Duration::from_secs(5)));
    st.set_ext(s.clone());
    s
}

/// A stored row of a node sample.
pub fn row_of(s: &UsageSample) -> UsageSampleRow {
    const MB: f64 = 1024.0 * 1024.0;
    UsageSampleRow {
        workspace_id: s.workspace_id.clone(),
        t_ms: s.at_unix_ms as i64,
        dt_ms: s.interval_ms as i64,
        cpu: s.cpu_percent,
        mem_used_mb: s.mem_used_bytes as f64 / MB,
        mem_total_mb: s.mem_total_bytes as f64 / MB,
        disk_used_mb: s.disk_used_bytes as f64 / MB,
        disk_total_mb: s.disk_total_bytes as f64 / MB,
        rx_bytes: s.net_rx_delta as i64,
        tx_bytes: s.net_tx_delta as i64,
        guest_fresh: s.guest_fresh,
    }
}

/// Starts the sampler task (one pull per `interval`, until `stop`).
pub fn start(st: &AppState, interval: Duration, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    let interval = interval.clamp(Duration::from_millis(200), Duration::from_secs(60));
    let sampler = Arc::new(Sampler::new(interval));
    st.set_ext(sampler.clone());
    let st = st.clone();
    tokio::spawn(async move { run(st, sampler, stop).await })
}

async fn run(st: AppState, sampler: Arc<Sampler>, stop: CancellationToken) {
    let mut last_prune = Instant::now() - PRUNE_EVERY;
    loop {
        let t0 = Instant::now();
        if !sampler.paused.load(Ordering::Relaxed) {
            pull_all(&st, &sampler).await;
            control_metrics(&st).sampler_seconds.observe(t0.elapsed().as_secs_f64());
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            let now = chrono::Utc::now().timestamp_millis();
            if let Err(e) = st.store().prune_usage(now).await {
                tracing::warn!("pruning usage samples failed: {e}");
            }
        }
        let wait = sampler.interval().saturating_sub(t0.elapsed()).max(Duration::from_millis(50));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One pull from every node; returns how many new samples were stored.
pub async fn pull_all(st: &AppState, sampler: &Sampler) -> u64 {
    let known: HashSet<String> = match st.store().all_workspaces().await {
        Ok(v) => v.into_iter().map(|w| w.id).collect(),
        Err(e) => {
            tracing::warn!("sampler: listing workspaces failed: {e}");
            return 0;
        }
    };
    let mut stored = 0;
    for (node_id, client) in st.nodes().all() {
        let (epoch, after) = sampler.cursors.lock().ok().and_then(|c| c.get(&node_id).cloned()).unwrap_or_default();
        let interval_ms = sampler.interval().as_millis() as u64;
        let mut batch: UsageBatch = match client.usage(after, interval_ms).await {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(node = %node_id, "sampler: node unreachable: {e}");
                continue;
            }
        };
        if batch.epoch != epoch && after > 0 {
            // The node's collector restarted: its cursor numbering started over.
            match client.usage(0, interval_ms).await {
                Ok(b) => batch = b,
                Err(_) => continue,
            }
        }
        let rows: Vec<UsageSampleRow> = batch.samples.iter().filter(|s| known.contains(&s.workspace_id)).map(row_of).collect();
        match st.store().insert_usage(&rows).await {
            Ok(n) => stored += n,
            Err(e) => {
                // Keep the cursor: the same samples come again next time.
                tracing::warn!(node = %node_id, "sampler: storing samples failed: {e}");
                continue;
            }
        }
        if let Ok(mut c) = sampler.cursors.lock() {
            c.insert(node_id.clone(), (batch.epoch.clone(), batch.next));
        }
        let m = control_metrics(st);
        m.samples_total.inc_by(rows.len() as u64);
        for e in &batch.events {
            match e.kind.as_str() {
                "boot" => m.boot_seconds.observe(e.seconds),
                "snapshot" => m.snapshot_seconds.with_label_values(&[e.detail.as_str()]).observe(e.seconds),
                _ => {}
            }
        }
        // The newest sample per workspace becomes its live point.
        let mut newest: HashMap<&str, &UsageSample> = HashMap::new();
        for s in batch.samples.iter().filter(|s| known.contains(&s.workspace_id)) {
            let e = newest.entry(s.workspace_id.as_str()).or_insert(s);
            if s.at_unix_ms >= e.at_unix_ms {
                *e = s;
            }
        }
        for s in newest.into_values() {
            let p = LivePoint { node_id: node_id.clone(), sample: s.clone() };
            let newer = sampler.latest.read().ok().map(|m| m.get(&s.workspace_id).is_none_or(|o| o.sample.at_unix_ms < s.at_unix_ms)).unwrap_or(true);
            if newer {
                if let Ok(mut m) = sampler.latest.write() {
                    m.insert(s.workspace_id.clone(), p.clone());
                }
                let _ = sampler.tx.send(p);
            }
        }
    }
    // Forget workspaces that are gone.
    if let Ok(mut m) = sampler.latest.write() {
        m.retain(|k, _| known.contains(k));
    }
    stored
}
