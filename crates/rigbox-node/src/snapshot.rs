//! Snapshots, pause and resume, fork.
//!
//! ## Artifact format (`rigbox-snapshot`, version 1)
//!
//! A snapshot is one directory, `<node data>/snapshots/<id>/`:
//!
//! ```text
//! meta.json   SnapshotMeta: format, version, kind, backend, sizes, files + BLAKE3
//! disk.raw    the root disk (sparse raw ext4), consistent with the memory state
//! vmstate     live snapshots: memory and device state (QEMU migration stream,
//!             or Firecracker's vmstate with its memory in `memory`)
//! ```
//!
//! It is written under `<id>.tmp` and renamed into place, so a crash or a
//! full disk leaves no half artifact (the partial directory is removed and a
//! paused guest is resumed). Readers check the format name, refuse another
//! major version, and verify every file's size and BLAKE3 before use, so a
//! corrupt or truncated artifact is a clear error and the workspace is left
//! as it was. BLAKE3 covers the file's data extents (found with
//! `SEEK_DATA`/`SEEK_HOLE`) and their offsets, so hashing a sparse 3 GiB disk
//! costs only its data.
//!
//! ## Flows
//! - **Disk snapshot** (stopped workspace): copy the disk sparsely.
//! - **Live snapshot** (running): pause the vCPUs, write memory and device
//!   state, copy the disk while paused, resume. The guest sees a pause of a few
//!   hundred milliseconds.
//! - **Pause**: like a live snapshot into the workspace's own `paused/`
//!   directory without a disk copy (the disk stays the workspace's), then the
//!   VMM process is killed and the slot removed: the memory is freed.
//! - **Resume**: a new VMM process in a new slot (same address plan) loads the
//!   state; the node then corrects the guest's clock and reseeds its RNG.
//! - **Fork**: a live snapshot of the source, then N workspaces restored from
//!   it, each with a copy-on-write disk (a qcow2 overlay over the snapshot's
//!   `disk.raw` on QEMU, a sparse copy on Firecracker), its own slot, and a
//!   fresh identity: hostname, SSH host keys, clock, RNG. The snapshot cannot
//!   be deleted while a fork's disk is backed by it (409).
//! - **Restore** into a stopped workspace: a disk snapshot replaces its disk;
//!   a live one also installs its memory state and leaves the workspace
//!   `paused`, ready to resume where the snapshot was taken.

use crate::error::{io, NodeError};
use crate::node::{now_ms, Node, Record, Ws};
use crate::server::AppState;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use rigbox_node_api::{
    ArtifactFile, CreateSnapshot, ForkRequest, ForkResponse, ForkTarget, RestoreSnapshot, SnapshotKind, SnapshotMeta,
    WorkspaceStatus,
};
use rigbox_types::{Event, WorkspaceState};
use rigbox_vmm::{BackendKind, DiskFormat, SnapshotFiles};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Command;

/// Artifact format name.
pub const FORMAT: &str = "rigbox-snapshot";
/// Artifact format version.
pub const VERSION: u32 = 1;

/// Node API routes of this feature.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/workspaces/{id}/snapshots", post(create))
        .route("/v1/workspaces/{id}/restore", post(restore))
        .route("/v1/workspaces/{id}/pause", post(pause))
        .route("/v1/workspaces/{id}/resume", post(resume))
        .route("/v1/workspaces/{id}/fork", post(fork))
        .route("/v1/snapshots", get(list))
        .route("/v1/snapshots/{sid}", get(get_one).delete(delete))
}

/// Called when a workspace reached `running` (after boot or restore).
pub(crate) async fn on_running(_node: &Node, _ws: &Ws) {}

/// Called before a workspace's VM and slot go away (stop, crash, delete),
/// with the workspace record locked: do not lock `ws.rec` here.
pub(crate) async fn on_halt(_node: &Node, _ws: &Ws) {}

type R<T> = Result<T, NodeError>;

async fn create(State(st): State<AppState>, Path(id): Path<String>, Json(req): Json<CreateSnapshot>) -> R<Json<SnapshotMeta>> {
    Ok(Json(st.node.snapshot(&id, &req).await?))
}

async fn restore(State(st): State<AppState>, Path(id): Path<String>, Json(req): Json<RestoreSnapshot>) -> R<Json<WorkspaceStatus>> {
    Ok(Json(st.node.restore_snapshot(&id, &req.snapshot_id).await?))
}

async fn pause(State(st): State<AppState>, Path(id): Path<String>) -> R<Json<WorkspaceStatus>> {
    Ok(Json(st.node.pause(&id).await?))
}

async fn resume(State(st): State<AppState>, Path(id): Path<String>) -> R<Json<WorkspaceStatus>> {
    Ok(Json(st.node.resume(&id).await?))
}

async fn fork(State(st): State<AppState>, Path(id): Path<String>, Json(req): Json<ForkRequest>) -> R<Json<ForkResponse>> {
    Ok(Json(st.node.fork(&id, req).await?))
}

async fn list(State(st): State<AppState>) -> R<Json<Vec<SnapshotMeta>>> {
    Ok(Json(st.node.list_snapshots().await))
}

async fn get_one(State(st): State<AppState>, Path(sid): Path<String>) -> R<Json<SnapshotMeta>> {
    Ok(Json(read_meta(&st.node.snapshot_dir(&sid)?).await?))
}

async fn delete(State(st): State<AppState>, Path(sid): Path<String>) -> R<axum::http::StatusCode> {
    st.node.delete_snapshot(&sid).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

fn valid_snapshot_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// BLAKE3 over a file's data extents and their offsets; returns (size, hex).
pub fn hash_file(path: &FsPath) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut h = blake3::Hasher::new();
    h.update(&len.to_le_bytes());
    let mut buf = vec![0u8; 1 << 20];
    let mut pos: i64 = 0;
    while (pos as u64) < len {
        let data = match nix::unistd::lseek(f.as_raw_fd(), pos, nix::unistd::Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break, // only a hole remains
            Err(e) => return Err(e.into()),
        };
        let hole = nix::unistd::lseek(f.as_raw_fd(), data, nix::unistd::Whence::SeekHole).map_err(std::io::Error::from)?;
        h.update(&(data as u64).to_le_bytes());
        f.seek(SeekFrom::Start(data as u64))?;
        let mut left = (hole - data) as u64;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = f.read(&mut buf[..want])?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            left -= n as u64;
        }
        pos = hole;
    }
    Ok((len, h.finalize().to_hex().to_string()))
}

fn allocated(path: &FsPath) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            if let Ok(m) = e.metadata() {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

async fn read_meta(dir: &FsPath) -> R<SnapshotMeta> {
    let bytes = tokio::fs::read(dir.join("meta.json")).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => NodeError::SnapshotNotFound(dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()),
        _ => NodeError::Corrupt(format!("meta.json unreadable: {e}")),
    })?;
    let meta: SnapshotMeta = serde_json::from_slice(&bytes).map_err(|e| NodeError::Corrupt(format!("meta.json does not parse: {e}")))?;
    if meta.format != FORMAT || meta.version / 100 != VERSION / 100 || meta.version > VERSION {
        return Err(NodeError::Corrupt(format!("unsupported artifact {} version {}", meta.format, meta.version)));
    }
    Ok(meta)
}

/// Reads and verifies an artifact: every file present with its size and checksum.
pub async fn verify(dir: &FsPath) -> R<SnapshotMeta> {
    let meta = read_meta(dir).await?;
    for f in &meta.files {
        let p = dir.join(&f.name);
        let (len, sum) = tokio::task::spawn_blocking(move || hash_file(&p))
            .await
            .map_err(|e| NodeError::Corrupt(e.to_string()))?
            .map_err(|e| NodeError::Corrupt(format!("{}: {e}", f.name)))?;
        if len != f.bytes {
            return Err(NodeError::Corrupt(format!("{} is {len} bytes, expected {} (truncated?)", f.name, f.bytes)));
        }
        if sum != f.blake3 {
            return Err(NodeError::Corrupt(format!("{} does not match its checksum", f.name)));
        }
    }
    Ok(meta)
}

async fn files_of(dir: &FsPath, names: &[&str]) -> R<Vec<ArtifactFile>> {
    let mut v = Vec::new();
    for n in names {
        let p = dir.join(n);
        if !p.exists() {
            continue;
        }
        let (bytes, blake3) = tokio::task::spawn_blocking(move || hash_file(&p))
            .await
            .map_err(|e| NodeError::Invalid(e.to_string()))?
            .map_err(io(format!("hashing {n}")))?;
        v.push(ArtifactFile { name: (*n).into(), bytes, blake3 });
    }
    Ok(v)
}

async fn run(cmd: &mut Command, what: &str) -> R<()> {
    let out = cmd.output().await.map_err(io(format!("running {what}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if err.contains("No space left") {
            return Err(NodeError::Capacity(format!("{what}: no space left on the node's disk")));
        }
        return Err(NodeError::Command(format!("{what} failed: {err}")));
    }
    Ok(())
}

/// Writes the root disk `src` (raw or qcow2) as a sparse raw file `dst`.
pub async fn export_disk(src: &FsPath, format: DiskFormat, dst: &FsPath) -> R<()> {
    match format {
        DiskFormat::Raw => run(Command::new("cp").arg("--sparse=always").arg(src).arg(dst), "copying the disk").await,
        DiskFormat::Qcow2 => {
            run(Command::new("qemu-img").args(["convert", "-q", "-O", "raw"]).arg(src).arg(dst), "flattening the disk").await
        }
    }
}

/// Turns a fork's qcow2 overlay into a private raw disk (before a resize or
/// when its snapshot must go away). The caller holds the record lock.
pub(crate) async fn flatten(ws: &Ws, rec: &mut Record) -> R<()> {
    if rec.disk_format == DiskFormat::Raw {
        return Ok(());
    }
    let src = ws.disk_of(rec);
    let tmp = ws.dir.join("disk.raw.tmp");
    export_disk(&src, DiskFormat::Qcow2, &tmp).await?;
    tokio::fs::rename(&tmp, ws.dir.join("disk.raw")).await.map_err(io("installing the flattened disk"))?;
    rec.disk_format = DiskFormat::Raw;
    rec.backing_snapshot = None;
    ws.persist(rec).await?;
    let _ = tokio::fs::remove_file(src).await;
    Ok(())
}

fn files_for(meta: &SnapshotMeta, dir: &FsPath) -> R<SnapshotFiles> {
    let backend = match meta.backend.as_str() {
        "qemu" => BackendKind::Qemu,
        "firecracker" => BackendKind::Firecracker,
        o => return Err(NodeError::Corrupt(format!("unknown backend {o}"))),
    };
    let memory = dir.join("memory");
    Ok(SnapshotFiles { backend, state: dir.join("vmstate"), memory: memory.exists().then_some(memory) })
}

impl Node {
    fn snapshots_root(&self) -> PathBuf {
        self.inner.cfg.data_dir.join("snapshots")
    }

    /// The directory of snapshot `sid`.
    pub fn snapshot_dir(&self, sid: &str) -> R<PathBuf> {
        if !valid_snapshot_id(sid) {
            return Err(NodeError::Invalid(format!("invalid snapshot id {sid:?}")));
        }
        Ok(self.snapshots_root().join(sid))
    }

    fn check_backend(&self, meta: &SnapshotMeta) -> R<()> {
        let here = self.inner.vmm.kind().to_string();
        if meta.kind == SnapshotKind::Live && meta.backend != here {
            return Err(NodeError::Invalid(format!("this live snapshot was made by {}; this node runs {here}", meta.backend)));
        }
        Ok(())
    }

    /// Pauses the guest, writes its state into `dir`, optionally copies the
    /// disk. The guest stays paused. On error the partial files are removed
    /// and the guest is resumed.
    async fn capture(&self, ws: &Ws, rec: &Record, dir: &FsPath, copy_disk: bool) -> R<(SnapshotFiles, Instant)> {
        let kernel = self.inner.images.resolve_kernel()?;
        let cfg = ws.vm_config(rec, &kernel);
        let vm = rec.vm.clone().ok_or_else(|| NodeError::NotRunning(ws.id.clone()))?;
        let _ = tokio::fs::remove_dir_all(dir).await;
        tokio::fs::create_dir_all(dir).await.map_err(io("creating the snapshot dir"))?;
        let paused_at = Instant::now();
        let result = async {
            let files = self.inner.vmm.snapshot(&cfg, &vm, dir).await?;
            if copy_disk {
                export_disk(&ws.disk_of(rec), rec.disk_format, &dir.join("disk.raw")).await?;
            }
            Ok::<_, NodeError>(files)
        }
        .await;
        match result {
            Ok(f) => Ok((f, paused_at)),
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(dir).await;
                let _ = self.inner.vmm.resume(&cfg, &vm).await;
                // A failed write on a full disk is a capacity problem.
                let full = nix::sys::statvfs::statvfs(dir.parent().unwrap_or(dir))
                    .map(|s| (s.blocks_available() * s.fragment_size()) < (u64::from(rec.spec.ram_mb) << 20))
                    .unwrap_or(false);
                if full {
                    return Err(NodeError::Capacity(format!("not enough space on the node to write the snapshot ({e})")));
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish_artifact(&self, ws: &Ws, rec: &Record, tmp: &FsPath, id: &str, kind: SnapshotKind, t0: Instant, paused_ms: u64) -> R<SnapshotMeta> {
        let names: &[&str] = match kind {
            SnapshotKind::Disk => &["disk.raw"],
            SnapshotKind::Live => &["disk.raw", "vmstate", "memory"],
        };
        let files = files_of(tmp, names).await?;
        let meta = SnapshotMeta {
            format: FORMAT.into(),
            version: VERSION,
            id: id.into(),
            kind,
            workspace_id: ws.id.clone(),
            backend: self.inner.vmm.kind().to_string(),
            vcpus: rec.spec.vcpus,
            ram_mb: rec.spec.ram_mb,
            disk_mb: rec.spec.disk_mb,
            template: rec.spec.template.clone(),
            created_unix_ms: now_ms(),
            files,
            allocated_bytes: allocated(tmp),
            took_ms: t0.elapsed().as_millis() as u64,
            paused_ms,
        };
        tokio::fs::write(tmp.join("meta.json"), serde_json::to_vec_pretty(&meta).unwrap_or_default())
            .await
            .map_err(io("writing meta.json"))?;
        Ok(meta)
    }

    /// Takes a snapshot of workspace `id`.
    pub async fn snapshot(&self, id: &str, req: &CreateSnapshot) -> R<SnapshotMeta> {
        let dir = self.snapshot_dir(&req.snapshot_id)?;
        if dir.exists() {
            return Err(NodeError::Exists(req.snapshot_id.clone()));
        }
        let ws = self.get(id)?;
        let rec = ws.rec.lock().await;
        let t0 = Instant::now();
        let tmp = dir.with_extension("tmp");
        tokio::fs::create_dir_all(self.snapshots_root()).await.map_err(io("creating the snapshots dir"))?;
        let result = if req.live {
            if rec.state != WorkspaceState::Running {
                return Err(NodeError::Invalid(format!("a live snapshot needs a running workspace ({} is {})", id, rec.state)));
            }
            let (_, paused_at) = self.capture(&ws, &rec, &tmp, true).await?;
            let kernel = self.inner.images.resolve_kernel()?;
            if let Some(vm) = &rec.vm {
                self.inner.vmm.resume(&ws.vm_config(&rec, &kernel), vm).await?;
            }
            let paused_ms = paused_at.elapsed().as_millis() as u64;
            self.finish_artifact(&ws, &rec, &tmp, &req.snapshot_id, SnapshotKind::Live, t0, paused_ms).await
        } else {
            if !matches!(rec.state, WorkspaceState::Stopped | WorkspaceState::Provisioned) {
                return Err(NodeError::Invalid(format!(
                    "a disk snapshot needs a stopped workspace ({} is {}); stop it or take a live snapshot",
                    id, rec.state
                )));
            }
            let r = async {
                tokio::fs::create_dir_all(&tmp).await.map_err(io("creating the snapshot dir"))?;
                export_disk(&ws.disk_of(&rec), rec.disk_format, &tmp.join("disk.raw")).await?;
                self.finish_artifact(&ws, &rec, &tmp, &req.snapshot_id, SnapshotKind::Disk, t0, 0).await
            }
            .await;
            r
        };
        let meta = match result {
            Ok(m) => m,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&tmp).await;
                return Err(e);
            }
        };
        tokio::fs::rename(&tmp, &dir).await.map_err(io("installing the snapshot"))?;
        tracing::info!(workspace = id, snapshot = %meta.id, kind = ?meta.kind, took_ms = meta.took_ms, paused_ms = meta.paused_ms, "snapshot taken");
        Ok(meta)
    }

    /// Restores snapshot `sid` into workspace `id` (not running).
    pub async fn restore_snapshot(&self, id: &str, sid: &str) -> R<WorkspaceStatus> {
        let dir = self.snapshot_dir(sid)?;
        let meta = verify(&dir).await?;
        self.check_backend(&meta)?;
        let ws = self.get(id)?;
        let mut rec = ws.rec.lock().await;
        if !matches!(rec.state, WorkspaceState::Stopped | WorkspaceState::Provisioned | WorkspaceState::Paused | WorkspaceState::Failed) {
            return Err(NodeError::Invalid(format!("restore needs a stopped workspace ({id} is {})", rec.state)));
        }
        if meta.kind == SnapshotKind::Live {
            rec.state.apply(Event::RestoreLive)?;
        }
        // New disk first (under a temporary name), then the memory state.
        let tmp_disk = ws.dir.join("disk.raw.restoring");
        export_disk(&dir.join("disk.raw"), DiskFormat::Raw, &tmp_disk).await?;
        let paused = ws.paused_dir();
        let _ = tokio::fs::remove_dir_all(&paused).await;
        if meta.kind == SnapshotKind::Live {
            let tmp_paused = ws.dir.join("paused.tmp");
            let _ = tokio::fs::remove_dir_all(&tmp_paused).await;
            tokio::fs::create_dir_all(&tmp_paused).await.map_err(io("creating paused/"))?;
            for f in ["vmstate", "memory"] {
                if dir.join(f).exists() {
                    run(Command::new("cp").arg("--sparse=always").arg(dir.join(f)).arg(tmp_paused.join(f)), "copying the memory state").await?;
                }
            }
            // The paused state holds memory and device state; the disk is the workspace's.
            let mut pmeta = meta.clone();
            pmeta.files.retain(|f| f.name != "disk.raw");
            tokio::fs::write(tmp_paused.join("meta.json"), serde_json::to_vec_pretty(&pmeta).unwrap_or_default())
                .await
                .map_err(io("writing the paused meta.json"))?;
            tokio::fs::rename(&tmp_paused, &paused).await.map_err(io("installing paused/"))?;
        }
        let old = ws.disk_of(&rec);
        tokio::fs::rename(&tmp_disk, ws.dir.join("disk.raw")).await.map_err(io("installing the restored disk"))?;
        if rec.disk_format == DiskFormat::Qcow2 {
            let _ = tokio::fs::remove_file(old).await;
        }
        rec.disk_format = DiskFormat::Raw;
        rec.backing_snapshot = None;
        rec.spec.disk_mb = meta.disk_mb;
        if meta.kind == SnapshotKind::Live {
            rec.spec.vcpus = meta.vcpus;
            rec.spec.ram_mb = meta.ram_mb;
            ws.transition(&mut rec, Event::RestoreLive).await?;
        } else {
            if rec.state == WorkspaceState::Paused || rec.state == WorkspaceState::Failed {
                rec.state = WorkspaceState::Stopped;
                rec.failure = None;
            }
            ws.persist(&rec).await?;
        }
        tracing::info!(workspace = id, snapshot = sid, state = %rec.state, "snapshot restored");
        Ok(ws.status(&rec))
    }

    /// Pauses a running workspace: memory and device state to disk, VM gone.
    pub async fn pause(&self, id: &str) -> R<WorkspaceStatus> {
        let ws = self.get(id)?;
        let mut rec = ws.rec.lock().await;
        rec.state.apply(Event::Pause)?;
        let t0 = Instant::now();
        let tmp = ws.dir.join("paused.tmp");
        self.capture(&ws, &rec, &tmp, false).await?;
        let paused_ms = t0.elapsed().as_millis() as u64;
        let meta = match self.finish_artifact(&ws, &rec, &tmp, "paused", SnapshotKind::Live, t0, paused_ms).await {
            Ok(m) => m,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&tmp).await;
                let kernel = self.inner.images.resolve_kernel()?;
                if let Some(vm) = &rec.vm {
                    let _ = self.inner.vmm.resume(&ws.vm_config(&rec, &kernel), vm).await;
                }
                return Err(e);
            }
        };
        let _ = tokio::fs::remove_dir_all(ws.paused_dir()).await;
        tokio::fs::rename(&tmp, ws.paused_dir()).await.map_err(io("installing paused/"))?;
        ws.transition(&mut rec, Event::Pause).await?;
        // The memory is on disk: the VM and its slot go away.
        self.halt(&ws, &mut rec).await;
        tracing::info!(workspace = id, took_ms = meta.took_ms, state_bytes = meta.files.iter().map(|f| f.bytes).sum::<u64>(), "paused");
        Ok(ws.status(&rec))
    }

    /// Resumes a paused workspace where it was.
    pub async fn resume(&self, id: &str) -> R<WorkspaceStatus> {
        let ws = self.get(id)?;
        let mut rec = ws.rec.lock().await;
        rec.state.apply(Event::Resume)?;
        let dir = ws.paused_dir();
        let meta = verify(&dir).await?;
        self.check_backend(&meta)?;
        ws.transition(&mut rec, Event::Resume).await?;
        let t0 = Instant::now();
        match self.restore_vm(&ws, &mut rec, &dir, &meta, false).await {
            Ok(()) => {
                rec.boot_ms = Some(t0.elapsed().as_millis() as u64);
                ws.transition(&mut rec, Event::Booted).await?;
                let _ = tokio::fs::remove_dir_all(&dir).await;
                tracing::info!(workspace = id, resume_ms = rec.boot_ms, "resumed");
                let status = ws.status(&rec);
                drop(rec);
                self.on_running(&ws).await;
                Ok(status)
            }
            Err(e) => {
                ws.transition(&mut rec, Event::ResumeFailed).await?;
                Err(e)
            }
        }
    }

    /// Starts a VM from the state in `dir` for `ws` (record locked), waits
    /// for its agent and pushes clock, entropy (and a new identity for forks).
    pub(crate) async fn restore_vm(&self, ws: &Ws, rec: &mut Record, dir: &FsPath, meta: &SnapshotMeta, new_identity: bool) -> R<()> {
        let kernel = self.inner.images.resolve_kernel()?;
        let slot = ws.slot();
        slot.create()?;
        let cfg = ws.vm_config(rec, &kernel);
        let files = files_for(meta, dir)?;
        let t0 = Instant::now();
        let vm = match self.inner.vmm.restore(&cfg, &files).await {
            Ok(vm) => vm,
            Err(e) => {
                let _ = slot.delete();
                return Err(e.into());
            }
        };
        let restored_ms = t0.elapsed().as_millis() as u64;
        rec.vm = Some(vm.clone());
        ws.persist(rec).await?;
        let result = async {
            if rec.spec.disk_mb > meta.disk_mb {
                // A warm template restored for a larger disk: grow it now;
                // the init below makes the guest grow its filesystem.
                self.inner.vmm.grow_disk(&cfg, &vm, u64::from(rec.spec.disk_mb) << 20).await?;
            }
            let guest = ws.guest();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if guest.health(Duration::from_secs(2)).await.is_ok() {
                    break;
                }
                if !rigbox_vmm::is_alive(&vm) || Instant::now() > deadline {
                    return Err(NodeError::Invalid("the restored guest's agent did not answer".into()));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let (r2, id2, node2) = (rec.clone(), ws.id.clone(), self.inner.node_id.clone());
            // Making host keys runs ssh-keygen: keep it off the async workers.
            let mut init = tokio::task::spawn_blocking(move || crate::node::init_request(&r2, &id2, &node2, new_identity))
                .await
                .map_err(|e| NodeError::Invalid(e.to_string()))?;
            if !new_identity {
                // Same workspace: only the clock and the RNG need fixing.
                init.hostname = None;
                init.env = None;
                init.authorized_keys = None;
                init.metadata = None;
            }
            let answered_ms = t0.elapsed().as_millis() as u64;
            guest
                .call::<_, serde_json::Value>(hyper::Method::POST, "/v1/init", Some(&init), Duration::from_secs(60))
                .await?;
            tracing::info!(workspace = %ws.id, restored_ms, answered_ms, initialized_ms = t0.elapsed().as_millis() as u64, "restored");
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = self.inner.vmm.kill(&cfg, &vm).await;
            let _ = slot.delete();
            rec.vm = None;
            let _ = ws.persist(rec).await;
            return Err(e);
        }
        Ok(())
    }

    /// Forks a running workspace into new running workspaces.
    pub async fn fork(&self, id: &str, req: ForkRequest) -> R<ForkResponse> {
        if req.forks.is_empty() || req.forks.len() > 32 {
            return Err(NodeError::Invalid("a fork makes between 1 and 32 workspaces".into()));
        }
        for t in &req.forks {
            if self.get(&t.id).is_ok() || self.ws_root().join(&t.id).exists() {
                return Err(NodeError::Exists(t.id.clone()));
            }
        }
        let source = self.get(id)?;
        let snapshot = self.snapshot(id, &CreateSnapshot { snapshot_id: req.snapshot_id.clone(), live: true }).await?;
        let snap_dir = self.snapshot_dir(&snapshot.id)?;
        let spec = source.rec.lock().await.spec.clone();
        let t0 = Instant::now();
        let results = futures::future::join_all(req.forks.iter().map(|t| self.fork_one(&snapshot, &snap_dir, &spec, t))).await;
        let mut workspaces = Vec::new();
        let mut first_err = None;
        for r in results {
            match r {
                Ok(w) => workspaces.push(w),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        if let Some(e) = first_err {
            // All or nothing: a fork the caller never hears of must not live on.
            for w in &workspaces {
                if let Err(de) = self.delete(&w.id).await {
                    tracing::warn!(workspace = %w.id, "removing a fork after a failed sibling: {de}");
                }
            }
            return Err(e);
        }
        tracing::info!(source = id, forks = workspaces.len(), took_ms = t0.elapsed().as_millis() as u64, "forked");
        Ok(ForkResponse { snapshot, workspaces })
    }

    async fn fork_one(&self, meta: &SnapshotMeta, snap_dir: &FsPath, spec: &rigbox_node_api::CreateWorkspace, t: &ForkTarget) -> R<WorkspaceStatus> {
        let dir = self.reserve(&t.id)?;
        let made = async {
            let (format, backing) = if self.inner.vmm.kind() == BackendKind::Qemu {
                run(
                    Command::new("qemu-img")
                        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                        .arg(snap_dir.join("disk.raw"))
                        .arg(dir.join("disk.qcow2")),
                    "creating the copy-on-write disk",
                )
                .await?;
                (DiskFormat::Qcow2, Some(meta.id.clone()))
            } else {
                export_disk(&snap_dir.join("disk.raw"), DiskFormat::Raw, &dir.join("disk.raw")).await?;
                (DiskFormat::Raw, None)
            };
            let mut fspec = spec.clone();
            fspec.hostname = t.hostname.clone();
            fspec.metadata = t.metadata.clone();
            let mut rec = self.new_record(&t.id, fspec, WorkspaceState::Starting, format);
            rec.backing_snapshot = backing;
            Ok(rec)
        }
        .await;
        let ws = self.commit(dir, made).await?;
        let mut rec = ws.rec.lock().await;
        let t0 = Instant::now();
        match self.restore_vm(&ws, &mut rec, snap_dir, meta, true).await {
            Ok(()) => {
                rec.boot_ms = Some(t0.elapsed().as_millis() as u64);
                ws.transition(&mut rec, Event::Booted).await?;
                let status = ws.status(&rec);
                drop(rec);
                self.on_running(&ws).await;
                let (node, w) = (self.clone(), ws.clone());
                tokio::spawn(async move { node.push_setup(&w).await });
                Ok(status)
            }
            Err(e) => {
                rec.failure = Some(rigbox_node_api::Failure {
                    code: "fork_failed".into(),
                    message: e.to_string(),
                    console_tail: Some(ws.console_tail(30)),
                    at_unix_ms: now_ms(),
                });
                ws.transition(&mut rec, Event::BootFailed).await?;
                Ok(ws.status(&rec))
            }
        }
    }

    /// All snapshot artifacts.
    pub async fn list_snapshots(&self) -> Vec<SnapshotMeta> {
        let mut v = Vec::new();
        if let Ok(mut rd) = tokio::fs::read_dir(self.snapshots_root()).await {
            while let Ok(Some(e)) = rd.next_entry().await {
                if e.file_name().to_string_lossy().ends_with(".tmp") {
                    continue;
                }
                if let Ok(m) = read_meta(&e.path()).await {
                    v.push(m);
                }
            }
        }
        v.sort_by_key(|m| m.created_unix_ms);
        v
    }

    /// Deletes an artifact unless a workspace's disk is backed by it.
    pub async fn delete_snapshot(&self, sid: &str) -> R<()> {
        let dir = self.snapshot_dir(sid)?;
        if !dir.exists() {
            return Err(NodeError::SnapshotNotFound(sid.into()));
        }
        let workspaces: Vec<Arc<Ws>> = self.inner.workspaces.lock().map(|m| m.values().cloned().collect()).unwrap_or_default();
        for ws in workspaces {
            if ws.rec.lock().await.backing_snapshot.as_deref() == Some(sid) {
                return Err(NodeError::InUse(format!("snapshot {sid} backs the disk of workspace {}", ws.id)));
            }
        }
        tokio::fs::remove_dir_all(&dir).await.map_err(io("removing the snapshot"))
    }

    /// Removes temporary snapshot directories left by a crash.
    pub(crate) async fn reclaim_snapshots(&self) {
        if let Ok(mut rd) = tokio::fs::read_dir(self.snapshots_root()).await {
            while let Ok(Some(e)) = rd.next_entry().await {
                if e.file_name().to_string_lossy().ends_with(".tmp") {
                    tracing::info!(path = %e.path().display(), "removing a partial snapshot");
                    let _ = tokio::fs::remove_dir_all(e.path()).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_follows_data_not_holes() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let f = std::fs::File::create(&a).unwrap();
        f.set_len(64 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"hello", 10 << 20).unwrap();
        drop(f);
        let (len, h1) = hash_file(&a).unwrap();
        assert_eq!(len, 64 << 20);
        // Same data at another offset hashes differently.
        let b = dir.path().join("b");
        let f = std::fs::File::create(&b).unwrap();
        f.set_len(64 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"hello", 11 << 20).unwrap();
        drop(f);
        assert_ne!(hash_file(&b).unwrap().1, h1);
        // A flipped byte changes the hash; truncation changes the length.
        let f = std::fs::OpenOptions::new().write(true).open(&a).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"j", 10 << 20).unwrap();
        assert_ne!(hash_file(&a).unwrap().1, h1);
        f.set_len(1 << 20).unwrap();
        assert_eq!(hash_file(&a).unwrap().0, 1 << 20);
    }

    #[tokio::test]
    async fn corrupt_artifacts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let art = dir.path().join("s1");
        std::fs::create_dir(&art).unwrap();
        std::fs::write(art.join("disk.raw"), b"disk contents").unwrap();
        let files = files_of(&art, &["disk.raw"]).await.unwrap();
        let meta = SnapshotMeta {
            format: FORMAT.into(),
            version: VERSION,
            id: "s1".into(),
            kind: SnapshotKind::Disk,
            workspace_id: "ws-1".into(),
            backend: "qemu".into(),
            vcpus: 1,
            ram_mb: 512,
            disk_mb: 3072,
            template: "base".into(),
            created_unix_ms: 0,
            files,
            allocated_bytes: 0,
            took_ms: 0,
            paused_ms: 0,
        };
        std::fs::write(art.join("meta.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
        verify(&art).await.unwrap();
        std::fs::write(art.join("disk.raw"), b"disk contentz").unwrap();
        assert!(matches!(verify(&art).await, Err(NodeError::Corrupt(m)) if m.contains("checksum")));
        std::fs::write(art.join("disk.raw"), b"disk").unwrap();
        assert!(matches!(verify(&art).await, Err(NodeError::Corrupt(m)) if m.contains("truncated")));
        let mut newer = meta.clone();
        newer.version = 200;
        std::fs::write(art.join("meta.json"), serde_json::to_vec(&newer).unwrap()).unwrap();
        assert!(matches!(verify(&art).await, Err(NodeError::Corrupt(m)) if m.contains("version")));
        std::fs::write(art.join("meta.json"), b"{").unwrap();
        assert!(matches!(verify(&art).await, Err(NodeError::Corrupt(_))));
    }
}
