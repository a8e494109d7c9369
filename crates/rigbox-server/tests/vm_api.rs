//! The workspace lifecycle over the public API with a real VM (QEMU/TCG
//! here): create, start, exec, files, stop, start, persistence, a restart of
//! the whole server while a workspace boots and while it runs, and delete.

use rigbox_client::views::{CreateWorkspaceRequest, ExecRequest};
use rigbox_client::Client;
use rigbox_test_support::{is_root, reference, TestPlatform};
use serde_json::json;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(300);

async fn wait(c: &Client, id: &str, want: &str) -> rigbox_client::views::GetWorkspaceResponse {
    let w = c.wait_settled(id, BOOT, |_| {}).await.unwrap();
    assert_eq!(w.vm.status, want, "{:?}", w.failure);
    w
}

async fn sh(c: &Client, id: &str, cmd: &str) -> rigbox_client::views::ExecResponse {
    c.exec(id, &ExecRequest { command: json!(cmd), timeout: Some(120), ..Default::default() }).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_workspace_lifecycle_over_http_survives_server_restarts() {
    if !is_root() {
        eprintln!("SKIP: VM tests need root");
        return;
    }
    let mut t = TestPlatform::start(&["base"]).await.unwrap();
    let (alice, _) = t.user("alice@example.test").await.unwrap();
    let w = alice
        .create_workspace(&CreateWorkspaceRequest { name: "dev-box".into(), env_vars: Some([("GREETING".into(), "hi".into())].into()), ..Default::default() })
        .await
        .unwrap();
    let id = w.vm.id.clone();

    // Start returns at once; the state then moves to running.
    let started = alice.action(&id, "start").await.unwrap();
    assert_eq!(started.vm.status, "starting");
    reference::assert_matches("GetWorkspaceResponse", &serde_json::to_value(&started).unwrap());
    assert_eq!(alice.action(&id, "start").await.unwrap_err().status(), Some(400), "already starting");

    // Restart the whole server while the workspace boots: nothing is stuck.
    t.restart().await.unwrap();
    let alice = Client::new(t.url(), alice_key(&alice));
    let w = wait(&alice, &id, "running").await;
    assert_eq!(w.vm.creation_attempts, 1);

    let r = sh(&alice, &id, "uname -sr; id -un; echo $GREETING; hostname").await;
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    assert_eq!(r.stdout.lines().nth(1), Some("developer"));
    assert_eq!(r.stdout.lines().nth(2), Some("hi"));
    assert_eq!(r.stdout.lines().nth(3), Some("dev-box"));
    let r = alice.exec(&id, &ExecRequest { command: json!(["sh", "-c", "exit 3"]), ..Default::default() }).await.unwrap();
    assert_eq!(r.exit_code, Some(3));

    // Live env change reaches new shells.
    alice.set_env(&id, [("GREETING".to_string(), Some("updated".to_string()))].into()).await.unwrap();
    assert_eq!(sh(&alice, &id, "echo $GREETING").await.stdout.trim(), "updated");

    // Streaming exec delivers lines as NDJSON and ends with the exit code.
    let resp = alice
        .exec_stream(&id, &ExecRequest { command: json!("for i in 1 2 3; do echo line$i; sleep 0.2; done; echo oops >&2; exit 4"), ..Default::default() })
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    let events: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let out: String = events.iter().filter(|e| e["type"] == "stdout").map(|e| e["data"].as_str().unwrap()).collect();
    assert_eq!(out, "line1\nline2\nline3\n");
    assert!(events.iter().any(|e| e["type"] == "stderr" && e["data"] == "oops\n"));
    assert_eq!(events.last().unwrap()["exit_code"], 4);

    // Files up and down, kept across stop and start.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    alice.upload(&id, "/home/developer/blob.bin", payload.clone()).await.unwrap();
    assert_eq!(alice.download(&id, "/home/developer/blob.bin").await.unwrap().as_ref(), payload.as_slice());
    assert_eq!(alice.download(&id, "/home/developer/missing").await.unwrap_err().status(), Some(404));
    assert_eq!(alice.action(&id, "stop").await.unwrap().vm.status, "stopping");
    wait(&alice, &id, "stopped").await;
    assert!(t.vm_processes().is_empty());
    assert_eq!(alice.exec(&id, &ExecRequest { command: json!("true"), ..Default::default() }).await.unwrap_err().status(), Some(409));
    alice.action(&id, "start").await.unwrap();
    wait(&alice, &id, "running").await;
    assert_eq!(alice.download(&id, "/home/developer/blob.bin").await.unwrap().as_ref(), payload.as_slice());

    // Restart while running: the VM is re-adopted, same process.
    let pids = t.vm_processes();
    assert_eq!(pids.len(), 1);
    t.restart().await.unwrap();
    let alice = Client::new(t.url(), alice_key(&alice));
    assert_eq!(alice.workspace(&id).await.unwrap().vm.status, "running");
    assert_eq!(t.vm_processes(), pids);
    assert_eq!(sh(&alice, &id, "cat /home/developer/blob.bin | wc -c").await.stdout.trim(), "200000");

    // Delete leaves nothing.
    alice.delete_workspace(&id).await.unwrap();
    assert_eq!(alice.workspace(&id).await.unwrap_err().status(), Some(404));
    assert!(t.vm_processes().is_empty() && t.slots().is_empty());
}

fn alice_key(c: &Client) -> Option<String> {
    // The key is the same after a restart; the URL may change (port 0).
    c.key().map(str::to_string)
}
