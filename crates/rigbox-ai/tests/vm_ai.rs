//! The managed AI proxy end to end with a real VM: the whole platform in
//! this process, a fake provider on loopback standing in for the internet
//! (OpenAI, Anthropic and Gemini wire formats), calls from inside the guest
//! (curl through exec) and from inside its network namespace with the
//! official `openai` and `anthropic` Python SDKs (a venv under
//! /var/cache/rigbox, created on first use).

use rigbox_ai::fake::FakeProvider;
use rigbox_client::views::{CreateWorkspaceRequest, ExecRequest, ExecResponse};
use rigbox_client::Client;
use rigbox_test_support::{is_root, reference, wait_until, TestPlatform};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(300);
const OPERATOR_KEYS: [(&str, &str); 3] = [("openai", "sk-operator-openai-5ecret"), ("anthropic", "sk-operator-anthropic-5ecret"), ("google", "sk-operator-google-5ecret")];
const BYOK_KEY: &str = "sk-user-byok-0123456789";
const OPENAI_SDK: &str = "3.57.0";
const ANTHROPIC_SDK: &str = "2.14.0";

async fn sh(c: &Client, id: &str, cmd: &str) -> ExecResponse {
    c.exec(id, &ExecRequest { command: json!(cmd), timeout: Some(300), ..Default::default() }).await.unwrap()
}

/// A venv with the official SDKs (created once, reused; keyed by version).
fn pyenv() -> PathBuf {
    let dir = PathBuf::from(format!("/var/cache/rigbox/pyenv-ai-openai{OPENAI_SDK}-anthropic{ANTHROPIC_SDK}"));
    let py = dir.join("bin/python");
    let ok = |py: &Path| std::process::Command::new(py).args(["-c", "import openai, anthropic"]).status().is_ok_and(|s| s.success());
    if !ok(&py) {
        let _ = std::fs::remove_dir_all(&dir);
        let st = std::process::Command::new("python3").args(["-m", "venv"]).arg(&dir).status().unwrap();
        assert!(st.success(), "python3 -m venv failed");
        let st = std::process::Command::new(dir.join("bin/pip"))
            .args(["install", "-q", &format!("openai=={OPENAI_SDK}"), &format!("anthropic=={ANTHROPIC_SDK}")])
            .status()
            .unwrap();
        assert!(st.success(), "pip install of the SDKs failed");
        assert!(ok(&py));
    }
    py
}

/// Runs a Python script inside the workspace's namespace (traffic only to
/// 169.254.0.1 there) and parses its JSON output.
fn python_in_slot(py: &Path, netns: &str, script: &str) -> Value {
    let f = std::env::temp_dir().join(format!("rigbox-ai-{}-{}.py", std::process::id(), rand_suffix()));
    std::fs::write(&f, script).unwrap();
    let out = std::process::Command::new("ip").args(["netns", "exec", netns]).arg(py).arg(&f).output().unwrap();
    let _ = std::fs::remove_file(&f);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "python failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn curl_json(path: &str, body: &Value, extra: &str) -> String {
    format!(
        "curl -sS -D /tmp/h -o /tmp/b -w '%{{http_code}}' -H 'content-type: application/json' {extra} -d '{}' http://169.254.0.1:9090{path}; echo; cat /tmp/h | tr -d '\\r'; echo ---; cat /tmp/b",
        body.to_string().replace('\'', "'\\''")
    )
}

/// (status, headers lower-cased, body) of a `curl_json` run.
fn parse_curl(out: &str) -> (u16, Vec<(String, String)>, String) {
    let (head, body) = out.split_once("\n---\n").unwrap_or((out, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap_or("0").trim().parse().unwrap_or(0);
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    (status, headers, body.to_string())
}

fn header<'a>(h: &'a [(String, String)], k: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_ai_proxy_meters_streams_byok_and_never_leaks_keys() {
    if !is_root() {
        eprintln!("SKIP: VM tests need root");
        return;
    }
    let t0 = Instant::now();
    let fake = FakeProvider::start().await.unwrap();
    let ups = fake.upstreams();
    let t = TestPlatform::start_with(&["base"], move |s| s.ai.upstreams = ups).await.unwrap();
    let st = t.p().control.state.clone();
    let admin = t.admin();
    let http = reqwest::Client::new();
    let api = |p: &str| format!("{}/api/v1{p}", t.url());
    let mut seen_text: Vec<String> = Vec::new();

    // Operator configuration: keys (sealed), prices.
    for (p, k) in OPERATOR_KEYS {
        let r: Value = admin.send(reqwest::Method::PUT, &format!("/admin/ai/providers/{p}"), &json!({"api_key": k})).await.unwrap();
        assert_eq!(r["configured"], true);
    }
    let providers: Value = admin.get("/admin/ai/providers").await.unwrap();
    assert!(!providers.to_string().contains("sk-operator"), "keys are never shown");
    let table = json!({
        "credits_per_usd": 100.0,
        "default_max_tokens": 100,
        "aliases": {"rigbox/default": "openai/gpt-test", "rigbox/fast": "anthropic/claude-test"},
        "models": {
            "openai/gpt-test": {"input": 1.0, "output": 2.0},
            "openai/text-embedding-test": {"input": 0.1, "output": 0.0},
            "anthropic/claude-test*": {"input": 3.0, "output": 4.0},
            "google/gemini-test": {"input": 0.5, "output": 1.5}
        }
    });
    let _: Value = admin.send(reqwest::Method::PUT, "/admin/ai/prices", &table).await.unwrap();
    // micro-credits per token: input, output.
    let price = |model: &str| -> (i64, i64) {
        match model {
            m if m.contains("gpt-test") => (100, 200),
            m if m.contains("embedding") => (10, 0),
            m if m.contains("claude") => (300, 400),
            _ => (50, 150),
        }
    };
    let cost = |model: &str, i: i64, o: i64| price(model).0 * i + price(model).1 * o;

    let (alice, _) = t.user("alice@example.test").await.unwrap();
    let uid = alice.me().await.unwrap().id;
    let _: Value = admin.send(reqwest::Method::POST, &format!("/admin/users/{uid}/credits"), &json!({"credits": 50})).await.unwrap();
    let credits: Value = alice.get("/users/me/credits").await.unwrap();
    reference::assert_matches("AiCredits", &credits);
    assert_eq!(credits["remaining_micro"], 50_000_000);
    let wallet = || async { st.store().wallet(&uid).await.unwrap() };

    let w = alice
        .create_workspace(&CreateWorkspaceRequest { name: "ai-box".into(), env_vars: Some([("MYVAR".into(), "mine".into())].into()), ..Default::default() })
        .await
        .unwrap();
    let id = w.vm.id.clone();
    alice.action(&id, "start").await.unwrap();
    let w = alice.wait_settled(&id, BOOT, |_| {}).await.unwrap();
    assert_eq!(w.vm.status, "running", "{:?}", w.failure);
    let netns = format!("rbx-{}-{id}", t.p().node.node.id());
    eprintln!("running after {:?}", t0.elapsed());

    // Managed environment, merged with the user's.
    let env = wait_until(Duration::from_secs(120), "the AI environment in the guest", || async {
        let r = sh(&alice, &id, "printenv OPENAI_BASE_URL ANTHROPIC_BASE_URL OPENROUTER_BASE_URL OPENAI_API_KEY MYVAR").await;
        (r.exit_code == Some(0)).then_some(r.stdout)
    })
    .await
    .unwrap();
    assert_eq!(
        env.lines().collect::<Vec<_>>(),
        ["http://169.254.0.1:9090/v1", "http://169.254.0.1:9090", "http://169.254.0.1:9090/v1", "managed-by-rigbox", "mine"]
    );
    // A later env change by the user keeps the AI variables.
    alice.set_env(&id, [("OTHER".to_string(), Some("x".to_string()))].into()).await.unwrap();
    let r = sh(&alice, &id, "printenv OTHER MYVAR OPENAI_BASE_URL").await;
    assert_eq!(r.stdout.lines().collect::<Vec<_>>(), ["x", "mine", "http://169.254.0.1:9090/v1"]);

    // 1. OpenAI chat from the guest: charged exactly, key injected upstream.
    let before = wallet().await;
    let body = json!({"model": "rigbox/default", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5});
    let out = sh(&alice, &id, &curl_json("/v1/chat/completions", &body, "-H 'Authorization: Bearer managed-by-rigbox'")).await.stdout;
    seen_text.push(out.clone());
    let (status, h, b) = parse_curl(&out);
    assert_eq!(status, 200, "{out}");
    let v: Value = serde_json::from_str(&b).unwrap();
    let (i, o) = (v["usage"]["prompt_tokens"].as_i64().unwrap(), v["usage"]["completion_tokens"].as_i64().unwrap());
    assert_eq!((i, o), (3, 5));
    let c = cost("gpt-test", i, o);
    assert_eq!(header(&h, "x-rigbox-cost-micro"), Some(c.to_string().as_str()));
    assert_eq!(header(&h, "x-rigbox-cost-credits").unwrap().parse::<f64>().unwrap(), c as f64 / 1e6);
    assert_eq!(v["usage"]["cost_micro"], c);
    let after = wallet().await;
    assert_eq!(before.available_micro() - after.available_micro(), c);
    assert_eq!(after.held_micro, 0);
    let last = fake.seen().pop().unwrap();
    assert_eq!(last.provider, "openai");
    assert_eq!(last.authorization.as_deref(), Some("Bearer sk-operator-openai-5ecret"));
    assert_eq!(last.body["model"], "gpt-test", "the alias resolved to the provider's name");

    // 2. Streaming from the guest arrives incrementally and is charged.
    let before = wallet().await;
    let body = json!({"model": "rigbox/default", "stream": true, "messages": [{"role": "user", "content": "slow words=6"}]});
    let cmd = format!(
        "curl -sN -H 'content-type: application/json' -d '{body}' http://169.254.0.1:9090/v1/chat/completions | while IFS= read -r l; do [ -n \"$l\" ] && echo \"$(date +%s%3N) $l\"; done"
    );
    let out = sh(&alice, &id, &cmd).await.stdout;
    seen_text.push(out.clone());
    let lines: Vec<(i64, String)> = out.lines().filter_map(|l| l.split_once(' ')).map(|(t, l)| (t.parse().unwrap(), l.to_string())).collect();
    let data: Vec<&(i64, String)> = lines.iter().filter(|(_, l)| l.starts_with("data: ")).collect();
    let spread = data.last().unwrap().0 - data.first().unwrap().0;
    assert!(spread >= 700, "chunks must arrive as they are produced (spread {spread} ms): {out}");
    let usage_chunk: Value = data.iter().filter_map(|(_, l)| serde_json::from_str::<Value>(&l[6..]).ok()).find(|v| v["usage"].is_object()).expect("usage chunk");
    let (i, o) = (usage_chunk["usage"]["prompt_tokens"].as_i64().unwrap(), usage_chunk["usage"]["completion_tokens"].as_i64().unwrap());
    assert_eq!(o, 6);
    let c = cost("gpt-test", i, o);
    assert_eq!(usage_chunk["usage"]["cost_micro"], c, "settled cost in the usage chunk");
    let comment = lines.iter().find(|(_, l)| l.starts_with(": rigbox-cost ")).expect("final cost comment");
    let cv: Value = serde_json::from_str(&comment.1[": rigbox-cost ".len()..]).unwrap();
    assert_eq!(cv["cost_micro"], c);
    assert_eq!(fake.seen().pop().unwrap().body["stream_options"]["include_usage"], true);
    // Settlement happens as the stream ends.
    let after = wallet().await;
    assert_eq!(before.available_micro() - after.available_micro(), c);
    let req_id = cv["request_id"].as_str().unwrap().to_string();
    let r = sh(&alice, &id, &format!("curl -s http://169.254.0.1:9090/rig/v1/usage/requests/{req_id}")).await.stdout;
    let rv: Value = serde_json::from_str(&r).unwrap();
    assert_eq!((rv["status"].as_str(), rv["cost_micro"].as_i64()), (Some("settled"), Some(c)));

    // 3. Anthropic messages (plain and streamed) and Gemini, natively.
    let before = wallet().await;
    let body = json!({"model": "claude-test-1", "max_tokens": 7, "messages": [{"role": "user", "content": "hi claude"}]});
    let out = sh(&alice, &id, &curl_json("/v1/messages", &body, "-H 'x-api-key: managed-by-rigbox' -H 'anthropic-version: 2023-06-01'")).await.stdout;
    let (status, h, b) = parse_curl(&out);
    assert_eq!(status, 200, "{out}");
    let v: Value = serde_json::from_str(&b).unwrap();
    let ca = cost("claude", v["usage"]["input_tokens"].as_i64().unwrap(), v["usage"]["output_tokens"].as_i64().unwrap());
    assert_eq!(header(&h, "x-rigbox-cost-micro"), Some(ca.to_string().as_str()));
    let last = fake.seen().pop().unwrap();
    assert_eq!((last.provider.as_str(), last.x_api_key.as_deref()), ("anthropic", Some("sk-operator-anthropic-5ecret")));
    assert_eq!(last.body["model"], "claude-test-1");
    let body = json!({"model": "rigbox/fast", "max_tokens": 50, "stream": true, "messages": [{"role": "user", "content": "words=4"}]});
    let out = sh(&alice, &id, &format!("curl -sN -H 'content-type: application/json' -d '{body}' http://169.254.0.1:9090/v1/messages")).await.stdout;
    assert!(out.contains("event: message_stop") && out.contains(": rigbox-cost "), "{out}");
    let comment: Value = serde_json::from_str(out.lines().find(|l| l.starts_with(": rigbox-cost ")).unwrap().trim_start_matches(": rigbox-cost ")).unwrap();
    let cs = cost("claude", comment["input_tokens"].as_i64().unwrap(), comment["output_tokens"].as_i64().unwrap());
    assert_eq!(comment["output_tokens"], 4);
    assert_eq!(comment["cost_micro"], cs);
    let body = json!({"contents": [{"parts": [{"text": "hello gemini"}]}], "generationConfig": {"maxOutputTokens": 3}});
    let out = sh(&alice, &id, &curl_json("/v1beta/models/gemini-test:generateContent", &body, "")).await.stdout;
    let (status, h, b) = parse_curl(&out);
    assert_eq!(status, 200, "{out}");
    let v: Value = serde_json::from_str(&b).unwrap();
    let cg = cost("gemini", v["usageMetadata"]["promptTokenCount"].as_i64().unwrap(), v["usageMetadata"]["candidatesTokenCount"].as_i64().unwrap());
    assert_eq!(header(&h, "x-rigbox-cost-micro"), Some(cg.to_string().as_str()));
    assert_eq!(fake.seen().pop().unwrap().goog_api_key.as_deref(), Some("sk-operator-google-5ecret"));
    let out = sh(&alice, &id, &format!("curl -sN -H 'content-type: application/json' -d '{body}' 'http://169.254.0.1:9090/v1beta/models/gemini-test:streamGenerateContent?alt=sse'")).await.stdout;
    let comment: Value = serde_json::from_str(out.lines().find(|l| l.starts_with(": rigbox-cost ")).expect("gemini stream cost").trim_start_matches(": rigbox-cost ")).unwrap();
    let cgs = comment["cost_micro"].as_i64().unwrap();
    assert_eq!(cgs, cost("gemini", comment["input_tokens"].as_i64().unwrap(), 3));
    assert_eq!(before.available_micro() - wallet().await.available_micro(), ca + cs + cg + cgs);

    // 4. A guest forging identity headers is still itself; no path escapes.
    let body = json!({"model": "rigbox/default", "messages": [{"role": "user", "content": "forged"}], "max_tokens": 1});
    let forged = "-H 'X-Rigbox-Workspace: ws-forged' -H 'X-Rigbox-Node: node-forged' -H 'X-Rigbox-Ai-Path: /rig/v1/usage' -H 'Authorization: Bearer rbn_forged'";
    let out = sh(&alice, &id, &curl_json("/v1/chat/completions", &body, forged)).await.stdout;
    let (status, h, _) = parse_curl(&out);
    assert_eq!(status, 200, "{out}");
    let row = st.store().ai_request(header(&h, "x-rigbox-request-id").unwrap()).await.unwrap();
    assert_eq!((row.workspace_id.as_str(), row.user_id.as_str()), (id.as_str(), uid.as_str()));
    let last = fake.seen().pop().unwrap();
    assert!(last.headers.iter().all(|(k, v)| !k.starts_with("x-rigbox") && !v.contains("forged")), "{:?}", last.headers);
    for bad in ["/v1/../internal/v1/ai/workspaces/x/env", "/internal/v1/ai/proxy", "/api/v1/users/me", "/v1/%2e%2e/x"] {
        let code = sh(&alice, &id, &format!("curl --path-as-is -s -o /dev/null -w '%{{http_code}}' 'http://169.254.0.1:9090{bad}'")).await.stdout;
        assert_eq!(code, "404", "{bad}");
    }

    // 5. Upstream errors release without charge; a refused platform key is
    // not echoed; a broken stream keeps its hold for reconciliation.
    let before = wallet().await;
    let out = sh(&alice, &id, &curl_json("/v1/chat/completions", &json!({"model": "rigbox/default", "messages": [{"role": "user", "content": "fail"}]}), "")).await.stdout;
    assert_eq!(parse_curl(&out).0, 500, "{out}");
    let out = sh(&alice, &id, &curl_json("/v1/chat/completions", &json!({"model": "rigbox/default", "messages": [{"role": "user", "content": "denied"}]}), "")).await.stdout;
    seen_text.push(out.clone());
    let (status, _, b) = parse_curl(&out);
    assert_eq!(status, 502, "{out}");
    assert!(b.contains("provider_auth_failed"));
    assert_eq!(wallet().await, before, "failed calls cost nothing");
    let out = sh(&alice, &id, &curl_json("/v1/chat/completions", &json!({"model": "unpriced-model/x", "messages": []}), "")).await.stdout;
    assert_eq!(parse_curl(&out).0, 400, "{out}");
    let out = sh(&alice, &id, "curl -sN -H 'content-type: application/json' -d '{\"model\":\"rigbox/default\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"slow break\"}]}' http://169.254.0.1:9090/v1/chat/completions; echo \" exit=$?\"").await.stdout;
    assert!(!out.contains("exit=0"), "a broken stream must not look complete: {out}");
    let holds = wait_until(Duration::from_secs(10), "the broken hold", || async {
        let h: Value = admin.get("/admin/ai/holds").await.ok()?;
        let list = h["holds"].as_array()?.clone();
        (!list.is_empty()).then_some(list)
    })
    .await
    .unwrap();
    assert_eq!(holds.len(), 1);
    assert_eq!(holds[0]["status"], "broken");
    let hold = holds[0]["hold_micro"].as_i64().unwrap();
    assert!(hold > 0);
    assert_eq!(wallet().await.held_micro, hold, "kept for reconciliation");
    let _: Value = admin.call(reqwest::Method::POST, &format!("/admin/ai/holds/{}/release", holds[0]["id"].as_str().unwrap())).await.unwrap();
    assert_eq!(wallet().await, before);

    // 6. Per-subject controls.
    let sub = |extra: &str| curl_json("/v1/chat/completions", &json!({"model": "rigbox/default", "messages": [{"role": "user", "content": "s"}], "max_tokens": 1}), extra);
    let rate = "-H 'X-Rigbox-Subject: tenant-a' -H 'X-Rigbox-Subject-Rate: 2req;window=60s'";
    assert_eq!(parse_curl(&sh(&alice, &id, &sub(rate)).await.stdout).0, 200);
    assert_eq!(parse_curl(&sh(&alice, &id, &sub(rate)).await.stdout).0, 200);
    let out = sh(&alice, &id, &sub(rate)).await.stdout;
    let (status, h, b) = parse_curl(&out);
    assert_eq!(status, 429, "{out}");
    assert!(b.contains("subject_rate_limited"));
    assert!(header(&h, "retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    let out = sh(&alice, &id, &sub("-H 'X-Rigbox-Subject: tenant-b' -H 'X-Rigbox-Subject-Budget: 0.000001;period=1h'")).await.stdout;
    let (status, _, b) = parse_curl(&out);
    assert_eq!(status, 402, "{out}");
    assert!(b.contains("subject_over_budget"));
    let out = sh(&alice, &id, &sub("-H 'X-Rigbox-Subject: tenant-b' -H 'X-Rigbox-Subject-Budget: lots'")).await.stdout;
    assert!(parse_curl(&out).2.contains("subject_limit_malformed"), "{out}");
    let u: Value = serde_json::from_str(&sh(&alice, &id, "curl -s 'http://169.254.0.1:9090/rig/v1/usage?subject=tenant-a&window=15m'").await.stdout).unwrap();
    assert_eq!((u["subject"].as_str(), u["requests"].as_i64(), u["window_seconds"].as_i64()), (Some("tenant-a"), Some(2), Some(900)));
    assert_eq!(sh(&alice, &id, "curl -s -o /dev/null -w '%{http_code}' 'http://169.254.0.1:9090/rig/v1/usage?window=15m'").await.stdout, "400");

    // 7. The official SDKs, run inside the workspace's namespace.
    let py = pyenv();
    let before = wallet().await;
    let r = python_in_slot(
        &py,
        &netns,
        r#"
import json, time, openai, anthropic
out = {}
c = openai.OpenAI(base_url="http://169.254.0.1:9090/v1", api_key="managed-by-rigbox", max_retries=0)
raw = c.chat.completions.with_raw_response.create(model="rigbox/default", messages=[{"role": "user", "content": "hi from the sdk"}], max_tokens=4)
comp = raw.parse()
out["cost_header"] = int(raw.headers.get("x-rigbox-cost-micro"))
out["text"] = comp.choices[0].message.content
out["usage"] = [comp.usage.prompt_tokens, comp.usage.completion_tokens]
t0 = time.time(); times = []; text = ""; usage = None
for ch in c.chat.completions.create(model="rigbox/default", messages=[{"role": "user", "content": "slow words=6"}], stream=True):
    times.append(time.time() - t0)
    if ch.choices and ch.choices[0].delta.content:
        text += ch.choices[0].delta.content
    if ch.usage:
        usage = [ch.usage.prompt_tokens, ch.usage.completion_tokens]
out["stream_text"] = text; out["stream_usage"] = usage; out["stream_times"] = times
e = c.embeddings.create(model="openai/text-embedding-test", input="three small words")
out["embedding"] = [len(e.data[0].embedding), e.usage.prompt_tokens]
a = anthropic.Anthropic(base_url="http://169.254.0.1:9090", api_key="managed-by-rigbox", max_retries=0)
m = a.messages.create(model="claude-test-1", max_tokens=6, messages=[{"role": "user", "content": "hello claude sdk"}])
out["claude"] = [m.content[0].text, m.usage.input_tokens, m.usage.output_tokens]
t0 = time.time(); ctimes = []; ctext = ""
with a.messages.stream(model="rigbox/fast", max_tokens=50, messages=[{"role": "user", "content": "slow words=5"}]) as s:
    for piece in s.text_stream:
        ctimes.append(time.time() - t0); ctext += piece
    fm = s.get_final_message()
out["claude_stream"] = [ctext, fm.usage.input_tokens, fm.usage.output_tokens]; out["claude_times"] = ctimes
print(json.dumps(out))
"#,
    );
    eprintln!("SDK results: {r}");
    assert_eq!(r["text"], "w1 w2 w3 w4");
    let u = |k: &str, i: usize| r[k][i].as_i64().unwrap();
    assert_eq!(r["cost_header"].as_i64().unwrap(), cost("gpt-test", u("usage", 0), u("usage", 1)));
    assert_eq!(r["stream_text"], "w1 w2 w3 w4 w5 w6");
    let times: Vec<f64> = r["stream_times"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert!(times.last().unwrap() - times.first().unwrap() >= 0.6, "the SDK saw the stream arrive incrementally: {times:?}");
    let ctimes: Vec<f64> = r["claude_times"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert!(ctimes.last().unwrap() - ctimes.first().unwrap() >= 0.45, "{ctimes:?}");
    assert_eq!(r["claude_stream"][0], "w1 w2 w3 w4 w5");
    assert_eq!(r["embedding"][0], 3);
    let expected = cost("gpt-test", u("usage", 0), u("usage", 1))
        + cost("gpt-test", u("stream_usage", 0), u("stream_usage", 1))
        + cost("embedding", u("embedding", 1), 0)
        + cost("claude", u("claude", 1), u("claude", 2))
        + cost("claude", u("claude_stream", 1), u("claude_stream", 2));
    let after = wallet().await;
    if before.available_micro() - after.available_micro() != expected {
        let ledger: Value = alice.get("/users/me/ai-ledger?limit=12").await.unwrap();
        eprintln!("ledger: {ledger:#}");
    }
    assert_eq!(before.available_micro() - after.available_micro(), expected, "SDK calls charged exactly");
    assert_eq!(after.held_micro, 0);

    // 8. 50 concurrent calls against a balance for 10 never overspend.
    let one: Value = python_in_slot(
        &py,
        &netns,
        r#"
import json, openai
c = openai.OpenAI(base_url="http://169.254.0.1:9090/v1", api_key="managed-by-rigbox", max_retries=0)
r = c.chat.completions.with_raw_response.create(model="rigbox/default", messages=[{"role": "user", "content": "go"}], max_tokens=5)
print(json.dumps(int(r.headers.get("x-rigbox-cost-micro"))))
"#,
    );
    let per_call = one.as_i64().unwrap();
    let target = 10 * per_call;
    let cur = wallet().await.available_micro();
    let _: Value = admin.send(reqwest::Method::POST, &format!("/admin/users/{uid}/credits"), &json!({"credits_micro": target - cur})).await.unwrap();
    assert_eq!(wallet().await.available_micro(), target);
    let res = python_in_slot(
        &py,
        &netns,
        r#"
import json, concurrent.futures, openai
c = openai.OpenAI(base_url="http://169.254.0.1:9090/v1", api_key="managed-by-rigbox", max_retries=0)
def one(i):
    try:
        r = c.chat.completions.with_raw_response.create(model="rigbox/default", messages=[{"role": "user", "content": "go"}], max_tokens=5)
        return ["ok", int(r.headers.get("x-rigbox-cost-micro"))]
    except openai.APIStatusError as e:
        return ["err", e.status_code, getattr(e, "code", None)]
with concurrent.futures.ThreadPoolExecutor(50) as ex:
    print(json.dumps(list(ex.map(one, range(50)))))
"#,
    );
    let res = res.as_array().unwrap();
    let ok = res.iter().filter(|r| r[0] == "ok").count() as i64;
    let refused = res.iter().filter(|r| r[0] == "err" && r[1] == 402 && r[2] == "insufficient_credits").count() as i64;
    eprintln!("concurrency: {ok} succeeded, {refused} refused with 402");
    assert_eq!(ok + refused, 50, "{res:?}");
    assert!((1..=10).contains(&ok), "{ok} calls succeeded against a balance for 10");
    let w = wallet().await;
    assert_eq!(w.held_micro, 0);
    assert_eq!(w.available_micro(), target - ok * per_call, "charged exactly what succeeded");
    assert!(w.available_micro() >= 0, "never overspent");
    let ledger = st.store().ledger(&uid, 100_000).await.unwrap();
    assert_eq!(ledger.iter().map(|e| e.amount_micro).sum::<i64>(), w.available_micro(), "the ledger adds up");

    // 9. Out of credits: 402 on new calls; everything else keeps working.
    let cur = wallet().await.available_micro();
    let _: Value = admin.send(reqwest::Method::POST, &format!("/admin/users/{uid}/credits"), &json!({"credits_micro": -cur})).await.unwrap();
    let out = sh(&alice, &id, &curl_json("/v1/chat/completions", &json!({"model": "rigbox/default", "messages": [{"role": "user", "content": "x"}]}), "")).await.stdout;
    let (status, _, b) = parse_curl(&out);
    assert_eq!(status, 402, "{out}");
    assert!(b.contains("insufficient_credits") && b.contains("rigbox_gateway_error"));
    assert_eq!(sh(&alice, &id, "echo still-working").await.stdout.trim(), "still-working");
    let models: Value = serde_json::from_str(&sh(&alice, &id, "curl -s http://169.254.0.1:9090/v1/models").await.stdout).unwrap();
    assert!(models["data"].as_array().unwrap().iter().any(|m| m["id"] == "rigbox/default"));

    // 10. BYOK: strict config, key injected as env, calls carry it upstream, no charge.
    let r = http.put(api(&format!("/workspaces/{id}/ai-config"))).bearer_auth(alice.key().unwrap()).json(&json!({"mode": "byok", "colour": "x"})).send().await.unwrap();
    assert_eq!(r.status(), 400, "unknown fields are refused");
    let cfg: Value = alice
        .send(reqwest::Method::PUT, &format!("/workspaces/{id}/ai-config"), &json!({"mode": "byok", "provider": "openai", "model": "openai/gpt-test", "api_key": BYOK_KEY}))
        .await
        .unwrap();
    reference::assert_matches("WorkspaceAiConfigResponse", &cfg);
    assert_eq!((cfg["mode"].as_str(), cfg["status"].as_str()), (Some("byok"), Some("byok_active")));
    assert!(!cfg.to_string().contains(BYOK_KEY), "the key is write-only");
    let cfg: Value = alice.send(reqwest::Method::PUT, &format!("/workspaces/{id}/ai-config"), &json!({"model": "openai/gpt-test"})).await.unwrap();
    assert_eq!(cfg["status"], "byok_active", "omitted fields are kept");
    let mode: Value = alice.get(&format!("/workspaces/{id}/mode")).await.unwrap();
    reference::assert_matches("WorkspaceAiModeResponse", &mode);
    assert_eq!((mode["mode"].as_str(), mode["source"].as_str()), (Some("byok"), Some("workspace")));
    wait_until(Duration::from_secs(60), "the BYOK key in the guest's environment", || async {
        let r = sh(&alice, &id, "printenv OPENAI_API_KEY RIGBOX_AI_MODE MYVAR").await;
        (r.stdout.lines().collect::<Vec<_>>() == [BYOK_KEY, "byok", "mine"]).then_some(())
    })
    .await
    .unwrap();
    let before = wallet().await;
    let body = json!({"model": "openai/gpt-test", "messages": [{"role": "user", "content": "byok call"}], "max_tokens": 3});
    let out = sh(&alice, &id, &curl_json("/v1/chat/completions", &body, "-H \"Authorization: Bearer $OPENAI_API_KEY\"")).await.stdout;
    let (status, h, _) = parse_curl(&out);
    assert_eq!(status, 200, "BYOK works with an empty wallet: {out}");
    assert_eq!(header(&h, "x-rigbox-cost-micro"), Some("0"));
    let last = fake.seen().pop().unwrap();
    assert_eq!(last.authorization.as_deref(), Some(format!("Bearer {BYOK_KEY}").as_str()), "the user's key went upstream");
    let row = st.store().ai_request(header(&h, "x-rigbox-request-id").unwrap()).await.unwrap();
    assert_eq!((row.mode.as_str(), row.cost_micro, row.input_tokens > 0), ("byok", 0, true), "recorded, not charged");
    assert_eq!(wallet().await, before);
    let out = sh(&alice, &id, &curl_json("/v1/messages", &json!({"model": "claude-test-1", "max_tokens": 3, "messages": []}), "")).await.stdout;
    assert!(parse_curl(&out).2.contains("byok_provider_mismatch"), "{out}");
    // Clearing the override goes back to managed (and its environment).
    let mode: Value = alice.send(reqwest::Method::PUT, &format!("/workspaces/{id}/mode"), &json!({"mode": null})).await.unwrap();
    assert_eq!((mode["mode"].as_str(), mode["source"].as_str()), (Some("managed"), Some("user_default")));
    wait_until(Duration::from_secs(60), "the managed environment again", || async {
        (sh(&alice, &id, "printenv OPENAI_API_KEY").await.stdout.trim() == "managed-by-rigbox").then_some(())
    })
    .await
    .unwrap();
    let cfg: Value = alice.send(reqwest::Method::PUT, &format!("/workspaces/{id}/ai-config"), &json!({"mode": "byok", "api_key": null})).await.unwrap();
    assert_eq!(cfg["status"], "invalid_missing_key", "null clears the key");
    let _: Value = alice.send(reqwest::Method::PUT, &format!("/workspaces/{id}/ai-config"), &json!({"mode": null})).await.unwrap();

    // 11. Usage analytics match the reference shapes.
    let usage: Value = alice.get("/users/me/ai-usage").await.unwrap();
    reference::assert_matches("GetAiUsageResponse", &usage);
    let ws_total = usage["by_workspace"].as_array().unwrap().iter().find(|w| w["workspace_id"] == id.as_str()).unwrap().clone();
    assert_eq!(ws_total["workspace_name"], "ai-box");
    assert!(ws_total["requests"].as_i64().unwrap() >= 20);
    for range in ["1h", "6h", "24h", "7d"] {
        let m: Value = alice.get(&format!("/users/me/ai-usage/metrics?range={range}")).await.unwrap();
        reference::assert_matches("AiUsageMetricsResponse", &m);
        let s: Value = alice.get(&format!("/workspaces/{id}/ai-usage/metrics/summary?range={range}")).await.unwrap();
        reference::assert_matches("AiUsageMetricsSummaryResponse", &s);
        assert_eq!(s["total_requests"], ws_total["requests"]);
        let sum: f64 = m["series"]["requests"].as_array().unwrap().iter().map(|p| p["v"].as_f64().unwrap()).sum();
        assert_eq!(sum as i64, ws_total["requests"].as_i64().unwrap(), "{range}");
    }
    let m: Value = alice.get(&format!("/workspaces/{id}/ai-usage/metrics?range=1h")).await.unwrap();
    assert_eq!(m["workspace_id"], id.as_str());
    let s: Value = alice.get("/users/me/ai-usage/metrics/summary").await.unwrap();
    assert_eq!(s["total_credits_micro"], ws_total["credits_micro"]);
    assert_eq!(alice.get::<Value>("/users/me/ai-usage/metrics?range=2d").await.unwrap_err().status(), Some(400));
    let d: Value = alice.send(reqwest::Method::PUT, "/users/me/ai-defaults", &json!({"default_provider": "google"})).await.unwrap();
    reference::assert_matches("GetAiDefaultsResponse", &d);
    assert_eq!((d["default_provider"].as_str(), d["default_mode"].as_str()), (Some("google"), Some("managed")));
    let r = http.put(api("/users/me/ai-defaults")).bearer_auth(alice.key().unwrap()).json(&json!({"api_key": "x"})).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let c: Value = alice.send(reqwest::Method::PUT, "/users/me/ai-mode", &json!({"mode": "managed"})).await.unwrap();
    reference::assert_matches("AiCredits", &c);

    // 12. The operator's keys never reached the guest, the node, a file or a response.
    let r = sh(&alice, &id, "env | grep -c sk-operator; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c sk-operator; grep -rIl sk-operator /etc /home /root /tmp /var/tmp /run /opt 2>/dev/null | wc -l").await;
    assert_eq!(r.stdout.split_whitespace().collect::<Vec<_>>(), ["0", "0", "0"], "{r:?}");
    let mut files = vec![t.dir.path().to_path_buf()];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        } else if p.is_file() && std::fs::metadata(&p).map(|m| m.len() < 64 << 20).unwrap_or(false) {
            let data = std::fs::read(&p).unwrap_or_default();
            for (_, k) in OPERATOR_KEYS {
                assert!(!data.windows(k.len()).any(|w| w == k.as_bytes()), "{} holds a provider key in clear", p.display());
            }
        }
    }
    for text in &seen_text {
        assert!(!text.contains("sk-operator"), "a response carried a provider key: {text}");
    }

    // 13. Another slot cannot reach this workspace's proxy listener.
    let other = rigbox_netns::Slot::for_workspace(&format!("aitest-{}", std::process::id())).unwrap();
    other.create().unwrap();
    let reach = other.connect("169.254.0.1:9090".parse().unwrap(), Duration::from_millis(500)).await;
    other.delete().unwrap();
    assert!(reach.is_err(), "a second slot must not reach this workspace's proxy");
    let mine = rigbox_netns::Slot::for_workspace(netns.trim_start_matches("rbx-")).unwrap();
    assert!(mine.connect("169.254.0.1:9090".parse().unwrap(), Duration::from_secs(2)).await.is_ok());

    // Stopping removes the listener with the slot.
    alice.action(&id, "stop").await.unwrap();
    let w = alice.wait_settled(&id, BOOT, |_| {}).await.unwrap();
    assert_eq!(w.vm.status, "stopped");
    eprintln!("vm_ai done in {:?}", t0.elapsed());
}
