//! The tools catalog with a real VM: an asynchronous install through the
//! node's package proxy, launch (routed like an app), stop.

use rigbox_client::views::ExecRequest;
use rigbox_test_support::{is_root, reference, wait_until, TestPlatform};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_tool_installs_asynchronously_and_launches() {
    if !is_root() {
        eprintln!("SKIP: VM tests need root");
        return;
    }
    let t = TestPlatform::start(&["base"]).await.unwrap();
    let (c, _) = t.user("gil@example.test").await.unwrap();
    let r: Value = c.send(reqwest::Method::POST, "/quick-deploy", &json!({"template_id": "base", "name": "tools", "wait": true})).await.unwrap();
    let id = r["workspace"]["id"].as_str().unwrap().to_string();

    let list: Value = c.get(&format!("/workspaces/{id}/tools")).await.unwrap();
    reference::assert_matches("ToolsListResponse", &list);
    let fb = list["tools"].as_array().unwrap().iter().find(|x| x["id"] == "filebrowser").unwrap().clone();
    assert_eq!((fb["available"].as_bool(), fb["running"].as_bool()), (Some(false), Some(false)));
    assert_eq!(c.get::<Value>(&format!("/workspaces/{id}/tools/nope/status")).await.unwrap_err().status(), Some(404));
    assert_eq!(c.call::<Value>(reqwest::Method::POST, &format!("/workspaces/{id}/tools/filebrowser/launch")).await.unwrap_err().status(), Some(409), "not installed yet");

    let started: Value = c.call(reqwest::Method::POST, &format!("/workspaces/{id}/tools/filebrowser/install")).await.unwrap();
    reference::assert_matches("ToolInstallResponse", &started);
    assert_eq!(started["status"], "running");
    let done = wait_until(Duration::from_secs(900), "the install to finish", || async {
        let s: Value = c.get(&format!("/workspaces/{id}/tools/filebrowser/install-status")).await.ok()?;
        (s["status"] == "done" || s["status"] == "failed").then_some(s)
    })
    .await
    .unwrap();
    reference::assert_matches("ToolInstallStatusResponse", &done);
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["available"], true);
    let st: Value = c.get(&format!("/workspaces/{id}/tools/filebrowser/status")).await.unwrap();
    reference::assert_matches("ToolStatus", &st);
    assert_eq!(st["available"], true);

    let launched: Value = c.call(reqwest::Method::POST, &format!("/workspaces/{id}/tools/filebrowser/launch")).await.unwrap();
    reference::assert_matches("ToolLaunchResponse", &launched);
    assert!(launched["url"].as_str().unwrap().contains(&format!("files-{id}")));
    c.upload(&id, "/home/developer/hello.txt", b"hi".to_vec()).await.unwrap();
    let r = c
        .exec(&id, &ExecRequest { command: json!("for i in $(seq 1 100); do curl -sf http://127.0.0.1:8090/ && break; sleep 0.3; done"), timeout: Some(120), ..Default::default() })
        .await
        .unwrap();
    assert!(r.stdout.contains("hello.txt"), "the file browser lists the home directory: {r:?}");
    let apps: Value = c.get(&format!("/apps?workspace_id={id}")).await.unwrap();
    assert!(apps["apps"].as_array().unwrap().iter().any(|a| a["name"] == format!("files-{id}")), "the tool is routed like an app: {apps}");
    let st: Value = c.get(&format!("/workspaces/{id}/tools/filebrowser/status")).await.unwrap();
    assert_eq!(st["running"], true);
    let stopped: Value = c.call(reqwest::Method::POST, &format!("/workspaces/{id}/tools/filebrowser/stop")).await.unwrap();
    reference::assert_matches("ToolStopResponse", &stopped);
    let st: Value = c.get(&format!("/workspaces/{id}/tools/filebrowser/status")).await.unwrap();
    assert_eq!(st["running"], false);
    // The package came through the node's cache.
    let cached = walk(&t.settings.image_cache.join("packages"));
    assert!(cached.iter().any(|p| p.contains("webfs")), "webfs is in the package cache: {cached:?}");
    c.delete_workspace(&id).await.unwrap();
}

fn walk(p: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    out
}
