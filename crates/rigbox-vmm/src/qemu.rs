//! QEMU `microvm` backend, controlled over QMP.
//!
//! The VM runs as a daemonized QEMU (`-daemonize -pidfile`), so it is not a
//! child of the node agent and survives it. The serial console is a chardev
//! appending to the console log. Snapshots use QEMU migration to a file:
//! `stop`, `migrate exec:cat > state`, and restore with `-incoming`.

use crate::process::{is_alive, marker};
use crate::qmp::Qmp;
use crate::{io_err, Accel, BackendKind, SnapshotFiles, VmConfig, VmProcess, Vmm, VmmError};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;

/// The QEMU backend.
#[derive(Debug, Clone)]
pub struct QemuVmm {
    binary: PathBuf,
    accel: Accel,
}

impl QemuVmm {
    /// Uses `binary` (qemu-system-x86_64) with `accel`.
    pub fn new(binary: PathBuf, accel: Accel) -> Self {
        QemuVmm { binary, accel }
    }

    fn qmp_path(cfg: &VmConfig) -> PathBuf {
        cfg.run_dir.join("qmp.sock")
    }

    fn pid_path(cfg: &VmConfig) -> PathBuf {
        cfg.run_dir.join("qemu.pid")
    }

    /// The full argument list (after `qemu-system-x86_64`).
    pub fn args(&self, cfg: &VmConfig, incoming: Option<&Path>) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "-name".into(),
            format!("guest={},process=rbx-{}", marker(&cfg.id), short(&cfg.id)),
            "-M".into(),
            "microvm,x-option-roms=off,rtc=on,pit=on,pic=on,isa-serial=on".into(),
        ];
        match self.accel {
            Accel::Kvm => a.extend(["-accel", "kvm", "-cpu", "host,-arch-capabilities"].map(String::from)),
            Accel::Tcg => a.extend(["-accel", "tcg", "-cpu", "max"].map(String::from)),
        }
        a.extend([
            "-m".into(),
            cfg.mem_mb.to_string(),
            "-smp".into(),
            cfg.vcpus.to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-chardev".into(),
            format!("file,id=con,path={},append=on", cfg.console_log.display()),
            "-serial".into(),
            "chardev:con".into(),
            "-kernel".into(),
            cfg.kernel.display().to_string(),
            "-append".into(),
            cfg.kernel_args(BackendKind::Qemu, self.accel),
            "-drive".into(),
            format!("id=root,file={},format={},if=none,discard=unmap", cfg.disk.display(), cfg.disk_format),
            "-device".into(),
            "virtio-blk-device,drive=root".into(),
            "-netdev".into(),
            format!("tap,id=n0,ifname={},script=no,downscript=no", cfg.tap),
            "-device".into(),
            format!("virtio-net-device,netdev=n0,mac={}", cfg.mac),
            "-device".into(),
            "virtio-rng-device".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", Self::qmp_path(cfg).display()),
            "-daemonize".into(),
            "-pidfile".into(),
            Self::pid_path(cfg).display().to_string(),
        ]);
        if let Some(state) = incoming {
            a.push("-incoming".into());
            a.push(format!("exec:cat '{}'", state.display()));
        }
        a
    }

    async fn spawn(&self, cfg: &VmConfig, incoming: Option<&Path>) -> Result<VmProcess, VmmError> {
        tokio::fs::create_dir_all(&cfg.run_dir).await.map_err(io_err("creating the run dir"))?;
        let _ = tokio::fs::remove_file(Self::qmp_path(cfg)).await;
        let _ = tokio::fs::remove_file(Self::pid_path(cfg)).await;
        let out = Command::new("ip")
            .args(["netns", "exec", &cfg.netns])
            .arg(&self.binary)
            .args(self.args(cfg, incoming))
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| VmmError::Spawn { what: "qemu".into(), message: e.to_string() })?;
        if !out.status.success() {
            return Err(VmmError::Spawn {
                what: "qemu".into(),
                message: format!(
                    "{}; {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        let pid: u32 = tokio::fs::read_to_string(Self::pid_path(cfg))
            .await
            .map_err(io_err("reading the QEMU pid file"))?
            .trim()
            .parse()
            .map_err(|_| VmmError::Spawn { what: "qemu".into(), message: "bad pid file".into() })?;
        VmProcess::from_pid(pid, BackendKind::Qemu)
            .ok_or_else(|| VmmError::Spawn { what: "qemu".into(), message: "exited right after start".into() })
    }

    async fn qmp(&self, cfg: &VmConfig, vm: &VmProcess) -> Result<Qmp, VmmError> {
        if !is_alive(vm) {
            return Err(VmmError::NotRunning(vm.pid));
        }
        Qmp::connect(&Self::qmp_path(cfg), Duration::from_secs(5)).await
    }
}

fn short(id: &str) -> String {
    id.chars().take(10).collect()
}

#[async_trait::async_trait]
impl Vmm for QemuVmm {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn accel(&self) -> Accel {
        self.accel
    }

    async fn launch(&self, cfg: &VmConfig) -> Result<VmProcess, VmmError> {
        self.spawn(cfg, None).await
    }

    async fn grow_disk(&self, cfg: &VmConfig, vm: &VmProcess, bytes: u64) -> Result<(), VmmError> {
        // Grows the image (raw file or qcow2 virtual size) and raises the
        // virtio-blk configuration interrupt.
        self.qmp(cfg, vm).await?.execute("block_resize", Some(json!({ "device": "root", "size": bytes }))).await.map(|_| ())
    }

    async fn pause(&self, cfg: &VmConfig, vm: &VmProcess) -> Result<(), VmmError> {
        self.qmp(cfg, vm).await?.execute("stop", None).await.map(|_| ())
    }

    async fn resume(&self, cfg: &VmConfig, vm: &VmProcess) -> Result<(), VmmError> {
        self.qmp(cfg, vm).await?.execute("cont", None).await.map(|_| ())
    }

    async fn snapshot(&self, cfg: &VmConfig, vm: &VmProcess, dir: &Path) -> Result<SnapshotFiles, VmmError> {
        tokio::fs::create_dir_all(dir).await.map_err(io_err("creating the snapshot dir"))?;
        let state = dir.join("vmstate");
        let mut q = self.qmp(cfg, vm).await?;
        let st = q.status().await?;
        if st == "running" {
            q.execute("stop", None).await?;
        }
        q.execute("migrate", Some(json!({ "uri": format!("exec:cat > '{}'", state.display()) })))
            .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            let r = q.execute("query-migrate", None).await?;
            match r.get("status").and_then(|s| s.as_str()).unwrap_or("") {
                "completed" => break,
                "failed" | "cancelled" => {
                    let _ = tokio::fs::remove_file(&state).await;
                    return Err(VmmError::Refused {
                        backend: BackendKind::Qemu,
                        request: "migrate".into(),
                        message: r.get("error-desc").and_then(|s| s.as_str()).unwrap_or("migration failed").into(),
                    });
                }
                _ => {}
            }
            if tokio::time::Instant::now() > deadline {
                let _ = q.execute("migrate_cancel", None).await;
                let _ = tokio::fs::remove_file(&state).await;
                return Err(VmmError::Timeout("writing the QEMU snapshot".into()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(SnapshotFiles { backend: BackendKind::Qemu, state, memory: None })
    }

    async fn restore(&self, cfg: &VmConfig, files: &SnapshotFiles) -> Result<VmProcess, VmmError> {
        if files.backend != BackendKind::Qemu {
            return Err(VmmError::Unsupported { backend: BackendKind::Qemu, what: format!("restoring a {} snapshot", files.backend) });
        }
        let vm = self.spawn(cfg, Some(&files.state)).await?;
        let mut q = Qmp::connect(&Self::qmp_path(cfg), Duration::from_secs(5)).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let st = q.status().await?;
            match st.as_str() {
                "inmigrate" => {}
                "running" => break,
                "paused" | "postmigrate" | "prelaunch" => {
                    q.execute("cont", None).await?;
                    break;
                }
                other => {
                    let _ = self.kill(cfg, &vm).await;
                    return Err(VmmError::Refused {
                        backend: BackendKind::Qemu,
                        request: "incoming migration".into(),
                        message: format!("VM ended in state {other}"),
                    });
                }
            }
            if tokio::time::Instant::now() > deadline {
                let _ = self.kill(cfg, &vm).await;
                return Err(VmmError::Timeout("loading the QEMU snapshot".into()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(vm)
    }
}
