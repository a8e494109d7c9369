//! The SSH gateway and the browser terminal, end to end: Debian's OpenSSH
//! client (`ssh`, `scp`, `sftp`) against the real gateway of a whole
//! platform in this process, with a real VM.

use futures::{SinkExt, StreamExt};
use rigbox_test_support::{is_root, target_dir, wait_until, TestPlatform};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn opts(key: &Path) -> Vec<String> {
    rigbox_ssh::batch_client_options(key)
}

struct Gw {
    port: u16,
}

impl Gw {
    fn ssh_cmd(&self, key: &Path, user: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ssh");
        c.args(opts(key)).arg("-p").arg(self.port.to_string()).arg(format!("{user}@127.0.0.1")).kill_on_drop(true);
        c
    }

    /// `ssh USER@gw COMMAND` with optional stdin; (code, stdout, stderr).
    async fn run(&self, key: &Path, user: &str, command: &str, stdin: Option<&[u8]>) -> (i32, String, String) {
        let mut c = self.ssh_cmd(key, user);
        c.arg("--").arg(command);
        c.stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() });
        c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let mut child = c.spawn().expect("spawn ssh");
        if let Some(data) = stdin {
            let mut w = child.stdin.take().unwrap();
            w.write_all(data).await.unwrap();
            drop(w);
        }
        let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output()).await.expect("ssh timed out").unwrap();
        let r = triple(&out);
        eprintln!("$ ssh {user} {command:?}\n-> {}\nstdout: {}\nstderr: {}", r.0, r.1, r.2);
        r
    }
}

fn triple(out: &Output) -> (i32, String, String) {
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

async fn run_tool(program: &str, args: &[String]) -> (i32, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(program).args(args).stdin(std::process::Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .expect("timed out")
    .expect("run");
    let r = triple(&out);
    eprintln!("$ {program} {}\n-> {}\nstdout: {}\nstderr: {}", args.join(" "), r.0, r.1, r.2);
    r
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", &format!("{name}@test"), "-f"])
        .arg(&path)
        .status()
        .expect("ssh-keygen");
    assert!(st.success());
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (path, public.trim().to_string())
}

fn fingerprint_of(pubfile: &Path) -> String {
    let out = std::process::Command::new("ssh-keygen").arg("-lf").arg(pubfile).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).unwrap().to_string()
}

fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

/// Output collected from a PTY or a WebSocket, searched by `expect`.
#[derive(Clone, Default)]
struct Screen(Arc<Mutex<String>>);

impl Screen {
    fn push(&self, b: &[u8]) {
        self.0.lock().unwrap().push_str(&String::from_utf8_lossy(b));
    }
    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
    /// Waits for `needle` to appear after byte offset `from`; returns the offset after it.
    async fn expect_from(&self, from: usize, needle: &str, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.text();
            if let Some(i) = t.get(from..).and_then(|s| s.find(needle)) {
                return from + i + needle.len();
            }
            assert!(Instant::now() < deadline, "timed out waiting for {needle:?}; output so far:\n{t}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_ssh_gateway_and_terminal() {
    if !is_root() {
        eprintln!("SKIP: VM tests need root");
        return;
    }
    let t0 = Instant::now();
    let t = TestPlatform::start(&["base"]).await.unwrap();
    let (alice, alice_key) = t.user("alice@example.test").await.unwrap();
    let (bob, _) = t.user("bob@example.test").await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (ka, ka_pub) = keygen(keys.path(), "alice");
    let (kb, kb_pub) = keygen(keys.path(), "bob");
    let (kx, _) = keygen(keys.path(), "stranger");

    // ---- SSH keys API ----
    let added: Value = alice.send(reqwest::Method::POST, "/ssh-keys", &json!({"name": "laptop", "public_key": ka_pub})).await.unwrap();
    rigbox_test_support::reference::assert_matches("SshKey", &added);
    assert_eq!(added["fingerprint"], fingerprint_of(&ka.with_extension("pub")), "the fingerprint is ssh-keygen's");
    let _: Value = bob.send(reqwest::Method::POST, "/ssh-keys", &json!({"name": "bob", "public_key": kb_pub})).await.unwrap();
    let status = |body: Value| {
        let alice = &alice;
        async move { alice.request(reqwest::Method::POST, "/ssh-keys").json(&body).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(json!({"name": "again", "public_key": ka_pub})).await, 409, "duplicate key");
    assert_eq!(status(json!({"name": "bobs", "public_key": kb_pub})).await, 409, "another user's key");
    assert_eq!(status(json!({"name": "laptop", "public_key": std::fs::read_to_string(kx.with_extension("pub")).unwrap()})).await, 409, "duplicate name");
    assert_eq!(status(json!({"name": "bad", "public_key": "ssh-ed25519 AAAAnotakey"})).await, 400, "malformed key");
    assert_eq!(status(json!({"name": "bad", "public_key": std::fs::read_to_string(&ka).unwrap()})).await, 400, "private key");
    assert_eq!(status(json!({"name": "bad"})).await, 400, "missing field");
    let list: Value = alice.get("/ssh-keys").await.unwrap();
    rigbox_test_support::reference::assert_matches("SshKeysResponse", &list);
    assert_eq!(list["ssh_keys"].as_array().unwrap().len(), 1);
    // A second key can be added and removed.
    let tmp: Value = alice
        .send(reqwest::Method::POST, "/ssh-keys", &json!({"name": "tmp", "public_key": std::fs::read_to_string(kx.with_extension("pub")).unwrap()}))
        .await
        .unwrap();
    let del: Value = alice.call(reqwest::Method::DELETE, &format!("/ssh-keys/{}", tmp["id"].as_str().unwrap())).await.unwrap();
    rigbox_test_support::reference::assert_matches("MessageResponse", &del);
    let r = bob.request(reqwest::Method::DELETE, &format!("/ssh-keys/{}", added["id"].as_str().unwrap())).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404, "another user's key cannot be deleted");

    // ---- Workspaces: alice's running "box", bob's never-started "theirs" ----
    let _: Value = alice.send(reqwest::Method::POST, "/workspaces", &json!({"name": "box"})).await.unwrap();
    let _: Value = bob.send(reqwest::Method::POST, "/workspaces", &json!({"name": "theirs"})).await.unwrap();
    alice.action("box", "start").await.unwrap();
    let w = alice.wait_settled("box", Duration::from_secs(300), |s| eprintln!("box: {s}")).await.unwrap();
    assert_eq!(w.vm.status, "running");
    eprintln!("workspace running after {:?}", t0.elapsed());

    let info: Value = alice.get("/workspaces/box/ssh-info").await.unwrap();
    let port = info["port"].as_u64().unwrap() as u16;
    assert_eq!(info["ssh_target"], "box@127.0.0.1");
    assert_eq!(port, t.p().ssh.as_ref().unwrap().addr.port());
    let host_key = std::fs::read_to_string(t.settings.data_dir.join("ssh_host_ed25519_key")).expect("host key in the data dir");
    let host_key = russh::keys::PrivateKey::from_openssh(host_key.as_bytes()).unwrap();
    assert_eq!(info["host_key_fingerprint"], rigbox_ssh::keys::fingerprint(host_key.public_key()));
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(t.settings.data_dir.join("ssh_host_ed25519_key")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the host key is private");
    let gw = Gw { port };

    // The key was put into authorized_keys at creation; sync rewrites it.
    let wk: Value = alice.get("/workspaces/box/ssh-keys").await.unwrap();
    rigbox_test_support::reference::assert_matches("ListWorkspaceSshKeysResponse", &wk);
    assert_eq!(wk["keys"][0]["fingerprint"], added["fingerprint"], "{wk}");
    let synced: Value = alice.call(reqwest::Method::POST, "/workspaces/box/ssh-keys/sync").await.unwrap();
    rigbox_test_support::reference::assert_matches("SyncSshKeysResponse", &synced);
    assert_eq!(synced["synced"], 1);
    assert_eq!(synced["keys"][0]["fingerprint"], added["fingerprint"]);

    // ---- Non-interactive commands: output, stderr, stdin, exit codes ----
    let (code, out, err) = gw.run(&ka, "box", "echo out-$((20+1)); echo err-line >&2; whoami; exit 7", None).await;
    assert_eq!(code, 7);
    assert_eq!(out, "out-21\ndeveloper\n");
    assert_eq!(err, "err-line\n");
    let (code, out, _) = gw.run(&ka, &w.vm.id, "wc -c", Some(&[b'x'; 100_000])).await;
    assert_eq!((code, out.trim()), (0, "100000"), "stdin and its EOF reach the command; the id works as user name");
    let (code, _, _) = gw.run(&ka, "box", "kill -TERM $$", None).await;
    assert_eq!(code, 255, "a command killed by a signal is reported as exit-signal (ssh exits 255)");

    // ---- Refusals, all alike ----
    let refused = |r: (i32, String, String), name: &str| {
        assert_eq!(r.0, 255, "{r:?}");
        assert!(r.2.contains("Permission denied (publickey)"), "{r:?}");
        r.2.replace(name, "NAME")
    };
    let a = refused(gw.run(&kx, "box", "true", None).await, "box");
    let b = refused(gw.run(&ka, "theirs", "true", None).await, "theirs");
    let c = refused(gw.run(&ka, "nonexistent", "true", None).await, "nonexistent");
    let d = refused(gw.run(&kb, "box", "true", None).await, "box");
    assert!(a == b && b == c && c == d, "refusals must not tell which workspaces exist: {a:?} {b:?} {c:?} {d:?}");

    // ---- Keys added or removed reach running workspaces' authorized_keys ----
    let extra: Value = alice
        .send(reqwest::Method::POST, "/ssh-keys", &json!({"name": "second", "public_key": std::fs::read_to_string(kx.with_extension("pub")).unwrap()}))
        .await
        .unwrap();
    let count = |n: usize| {
        let alice = &alice;
        async move {
            wait_until(Duration::from_secs(30), &format!("{n} keys in authorized_keys"), || async move {
                let v: Value = alice.get("/workspaces/box/ssh-keys").await.ok()?;
                (v["keys"].as_array()?.len() == n).then_some(())
            })
            .await
            .unwrap()
        }
    };
    count(2).await;
    let (code, out, _) = gw.run(&kx, "box", "echo second-key", None).await;
    assert_eq!((code, out.as_str()), (0, "second-key\n"), "a newly added key logs in");
    let _: Value = alice.call(reqwest::Method::DELETE, &format!("/ssh-keys/{}", extra["id"].as_str().unwrap())).await.unwrap();
    count(1).await;
    assert_eq!(gw.run(&kx, "box", "true", None).await.0, 255, "a removed key is refused at once");

    // ---- A workspace that is not running: a clear message, or +start ----
    let (code, _, err) = gw.run(&kb, "theirs", "true", None).await;
    assert_eq!(code, 1);
    assert!(err.contains("not running") && err.contains("theirs+start"), "{err}");

    // ---- scp up and down, sftp listing ----
    let files = tempfile::tempdir().unwrap();
    let up = files.path().join("up.bin");
    let data: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&up, &data).unwrap();
    let mut scp_args = opts(&ka);
    scp_args.extend(["-q".into(), "-P".into(), port.to_string(), up.display().to_string(), "box@127.0.0.1:/tmp/up.bin".into()]);
    assert_eq!(run_tool("scp", &scp_args).await.0, 0, "scp upload");
    let (code, out, _) = gw.run(&ka, "box", "sha256sum /tmp/up.bin", None).await;
    assert_eq!(code, 0);
    assert_eq!(out.split_whitespace().next(), Some(sha256_file(&up).as_str()), "uploaded bytes match");
    // Large output of a plain command arrives whole.
    let out = gw.ssh_cmd(&ka, "box").arg("--").arg("cat /tmp/up.bin").stdin(std::process::Stdio::null()).output().await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout.len(), data.len(), "stdout of cat through the gateway");
    assert_eq!(hex::encode(Sha256::digest(&out.stdout)), sha256_file(&up));
    let down = files.path().join("down.bin");
    let mut scp_args = opts(&ka);
    scp_args.extend(["-q".into(), "-P".into(), port.to_string(), "box@127.0.0.1:/tmp/up.bin".into(), down.display().to_string()]);
    assert_eq!(run_tool("scp", &scp_args).await.0, 0, "scp download");
    assert_eq!(sha256_file(&down), sha256_file(&up), "downloaded bytes match");
    let batch = files.path().join("batch");
    std::fs::write(&batch, "cd /tmp\nls -1\nmkdir /tmp/made-by-sftp\n").unwrap();
    let mut sftp_args = opts(&ka);
    sftp_args.extend(["-b".into(), batch.display().to_string(), "-P".into(), port.to_string(), "box@127.0.0.1".into()]);
    let (code, out, _) = run_tool("sftp", &sftp_args).await;
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.trim() == "up.bin"), "{out}");
    assert_eq!(gw.run(&ka, "box", "test -d /tmp/made-by-sftp", None).await.0, 0);

    // ---- ssh -L to an HTTP server bound to 127.0.0.1 inside the guest ----
    let (code, _, _) = gw
        .run(
            &ka,
            "box",
            "mkdir -p /tmp/www && echo FORWARD-OK-$((40+2)) > /tmp/www/index.html && cd /tmp/www && setsid -f python3 -m http.server 8123 --bind 127.0.0.1 >/dev/null 2>&1",
            None,
        )
        .await;
    assert_eq!(code, 0);
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (lp, lp_bad) = (free(), free());
    let mut fwd = tokio::process::Command::new("ssh");
    fwd.args(opts(&ka))
        .args(["-N", "-p", &port.to_string()])
        .args(["-L", &format!("127.0.0.1:{lp}:localhost:8123")])
        .args(["-L", &format!("127.0.0.1:{lp_bad}:192.0.2.1:80")])
        .arg("box@127.0.0.1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut fwd = fwd.spawn().unwrap();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let body = wait_until(Duration::from_secs(120), "the forwarded HTTP server", || {
        let http = http.clone();
        async move {
            let r = http.get(format!("http://127.0.0.1:{lp}/")).send().await.ok()?;
            let b = r.text().await.ok()?;
            b.contains("FORWARD-OK").then_some(b)
        }
    })
    .await
    .unwrap();
    assert_eq!(body.trim(), "FORWARD-OK-42");
    assert!(http.get(format!("http://127.0.0.1:{lp_bad}/")).send().await.is_err(), "forwarding to other hosts is refused");
    let _ = fwd.start_kill();
    let _ = fwd.wait().await;

    // ---- Interactive login shell through a real PTY ----
    let (pty, pts) = pty_process::open().unwrap();
    pty.resize(pty_process::Size::new(24, 80)).unwrap();
    let mut child = pty_process::Command::new("ssh")
        .args(opts(&ka))
        .args(["-p", &port.to_string(), "box@127.0.0.1"])
        .kill_on_drop(true)
        .spawn(pts)
        .unwrap();
    let (mut r, mut wpty) = pty.into_split();
    let screen = Screen::default();
    let s2 = screen.clone();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
            s2.push(&buf[..n]);
        }
    });
    let mut at = screen.expect_from(0, "$ ", Duration::from_secs(60)).await;
    wpty.write_all(b"echo MARK-$((6*7)) $TERM\r").await.unwrap();
    at = screen.expect_from(at, "MARK-42 ", Duration::from_secs(30)).await;
    wpty.write_all(b"stty size\r").await.unwrap();
    at = screen.expect_from(at, "24 80", Duration::from_secs(30)).await;
    wpty.resize(pty_process::Size::new(40, 120)).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    wpty.write_all(b"stty size\r").await.unwrap();
    at = screen.expect_from(at, "40 120", Duration::from_secs(30)).await;
    // Ctrl-C interrupts the foreground job.
    wpty.write_all(b"sleep 300\r").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    wpty.write_all(&[3]).await.unwrap();
    wpty.write_all(b"echo AFTER-$((1+1))\r").await.unwrap();
    screen.expect_from(at, "AFTER-2", Duration::from_secs(30)).await;
    wpty.write_all(b"exit 3\r").await.unwrap();
    let st = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("ssh exits").unwrap();
    assert_eq!(st.code(), Some(3), "the shell's exit code is ssh's; output:\n{}", screen.text());
    reader.abort();

    // ---- SSH `signal` requests (OpenSSH's client cannot send them; russh's can) ----
    {
        struct AnyHost;
        impl russh::client::Handler for AnyHost {
            type Error = russh::Error;
            async fn check_server_key(&mut self, _key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
                Ok(true)
            }
        }
        let mut h = russh::client::connect(Arc::new(russh::client::Config::default()), ("127.0.0.1", port), AnyHost).await.unwrap();
        let k = russh::keys::load_secret_key(&ka, None).unwrap();
        let auth = h.authenticate_publickey("box", russh::keys::PrivateKeyWithHashAlg::new(Arc::new(k), None)).await.unwrap();
        assert!(auth.success());
        let mut ch = h.channel_open_session().await.unwrap();
        ch.exec(true, "trap 'echo got-int; exit 42' INT; echo ready; while true; do sleep 0.2; done").await.unwrap();
        let (mut out, mut code, mut signalled) = (String::new(), None, false);
        let deadline = Instant::now() + Duration::from_secs(60);
        while code.is_none() && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(60), ch.wait()).await.unwrap() {
                Some(russh::ChannelMsg::Data { data }) => {
                    out.push_str(&String::from_utf8_lossy(&data));
                    if out.contains("ready") && !signalled {
                        ch.signal(russh::Sig::INT).await.unwrap();
                        signalled = true;
                    }
                }
                Some(russh::ChannelMsg::ExitStatus { exit_status }) => code = Some(exit_status),
                Some(_) => {}
                None => break,
            }
        }
        assert_eq!(code, Some(42), "the INT signal reached the command's trap; output: {out:?}");
        assert!(out.contains("got-int"), "{out:?}");
    }

    // ---- Browser terminal over WebSocket: header auth and token auth, concurrently ----
    let api = t.url().replacen("http", "ws", 1);
    let mut req = format!("{api}/api/v1/workspaces/box/terminal?rows=24&cols=80").into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {alice_key}").parse().unwrap());
    let (t1, _) = tokio_tungstenite::connect_async(req).await.expect("terminal with bearer");
    let tok: Value = alice.call(reqwest::Method::POST, "/workspaces/box/terminal/token").await.unwrap();
    let token = tok["token"].as_str().unwrap().to_string();
    assert!(tok["expires_at"].is_string());
    let url2 = format!("{api}/api/v1/workspaces/box/terminal?token={token}&rows=30&cols=100");
    let (t2, _) = tokio_tungstenite::connect_async(url2.clone()).await.expect("terminal with token");
    assert!(tokio_tungstenite::connect_async(url2).await.is_err(), "tokens are single use");
    assert!(
        tokio_tungstenite::connect_async(format!("{api}/api/v1/workspaces/box/terminal")).await.is_err(),
        "no credentials, no terminal"
    );
    let input = |s: &str| Message::Text(json!({"type": "input", "data": s}).to_string().into());
    let pump = |ws: futures::stream::SplitStream<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>>| {
        let screen = Screen::default();
        let events = Arc::new(Mutex::new(Vec::<Value>::new()));
        let (s, e) = (screen.clone(), events.clone());
        tokio::spawn(async move {
            let mut ws = ws;
            while let Some(Ok(m)) = ws.next().await {
                match m {
                    Message::Binary(b) => s.push(&b),
                    Message::Text(t) => e.lock().unwrap().push(serde_json::from_str(&t).unwrap()),
                    _ => {}
                }
            }
        });
        (screen, events)
    };
    let (mut w1, r1) = t1.split();
    let (mut w2, r2) = t2.split();
    let (s1, e1) = pump(r1);
    let (s2, _e2) = pump(r2);
    let a1 = s1.expect_from(0, "$ ", Duration::from_secs(60)).await;
    let a2 = s2.expect_from(0, "$ ", Duration::from_secs(60)).await;
    w1.send(input("echo ONE-$((3*5)); stty size\r")).await.unwrap();
    w2.send(input("echo TWO-$((4*5)); stty size\r")).await.unwrap();
    let a1 = s1.expect_from(a1, "ONE-15", Duration::from_secs(30)).await;
    let a1 = s1.expect_from(a1, "24 80", Duration::from_secs(30)).await;
    let a2 = s2.expect_from(a2, "TWO-20", Duration::from_secs(30)).await;
    let a2 = s2.expect_from(a2, "30 100", Duration::from_secs(30)).await;
    assert!(!s1.text().contains("TWO-20") && !s2.text().contains("ONE-15"), "sessions are independent");
    w1.send(Message::Text(json!({"type": "resize", "rows": 50, "cols": 132}).to_string().into())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    w1.send(input("stty size\r")).await.unwrap();
    let a1 = s1.expect_from(a1, "50 132", Duration::from_secs(30)).await;
    w1.send(input("exit 5\r")).await.unwrap();
    wait_until(Duration::from_secs(30), "the exit frame", || {
        let e1 = e1.clone();
        async move { e1.lock().unwrap().last().cloned().filter(|v| v["type"] == "exit") }
    })
    .await
    .map(|v| assert_eq!(v["code"], 5, "{v}"))
    .unwrap();
    let _ = a1;
    // The other session goes on.
    w2.send(input("echo STILL-$((9+9))\r")).await.unwrap();
    s2.expect_from(a2, "STILL-18", Duration::from_secs(30)).await;
    let _ = w2.close().await;

    // ---- rig ssh-key / rig ssh, when the rig binary is built ----
    let rig = target_dir().join("rig");
    if rig.exists() {
        let home = tempfile::tempdir().unwrap();
        let run_rig = |args: Vec<String>| {
            let rig = rig.clone();
            let home = home.path().to_path_buf();
            let url = t.url();
            let key = alice_key.clone();
            async move {
                let out = tokio::process::Command::new(&rig)
                    .args(&args)
                    .env("HOME", home)
                    .env("RIG_API_URL", url)
                    .env("RIG_API_KEY", key)
                    .env_remove("XDG_CONFIG_HOME")
                    .stdin(std::process::Stdio::null())
                    .output()
                    .await
                    .unwrap();
                let r = triple(&out);
                eprintln!("$ rig {}\n-> {}\n{}{}", args.join(" "), r.0, r.1, r.2);
                r
            }
        };
        let (code, out, _) = run_rig(vec!["ssh-key".into(), "ls".into()]).await;
        assert_eq!(code, 0);
        assert!(out.contains("laptop") && out.contains(added["fingerprint"].as_str().unwrap()), "{out}");
        let kx_pub = kx.with_extension("pub").display().to_string();
        let (code, out, _) = run_rig(vec!["ssh-key".into(), "add".into(), "--name".into(), "cli-key".into(), "--file".into(), kx_pub]).await;
        assert_eq!(code, 0);
        assert!(out.contains("cli-key"), "{out}");
        assert_eq!(run_rig(vec!["ssh-key".into(), "rm".into(), "cli-key".into()]).await.0, 0);
        assert_eq!(run_rig(vec!["ssh-key".into(), "rm".into(), "cli-key".into()]).await.0, 1, "already gone");
        let mut args: Vec<String> = vec!["ssh".into(), "box".into()];
        for o in opts(&ka) {
            args.push(format!("--ssh-arg={o}"));
        }
        args.extend(["--".into(), "echo via-rig; exit 4".into()]);
        let (code, out, _) = run_rig(args).await;
        assert_eq!((code, out.as_str()), (4, "via-rig\n"), "rig ssh execs ssh through the gateway");
    } else {
        eprintln!("note: {} not built; rig ssh not exercised here", rig.display());
    }

    // ---- +start boots a stopped workspace on connect ----
    let (code, out, err) = gw.run(&kb, "theirs+start", "echo started-$((2+2))", None).await;
    assert_eq!((code, out.as_str()), (0, "started-4\n"), "{err}");
    assert!(err.contains("starting workspace"), "{err}");
    let theirs = bob.workspace("theirs").await.unwrap();
    assert_eq!(theirs.vm.status, "running");
    eprintln!("whole test: {:?}", t0.elapsed());
}
