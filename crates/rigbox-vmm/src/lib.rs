//! Virtual machine monitors behind one trait.
//!
//! [`Vmm`] is what the node agent uses to run a workspace VM. Two backends
//! implement it on the same artifacts (an ELF `vmlinux` with the PVH note and
//! a raw ext4 disk):
//!
//! - [`qemu::QemuVmm`]: QEMU's `microvm` machine driven over QMP, with KVM
//!   where it is usable and TCG (software emulation) otherwise;
//! - [`firecracker::FirecrackerVmm`]: Firecracker driven over its API socket
//!   (optionally through the jailer).
//!
//! [`probe::HostProbe`] looks at the host and picks one; a setting overrides it.
//!
//! Every VM process is started inside the workspace's network namespace, in
//! its own process group, and outlives the node agent: a restarted agent
//! re-adopts it from the [`VmProcess`] record (pid plus kernel start time, so
//! a recycled pid is never mistaken for the VM).
#![warn(missing_docs)]

mod fc_api;
pub mod firecracker;
pub mod probe;
pub mod process;
pub mod qemu;
mod qmp;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use process::{is_alive, VmProcess};

/// Which VMM runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// QEMU microvm.
    Qemu,
    /// Firecracker.
    Firecracker,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Qemu => "qemu",
            BackendKind::Firecracker => "firecracker",
        })
    }
}

/// How guest code executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// Format of a root disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// A raw ext4 image (both backends).
    #[default]
    Raw,
    /// A qcow2 overlay over a raw backing file (QEMU only).
    Qcow2,
}

impl std::fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        })
    }
}

/// Everything needed to run one VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmConfig {
    /// Workspace id (also names the process).
    pub id: String,
    /// Kernel ELF.
    pub kernel: PathBuf,
    /// Root disk, writable.
    pub disk: PathBuf,
    /// Format of the root disk (`raw`, or a `qcow2` copy-on-write overlay on QEMU).
    #[serde(default)]
    pub disk_format: DiskFormat,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub mem_mb: u32,
    /// Network namespace to run in.
    pub netns: String,
    /// Tap device inside the namespace.
    pub tap: String,
    /// Guest MAC address.
    pub mac: String,
    /// Directory for sockets and pid files of this VM.
    pub run_dir: PathBuf,
    /// Serial console output is appended here.
    pub console_log: PathBuf,
    /// Extra kernel command-line arguments.
    #[serde(default)]
    pub extra_args: Vec<String>,
}

impl VmConfig {
    /// The kernel command line shared by both backends: root on the first
    /// virtio disk, eth0 configured by the kernel with the slot address plan.
    pub fn kernel_args(&self, backend: BackendKind, accel: Accel) -> String {
        let mut a = vec![
            "console=ttyS0".to_string(),
            "root=/dev/vda".into(),
            "rw".into(),
            "panic=1".into(),
            "ip=169.254.0.2::169.254.0.1:255.255.255.252::eth0:off".into(),
            "net.ifnames=0".into(),
            "random.trust_cpu=on".into(),
        ];
        match backend {
            BackendKind::Qemu => a.push("reboot=t".into()),
            BackendKind::Firecracker => {
                a.extend(["reboot=k", "i8042.noaux", "i8042.nomux", "i8042.dumbkbd", "pci=off"].map(String::from))
            }
        }
        if accel == Accel::Tcg {
            // Without these the TSC calibration hangs under TCG. The guest's TSC
            // ticks at the host's rate, so tell the guest the host's frequency:
            // any other value makes the guest clock run fast or slow.
            let khz = host_tsc_khz();
            a.push(format!("tsc_early_khz={khz}"));
            a.push(format!("lpj={}", u64::from(khz) * 4));
        }
        a.extend(self.extra_args.iter().cloned());
        a.join(" ")
    }
}

/// The host's TSC frequency in kHz (from /proc/cpuinfo), 2 GHz if unknown.
pub fn host_tsc_khz() -> u32 {
    static KHZ: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *KHZ.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("cpu MHz"))
                    .and_then(|l| l.split(':').nth(1))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .map(|mhz| (mhz * 1000.0) as u32)
            .filter(|k| *k > 100_000)
            .unwrap_or(2_000_000)
    })
}

/// Files of a VM snapshot (memory and device state), as a backend wrote them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotFiles {
    /// Backend that wrote them (a snapshot restores only on the same backend).
    pub backend: BackendKind,
    /// Device/VM state (Firecracker vmstate; QEMU migration stream).
    pub state: PathBuf,
    /// Guest memory, when kept in a separate file (Firecracker).
    pub memory: Option<PathBuf>,
}

/// Errors of the VMM layer.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The VMM binary is missing.
    #[error("{0} is not installed")]
    NotInstalled(String),
    /// Spawning the VMM failed.
    #[error("Starting {what} failed: {message}")]
    Spawn {
        /// Which process.
        what: String,
        /// Details, including what the VMM printed.
        message: String,
    },
    /// The control channel (QMP or API socket) failed.
    #[error("{backend} control channel: {message}")]
    Control {
        /// Backend.
        backend: BackendKind,
        /// What happened.
        message: String,
    },
    /// The VMM rejected a request.
    #[error("{backend} refused {request}: {message}")]
    Refused {
        /// Backend.
        backend: BackendKind,
        /// The request.
        request: String,
        /// Its reason.
        message: String,
    },
    /// An operation did not finish in time.
    #[error("Timed out: {0}")]
    Timeout(String),
    /// The VM process is gone.
    #[error("VM process {0} is not running")]
    NotRunning(u32),
    /// The backend cannot do this.
    #[error("{backend} does not support {what}")]
    Unsupported {
        /// Backend.
        backend: BackendKind,
        /// The operation.
        what: String,
    },
    /// Filesystem error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        source: std::io::Error,
    },
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmmError {
    let context = context.into();
    move |source| VmmError::Io { context, source }
}

/// A virtual machine monitor.
#[async_trait::async_trait]
pub trait Vmm: Send + Sync + std::fmt::Debug {
    /// The backend.
    fn kind(&self) -> BackendKind;

    /// The acceleration in use.
    fn accel(&self) -> Accel;

    /// Starts a VM process inside `cfg.netns` and boots the guest.
    async fn launch(&self, cfg: &VmConfig) -> Result<VmProcess, VmmError>;

    /// Pauses the vCPUs.
    async fn pause(&self, cfg: &VmConfig, vm: &VmProcess) -> Result<(), VmmError>;

    /// Resumes the vCPUs.
    async fn resume(&self, cfg: &VmConfig, vm: &VmProcess) -> Result<(), VmmError>;

    /// Writes memory and device state of a paused VM into `dir`. The VM stays
    /// paused; the caller copies the disk while it is paused.
    async fn snapshot(&self, cfg: &VmConfig, vm: &VmProcess, dir: &Path) -> Result<SnapshotFiles, VmmError>;

    /// Starts a new VM process from a snapshot (in `cfg.netns`, with
    /// `cfg.disk` as its disk) and leaves it running.
    async fn restore(&self, cfg: &VmConfig, files: &SnapshotFiles) -> Result<VmProcess, VmmError>;

    /// Grows the running VM's root disk to `bytes` and tells the guest (a
    /// virtio configuration change); the guest then grows its filesystem.
    async fn grow_disk(&self, cfg: &VmConfig, vm: &VmProcess, bytes: u64) -> Result<(), VmmError>;

    /// Kills the VM process and waits until it is gone.
    async fn kill(&self, cfg: &VmConfig, vm: &VmProcess) -> Result<(), VmmError> {
        process::kill_and_wait(vm, std::time::Duration::from_secs(10)).await.map_err(|_| {
            VmmError::Timeout(format!("VM process {} did not exit after SIGKILL ({})", vm.pid, cfg.id))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VmConfig {
        VmConfig {
            id: "ws-1".into(),
            kernel: "/k".into(),
            disk: "/d".into(),
            disk_format: DiskFormat::Raw,
            vcpus: 1,
            mem_mb: 256,
            netns: "rbx-ws-1".into(),
            tap: "tap0".into(),
            mac: "06:00:a9:fe:00:02".into(),
            run_dir: "/r".into(),
            console_log: "/c".into(),
            extra_args: vec!["quiet".into()],
        }
    }

    #[test]
    fn kernel_args_follow_backend_and_accel() {
        let q = cfg().kernel_args(BackendKind::Qemu, Accel::Tcg);
        assert!(q.contains("reboot=t") && q.contains("tsc_early_khz") && q.ends_with("quiet"));
        assert!(q.contains("ip=169.254.0.2::169.254.0.1"));
        let f = cfg().kernel_args(BackendKind::Firecracker, Accel::Kvm);
        assert!(f.contains("reboot=k") && f.contains("pci=off") && !f.contains("tsc_early_khz"));
    }
}
