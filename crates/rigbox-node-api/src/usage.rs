//! Usage samples and logs of workspaces (node side of metrics and logs).
//!
//! | Route | Meaning |
//! |---|---|
//! | `GET /v1/usage?after=SEQ&interval_ms=MS` | [`UsageBatch`]: samples and events newer than `after`; the node samples every `interval_ms` from then on |
//! | `GET /v1/workspaces/{id}/usage` | the workspace's latest [`UsageSample`] (404 before the first one) |
//! | `GET /v1/workspaces/{id}/logs?source=&direction=&lines=&cursor=&unit=` | [`LogPage`] of the serial console or the guest's journal |
//! | `GET /metrics` | Prometheus text exposition of the node (node token required) |

use serde::{Deserialize, Serialize};

/// One sample of a running workspace's usage.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct UsageSample {
    /// Workspace id.
    pub workspace_id: String,
    /// Sample time (ms since the epoch).
    pub at_unix_ms: u64,
    /// Time since this workspace's previous sample (0 for the first after a start).
    pub interval_ms: u64,
    /// CPU busy, percent of the workspace's vCPUs (0–100): the guest's own
    /// view when `guest_fresh`, else the VMM process's CPU time per vCPU.
    pub cpu_percent: f64,
    /// CPU time of the VMM process over the interval, percent of one host core.
    pub host_cpu_percent: f64,
    /// Memory in use (guest: MemTotal − MemAvailable; else the VMM's RSS).
    pub mem_used_bytes: u64,
    /// Memory of the workspace (its configured RAM).
    pub mem_total_bytes: u64,
    /// Resident memory of the VMM process.
    pub vmm_rss_bytes: u64,
    /// Root filesystem bytes used (guest; else the disk file's allocation).
    pub disk_used_bytes: u64,
    /// Root filesystem size (guest; else the configured disk size).
    pub disk_total_bytes: u64,
    /// Bytes the disk file occupies on the host.
    pub disk_allocated_bytes: u64,
    /// Bytes the guest received, since the VM started (tap counters).
    pub net_rx_bytes: u64,
    /// Bytes the guest sent, since the VM started.
    pub net_tx_bytes: u64,
    /// Bytes received during the interval.
    pub net_rx_delta: u64,
    /// Bytes sent during the interval.
    pub net_tx_delta: u64,
    /// Whether the guest agent answered for this sample.
    pub guest_fresh: bool,
}

/// Something that happened on the node that has a duration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UsageEvent {
    /// `boot` (start to running, including warm restores) or `snapshot`.
    pub kind: String,
    /// Snapshot kind (`disk`, `live`) or boot kind (`cold`, `restore`).
    pub detail: String,
    /// Workspace id.
    pub workspace_id: String,
    /// Duration in seconds.
    pub seconds: f64,
    /// When it ended (ms since the epoch).
    pub at_unix_ms: u64,
}

/// `GET /v1/usage`: what was collected after a cursor.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct UsageBatch {
    /// Changes when the node's collector restarts (then start over from `after=0`).
    pub epoch: String,
    /// The cursor to pass as `after` next time.
    pub next: u64,
    /// The collector's interval now (ms).
    pub interval_ms: u64,
    /// Samples in collection order.
    pub samples: Vec<UsageSample>,
    /// Events in order.
    pub events: Vec<UsageEvent>,
}

/// Which log of a workspace.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogSource {
    /// The guest's systemd journal (running workspaces only).
    Journal,
    /// The serial console, kept on the node across restarts.
    Console,
}

impl LogSource {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogSource::Journal => "journal",
            LogSource::Console => "console",
        }
    }
}

/// Which end a page starts from.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogDirection {
    /// Newest first; the cursor walks back in time.
    #[default]
    Newest,
    /// Oldest first; the cursor walks forward in time.
    Oldest,
}

/// `GET /v1/workspaces/{id}/logs` query.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogQuery {
    /// Source.
    pub source: LogSource,
    /// Page direction.
    #[serde(default)]
    pub direction: LogDirection,
    /// Lines per page (1–1000).
    pub lines: u32,
    /// Continue from a previous page's `cursor` (or `follow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Journal only: one systemd unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// One log line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogEntry {
    /// Console: the 1-based line number; journal: the entry's sequence number.
    pub number: u64,
    /// Journal: when it was logged (µs since the epoch).
    pub timestamp_us: Option<u64>,
    /// The text (journal lines as `identifier[pid]: message`).
    pub message: String,
}

/// A page of log lines.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogPage {
    /// Source.
    pub source: LogSource,
    /// Lines in the order of the direction asked for.
    pub lines: Vec<LogEntry>,
    /// Next page in the same direction (None when there is nothing beyond).
    pub cursor: Option<String>,
    /// Whether more lines lie beyond this page in its direction.
    pub has_more: bool,
    /// A cursor (direction `oldest`) for the lines logged after the newest line
    /// of this page: what a follower polls with.
    pub follow: String,
}
