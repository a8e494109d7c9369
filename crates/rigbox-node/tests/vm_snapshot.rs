//! Snapshots, pause and resume, and fork with real VMs (QEMU/TCG here).

use rigbox_node_api::guest::ExecRequest;
use rigbox_node_api::{codes, CreateSnapshot, CreateWorkspace, ForkRequest, ForkTarget, NodeClient, NodeClientError, WorkspaceStatus};
use rigbox_test_support::{is_root, wait_until, TestNode};
use rigbox_types::WorkspaceState;
use std::time::Duration;

const COUNTER: &str = r#"
import http.server
n = 0
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global n
        n += 1
        b = str(n).encode()
        self.send_response(200)
        self.send_header('content-length', str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
http.server.HTTPServer(('0.0.0.0', 8080), H).serve_forever()
"#;

fn spec(h: &str) -> CreateWorkspace {
    CreateWorkspace {
        template: "base".into(),
        vcpus: 1,
        ram_mb: 512,
        disk_mb: 3072,
        hostname: h.into(),
        env: Default::default(),
        authorized_keys: vec![],
        metadata: serde_json::json!({}),
        setup: Default::default(),
        cold_boot: false,
    }
}

async fn sh(c: &NodeClient, id: &str, cmd: &str) -> String {
    let r = c.exec(id, &ExecRequest { shell: Some(cmd.into()), timeout_ms: Some(120_000), ..Default::default() }).await.unwrap();
    assert_eq!(r.exit_code, Some(0), "{cmd}: {r:?}");
    r.stdout
}

async fn running(c: &NodeClient, id: &str) -> WorkspaceStatus {
    wait_until(Duration::from_secs(300), &format!("{id} running"), || async {
        let s = c.get(id).await.ok()?;
        assert_ne!(s.state, WorkspaceState::Failed, "{:?}", s.failure);
        (s.state == WorkspaceState::Running).then_some(s)
    })
    .await
    .unwrap()
}

async fn stopped(c: &NodeClient, id: &str) {
    wait_until(Duration::from_secs(120), &format!("{id} stopped"), || async {
        (c.get(id).await.ok()?.state == WorkspaceState::Stopped).then_some(())
    })
    .await
    .unwrap()
}

async fn boot_with_counter(c: &NodeClient, id: &str) {
    c.create(id, &spec(id)).await.unwrap();
    c.start(id).await.unwrap();
    running(c, id).await;
    c.write_file(id, "/home/developer/counter.py", COUNTER.to_string(), None).await.unwrap();
    sh(c, id, "cd /home/developer && (setsid nohup python3 counter.py >/dev/null 2>&1 &); for i in $(seq 1 200); do curl -sf http://127.0.0.1:8080/ >/dev/null && break; sleep 0.2; done").await;
}

async fn count(c: &NodeClient, id: &str) -> u64 {
    sh(c, id, "curl -sf --max-time 10 http://127.0.0.1:8080/").await.trim().parse().unwrap()
}

fn code<T: std::fmt::Debug>(r: Result<T, NodeClientError>) -> String {
    match r {
        Err(NodeClientError::Api { code, .. }) => code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

macro_rules! need_root {
    () => {
        if !is_root() {
            eprintln!("SKIP: VM tests need root");
            return;
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_pause_resume_keeps_processes_and_frees_memory() {
    need_root!();
    let t = TestNode::start(&["base"]).await.unwrap();
    let c = t.client.clone();
    let id = "ws-pause";
    boot_with_counter(&c, id).await;
    // An open file and a listener too.
    sh(&c, id, "(setsid nohup sleep 100000 > /tmp/held.txt 2>&1 &); exec 3>/tmp/fd-open; echo ok").await;
    assert_eq!(count(&c, id).await, 2); // one request was the readiness probe
    let pid_before = c.get(id).await.unwrap().pid.unwrap();

    let s = c.pause(id).await.unwrap();
    assert_eq!(s.state, WorkspaceState::Paused);
    assert!(s.pid.is_none() && t.vm_processes().is_empty(), "pausing frees the VM's memory: no VMM process");
    assert!(t.slots().is_empty());
    assert_eq!(code(c.exec(id, &ExecRequest { shell: Some("true".into()), ..Default::default() }).await), codes::WRONG_STATE);
    assert_eq!(code(c.start(id).await), codes::WRONG_STATE, "a paused workspace resumes, it does not start");

    let s = c.resume(id).await.unwrap();
    assert_eq!(s.state, WorkspaceState::Running);
    assert_ne!(s.pid, Some(pid_before));
    eprintln!("resume took {:?} ms", s.boot_ms);
    assert_eq!(count(&c, id).await, 3, "the counter continues, it did not restart");
    assert!(!sh(&c, id, "pgrep -x sleep").await.trim().is_empty(), "processes survive");
    let skew = sh(&c, id, "date +%s").await.trim().parse::<i64>().unwrap() - chrono_now();
    assert!(skew.abs() <= 2, "the clock was corrected after resume (skew {skew}s)");

    // Pause, then stop: the memory is discarded, the disk kept.
    c.pause(id).await.unwrap();
    assert_eq!(c.stop(id, false).await.unwrap().state, WorkspaceState::Stopped);
    assert!(!t.dir.path().join("node/workspaces").join(id).join("paused").exists());
    c.delete(id).await.unwrap();
    assert!(t.vm_processes().is_empty() && t.slots().is_empty());
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_disk_snapshot_restore_and_failures() {
    need_root!();
    let t = TestNode::start(&["base"]).await.unwrap();
    let c = t.client.clone();
    let id = "ws-disk";
    c.create(id, &spec(id)).await.unwrap();
    c.start(id).await.unwrap();
    running(&c, id).await;
    sh(&c, id, "echo before > /home/developer/before.txt; sync").await;
    // A live snapshot needs a running workspace; a disk snapshot a stopped one.
    assert_eq!(code(c.snapshot(id, &CreateSnapshot { snapshot_id: "snap-disk".into(), live: false }).await), codes::INVALID);
    c.stop(id, false).await.unwrap();
    stopped(&c, id).await;
    assert_eq!(code(c.snapshot(id, &CreateSnapshot { snapshot_id: "snap-live".into(), live: true }).await), codes::INVALID);
    let snap = c.snapshot(id, &CreateSnapshot { snapshot_id: "snap-disk".into(), live: false }).await.unwrap();
    assert!(snap.allocated_bytes > 10 << 20 && snap.files.iter().any(|f| f.name == "disk.raw"));
    c.start(id).await.unwrap();
    running(&c, id).await;
    sh(&c, id, "echo after > /home/developer/after.txt; rm /home/developer/before.txt; sync").await;
    c.stop(id, false).await.unwrap();
    stopped(&c, id).await;
    let s = c.restore(id, "snap-disk").await.unwrap();
    assert_eq!(s.state, WorkspaceState::Stopped);
    c.start(id).await.unwrap();
    running(&c, id).await;
    assert_eq!(sh(&c, id, "cat /home/developer/before.txt; ls /home/developer/after.txt 2>/dev/null || echo gone").await, "before\ngone\n");

    // A corrupt artifact is refused and the workspace is unchanged.
    c.stop(id, false).await.unwrap();
    stopped(&c, id).await;
    let art = t.dir.path().join("node/snapshots/snap-disk/disk.raw");
    let f = std::fs::OpenOptions::new().write(true).open(&art).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"garbage", 2 << 20).unwrap();
    drop(f);
    assert_eq!(code(c.restore(id, "snap-disk").await), codes::CORRUPT);
    let f = std::fs::OpenOptions::new().write(true).open(&art).unwrap();
    f.set_len(1 << 20).unwrap();
    drop(f);
    let err = c.restore(id, "snap-disk").await.unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    c.start(id).await.unwrap();
    running(&c, id).await;
    assert_eq!(sh(&c, id, "cat /home/developer/before.txt").await, "before\n", "the workspace is unchanged");

    // Disk full while writing a live snapshot: partial files removed, guest resumed.
    let snaps = t.dir.path().join("node/snapshots");
    let st = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"]).arg(&snaps).status().unwrap();
    assert!(st.success());
    let r = c.snapshot(id, &CreateSnapshot { snapshot_id: "snap-full".into(), live: true }).await;
    let listing: Vec<_> = std::fs::read_dir(&snaps).unwrap().flatten().map(|e| e.file_name()).collect();
    let _ = std::process::Command::new("umount").arg(&snaps).status();
    assert_eq!(code(r), codes::CAPACITY);
    assert!(listing.is_empty(), "partial files are removed: {listing:?}");
    assert_eq!(c.get(id).await.unwrap().state, WorkspaceState::Running);
    assert_eq!(sh(&c, id, "echo alive").await, "alive\n", "the guest runs again");
    c.delete(id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_fork_continues_then_diverges_with_fresh_identity() {
    need_root!();
    let t = TestNode::start(&["base"]).await.unwrap();
    let c = t.client.clone();
    let src = "ws-src";
    boot_with_counter(&c, src).await;
    assert_eq!(count(&c, src).await, 2);
    // Let the source finish booting (its host keys appear with multi-user).
    let src_key = sh(&c, src, "systemctl is-system-running --wait >/dev/null; cat /etc/ssh/ssh_host_ed25519_key.pub").await;
    let forks: Vec<ForkTarget> = (1..=2)
        .map(|i| ForkTarget { id: format!("ws-fork{i}"), hostname: format!("fork{i}"), metadata: serde_json::json!({}) })
        .collect();
    let r = c.fork(src, &ForkRequest { snapshot_id: "snap-fork".into(), forks }).await.unwrap();
    eprintln!("snapshot paused the source for {} ms; forks: {:?}", r.snapshot.paused_ms, r.workspaces.iter().map(|w| (w.state, w.boot_ms)).collect::<Vec<_>>());
    assert!(r.workspaces.iter().all(|w| w.state == WorkspaceState::Running), "{:?}", r.workspaces);
    // Each fork continues the source's process: next value is 3 everywhere.
    for id in ["ws-src", "ws-fork1", "ws-fork2"] {
        assert_eq!(count(&c, id).await, 3, "{id}");
    }
    // ...and then they diverge.
    count(&c, "ws-fork1").await;
    assert_eq!(count(&c, "ws-fork1").await, 5);
    assert_eq!(count(&c, "ws-fork2").await, 4);
    let mut seen = Vec::new();
    for (id, host) in [("ws-fork1", "fork1"), ("ws-fork2", "fork2")] {
        let out = sh(&c, id, "hostname; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; cat /etc/ssh/ssh_host_ed25519_key.pub; date +%s.%N").await;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], host);
        assert_ne!(lines[2], src_key.trim(), "fresh SSH host keys");
        let guest_time: f64 = lines[3].parse().unwrap();
        let host_time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!((host_time - guest_time).abs() < 1.5, "clock within a second of the host ({guest_time} vs {host_time})");
        seen.push((lines[1].to_string(), lines[2].to_string()));
    }
    assert_ne!(seen[0].0, seen[1].0, "different random numbers");
    assert_ne!(seen[0].1, seen[1].1, "different host keys");
    // The snapshot backs the forks' disks: it cannot be deleted from under them.
    assert_eq!(code(c.delete_snapshot("snap-fork").await), codes::IN_USE);
    assert!(t.dir.path().join("node/workspaces/ws-fork1/disk.qcow2").exists(), "forks get copy-on-write disks");
    // Writes in a fork do not reach the source.
    sh(&c, "ws-fork1", "echo mine > /home/developer/fork-only.txt; sync").await;
    assert_eq!(sh(&c, src, "ls /home/developer/fork-only.txt 2>/dev/null || echo absent").await, "absent\n");
    // Stop and start a fork: it boots from its own disk and keeps its file.
    c.stop("ws-fork1", false).await.unwrap();
    stopped(&c, "ws-fork1").await;
    c.start("ws-fork1").await.unwrap();
    running(&c, "ws-fork1").await;
    assert_eq!(sh(&c, "ws-fork1", "cat /home/developer/fork-only.txt").await, "mine\n");
    for id in ["ws-fork1", "ws-fork2"] {
        c.delete(id).await.unwrap();
    }
    c.delete_snapshot("snap-fork").await.unwrap();
    c.delete(src).await.unwrap();
    assert!(t.vm_processes().is_empty() && t.slots().is_empty());
}
