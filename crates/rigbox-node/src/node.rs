//! The node: workspace records on disk, lifecycle operations, supervision and
//! startup reclaim.
//!
//! Layout under the node's data directory:
//!
//! ```text
//! node.json                     node id
//! workspaces/<id>/record.json   the workspace record (spec, state, VM process)
//! workspaces/<id>/disk.qcow2    root disk on QEMU: copy-on-write over a base
//!                               or a snapshot's disk (`disk.raw`: a private
//!                               raw disk, on Firecracker or after a resize)
//! bases/<tpl>-<key>-<mb>.ext4   template images grown to a disk size, shared
//!                               read-only under the workspaces' overlays
//! workspaces/<id>/console.log   serial console
//! workspaces/<id>/run/          VMM sockets and pid file
//! workspaces/<id>/.creating     present while the workspace is being created
//! ```
//!
//! Every state change is written to `record.json` (atomically) before it
//! takes effect outside, so a restarted node agent knows what each VM was
//! doing and either re-adopts it or cleans it up.

use crate::disk;
use crate::error::{io, NodeError};
use crate::guest::{Guest, GuestError};
use rigbox_guest_proto::{InitRequest, HOST_ADDR};
use rigbox_image::Pipeline;
use rigbox_netns::{Slot, GUEST_MAC, TAP_NAME};
use rigbox_node_api::{Capacity, CreateWorkspace, Failure, NodeInfo, Resources, WorkspaceStatus};
use rigbox_types::{Event, WorkspaceState};
use rigbox_vmm::{is_alive, Accel, BackendKind, DiskFormat, VmConfig, VmProcess, Vmm};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Node agent settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Node data directory (records, disks, consoles).
    pub data_dir: PathBuf,
    /// How long a boot may take until the guest agent answers.
    pub boot_timeout: Duration,
    /// How long a clean shutdown may take before the VM is killed.
    pub stop_timeout: Duration,
    /// How often VM processes are checked.
    pub supervise_every: Duration,
}

impl NodeConfig {
    /// Defaults for `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            data_dir: data_dir.into(),
            boot_timeout: Duration::from_secs(180),
            stop_timeout: Duration::from_secs(30),
            supervise_every: Duration::from_secs(1),
        }
    }
}

/// The persisted record of one workspace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Id.
    pub id: String,
    /// What was asked for.
    pub spec: CreateWorkspace,
    /// Lifecycle state.
    pub state: WorkspaceState,
    /// The VM process while one exists.
    pub vm: Option<VmProcess>,
    /// Backend of the last boot.
    pub backend: BackendKind,
    /// Acceleration of the last boot.
    pub accel: Accel,
    /// Why it failed.
    pub failure: Option<Failure>,
    /// Last boot duration.
    pub boot_ms: Option<u64>,
    /// Last state change.
    pub state_changed_unix_ms: u64,
    /// Root disk format (`qcow2` for forks on QEMU, over a snapshot's disk).
    #[serde(default)]
    pub disk_format: DiskFormat,
    /// The snapshot whose disk backs this workspace's qcow2 overlay.
    #[serde(default)]
    pub backing_snapshot: Option<String>,
    /// A warm template snapshot the first start restores instead of booting.
    #[serde(default)]
    pub warm_snapshot: Option<String>,
    /// The pinned template image (in `bases/`) under this workspace's qcow2
    /// disk, if any (kept while a record names it).
    #[serde(default)]
    pub backing_base: Option<String>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// One workspace in memory.
#[derive(Debug)]
pub(crate) struct Ws {
    pub id: String,
    /// `<node id>-<workspace id>`: names the slot and the VM process, so
    /// several node agents on one host never touch each other's.
    pub scoped: String,
    pub dir: PathBuf,
    pub rec: Mutex<Record>,
    /// The in-flight boot, if any.
    pub boot: StdMutex<Option<BootTask>>,
}

/// A boot running in the background: cancel it, then wait until it has let
/// go of what it made, so a cancel or delete that returns leaves nothing
/// behind.
#[derive(Debug)]
pub struct BootTask {
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Ws {
    pub fn slot(&self) -> Slot {
        Slot::for_workspace(&self.scoped).expect("ids are validated at create")
    }

    pub fn guest(&self) -> Guest {
        Guest::new(self.slot())
    }

    /// The root disk file for the record's disk format.
    pub(crate) fn disk_of(&self, rec: &Record) -> PathBuf {
        match rec.disk_format {
            DiskFormat::Raw => self.dir.join("disk.raw"),
            DiskFormat::Qcow2 => self.dir.join("disk.qcow2"),
        }
    }

    /// The record, if nobody holds it.
    pub(crate) fn try_lock_rec(&self) -> Result<tokio::sync::MutexGuard<'_, Record>, tokio::sync::TryLockError> {
        self.rec.try_lock()
    }

    /// Where a paused workspace keeps its memory and device state.
    pub(crate) fn paused_dir(&self) -> PathBuf {
        self.dir.join("paused")
    }

    fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    pub(crate) fn vm_config(&self, rec: &Record, kernel: &Path) -> VmConfig {
        let slot = self.slot();
        VmConfig {
            id: self.scoped.clone(),
            kernel: kernel.to_path_buf(),
            disk: self.disk_of(rec),
            disk_format: rec.disk_format,
            vcpus: rec.spec.vcpus,
            mem_mb: rec.spec.ram_mb,
            netns: slot.name().to_string(),
            tap: TAP_NAME.into(),
            mac: GUEST_MAC.into(),
            run_dir: self.dir.join("run"),
            console_log: self.console(),
            extra_args: vec![],
        }
    }

    pub(crate) async fn persist(&self, rec: &Record) -> Result<(), NodeError> {
        write_record(&self.dir, rec).await
    }

    /// Applies `event` and persists; the caller holds the lock.
    pub(crate) async fn transition(&self, rec: &mut Record, event: Event) -> Result<(), NodeError> {
        let next = rec.state.apply(event)?;
        rec.state = next;
        rec.state_changed_unix_ms = now_ms();
        self.persist(rec).await
    }

    pub(crate) fn status(&self, rec: &Record) -> WorkspaceStatus {
        WorkspaceStatus {
            id: self.id.clone(),
            state: rec.state,
            template: rec.spec.template.clone(),
            vcpus: rec.spec.vcpus,
            ram_mb: rec.spec.ram_mb,
            disk_mb: rec.spec.disk_mb,
            backend: rec.backend.to_string(),
            accel: rec.accel.to_string(),
            pid: rec.vm.as_ref().map(|v| v.pid),
            failure: rec.failure.clone(),
            boot_ms: rec.boot_ms,
            state_changed_unix_ms: rec.state_changed_unix_ms,
            hostname: rec.spec.hostname.clone(),
        }
    }

    /// The last lines of the serial console.
    pub fn console_tail(&self, lines: usize) -> String {
        let data = std::fs::read(self.console()).unwrap_or_default();
        let start = data.len().saturating_sub(16 * 1024);
        let text = String::from_utf8_lossy(&data[start..]);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

pub(crate) async fn write_record(dir: &Path, rec: &Record) -> Result<(), NodeError> {
    let tmp = dir.join("record.json.tmp");
    let bytes = serde_json::to_vec_pretty(rec).map_err(|e| NodeError::Invalid(e.to_string()))?;
    tokio::fs::write(&tmp, bytes).await.map_err(io("writing the workspace record"))?;
    tokio::fs::rename(&tmp, dir.join("record.json")).await.map_err(io("installing the workspace record"))
}

pub(crate) struct Inner {
    pub(crate) cfg: NodeConfig,
    pub(crate) node_id: String,
    pub(crate) vmm: Arc<dyn Vmm>,
    pub(crate) images: Pipeline,
    pub(crate) workspaces: StdMutex<HashMap<String, Arc<Ws>>>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) warm: crate::warm::Warm,
}

/// The node agent.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("node_id", &self.inner.node_id).finish()
    }
}

/// Runs a boot in the background, recorded in `ws.boot` so that a cancel or
/// delete can stop it and wait for it.
fn spawn_boot<F, Fut>(ws: &Ws, boot: F)
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let token = CancellationToken::new();
    let task = tokio::spawn(boot(token.clone()));
    if let Ok(mut b) = ws.boot.lock() {
        *b = Some(BootTask { token, task });
    }
}

/// Cancels the boot of `ws`, if one runs, and waits until it has finished
/// (call without holding the record's lock: the boot takes it).
async fn stop_boot(ws: &Ws) {
    let Some(b) = ws.boot.lock().ok().and_then(|mut b| b.take()) else { return };
    b.token.cancel();
    if tokio::time::timeout(Duration::from_secs(120), b.task).await.is_err() {
        tracing::warn!(workspace = %ws.id, "the boot did not end within 120 s of its cancel");
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 40 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Most vCPUs one workspace may have.
pub const MAX_VCPUS: u32 = 32;
/// Least memory one workspace may have (MiB).
pub const MIN_RAM_MB: u32 = 128;

impl Node {
    /// Opens the node: loads records, re-adopts running VMs, reclaims
    /// leftovers, and starts supervision.
    pub async fn open(cfg: NodeConfig, vmm: Arc<dyn Vmm>, images: Pipeline) -> Result<Self, NodeError> {
        let ws_dir = cfg.data_dir.join("workspaces");
        tokio::fs::create_dir_all(&ws_dir).await.map_err(io(format!("creating {}", ws_dir.display())))?;
        let node_id = load_node_id(&cfg.data_dir).await?;
        let node = Node {
            inner: Arc::new(Inner {
                cfg,
                node_id,
                vmm,
                images,
                workspaces: StdMutex::new(HashMap::new()),
                shutdown: CancellationToken::new(),
                warm: Default::default(),
            }),
        };
        node.reclaim().await?;
        let n = node.clone();
        tokio::spawn(async move { n.supervise().await });
        Ok(node)
    }

    /// Stops background tasks (VMs keep running).
    pub fn close(&self) {
        self.inner.shutdown.cancel();
    }

    /// Node id.
    pub fn id(&self) -> &str {
        &self.inner.node_id
    }

    /// The VMM in use.
    pub fn vmm(&self) -> &Arc<dyn Vmm> {
        &self.inner.vmm
    }

    /// The image pipeline.
    pub fn images(&self) -> &Pipeline {
        &self.inner.images
    }

    /// Pinned template images that workspaces' qcow2 disks are built on.
    pub(crate) fn bases_root(&self) -> PathBuf {
        self.inner.cfg.data_dir.join("bases")
    }

    /// Removes pinned bases that no workspace record names (at startup,
    /// before any create can pin one).
    async fn gc_bases(&self, records: &[Arc<Ws>]) {
        let mut used = std::collections::HashSet::new();
        for ws in records {
            if let Some(b) = ws.rec.lock().await.backing_base.clone() {
                used.insert(b);
            }
        }
        let Ok(mut rd) = tokio::fs::read_dir(self.bases_root()).await else { return };
        while let Ok(Some(e)) = rd.next_entry().await {
            let name = e.file_name().to_string_lossy().into_owned();
            if !used.contains(&name) {
                tracing::info!(base = %name, "removing an unused base image");
                let _ = tokio::fs::remove_file(e.path()).await;
            }
        }
    }

    pub(crate) fn ws_root(&self) -> PathBuf {
        self.inner.cfg.data_dir.join("workspaces")
    }

    pub(crate) fn get(&self, id: &str) -> Result<Arc<Ws>, NodeError> {
        self.inner
            .workspaces
            .lock()
            .map_err(|_| NodeError::Invalid("poisoned".into()))?
            .get(id)
            .cloned()
            .ok_or_else(|| NodeError::NotFound(id.into()))
    }

    fn all(&self) -> Vec<Arc<Ws>> {
        self.inner.workspaces.lock().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// Status of every workspace.
    pub async fn list(&self) -> Vec<WorkspaceStatus> {
        let mut v = Vec::new();
        for ws in self.all() {
            let rec = ws.rec.lock().await;
            v.push(ws.status(&rec));
        }
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Status of one workspace.
    pub async fn status(&self, id: &str) -> Result<WorkspaceStatus, NodeError> {
        let ws = self.get(id)?;
        let rec = ws.rec.lock().await;
        Ok(ws.status(&rec))
    }

    /// Node facts and usage.
    pub async fn info(&self) -> NodeInfo {
        let mem_kb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()))
            .unwrap_or(0);
        let disk_mb = nix::sys::statvfs::statvfs(&self.inner.cfg.data_dir)
            .map(|s| (s.blocks() * s.fragment_size()) >> 20)
            .unwrap_or(0);
        let mut committed = Capacity::default();
        let mut by_state: BTreeMap<String, u32> = BTreeMap::new();
        for w in self.list().await {
            *by_state.entry(w.state.to_string()).or_default() += 1;
            committed.disk_mb += u64::from(w.disk_mb);
            if w.state.has_vm() {
                committed.vcpus += w.vcpus;
                committed.ram_mb += u64::from(w.ram_mb);
            }
        }
        let templates = self
            .inner
            .images
            .recipes()
            .templates()
            .filter(|t| self.inner.images.resolve(&t.id).is_ok())
            .map(|t| t.id.clone())
            .collect();
        NodeInfo {
            node_id: self.inner.node_id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            backend: self.inner.vmm.kind().to_string(),
            accel: self.inner.vmm.accel().to_string(),
            capacity: Capacity {
                vcpus: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
                ram_mb: mem_kb / 1024,
                disk_mb,
            },
            committed,
            workspaces: by_state,
            templates,
        }
    }

    /// Creates a workspace: validates, allocates its disk (a copy-on-write
    /// overlay over a warm template snapshot when one matches, else a copy of
    /// the template image), records it as `provisioned`. Nothing is left
    /// behind on failure.
    pub async fn create(&self, id: &str, spec: CreateWorkspace) -> Result<WorkspaceStatus, NodeError> {
        if valid_id(id) && !spec.cold_boot && self.inner.vmm.kind() == BackendKind::Qemu {
            if let Some((meta, dir)) = self.find_warm(&spec).await {
                match self.create_warm(id, spec.clone(), &meta, &dir).await {
                    Ok(s) => return Ok(s),
                    Err(NodeError::Exists(x)) => return Err(NodeError::Exists(x)),
                    Err(e) => tracing::warn!(workspace = id, "warm create failed, using the image: {e}"),
                }
            }
        }
        self.create_cold(id, spec).await
    }

    async fn create_warm(&self, id: &str, spec: CreateWorkspace, meta: &rigbox_node_api::SnapshotMeta, snap: &Path) -> Result<WorkspaceStatus, NodeError> {
        let dir = self.reserve(id)?;
        let made = async {
            let out = tokio::process::Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(snap.join("disk.raw"))
                .arg(dir.join("disk.qcow2"))
                .output()
                .await
                .map_err(io("running qemu-img"))?;
            if !out.status.success() {
                return Err(NodeError::Command(format!("qemu-img create: {}", String::from_utf8_lossy(&out.stderr).trim())));
            }
            let mut rec = self.new_record(id, spec, WorkspaceState::Provisioned, DiskFormat::Qcow2);
            rec.backing_snapshot = Some(meta.id.clone());
            rec.warm_snapshot = Some(meta.id.clone());
            Ok(rec)
        }
        .await;
        let ws = self.commit(dir, made).await?;
        let status = ws.status(&*ws.rec.lock().await);
        tracing::info!(workspace = id, warm = %meta.id, "created from a warm template");
        Ok(status)
    }

    /// Creates a workspace from the template image.
    pub(crate) async fn create_cold(&self, id: &str, spec: CreateWorkspace) -> Result<WorkspaceStatus, NodeError> {
        if !valid_id(id) {
            return Err(NodeError::Invalid(format!("invalid workspace id {id:?}")));
        }
        if spec.vcpus == 0 || spec.vcpus > MAX_VCPUS {
            return Err(NodeError::Invalid(format!("vcpus must be between 1 and {MAX_VCPUS}")));
        }
        if spec.ram_mb < MIN_RAM_MB {
            return Err(NodeError::Invalid(format!("ram_mb must be at least {MIN_RAM_MB}")));
        }
        let host_ram_mb = self.info().await.capacity.ram_mb;
        if u64::from(spec.ram_mb) > host_ram_mb {
            return Err(NodeError::Capacity(format!("ram_mb {} exceeds the node's memory ({host_ram_mb} MiB)", spec.ram_mb)));
        }
        let image = self.inner.images.resolve(&spec.template).map_err(|e| match e {
            rigbox_image::ImageError::NotBuilt { template } => {
                NodeError::ImageMissing(format!("the image of template {template:?} is not built on this node (run `rigboxd image build`)"))
            }
            other => NodeError::Image(other),
        })?;
        if u64::from(spec.disk_mb) < image.rootfs_size_mb {
            return Err(NodeError::Invalid(format!(
                "disk_size_mb {} is smaller than the {} image ({} MiB)",
                spec.disk_mb, spec.template, image.rootfs_size_mb
            )));
        }
        if let Ok(s) = nix::sys::statvfs::statvfs(&self.inner.cfg.data_dir) {
            let free_mb = (s.blocks_available() * s.fragment_size()) >> 20;
            // Disks are sparse: require room for the image's data plus headroom.
            if free_mb < image.rootfs_size_mb + 512 {
                return Err(NodeError::Capacity(format!("only {free_mb} MiB free on the node's disk")));
            }
        }
        // Reserve the id before any slow work.
        let dir = self.reserve(id)?;
        let made = async {
            if self.inner.vmm.kind() == BackendKind::Qemu {
                // A copy-on-write disk over a base of this template and size
                // (made once per size): instant, and only what the guest
                // writes takes space.
                let name = format!("{}-{}-{}.ext4", spec.template, image.key, spec.disk_mb);
                let base = disk::base_for(&image.rootfs, &self.bases_root(), &name, u64::from(spec.disk_mb)).await?;
                disk::create_overlay(&base, &dir.join("disk.qcow2")).await?;
                let mut rec = self.new_record(id, spec, WorkspaceState::Provisioned, DiskFormat::Qcow2);
                rec.backing_base = Some(name);
                Ok(rec)
            } else {
                // Firecracker takes raw disks only: a sparse private copy.
                disk::create_from_image(&image.rootfs, &dir.join("disk.raw"), u64::from(spec.disk_mb)).await?;
                Ok(self.new_record(id, spec, WorkspaceState::Provisioned, DiskFormat::Raw))
            }
        }
        .await;
        let ws = self.commit(dir, made).await?;
        let status = ws.status(&*ws.rec.lock().await);
        tracing::info!(workspace = id, "created");
        Ok(status)
    }

    /// Claims `id` for a new workspace: fails if it is taken, else makes its
    /// directory with a `.creating` marker (reclaimed at startup if the
    /// process dies before [`Node::commit`]).
    pub(crate) fn reserve(&self, id: &str) -> Result<PathBuf, NodeError> {
        if !valid_id(id) {
            return Err(NodeError::Invalid(format!("invalid workspace id {id:?}")));
        }
        let dir = self.ws_root().join(id);
        let map = self.inner.workspaces.lock().map_err(|_| NodeError::Invalid("poisoned".into()))?;
        if map.contains_key(id) || dir.exists() {
            return Err(NodeError::Exists(id.into()));
        }
        std::fs::create_dir_all(dir.join("run")).map_err(io("creating the workspace dir"))?;
        std::fs::write(dir.join(".creating"), b"").map_err(io("marking the workspace as creating"))?;
        Ok(dir)
    }

    /// Finishes a create begun with [`Node::reserve`]: on success persists
    /// the record, drops the marker and registers the workspace; on failure
    /// removes the directory, so nothing half-made is left.
    pub(crate) async fn commit(&self, dir: PathBuf, made: Result<Record, NodeError>) -> Result<Arc<Ws>, NodeError> {
        let done = async {
            let rec = made?;
            write_record(&dir, &rec).await?;
            tokio::fs::remove_file(dir.join(".creating")).await.map_err(io("finishing create"))?;
            Ok::<_, NodeError>(rec)
        }
        .await;
        let rec = match done {
            Ok(r) => r,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                return Err(e);
            }
        };
        let id = rec.id.clone();
        let ws = Arc::new(Ws { id: id.clone(), scoped: format!("{}-{id}", self.inner.node_id), dir, rec: Mutex::new(rec), boot: StdMutex::new(None) });
        self.inner.workspaces.lock().map_err(|_| NodeError::Invalid("poisoned".into()))?.insert(id, ws.clone());
        Ok(ws)
    }

    /// A fresh record for this node's backend.
    pub(crate) fn new_record(&self, id: &str, spec: CreateWorkspace, state: WorkspaceState, disk_format: DiskFormat) -> Record {
        Record {
            id: id.into(),
            spec,
            state,
            vm: None,
            backend: self.inner.vmm.kind(),
            accel: self.inner.vmm.accel(),
            failure: None,
            boot_ms: None,
            state_changed_unix_ms: now_ms(),
            disk_format,
            backing_snapshot: None,
            warm_snapshot: None,
            backing_base: None,
        }
    }

    /// Boots a workspace; returns at once in `starting`.
    pub async fn start(&self, id: &str) -> Result<WorkspaceStatus, NodeError> {
        let ws = self.get(id)?;
        let mut rec = ws.rec.lock().await;
        if rec.state == WorkspaceState::Failed {
            // A node-level start of a failed workspace is a retry.
            rec.state.apply(Event::Retry)?.apply(Event::Provisioned)?;
        } else {
            rec.state.apply(Event::Start)?;
        }
        let kernel = self.inner.images.resolve_kernel().map_err(|_| {
            NodeError::ImageMissing("the guest kernel is not built on this node (run `rigboxd image build`)".into())
        })?;
        if !ws.disk_of(&rec).exists() {
            return Err(NodeError::Invalid(format!("the disk of {id} is missing")));
        }
        rec.state = WorkspaceState::Starting;
        rec.failure = None;
        rec.backend = self.inner.vmm.kind();
        rec.accel = self.inner.vmm.accel();
        rec.state_changed_unix_ms = now_ms();
        ws.persist(&rec).await?;
        let status = ws.status(&rec);
        let warm = rec.warm_snapshot.clone();
        drop(rec);
        let node = self.clone();
        let w = ws.clone();
        match warm {
            Some(sid) => spawn_boot(&ws, move |token| async move { node.warm_start(w, sid, kernel, token).await }),
            None => spawn_boot(&ws, move |token| async move { node.boot(w, kernel, token, true).await }),
        }
        Ok(status)
    }

    /// First start of a workspace made from a warm template: restore the
    /// template's snapshot with a new identity; fall back to a cold boot.
    async fn warm_start(&self, ws: Arc<Ws>, sid: String, kernel: PathBuf, token: CancellationToken) {
        let t0 = Instant::now();
        let restored = async {
            let dir = self.snapshot_dir(&sid)?;
            let meta: rigbox_node_api::SnapshotMeta = serde_json::from_slice(&tokio::fs::read(dir.join("meta.json")).await.map_err(io("reading the warm snapshot"))?)
                .map_err(|e| NodeError::Corrupt(e.to_string()))?;
            let mut rec = ws.rec.lock().await;
            if rec.state != WorkspaceState::Starting || token.is_cancelled() {
                return Err(NodeError::Invalid("cancelled".into()));
            }
            self.restore_vm(&ws, &mut rec, &dir, &meta, true).await?;
            rec.warm_snapshot = None;
            rec.boot_ms = Some(t0.elapsed().as_millis() as u64);
            ws.transition(&mut rec, Event::Booted).await?;
            tracing::info!(workspace = %ws.id, restore_ms = rec.boot_ms, "running (restored from the warm template)");
            Ok::<_, NodeError>(())
        }
        .await;
        match restored {
            Ok(()) => {
                self.on_running(&ws).await;
                self.push_setup(&ws).await;
            }
            Err(e) => {
                tracing::warn!(workspace = %ws.id, "warm start failed ({e}); booting cold");
                if let Ok(mut rec) = ws.try_lock_rec() {
                    rec.warm_snapshot = None;
                    if rec.disk_format == DiskFormat::Qcow2 {
                        // The overlay has the template's size; the guest
                        // grows its filesystem to the disk at init.
                        if let Err(e) = disk::grow_qcow2(&ws.disk_of(&rec), u64::from(rec.spec.disk_mb)).await {
                            tracing::warn!(workspace = %ws.id, "growing the disk for a cold boot: {e}");
                        }
                    }
                }
                self.boot(ws, kernel, token, true).await;
            }
        }
    }

    /// Boot work: launch (unless re-adopting), wait for the agent, init.
    async fn boot(&self, ws: Arc<Ws>, kernel: PathBuf, token: CancellationToken, launch: bool) {
        let t0 = Instant::now();
        let result = tokio::select! {
            r = self.boot_inner(&ws, &kernel, &token, launch) => r,
            // The node agent is going away: leave the record as it is; the
            // next node agent adopts or re-boots the VM.
            _ = self.inner.shutdown.cancelled() => return,
        };
        let mut rec = ws.rec.lock().await;
        if rec.state != WorkspaceState::Starting || token.is_cancelled() {
            // Cancelled or deleted meanwhile; whoever changed the state cleans up.
            return;
        }
        match result {
            Ok(()) => {
                rec.boot_ms = Some(t0.elapsed().as_millis() as u64);
                let _ = ws.transition(&mut rec, Event::Booted).await;
                tracing::info!(workspace = %ws.id, boot_ms = rec.boot_ms, "running");
                drop(rec);
                self.on_running(&ws).await;
                self.push_setup(&ws).await;
            }
            Err((code, message)) => {
                let tail = ws.console_tail(30);
                if let Some(vm) = rec.vm.take() {
                    let cfg = ws.vm_config(&rec, &kernel);
                    let _ = self.inner.vmm.kill(&cfg, &vm).await;
                }
                let _ = ws.slot().delete();
                rec.failure = Some(Failure { code: code.into(), message: message.clone(), console_tail: Some(tail), at_unix_ms: now_ms() });
                let _ = ws.transition(&mut rec, Event::BootFailed).await;
                tracing::warn!(workspace = %ws.id, code, %message, "boot failed");
            }
        }
    }

    async fn boot_inner(
        &self,
        ws: &Arc<Ws>,
        kernel: &Path,
        token: &CancellationToken,
        launch: bool,
    ) -> Result<(), (&'static str, String)> {
        let deadline = Instant::now() + self.inner.cfg.boot_timeout;
        let vm = if launch {
            let slot = ws.slot();
            slot.create().map_err(|e| ("slot_failed", e.to_string()))?;
            let cfg = {
                let rec = ws.rec.lock().await;
                ws.vm_config(&rec, kernel)
            };
            let vm = self.inner.vmm.launch(&cfg).await.map_err(|e| ("launch_failed", e.to_string()))?;
            let mut rec = ws.rec.lock().await;
            if rec.state != WorkspaceState::Starting || token.is_cancelled() {
                let _ = self.inner.vmm.kill(&cfg, &vm).await;
                let _ = slot.delete();
                return Err(("cancelled", "the boot was cancelled".into()));
            }
            rec.vm = Some(vm.clone());
            ws.persist(&rec).await.map_err(|e| ("internal", e.to_string()))?;
            vm
        } else {
            ws.rec.lock().await.vm.clone().ok_or(("vm_exited", "no VM process".to_string()))?
        };
        let guest = ws.guest();
        loop {
            if token.is_cancelled() {
                return Err(("cancelled", "the boot was cancelled".into()));
            }
            if !is_alive(&vm) {
                return Err(("vm_exited", "the VM process exited during boot".into()));
            }
            if Instant::now() > deadline {
                return Err((
                    "boot_timeout",
                    format!("the guest agent did not answer within {}s", self.inner.cfg.boot_timeout.as_secs()),
                ));
            }
            match guest.health(Duration::from_secs(2)).await {
                Ok(_) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let init = {
            let rec = ws.rec.lock().await;
            init_request(&rec, &ws.id, &self.inner.node_id, false)
        };
        guest
            .call::<_, serde_json::Value>(hyper::Method::POST, "/v1/init", Some(&init), Duration::from_secs(60))
            .await
            .map_err(|e| ("init_failed", e.to_string()))?;
        Ok(())
    }

    /// Aborts a boot: the VM is killed and the workspace is `stopped`.
    pub async fn cancel(&self, id: &str) -> Result<WorkspaceStatus, NodeError> {
        let ws = self.get(id)?;
        let state = ws.rec.lock().await.state;
        state.apply(Event::Cancel)?;
        // The boot task takes the record's lock: wait for it unlocked.
        stop_boot(&ws).await;
        let mut rec = ws.rec.lock().await;
        ws.transition(&mut rec, Event::Cancel).await?;
        self.halt(&ws, &mut rec).await;
        Ok(ws.status(&rec))
    }

    /// Sends the setup plan to a guest that has just started (scripts and
    /// services run in the guest, in the background).
    pub(crate) async fn push_setup(&self, ws: &Ws) {
        let mut plan = ws.rec.lock().await.spec.setup.clone();
        if plan.scripts.is_empty() && plan.services.is_empty() {
            return;
        }
        plan.is_start = true;
        let guest = ws.guest();
        for attempt in 0..3 {
            match guest
                .call::<_, serde_json::Value>(hyper::Method::POST, "/v1/setup", Some(&plan), Duration::from_secs(30))
                .await
            {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(workspace = %ws.id, attempt, "pushing the setup plan failed: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Replaces the setup plan of a workspace (applies at the next start).
    pub async fn set_setup(&self, id: &str, plan: rigbox_guest_proto::SetupPlan) -> Result<(), NodeError> {
        let ws = self.get(id)?;
        let mut rec = ws.rec.lock().await;
        rec.spec.setup = plan;
        ws.persist(&rec).await
    }

    /// Feature hooks once a workspace runs.
    pub(crate) async fn on_running(&self, ws: &Ws) {
        crate::aiproxy::on_running(self, ws).await;
        crate::pkgproxy::on_running(self, ws).await;
        crate::metrics::on_running(self, ws).await;
        crate::snapshot::on_running(self, ws).await;
    }

    /// Feature hooks before a workspace's VM and slot go away.
    pub(crate) async fn on_halt(&self, ws: &Ws) {
        crate::aiproxy::on_halt(self, ws).await;
        crate::pkgproxy::on_halt(self, ws).await;
        crate::metrics::on_halt(self, ws).await;
        crate::snapshot::on_halt(self, ws).await;
    }

    /// Kills the VM (if any), removes the slot, and records `stopped`.
    pub(crate) async fn halt(&self, ws: &Ws, rec: &mut Record) {
        self.on_halt(ws).await;
        if let Some(vm) = rec.vm.take() {
            if let Ok(kernel) = self.inner.images.resolve_kernel() {
                let _ = self.inner.vmm.kill(&ws.vm_config(rec, &kernel), &vm).await;
            } else {
                let _ = rigbox_vmm::process::kill_and_wait(&vm, Duration::from_secs(10)).await;
            }
        }
        let _ = ws.slot().delete();
        if rec.state == WorkspaceState::Stopping {
            let _ = ws.transition(rec, Event::Halted).await;
        } else {
            let _ = ws.persist(rec).await;
        }
    }

    /// Stops a running workspace: a clean guest shutdown, then a kill after
    /// the stop timeout (at once with `force`). Returns in `stopping`.
    pub async fn stop(&self, id: &str, force: bool) -> Result<WorkspaceStatus, NodeError> {
        let ws = self.get(id)?;
        let mut rec = ws.rec.lock().await;
        let was = rec.state;
        ws.transition(&mut rec, Event::Stop).await?;
        if was == WorkspaceState::Paused {
            // Stopping a paused workspace discards its memory; the disk stays.
            let _ = tokio::fs::remove_dir_all(ws.paused_dir()).await;
            return Ok(ws.status(&rec));
        }
        let status = ws.status(&rec);
        if force {
            self.halt(&ws, &mut rec).await;
            return Ok(ws.status(&rec));
        }
        drop(rec);
        let node = self.clone();
        tokio::spawn(async move { node.finish_stop(ws).await });
        Ok(status)
    }

    async fn finish_stop(&self, ws: Arc<Ws>) {
        tokio::select! {
            _ = self.finish_stop_inner(ws) => {}
            _ = self.inner.shutdown.cancelled() => {}
        }
    }

    async fn finish_stop_inner(&self, ws: Arc<Ws>) {
        let vm = ws.rec.lock().await.vm.clone();
        if let Some(vm) = &vm {
            let guest = ws.guest();
            let _ = guest
                .call::<(), serde_json::Value>(hyper::Method::POST, "/v1/shutdown", None, Duration::from_secs(5))
                .await;
            let deadline = Instant::now() + self.inner.cfg.stop_timeout;
            while is_alive(vm) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if is_alive(vm) {
                tracing::warn!(workspace = %ws.id, "clean shutdown timed out; killing the VM");
            }
        }
        let mut rec = ws.rec.lock().await;
        if rec.state == WorkspaceState::Stopping {
            self.halt(&ws, &mut rec).await;
            tracing::info!(workspace = %ws.id, "stopped");
        }
    }

    /// Deletes a workspace and everything it has on this node.
    pub async fn delete(&self, id: &str) -> Result<(), NodeError> {
        let ws = self.get(id)?;
        let state = ws.rec.lock().await.state;
        state.apply(Event::Delete)?;
        stop_boot(&ws).await;
        let mut rec = ws.rec.lock().await;
        ws.transition(&mut rec, Event::Delete).await?;
        self.halt(&ws, &mut rec).await;
        tokio::fs::remove_dir_all(&ws.dir).await.map_err(io("removing the workspace files"))?;
        if let Ok(mut m) = self.inner.workspaces.lock() {
            m.remove(id);
        }
        tracing::info!(workspace = id, "deleted");
        Ok(())
    }

    /// Changes resources of a stopped (or never started) workspace.
    pub async fn resize(&self, id: &str, r: Resources) -> Result<WorkspaceStatus, NodeError> {
        let ws = self.get(id)?;
        let mut rec = ws.rec.lock().await;
        if !matches!(rec.state, WorkspaceState::Stopped | WorkspaceState::Provisioned | WorkspaceState::Failed) {
            return Err(NodeError::Invalid(format!("resources can only change while the workspace is stopped (it is {})", rec.state)));
        }
        if let Some(v) = r.vcpus {
            if v == 0 || v > MAX_VCPUS {
                return Err(NodeError::Invalid(format!("vcpus must be between 1 and {MAX_VCPUS}")));
            }
        }
        if let Some(m) = r.ram_mb {
            if m < MIN_RAM_MB {
                return Err(NodeError::Invalid(format!("ram_mb must be at least {MIN_RAM_MB}")));
            }
        }
        if let Some(d) = r.disk_mb {
            if d < rec.spec.disk_mb {
                return Err(NodeError::Invalid(format!("the disk cannot shrink (it is {} MiB)", rec.spec.disk_mb)));
            }
            if rec.disk_format == DiskFormat::Qcow2 {
                // A fork's copy-on-write disk becomes a private raw disk first.
                crate::snapshot::flatten(&ws, &mut rec).await?;
            }
            disk::grow(&ws.disk_of(&rec), u64::from(d)).await?;
            rec.spec.disk_mb = d;
        }
        if let Some(v) = r.vcpus {
            rec.spec.vcpus = v;
        }
        if let Some(m) = r.ram_mb {
            rec.spec.ram_mb = m;
        }
        ws.persist(&rec).await?;
        Ok(ws.status(&rec))
    }

    /// Sets the environment (persisted; pushed to the guest if it runs).
    pub async fn set_env(&self, id: &str, env: BTreeMap<String, String>) -> Result<(), NodeError> {
        let ws = self.get(id)?;
        let mut rec = ws.rec.lock().await;
        rec.spec.env = env.clone();
        ws.persist(&rec).await?;
        if rec.state == WorkspaceState::Running {
            drop(rec);
            ws.guest()
                .call::<_, serde_json::Value>(hyper::Method::POST, "/v1/env", Some(&rigbox_guest_proto::EnvRequest { env: crate::aiproxy::with_ai_env(self, id, env) }), Duration::from_secs(30))
                .await?;
        }
        Ok(())
    }

    /// The guest agent of a running workspace.
    pub async fn running_guest(&self, id: &str) -> Result<Guest, NodeError> {
        let ws = self.get(id)?;
        let rec = ws.rec.lock().await;
        if rec.state != WorkspaceState::Running {
            return Err(NodeError::NotRunning(id.into()));
        }
        Ok(ws.guest())
    }

    /// Reads the console log from `offset` (at most 1 MiB).
    pub async fn console(&self, id: &str, offset: u64) -> Result<(String, u64), NodeError> {
        let ws = self.get(id)?;
        let data = tokio::fs::read(ws.console()).await.unwrap_or_default();
        let start = (offset as usize).min(data.len());
        let end = (start + (1 << 20)).min(data.len());
        Ok((String::from_utf8_lossy(&data[start..end]).into_owned(), end as u64))
    }

    /// Host-side statistics of a workspace plus its guest's view.
    pub async fn stats(&self, id: &str) -> Result<rigbox_node_api::WorkspaceStats, NodeError> {
        let ws = self.get(id)?;
        let (vm, running) = {
            let rec = ws.rec.lock().await;
            (rec.vm.clone(), rec.state == WorkspaceState::Running)
        };
        let mut s = rigbox_node_api::WorkspaceStats { at_unix_ms: now_ms(), ..Default::default() };
        if let Some(vm) = vm.filter(is_alive) {
            let (cpu_ms, rss) = crate::procstat::cpu_and_rss(vm.pid);
            s.vmm_cpu_ms = cpu_ms;
            s.vmm_rss_bytes = rss;
        }
        if let Some((rx, tx)) = ws.slot().tap_counters() {
            // The tap's rx is what the guest sent.
            s.net_tx_bytes = rx;
            s.net_rx_bytes = tx;
        }
        use std::os::unix::fs::MetadataExt;
        s.disk_allocated_bytes = {
            let rec = ws.rec.lock().await;
            std::fs::metadata(ws.disk_of(&rec)).map(|m| m.blocks() * 512).unwrap_or(0)
        };
        if running {
            s.guest = ws
                .guest()
                .call::<(), rigbox_guest_proto::GuestStats>(hyper::Method::GET, "/v1/stats", None, Duration::from_secs(3))
                .await
                .ok();
        }
        Ok(s)
    }

    /// Periodically notices VM processes that died.
    async fn supervise(&self) {
        let every = self.inner.cfg.supervise_every;
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            for ws in self.all() {
                let mut rec = ws.rec.lock().await;
                if rec.state != WorkspaceState::Running {
                    continue;
                }
                let dead = rec.vm.as_ref().is_none_or(|vm| !is_alive(vm));
                if dead {
                    let tail = ws.console_tail(30);
                    self.on_halt(&ws).await;
                    rec.vm = None;
                    let _ = ws.slot().delete();
                    rec.failure = Some(Failure {
                        code: "vm_exited".into(),
                        message: "the VM process exited unexpectedly".into(),
                        console_tail: Some(tail),
                        at_unix_ms: now_ms(),
                    });
                    let _ = ws.transition(&mut rec, Event::Crashed).await;
                    tracing::warn!(workspace = %ws.id, "VM process died");
                }
            }
        }
    }

    /// Loads records, re-adopts live VMs, finishes interrupted work, and
    /// removes leftovers (partial creates, orphan VMs, orphan slots).
    async fn reclaim(&self) -> Result<(), NodeError> {
        let root = self.ws_root();
        let mut rd = tokio::fs::read_dir(&root).await.map_err(io("listing workspaces"))?;
        let kernel = self.inner.images.resolve_kernel().ok();
        let mut loaded = Vec::new();
        while let Some(e) = rd.next_entry().await.map_err(io("listing workspaces"))? {
            let dir = e.path();
            let id = e.file_name().to_string_lossy().into_owned();
            if !dir.is_dir() {
                continue;
            }
            if dir.join(".creating").exists() || !dir.join("record.json").exists() {
                tracing::info!(workspace = %id, "removing a partial create");
                let _ = tokio::fs::remove_dir_all(&dir).await;
                continue;
            }
            let rec: Record = match tokio::fs::read(dir.join("record.json")).await.ok().and_then(|b| serde_json::from_slice(&b).ok()) {
                Some(r) => r,
                None => {
                    tracing::error!(workspace = %id, "unreadable record.json; leaving the directory alone");
                    continue;
                }
            };
            loaded.push(Arc::new(Ws { id: id.clone(), scoped: format!("{}-{id}", self.inner.node_id), dir, rec: Mutex::new(rec), boot: StdMutex::new(None) }));
        }
        // First remove what belongs to no live record: VM processes of this
        // node, then their slots. Only then adopt, which may boot again.
        let prefix = format!("{}-", self.inner.node_id);
        let mut live: HashMap<String, u32> = HashMap::new();
        for ws in &loaded {
            if let Some(vm) = ws.rec.lock().await.vm.as_ref().filter(|v| is_alive(v)) {
                live.insert(ws.scoped.clone(), vm.pid);
            }
        }
        for (pid, scoped) in rigbox_vmm::process::find_vm_processes() {
            if scoped.starts_with(&prefix) && live.get(&scoped) != Some(&pid) {
                tracing::warn!(pid, vm = %scoped, "killing an orphan VM process");
                if let Some(p) = VmProcess::from_pid(pid, BackendKind::Qemu) {
                    let _ = rigbox_vmm::process::kill_and_wait(&p, Duration::from_secs(10)).await;
                }
            }
        }
        for name in rigbox_netns::list_slots().unwrap_or_default() {
            let Some(scoped) = rigbox_netns::workspace_of(&name) else { continue };
            if scoped.starts_with(&prefix) && !live.contains_key(scoped) {
                tracing::info!(slot = %name, "removing an orphan network slot");
                if let Ok(s) = Slot::for_workspace(scoped) {
                    let _ = s.delete();
                }
            }
        }
        self.reclaim_snapshots().await;
        self.gc_bases(&loaded).await;
        for ws in loaded {
            self.adopt(&ws, kernel.as_deref()).await;
            let state = ws.rec.lock().await.state;
            if state == WorkspaceState::Running {
                self.on_running(&ws).await;
            }
            let gone = state == WorkspaceState::Deleting;
            if gone {
                let _ = tokio::fs::remove_dir_all(&ws.dir).await;
                continue;
            }
            if let Ok(mut m) = self.inner.workspaces.lock() {
                m.insert(ws.id.clone(), ws);
            }
        }
        Ok(())
    }

    async fn adopt(&self, ws: &Arc<Ws>, kernel: Option<&Path>) {
        let mut rec = ws.rec.lock().await;
        let alive = rec.vm.as_ref().is_some_and(is_alive);
        match (rec.state, alive) {
            (WorkspaceState::Running, true) => {
                tracing::info!(workspace = %ws.id, "re-adopted a running VM");
            }
            (WorkspaceState::Starting, true) => {
                tracing::info!(workspace = %ws.id, "re-adopted a booting VM");
                let node = self.clone();
                let w = ws.clone();
                let k = kernel.map(Path::to_path_buf).unwrap_or_default();
                spawn_boot(ws, move |token| async move { node.boot(w, k, token, false).await });
            }
            (WorkspaceState::Stopping, true) => {
                let node = self.clone();
                let w = ws.clone();
                tokio::spawn(async move { node.finish_stop(w).await });
            }
            (WorkspaceState::Stopping, false) => {
                rec.vm = None;
                let _ = ws.transition(&mut rec, Event::Halted).await;
            }
            (WorkspaceState::Starting, false) if kernel.is_some() => {
                // The node agent stopped in the middle of a boot: boot again.
                tracing::info!(workspace = %ws.id, "resuming an interrupted boot");
                rec.vm = None;
                let _ = ws.persist(&rec).await;
                let node = self.clone();
                let w = ws.clone();
                let k = kernel.map(Path::to_path_buf).unwrap_or_default();
                spawn_boot(ws, move |token| async move { node.boot(w, k, token, true).await });
            }
            (WorkspaceState::Running | WorkspaceState::Starting, false) => {
                rec.vm = None;
                rec.failure = Some(Failure {
                    code: "vm_exited".into(),
                    message: "the VM process ended while the node agent was down".into(),
                    console_tail: Some(ws.console_tail(30)),
                    at_unix_ms: now_ms(),
                });
                let _ = ws.transition(&mut rec, Event::Crashed).await;
            }
            (WorkspaceState::Deleting, _) => {
                if let Some(vm) = rec.vm.take() {
                    let _ = rigbox_vmm::process::kill_and_wait(&vm, Duration::from_secs(10)).await;
                }
                let _ = ws.slot().delete();
            }
            (_, true) => {
                // A VM that should not exist.
                if let Some(vm) = rec.vm.take() {
                    let _ = rigbox_vmm::process::kill_and_wait(&vm, Duration::from_secs(10)).await;
                }
                let _ = ws.persist(&rec).await;
            }
            (_, false) => {
                if rec.vm.take().is_some() {
                    let _ = ws.persist(&rec).await;
                }
            }
        }
    }
}

/// The identity and configuration pushed to a guest after boot or restore.
pub(crate) fn init_request(rec: &Record, id: &str, node_id: &str, regenerate: bool) -> InitRequest {
    let mut seed = [0u8; 64];
    rand::Rng::fill(&mut rand::thread_rng(), &mut seed[..]);
    let mut meta = rec.spec.metadata.clone();
    if !meta.is_object() {
        meta = serde_json::json!({});
    }
    meta["workspace_id"] = serde_json::json!(id);
    meta["node_id"] = serde_json::json!(node_id);
    meta["template"] = serde_json::json!(rec.spec.template);
    meta["host_address"] = serde_json::json!(std::net::Ipv4Addr::from(HOST_ADDR).to_string());
    InitRequest {
        ssh_host_keys: if regenerate { host_keys(&rec.spec.hostname) } else { None },
        hostname: Some(rec.spec.hostname.clone()),
        clock_unix_ms: Some(now_ms()),
        entropy_hex: Some(hex::encode(seed)),
        regenerate_identity: regenerate,
        env: Some(rec.spec.env.clone()),
        authorized_keys: Some(rec.spec.authorized_keys.clone()),
        metadata: Some(meta),
        root_disk_bytes: Some(u64::from(rec.spec.disk_mb) << 20),
    }
}

/// Fresh SSH host keys made with the host's `ssh-keygen` (milliseconds here,
/// seconds inside an emulated guest). None when ssh-keygen is missing; the
/// guest then makes its own.
fn host_keys(hostname: &str) -> Option<Vec<rigbox_guest_proto::SshHostKey>> {
    let dir = tempfile_dir()?;
    let mut keys = Vec::new();
    // Ed25519 and ECDSA only: RSA keys take long to make and every current
    // client prefers the others.
    for (kind, extra) in [("ed25519", vec![]), ("ecdsa", vec!["-b", "256"])] {
        let path = dir.join(kind);
        let ok = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", kind, "-N", "", "-C", &format!("root@{hostname}"), "-f"])
            .arg(&path)
            .args(extra)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::fs::remove_dir_all(&dir);
            return None;
        }
        let private_key = std::fs::read_to_string(&path).ok()?;
        let public_key = std::fs::read_to_string(path.with_extension("pub")).ok()?;
        keys.push(rigbox_guest_proto::SshHostKey { kind: kind.into(), private_key, public_key });
    }
    let _ = std::fs::remove_dir_all(&dir);
    Some(keys)
}

fn tempfile_dir() -> Option<PathBuf> {
    let mut b = [0u8; 8];
    rand::Rng::fill(&mut rand::thread_rng(), &mut b[..]);
    let d = std::env::temp_dir().join(format!("rigbox-hostkeys-{}", hex::encode(b)));
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(&d).ok()?;
    Some(d)
}

async fn load_node_id(data_dir: &Path) -> Result<String, NodeError> {
    let path = data_dir.join("node.json");
    if let Ok(b) = tokio::fs::read(&path).await {
        if let Some(id) = serde_json::from_slice::<serde_json::Value>(&b).ok().and_then(|v| v["node_id"].as_str().map(str::to_string)) {
            return Ok(id);
        }
    }
    let mut bytes = [0u8; 4];
    rand::Rng::fill(&mut rand::thread_rng(), &mut bytes[..]);
    let id = format!("node-{}", hex::encode(bytes));
    tokio::fs::create_dir_all(data_dir).await.map_err(io("creating the node data dir"))?;
    tokio::fs::write(&path, serde_json::json!({ "node_id": id }).to_string()).await.map_err(io("writing node.json"))?;
    Ok(id)
}

impl From<GuestError> for (&'static str, String) {
    fn from(e: GuestError) -> Self {
        ("guest_error", e.to_string())
    }
}
