//! The public API over HTTP without booting VMs: authentication, quotas,
//! validation, state errors, rate limits, and the reference schemas.

use rigbox_client::{Client, ClientError};
use rigbox_test_support::{is_root, reference, TestPlatform};
use serde_json::{json, Value};

fn status(r: Result<impl std::fmt::Debug, ClientError>) -> u16 {
    match r {
        Err(e) => e.status().unwrap_or(0),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

async fn raw(c: &reqwest::Client, method: reqwest::Method, url: &str, key: Option<&str>, body: Option<Value>) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut r = c.request(method, url);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let s = resp.status().as_u16();
    let h = resp.headers().clone();
    let v = resp.json::<Value>().await.unwrap_or(Value::Null);
    (s, v, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_errors_quotas_and_reference_shapes() {
    if !is_root() {
        eprintln!("SKIP: needs root (node agent)");
        return;
    }
    let t = TestPlatform::start_with(&["base"], |s| {
        s.limits.max_workspaces = 2;
        s.limits.max_ram_per_workspace_mb = 2048;
        s.limits.requests_per_minute = 60;
    })
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let api = format!("{}/api/v1", t.url());

    // Public endpoints and the error envelope.
    let (s, v, _) = raw(&http, reqwest::Method::GET, &format!("{api}/templates"), None, None).await;
    assert_eq!(s, 200);
    reference::assert_matches("TemplatesResponse", &v);
    let ids: Vec<&str> = v["templates"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"base") && ids.contains(&"dev") && ids.contains(&"python"));
    let (s, v, _) = raw(&http, reqwest::Method::GET, &format!("{api}/workspaces"), None, None).await;
    assert_eq!(s, 401);
    reference::assert_matches("ApiErrorBody", &v);
    assert_eq!(v["error"]["message"], "Missing Authorization header");
    let (s, v, _) = raw(&http, reqwest::Method::GET, &format!("{api}/workspaces"), Some("rb_wrong"), None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (401, Some("unauthorized")));
    let (s, v, _) = raw(&http, reqwest::Method::GET, &format!("{}/api/v1/nope", t.url()), None, None).await;
    assert_eq!(s, 404);
    reference::assert_matches("ApiErrorBody", &v);

    let (alice, alice_key) = t.user("alice@example.test").await.unwrap();
    let (bob, _) = t.user("bob@example.test").await.unwrap();
    assert_eq!(status(alice.send::<_, Value>(reqwest::Method::POST, "/admin/users", &json!({"email": "x@example.test"})).await), 403);
    assert_eq!(status(t.admin().send::<_, Value>(reqwest::Method::POST, "/admin/users", &json!({"email": "alice@example.test"})).await), 409);
    assert_eq!(status(t.admin().send::<_, Value>(reqwest::Method::POST, "/admin/users", &json!({"email": "not-an-email"})).await), 400);

    // Create: validation, templates, floors, quotas, conflicts.
    let mk = |name: &str| rigbox_client::views::CreateWorkspaceRequest { name: name.into(), ..Default::default() };
    assert_eq!(status(alice.create_workspace(&mk("Bad Name")).await), 400);
    let mut r = mk("tpl");
    r.template_id = Some("no-such".into());
    assert_eq!(status(alice.create_workspace(&r).await), 404);
    let mut r = mk("big");
    r.ram_mb = Some(4096);
    assert_eq!(status(alice.create_workspace(&r).await), 402);
    let (s, v, _) = raw(&http, reqwest::Method::POST, &format!("{api}/workspaces"), Some(&alice_key), Some(json!({"name": "neg", "ram_mb": -1}))).await;
    assert_eq!(s, 400, "{v}");
    let (s, v, _) = raw(&http, reqwest::Method::POST, &format!("{api}/workspaces"), Some(&alice_key), Some(json!({"nope": 1}))).await;
    assert_eq!(s, 400, "a body without a name is refused: {v}");

    let mut r = mk("box1");
    r.ram_mb = Some(100);
    let (s, v, _) = raw(&http, reqwest::Method::POST, &format!("{api}/workspaces"), Some(&alice_key), Some(serde_json::to_value(&r).unwrap())).await;
    assert_eq!(s, 201, "{v}");
    reference::assert_matches("GetWorkspaceResponse", &v);
    assert_eq!(v["vm"]["status"], "provisioned");
    assert_eq!(v["vm"]["ram_mb"], 512, "raised to the template floor");
    assert_eq!(v["vm"]["disk_size_mb"], 3072);
    assert!(v["vm"]["id"].as_str().unwrap().starts_with("ws-"));
    let id = v["vm"]["id"].as_str().unwrap().to_string();
    assert_eq!(status(alice.create_workspace(&mk("box1")).await), 409, "names are unique per user");
    bob.create_workspace(&mk("box1")).await.expect("another user may use the same name");
    alice.create_workspace(&mk("box2")).await.unwrap();
    assert_eq!(status(alice.create_workspace(&mk("box3")).await), 402, "workspace count quota");

    // Reads, isolation.
    let (s, v, _) = raw(&http, reqwest::Method::GET, &format!("{api}/workspaces"), Some(&alice_key), None).await;
    assert_eq!(s, 200);
    reference::assert_matches("ListWorkspacesResponse", &v);
    assert_eq!(v["vms"].as_array().unwrap().len(), 2);
    let (s, v, _) = raw(&http, reqwest::Method::GET, &format!("{api}/workspaces/{id}"), Some(&alice_key), None).await;
    assert_eq!(s, 200);
    reference::assert_matches("GetWorkspaceResponse", &v);
    assert_eq!(alice.workspace("box1").await.unwrap().vm.id, id, "by name too");
    assert_eq!(status(bob.workspace(&id).await), 404, "another user's workspace is a 404");
    assert_eq!(status(bob.action(&id, "start").await), 404);
    assert_eq!(status(bob.delete_workspace(&id).await), 404);
    assert_eq!(status(alice.workspace("ws-doesnotexist").await), 404);

    // Wrong states.
    assert_eq!(status(alice.action(&id, "stop").await), 400, "stop of a workspace that is not running");
    assert_eq!(status(alice.action(&id, "cancel").await), 409);
    assert_eq!(status(alice.action(&id, "retry").await), 409);
    let e = alice.exec(&id, &rigbox_client::views::ExecRequest { command: json!("true"), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.status(), Some(409));
    assert_eq!(
        status(alice.exec(&id, &rigbox_client::views::ExecRequest { command: json!(42), ..Default::default() }).await),
        400
    );

    // Resources, env, limits.
    let (s, v, _) = raw(&http, reqwest::Method::PUT, &format!("{api}/workspaces/{id}/resources"), Some(&alice_key), Some(json!({"ram_mb": 768, "disk_size_mb": 4096}))).await;
    assert_eq!(s, 200, "{v}");
    reference::assert_matches("ResizeWorkspaceResponse", &v);
    assert_eq!((v["vm"]["ram_mb"].as_i64(), v["vm"]["disk_size_mb"].as_i64()), (Some(768), Some(4096)));
    let (s, _, _) = raw(&http, reqwest::Method::PUT, &format!("{api}/workspaces/{id}/resources"), Some(&alice_key), Some(json!({"disk_size_mb": 3072}))).await;
    assert_eq!(s, 400, "the disk never shrinks");
    let (s, _, _) = raw(&http, reqwest::Method::PUT, &format!("{api}/workspaces/{id}/resources"), Some(&alice_key), Some(json!({"ram_mb": 999999}))).await;
    assert_eq!(s, 402);
    let (s, v, _) = raw(&http, reqwest::Method::POST, &format!("{api}/workspaces/{id}/env"), Some(&alice_key), Some(json!({"env_vars": {"FOO": "bar"}}))).await;
    assert_eq!(s, 200);
    reference::assert_matches("MessageResponse", &v);
    assert_eq!(alice.workspace(&id).await.unwrap().vm.env_vars.unwrap().get("FOO").map(String::as_str), Some("bar"));
    let (s, _, _) = raw(&http, reqwest::Method::POST, &format!("{api}/workspaces/{id}/env"), Some(&alice_key), Some(json!({"env_vars": {"1BAD": "x"}}))).await;
    assert_eq!(s, 400);
    let (s, v, _) = raw(&http, reqwest::Method::GET, &format!("{api}/users/me/limits"), Some(&alice_key), None).await;
    assert_eq!(s, 200);
    reference::assert_matches("GetUserLimitsResponse", &v);
    assert_eq!(v["usage"]["workspace_count"], 2);

    // API keys: secret shown once, hash only, preview and last use.
    let created: Value = alice.send(reqwest::Method::POST, "/api-keys", &json!({"name": "ci"})).await.unwrap();
    let new_key = created["key"].as_str().unwrap().to_string();
    let c2 = Client::new(t.url(), Some(new_key.clone()));
    c2.me().await.unwrap();
    let listed: Value = alice.get("/api-keys").await.unwrap();
    let entry = listed["api_keys"].as_array().unwrap().iter().find(|k| k["id"] == created["id"]).unwrap().clone();
    assert!(entry.get("key").is_none() && entry["key_preview"].as_str().unwrap().ends_with(&new_key[new_key.len() - 8..]));
    assert!(!listed.to_string().contains(&new_key), "the list never shows a secret");
    let _: Value = alice.call(reqwest::Method::DELETE, &format!("/api-keys/{}", created["id"].as_str().unwrap())).await.unwrap();
    assert_eq!(status(c2.me().await), 401, "a deleted key stops working at once");

    // Delete.
    let (s, v, _) = raw(&http, reqwest::Method::DELETE, &format!("{api}/workspaces/{id}"), Some(&alice_key), None).await;
    assert_eq!(s, 200);
    reference::assert_matches("MessageResponse", &v);
    assert_eq!(status(alice.workspace(&id).await), 404);
    assert!(!t.dir.path().join("node/workspaces").join(&id).exists(), "the disk is gone");

    // Rate limit: a key that exceeds its budget gets 429 with Retry-After.
    let mut limited = None;
    for _ in 0..80 {
        let (s, v, h) = raw(&http, reqwest::Method::GET, &format!("{api}/users/me"), Some(&alice_key), None).await;
        if s == 429 {
            limited = Some((v, h));
            break;
        }
    }
    let (v, h) = limited.expect("a burst beyond the budget is limited");
    assert_eq!(v["error"]["code"], "rate_limited");
    assert!(h.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()).is_some_and(|s| s >= 1));
    t.admin().me().await.expect("other keys are not affected");

    // The generated OpenAPI document is served.
    let (s, v, _) = raw(&http, reqwest::Method::GET, &format!("{}/api-docs/openapi.json", t.url()), None, None).await;
    assert_eq!(s, 200);
    assert!(v["components"]["schemas"]["Vm"].is_object());
}
