//! Firecracker backend against a real Firecracker.
//!
//! Skipped (with a `SKIP:` line) when Firecracker, a kernel ELF, `mkfs.ext4`
//! or root are missing. The guest is never expected to boot: on PVM hosts it
//! does not, so only VMM-level behaviour is checked (API, start, pause,
//! snapshot create, snapshot load into a fresh namespace, kill).
//!
//! Every namespace is `rbx-fctest-<pid>-<tag>` and is deleted, and every
//! Firecracker process killed, by a guard even when an assertion fails. No
//! traffic is sent anywhere.

use rigbox_netns::{Slot, GUEST_MAC, TAP_NAME};
use rigbox_vmm::firecracker::{FirecrackerVmm, DISK_LINK};
use rigbox_vmm::probe::HostProbe;
use rigbox_vmm::process::{find_vm_processes, is_alive};
use rigbox_vmm::{BackendKind, VmConfig, VmProcess, Vmm, VmmError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MEM_MB: u32 = 128;

/// What the tests need from the host, or why they are skipped.
struct Host {
    firecracker: PathBuf,
    jailer: Option<PathBuf>,
    kernel: PathBuf,
}

fn host() -> Result<Host, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not running as root (network namespaces and taps need it)".into());
    }
    let env_bin = std::env::var_os("RIGBOX_FIRECRACKER_BIN").map(PathBuf::from);
    let probe = HostProbe::run(env_bin.as_deref());
    let Some(fc) = probe.firecracker else {
        return Err("firecracker binary not found (PATH, /usr/local/bin, or RIGBOX_FIRECRACKER_BIN)".into());
    };
    if !Path::new("/dev/kvm").exists() {
        return Err("/dev/kvm is absent".into());
    }
    let kernel = find_kernel().ok_or(
        "no kernel ELF found (RIGBOX_TEST_KERNEL, /var/cache/rigbox/kernel/*/vmlinux, \
         /var/tmp/rbx-scratch/linux-source-6.1/B/vmlinux)",
    )?;
    if std::process::Command::new("mkfs.ext4").arg("-V").output().is_err() {
        return Err("mkfs.ext4 not found (apt-get install e2fsprogs)".into());
    }
    Ok(Host { firecracker: fc.path, jailer: probe.jailer.map(|j| j.path), kernel })
}

fn is_elf(p: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(p).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == *b"\x7fELF"
}

fn find_kernel() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("RIGBOX_TEST_KERNEL").map(PathBuf::from).into_iter().collect();
    if let Ok(rd) = std::fs::read_dir("/var/cache/rigbox/kernel") {
        let mut v: Vec<PathBuf> = rd.flatten().map(|e| e.path().join("vmlinux")).collect();
        v.sort();
        candidates.extend(v);
    }
    candidates.push("/var/tmp/rbx-scratch/linux-source-6.1/B/vmlinux".into());
    candidates.into_iter().find(|p| is_elf(p))
}

/// Shows the backend's debug timings (API socket ready, each API call).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("rigbox_vmm=debug"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

macro_rules! host_or_skip {
    ($what:expr) => {
        match host().map(|h| {
            init_tracing();
            h
        }) {
            Ok(h) => h,
            Err(why) => {
                println!("SKIP: {}: {why}", $what);
                return;
            }
        }
    };
}

/// Kills recorded VM processes and deletes created namespaces on drop.
#[derive(Default)]
struct Guard {
    pids: Vec<VmProcess>,
    slots: Vec<Slot>,
}

impl Guard {
    fn slot(&mut self, tag: &str) -> (String, Slot) {
        let id = format!("fctest-{}-{tag}", std::process::id());
        let slot = Slot::for_workspace(&id).expect("slot name");
        self.slots.push(slot.clone());
        slot.create().expect("creating the test namespace");
        (id, slot)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for p in &self.pids {
            if is_alive(p) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid as i32), nix::sys::signal::Signal::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(10);
                while is_alive(p) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        for s in &self.slots {
            if let Err(e) = s.delete() {
                eprintln!("cleanup: deleting {}: {e}", s.name());
            }
        }
    }
}

fn make_disk(path: &Path, mib: u64) {
    let f = std::fs::File::create(path).expect("creating the disk");
    f.set_len(mib << 20).expect("sizing the disk");
    drop(f);
    let out = std::process::Command::new("mkfs.ext4").args(["-q", "-F"]).arg(path).output().expect("running mkfs.ext4");
    assert!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
}

fn vm_config(id: &str, slot: &Slot, kernel: &Path, disk: &Path, dir: &Path) -> VmConfig {
    VmConfig {
        id: id.into(),
        kernel: kernel.into(),
        disk: disk.into(),
        disk_format: rigbox_vmm::DiskFormat::Raw,
        vcpus: 1,
        mem_mb: MEM_MB,
        netns: slot.name().into(),
        tap: TAP_NAME.into(),
        mac: GUEST_MAC.into(),
        run_dir: dir.join("run"),
        console_log: dir.join("console.log"),
        extra_args: vec![],
    }
}

fn ms(t: Instant) -> String {
    format!("{:.1} ms", t.elapsed().as_secs_f64() * 1e3)
}

/// (device, inode) of every file the process has open. Compared by inode,
/// not by path: under the jailer the paths are inside its chroot and mount
/// namespace.
fn open_inodes(pid: u32) -> Vec<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| rd.flatten().filter_map(|e| std::fs::metadata(e.path()).ok()).map(|m| (m.dev(), m.ino())).collect())
        .unwrap_or_default()
}

/// Asserts that `vm` runs in `slot`'s network namespace and leads its own
/// process group.
fn assert_placed(vm: &VmProcess, slot: &Slot) {
    let ns = inode(Path::new(&format!("/proc/{}/ns/net", vm.pid)));
    assert_eq!(ns, inode(&slot.path()), "pid {} is not in {}", vm.pid, slot.name());
    let pid = nix::unistd::Pid::from_raw(vm.pid as i32);
    assert_eq!(nix::unistd::getpgid(Some(pid)).expect("getpgid"), pid, "not its own process group");
}

/// The VM's vsock device is configured: its host socket exists and
/// Firecracker accepts connections on it.
fn assert_vsock(vmm: &FirecrackerVmm, cfg: &VmConfig) {
    use std::os::unix::fs::FileTypeExt;
    let sock = vmm.vsock_socket(cfg).expect("vsock path");
    let meta = std::fs::metadata(&sock).unwrap_or_else(|e| panic!("vsock socket {}: {e}", sock.display()));
    assert!(meta.file_type().is_socket(), "{} is not a socket", sock.display());
    std::os::unix::net::UnixStream::connect(&sock).unwrap_or_else(|e| panic!("connecting to {}: {e}", sock.display()));
}

fn inode(p: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).expect("stat");
    (m.dev(), m.ino())
}

/// Launch, pause, resume, snapshot, kill, restore into a fresh namespace
/// with a copied disk, kill.
async fn lifecycle(vmm: &FirecrackerVmm, host: &Host, tag: &str) {
    let mut guard = Guard::default();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (id1, slot1) = guard.slot(&format!("{tag}a"));
    let disk1 = tmp.path().join("disk1.ext4");
    make_disk(&disk1, 64);
    let dir1 = tmp.path().join("vm1");
    let cfg1 = vm_config(&id1, &slot1, &host.kernel, &disk1, &dir1);

    let t = Instant::now();
    let vm = match vmm.launch(&cfg1).await {
        Ok(vm) => vm,
        Err(e) => panic!("launch: {e}\nconsole: {}", std::fs::read_to_string(&cfg1.console_log).unwrap_or_default()),
    };
    guard.pids.push(vm.clone());
    println!("[{tag}] launch (spawn + configure + InstanceStart): {}", ms(t));
    assert_eq!(vm.backend, BackendKind::Firecracker);
    assert!(is_alive(&vm));
    assert_placed(&vm, &slot1);
    assert_eq!(vmm.instance_state(&cfg1, &vm).await.unwrap(), "Running");
    assert_vsock(vmm, &cfg1);
    // A running VM's disk grows (the guest is told through the drive update).
    vmm.grow_disk(&cfg1, &vm, 96 << 20).await.unwrap();
    assert_eq!(std::fs::metadata(&disk1).unwrap().len(), 96 << 20);
    assert!(matches!(vmm.grow_disk(&cfg1, &vm, 32 << 20).await, Err(VmmError::Refused { .. })), "a disk never shrinks");
    assert!(
        find_vm_processes().contains(&(vm.pid, id1.clone())),
        "find_vm_processes() does not list pid {} as {id1}",
        vm.pid
    );

    let t = Instant::now();
    vmm.pause(&cfg1, &vm).await.unwrap();
    println!("[{tag}] pause: {}", ms(t));
    assert_eq!(vmm.instance_state(&cfg1, &vm).await.unwrap(), "Paused");
    let t = Instant::now();
    vmm.resume(&cfg1, &vm).await.unwrap();
    println!("[{tag}] resume: {}", ms(t));
    assert_eq!(vmm.instance_state(&cfg1, &vm).await.unwrap(), "Running");

    // Snapshot of a running VM: the backend pauses it first.
    let snap_dir = tmp.path().join("snap");
    let t = Instant::now();
    let files = vmm.snapshot(&cfg1, &vm, &snap_dir).await.unwrap();
    println!("[{tag}] snapshot create (pause + Full, {MEM_MB} MiB): {}", ms(t));
    assert_eq!(files.backend, BackendKind::Firecracker);
    assert_eq!(vmm.instance_state(&cfg1, &vm).await.unwrap(), "Paused");
    let state_len = std::fs::metadata(&files.state).expect("vmstate file").len();
    assert!(state_len > 0);
    let mem = files.memory.clone().expect("memory file");
    assert_eq!(std::fs::metadata(&mem).expect("mem file").len(), u64::from(MEM_MB) << 20);
    println!("[{tag}] vmstate {state_len} bytes, mem {} bytes", u64::from(MEM_MB) << 20);

    // The disk is copied while the VM is paused, then the VM goes away.
    let disk2 = tmp.path().join("disk2.ext4");
    std::fs::copy(&disk1, &disk2).expect("copying the disk");
    vmm.kill(&cfg1, &vm).await.unwrap();
    assert!(!is_alive(&vm));
    assert!(matches!(vmm.pause(&cfg1, &vm).await, Err(VmmError::NotRunning(_))));

    // Restore into a fresh namespace, with another run dir and disk.
    let (id2, slot2) = guard.slot(&format!("{tag}b"));
    let cfg2 = vm_config(&id2, &slot2, &host.kernel, &disk2, &tmp.path().join("vm2"));
    let t = Instant::now();
    let vm2 = match vmm.restore(&cfg2, &files).await {
        Ok(vm) => vm,
        Err(e) => panic!("restore: {e}\nconsole: {}", std::fs::read_to_string(&cfg2.console_log).unwrap_or_default()),
    };
    guard.pids.push(vm2.clone());
    println!("[{tag}] restore (spawn + snapshot load + resume): {}", ms(t));
    assert!(is_alive(&vm2));
    assert_placed(&vm2, &slot2);
    assert_eq!(vmm.instance_state(&cfg2, &vm2).await.unwrap(), "Running");
    // The restored VM has the new disk open (through the fc-rootfs link),
    // not the one the snapshot was taken with.
    let open = open_inodes(vm2.pid);
    assert!(open.contains(&inode(&disk2)), "restored VM does not have {} open", disk2.display());
    assert!(!open.contains(&inode(&disk1)), "restored VM still uses the old disk");
    assert!(find_vm_processes().contains(&(vm2.pid, id2.clone())));
    // The vsock device came back with the snapshot, bound in the new run dir.
    assert_vsock(vmm, &cfg2);
    let t = Instant::now();
    vmm.pause(&cfg2, &vm2).await.unwrap();
    println!("[{tag}] pause after restore: {}", ms(t));
    vmm.kill(&cfg2, &vm2).await.unwrap();
    assert!(!is_alive(&vm2));
    if vmm.jailed() {
        assert!(!cfg2.run_dir.join("jail").join("firecracker").join(format!("rbx-vm-{id2}")).exists(), "jail dir left behind");
    } else {
        assert!(cfg2.run_dir.join(DISK_LINK).exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_pause_snapshot_restore() {
    let host = host_or_skip!("firecracker lifecycle");
    let vmm = FirecrackerVmm::new(host.firecracker.clone(), host.jailer.clone()).with_jailer(false);
    lifecycle(&vmm, &host, "p").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_pause_snapshot_restore_jailed() {
    let host = host_or_skip!("firecracker lifecycle under the jailer");
    let Some(jailer) = host.jailer.clone() else {
        println!("SKIP: firecracker lifecycle under the jailer: jailer binary not found next to firecracker");
        return;
    };
    let vmm = FirecrackerVmm::new(host.firecracker.clone(), Some(jailer)).with_jailer(true);
    assert!(vmm.jailed());
    lifecycle(&vmm, &host, "j").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_kernel_is_refused_with_firecrackers_message() {
    let host = host_or_skip!("firecracker missing kernel");
    let mut guard = Guard::default();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (id, slot) = guard.slot("k");
    let disk = tmp.path().join("disk.ext4");
    make_disk(&disk, 16);
    let cfg = vm_config(&id, &slot, &tmp.path().join("no-such-vmlinux"), &disk, &tmp.path().join("vm"));
    let vmm = FirecrackerVmm::new(host.firecracker.clone(), None);
    match vmm.launch(&cfg).await {
        Err(VmmError::Refused { backend, request, message }) => {
            assert_eq!(backend, BackendKind::Firecracker);
            assert_eq!(request, "PUT /boot-source");
            assert!(message.contains("kernel file cannot be opened"), "{message}");
            println!("refused as expected: {request}: {message}");
        }
        Err(other) => panic!("expected Refused, got {other:?}"),
        Ok(vm) => {
            guard.pids.push(vm);
            panic!("launch with a missing kernel succeeded");
        }
    }
    // The half-configured process was killed.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !find_vm_processes().iter().any(|(pid, wid)| wid == &id && {
            let p = VmProcess::from_pid(*pid, BackendKind::Firecracker);
            p.map(|p| is_alive(&p)).unwrap_or(false)
        }),
        "firecracker for {id} is still running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_namespace_fails_to_spawn() {
    let host = host_or_skip!("firecracker missing namespace");
    let tmp = tempfile::tempdir().expect("tempdir");
    let disk = tmp.path().join("disk.ext4");
    std::fs::write(&disk, b"").unwrap();
    let slot = Slot::for_workspace(&format!("fctest-{}-absent", std::process::id())).unwrap();
    assert!(!slot.exists());
    let cfg = vm_config("fctest-absent", &slot, &host.kernel, &disk, &tmp.path().join("vm"));
    let vmm = FirecrackerVmm::new(host.firecracker.clone(), None);
    match vmm.launch(&cfg).await {
        Err(VmmError::Spawn { message, .. }) => println!("spawn failed as expected: {message}"),
        other => panic!("expected Spawn error, got {other:?}"),
    }
}
