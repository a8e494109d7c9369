//! The node agent with real VMs (QEMU/TCG here): lifecycle, exec, files,
//! persistence across stop/start, re-adoption after a node-agent restart,
//! crash detection, isolation, bad input, and cleanup.

use rigbox_node_api::{codes, CreateWorkspace, NodeClient, NodeClientError, WorkspaceStatus};
use rigbox_test_support::{is_root, wait_until, TestNode};
use rigbox_types::WorkspaceState;
use std::collections::BTreeMap;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(300);

fn spec(hostname: &str) -> CreateWorkspace {
    CreateWorkspace {
        template: "base".into(),
        vcpus: 1,
        ram_mb: 512,
        disk_mb: 3072,
        hostname: hostname.into(),
        env: BTreeMap::from([("GREETING".to_string(), "hello from the api".to_string())]),
        authorized_keys: vec![],
        metadata: serde_json::json!({"name": hostname}),
        setup: Default::default(),
        cold_boot: false,
    }
}

async fn wait_state(c: &NodeClient, id: &str, want: WorkspaceState) -> WorkspaceStatus {
    wait_until(BOOT, &format!("{id} to be {want}"), || async {
        let s = c.get(id).await.ok()?;
        if s.state == WorkspaceState::Failed && want != WorkspaceState::Failed {
            panic!("{id} failed: {:?}", s.failure);
        }
        (s.state == want).then_some(s)
    })
    .await
    .unwrap()
}

fn code(r: Result<impl std::fmt::Debug, NodeClientError>) -> String {
    match r {
        Err(NodeClientError::Api { code, .. }) => code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn sh(c: &NodeClient, id: &str, cmd: &str) -> rigbox_node_api::guest::ExecResponse {
    c.exec(id, &rigbox_node_api::guest::ExecRequest { shell: Some(cmd.into()), timeout_ms: Some(120_000), ..Default::default() })
        .await
        .unwrap()
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
async fn vm_lifecycle_exec_files_restart_crash_and_cleanup() {
    need_root!();
    let mut t = TestNode::start(&["base"]).await.unwrap();
    let c = t.client.clone();
    let id = "ws-life";

    // Bad input leaves nothing behind.
    let mut bad = spec("x");
    bad.vcpus = 0;
    assert_eq!(code(c.create(id, &bad).await), codes::INVALID);
    let mut bad = spec("x");
    bad.ram_mb = 0;
    assert_eq!(code(c.create(id, &bad).await), codes::INVALID);
    let mut bad = spec("x");
    bad.disk_mb = 16;
    assert_eq!(code(c.create(id, &bad).await), codes::INVALID);
    let mut bad = spec("x");
    bad.template = "no-such-template".into();
    assert_eq!(code(c.create(id, &bad).await), codes::INVALID);
    assert_eq!(code(c.create("Bad_Id", &spec("x")).await), codes::INVALID);
    assert_eq!(code(c.get(id).await), codes::NOT_FOUND);
    assert_eq!(code(c.start("ws-unknown").await), codes::NOT_FOUND);

    let s = c.create(id, &spec("lifecycle")).await.unwrap();
    assert_eq!(s.state, WorkspaceState::Provisioned);
    assert_eq!(code(c.create(id, &spec("lifecycle")).await), codes::EXISTS);
    assert_eq!(code(sh_raw(&c, id).await), codes::WRONG_STATE, "exec needs a running workspace");

    let s = c.start(id).await.unwrap();
    assert_eq!(s.state, WorkspaceState::Starting);
    assert_eq!(code(c.start(id).await), codes::WRONG_STATE, "a second start is refused");
    let s = wait_state(&c, id, WorkspaceState::Running).await;
    eprintln!("booted in {:?} ms", s.boot_ms);
    assert_eq!(code(c.start(id).await), codes::WRONG_STATE, "start of a running workspace is refused");

    let r = sh(&c, id, "uname -a; id -un; echo \"$GREETING\"; hostname").await;
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    assert!(r.stdout.contains("Linux lifecycle"), "{}", r.stdout);
    assert!(r.stdout.contains("\ndeveloper\n"), "{}", r.stdout);
    assert!(r.stdout.contains("hello from the api"), "{}", r.stdout);
    let r = sh(&c, id, "exit 7").await;
    assert_eq!(r.exit_code, Some(7));
    let r = c
        .exec(id, &rigbox_node_api::guest::ExecRequest { argv: Some(vec!["id".into()]), user: Some("root".into()), ..Default::default() })
        .await
        .unwrap();
    assert!(r.stdout.starts_with("uid=0(root)"), "{}", r.stdout);
    let r = c
        .exec(id, &rigbox_node_api::guest::ExecRequest { shell: Some("sleep 30".into()), timeout_ms: Some(500), ..Default::default() })
        .await
        .unwrap();
    assert!(r.timed_out);

    let content = format!("persisted {}\n", std::process::id());
    c.write_file(id, "/home/developer/notes/data.txt", content.clone(), None).await.unwrap();
    let r = sh(&c, id, "stat -c %U /home/developer/notes/data.txt; cat /home/developer/notes/data.txt; df -m / | tail -1").await;
    assert!(r.stdout.starts_with("developer\n"), "{}", r.stdout);
    assert!(r.stdout.contains(&content), "{}", r.stdout);
    let total_mb: u64 = r.stdout.lines().last().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(total_mb > 2500, "the filesystem was grown to the disk size: {total_mb} MiB");
    let console = c.console(id, 0).await.unwrap();
    assert!(console.data.contains("Linux version"), "the serial console is captured");
    assert!(c.stats(id).await.unwrap().guest.is_some());

    // Stop, start, data persists.
    let pid = s.pid.unwrap();
    assert_eq!(c.stop(id, false).await.unwrap().state, WorkspaceState::Stopping);
    wait_state(&c, id, WorkspaceState::Stopped).await;
    assert!(t.vm_processes().is_empty(), "no VM process after stop");
    assert!(t.slots().is_empty(), "no slot after stop");
    assert_eq!(code(c.stop(id, false).await), codes::WRONG_STATE);
    c.start(id).await.unwrap();
    let s = wait_state(&c, id, WorkspaceState::Running).await;
    assert_ne!(s.pid, Some(pid));
    let back = c.read_file(id, "/home/developer/notes/data.txt").await.unwrap();
    assert_eq!(back, content.as_bytes());

    // Restart the node agent: the running VM is re-adopted and still answers.
    let pid = s.pid.unwrap();
    t.restart().await.unwrap();
    let c = t.client.clone();
    let s = c.get(id).await.unwrap();
    assert_eq!((s.state, s.pid), (WorkspaceState::Running, Some(pid)));
    assert_eq!(sh(&c, id, "cat /home/developer/notes/data.txt").await.stdout, content);

    // A killed VMM process is noticed and reported with the console tail.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let s = wait_state(&c, id, WorkspaceState::Failed).await;
    let f = s.failure.unwrap();
    assert_eq!(f.code, "vm_exited");
    assert!(f.console_tail.is_some_and(|t| !t.is_empty()));
    assert!(t.slots().is_empty());

    // Delete leaves nothing.
    c.delete(id).await.unwrap();
    assert_eq!(code(c.get(id).await), codes::NOT_FOUND);
    assert!(t.vm_processes().is_empty());
    assert!(t.slots().is_empty());
    assert!(!t.dir.path().join("node/workspaces").join(id).exists());
}

async fn sh_raw(c: &NodeClient, id: &str) -> Result<rigbox_node_api::guest::ExecResponse, NodeClientError> {
    c.exec(id, &rigbox_node_api::guest::ExecRequest { shell: Some("true".into()), ..Default::default() }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_two_workspaces_cannot_reach_each_other() {
    need_root!();
    let t = TestNode::start(&["base"]).await.unwrap();
    let c = t.client.clone();
    for id in ["ws-iso-a", "ws-iso-b"] {
        c.create(id, &spec(id)).await.unwrap();
        c.start(id).await.unwrap();
    }
    for id in ["ws-iso-a", "ws-iso-b"] {
        wait_state(&c, id, WorkspaceState::Running).await;
    }
    // A serves a marker on 8000; from B the same address is B itself.
    let r = sh(&c, "ws-iso-a", "mkdir -p /tmp/www && echo marker-a > /tmp/www/index.html && cd /tmp/www && (nohup python3 -m http.server 8000 >/dev/null 2>&1 &) ; for i in $(seq 1 120); do curl -s --max-time 2 http://169.254.0.2:8000/ && break; sleep 0.5; done").await;
    assert!(r.stdout.contains("marker-a"), "A reaches its own server: {r:?}");
    let r = sh(&c, "ws-iso-b", "curl -s --max-time 5 http://169.254.0.2:8000/ || echo unreachable").await;
    assert!(!r.stdout.contains("marker-a"), "B must not reach A: {r:?}");
    // The agent of the other workspace is not reachable either: B's own
    // agent refuses guest-side peers, and nothing routes to A.
    let r = sh(&c, "ws-iso-b", "curl -s --max-time 5 -o /dev/null -w '%{http_code}' http://169.254.0.2:10000/v1/health; ip route").await;
    assert!(r.stdout.starts_with("403"), "the agent refuses guest-side callers: {r:?}");
    assert!(!r.stdout.contains("192.") && !r.stdout.contains("10."), "no routes beyond the slot: {r:?}");
    for id in ["ws-iso-a", "ws-iso-b"] {
        c.delete(id).await.unwrap();
    }
    assert!(t.vm_processes().is_empty() && t.slots().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_boot_failures_are_reported_not_stuck() {
    need_root!();
    let t = TestNode::start(&["base"]).await.unwrap();
    let c = t.client.clone();

    // A disk without a filesystem: the kernel cannot mount root and the VM exits.
    let id = "ws-broken";
    c.create(id, &spec(id)).await.unwrap();
    // (Written through qemu-io: the disk is a qcow2 overlay on QEMU.)
    let disk = t.dir.path().join("node/workspaces").join(id).join("disk.qcow2");
    let out = std::process::Command::new("qemu-io").args(["-f", "qcow2", "-c", "write -z 0 1M"]).arg(&disk).output().unwrap();
    assert!(out.status.success(), "qemu-io: {}", String::from_utf8_lossy(&out.stderr));
    c.start(id).await.unwrap();
    let s = wait_state(&c, id, WorkspaceState::Failed).await;
    let f = s.failure.unwrap();
    assert_eq!(f.code, "vm_exited", "{f:?}");
    assert!(f.console_tail.unwrap_or_default().contains("Kernel panic"), "the reason is in the console tail");
    assert!(t.vm_processes().is_empty() && t.slots().is_empty());
    c.delete(id).await.unwrap();
    assert!(!disk.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_a_guest_that_never_answers_times_out_and_fails() {
    need_root!();
    let mut t = TestNode::start(&["base"]).await.unwrap();
    // Same node, short deadline.
    t.settings.boot_timeout_secs = 2;
    t.restart().await.unwrap();
    let c = t.client.clone();
    let id = "ws-slow";
    c.create(id, &spec(id)).await.unwrap();
    c.start(id).await.unwrap();
    let s = wait_state(&c, id, WorkspaceState::Failed).await;
    assert_eq!(s.failure.unwrap().code, "boot_timeout");
    assert!(t.vm_processes().is_empty() && t.slots().is_empty(), "left after the timeout: {:?} {:?}", t.vm_processes(), t.slots());
    // Cancel of a boot.
    t.settings.boot_timeout_secs = 240;
    t.restart().await.unwrap();
    let c = t.client.clone();
    c.start(id).await.unwrap();
    let s = c.cancel(id).await.unwrap();
    assert_eq!(s.state, WorkspaceState::Stopped);
    assert!(t.vm_processes().is_empty() && t.slots().is_empty());
    assert_eq!(code(c.cancel(id).await), codes::WRONG_STATE);
    c.delete(id).await.unwrap();
}

#[tokio::test]
async fn missing_images_are_a_clear_error() {
    if !is_root() {
        eprintln!("SKIP: needs root");
        return;
    }
    rigbox_test_support::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let mut s = rigbox_test_support::settings(dir.path());
    s.image_cache = dir.path().join("empty-cache");
    let h = rigbox_server::start_node(&s).await.unwrap();
    let c = NodeClient::new(h.url(), h.token.clone());
    let err = c.create("ws-noimg", &spec("x")).await.unwrap_err();
    assert_eq!(err.code(), Some(codes::IMAGE_MISSING), "{err}");
    assert!(err.to_string().contains("rigboxd image build"));
    assert_eq!(code(c.get("ws-noimg").await), codes::NOT_FOUND);
    assert!(NodeClient::new(h.url(), "wrong").list().await.is_err(), "a wrong node token is refused");
    h.shutdown().await;
}
