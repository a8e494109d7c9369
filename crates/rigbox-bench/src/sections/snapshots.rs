//! Pause, resume, fork and snapshot size, next to the raw VMM doing the same
//! on the same artifact (QEMU: `stop` + `migrate` to a file, `-incoming` in a
//! fresh namespace, agent port answering).

use crate::report::Row;
use crate::{BenchEnv, Section};
use rigbox_node_api::guest::ExecRequest;
use rigbox_node_api::{CreateSnapshot, CreateWorkspace, ForkRequest, ForkTarget, NodeClient};
use rigbox_types::WorkspaceState;
use std::path::Path;
use std::time::{Duration, Instant};

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn du(p: &Path) -> u64 {
    let out = std::process::Command::new("du").args(["-sb", "--apparent-size"]).arg(p).output();
    let alloc = std::process::Command::new("du").args(["-sB1"]).arg(p).output();
    let _ = out;
    alloc
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

async fn wait_running(node: &NodeClient, id: &str) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        let s = node.get(id).await?;
        if s.state == WorkspaceState::Running {
            return Ok(());
        }
        anyhow::ensure!(s.state != WorkspaceState::Failed && t0.elapsed() < Duration::from_secs(300), "boot failed: {:?}", s.failure);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn first_exec(node: &NodeClient, id: &str) -> anyhow::Result<()> {
    let r = node.exec(id, &ExecRequest { shell: Some("true".into()), ..Default::default() }).await?;
    anyhow::ensure!(r.exit_code == Some(0), "exec failed");
    Ok(())
}

/// Runs the section.
pub async fn run(env: &BenchEnv) -> anyhow::Result<Section> {
    let p = env.platform().await?;
    let node = NodeClient::new(p.node.url(), p.node.token.clone());
    let id = "ws-benchsnap";
    node.create(
        id,
        &CreateWorkspace {
            template: "base".into(),
            vcpus: 1,
            ram_mb: 512,
            disk_mb: 3072,
            hostname: "benchsnap".into(),
            env: Default::default(),
            authorized_keys: vec![],
            metadata: serde_json::json!({}),
            setup: Default::default(),
            cold_boot: false,
        },
    )
    .await?;
    node.start(id).await?;
    wait_running(&node, id).await?;
    node.exec(id, &ExecRequest { shell: Some("systemctl is-system-running --wait >/dev/null; true".into()), ..Default::default() }).await?;
    let mut rows = Vec::new();

    // Platform: pause and resume.
    let t = Instant::now();
    node.pause(id).await?;
    let pause_ms = ms(t);
    let paused_bytes = du(&env.dir.path().join("node/workspaces").join(id).join("paused"));
    let t = Instant::now();
    node.resume(id).await?;
    first_exec(&node, id).await?;
    let resume_ms = ms(t);

    // Live snapshot (memory + disk copy).
    let meta = node.snapshot(id, &CreateSnapshot { snapshot_id: "snap-bench".into(), live: true }).await?;
    let snap_dir = env.dir.path().join("node/snapshots/snap-bench");

    // Raw: the same artifact restored by hand with the VMM into a fresh
    // namespace, until the agent port answers; then stop + migrate of that VM.
    let images = rigbox_server::pipeline(&env.settings, rigbox_image::Progress::quiet())?;
    let kernel = images.resolve_kernel()?;
    let (probe, choice) = rigbox_server::probe(&env.settings);
    let vmm = probe.build(&choice?)?;
    let slot = rigbox_netns::Slot::for_workspace(&format!("benchsnapraw{}", std::process::id()))?;
    slot.create()?;
    let raw_dir = env.dir.path().join("raw-snap");
    std::fs::create_dir_all(raw_dir.join("run"))?;
    std::process::Command::new("cp").arg("--sparse=always").arg(snap_dir.join("disk.raw")).arg(raw_dir.join("disk.raw")).status()?;
    let cfg = rigbox_vmm::VmConfig {
        id: format!("benchraw-{}", std::process::id()),
        kernel,
        disk: raw_dir.join("disk.raw"),
        disk_format: rigbox_vmm::DiskFormat::Raw,
        vcpus: 1,
        mem_mb: 512,
        netns: slot.name().into(),
        tap: rigbox_netns::TAP_NAME.into(),
        mac: rigbox_netns::GUEST_MAC.into(),
        run_dir: raw_dir.join("run"),
        console_log: raw_dir.join("console.log"),
        extra_args: vec![],
    };
    let files = rigbox_vmm::SnapshotFiles { backend: vmm.kind(), state: snap_dir.join("vmstate"), memory: None };
    let t = Instant::now();
    let raw = async {
        let vm = vmm.restore(&cfg, &files).await?;
        super::agent_answers(&slot, Duration::from_secs(60)).await?;
        let raw_resume = ms(t);
        let t = Instant::now();
        vmm.snapshot(&cfg, &vm, &raw_dir.join("state")).await?;
        let raw_pause = ms(t);
        let _ = vmm.kill(&cfg, &vm).await;
        Ok::<_, anyhow::Error>((raw_resume, raw_pause))
    }
    .await;
    let _ = slot.delete();
    let (raw_resume, raw_pause) = raw?;

    rows.push(Row::ms("pause (memory to disk, VM gone)", pause_ms, Some(raw_pause)));
    rows.push(Row::ms("resume to first exec", resume_ms, Some(raw_resume)));
    rows.push(Row::new("paused state on disk, 512 MiB guest", format!("{:.1} MiB", paused_bytes as f64 / 1048576.0)));
    rows.push(Row::ms("live snapshot (guest paused for)", meta.paused_ms as f64, None));
    rows.push(Row::ms("live snapshot total (checksums included)", meta.took_ms as f64, None));
    rows.push(Row::new("live snapshot size (memory + disk data)", format!("{:.1} MiB", meta.allocated_bytes as f64 / 1048576.0)));

    // Fork: request to a successful exec in every fork, 1 and 4 forks.
    for n in [1usize, 4] {
        let forks: Vec<ForkTarget> = (0..n)
            .map(|i| ForkTarget { id: format!("ws-benchfork{n}-{i}"), hostname: format!("fork{i}"), metadata: serde_json::json!({}) })
            .collect();
        let ids: Vec<String> = forks.iter().map(|f| f.id.clone()).collect();
        let t = Instant::now();
        node.fork(id, &ForkRequest { snapshot_id: format!("snap-benchfork{n}"), forks }).await?;
        for f in &ids {
            first_exec(&node, f).await?;
        }
        rows.push(Row::ms(format!("fork to first exec, {n} fork(s)"), ms(t), Some(raw_resume * n as f64)));
        for f in &ids {
            node.delete(f).await?;
        }
        node.delete_snapshot(&format!("snap-benchfork{n}")).await?;
    }
    node.delete_snapshot("snap-bench").await?;
    node.delete(id).await?;
    Ok(Section {
        title: "snapshots, pause, fork".into(),
        rows,
        notes: vec![
            format!("backend {}-{}; guest 512 MiB, 1 vCPU, Debian with systemd booted", p.node.node.vmm().kind(), p.node.node.vmm().accel()),
            "baseline for pause: QMP stop + migrate to a file on a VM restored by hand; for resume: -incoming in a fresh namespace until the agent port answers; for fork: that raw restore times the number of forks".into(),
            "platform fork = live snapshot of the source (pause, memory, disk copy, resume) + per fork: qcow2 overlay, restore, agent, identity (hostname, SSH host keys, clock, RNG)".into(),
        ],
    })
}
