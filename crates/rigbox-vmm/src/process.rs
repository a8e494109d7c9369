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
/// (`rbx-vm=<id>`), as (pid, workspace id). Used to reclaim VMs whose
/// workspace no longer exists.
pub fn find_vm_processes() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        for arg in cmd.split(|b| *b == 0) {
            let a = String::from_utf8_lossy(arg);
            if let Some(id) = marker_id(&a) {
                out.push((pid, id.to_string()));
                break;
            }
        }
    }
    out
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
