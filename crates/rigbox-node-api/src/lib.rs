//! The node agent's internal API (version 1).
//!
//! The control plane, the edge proxy and the SSH gateway drive a node agent
//! only through this API, the same way whether the node runs in the same
//! process as they do or on another host. It is HTTP/1.1 with JSON bodies,
//! authenticated by a per-node bearer token in both directions (the node
//! uses the same token when it calls the control plane).
//!
//! | Route | Meaning |
//! |---|---|
//! | `GET /v1/node` | [`NodeInfo`] |
//! | `GET /v1/workspaces` | `[WorkspaceStatus]` |
//! | `PUT /v1/workspaces/{id}` | create from [`CreateWorkspace`] (disk allocated, no boot) |
//! | `GET /v1/workspaces/{id}` | [`WorkspaceStatus`] |
//! | `DELETE /v1/workspaces/{id}` | VM, slot, disk and files removed |
//! | `POST /v1/workspaces/{id}/start` | boot; returns at once (`starting`) |
//! | `POST /v1/workspaces/{id}/stop[?force=true]` | clean shutdown, then kill after a timeout |
//! | `POST /v1/workspaces/{id}/cancel` | abort a boot |
//! | `PUT /v1/workspaces/{id}/resources` | [`Resources`]; stopped only; the disk only grows |
//! | `POST /v1/workspaces/{id}/env` | [`rigbox_guest_proto::EnvRequest`] (persisted, pushed if running) |
//! | `POST /v1/workspaces/{id}/exec` | [`rigbox_guest_proto::ExecRequest`] → `ExecResponse` |
//! | `GET /v1/workspaces/{id}/session` | WebSocket: the guest agent's session protocol, relayed |
//! | `GET /v1/workspaces/{id}/tcp?port=P` | WebSocket: bytes to `127.0.0.1:P` inside the guest |
//! | `GET /v1/workspaces/{id}/connect?port=P` | WebSocket: bytes to `169.254.0.2:P` (the guest's interface) |
//! | `GET /v1/workspaces/{id}/tunnel?port=P[&via=loopback]` | `Upgrade: rigbox-tunnel`: raw bytes to the port |
//! | `GET/PUT /v1/workspaces/{id}/files?path=P` | file bytes |
//! | `GET /v1/workspaces/{id}/files/stat|list?path=P` | `FileInfo` |
//! | `GET /v1/workspaces/{id}/console?offset=N` | [`ConsoleChunk`] of the serial console log |
//! | `POST /v1/workspaces/{id}/snapshots` | [`CreateSnapshot`] → [`SnapshotMeta`] (disk: stopped; live: running) |
//! | `POST /v1/workspaces/{id}/restore` | [`RestoreSnapshot`]: disk snapshot → `stopped`, live → `paused` |
//! | `POST /v1/workspaces/{id}/pause` / `resume` | memory to disk and back; `paused` frees the VM's memory |
//! | `POST /v1/workspaces/{id}/fork` | [`ForkRequest`] → [`ForkResponse`]: new running workspaces |
//! | `GET /v1/snapshots`, `GET/DELETE /v1/snapshots/{sid}` | artifacts; delete is 409 while a workspace uses one |
//! | `GET /v1/workspaces/{id}/stats` | [`WorkspaceStats`] (host and guest view) |
//! | `GET /v1/workspaces/{id}/ports` | `[ListeningPort]` |
//! | `GET /v1/workspaces/{id}/journal?unit=U&lines=N` | `[JournalLine]` |
//! | `PUT /v1/workspaces/{id}/setup` | [`rigbox_guest_proto::SetupPlan`]: scripts and services for the next starts |
//! | `GET /v1/workspaces/{id}/setup` | [`rigbox_guest_proto::SetupStatus`] of the last run |
//! | `POST /v1/templates/{template}/warm` | [`WarmRequest`]: boot once and keep a snapshot for fast creates |
//! | `GET /v1/templates/warm` | `[WarmTemplate]` |
//!
//! | `PUT /v1/ai/control-plane` | [`AiControlPlane`]: where the slot AI proxies forward calls (sent by the control plane) |
//! | `PUT /v1/workspaces/{id}/ai-env` | [`AiEnv`]: the workspace's AI variables (merged under its env, pushed if running) |
//!
//! Usage samples, logs and the node's Prometheus metrics: see [`usage`].
//!
//! Errors are `{"error":{"code","message"}}`; [`codes`] lists the codes.
#![warn(missing_docs)]

mod client;
pub mod usage;

pub use client::{NodeClient, NodeClientError, Tunnel, WsStream};
pub use rigbox_guest_proto as guest;
use rigbox_types::WorkspaceState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `Upgrade` protocol name of raw tunnels.
pub const TUNNEL_PROTOCOL: &str = "rigbox-tunnel";

/// Stable error codes of the node API.
pub mod codes {
    /// Unknown workspace.
    pub const NOT_FOUND: &str = "not_found";
    /// The workspace already exists.
    pub const EXISTS: &str = "already_exists";
    /// The operation is not allowed in the current state.
    pub const WRONG_STATE: &str = "wrong_state";
    /// Invalid input.
    pub const INVALID: &str = "invalid";
    /// The guest image (kernel or rootfs) is not built.
    pub const IMAGE_MISSING: &str = "image_missing";
    /// The guest agent failed or did not answer.
    pub const GUEST: &str = "guest_error";
    /// The node lacks capacity.
    pub const CAPACITY: &str = "insufficient_capacity";
    /// A snapshot artifact failed its checksum or format check.
    pub const CORRUPT: &str = "corrupt_snapshot";
    /// A snapshot is in use (a workspace's disk is backed by it).
    pub const IN_USE: &str = "in_use";
    /// Missing or wrong node token.
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// Anything else.
    pub const INTERNAL: &str = "internal";
}

/// `PUT /v1/workspaces/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CreateWorkspace {
    /// Template whose image the disk starts from.
    pub template: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub ram_mb: u32,
    /// Root disk size in MiB (the filesystem is grown to it).
    pub disk_mb: u32,
    /// Guest hostname.
    pub hostname: String,
    /// Environment for login shells and services.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `authorized_keys` for the developer user.
    #[serde(default)]
    pub authorized_keys: Vec<String>,
    /// Non-secret metadata written to `/etc/rigbox/workspace.json`.
    #[serde(default)]
    pub metadata: serde_json::Value,
    /// Setup scripts and services run after each start.
    #[serde(default)]
    pub setup: rigbox_guest_proto::SetupPlan,
    /// Always boot from the template image, even when a warm template
    /// snapshot matches (benchmarks of the boot path, debugging).
    #[serde(default)]
    pub cold_boot: bool,
}

/// `PUT /v1/workspaces/{id}/resources`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Resources {
    /// New vCPU count.
    pub vcpus: Option<u32>,
    /// New memory in MiB.
    pub ram_mb: Option<u32>,
    /// New disk size in MiB (never smaller than now).
    pub disk_mb: Option<u32>,
}

/// Why a workspace failed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Failure {
    /// Stable code (`boot_timeout`, `vm_exited`, `launch_failed`, ...).
    pub code: String,
    /// Human-readable reason.
    pub message: String,
    /// The last lines of the serial console.
    pub console_tail: Option<String>,
    /// When it happened (ms since the epoch).
    pub at_unix_ms: u64,
}

/// A workspace as the node sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkspaceStatus {
    /// Workspace id.
    pub id: String,
    /// Lifecycle state.
    pub state: WorkspaceState,
    /// Template.
    pub template: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub ram_mb: u32,
    /// Disk size in MiB.
    pub disk_mb: u32,
    /// Backend running it (`qemu`, `firecracker`).
    pub backend: String,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// VMM process id while it runs.
    pub pid: Option<u32>,
    /// Set when `state` is `failed`.
    pub failure: Option<Failure>,
    /// Start request to guest agent answering, last boot (ms).
    pub boot_ms: Option<u64>,
    /// When the state last changed (ms since the epoch).
    pub state_changed_unix_ms: u64,
    /// Guest hostname.
    pub hostname: String,
}

/// Capacity figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Capacity {
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub ram_mb: u64,
    /// Disk in MiB.
    pub disk_mb: u64,
}

/// `GET /v1/node`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    /// Node id.
    pub node_id: String,
    /// Node agent version.
    pub version: String,
    /// Backend in use.
    pub backend: String,
    /// Acceleration in use.
    pub accel: String,
    /// What the host has.
    pub capacity: Capacity,
    /// What workspaces on it were given (running ones for CPU and RAM, all for disk).
    pub committed: Capacity,
    /// Workspaces by state.
    pub workspaces: BTreeMap<String, u32>,
    /// Templates whose image is built on this node.
    pub templates: Vec<String>,
}

/// `GET /v1/workspaces/{id}/console`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConsoleChunk {
    /// Text (UTF-8, lossy) from `offset`.
    pub data: String,
    /// Offset to ask for next.
    pub next_offset: u64,
}

/// Kind of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    /// The root disk of a stopped workspace.
    Disk,
    /// Memory, device state and a consistent disk copy of a running workspace.
    Live,
}

/// A file of a snapshot artifact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArtifactFile {
    /// File name inside the artifact.
    pub name: String,
    /// Apparent size in bytes.
    pub bytes: u64,
    /// BLAKE3 over the file's data (holes hashed as their offsets).
    pub blake3: String,
}

/// `meta.json` of a snapshot artifact (format `rigbox-snapshot`, version 1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotMeta {
    /// Always `rigbox-snapshot`.
    pub format: String,
    /// Format version; a reader refuses a different major version.
    pub version: u32,
    /// Snapshot id.
    pub id: String,
    /// Kind.
    pub kind: SnapshotKind,
    /// Workspace it was taken from.
    pub workspace_id: String,
    /// Backend that wrote the memory state (live snapshots restore only there).
    pub backend: String,
    /// vCPUs of the source.
    pub vcpus: u32,
    /// Memory of the source (MiB).
    pub ram_mb: u32,
    /// Disk size of the source (MiB).
    pub disk_mb: u32,
    /// Template of the source.
    pub template: String,
    /// Creation time (ms since the epoch).
    pub created_unix_ms: u64,
    /// Files and their checksums.
    pub files: Vec<ArtifactFile>,
    /// Bytes allocated on the node's disk by the artifact.
    pub allocated_bytes: u64,
    /// Time spent (ms): total, and with the vCPUs paused.
    pub took_ms: u64,
    /// Of which the guest was paused (live snapshots).
    pub paused_ms: u64,
}

/// `POST /v1/workspaces/{id}/snapshots`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CreateSnapshot {
    /// Id of the new snapshot.
    pub snapshot_id: String,
    /// Live (running workspace, memory kept) or disk only (stopped workspace).
    pub live: bool,
}

/// `POST /v1/workspaces/{id}/restore`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestoreSnapshot {
    /// The snapshot.
    pub snapshot_id: String,
}

/// One new workspace of a fork.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ForkTarget {
    /// Id of the new workspace.
    pub id: String,
    /// Its hostname.
    pub hostname: String,
    /// Its metadata (`/etc/rigbox/workspace.json`).
    #[serde(default)]
    pub metadata: serde_json::Value,
}

/// `POST /v1/workspaces/{id}/fork`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ForkRequest {
    /// Id of the live snapshot the forks start from (taken now).
    pub snapshot_id: String,
    /// The new workspaces.
    pub forks: Vec<ForkTarget>,
}

/// Answer of a fork.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ForkResponse {
    /// The snapshot the forks share.
    pub snapshot: SnapshotMeta,
    /// The new workspaces (running).
    pub workspaces: Vec<WorkspaceStatus>,
}

/// `GET /v1/workspaces/{id}/stats`: host-side counters plus the guest's view.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkspaceStats {
    /// Sample time (ms since the epoch).
    pub at_unix_ms: u64,
    /// CPU time of the VMM process (user+system, ms).
    pub vmm_cpu_ms: u64,
    /// Resident memory of the VMM process (bytes).
    pub vmm_rss_bytes: u64,
    /// Bytes the guest sent (tap rx).
    pub net_tx_bytes: u64,
    /// Bytes the guest received (tap tx).
    pub net_rx_bytes: u64,
    /// Disk file bytes allocated on the host.
    pub disk_allocated_bytes: u64,
    /// The guest agent's own stats, when it answered.
    pub guest: Option<rigbox_guest_proto::GuestStats>,
}

/// `POST /v1/templates/{template}/warm`: the size of the warm snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WarmRequest {
    /// Memory in MiB.
    pub ram_mb: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Root disk size in MiB.
    pub disk_mb: u32,
}

/// A warm template snapshot (ready, or being built).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WarmTemplate {
    /// Template.
    pub template: String,
    /// Memory in MiB.
    pub ram_mb: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Disk in MiB.
    pub disk_mb: u32,
    /// The snapshot.
    pub snapshot_id: String,
    /// `building`, `ready` or `failed`.
    pub state: String,
    /// Why it failed.
    pub error: Option<String>,
    /// How long the build took (ms).
    pub build_ms: Option<u64>,
}

/// `PUT /v1/ai/control-plane`: the control plane tells a node where its AI
/// proxies forward calls (`{url}/internal/v1/ai/proxy`, with the node token).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AiControlPlane {
    /// Base URL of the control plane as the node reaches it.
    pub url: String,
}

/// `PUT /v1/workspaces/{id}/ai-env`: the AI variables of a workspace. The
/// node merges them under the workspace's own environment (its variables
/// win) whenever it pushes the environment to the guest.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AiEnv {
    /// Variables.
    pub env: BTreeMap<String, String>,
}

/// Error body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    /// Details.
    pub error: ErrorDetail,
}

/// Error details.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorDetail {
    /// Stable code ([`codes`]).
    pub code: String,
    /// Message.
    pub message: String,
}
