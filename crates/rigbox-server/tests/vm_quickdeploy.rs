//! Quick deploy, setup scripts, service specs and warm templates with real VMs.

use rigbox_client::views::ExecRequest;
use rigbox_client::Client;
use rigbox_test_support::{is_root, reference, wait_until, TestPlatform};
use serde_json::{json, Value};
use std::time::Duration;

async fn sh(c: &Client, id: &str, cmd: &str) -> String {
    let r = c.exec(id, &ExecRequest { command: json!(cmd), timeout: Some(300), ..Default::default() }).await.unwrap();
    assert_eq!(r.exit_code, Some(0), "{cmd}: {r:?}");
    r.stdout
}

async fn post(c: &Client, path: &str, body: Value) -> Value {
    c.send(reqwest::Method::POST, path, &body).await.unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

fn status<T: std::fmt::Debug>(r: Result<T, rigbox_client::ClientError>) -> u16 {
    r.unwrap_err().status().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_quick_deploy_with_scripts_and_services() {
    if !is_root() {
        eprintln!("SKIP: VM tests need root");
        return;
    }
    let t = TestPlatform::start(&["base"]).await.unwrap();
    let (c, _) = t.user("dana@example.test").await.unwrap();

    // Library: scripts (first boot, every start, a failing one) and a service.
    let first = post(&c, "/setup-scripts", json!({"name": "first", "content": "echo first >> ~/boot.log", "run_on": "first_boot", "script_order": 1})).await;
    reference::assert_matches("SetupScriptResponse", &first);
    let every = post(&c, "/setup-scripts", json!({"name": "every", "content": "echo every >> ~/boot.log; sudo -n true && echo sudo-ok >> ~/boot.log", "run_on": "every_start", "script_order": 2})).await;
    let failing = post(&c, "/setup-scripts", json!({"name": "failing", "content": "echo about to fail; exit 3", "run_on": "every_start", "script_order": 3})).await;
    let svc = post(&c, "/service-specs", json!({"name": "web", "exec_start": "python3 -m http.server 8000 --bind 0.0.0.0", "restart_policy": "on-failure", "auto_enable": true, "env_vars": {"WHO": "svc"}})).await;
    reference::assert_matches("ServiceSpecResponse", &svc);
    assert!(svc["systemd_unit_preview"].as_str().unwrap().contains("Restart=on-failure"));
    let list: Value = c.get("/setup-scripts").await.unwrap();
    reference::assert_matches("SetupScriptsListResponse", &list);
    let list: Value = c.get("/service-specs").await.unwrap();
    reference::assert_matches("ServiceSpecsListResponse", &list);

    // Bad input.
    assert_eq!(status(c.send::<_, Value>(reqwest::Method::POST, "/setup-scripts", &json!({"name": "big", "content": "x".repeat(70_000)})).await), 400);
    assert_eq!(status(c.send::<_, Value>(reqwest::Method::POST, "/setup-scripts", &json!({"name": "when", "content": "true", "run_on": "sometimes"})).await), 400);
    assert_eq!(status(c.send::<_, Value>(reqwest::Method::POST, "/service-specs", &json!({"name": "two", "exec_start": "a\nb"})).await), 400);
    assert_eq!(status(c.send::<_, Value>(reqwest::Method::POST, "/service-specs", &json!({"name": "bad name!", "exec_start": "true"})).await), 400);
    assert_eq!(status(c.send::<_, Value>(reqwest::Method::POST, "/service-specs", &json!({"name": "web", "exec_start": "true"})).await), 409);
    assert_eq!(status(c.send::<_, Value>(reqwest::Method::POST, "/quick-deploy", &json!({"template_id": "nope"})).await), 404);
    assert_eq!(status(c.send::<_, Value>(reqwest::Method::POST, "/quick-deploy", &json!({"template_id": "base", "ram_mb": 999999})).await), 402);
    assert_eq!(status(c.send::<_, Value>(reqwest::Method::POST, "/quick-deploy", &json!({"template_id": "base", "setup_script_ids": ["no-such"]})).await), 400);

    let ids = |v: &[&Value]| v.iter().map(|x| x["id"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let r = post(
        &c,
        "/quick-deploy",
        json!({"template_id": "base", "name": "auto", "wait": true,
               "setup_script_ids": ids(&[&failing, &every, &first]),
               "service_spec_ids": ids(&[&svc])}),
    )
    .await;
    reference::assert_matches("QuickDeployResponse", &r);
    assert_eq!(r["workspace"]["status"], "running");
    let id = r["workspace"]["id"].as_str().unwrap().to_string();
    let scripts = r["setup"]["scripts"].as_array().unwrap();
    let states: Vec<(&str, &str)> = scripts.iter().map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap())).collect();
    assert_eq!(states, vec![("first", "succeeded"), ("every", "succeeded"), ("failing", "failed")], "in script_order, a failure recorded");
    assert_eq!(scripts[2]["exit_code"], 3);
    assert!(scripts[2]["output"].as_str().unwrap().contains("about to fail"));
    assert_eq!(sh(&c, &id, "cat ~/boot.log").await, "first\nevery\nsudo-ok\n");

    // The service runs (as developer), is reported, and is restarted on failure.
    let up = sh(&c, &id, "for i in $(seq 1 100); do curl -sf -o /dev/null http://127.0.0.1:8000/ && break; sleep 0.3; done; systemctl is-active rigbox-svc-web; ps -o user= -C python3 | head -1").await;
    assert_eq!(up, "active\ndeveloper\n");
    let services: Value = c.get(&format!("/workspaces/{id}/services")).await.unwrap();
    reference::assert_matches("WorkspaceServicesResponse", &services);
    assert_eq!(services["services"][0]["status"], "healthy");
    sh(&c, &id, "sudo kill -9 $(systemctl show -p MainPID --value rigbox-svc-web)").await;
    wait_until(Duration::from_secs(60), "the service to be restarted", || async {
        let s: Value = c.get(&format!("/workspaces/{id}/services/web")).await.ok()?;
        (s["restarts"].as_u64()? >= 1 && s["status"] == "healthy").then_some(())
    })
    .await
    .unwrap();

    // Setup output is in the journal too.
    assert!(sh(&c, &id, "sudo journalctl -t rigbox-setup --no-pager -q | grep -c 'about to fail'").await.trim() != "0");

    // Stop and start: first-boot ran once, every-start ran again.
    c.action(&id, "stop").await.unwrap();
    c.wait_settled(&id, Duration::from_secs(120), |_| {}).await.unwrap();
    c.action(&id, "start").await.unwrap();
    assert_eq!(c.wait_settled(&id, Duration::from_secs(300), |_| {}).await.unwrap().vm.status, "running");
    wait_until(Duration::from_secs(120), "setup after the restart", || async {
        let s: Value = c.get(&format!("/workspaces/{id}/setup")).await.ok()?;
        (s["state"] == "done").then_some(())
    })
    .await
    .unwrap();
    assert_eq!(sh(&c, &id, "cat ~/boot.log").await, "first\nevery\nsudo-ok\nevery\nsudo-ok\n");
    c.delete_workspace(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_quick_deploy_from_a_warm_template_gets_fresh_identities() {
    if !is_root() {
        eprintln!("SKIP: VM tests need root");
        return;
    }
    let t = TestPlatform::start(&["base"]).await.unwrap();
    let (c, _) = t.user("erin@example.test").await.unwrap();
    let p = t.p();
    let node = rigbox_node_api::NodeClient::new(p.node.url(), p.node.token.clone());
    node.warm_template("base", &rigbox_node_api::WarmRequest { ram_mb: 512, vcpus: 1, disk_mb: 3072 }).await.unwrap();
    wait_until(Duration::from_secs(600), "the warm template", || async {
        let w = node.warm_templates().await.ok()?;
        let base = w.into_iter().find(|x| x.template == "base" && x.ram_mb == 512)?;
        assert_ne!(base.state, "failed", "{:?}", base.error);
        (base.state == "ready").then_some(())
    })
    .await
    .unwrap();
    let mut seen = Vec::new();
    // The second asks for a larger disk than the snapshot's: it is still
    // restored, then its disk and filesystem grow while it runs.
    for (name, disk_mb) in [("warm-a", 3072), ("warm-b", 4096)] {
        let t0 = std::time::Instant::now();
        let r = post(&c, "/quick-deploy", json!({"template_id": "base", "name": name, "ram_mb": 512, "disk_size_mb": disk_mb, "wait": true})).await;
        eprintln!("quick deploy {name} from the warm template: {:?}", t0.elapsed());
        let id = r["workspace"]["id"].as_str().unwrap().to_string();
        let rec: Value = serde_json::from_slice(&std::fs::read(t.dir.path().join("node/workspaces").join(&id).join("record.json")).unwrap()).unwrap();
        assert!(rec["backing_snapshot"].as_str().unwrap_or("").starts_with("tpl-base-"), "restored from the warm snapshot: {rec}");
        let out = sh(&c, &id, "hostname; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; cat /etc/ssh/ssh_host_ed25519_key.pub; date +%s; df -m --output=size / | tail -1").await;
        let lines: Vec<String> = out.lines().map(str::to_string).collect();
        assert_eq!(lines[0], name);
        let fs_mb: i64 = lines[4].trim().parse().unwrap();
        // ext4's own overhead keeps `df` a few percent under the disk.
        assert!(fs_mb > disk_mb * 9 / 10 && fs_mb <= disk_mb, "root filesystem of {fs_mb} MiB on a {disk_mb} MiB disk");
        let skew = lines[3].parse::<i64>().unwrap() - std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!(skew.abs() <= 2, "clock corrected ({skew}s)");
        seen.push(lines);
    }
    assert_ne!(seen[0][1], seen[1][1], "different random output");
    assert_ne!(seen[0][2], seen[1][2], "different SSH host keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_quick_deploy_dev_template_has_working_tools() {
    if !is_root() {
        eprintln!("SKIP: VM tests need root");
        return;
    }
    let t = TestPlatform::start(&["dev"]).await.unwrap();
    let (c, _) = t.user("fay@example.test").await.unwrap();
    let templates: Value = c.get("/templates").await.unwrap();
    let dev = templates["templates"].as_array().unwrap().iter().find(|x| x["id"] == "dev").unwrap().clone();
    assert_eq!((dev["ram_mb"].as_i64(), dev["disk_size_mb"].as_i64()), (Some(1024), Some(4096)));
    let r = post(&c, "/quick-deploy", json!({"template_id": "dev", "name": "devbox", "ram_mb": 256, "wait": true})).await;
    assert_eq!(r["workspace"]["ram_mb"], 1024, "raised to the template floor");
    let id = r["workspace"]["id"].as_str().unwrap().to_string();
    let out = sh(
        &c,
        &id,
        "gcc --version | head -1; make --version | head -1; node --version; npm --version; pip3 --version | cut -d' ' -f1; \
         python3 -m venv /tmp/venv && /tmp/venv/bin/python -c 'print(\"venv-ok\")'; git --version; test -d ~/projects && echo projects-dir",
    )
    .await;
    for want in ["gcc", "GNU Make", "v18", "pip", "venv-ok", "git version", "projects-dir"] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    c.delete_workspace(&id).await.unwrap();
}
