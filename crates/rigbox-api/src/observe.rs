//! Metrics and logs: live usage, series and summaries, server-sent event
//! streams, workspace and service logs, and the control plane's Prometheus
//! exposition.
//!
//! ## Metrics and logs flow
//!
//! ```text
//!  guest agent /v1/stats ─┐   node agent (rigbox_node::metrics)      control plane
//!  /proc/<vmm>/{stat,     ├─► collector, every interval (5 s):  ◄── sampler (crate::sampler), every interval:
//!   statm,net/dev}, disk ─┘   one sample per running workspace       GET /v1/usage?after=cursor&interval_ms=
//!                             into a 10-minute ring with a cursor     → SQLite: raw samples (70 min),
//!                             + boot/snapshot duration events           1-min and 15-min rollups (7 h, 8 d)
//!                             node GET /metrics (node token)          → latest point per workspace (memory)
//!                                                                     → broadcast to /metrics/stream
//! ```
//!
//! - **Collection** happens on the node: per workspace and tick three small
//!   `/proc` reads of the VMM process (CPU time, RSS, the slot's tap counters
//!   as the VMM sees its namespace), the disk file's allocation, and one
//!   `GET /v1/stats` to the guest agent (memory, root filesystem, CPU
//!   jiffies). CPU percent is the guest's busy share of its vCPUs; when the
//!   guest does not answer, host-side figures stand in and the sample is
//!   marked not fresh.
//! - **Storage**: the control plane's sampler (started next to the
//!   reconciler) pulls every node each interval with a cursor (the node's
//!   collector epoch resets it), and stores samples idempotently; each new
//!   sample also adds into its 1-minute and 15-minute rollup buckets, so no
//!   separate rollup job exists and the current bucket is always complete.
//!   Retention pruning runs every minute. No external time-series server.
//! - **API**: `GET /workspaces/{id}/metrics` is the latest sample (the
//!   sampler's, or the node's when the sampler has none fresh; 409 unless
//!   running); `/metrics/series?range=1h|6h|24h|7d` has steps 60 s, 300 s,
//!   900 s and 3600 s (from the 1-minute buckets for 1h and 6h, the
//!   15-minute buckets for 24h and 7d; only buckets with samples appear);
//!   `/metrics/summary` gives CPU average and p95 (exact from raw samples for
//!   1h, from 5% histogram bins otherwise), average memory used, the latest
//!   memory size and disk levels, and network byte totals;
//!   `/metrics/stream` is SSE (`event: metrics`, the
//!   `WorkspaceMetrics` shape) with the latest point at once, then each new one.
//! - **Logs**: the node pages the serial console (`console.log`, every
//!   state) or the guest's journal (`journalctl -o json` through the guest
//!   agent, running only). `GET /workspaces/{id}/logs?source=journal|console
//!   &direction=newest|oldest&lines=N&cursor=C` returns lines in the order of
//!   `direction` with an opaque cursor for the next page (the default source
//!   is the journal when running, else the console);
//!   `/logs/stream?lines=N&interval_ms=M` (SSE, `event: log`) sends the last
//!   N lines oldest first, then polls the node every M ms (default 2000) for
//!   lines after the newest one seen; each batch's last event carries the
//!   cursor as its `id`, and `Last-Event-ID` resumes from it.
//!   `/services/{name}/logs` is the journal of `rigbox-svc-<name>.service`.
//! - **Prometheus**: `GET /metrics` on the control plane (admin API key as a
//!   Bearer token) has API requests and latency by route, method and status,
//!   workspaces by state, node capacity (vCPUs, memory, disk: total,
//!   committed, free), boot and snapshot durations, per-workspace usage
//!   gauges and the sampler's own cost. Each node agent serves its own
//!   `GET /metrics` behind the node token.

use crate::auth::Auth;
use crate::error::{node_error, ApiError, ApiResult};
use crate::sampler::sampler_of;
use crate::state::AppState;
use crate::workspaces::load;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{TimeZone, Utc};
use prometheus::{Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};
use rigbox_db::metrics::{UsageBucket, UsageSampleRow};
use rigbox_db::WorkspaceRow;
use rigbox_node_api::usage::{LogDirection, LogEntry, LogPage, LogQuery, LogSource, UsageSample};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Routes under `/api/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/workspaces/{id}/metrics", get(live))
        .route("/workspaces/{id}/metrics/series", get(series))
        .route("/workspaces/{id}/metrics/summary", get(summary))
        .route("/workspaces/{id}/metrics/stream", get(metrics_stream))
        .route("/workspaces/{id}/logs", get(logs))
        .route("/workspaces/{id}/logs/stream", get(logs_stream))
        .route("/workspaces/{id}/services/{name}/logs", get(service_logs))
}

// ------------------------------------------------------------ shapes

/// A workspace's latest sample and where it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct LivePoint {
    /// Node.
    pub node_id: String,
    /// The node's sample.
    pub sample: UsageSample,
}

/// `WorkspaceMetrics` (plus network and freshness fields).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkspaceMetrics {
    /// Workspace.
    pub workspace_id: String,
    /// CPU busy, percent of the workspace's vCPUs.
    pub cpu_percent: f64,
    /// Memory used (MiB).
    pub ram_used_mb: i32,
    /// Memory (MiB).
    pub ram_total_mb: i32,
    /// Root filesystem used (MiB).
    pub disk_used_mb: i32,
    /// Root filesystem size (MiB).
    pub disk_total_mb: i32,
    /// Sample time.
    pub updated_at: String,
    /// VMM process CPU, percent of one host core.
    pub host_cpu_percent: f64,
    /// Bytes received since the VM started.
    pub network_rx_bytes: u64,
    /// Bytes sent since the VM started.
    pub network_tx_bytes: u64,
    /// Receive rate over the last interval (bits per second).
    pub network_rx_bps: f64,
    /// Send rate over the last interval (bits per second).
    pub network_tx_bps: f64,
    /// Whether the guest agent answered for this sample.
    pub guest_metrics_fresh: bool,
    /// Node.
    pub node_id: String,
}

fn rfc3339_ms(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_else(Utc::now).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn mb(bytes: u64) -> i32 {
    (bytes >> 20).min(i32::MAX as u64) as i32
}

impl WorkspaceMetrics {
    /// The API view of a live point.
    pub fn of(p: &LivePoint) -> Self {
        let s = &p.sample;
        let bps = |delta: u64| if s.interval_ms > 0 { delta as f64 * 8000.0 / s.interval_ms as f64 } else { 0.0 };
        WorkspaceMetrics {
            workspace_id: s.workspace_id.clone(),
            cpu_percent: round2(s.cpu_percent),
            ram_used_mb: mb(s.mem_used_bytes),
            ram_total_mb: mb(s.mem_total_bytes),
            disk_used_mb: mb(s.disk_used_bytes),
            disk_total_mb: mb(s.disk_total_bytes),
            updated_at: rfc3339_ms(s.at_unix_ms as i64),
            host_cpu_percent: round2(s.host_cpu_percent),
            network_rx_bytes: s.net_rx_bytes,
            network_tx_bytes: s.net_tx_bytes,
            network_rx_bps: round2(bps(s.net_rx_delta)),
            network_tx_bps: round2(bps(s.net_tx_delta)),
            guest_metrics_fresh: s.guest_fresh,
            node_id: p.node_id.clone(),
        }
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// `{t, v}`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct MetricPoint {
    /// Bucket start (unix seconds).
    pub t: i64,
    /// Value.
    pub v: f64,
}

/// `WorkspaceMetricsSeries`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkspaceMetricsSeries {
    /// CPU percent (average per bucket).
    pub cpu_percent: Vec<MetricPoint>,
    /// Memory used (MiB, average).
    pub memory_used_mb: Vec<MetricPoint>,
    /// Memory (MiB).
    pub memory_limit_mb: Vec<MetricPoint>,
    /// Disk used (MiB, average).
    pub disk_used_mb: Vec<MetricPoint>,
    /// Disk size (MiB).
    pub disk_total_mb: Vec<MetricPoint>,
    /// Receive rate (bits per second).
    pub network_rx_bps: Vec<MetricPoint>,
    /// Send rate (bits per second).
    pub network_tx_bps: Vec<MetricPoint>,
}

/// `WorkspaceMetricsSource`: where each figure comes from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkspaceMetricsSource {
    /// `guest` (the guest's /proc/stat), `host` (VMM CPU time per vCPU) or `guest+host`.
    pub cpu: String,
    /// `guest` (MemTotal − MemAvailable), `host` (VMM RSS) or `guest+host`.
    pub memory: String,
    /// `guest` (root filesystem), `host` (disk file allocation) or `guest+host`.
    pub disk: String,
    /// `host` (the slot's tap counters).
    pub network: String,
}

/// `WorkspaceMetricsSeriesResponse`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkspaceMetricsSeriesResponse {
    /// Workspace.
    pub workspace_id: String,
    /// Node.
    pub node_id: Option<String>,
    /// Range.
    pub range: String,
    /// Bucket size.
    pub step_seconds: i64,
    /// Sources.
    pub source: WorkspaceMetricsSource,
    /// Series.
    pub series: WorkspaceMetricsSeries,
}

/// `WorkspaceMetricsSummaryResponse`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkspaceMetricsSummaryResponse {
    /// Workspace.
    pub workspace_id: String,
    /// Range.
    pub range: String,
    /// Average CPU percent.
    pub cpu_avg_percent: f64,
    /// 95th percentile of CPU percent.
    pub cpu_p95_percent: f64,
    /// Average memory used (MiB).
    pub memory_used_mb: f64,
    /// Memory (MiB, latest).
    pub memory_limit_mb: f64,
    /// Disk used (MiB, latest).
    pub disk_used_mb: f64,
    /// Disk size (MiB, latest).
    pub disk_total_mb: f64,
    /// Bytes received over the range.
    pub network_rx_bytes: f64,
    /// Bytes sent over the range.
    pub network_tx_bytes: f64,
    /// The latest sample is recent and has the guest's view.
    pub guest_metrics_fresh: bool,
    /// Time of the latest sample.
    pub updated_at: Option<String>,
    /// Samples the summary covers.
    pub samples: i64,
}

/// `LogLine`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogLine {
    /// Console line number, or the journal entry's sequence number.
    pub line_number: i32,
    /// Text.
    pub message: String,
    /// When (journal only).
    pub timestamp: Option<String>,
}

impl LogLine {
    fn of(e: &LogEntry) -> Self {
        LogLine {
            line_number: e.number.min(i32::MAX as u64) as i32,
            message: e.message.clone(),
            timestamp: e.timestamp_us.and_then(|us| Utc.timestamp_micros(us as i64).single()).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        }
    }
}

/// `GetWorkspaceLogsResponse` (plus the source).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GetWorkspaceLogsResponse {
    /// Lines in the order of the direction asked for.
    pub lines: Vec<LogLine>,
    /// The next page in the same direction.
    pub cursor: Option<String>,
    /// Whether more lines lie beyond this page.
    pub has_more: bool,
    /// `journal` or `console`.
    pub source: String,
    /// Direction of the page.
    pub direction: String,
}

impl GetWorkspaceLogsResponse {
    fn of(p: &LogPage, d: LogDirection) -> Self {
        GetWorkspaceLogsResponse {
            lines: p.lines.iter().map(LogLine::of).collect(),
            cursor: p.cursor.clone(),
            has_more: p.has_more,
            source: p.source.as_str().into(),
            direction: match d {
                LogDirection::Newest => "newest".into(),
                LogDirection::Oldest => "oldest".into(),
            },
        }
    }
}

// ------------------------------------------------------------ ranges

/// A series/summary range: (seconds, step, rollup step it is built from).
pub fn range_spec(range: &str) -> ApiResult<(i64, i64, i64)> {
    Ok(match range {
        "1h" => (3600, 60, 60),
        "6h" => (6 * 3600, 300, 60),
        "24h" => (86400, 900, 900),
        "7d" => (7 * 86400, 3600, 900),
        other => return Err(ApiError::bad_request(format!("range must be 1h, 6h, 24h or 7d (got {other:?})"))),
    })
}

#[derive(Deserialize)]
struct RangeQuery {
    range: Option<String>,
}

/// Buckets of `step` seconds covering the last `secs` seconds, from stored rollups.
async fn buckets(st: &AppState, ws: &str, secs: i64, step: i64, from_step: i64) -> ApiResult<Vec<UsageBucket>> {
    let now = Utc::now().timestamp();
    let since = (now - secs).div_euclid(step) * step;
    let rows = st.store().usage_buckets(ws, from_step, since).await?;
    let mut out: BTreeMap<i64, UsageBucket> = BTreeMap::new();
    for b in rows {
        let t = b.t.div_euclid(step) * step;
        out.entry(t).or_insert_with(|| UsageBucket { t, step, ..Default::default() }).merge(&b);
    }
    Ok(out.into_values().collect())
}

fn source_of(fresh: i64, total: i64) -> String {
    match (fresh, total) {
        (_, 0) => "guest".into(),
        (f, t) if f == t => "guest".into(),
        (0, _) => "host".into(),
        _ => "guest+host".into(),
    }
}

async fn series(State(st): State<AppState>, auth: Auth, Path(id): Path<String>, Query(q): Query<RangeQuery>) -> ApiResult<Json<WorkspaceMetricsSeriesResponse>> {
    let w = load(&st, &auth, &id).await?;
    let range = q.range.unwrap_or_else(|| "1h".into());
    let (secs, step, from) = range_spec(&range)?;
    let bs = buckets(&st, &w.id, secs, step, from).await?;
    let mut s = WorkspaceMetricsSeries::default();
    let (mut fresh, mut total) = (0, 0);
    for b in &bs {
        let p = |v: f64| MetricPoint { t: b.t, v: round2(v) };
        s.cpu_percent.push(p(b.cpu_avg()));
        s.memory_used_mb.push(p(b.mem_used_avg()));
        s.memory_limit_mb.push(p(b.mem_total_avg()));
        s.disk_used_mb.push(p(b.disk_used_avg()));
        s.disk_total_mb.push(p(b.disk_total_avg()));
        s.network_rx_bps.push(p(b.bps(b.rx_bytes)));
        s.network_tx_bps.push(p(b.bps(b.tx_bytes)));
        fresh += b.guest_fresh_n;
        total += b.n;
    }
    let src = source_of(fresh, total);
    Ok(Json(WorkspaceMetricsSeriesResponse {
        workspace_id: w.id.clone(),
        node_id: Some(w.node_id.clone()),
        range,
        step_seconds: step,
        source: WorkspaceMetricsSource { cpu: src.clone(), memory: src.clone(), disk: src, network: "host".into() },
        series: s,
    }))
}

/// Nearest-rank percentile of `v` (sorted in place).
fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

async fn summary(State(st): State<AppState>, auth: Auth, Path(id): Path<String>, Query(q): Query<RangeQuery>) -> ApiResult<Json<WorkspaceMetricsSummaryResponse>> {
    let w = load(&st, &auth, &id).await?;
    let range = q.range.unwrap_or_else(|| "1h".into());
    let (secs, step, from) = range_spec(&range)?;
    let now_ms = Utc::now().timestamp_millis();
    let mut out = WorkspaceMetricsSummaryResponse {
        workspace_id: w.id.clone(),
        range: range.clone(),
        cpu_avg_percent: 0.0,
        cpu_p95_percent: 0.0,
        memory_used_mb: 0.0,
        memory_limit_mb: w.ram_mb as f64,
        disk_used_mb: 0.0,
        disk_total_mb: w.disk_size_mb as f64,
        network_rx_bytes: 0.0,
        network_tx_bytes: 0.0,
        guest_metrics_fresh: false,
        updated_at: None,
        samples: 0,
    };
    let latest: Option<UsageSampleRow> = if range == "1h" {
        // Exact from raw samples.
        let rows = st.store().usage_samples(&w.id, now_ms - secs * 1000).await?;
        if !rows.is_empty() {
            let n = rows.len() as f64;
            let mut cpu: Vec<f64> = rows.iter().map(|r| r.cpu).collect();
            out.cpu_avg_percent = round2(cpu.iter().sum::<f64>() / n);
            out.cpu_p95_percent = round2(percentile(&mut cpu, 95.0));
            out.memory_used_mb = round2(rows.iter().map(|r| r.mem_used_mb).sum::<f64>() / n);
            out.network_rx_bytes = rows.iter().map(|r| r.rx_bytes as f64).sum();
            out.network_tx_bytes = rows.iter().map(|r| r.tx_bytes as f64).sum();
            out.samples = rows.len() as i64;
        }
        rows.last().cloned()
    } else {
        let bs = buckets(&st, &w.id, secs, step, from).await?;
        let mut all = UsageBucket { step: secs, ..Default::default() };
        for b in &bs {
            all.merge(b);
        }
        if all.n > 0 {
            out.cpu_avg_percent = round2(all.cpu_avg());
            out.cpu_p95_percent = round2(all.cpu_percentile(95.0));
            out.memory_used_mb = round2(all.mem_used_avg());
            out.network_rx_bytes = all.rx_bytes as f64;
            out.network_tx_bytes = all.tx_bytes as f64;
            out.samples = all.n;
        }
        st.store().latest_usage(&w.id).await?.or_else(|| {
            (all.n > 0).then(|| UsageSampleRow {
                t_ms: all.last_t_ms,
                mem_total_mb: all.mem_total_last,
                disk_used_mb: all.disk_used_last,
                disk_total_mb: all.disk_total_last,
                ..Default::default()
            })
        })
    };
    if let Some(l) = latest {
        out.memory_limit_mb = round2(l.mem_total_mb);
        out.disk_used_mb = round2(l.disk_used_mb);
        out.disk_total_mb = round2(l.disk_total_mb);
        out.updated_at = Some(rfc3339_ms(l.t_ms));
        let fresh_for = sampler_of(&st).fresh_for().as_millis() as i64;
        out.guest_metrics_fresh = l.guest_fresh && now_ms - l.t_ms <= fresh_for && w.status == "running";
    }
    Ok(Json(out))
}

fn not_running(w: &WorkspaceRow) -> ApiError {
    ApiError::conflict(format!("workspace {} is {}, not running", w.name, w.status)).details(serde_json::json!({"status": w.status}))
}

/// The latest point of a running workspace: the sampler's, else the node's;
/// right after a start, waits for the first one (two sampling intervals).
async fn latest_point(st: &AppState, w: &WorkspaceRow) -> ApiResult<LivePoint> {
    let sampler = sampler_of(st);
    let mut rx = sampler.subscribe();
    match latest_now(st, w).await {
        Err(e) if e.code == "metrics_pending" => {
            let wait = sampler.interval() * 2 + Duration::from_secs(1);
            let first = tokio::time::timeout(wait, async {
                loop {
                    match rx.recv().await {
                        Ok(p) if p.sample.workspace_id == w.id => return Some(p),
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return None,
                    }
                }
            })
            .await;
            first.ok().flatten().ok_or(e)
        }
        other => other,
    }
}

async fn latest_now(st: &AppState, w: &WorkspaceRow) -> ApiResult<LivePoint> {
    let sampler = sampler_of(st);
    if let Some(p) = sampler.latest(&w.id) {
        let age = Utc::now().timestamp_millis() - p.sample.at_unix_ms as i64;
        if age <= sampler.fresh_for().as_millis() as i64 {
            return Ok(p);
        }
    }
    let client = st.nodes().client(&w.node_id)?;
    match client.latest_usage(&w.id).await {
        Ok(s) => Ok(LivePoint { node_id: w.node_id.clone(), sample: s }),
        Err(rigbox_node_api::NodeClientError::Api { status: 404, .. }) => {
            Err(ApiError::unavailable("metrics_pending", "no usage sample yet; the first one comes within one sampling interval").retry_after(sampler.interval().as_secs().max(1)))
        }
        Err(e) => Err(node_error(e, "reading workspace metrics")),
    }
}

async fn live(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<WorkspaceMetrics>> {
    let w = load(&st, &auth, &id).await?;
    if w.status != "running" {
        return Err(not_running(&w));
    }
    Ok(Json(WorkspaceMetrics::of(&latest_point(&st, &w).await?)))
}

fn json_event(name: &str, v: &impl Serialize) -> Event {
    Event::default().event(name).data(serde_json::to_string(v).unwrap_or_default())
}

async fn metrics_stream(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Response> {
    let w = load(&st, &auth, &id).await?;
    let sampler = sampler_of(&st);
    let rx = sampler.subscribe();
    let first = if w.status == "running" { latest_now(&st, &w).await.ok() } else { None };
    // (receiver, point to send first, workspace, time of the last point sent)
    let state = (rx, first, w.id.clone(), 0u64);
    let stream = futures::stream::unfold(state, |(mut rx, first, id, sent)| async move {
        if let Some(p) = first {
            let e = json_event("metrics", &WorkspaceMetrics::of(&p));
            let at = p.sample.at_unix_ms;
            return Some((Ok::<_, Infallible>(e), (rx, None, id, at)));
        }
        loop {
            match rx.recv().await {
                // The first point may also have come through the channel.
                Ok(p) if p.sample.workspace_id == id && p.sample.at_unix_ms > sent => {
                    let e = json_event("metrics", &WorkspaceMetrics::of(&p));
                    let at = p.sample.at_unix_ms;
                    return Some((Ok(e), (rx, None, id, at)));
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

// ------------------------------------------------------------ logs

#[derive(Deserialize)]
struct LogsParams {
    source: Option<String>,
    direction: Option<String>,
    lines: Option<u32>,
    cursor: Option<String>,
    interval_ms: Option<u64>,
}

fn parse_source(s: Option<&str>, w: &WorkspaceRow, cursor: Option<&str>) -> ApiResult<LogSource> {
    match s {
        Some("journal") => Ok(LogSource::Journal),
        Some("console") => Ok(LogSource::Console),
        Some(o) => Err(ApiError::bad_request(format!("source must be journal or console (got {o:?})"))),
        None => Ok(match cursor {
            Some(c) if c.starts_with("c:") => LogSource::Console,
            Some(_) => LogSource::Journal,
            None if w.status == "running" => LogSource::Journal,
            None => LogSource::Console,
        }),
    }
}

fn parse_direction(d: Option<&str>) -> ApiResult<LogDirection> {
    match d {
        None | Some("newest") | Some("backward") => Ok(LogDirection::Newest),
        Some("oldest") | Some("forward") => Ok(LogDirection::Oldest),
        Some(o) => Err(ApiError::bad_request(format!("direction must be newest or oldest (got {o:?})"))),
    }
}

fn lines_of(n: Option<u32>) -> ApiResult<u32> {
    match n.unwrap_or(100) {
        0 => Err(ApiError::bad_request("lines must be at least 1")),
        n => Ok(n.min(1000)),
    }
}

async fn page(st: &AppState, w: &WorkspaceRow, q: &LogQuery) -> ApiResult<LogPage> {
    if q.source == LogSource::Journal && w.status != "running" {
        return Err(not_running(w));
    }
    let client = st.nodes().client(&w.node_id)?;
    client.logs(&w.id, q).await.map_err(|e| match e {
        rigbox_node_api::NodeClientError::Api { status: 400, message, .. } => ApiError::bad_request(message),
        rigbox_node_api::NodeClientError::Api { status: 409, .. } => not_running(w),
        e => node_error(e, "reading logs"),
    })
}

async fn logs(State(st): State<AppState>, auth: Auth, Path(id): Path<String>, Query(p): Query<LogsParams>) -> ApiResult<Json<GetWorkspaceLogsResponse>> {
    let w = load(&st, &auth, &id).await?;
    let direction = parse_direction(p.direction.as_deref())?;
    let q = LogQuery { source: parse_source(p.source.as_deref(), &w, p.cursor.as_deref())?, direction, lines: lines_of(p.lines)?, cursor: p.cursor, unit: None };
    Ok(Json(GetWorkspaceLogsResponse::of(&page(&st, &w, &q).await?, direction)))
}

fn valid_service_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn service_logs(State(st): State<AppState>, auth: Auth, Path((id, name)): Path<(String, String)>, Query(p): Query<LogsParams>) -> ApiResult<Json<GetWorkspaceLogsResponse>> {
    let w = load(&st, &auth, &id).await?;
    if !valid_service_name(&name) {
        return Err(ApiError::not_found("service"));
    }
    if w.status != "running" {
        return Err(not_running(&w));
    }
    let client = st.nodes().client(&w.node_id)?;
    let setup = client.setup_status(&w.id).await.map_err(|e| node_error(e, "reading the services"))?;
    let svc = setup.services.iter().find(|s| s.name == name).ok_or_else(|| ApiError::not_found("service"))?;
    if svc.unit.is_empty() {
        return Err(ApiError::bad_request(format!("service {name} has no systemd unit")));
    }
    let direction = parse_direction(p.direction.as_deref())?;
    let q = LogQuery { source: LogSource::Journal, direction, lines: lines_of(p.lines)?, cursor: p.cursor, unit: Some(svc.unit.clone()) };
    Ok(Json(GetWorkspaceLogsResponse::of(&page(&st, &w, &q).await?, direction)))
}

struct Follow {
    st: AppState,
    w: WorkspaceRow,
    q: LogQuery,
    every: Duration,
    queue: VecDeque<Event>,
    started: bool,
    failures: u32,
}

impl Follow {
    /// Queues a page's lines (oldest first), the last one carrying the follow cursor as its id.
    fn enqueue(&mut self, mut lines: Vec<LogEntry>, follow: &str, newest_first: bool) {
        if newest_first {
            lines.reverse();
        }
        let n = lines.len();
        for (i, l) in lines.iter().enumerate() {
            let mut e = json_event("log", &LogLine::of(l));
            if i + 1 == n {
                e = e.id(follow);
            }
            self.queue.push_back(e);
        }
        self.q.cursor = Some(follow.to_string());
        self.q.direction = LogDirection::Oldest;
    }

    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some((Ok(e), self));
            }
            if self.started {
                tokio::time::sleep(self.every).await;
            }
            let first = !self.started;
            self.started = true;
            match page(&self.st, &self.w, &self.q).await {
                Ok(p) => {
                    self.failures = 0;
                    self.enqueue(p.lines, &p.follow, first && self.q.direction == LogDirection::Newest);
                }
                Err(e) if e.status == StatusCode::CONFLICT => {
                    // The workspace stopped: the journal is gone with it.
                    let ev = json_event("end", &serde_json::json!({"reason": e.message}));
                    self.queue.push_back(ev);
                    let e = self.queue.pop_front()?;
                    return Some((Ok(e), Follow { failures: u32::MAX, ..self }));
                }
                Err(e) => {
                    self.failures += 1;
                    if self.failures == 1 {
                        return Some((Ok(json_event("error", &serde_json::json!({"code": e.code, "message": e.message}))), self));
                    }
                }
            }
            if self.failures == u32::MAX {
                return None;
            }
        }
    }
}

async fn logs_stream(State(st): State<AppState>, auth: Auth, Path(id): Path<String>, headers: HeaderMap, Query(p): Query<LogsParams>) -> ApiResult<Response> {
    let w = load(&st, &auth, &id).await?;
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let cursor = resume.clone().or(p.cursor);
    let source = parse_source(p.source.as_deref(), &w, cursor.as_deref())?;
    let every = Duration::from_millis(p.interval_ms.unwrap_or(2000).clamp(250, 60_000));
    let lines = lines_of(p.lines.or(Some(100)))?;
    let q = match cursor {
        Some(c) => LogQuery { source, direction: LogDirection::Oldest, lines: 1000, cursor: Some(c), unit: None },
        None => LogQuery { source, direction: LogDirection::Newest, lines, cursor: None, unit: None },
    };
    // Fail before the stream starts when the source cannot be read at all.
    if source == LogSource::Journal && w.status != "running" {
        return Err(not_running(&w));
    }
    let f = Follow { st, w, q, every, queue: VecDeque::new(), started: false, failures: 0 };
    let stream = futures::stream::unfold(f, |f| async move {
        if f.failures == u32::MAX {
            return None;
        }
        f.next().await
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

// ------------------------------------------------------------ Prometheus

/// The control plane's Prometheus families.
pub struct ControlMetrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    /// Boot durations reported by nodes.
    pub boot_seconds: Histogram,
    /// Snapshot durations reported by nodes, by kind.
    pub snapshot_seconds: HistogramVec,
    /// One sampler pass over all nodes.
    pub sampler_seconds: Histogram,
    /// Samples pulled.
    pub samples_total: IntCounter,
    workspaces: GaugeVec,
    capacity: GaugeVec,
    node_up: GaugeVec,
    usage: GaugeVec,
}

impl std::fmt::Debug for ControlMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlMetrics").finish_non_exhaustive()
    }
}

impl ControlMetrics {
    fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(Opts::new("rigbox_api_requests_total", "API requests by route, method and status."), &["route", "method", "status"]).expect("metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("rigbox_api_request_duration_seconds", "Time to the response head, by route, method and status.")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["route", "method", "status"],
        )
        .expect("metric");
        let boot_seconds = Histogram::with_opts(
            HistogramOpts::new("rigbox_workspace_boot_duration_seconds", "Start to running, as nodes report it (boots and warm restores).")
                .buckets(vec![0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0]),
        )
        .expect("metric");
        let snapshot_seconds = HistogramVec::new(
            HistogramOpts::new("rigbox_snapshot_duration_seconds", "Time to take a snapshot, by kind, as nodes report it.")
                .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0]),
            &["kind"],
        )
        .expect("metric");
        let sampler_seconds = Histogram::with_opts(
            HistogramOpts::new("rigbox_metrics_sampler_pass_seconds", "One pull of usage samples from every node, stored.")
                .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
        )
        .expect("metric");
        let samples_total = IntCounter::new("rigbox_metrics_samples_total", "Usage samples pulled from nodes.").expect("metric");
        let workspaces = GaugeVec::new(Opts::new("rigbox_workspaces", "Workspaces by state."), &["state"]).expect("metric");
        let capacity = GaugeVec::new(
            Opts::new("rigbox_node_capacity", "Node capacity: resource vcpus, memory_bytes, disk_bytes; kind total, committed, free (total − committed)."),
            &["node", "resource", "kind"],
        )
        .expect("metric");
        let node_up = GaugeVec::new(Opts::new("rigbox_node_up", "1 when the node answered in the last 30 seconds."), &["node"]).expect("metric");
        let usage = GaugeVec::new(
            Opts::new(
                "rigbox_workspace_usage",
                "Latest usage sample per workspace: cpu_percent, host_cpu_percent, memory_used_bytes, memory_total_bytes, disk_used_bytes, disk_total_bytes, network_rx_bytes, network_tx_bytes.",
            ),
            &["workspace", "node", "metric"],
        )
        .expect("metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(boot_seconds.clone()),
            Box::new(snapshot_seconds.clone()),
            Box::new(sampler_seconds.clone()),
            Box::new(samples_total.clone()),
            Box::new(workspaces.clone()),
            Box::new(capacity.clone()),
            Box::new(node_up.clone()),
            Box::new(usage.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        ControlMetrics { registry, requests, latency, boot_seconds, snapshot_seconds, sampler_seconds, samples_total, workspaces, capacity, node_up, usage }
    }
}

/// The control plane's metrics (created on first use).
pub fn control_metrics(st: &AppState) -> Arc<ControlMetrics> {
    if let Some(m) = st.ext::<ControlMetrics>() {
        return m;
    }
    let m = Arc::new(ControlMetrics::new());
    st.set_ext(m.clone());
    // Another request may have raced us: use whichever was stored.
    st.ext::<ControlMetrics>().unwrap_or(m)
}

/// A route as a label: `/api/v1/workspaces/{id}` becomes
/// `/api/v1/workspaces/:id` (braces in label values trip up simple parsers).
fn route_label(route: &str) -> String {
    route.replace('{', ":").replace('}', "")
}

/// Middleware: counts every request and times it to the response head, by
/// the matched route (`unmatched` for unknown paths, so labels stay bounded).
pub async fn track(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| route_label(m.as_str())).unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_string();
    let t0 = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    let m = control_metrics(&st);
    m.requests.with_label_values(&[&route, &method, &status]).inc();
    m.latency.with_label_values(&[&route, &method, &status]).observe(t0.elapsed().as_secs_f64());
    resp
}

/// `GET /metrics`: Prometheus text exposition (admin API key required).
pub async fn prometheus(State(st): State<AppState>, auth: Auth) -> ApiResult<Response> {
    auth.require_admin()?;
    let m = control_metrics(&st);
    m.workspaces.reset();
    let mut by_state: BTreeMap<String, i64> = rigbox_types::WorkspaceState::ALL.iter().map(|s| (s.as_str().to_string(), 0)).collect();
    for w in st.store().all_workspaces().await? {
        *by_state.entry(w.status).or_default() += 1;
    }
    for (s, n) in &by_state {
        m.workspaces.with_label_values(&[s.as_str()]).set(*n as f64);
    }
    m.capacity.reset();
    m.node_up.reset();
    for row in st.store().nodes().await? {
        let up = row.last_seen_at.is_some_and(|t| Utc::now() - t < chrono::Duration::seconds(30));
        m.node_up.with_label_values(&[row.id.as_str()]).set(if up { 1.0 } else { 0.0 });
        let Ok(info) = serde_json::from_value::<rigbox_node_api::NodeInfo>(row.info.clone()) else { continue };
        let set = |res: &str, total: f64, committed: f64| {
            m.capacity.with_label_values(&[row.id.as_str(), res, "total"]).set(total);
            m.capacity.with_label_values(&[row.id.as_str(), res, "committed"]).set(committed);
            m.capacity.with_label_values(&[row.id.as_str(), res, "free"]).set(total - committed);
        };
        set("vcpus", f64::from(info.capacity.vcpus), f64::from(info.committed.vcpus));
        set("memory_bytes", (info.capacity.ram_mb << 20) as f64, (info.committed.ram_mb << 20) as f64);
        set("disk_bytes", (info.capacity.disk_mb << 20) as f64, (info.committed.disk_mb << 20) as f64);
    }
    m.usage.reset();
    for p in sampler_of(&st).all_latest() {
        let s = &p.sample;
        for (k, v) in [
            ("cpu_percent", s.cpu_percent),
            ("host_cpu_percent", s.host_cpu_percent),
            ("memory_used_bytes", s.mem_used_bytes as f64),
            ("memory_total_bytes", s.mem_total_bytes as f64),
            ("disk_used_bytes", s.disk_used_bytes as f64),
            ("disk_total_bytes", s.disk_total_bytes as f64),
            ("network_rx_bytes", s.net_rx_bytes as f64),
            ("network_tx_bytes", s.net_tx_bytes as f64),
        ] {
            m.usage.with_label_values(&[s.workspace_id.as_str(), p.node_id.as_str(), k]).set(v);
        }
    }
    let mut out = Vec::new();
    prometheus::TextEncoder::new().encode(&m.registry.gather(), &mut out).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_have_no_braces() {
        assert_eq!(route_label("/api/v1/workspaces/{id}/services/{name}/logs"), "/api/v1/workspaces/:id/services/:name/logs");
    }

    #[test]
    fn ranges_have_fixed_steps() {
        assert_eq!(range_spec("1h").unwrap(), (3600, 60, 60));
        assert_eq!(range_spec("6h").unwrap().1, 300);
        assert_eq!(range_spec("24h").unwrap().1, 900);
        assert_eq!(range_spec("7d").unwrap(), (604_800, 3600, 900));
        assert!(range_spec("2h").is_err());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 95.0), 95.0);
        assert_eq!(percentile(&mut [3.0], 95.0), 3.0);
        assert_eq!(percentile(&mut [], 95.0), 0.0);
    }

    #[test]
    fn live_points_have_the_reference_units() {
        let p = LivePoint {
            node_id: "n".into(),
            sample: UsageSample { workspace_id: "ws-1".into(), at_unix_ms: 1_700_000_000_000, interval_ms: 2000, cpu_percent: 12.345, mem_used_bytes: 300 << 20, mem_total_bytes: 512 << 20, net_rx_delta: 1000, ..Default::default() },
        };
        let m = WorkspaceMetrics::of(&p);
        assert_eq!((m.ram_used_mb, m.ram_total_mb, m.cpu_percent), (300, 512, 12.35));
        assert_eq!(m.network_rx_bps, 4000.0);
        assert_eq!(m.updated_at, "2023-11-14T22:13:20.000Z");
    }
}
