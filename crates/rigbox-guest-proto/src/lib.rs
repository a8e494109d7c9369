//! The guest agent's wire contract (version 1).
//!
//! The guest agent listens on TCP [`AGENT_PORT`] on the guest side of the
//! workspace's network slot (`169.254.0.2`). The slot lives in its own
//! network namespace, so only the node agent, opening sockets inside that
//! namespace from `169.254.0.1`, can reach it; the agent also refuses any
//! peer other than [`HOST_ADDR`]. The same channel works on every VMM backend.
//!
//! Plain requests are HTTP/1.1 with JSON bodies under `/v1`:
//!
//! | Route | Body | Answer |
//! |---|---|---|
//! | `GET /v1/health` | | [`Health`] |
//! | `POST /v1/init` | [`InitRequest`] | [`Health`] |
//! | `POST /v1/exec` | [`ExecRequest`] | [`ExecResponse`] |
//! | `GET /v1/files?path=P` | | file bytes (404 if missing) |
//! | `PUT /v1/files?path=P&mode=0644&user=U` | bytes | [`FileInfo`] |
//! | `GET /v1/files/stat?path=P` / `GET /v1/files/list?path=P` | | [`FileInfo`] / `[FileInfo]` |
//! | `POST /v1/env` | [`EnvRequest`] | `{}` |
//! | `GET /v1/stats` | | [`GuestStats`] |
//! | `GET /v1/ports` | | `[ListeningPort]` |
//! | `GET /v1/journal?unit=U&lines=N` | | `[JournalLine]` |
//! | `POST /v1/shutdown` | | `{}` then power-off |
//! | `POST /v1/setup` | [`SetupPlan`] | [`SetupStatus`] (runs in the background) |
//! | `GET /v1/setup` | | [`SetupStatus`] |
//! | `GET /v1/session` (WebSocket) | see [`SessionStart`] | streams |
//! | `GET /v1/tcp?port=P` (WebSocket) | raw bytes both ways to `127.0.0.1:P` | |
//!
//! Errors are `{"error": {"code", "message"}}` with a 4xx/5xx status.
//!
//! ## Session WebSocket
//! The client's first message is a text frame with a [`SessionStart`]. After
//! that, client binary frames are stdin bytes and client text frames are
//! [`ClientControl`] messages. The agent sends binary frames whose first byte
//! is the stream ([`STREAM_STDOUT`] or [`STREAM_STDERR`]) followed by data, and
//! text frames with [`ServerEvent`]s; the last is always `exit` or `error`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// TCP port of the guest agent on the guest address.
pub const AGENT_PORT: u16 = 10000;
/// The guest's address in every slot.
pub const GUEST_ADDR: [u8; 4] = [169, 254, 0, 2];
/// The host side of every slot.
pub const HOST_ADDR: [u8; 4] = [169, 254, 0, 1];
/// Protocol version reported in [`Health`].
pub const PROTOCOL_VERSION: u32 = 1;
/// Binary frame tag: stdout bytes (also the PTY's output).
pub const STREAM_STDOUT: u8 = 1;
/// Binary frame tag: stderr bytes.
pub const STREAM_STDERR: u8 = 2;
/// Most bytes of stdout (and of stderr) an `exec` returns.
pub const EXEC_OUTPUT_LIMIT: usize = 8 << 20;

/// `GET /v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Health {
    /// Always true when the agent answers.
    pub ok: bool,
    /// Agent build version.
    pub version: String,
    /// [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// Kernel boot id (changes on every boot, not on restore).
    pub boot_id: String,
    /// Seconds since boot.
    pub uptime_secs: f64,
    /// Guest hostname.
    pub hostname: String,
    /// `systemctl is-system-running` (`starting`, `running`, `degraded`...).
    pub system_state: String,
    /// Whether `/v1/init` has been applied since the agent started.
    pub initialized: bool,
}

/// `POST /v1/init`: identity and configuration pushed after boot, restore or fork.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InitRequest {
    /// New hostname.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Host wall clock (ms since the epoch) to set the guest clock to.
    #[serde(default)]
    pub clock_unix_ms: Option<u64>,
    /// Random bytes (hex) mixed into the guest's RNG, which is then reseeded.
    #[serde(default)]
    pub entropy_hex: Option<String>,
    /// Regenerate SSH host keys (forks and template restores).
    #[serde(default)]
    pub regenerate_identity: bool,
    /// New SSH host keys made by the host (fast even when the guest is
    /// emulated); with `regenerate_identity` and no keys, the guest makes them.
    #[serde(default)]
    pub ssh_host_keys: Option<Vec<SshHostKey>>,
    /// Environment for login shells and services (replaces the previous set).
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// `authorized_keys` lines for the developer user (replaces the file).
    #[serde(default)]
    pub authorized_keys: Option<Vec<String>>,
    /// Non-secret metadata written to `/etc/rigbox/workspace.json`.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    /// Size of the root disk in bytes: the agent waits (briefly) until the
    /// guest sees a disk that large (after a hot grow) and grows the root
    /// filesystem online to fill it.
    #[serde(default)]
    pub root_disk_bytes: Option<u64>,
}

/// When a setup script runs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RunOn {
    /// Once in the life of the workspace.
    FirstBoot,
    /// At every start.
    EveryStart,
}

/// A setup script to run as `developer` (with sudo).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SetupScript {
    /// Stable id (first-boot scripts run once per id).
    pub id: String,
    /// Name.
    pub name: String,
    /// Shell script.
    pub content: String,
    /// When it runs.
    pub run_on: RunOn,
}

/// A service to install as a systemd unit `rigbox-svc-<name>.service`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceUnit {
    /// Name (unit `rigbox-svc-<name>.service`).
    pub name: String,
    /// The unit file's text.
    pub unit: String,
    /// Enable and start it after the setup scripts.
    pub auto_enable: bool,
}

/// `POST /v1/setup`: what to run after a start, in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SetupPlan {
    /// Scripts in run order (template scripts first).
    #[serde(default)]
    pub scripts: Vec<SetupScript>,
    /// Services.
    #[serde(default)]
    pub services: Vec<ServiceUnit>,
    /// Whether this start is a boot (every-start scripts run) or a resume.
    #[serde(default)]
    pub is_start: bool,
}

/// The outcome of one script.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScriptStatus {
    /// Script id.
    pub id: String,
    /// Name.
    pub name: String,
    /// When it runs.
    pub run_on: RunOn,
    /// `pending`, `running`, `succeeded`, `failed`, `skipped`.
    pub state: String,
    /// Exit code.
    pub exit_code: Option<i32>,
    /// The last 16 KiB of its output (stdout and stderr).
    pub output: String,
    /// Start (ms since the epoch).
    pub started_unix_ms: Option<u64>,
    /// End (ms since the epoch).
    pub finished_unix_ms: Option<u64>,
}

/// The state of a service unit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceState {
    /// Service name.
    pub name: String,
    /// systemd unit.
    pub unit: String,
    /// `active`, `inactive`, `failed`, `activating`...
    pub active_state: String,
    /// `running`, `dead`, `auto-restart`...
    pub sub_state: String,
    /// How many times systemd restarted it.
    pub restarts: u32,
    /// Whether it is enabled.
    pub enabled: bool,
}

/// `GET /v1/setup`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SetupStatus {
    /// `none` (no plan yet), `running`, `done`.
    pub state: String,
    /// Scripts in order.
    pub scripts: Vec<ScriptStatus>,
    /// Services.
    pub services: Vec<ServiceState>,
    /// Start of the last run.
    pub started_unix_ms: Option<u64>,
    /// End of the last run.
    pub finished_unix_ms: Option<u64>,
}

/// An SSH host key pair for `/etc/ssh/ssh_host_<kind>_key`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SshHostKey {
    /// `ed25519`, `ecdsa` or `rsa`.
    pub kind: String,
    /// OpenSSH private key.
    pub private_key: String,
    /// OpenSSH public key line.
    pub public_key: String,
}

/// `POST /v1/exec`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExecRequest {
    /// Program and arguments (exclusive with `shell`).
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// A shell command line run by `bash -lc` (exclusive with `argv`).
    #[serde(default)]
    pub shell: Option<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the user's home).
    #[serde(default)]
    pub cwd: Option<String>,
    /// User to run as (default `developer`).
    #[serde(default)]
    pub user: Option<String>,
    /// Kill the process group after this many milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Bytes written to stdin, then closed.
    #[serde(default)]
    pub stdin: Option<String>,
}

/// Answer of `POST /v1/exec`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExecResponse {
    /// Exit code (None when killed by a signal).
    pub exit_code: Option<i32>,
    /// Signal that ended the process.
    pub signal: Option<i32>,
    /// Standard output (UTF-8, lossy).
    pub stdout: String,
    /// Standard error (UTF-8, lossy).
    pub stderr: String,
    /// Whether the timeout killed it.
    pub timed_out: bool,
    /// Whether output was cut at [`EXEC_OUTPUT_LIMIT`].
    pub truncated: bool,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
}

/// A file or directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileInfo {
    /// Absolute path.
    pub path: String,
    /// Base name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// Modification time (seconds since the epoch).
    pub modified_unix: i64,
}

/// `POST /v1/env`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EnvRequest {
    /// The complete set of workspace variables.
    pub env: BTreeMap<String, String>,
}

/// `GET /v1/stats`: the guest's own view.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GuestStats {
    /// MemTotal in KiB.
    pub mem_total_kb: u64,
    /// MemAvailable in KiB.
    pub mem_available_kb: u64,
    /// Root filesystem size in bytes.
    pub disk_total_bytes: u64,
    /// Root filesystem bytes used.
    pub disk_used_bytes: u64,
    /// 1-minute load average.
    pub load1: f64,
    /// Total CPU jiffies (all states) from /proc/stat.
    pub cpu_total_jiffies: u64,
    /// Idle plus iowait jiffies.
    pub cpu_idle_jiffies: u64,
    /// Number of CPUs.
    pub cpus: u32,
    /// Seconds since boot.
    pub uptime_secs: f64,
    /// Bytes received on eth0.
    pub net_rx_bytes: u64,
    /// Bytes sent on eth0.
    pub net_tx_bytes: u64,
}

/// A TCP listener inside the guest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListeningPort {
    /// Port.
    pub port: u16,
    /// Bound address.
    pub address: String,
    /// Owning process id.
    pub pid: Option<u32>,
    /// Process name.
    pub process: Option<String>,
    /// Full command line.
    pub command: Option<String>,
    /// Working directory of the process.
    pub cwd: Option<String>,
    /// The systemd unit the process belongs to.
    pub systemd_unit: Option<String>,
}

/// A journal line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JournalLine {
    /// Microseconds since the epoch.
    pub timestamp_us: u64,
    /// Unit or identifier.
    pub source: String,
    /// The message.
    pub message: String,
    /// Journal cursor.
    pub cursor: String,
}

/// Size of a terminal.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// First message of a session.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SessionStart {
    /// Program and arguments; `None` means the user's login shell.
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// A shell command line (`bash -lc`), exclusive with `argv`.
    #[serde(default)]
    pub shell: Option<String>,
    /// Allocate a PTY of this size (stdout and stderr are then merged).
    #[serde(default)]
    pub pty: Option<PtySize>,
    /// `TERM` for PTY sessions.
    #[serde(default)]
    pub term: Option<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default)]
    pub cwd: Option<String>,
    /// User (default `developer`).
    #[serde(default)]
    pub user: Option<String>,
}

/// Control messages from the client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientControl {
    /// Resize the PTY.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Send a signal (number) to the process group.
    Signal {
        /// Signal number.
        signal: i32,
    },
    /// Close stdin.
    Eof,
}

/// Events from the agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerEvent {
    /// The process started.
    Started {
        /// Its pid.
        pid: u32,
    },
    /// The process ended.
    Exit {
        /// Exit code.
        code: Option<i32>,
        /// Signal that ended it.
        signal: Option<i32>,
    },
    /// The session failed.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// Error body of the agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Error detail.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorDetail {
    /// Stable code.
    pub code: String,
    /// Message.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_are_tagged() {
        let m: ClientControl = serde_json::from_str(r#"{"type":"resize","rows":40,"cols":120}"#).unwrap();
        assert_eq!(m, ClientControl::Resize { rows: 40, cols: 120 });
        let e = serde_json::to_string(&ServerEvent::Exit { code: Some(3), signal: None }).unwrap();
        assert_eq!(e, r#"{"type":"exit","code":3,"signal":null}"#);
    }

    #[test]
    fn requests_default_missing_fields() {
        let r: ExecRequest = serde_json::from_str(r#"{"shell":"id"}"#).unwrap();
        assert_eq!(r.shell.as_deref(), Some("id"));
        assert!(r.env.is_empty() && r.user.is_none());
        let i: InitRequest = serde_json::from_str("{}").unwrap();
        assert!(!i.regenerate_identity);
    }
}
