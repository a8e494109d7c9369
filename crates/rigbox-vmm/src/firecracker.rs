//! Firecracker backend, driven over its REST API socket.
//!
//! One Firecracker process per VM, started inside the workspace's network
//! namespace (`ip netns exec`, or the jailer's `--netns`) in its own process
//! group, with the guest serial console (Firecracker's stdout) and its log
//! (stderr) appended to the console log. The process is not killed when the
//! node agent's handle goes away: a detached task only reaps it, so a VM
//! outlives an agent restart and is re-adopted from its [`VmProcess`] record.
//!
//! The instance id (`--id`) is `rbx-vm-<workspace id>`
//! ([`process::firecracker_instance_id`]), which is how
//! [`process::find_vm_processes`] recognises Firecracker VMs: Firecracker
//! only accepts `[A-Za-z0-9-]{1,64}` there, so the `rbx-vm=<id>` marker of
//! the QEMU command line cannot be used.
//!
//! # Disk paths and snapshots
//!
//! A Firecracker snapshot records the drive's `path_on_host` as it was given,
//! and `PUT /snapshot/load` in Firecracker 1.16 can override the network
//! interfaces' taps (`network_overrides`) and the vsock socket
//! (`vsock_override`) but **not drive paths**. So the drive is always given as
//! the relative path [`DISK_LINK`], resolved against Firecracker's working
//! directory: the run dir, where `fc-rootfs` is a symlink to `cfg.disk`
//! (or, under the jailer, the chroot, where it is a hard link to `cfg.disk`).
//! A restore re-creates that link in the new VM's run dir, so the restored
//! VM uses the new `cfg.disk` even though the snapshot only names
//! `fc-rootfs`.
//!
//! # Vsock
//!
//! Every VM gets a vsock device (guest CID [`GUEST_CID`]) whose host socket
//! is the relative path [`VSOCK_SOCKET`], so that, like the disk, a restored
//! VM binds it in its own run dir (or chroot) with no override. The node's
//! channel to the guest agent is still the slot network, the same on both
//! backends; the device is ready for an agent transport over vsock.
//!
//! # Jailer
//!
//! When a jailer binary is installed, Firecracker runs through it unless the
//! environment variable [`JAILER_ENV`] is `0` (or
//! [`FirecrackerVmm::with_jailer`] says otherwise): chroot base `<run_dir>/jail`, uid/gid 0, `--netns
//! /run/netns/<ns>`, no cgroups. Kernel and disk are hard-linked into the
//! chroot (the kernel is copied when a hard link is impossible; the disk must
//! be on the run dir's filesystem, since a copy would not be the VM's disk).
//! Snapshots are written inside the chroot and then moved to the requested
//! directory; a restore links (or copies) them into the new chroot.

use crate::fc_api::{FcApi, CALL_TIMEOUT};
use crate::process::{self, is_alive};
use crate::{io_err, Accel, BackendKind, SnapshotFiles, VmConfig, VmProcess, Vmm, VmmError};
use hyper::Method;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Command;

/// Environment variable that enables the jailer (`1`, `true`, `yes` or `on`)
/// when a jailer binary is known. The jailer is off by default.
pub const JAILER_ENV: &str = "RIGBOX_FC_JAILER";

/// Name of the disk link next to Firecracker (relative to its working
/// directory), which is the drive path recorded in snapshots.
pub const DISK_LINK: &str = "fc-rootfs";

/// The drive id of the root disk.
const ROOT_DRIVE: &str = "rootfs";
/// The vsock device's host-side Unix socket, relative to Firecracker's
/// working directory (so a snapshot, which records it as given, finds it in
/// the restoring VM's own run dir or chroot without an override).
pub const VSOCK_SOCKET: &str = "v.sock";
/// The guest's vsock context id (each VM has its own device, so every guest
/// can use the same one).
pub const GUEST_CID: u32 = 3;
/// The interface id of the guest NIC.
const IFACE: &str = "eth0";
/// How long Firecracker may take to open its API socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long writing or loading a snapshot may take (the memory file is the
/// whole guest memory).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest path a Unix socket address can hold.
const MAX_SOCKET_PATH: usize = 107;

/// The Firecracker backend.
#[derive(Debug, Clone)]
pub struct FirecrackerVmm {
    binary: PathBuf,
    jailer: Option<PathBuf>,
    use_jailer: bool,
}

/// Where one VM's files live, as seen by the host and by Firecracker.
#[derive(Debug, Clone)]
struct Layout {
    /// Firecracker instance id.
    iid: String,
    /// Firecracker's working directory (the run dir, or the chroot).
    root: PathBuf,
    /// `<run_dir>/jail/<exec name>/<iid>` under the jailer.
    jail_dir: Option<PathBuf>,
    /// The API socket, host path.
    sock: PathBuf,
}

impl Layout {
    fn jailed(&self) -> bool {
        self.jail_dir.is_some()
    }
}

fn spawn_err(message: impl Into<String>) -> VmmError {
    VmmError::Spawn { what: "firecracker".into(), message: message.into() }
}

fn absolute(p: &Path) -> Result<PathBuf, VmmError> {
    std::path::absolute(p).map_err(io_err(format!("resolving {}", p.display())))
}

/// The jailer is on by default; `0`, `false`, `no` or `off` turns it off.
fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "false" | "no" | "off"))
        .unwrap_or(true)
}

impl FirecrackerVmm {
    /// Uses `binary`, and `jailer` when given (unless [`JAILER_ENV`] is `0`).
    pub fn new(binary: PathBuf, jailer: Option<PathBuf>) -> Self {
        let use_jailer = jailer.is_some() && env_flag(JAILER_ENV);
        FirecrackerVmm { binary, jailer, use_jailer }
    }

    /// Turns the jailer on or off explicitly (on needs a jailer binary).
    pub fn with_jailer(mut self, on: bool) -> Self {
        self.use_jailer = on;
        self
    }

    /// Whether VMs run through the jailer.
    pub fn jailed(&self) -> bool {
        self.use_jailer && self.jailer.is_some()
    }

    /// The API socket of `cfg`'s VM, as a host path.
    pub fn api_socket(&self, cfg: &VmConfig) -> Result<PathBuf, VmmError> {
        Ok(self.layout(cfg)?.sock)
    }

    /// Firecracker's view of the VM state: `Not started`, `Running` or
    /// `Paused` (`GET /`).
    pub async fn instance_state(&self, cfg: &VmConfig, vm: &VmProcess) -> Result<String, VmmError> {
        let info = self.api(cfg, vm)?.call(Method::GET, "/", None, CALL_TIMEOUT).await?;
        info.get("state")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| VmmError::Control { backend: BackendKind::Firecracker, message: format!("GET / has no state: {info}") })
    }

    fn layout(&self, cfg: &VmConfig) -> Result<Layout, VmmError> {
        let iid = process::firecracker_instance_id(&cfg.id).ok_or_else(|| VmmError::Refused {
            backend: BackendKind::Firecracker,
            request: "--id".into(),
            message: format!(
                "workspace id {:?} does not fit a Firecracker instance id (letters, digits and '-', at most {} characters)",
                cfg.id,
                64 - process::FIRECRACKER_ID_PREFIX.len()
            ),
        })?;
        let run_dir = absolute(&cfg.run_dir)?;
        let lay = if self.jailed() {
            // The jailer names the chroot after the canonical exec file.
            let canon = std::fs::canonicalize(&self.binary).unwrap_or_else(|_| self.binary.clone());
            let exec_name = canon
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "firecracker".into());
            let jail_dir = run_dir.join("jail").join(exec_name).join(&iid);
            let root = jail_dir.join("root");
            Layout { iid, sock: root.join("api.sock"), root, jail_dir: Some(jail_dir) }
        } else {
            Layout { iid, sock: run_dir.join("api.sock"), root: run_dir, jail_dir: None }
        };
        if lay.sock.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(spawn_err(format!(
                "API socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter run dir",
                lay.sock.display()
            )));
        }
        Ok(lay)
    }

    /// The host path of a VM's vsock socket: a host process connects to it
    /// and writes `CONNECT <port>\n` to reach a guest listener on that port.
    pub fn vsock_socket(&self, cfg: &VmConfig) -> Result<PathBuf, VmmError> {
        Ok(self.layout(cfg)?.root.join(VSOCK_SOCKET))
    }

    fn api(&self, cfg: &VmConfig, vm: &VmProcess) -> Result<FcApi, VmmError> {
        if !is_alive(vm) {
            return Err(VmmError::NotRunning(vm.pid));
        }
        Ok(FcApi::new(self.layout(cfg)?.sock))
    }

    /// Prepares the directory Firecracker works in: a fresh chroot under the
    /// jailer, the disk link, and a removed stale API socket.
    async fn prepare(&self, cfg: &VmConfig, lay: &Layout) -> Result<(), VmmError> {
        if cfg.disk_format != crate::DiskFormat::Raw {
            return Err(VmmError::Unsupported { backend: BackendKind::Firecracker, what: format!("{} disks", cfg.disk_format) });
        }
        tokio::fs::create_dir_all(&cfg.run_dir).await.map_err(io_err("creating the run dir"))?;
        let disk = absolute(&cfg.disk)?;
        if !disk.is_file() {
            return Err(VmmError::Io {
                context: format!("disk {}", disk.display()),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let link = lay.root.join(DISK_LINK);
        if let Some(jail) = &lay.jail_dir {
            if tokio::fs::try_exists(jail).await.unwrap_or(false) {
                tokio::fs::remove_dir_all(jail).await.map_err(io_err(format!("removing the old chroot {}", jail.display())))?;
            }
            tokio::fs::create_dir_all(&lay.root).await.map_err(io_err("creating the chroot"))?;
            tokio::fs::hard_link(&disk, &link).await.map_err(|e| VmmError::Io {
                context: format!(
                    "hard-linking the disk {} into the chroot {} (the jailer needs the disk on the run dir's filesystem)",
                    disk.display(),
                    lay.root.display()
                ),
                source: e,
            })?;
        } else {
            let _ = tokio::fs::remove_file(&link).await;
            tokio::fs::symlink(&disk, &link).await.map_err(io_err(format!("linking {}", link.display())))?;
            let _ = tokio::fs::remove_file(&lay.sock).await;
            let _ = tokio::fs::remove_file(lay.root.join(VSOCK_SOCKET)).await;
        }
        Ok(())
    }

    /// Starts Firecracker and waits for its API socket.
    async fn spawn(&self, cfg: &VmConfig, lay: &Layout) -> Result<VmProcess, VmmError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&cfg.console_log)
            .map_err(io_err(format!("opening the console log {}", cfg.console_log.display())))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log2 = log.try_clone().map_err(io_err("duplicating the console log handle"))?;
        let mut cmd = match (&lay.jail_dir, &self.jailer) {
            (Some(_), Some(jailer)) => {
                let base = absolute(&cfg.run_dir)?.join("jail");
                let mut c = Command::new(jailer);
                c.arg("--id")
                    .arg(&lay.iid)
                    .arg("--exec-file")
                    .arg(&self.binary)
                    .args(["--uid", "0", "--gid", "0"])
                    .arg("--chroot-base-dir")
                    .arg(base)
                    .arg("--netns")
                    .arg(Path::new("/run/netns").join(&cfg.netns))
                    .args(["--", "--api-sock", "/api.sock"]);
                c
            }
            _ => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &cfg.netns])
                    .arg(&self.binary)
                    .arg("--api-sock")
                    .arg(&lay.sock)
                    .args(["--id", &lay.iid])
                    .current_dir(&lay.root);
                c
            }
        };
        cmd.stdin(Stdio::null()).stdout(Stdio::from(log)).stderr(Stdio::from(log2)).process_group(0).kill_on_drop(false);
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|e| spawn_err(e.to_string()))?;
        let pid = child.id().ok_or_else(|| spawn_err("exited right after start"))?;
        let api = FcApi::new(&lay.sock);
        let deadline = started + START_TIMEOUT;
        loop {
            if api.ready().await {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(spawn_err(format!("{status}; {}", log_tail(&cfg.console_log, log_start))));
            }
            if Instant::now() > deadline {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(VmmError::Timeout(format!(
                    "Firecracker's API socket {} did not appear within {} s; {}",
                    lay.sock.display(),
                    START_TIMEOUT.as_secs(),
                    log_tail(&cfg.console_log, log_start)
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tracing::debug!(vm = %cfg.id, pid, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "Firecracker API socket ready");
        let vm = VmProcess::from_pid(pid, BackendKind::Firecracker);
        // Reap the process whenever it ends; never kill it from here (the
        // VM outlives the agent's handle).
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        vm.ok_or_else(|| spawn_err("exited right after start"))
    }

    /// Configures a freshly started Firecracker and boots the guest.
    async fn configure(&self, cfg: &VmConfig, lay: &Layout) -> Result<(), VmmError> {
        let api = FcApi::new(&lay.sock);
        let kernel = if lay.jailed() {
            let k = lay.root.join("vmlinux");
            let src = absolute(&cfg.kernel)?;
            // A missing kernel is left for Firecracker to report.
            if tokio::fs::hard_link(&src, &k).await.is_err() && src.exists() {
                tokio::fs::copy(&src, &k).await.map_err(io_err("copying the kernel into the chroot"))?;
            }
            "vmlinux".to_string()
        } else {
            absolute(&cfg.kernel)?.display().to_string()
        };
        let steps: [(Method, &str, Value); 6] = [
            (
                Method::PUT,
                "/boot-source",
                json!({
                    "kernel_image_path": kernel,
                    "boot_args": cfg.kernel_args(BackendKind::Firecracker, Accel::Kvm),
                }),
            ),
            (
                Method::PUT,
                "/drives/rootfs",
                json!({
                    "drive_id": ROOT_DRIVE,
                    "path_on_host": DISK_LINK,
                    "is_root_device": true,
                    "is_read_only": false,
                }),
            ),
            (
                Method::PUT,
                "/machine-config",
                json!({ "vcpu_count": cfg.vcpus, "mem_size_mib": cfg.mem_mb }),
            ),
            (
                Method::PUT,
                "/network-interfaces/eth0",
                json!({ "iface_id": IFACE, "guest_mac": cfg.mac, "host_dev_name": cfg.tap }),
            ),
            (Method::PUT, "/vsock", json!({ "guest_cid": GUEST_CID, "uds_path": VSOCK_SOCKET })),
            (Method::PUT, "/actions", json!({ "action_type": "InstanceStart" })),
        ];
        for (method, path, body) in steps {
            let t = Instant::now();
            api.call(method, path, Some(&body), CALL_TIMEOUT).await?;
            tracing::debug!(vm = %cfg.id, path, elapsed_ms = t.elapsed().as_secs_f64() * 1e3, "Firecracker API call");
        }
        Ok(())
    }

    async fn set_state(&self, cfg: &VmConfig, vm: &VmProcess, state: &str) -> Result<(), VmmError> {
        self.api(cfg, vm)?
            .call(Method::PATCH, "/vm", Some(&json!({ "state": state })), CALL_TIMEOUT)
            .await
            .map(|_| ())
    }

    async fn remove_jail(&self, cfg: &VmConfig) {
        if let Ok(Layout { jail_dir: Some(jail), .. }) = self.layout(cfg) {
            let _ = tokio::fs::remove_dir_all(jail).await;
        }
    }
}

/// What a failed start printed (the console log past `from`), shortened.
fn log_tail(path: &Path, from: u64) -> String {
    let Ok(bytes) = std::fs::read(path) else { return "no output".into() };
    let start = usize::try_from(from).unwrap_or(0).min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[start..]);
    let text = text.trim();
    if text.is_empty() {
        return "no output".into();
    }
    let chars: Vec<char> = text.chars().collect();
    let keep = 2000;
    if chars.len() > keep {
        format!("...{}", chars[chars.len() - keep..].iter().collect::<String>())
    } else {
        text.to_string()
    }
}

/// Moves `from` to `to`, copying when they are on different filesystems.
async fn move_file(from: &Path, to: &Path) -> Result<(), VmmError> {
    if tokio::fs::rename(from, to).await.is_ok() {
        return Ok(());
    }
    tokio::fs::copy(from, to).await.map_err(io_err(format!("copying {} to {}", from.display(), to.display())))?;
    let _ = tokio::fs::remove_file(from).await;
    Ok(())
}

/// Hard-links `from` to `to`, copying when a link is impossible.
async fn link_or_copy(from: &Path, to: &Path) -> Result<(), VmmError> {
    let _ = tokio::fs::remove_file(to).await;
    if tokio::fs::hard_link(from, to).await.is_ok() {
        return Ok(());
    }
    tokio::fs::copy(from, to).await.map(|_| ()).map_err(io_err(format!("copying {} to {}", from.display(), to.display())))
}

#[async_trait::async_trait]
impl Vmm for FirecrackerVmm {
    fn kind(&self) -> BackendKind {
        BackendKind::Firecracker
    }

    fn accel(&self) -> Accel {
        Accel::Kvm
    }

    async fn launch(&self, cfg: &VmConfig) -> Result<VmProcess, VmmError> {
        let lay = self.layout(cfg)?;
        self.prepare(cfg, &lay).await?;
        let vm = self.spawn(cfg, &lay).await?;
        if let Err(e) = self.configure(cfg, &lay).await {
            let _ = self.kill(cfg, &vm).await;
            return Err(e);
        }
        Ok(vm)
    }

    async fn grow_disk(&self, cfg: &VmConfig, vm: &VmProcess, bytes: u64) -> Result<(), VmmError> {
        let api = self.api(cfg, vm)?;
        let disk = absolute(&cfg.disk)?;
        let len = tokio::fs::metadata(&disk).await.map_err(io_err("reading the disk's size"))?.len();
        if bytes < len {
            return Err(VmmError::Refused { backend: BackendKind::Firecracker, request: "grow_disk".into(), message: format!("the disk is already {len} bytes") });
        }
        let f = tokio::fs::OpenOptions::new().write(true).open(&disk).await.map_err(io_err("opening the disk"))?;
        f.set_len(bytes).await.map_err(io_err("growing the disk"))?;
        // Re-reading the drive's path makes Firecracker pick up the new size
        // and notify the guest.
        let body = json!({ "drive_id": ROOT_DRIVE, "path_on_host": DISK_LINK });
        api.call(Method::PATCH, "/drives/rootfs", Some(&body), CALL_TIMEOUT).await.map(|_| ())
    }

    async fn pause(&self, cfg: &VmConfig, vm: &VmProcess) -> Result<(), VmmError> {
        self.set_state(cfg, vm, "Paused").await
    }

    async fn resume(&self, cfg: &VmConfig, vm: &VmProcess) -> Result<(), VmmError> {
        self.set_state(cfg, vm, "Resumed").await
    }

    async fn snapshot(&self, cfg: &VmConfig, vm: &VmProcess, dir: &Path) -> Result<SnapshotFiles, VmmError> {
        let lay = self.layout(cfg)?;
        let api = self.api(cfg, vm)?;
        let dir = absolute(dir)?;
        tokio::fs::create_dir_all(&dir).await.map_err(io_err("creating the snapshot dir"))?;
        let state = dir.join("vmstate");
        let mem = dir.join("mem");
        if self.instance_state(cfg, vm).await? == "Running" {
            self.pause(cfg, vm).await?;
        }
        // Under the jailer Firecracker can only write inside its chroot.
        let (fc_state, fc_mem) = if lay.jailed() {
            (lay.root.join("snapshot.vmstate"), lay.root.join("snapshot.mem"))
        } else {
            (state.clone(), mem.clone())
        };
        for f in [&fc_state, &fc_mem, &state, &mem] {
            let _ = tokio::fs::remove_file(f).await;
        }
        let in_fc = |p: &Path| -> String {
            if lay.jailed() {
                p.file_name().map(|n| format!("/{}", n.to_string_lossy())).unwrap_or_default()
            } else {
                p.display().to_string()
            }
        };
        let body = json!({
            "snapshot_type": "Full",
            "snapshot_path": in_fc(&fc_state),
            "mem_file_path": in_fc(&fc_mem),
        });
        let t = Instant::now();
        api.call(Method::PUT, "/snapshot/create", Some(&body), SNAPSHOT_TIMEOUT).await?;
        tracing::debug!(vm = %cfg.id, elapsed_ms = t.elapsed().as_secs_f64() * 1e3, "Firecracker snapshot written");
        if lay.jailed() {
            move_file(&fc_state, &state).await?;
            move_file(&fc_mem, &mem).await?;
        }
        Ok(SnapshotFiles { backend: BackendKind::Firecracker, state, memory: Some(mem) })
    }

    async fn restore(&self, cfg: &VmConfig, files: &SnapshotFiles) -> Result<VmProcess, VmmError> {
        if files.backend != BackendKind::Firecracker {
            return Err(VmmError::Unsupported {
                backend: BackendKind::Firecracker,
                what: format!("restoring a {} snapshot", files.backend),
            });
        }
        let mem = files.memory.as_ref().ok_or_else(|| VmmError::Refused {
            backend: BackendKind::Firecracker,
            request: "restore".into(),
            message: "the snapshot has no memory file".into(),
        })?;
        let state = absolute(&files.state)?;
        let mem = absolute(mem)?;
        let lay = self.layout(cfg)?;
        self.prepare(cfg, &lay).await?;
        let (fc_state, fc_mem) = if lay.jailed() {
            link_or_copy(&state, &lay.root.join("snapshot.vmstate")).await?;
            link_or_copy(&mem, &lay.root.join("snapshot.mem")).await?;
            ("/snapshot.vmstate".to_string(), "/snapshot.mem".to_string())
        } else {
            (state.display().to_string(), mem.display().to_string())
        };
        let vm = self.spawn(cfg, &lay).await?;
        // The drive path in the snapshot is DISK_LINK, which `prepare` just
        // pointed at cfg.disk; the tap is overridden explicitly.
        let body = json!({
            "snapshot_path": fc_state,
            "mem_backend": { "backend_type": "File", "backend_path": fc_mem },
            "resume_vm": true,
            "network_overrides": [{ "iface_id": IFACE, "host_dev_name": cfg.tap }],
        });
        let t = Instant::now();
        let loaded = FcApi::new(&lay.sock).call(Method::PUT, "/snapshot/load", Some(&body), SNAPSHOT_TIMEOUT).await;
        if let Err(e) = loaded {
            let _ = self.kill(cfg, &vm).await;
            return Err(e);
        }
        tracing::debug!(vm = %cfg.id, elapsed_ms = t.elapsed().as_secs_f64() * 1e3, "Firecracker snapshot loaded");
        if lay.jailed() {
            // Loaded (memory is mapped privately): the chroot copies can go.
            let _ = tokio::fs::remove_file(lay.root.join("snapshot.vmstate")).await;
            let _ = tokio::fs::remove_file(lay.root.join("snapshot.mem")).await;
        }
        Ok(vm)
    }

    async fn kill(&self, cfg: &VmConfig, vm: &VmProcess) -> Result<(), VmmError> {
        process::kill_and_wait(vm, Duration::from_secs(10)).await.map_err(|_| {
            VmmError::Timeout(format!("VM process {} did not exit after SIGKILL ({})", vm.pid, cfg.id))
        })?;
        if self.jailed() {
            self.remove_jail(cfg).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(id: &str, run_dir: &str) -> VmConfig {
        VmConfig {
            id: id.into(),
            kernel: "/k".into(),
            disk: "/d".into(),
            disk_format: crate::DiskFormat::Raw,
            vcpus: 1,
            mem_mb: 128,
            netns: "rbx-x".into(),
            tap: "tap0".into(),
            mac: "06:00:a9:fe:00:02".into(),
            run_dir: run_dir.into(),
            console_log: "/c".into(),
            extra_args: vec![],
        }
    }

    #[test]
    fn layouts_put_the_socket_in_the_run_dir_or_the_chroot() {
        let plain = FirecrackerVmm::new("/usr/bin/firecracker".into(), None).with_jailer(true);
        assert!(!plain.jailed(), "no jailer binary, no jail");
        let l = plain.layout(&cfg("ws-abc", "/run/rbx/ws-abc")).unwrap();
        assert_eq!(l.sock, Path::new("/run/rbx/ws-abc/api.sock"));
        assert_eq!(l.iid, "rbx-vm-ws-abc");
        assert!(!l.jailed());

        let jailed =
            FirecrackerVmm::new("/nonexistent/firecracker".into(), Some("/nonexistent/jailer".into())).with_jailer(true);
        assert!(jailed.jailed());
        let l = jailed.layout(&cfg("ws-abc", "/run/rbx/ws-abc")).unwrap();
        assert_eq!(l.jail_dir.as_deref(), Some(Path::new("/run/rbx/ws-abc/jail/firecracker/rbx-vm-ws-abc")));
        assert_eq!(l.sock, Path::new("/run/rbx/ws-abc/jail/firecracker/rbx-vm-ws-abc/root/api.sock"));
    }

    #[test]
    fn bad_ids_and_long_socket_paths_are_refused() {
        let fc = FirecrackerVmm::new("/usr/bin/firecracker".into(), None);
        assert!(matches!(fc.layout(&cfg("ws_under", "/r")), Err(VmmError::Refused { .. })));
        let long = format!("/{}", "d".repeat(110));
        assert!(matches!(fc.layout(&cfg("ws-a", &long)), Err(VmmError::Spawn { .. })));
    }
}
