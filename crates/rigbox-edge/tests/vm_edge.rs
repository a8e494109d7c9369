//! The edge end to end with a real VM: a web server started inside a
//! workspace is reached through the edge by its subdomain (curl, HTTP/1.1,
//! h2c, TLS with ALPN h2), with visibility enforced, WebSocket and SSE
//! passing through, a 50 MB upload streamed, health following the server,
//! expose-port wrapping a process into a systemd unit, edge metrics, and
//! the error statuses (404, 502 refused, 504 timeout, 503 stopped app,
//! 503 + Retry-After for a stopped workspace).

use futures::{SinkExt, StreamExt};
use rigbox_client::Client;
use rigbox_test_support::{is_root, reference, wait_until, TestPlatform};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// The test app: JSON echo of the request, SSE, WebSocket echo, upload
/// digest, CORS preflight, chosen statuses. Python 3 standard library only.
const SERVER_PY: &str = r#"
import sys, json, time, hashlib, base64, struct
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def body(self, code, b, ctype="application/json"):
        b = b.encode() if isinstance(b, str) else b
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def do_GET(self):
        if self.path.startswith("/sse"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(5):
                d = ("data: tick %d\n\n" % i).encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(d), d))
                self.wfile.flush()
                time.sleep(0.5)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return
        if self.path.startswith("/ws"):
            key = self.headers.get("Sec-WebSocket-Key", "")
            acc = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", acc)
            self.end_headers()
            self.wfile.flush()
            self.ws_echo()
            self.close_connection = True
            return
        if self.path.startswith("/status/"):
            code = int(self.path.split("/")[2])
            self.body(code, json.dumps({"status": code}))
            return
        self.body(200, json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}))
    def do_OPTIONS(self):
        self.send_response(204)
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Methods", "GET, POST")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_POST(self):
        h = hashlib.sha256()
        n = 0
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = size
                while left:
                    chunk = self.rfile.read(min(left, 65536))
                    if not chunk:
                        raise IOError("short chunk")
                    h.update(chunk)
                    n += len(chunk)
                    left -= len(chunk)
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
                left -= len(chunk)
        self.body(200, json.dumps({"bytes": n, "sha256": h.hexdigest()}))
    def ws_echo(self):
        r, w = self.rfile, self.wfile
        while True:
            hdr = r.read(2)
            if len(hdr) < 2:
                return
            op, ln = hdr[0] & 0x0F, hdr[1] & 0x7F
            if ln == 126:
                ln = struct.unpack(">H", r.read(2))[0]
            elif ln == 127:
                ln = struct.unpack(">Q", r.read(8))[0]
            mask = r.read(4) if hdr[1] & 0x80 else b"\0\0\0\0"
            data = bytearray(r.read(ln))
            for i in range(ln):
                data[i] ^= mask[i % 4]
            if op == 8:
                w.write(b"\x88\x00")
                w.flush()
                return
            if op == 9:
                op = 10
            if op in (1, 2, 10):
                head = bytes([0x80 | op])
                if ln < 126:
                    head += bytes([ln])
                elif ln < 65536:
                    head += bytes([126]) + struct.pack(">H", ln)
                else:
                    head += bytes([127]) + struct.pack(">Q", ln)
                w.write(head + bytes(data))
                w.flush()

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"#;

/// Accepts connections and never answers (for the 504).
const HANG_PY: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
held = []
while True:
    c, _ = s.accept()
    held.append(c)
"#;

struct Resp {
    status: u16,
    version: String,
    headers: HashMap<String, String>,
    body: String,
}

/// Runs curl with `args` (plus -sS -i) and parses the answer.
fn curl(args: &[&str]) -> Resp {
    let out = std::process::Command::new("curl").args(["-sS", "-i", "--max-time", "60"]).args(args).output().expect("curl runs");
    assert!(out.status.success(), "curl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default().to_string();
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    Resp { status, version, headers, body: body.to_string() }
}

/// The base domain of the test platform (a wildcard certificate for a
/// single-label name like `*.localhost` is refused by OpenSSL's curl).
const BASE: &str = "rigbox.test";

struct Edge {
    port: u16,
}

impl Edge {
    fn resolve(&self, sub: &str) -> String {
        format!("{sub}.{BASE}:{}:127.0.0.1", self.port)
    }
    fn url(&self, sub: &str, path: &str) -> String {
        format!("http://{sub}.{BASE}:{}{path}", self.port)
    }
    /// `curl` against app `sub` with extra args.
    fn get(&self, sub: &str, path: &str, extra: &[&str]) -> Resp {
        let r = self.resolve(sub);
        let u = self.url(sub, path);
        let mut args: Vec<&str> = vec!["--resolve", &r];
        args.extend_from_slice(extra);
        args.push(&u);
        curl(&args)
    }
}

async fn exec(c: &Client, ws: &str, cmd: &str, user: &str) -> rigbox_client::views::ExecResponse {
    let r = c
        .exec(ws, &rigbox_client::views::ExecRequest { command: json!(cmd), user: Some(user.into()), timeout: Some(120), ..Default::default() })
        .await
        .expect("exec");
    assert_eq!(r.exit_code, Some(0), "{cmd}: {} {}", r.stdout, r.stderr);
    r
}

async fn api(c: &Client, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = c.request(method, path);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.expect("API reachable");
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(Value::Null))
}

fn vm_hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()))
        .unwrap_or(0)
}

fn test_ca(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Rigbox edge test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![format!("*.{BASE}"), BASE.to_string()]).unwrap().signed_by(&leaf_key, &issuer).unwrap();
    let (ca, cert, key) = (dir.join("ca.pem"), dir.join("edge.pem"), dir.join("edge.key"));
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    (ca, cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_edge_end_to_end() {
    if !is_root() {
        eprintln!("SKIP: needs root (VMs, network namespaces)");
        return;
    }
    let t0 = Instant::now();
    let certs = tempfile::tempdir().unwrap();
    let (ca_pem, cert_pem, key_pem) = test_ca(certs.path());
    let t = TestPlatform::start_with(&["base"], |s| {
        s.base_domain = BASE.into();
        s.edge_upstream_timeout_secs = 3;
        s.edge_tls_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        s.edge_tls_cert = Some(cert_pem.clone());
        s.edge_tls_key = Some(key_pem.clone());
    })
    .await
    .unwrap();
    let eh = t.p().edge.as_ref().expect("edge role runs");
    let edge = Edge { port: eh.addr.port() };
    let tls_port = eh.tls_addr.expect("TLS listener").port();
    let (owner, owner_key) = t.user("owner@edge.test").await.unwrap();
    let (friend, friend_key) = t.user("friend@edge.test").await.unwrap();
    let (_stranger, stranger_key) = t.user("stranger@edge.test").await.unwrap();

    // A workspace with three servers: the test app (a systemd unit), a
    // process that never answers, and a plain `python3 -m http.server`.
    let w = owner
        .create_workspace(&rigbox_client::views::CreateWorkspaceRequest { name: "edgebox".into(), ..Default::default() })
        .await
        .unwrap();
    let ws = w.vm.id.clone();
    owner.action(&ws, "start").await.unwrap();
    let w = owner.wait_settled(&ws, Duration::from_secs(300), |_| {}).await.unwrap();
    assert_eq!(w.vm.status, "running", "{:?}", w.failure);
    eprintln!("workspace running after {:?}", t0.elapsed());
    owner.upload(&ws, "/home/developer/srv.py", SERVER_PY.to_string()).await.unwrap();
    owner.upload(&ws, "/home/developer/hang.py", HANG_PY.to_string()).await.unwrap();
    let unit = "[Unit]\nDescription=edge test app\n[Service]\nUser=developer\nExecStart=/usr/bin/python3 /home/developer/srv.py 8000\n";
    owner.upload(&ws, "/etc/systemd/system/rbx-web.service", unit.to_string()).await.unwrap();
    exec(&owner, &ws, "systemctl daemon-reload && systemctl start rbx-web", "root").await;
    exec(&owner, &ws, "systemd-run --unit=rbx-hang python3 /home/developer/hang.py 8002", "root").await;
    exec(&owner, &ws, "cd /home/developer && setsid nohup python3 -m http.server 8001 >/tmp/files.log 2>&1 </dev/null &", "developer").await;
    wait_until(Duration::from_secs(60), "the three listeners", || async {
        let (_, v) = api(&owner, reqwest::Method::GET, &format!("/workspaces/{ws}/listening-ports"), None).await;
        let ports: Vec<i64> = v["ports"].as_array()?.iter().filter_map(|p| p["port"].as_i64()).collect();
        [8000, 8001, 8002].iter().all(|p| ports.contains(p)).then_some(())
    })
    .await
    .unwrap();

    // --- The apps API.
    let (s, v) = api(&owner, reqwest::Method::POST, "/apps", Some(json!({"workspace_id": ws, "name": "web", "port": 8000}))).await;
    assert_eq!(s, 201, "{v}");
    reference::assert_matches("GetAppResponse", &v);
    let web = v["app"]["id"].as_str().unwrap().to_string();
    assert_eq!(v["app"]["visibility"], "private", "private by default");
    assert_eq!(v["app"]["service_name"], "rbx-web.service", "the unit behind the port is found");
    assert_eq!(v["app"]["url"], format!("http://web.{BASE}:{}", edge.port));
    let (s, v) = api(&friend, reqwest::Method::POST, "/apps", Some(json!({"workspace_id": ws, "name": "x", "port": 8000}))).await;
    assert_eq!(s, 404, "another user's workspace: {v}");
    let (s, v) = api(&owner, reqwest::Method::POST, "/apps", Some(json!({"workspace_id": ws, "name": "api", "port": 8000}))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("invalid_subdomain")), "reserved");
    let (s, _) = api(&owner, reqwest::Method::POST, "/apps", Some(json!({"workspace_id": ws, "name": "Bad_Name", "port": 8000}))).await;
    assert_eq!(s, 400, "not a DNS label");
    let (s, v) = api(&owner, reqwest::Method::POST, "/apps", Some(json!({"workspace_id": ws, "name": "web2", "subdomain": "web", "port": 8000}))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("subdomain_taken")), "{v}");
    let (s, v) = api(&owner, reqwest::Method::GET, &format!("/apps?workspace_id={ws}"), None).await;
    assert_eq!(s, 200);
    reference::assert_matches("ListAppsResponse", &v);
    assert_eq!(v["apps"].as_array().unwrap().len(), 1);
    let (s, v) = api(&friend, reqwest::Method::GET, &format!("/apps/{web}"), None).await;
    assert_eq!(s, 404, "others' apps are invisible: {v}");
    let (_, v) = api(&owner, reqwest::Method::GET, &format!("/workspaces/{ws}/listening-ports"), None).await;
    reference::assert_matches("ListListeningPortsResponse", &v);
    let p8000 = v["ports"].as_array().unwrap().iter().find(|p| p["port"] == 8000).unwrap().clone();
    assert_eq!(p8000["already_exposed"], true);

    // --- Reachable with curl by subdomain; private: only the owner.
    let r = edge.get("web", "/hello?x=1", &["-H", &format!("X-Rigbox-Key: {owner_key}"), "-H", "Cookie: theme=dark"]);
    assert_eq!(r.status, 200, "{}", r.body);
    let echo: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(echo["path"], "/hello?x=1");
    let h = &echo["headers"];
    assert_eq!(h["host"], format!("web.{BASE}:{}", edge.port), "Host is kept");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], format!("web.{BASE}:{}", edge.port));
    assert!(h.get("x-rigbox-key").is_none(), "the key never reaches the VM");
    assert_eq!(h["cookie"], "theme=dark");
    let r = edge.get("web", "/", &[]);
    assert_eq!((r.status, r.headers.get("x-rigbox-error").map(String::as_str)), (401, Some("unauthorized")), "no credentials");
    let r = edge.get("web", "/page", &["-H", "Accept: text/html"]);
    assert_eq!(r.status, 302, "browsers are sent to log in");
    assert_eq!(r.headers["location"], "/_rigbox/login?next=%2Fpage");
    let r = edge.get("web", "/", &["-H", &format!("X-Rigbox-Key: {stranger_key}")]);
    assert_eq!(r.status, 403, "another user's key is not enough");
    let r = edge.get("web", "/", &["-H", &format!("X-Rigbox-Key: {friend_key}")]);
    assert_eq!(r.status, 403, "not listed (and private anyway)");
    let r = edge.get("web", "/", &["-H", "X-Rigbox-Key: rb_not_a_key"]);
    assert_eq!((r.status, r.headers.get("x-rigbox-error").map(String::as_str)), (401, Some("invalid_key")));
    let r = edge.get("web", "/", &["-X", "OPTIONS", "-H", "Origin: http://elsewhere.test", "-H", "Access-Control-Request-Method: POST"]);
    assert_eq!(r.status, 204, "CORS preflights pass to the app");
    assert_eq!(r.headers["access-control-allow-origin"], "*");

    // The login flow: a form, ?key=, a host-only HttpOnly cookie.
    let r = edge.get("web", "/_rigbox/login?next=/x", &[]);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("<form") && r.body.contains("name=\"key\""));
    let r = edge.get("web", &format!("/_rigbox/login?key={owner_key}&next=/after"), &[]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.headers["location"], "/after");
    let set_cookie = r.headers["set-cookie"].clone();
    assert!(set_cookie.contains("HttpOnly") && !set_cookie.to_ascii_lowercase().contains("domain="), "{set_cookie}");
    let session = set_cookie.split(';').next().unwrap().to_string();
    let r = edge.get("web", "/after", &["-H", &format!("Cookie: {session}; theme=dark")]);
    assert_eq!(r.status, 200, "the session works: {}", r.body);
    let echo: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(echo["headers"]["cookie"], "theme=dark", "the session cookie never reaches the VM");
    let r = edge.get("web", "/", &["-H", "Cookie: __rigbox_session=u-x.k.99999999999.forged"]);
    assert_eq!(r.status, 401, "a forged cookie is no session");
    let form = format!("key={stranger_key}&next=/");
    let r = edge.get("web", "/_rigbox/login", &["--data", &form]);
    assert_eq!(r.status, 403, "strangers cannot log in to a private app");

    // Privileged: the owner and the listed emails, with keys or sessions.
    let (s, v) = api(
        &owner,
        reqwest::Method::PUT,
        &format!("/apps/{web}/visibility"),
        Some(json!({"visibility": "privileged", "allowed_emails": ["Friend@Edge.test"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    reference::assert_matches("GetAppResponse", &v);
    assert_eq!(v["app"]["allowed_emails"], json!(["friend@edge.test"]));
    assert_eq!(edge.get("web", "/", &["-H", &format!("X-Rigbox-Key: {friend_key}")]).status, 200, "listed user, next request");
    assert_eq!(edge.get("web", "/", &["-H", &format!("X-Rigbox-Key: {owner_key}")]).status, 200);
    assert_eq!(edge.get("web", "/", &["-H", &format!("X-Rigbox-Key: {stranger_key}")]).status, 403);
    assert_eq!(edge.get("web", "/", &[]).status, 401);
    let form = format!("key={friend_key}&next=/f");
    let r = edge.get("web", "/_rigbox/login", &["--data", &form]);
    assert_eq!(r.status, 303);
    let fsession = r.headers["set-cookie"].split(';').next().unwrap().to_string();
    assert_eq!(edge.get("web", "/", &["-H", &format!("Cookie: {fsession}")]).status, 200, "listed user by session");

    // Public.
    let (s, _) = api(&owner, reqwest::Method::PATCH, &format!("/apps/{web}"), Some(json!({"visibility": "public"}))).await;
    assert_eq!(s, 200);
    let r = edge.get("web", "/", &[]);
    assert_eq!(r.status, 200, "public: anyone");
    let r = edge.get("web", "/", &["--http2-prior-knowledge"]);
    assert_eq!((r.status, r.version.as_str()), (200, "HTTP/2"), "h2c with prior knowledge");
    let echo: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(echo["headers"]["host"], format!("web.{BASE}:{}", edge.port), ":authority becomes Host");

    // TLS with the test CA; ALPN picks h2.
    let ca = ca_pem.to_str().unwrap();
    let res = format!("web.{BASE}:{tls_port}:127.0.0.1");
    let u = format!("https://web.{BASE}:{tls_port}/tls");
    let r = curl(&["--cacert", ca, "--resolve", &res, &u]);
    assert_eq!((r.status, r.version.as_str()), (200, "HTTP/2"), "{}", r.body);
    let echo: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    let r = curl(&["--cacert", ca, "--http1.1", "--resolve", &res, &u]);
    assert_eq!((r.status, r.version.as_str()), (200, "HTTP/1.1"));

    // WebSocket echo through the edge.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", edge.port)).await.unwrap();
    let req = format!("ws://web.{BASE}:{}/ws", edge.port).into_client_request().unwrap();
    let (mut wsock, resp) = tokio_tungstenite::client_async(req, tcp).await.expect("WebSocket handshake through the edge");
    assert_eq!(resp.status().as_u16(), 101);
    for i in 0..3 {
        let m = format!("hello {i}");
        wsock.send(Message::Text(m.clone().into())).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(20), wsock.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(got.into_text().unwrap().as_str(), m);
    }
    let big = vec![7u8; 100_000];
    wsock.send(Message::Binary(big.clone().into())).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), wsock.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(got.into_data().as_ref(), &big[..]);
    wsock.close(None).await.unwrap();

    // SSE: events arrive as they are sent, not all at the end.
    let http = reqwest::Client::builder().resolve(&format!("web.{BASE}"), SocketAddr::from(([127, 0, 0, 1], edge.port))).build().unwrap();
    let started = Instant::now();
    let resp = http.get(edge.url("web", "/sse")).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    let mut first_at = None;
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        if first_at.is_none() && text.contains("tick 0") {
            first_at = Some(started.elapsed());
        }
    }
    let total = started.elapsed();
    assert_eq!(text.matches("data: tick").count(), 5, "{text}");
    let first_at = first_at.unwrap();
    assert!(total - first_at >= Duration::from_millis(1500), "events streamed (first at {first_at:?}, end at {total:?})");

    // 50 MB upload, streamed (chunked) through the edge without buffering.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let hwm_before = vm_hwm_kb();
    const MB: usize = 1 << 20;
    let chunks = futures::stream::iter((0..50).map(|i| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![(i % 251) as u8; MB]))));
    let started = Instant::now();
    let resp = http.post(edge.url("web", "/upload")).body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let mut expect = sha2::Sha256::new();
    for i in 0..50 {
        sha2::Digest::update(&mut expect, vec![(i % 251) as u8; MB]);
    }
    use sha2::Digest;
    assert_eq!(v["bytes"], 50 * MB);
    assert_eq!(v["sha256"], hex_of(&expect.finalize()));
    let grew_mb = vm_hwm_kb().saturating_sub(hwm_before) / 1024;
    eprintln!("50 MB upload through the edge in {:?}; peak RSS of the platform process grew by {grew_mb} MiB", started.elapsed());
    assert!(grew_mb < 40, "the upload was buffered somewhere (peak RSS +{grew_mb} MiB)");

    // --- Error statuses.
    assert_eq!(edge.get("nope", "/", &[]).status, 404, "unknown app");
    let r = edge.get("a.b", "/", &[]);
    assert_eq!(r.status, 404, "nested names");
    let apex = format!("{BASE}:{}:127.0.0.1", edge.port);
    let r = curl(&["--resolve", &apex, &format!("http://{BASE}:{}/", edge.port)]);
    assert_eq!(r.status, 404, "the base domain itself");
    for (name, port) in [("refuse", 8009), ("hang", 8002)] {
        let (s, v) = api(&owner, reqwest::Method::POST, "/apps", Some(json!({"workspace_id": ws, "name": name, "port": port, "visibility": "public"}))).await;
        assert_eq!(s, 201, "{v}");
    }
    let r = edge.get("refuse", "/", &[]);
    assert_eq!((r.status, r.headers.get("x-rigbox-error").map(String::as_str)), (502, Some("connection_refused")), "{}", r.body);
    let started = Instant::now();
    let r = edge.get("hang", "/", &[]);
    assert_eq!((r.status, r.headers.get("x-rigbox-error").map(String::as_str)), (504, Some("upstream_timeout")), "{}", r.body);
    assert!(started.elapsed() >= Duration::from_secs(3));
    let r = edge.get("web", "/status/503", &[]);
    assert_eq!((r.status, r.headers.get("x-rigbox-error")), (503, None), "the app's own 5xx passes through");
    let (s, v) = api(&owner, reqwest::Method::POST, &format!("/apps/{web}/stop"), None).await;
    assert_eq!(s, 200, "{v}");
    reference::assert_matches("ServiceActionResponse", &v);
    assert_eq!(v["service_name"], "rbx-web.service");
    let r = edge.get("web", "/", &["-H", "Accept: text/html"]);
    assert_eq!((r.status, r.headers.get("x-rigbox-error").map(String::as_str)), (503, Some("app_stopped")));
    assert!(r.body.contains("This app is stopped"));
    let (s, v) = api(&owner, reqwest::Method::POST, &format!("/apps/{web}/start"), None).await;
    assert_eq!(s, 200, "{v}");
    wait_until(Duration::from_secs(30), "web back", || async { (edge.get("web", "/", &[]).status == 200).then_some(()) }).await.unwrap();

    // --- Health follows the server.
    let (s, v) = api(&owner, reqwest::Method::GET, &format!("/apps/{web}/health"), None).await;
    assert_eq!(s, 200);
    reference::assert_matches("AppHealthResponse", &v);
    assert_eq!((v["live"].as_bool(), v["port_open"].as_bool(), v["service_status"].as_str()), (Some(true), Some(true), Some("active")), "{v}");
    exec(&owner, &ws, "systemctl stop rbx-web", "root").await;
    let v = wait_until(Duration::from_secs(30), "not live", || async {
        let (_, v) = api(&owner, reqwest::Method::GET, &format!("/apps/{web}/health"), None).await;
        (v["live"] == false).then_some(v)
    })
    .await
    .unwrap();
    assert_eq!((v["port_open"].as_bool(), v["port_drift"].as_bool()), (Some(false), Some(false)), "{v}");
    assert_ne!(v["service_status"], "active");
    let (_, v) = api(&owner, reqwest::Method::GET, &format!("/apps/{web}/health/history"), None).await;
    let events = v["events"].as_array().unwrap();
    assert!(events.len() >= 2 && events[0]["live"] == false && events.iter().any(|e| e["live"] == true), "{v}");
    let (_, v) = api(&owner, reqwest::Method::POST, &format!("/apps/{web}/restart"), None).await;
    assert!(v["message"].as_str().unwrap().contains("systemctl restart rbx-web.service"), "{v}");

    // --- expose-port: detect, then wrap into a systemd unit.
    let (s, v) = api(&owner, reqwest::Method::POST, &format!("/workspaces/{ws}/expose-port"), Some(json!({"port": 8001, "step": "detect"}))).await;
    assert_eq!(s, 200, "{v}");
    reference::assert_matches("ExposePortResponse", &v);
    assert_eq!(v["is_systemd"], false, "{v}");
    assert!(v["command"].as_str().unwrap().contains("http.server 8001"));
    assert_eq!(v["cwd"], "/home/developer");
    let pid = v["pid"].as_i64().unwrap();
    let (s, v) = api(&owner, reqwest::Method::POST, &format!("/workspaces/{ws}/expose-port"), Some(json!({"port": 8001, "step": "wrap", "name": "files"}))).await;
    assert_eq!(s, 200, "{v}");
    reference::assert_matches("ExposePortResponse", &v);
    assert_eq!((v["service_name"].as_str(), v["needs_restart"].as_bool()), (Some("rigbox-app-files.service"), Some(true)));
    let files = v["app"]["id"].as_str().unwrap().to_string();
    let r = exec(&owner, &ws, "systemctl is-enabled rigbox-app-files.service; cat /etc/systemd/system/rigbox-app-files.service", "root").await;
    assert!(r.stdout.starts_with("enabled") && r.stdout.contains("User=developer"), "{}", r.stdout);
    let (s, v) = api(&owner, reqwest::Method::POST, &format!("/apps/{files}/restart"), None).await;
    assert_eq!(s, 200, "{v}");
    let r = exec(&owner, &ws, &format!("systemctl is-active rigbox-app-files.service; test ! -d /proc/{pid} && echo old-gone"), "root").await;
    assert!(r.stdout.contains("active") && r.stdout.contains("old-gone"), "{}", r.stdout);
    let (s, _) = api(&owner, reqwest::Method::PUT, &format!("/apps/{files}/visibility"), Some(json!({"visibility": "public"}))).await;
    assert_eq!(s, 200);
    let r = wait_until(Duration::from_secs(30), "files app served by its unit", || async {
        let r = edge.get("files", "/", &[]);
        (r.status == 200).then_some(r)
    })
    .await
    .unwrap();
    assert!(r.body.contains("srv.py"), "directory listing of the cwd: {}", r.body);

    // --- Edge metrics for the app.
    let (s, v) = api(&owner, reqwest::Method::GET, &format!("/apps/{web}/metrics/summary?range=1h"), None).await;
    assert_eq!(s, 200, "{v}");
    reference::assert_matches("AppMetricsSummaryResponse", &v);
    assert!(v["total_requests"].as_f64().unwrap() >= 15.0, "{v}");
    assert!(v["total_errors_5xx"].as_f64().unwrap() >= 2.0, "stopped app and the app's own 503: {v}");
    assert!(v["latency_p99_ms"].as_f64().unwrap() > 0.0 && v["bandwidth_out_bytes"].as_f64().unwrap() > 1000.0, "{v}");
    let (s, v) = api(&owner, reqwest::Method::GET, &format!("/apps/{web}/metrics?range=1h"), None).await;
    assert_eq!(s, 200);
    reference::assert_matches("AppMetricsResponse", &v);
    assert_eq!(v["step_seconds"], 60);
    assert!(v["status_codes"].as_array().unwrap().iter().any(|c| c["class"] == "2xx"));
    let (_, v) = api(&owner, reqwest::Method::GET, &format!("/apps/{}/metrics/summary", "app-nope"), None).await;
    assert_eq!(v["error"]["code"], "not_found");

    // --- A stopped workspace: 503 with Retry-After.
    owner.action(&ws, "stop").await.unwrap();
    let w = owner.wait_settled(&ws, Duration::from_secs(120), |_| {}).await.unwrap();
    assert_eq!(w.vm.status, "stopped");
    let r = wait_until(Duration::from_secs(10), "503 for the stopped workspace", || async {
        let r = edge.get("web", "/", &[]);
        (r.status == 503).then_some(r)
    })
    .await
    .unwrap();
    assert_eq!(r.headers.get("x-rigbox-error").map(String::as_str), Some("workspace_not_running"));
    assert!(r.headers.get("retry-after").is_some_and(|v| v.parse::<u64>().is_ok()));

    // Deleting an app and then the workspace.
    let (s, _) = api(&owner, reqwest::Method::DELETE, &format!("/apps/{files}"), None).await;
    assert_eq!(s, 200);
    assert_eq!(edge.get("files", "/", &[]).status, 404, "the route is gone at once");
    owner.delete_workspace(&ws).await.unwrap();
    let (_, v) = api(&owner, reqwest::Method::GET, "/apps", None).await;
    assert_eq!(v["apps"].as_array().map(Vec::len), Some(0), "apps go with their workspace: {v}");
    eprintln!("vm_edge_end_to_end took {:?}", t0.elapsed());
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
