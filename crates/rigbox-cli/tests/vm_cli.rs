//! The `rig` binary against the real server and a real VM.

use rigbox_test_support::{is_root, TestPlatform};
use std::process::Command;

struct Rig {
    home: tempfile::TempDir,
    url: String,
}

impl Rig {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rig"));
        c.args(args).env("HOME", self.home.path()).env_remove("XDG_CONFIG_HOME").env_remove("RIG_API_KEY").env_remove("RIG_API_URL").env("RIG_API_URL", &self.url);
        c
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.cmd(args).output().expect("run rig");
        let r = (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        eprintln!("$ rig {}\n-> {}\n{}{}", args.join(" "), r.0, r.1, r.2);
        r
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "rig {args:?} failed: {out}{err}");
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_rig_cli_full_flow() {
    if !is_root() {
        eprintln!("SKIP: VM tests need root");
        return;
    }
    let t = TestPlatform::start(&["base"]).await.unwrap();
    let (_, key) = t.user("carol@example.test").await.unwrap();
    let rig = Rig { home: tempfile::tempdir().unwrap(), url: t.url() };

    // No key: exit code 2. A wrong key: exit code 2.
    assert_eq!(rig.run(&["workspace", "ls"]).0, 2);
    assert_eq!(rig.run(&["login", "--key", "rb_wrong"]).0, 2);
    let out = rig.ok(&["login", "--key", &key]);
    assert!(out.contains("carol@example.test"));
    let cfg = rig.home.path().join(".config/rigbox/config.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&cfg).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the saved key is private");
    assert!(rig.ok(&["whoami"]).contains("carol@example.test"));
    assert!(rig.ok(&["templates"]).contains("base"));

    // Spawn = create, start, wait until running.
    let out = rig.ok(&["-o", "json", "workspace", "spawn", "cli-box", "--env", "WHO=cli"]);
    assert!(out.lines().any(|l| l.contains("\"ready\"")), "{out}");
    let ls = rig.ok(&["-o", "json", "workspace", "ls"]);
    let v: serde_json::Value = serde_json::from_str(&ls).unwrap();
    assert_eq!(v["vms"][0]["status"], "running");

    // exec passes output and the exit code through.
    let (code, out, _) = rig.run(&["exec", "cli-box", "--", "echo hello $WHO; exit 5"]);
    assert_eq!((code, out.as_str()), (5, "hello cli\n"));
    let (code, out, _) = rig.run(&["exec", "cli-box", "--", "uname", "-s"]);
    assert_eq!((code, out.as_str()), (0, "Linux\n"));

    // cp up and down.
    let local = rig.home.path().join("up.txt");
    std::fs::write(&local, b"copied by rig\n").unwrap();
    rig.ok(&["cp", local.to_str().unwrap(), "cli-box:/home/developer/up.txt"]);
    let back = rig.home.path().join("down.txt");
    rig.ok(&["cp", "cli-box:/home/developer/up.txt", back.to_str().unwrap()]);
    assert_eq!(std::fs::read(&back).unwrap(), b"copied by rig\n");

    // Lifecycle.
    assert!(rig.ok(&["workspace", "stop", "cli-box", "--wait"]).contains("stopped"));
    assert_eq!(rig.run(&["workspace", "stop", "cli-box"]).0, 1, "stopping a stopped workspace fails");
    assert!(rig.ok(&["workspace", "start", "cli-box", "--wait"]).contains("running"));
    assert_eq!(rig.ok(&["exec", "cli-box", "--", "cat /home/developer/up.txt"]), "copied by rig\n");
    rig.ok(&["workspace", "rm", "cli-box"]);
    assert!(rig.ok(&["workspace", "ls"]).contains("no workspaces"));
    assert!(t.vm_processes().is_empty());

    // A revoked key gives exit code 2.
    rig.ok(&["logout"]);
    assert_eq!(rig.run(&["whoami"]).0, 2);
}
