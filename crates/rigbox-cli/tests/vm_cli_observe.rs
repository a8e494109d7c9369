//! `rig workspace metrics [--watch]` and `rig workspace logs [-f]` against
//! the real server and a real VM.

use rigbox_test_support::{is_root, TestPlatform};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Rig {
    home: tempfile::TempDir,
    url: String,
    key: String,
}

impl Rig {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rig"));
        c.args(args).env("HOME", self.home.path()).env_remove("XDG_CONFIG_HOME").env("RIG_API_KEY", &self.key).env("RIG_API_URL", &self.url);
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("run rig");
        let (o, e) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        eprintln!("$ rig {}\n{o}{e}", args.join(" "));
        assert!(out.status.success(), "rig {args:?} failed: {o}{e}");
        o
    }

    /// Runs a command that does not end by itself; returns its first lines
    /// that satisfy `until` (or panics after `within`), then kills it.
    fn stream_until(&self, args: &[&str], within: Duration, mut until: impl FnMut(&[String]) -> bool, during: impl FnOnce()) -> Vec<String> {
        let mut child = self.cmd(args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn rig");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let deadline = Instant::now() + within;
        let mut during = Some(during);
        while !until(&lines) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "rig {args:?}: not done within {within:?}; got {lines:?}");
            if let Ok(l) = rx.recv_timeout(left.min(Duration::from_millis(500))) {
                eprintln!("rig {}: {l}", args.join(" "));
                lines.push(l);
            }
            if lines.len() >= 2 {
                if let Some(f) = during.take() {
                    f();
                }
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        lines
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_rig_metrics_and_logs() {
    if !is_root() {
        eprintln!("SKIP: VM tests need root");
        return;
    }
    let t = TestPlatform::start_with(&["base"], |s| s.metrics_sample_ms = 1000).await.unwrap();
    let (_, key) = t.user("olga@example.test").await.unwrap();
    let rig = Rig { home: tempfile::tempdir().unwrap(), url: t.url(), key };
    rig.ok(&["workspace", "spawn", "watched", "--ram", "512"]);

    // One look, for people and as JSON.
    let deadline = Instant::now() + Duration::from_secs(60);
    let out = loop {
        let o = rig.cmd(&["workspace", "metrics", "watched"]).output().unwrap();
        if o.status.success() {
            break String::from_utf8_lossy(&o.stdout).into_owned();
        }
        assert!(Instant::now() < deadline, "no metrics: {}", String::from_utf8_lossy(&o.stderr));
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(out.contains("CPU") && out.contains("/ 512 MiB") && out.contains("Last hour CPU avg"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&rig.ok(&["-o", "json", "workspace", "metrics", "watched"])).unwrap();
    assert_eq!(v["metrics"]["ram_total_mb"], 512);

    // --watch prints a header and then a line per sample.
    let lines = rig.stream_until(&["workspace", "metrics", "watched", "--watch"], Duration::from_secs(30), |l| l.len() >= 4, || {});
    assert!(lines[0].starts_with("TIME"), "{lines:?}");
    assert!(lines[1..].iter().all(|l| l.contains('/')), "{lines:?}");

    // logs: the last lines; -f: a line logged afterwards shows up.
    let out = rig.ok(&["workspace", "logs", "watched", "--lines", "5"]);
    assert_eq!(out.lines().count(), 5, "{out}");
    let marker = format!("followed-{}", std::process::id());
    let exec = rig.cmd(&["exec", "watched", "--", &format!("logger -t clitest {marker}")]);
    let lines = rig.stream_until(
        &["workspace", "logs", "watched", "-f", "--lines", "3"],
        Duration::from_secs(60),
        |l| l.iter().any(|x| x.contains(&marker)),
        move || {
            let mut exec = exec;
            assert!(exec.status().unwrap().success());
        },
    );
    assert!(lines.iter().any(|l| l.contains("clitest") && l.contains(&marker)), "{lines:?}");
    rig.ok(&["workspace", "rm", "watched"]);
}
