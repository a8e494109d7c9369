//! SSH: the gateway next to the guest's own sshd reached directly from
//! inside the workspace's network namespace (`ip netns exec SLOT ssh
//! developer@169.254.0.2`), with the same OpenSSH client, key and options.
//!
//! - time from `ssh` invocation to the first shell prompt (`ssh -tt`, until
//!   `$ ` appears), median of several runs;
//! - a command round trip (`ssh … true`: connect, authenticate, run, exit);
//! - `scp` throughput of a 100 MB file, up and down (scp uses SFTP).
//!
//! Run with `rigboxd bench --section ssh`.

use crate::report::{median, Row};
use crate::{BenchEnv, Section};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RUNS: usize = 5;
const FILE_MB: usize = 100;

fn opts(key: &Path) -> Vec<String> {
    rigbox_ssh::batch_client_options(key)
}

/// How to reach the workspace: through the gateway, or directly inside the slot.
struct Route {
    /// Command prefix (`[]` or `["ip", "netns", "exec", SLOT]`).
    prefix: Vec<String>,
    /// `-p`/`-P` port.
    port: u16,
    /// `user@host`.
    target: String,
}

impl Route {
    fn cmd(&self, program: &str, args: Vec<String>) -> tokio::process::Command {
        let mut all = self.prefix.clone();
        all.push(program.to_string());
        all.extend(args);
        let mut c = tokio::process::Command::new(&all[0]);
        c.args(&all[1..]).kill_on_drop(true);
        c
    }
}

async fn output(mut c: tokio::process::Command, what: &str) -> anyhow::Result<String> {
    let out = tokio::time::timeout(Duration::from_secs(600), c.stdin(Stdio::null()).output()).await??;
    if !out.status.success() {
        anyhow::bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Milliseconds from spawning `ssh -tt` to the first `$ ` of the shell.
async fn time_to_prompt(r: &Route, key: &Path) -> anyhow::Result<f64> {
    let mut args = opts(key);
    args.extend(["-tt".into(), "-p".into(), r.port.to_string(), r.target.clone()]);
    let t0 = Instant::now();
    let mut child = r.cmd("ssh", args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let mut out = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let ms = loop {
        let n = match tokio::time::timeout(Duration::from_secs(60), out.read(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => anyhow::bail!("no prompt from {} after 60 s; output: {:?}", r.target, String::from_utf8_lossy(&seen)),
        };
        if n == 0 {
            anyhow::bail!("ssh ended before a prompt: {}", String::from_utf8_lossy(&seen));
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(2).any(|w| w == b"$ ") {
            break t0.elapsed().as_secs_f64() * 1000.0;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"exit\n").await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    Ok(ms)
}

async fn time_true(r: &Route, key: &Path) -> anyhow::Result<f64> {
    let mut args = opts(key);
    args.extend(["-p".into(), r.port.to_string(), r.target.clone(), "--".into(), "true".into()]);
    let t0 = Instant::now();
    output(r.cmd("ssh", args), "ssh true").await?;
    Ok(t0.elapsed().as_secs_f64() * 1000.0)
}

/// (upload MB/s, download MB/s) of `file` with scp.
async fn scp_rates(r: &Route, key: &Path, file: &Path, remote: &str, back: &Path) -> anyhow::Result<(f64, f64)> {
    let mb = std::fs::metadata(file)?.len() as f64 / 1e6;
    let mut up = opts(key);
    up.extend(["-q".into(), "-P".into(), r.port.to_string(), file.display().to_string(), format!("{}:{remote}", r.target)]);
    let t0 = Instant::now();
    output(r.cmd("scp", up), "scp upload").await?;
    let up_s = t0.elapsed().as_secs_f64();
    let mut down = opts(key);
    down.extend(["-q".into(), "-P".into(), r.port.to_string(), format!("{}:{remote}", r.target), back.display().to_string()]);
    let t0 = Instant::now();
    output(r.cmd("scp", down), "scp download").await?;
    let down_s = t0.elapsed().as_secs_f64();
    if std::fs::metadata(back)?.len() != std::fs::metadata(file)?.len() {
        anyhow::bail!("downloaded size differs");
    }
    let mut rm = opts(key);
    rm.extend(["-p".into(), r.port.to_string(), r.target.clone(), "--".into(), format!("rm -f {remote}")]);
    output(r.cmd("ssh", rm), "rm").await?;
    std::fs::remove_file(back)?;
    Ok((mb / up_s, mb / down_s))
}

/// Runs the section.
pub async fn run(env: &BenchEnv) -> anyhow::Result<Section> {
    let p = env.platform().await?;
    let admin = env.admin().await?;
    let dir = env.dir.path().join("ssh-bench");
    std::fs::create_dir_all(&dir)?;
    let key = dir.join("id_ed25519");
    let st = std::process::Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status()?;
    anyhow::ensure!(st.success(), "ssh-keygen failed (is openssh-client installed?)");
    let public = std::fs::read_to_string(key.with_extension("pub"))?;
    let _: serde_json::Value = admin
        .send(reqwest::Method::POST, "/ssh-keys", &serde_json::json!({"name": "bench", "public_key": public.trim()}))
        .await?;
    let _: serde_json::Value = admin.send(reqwest::Method::POST, "/workspaces", &serde_json::json!({"name": "bench-ssh"})).await?;
    admin.action("bench-ssh", "start").await?;
    let w = admin.wait_settled("bench-ssh", Duration::from_secs(600), |_| {}).await?;
    anyhow::ensure!(w.vm.status == "running", "workspace is {}", w.vm.status);
    let info: serde_json::Value = admin.get("/workspaces/bench-ssh/ssh-info").await?;
    let port = info["port"].as_u64().ok_or_else(|| anyhow::anyhow!("no gateway port"))? as u16;
    let gateway = Route { prefix: vec![], port, target: "bench-ssh@127.0.0.1".into() };
    let slot = rigbox_netns::Slot::for_workspace(&format!("{}-{}", p.node.node.id(), w.vm.id))?;
    // Inside the workspace's own namespace only: the guest's address exists nowhere else.
    let direct = Route {
        prefix: vec!["ip".into(), "netns".into(), "exec".into(), slot.name().to_string()],
        port: 22,
        target: format!("developer@{}", std::net::Ipv4Addr::from(rigbox_node_api::guest::GUEST_ADDR)),
    };
    // The guest's sshd is the baseline; the image does not run it by default.
    let started: serde_json::Value = admin
        .send(
            reqwest::Method::POST,
            "/workspaces/bench-ssh/exec",
            &serde_json::json!({"command": "systemctl start ssh.service", "user": "root", "timeout": 120}),
        )
        .await?;
    // Warm both paths (guest page cache, sshd host keys, first login).
    time_true(&gateway, &key).await?;
    let direct_ok = match started["exit_code"].as_i64() {
        Some(0) => time_true(&direct, &key).await,
        _ => Err(anyhow::anyhow!("could not start the guest's sshd: {started}")),
    };

    let mut rows = Vec::new();
    let mut notes = vec![
        "client: Debian's OpenSSH with the same key and options on both paths; guest under QEMU TCG".to_string(),
        format!("baseline: the guest's sshd at 169.254.0.2:22 from inside the workspace's network namespace ({})", slot.name()),
    ];
    let (mut g, mut d) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        g.push(time_to_prompt(&gateway, &key).await?);
        if direct_ok.is_ok() {
            d.push(time_to_prompt(&direct, &key).await?);
        }
    }
    let base = |v: &Vec<f64>| (!v.is_empty()).then(|| median(v.clone()));
    rows.push(Row::ms(format!("ssh to first shell prompt (median of {RUNS})"), median(g), base(&d)));
    let (mut g, mut d) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        g.push(time_true(&gateway, &key).await?);
        if direct_ok.is_ok() {
            d.push(time_true(&direct, &key).await?);
        }
    }
    rows.push(Row::ms(format!("ssh … true round trip (median of {RUNS})"), median(g), base(&d)));

    let file = dir.join("payload.bin");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file)?);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..FILE_MB {
            for b in chunk.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            f.write_all(&chunk)?;
        }
    }
    let back = dir.join("back.bin");
    let (gu, gd) = scp_rates(&gateway, &key, &file, "/home/developer/bench-gw.bin", &back).await?;
    let rate = |what: &str, v: f64, b: Option<f64>| Row {
        what: what.to_string(),
        value: format!("{v:.1} MB/s"),
        baseline: b.map(|b| format!("{b:.1} MB/s")),
        ratio: b.filter(|b| *b > 0.0).map(|b| v / b),
    };
    match direct_ok {
        Ok(_) => {
            let (du, dd) = scp_rates(&direct, &key, &file, "/home/developer/bench-direct.bin", &back).await?;
            rows.push(rate(&format!("scp upload {FILE_MB} MB"), gu, Some(du)));
            rows.push(rate(&format!("scp download {FILE_MB} MB"), gd, Some(dd)));
        }
        Err(e) => {
            notes.push(format!("no baseline: direct ssh to the guest failed: {e}"));
            rows.push(rate(&format!("scp upload {FILE_MB} MB"), gu, None));
            rows.push(rate(&format!("scp download {FILE_MB} MB"), gd, None));
        }
    }
    notes.push("ratio = gateway / direct (for throughput, below 1 means slower)".into());
    notes.push(
        "the gateway terminates SSH on the host (native crypto) and the guest only runs the shell or sftp-server; \
         the direct path runs sshd's key exchange and ciphers inside the guest, emulated under TCG, \
         which is why the gateway can be the faster path here (with KVM the direct path gains the most)"
            .into(),
    );
    std::fs::remove_file(&file)?;
    let _ = admin.delete_workspace("bench-ssh").await;
    Ok(Section { title: "ssh".into(), rows, notes })
}
