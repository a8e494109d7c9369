//! Snapshots, pause, resume and fork over the public API with real VMs.

use rigbox_client::views::{CreateWorkspaceRequest, ExecRequest};
use rigbox_client::Client;
use rigbox_test_support::{is_root, reference, TestPlatform};
use serde_json::{json, Value};
use std::time::Duration;

async fn sh(c: &Client, id: &str, cmd: &str) -> String {
    let r = c.exec(id, &ExecRequest { command: json!(cmd), timeout: Some(120), ..Default::default() }).await.unwrap();
    assert_eq!(r.exit_code, Some(0), "{cmd}: {r:?}");
    r.stdout
}

async fn settle(c: &Client, id: &str, want: &str) {
    let w = c.wait_settled(id, Duration::from_secs(300), |_| {}).await.unwrap();
    assert_eq!(w.vm.status, want, "{:?}", w.failure);
}

fn status<T: std::fmt::Debug>(r: Result<T, rigbox_client::ClientError>) -> u16 {
    r.unwrap_err().status().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_snapshots_pause_resume_fork_over_http() {
    if !is_root() {
        eprintln!("SKIP: VM tests need root");
        return;
    }
    let t = TestPlatform::start_with(&["base"], |s| s.limits.max_snapshots = 2).await.unwrap();
    let (alice, _) = t.user("alice@example.test").await.unwrap();
    let (bob, _) = t.user("bob@example.test").await.unwrap();
    let w = alice.create_workspace(&CreateWorkspaceRequest { name: "snap".into(), ..Default::default() }).await.unwrap();
    let id = w.vm.id.clone();
    alice.action(&id, "start").await.unwrap();
    settle(&alice, &id, "running").await;
    sh(&alice, &id, "echo one > /home/developer/f.txt; sync").await;

    // Disk snapshots need a stopped workspace; live ones a running one.
    assert_eq!(status(alice.send::<_, Value>(reqwest::Method::POST, &format!("/workspaces/{id}/snapshots"), &json!({"name": "s1"})).await), 409);
    let live: Value = alice.send(reqwest::Method::POST, &format!("/workspaces/{id}/snapshots"), &json!({"name": "live1", "live": true})).await.unwrap();
    reference::assert_matches("CreateSnapshotResponse", &live);
    assert_eq!(live["snapshot"]["kind"], "live");
    alice.action(&id, "stop").await.unwrap();
    settle(&alice, &id, "stopped").await;
    assert_eq!(status(alice.send::<_, Value>(reqwest::Method::POST, &format!("/workspaces/{id}/snapshots"), &json!({"live": true})).await), 409);
    let disk: Value = alice.send(reqwest::Method::POST, &format!("/workspaces/{id}/snapshots"), &json!({"name": "disk1"})).await.unwrap();
    reference::assert_matches("CreateSnapshotResponse", &disk);
    assert!(disk["snapshot"]["size_mb"].as_i64().unwrap() > 10);
    // Per-user limit.
    assert_eq!(status(alice.send::<_, Value>(reqwest::Method::POST, &format!("/workspaces/{id}/snapshots"), &json!({})).await), 402);
    let list: Value = alice.get(&format!("/workspaces/{id}/snapshots")).await.unwrap();
    reference::assert_matches("ListSnapshotsResponse", &list);
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 2);
    let all: Value = alice.get("/snapshots").await.unwrap();
    reference::assert_matches("ListSnapshotsResponse", &all);
    let sid = disk["snapshot"]["id"].as_str().unwrap().to_string();
    // Another user cannot see or restore it.
    assert_eq!(status(bob.call::<Value>(reqwest::Method::POST, &format!("/snapshots/{sid}/restore")).await), 404);
    assert_eq!(status(bob.call::<Value>(reqwest::Method::DELETE, &format!("/snapshots/{sid}")).await), 404);

    // Change the disk, restore, the change is gone.
    alice.action(&id, "start").await.unwrap();
    settle(&alice, &id, "running").await;
    sh(&alice, &id, "echo two > /home/developer/f.txt; sync").await;
    assert_eq!(status(alice.call::<Value>(reqwest::Method::POST, &format!("/workspaces/{id}/snapshots/{sid}/restore")).await), 409, "restore needs a stopped workspace");
    alice.action(&id, "stop").await.unwrap();
    settle(&alice, &id, "stopped").await;
    let r: Value = alice.call(reqwest::Method::POST, &format!("/workspaces/{id}/snapshots/{sid}/restore")).await.unwrap();
    reference::assert_matches("RestoreSnapshotResponse", &r);
    alice.action(&id, "start").await.unwrap();
    settle(&alice, &id, "running").await;
    assert_eq!(sh(&alice, &id, "cat /home/developer/f.txt").await, "one\n");

    // Restoring the live snapshot leaves the workspace paused where it was.
    let lid = live["snapshot"]["id"].as_str().unwrap().to_string();
    alice.action(&id, "stop").await.unwrap();
    settle(&alice, &id, "stopped").await;
    alice.call::<Value>(reqwest::Method::POST, &format!("/snapshots/{lid}/restore")).await.unwrap();
    assert_eq!(alice.workspace(&id).await.unwrap().vm.status, "paused");
    let r = alice.action(&id, "resume").await.unwrap();
    assert_eq!(r.vm.status, "running");
    assert_eq!(sh(&alice, &id, "cat /home/developer/f.txt").await, "one\n");

    // Pause and resume.
    sh(&alice, &id, "(setsid nohup sleep 10000 >/dev/null 2>&1 &); echo").await;
    let p = alice.action(&id, "pause").await.unwrap();
    assert_eq!(p.vm.status, "paused");
    assert_eq!(p.vm.status, "paused");
    assert_eq!(status(alice.action(&id, "pause").await), 409);
    assert!(t.vm_processes().is_empty());
    alice.action(&id, "resume").await.unwrap();
    assert!(!sh(&alice, &id, "pgrep -x sleep").await.trim().is_empty());

    // Fork: two running copies; the shared snapshot cannot be deleted while they exist.
    for s in alice.get::<Value>("/snapshots").await.unwrap()["snapshots"].as_array().unwrap() {
        alice.call::<Value>(reqwest::Method::DELETE, &format!("/snapshots/{}", s["id"].as_str().unwrap())).await.unwrap();
    }
    let f: Value = alice.send(reqwest::Method::POST, &format!("/workspaces/{id}/fork"), &json!({"count": 2})).await.unwrap();
    let forks: Vec<String> = f["workspaces"].as_array().unwrap().iter().map(|w| w["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(forks.len(), 2);
    for (i, fid) in forks.iter().enumerate() {
        let w = alice.workspace(fid).await.unwrap();
        assert_eq!((w.vm.status.as_str(), w.vm.name.clone()), ("running", format!("snap-fork-{}", i + 1)));
        assert_eq!(sh(&alice, fid, "cat /home/developer/f.txt; hostname").await, format!("one\nsnap-fork-{}\n", i + 1));
    }
    let fsid = f["snapshot"]["id"].as_str().unwrap().to_string();
    let e = alice.call::<Value>(reqwest::Method::DELETE, &format!("/snapshots/{fsid}")).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(409), Some("snapshot_in_use")));
    assert_eq!(status(bob.send::<_, Value>(reqwest::Method::POST, &format!("/workspaces/{id}/fork"), &json!({})).await), 404);
    for fid in &forks {
        alice.delete_workspace(fid).await.unwrap();
    }
    alice.call::<Value>(reqwest::Method::DELETE, &format!("/snapshots/{fsid}")).await.unwrap();
    alice.delete_workspace(&id).await.unwrap();
    assert!(t.vm_processes().is_empty() && t.slots().is_empty());
}
