//! VM processes: identity that survives a node-agent restart, liveness,
//! killing, and finding leftovers.

use crate::BackendKind;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A running VM process, as recorded on disk by the node agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmProcess {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of /proc/PID/stat);
    /// guards against pid reuse.
    pub start_ticks: u64,
    /// Backend.
    pub backend: BackendKind,
}

impl VmProcess {
    /// Records `pid` (reads its start time now).
    pub fn from_pid(pid: u32, backend: BackendKind) -> Option<Self> {
        Some(VmProcess { pid, start_ticks: start_ticks(pid)?, backend })
    }
}

/// Start time of a process, and whether it is a zombie.
fn stat(pid: u32) -> Option<(u64, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: split after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 overall is index 19 after "pid (comm)".
    let start = fields.get(19)?.parse().ok()?;
    Some((start, state))
}

fn start_ticks(pid: u32) -> Option<u64> {
    stat(pid).map(|(t, _)| t)
}

/// Whether the recorded VM process still runs (same pid and start time, not a zombie).
pub fn is_alive(p: &VmProcess) -> bool {
    matches!(stat(p.pid), Some((t, state)) if t == p.start_ticks && state != 'Z' && state != 'X')
}

/// SIGKILLs the process and waits until it is gone.
pub async fn kill_and_wait(p: &VmProcess, timeout: Duration) -> Result<(), ()> {
    if !is_alive(p) {
        return Ok(());
    }
    let _ = kill(Pid::from_raw(p.pid as i32), Signal::SIGKILL);
    let deadline = tokio::time::Instant::now() + timeout;
    while is_alive(p) {
        if tokio::time::Instant::now() > deadline {
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Processes whose command line carries the Rigbox VM marker
/// (`rbx-vm=<id>`, or Firecracker's `--id rbx-vm-<id>`), as (pid, workspace
/// id). Used to reclaim VMs whose workspace no longer exists.
pub fn find_vm_processes() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<String> = cmd.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if let Some(id) = cmdline_vm_id(&args) {
            out.push((pid, id));
        }
    }
    out
}

/// The workspace id a VM command line is marked with, if any.
fn cmdline_vm_id(args: &[String]) -> Option<String> {
    if let Some(id) = args.iter().find_map(|a| marker_id(a)) {
        return Some(id.to_string());
    }
    // Firecracker (and the jailer, which passes it on) validates `--id` to
    // `[A-Za-z0-9-]{1,64}`, so '=' cannot appear there: it carries
    // `rbx-vm-<id>` instead (see [`firecracker_instance_id`]).
    args.windows(2).find_map(|w| {
        let id = w[1].strip_prefix(FIRECRACKER_ID_PREFIX)?;
        (w[0] == "--id" && !id.is_empty()).then(|| id.to_string())
    })
}

/// Prefix of the Firecracker instance id (`--id`) of every Rigbox VM.
pub const FIRECRACKER_ID_PREFIX: &str = "rbx-vm-";

/// The Firecracker instance id of workspace `id`: `rbx-vm-<id>`, or `None`
/// when that is not a valid Firecracker id (only ASCII letters, digits and
/// '-', at most 64 characters).
pub fn firecracker_instance_id(id: &str) -> Option<String> {
    let iid = format!("{FIRECRACKER_ID_PREFIX}{id}");
    let valid = !id.is_empty() && iid.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    valid.then_some(iid)
}

/// The marker argument put on every VM command line.
pub fn marker(id: &str) -> String {
    format!("rbx-vm={id}")
}

fn marker_id(arg: &str) -> Option<&str> {
    // QEMU: "-name guest=rbx-vm=ID,..." ; Firecracker: "--id" is separate, so
    // we also accept the bare marker.
    let i = arg.find("rbx-vm=")?;
    let rest = &arg[i + "rbx-vm=".len()..];
    let end = rest.find(|c: char| c == ',' || c.is_whitespace()).unwrap_or(rest.len());
    let id = &rest[..end];
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip() {
        assert_eq!(marker_id(&marker("ws-abc")), Some("ws-abc"));
        assert_eq!(marker_id("guest=rbx-vm=ws-x,debug-threads=on"), Some("ws-x"));
        assert_eq!(marker_id("other"), None);
    }

    #[test]
    fn firecracker_ids_mark_the_command_line() {
        let iid = firecracker_instance_id("ws-abc123").unwrap();
        assert_eq!(iid, "rbx-vm-ws-abc123");
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let fc = args(&["/usr/local/bin/firecracker", "--api-sock", "/r/api.sock", "--id", &iid]);
        assert_eq!(cmdline_vm_id(&fc).as_deref(), Some("ws-abc123"));
        let jailed = args(&["/firecracker", "--id", &iid, "--start-time-us", "1", "--api-sock", "/api.sock"]);
        assert_eq!(cmdline_vm_id(&jailed).as_deref(), Some("ws-abc123"));
        let qemu = args(&["qemu-system-x86_64", "-name", "guest=rbx-vm=ws-q,process=rbx-ws-q"]);
        assert_eq!(cmdline_vm_id(&qemu).as_deref(), Some("ws-q"));
        assert_eq!(cmdline_vm_id(&args(&["firecracker", "--id", "anonymous-instance"])), None);
        assert_eq!(cmdline_vm_id(&args(&["echo", "rbx-vm-ws-x"])), None);
        assert_eq!(firecracker_instance_id("ws_underscore"), None);
        assert_eq!(firecracker_instance_id(""), None);
        assert_eq!(firecracker_instance_id(&"a".repeat(58)), None);
        assert!(firecracker_instance_id(&"a".repeat(57)).is_some());
    }

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = VmProcess::from_pid(std::process::id(), BackendKind::Qemu).unwrap();
        assert!(is_alive(&me));
        let other = VmProcess { start_ticks: me.start_ticks + 1, ..me.clone() };
        assert!(!is_alive(&other));
    }

    #[tokio::test]
    async fn kill_and_wait_reaps_a_child() {
        let mut child = tokio::process::Command::new("sleep").arg("30").spawn().unwrap();
        let p = VmProcess::from_pid(child.id().unwrap(), BackendKind::Qemu).unwrap();
        let waiter = tokio::spawn(async move { child.wait().await });
        kill_and_wait(&p, Duration::from_secs(5)).await.unwrap();
        assert!(!is_alive(&p));
        waiter.await.unwrap().unwrap();
    }
}
