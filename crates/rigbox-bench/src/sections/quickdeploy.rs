//! Quick deploy to first successful exec: from the warm template snapshot,
//! from a cold boot, and the raw VMM restore of the same snapshot.

use crate::report::{median, Row};
use crate::{BenchEnv, Section};
use rigbox_client::views::ExecRequest;
use rigbox_client::Client;
use std::time::{Duration, Instant};

async fn deploy_to_exec(c: &Client, name: &str, ram_mb: i64) -> anyhow::Result<(f64, String)> {
    let t = Instant::now();
    let r: serde_json::Value = c
        .send(reqwest::Method::POST, "/quick-deploy", &serde_json::json!({"template_id": "base", "name": name, "ram_mb": ram_mb}))
        .await?;
    let id = r["workspace"]["id"].as_str().unwrap_or_default().to_string();
    loop {
        match c.exec(&id, &ExecRequest { command: serde_json::json!("true"), ..Default::default() }).await {
            Ok(x) if x.exit_code == Some(0) => break,
            _ => {}
        }
        let w = c.workspace(&id).await?;
        anyhow::ensure!(w.vm.status != "failed", "deploy failed: {:?}", w.failure);
        anyhow::ensure!(t.elapsed() < Duration::from_secs(300), "deploy timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((t.elapsed().as_secs_f64() * 1000.0, id))
}

/// Runs the section.
pub async fn run(env: &BenchEnv) -> anyhow::Result<Section> {
    let c = env.admin().await?;
    let p = env.platform().await?;
    let node = rigbox_node_api::NodeClient::new(p.node.url(), p.node.token.clone());
    // Make sure the warm template exists (512 MiB, 1 vCPU, 3072 MiB: base's floors).
    node.warm_template("base", &rigbox_node_api::WarmRequest { ram_mb: 512, vcpus: 1, disk_mb: 3072 }).await?;
    let t0 = Instant::now();
    let warm = loop {
        let w = node.warm_templates().await?;
        if let Some(x) = w.into_iter().find(|x| x.template == "base" && x.ram_mb == 512 && x.vcpus == 1) {
            anyhow::ensure!(x.state != "failed", "warming failed: {:?}", x.error);
            if x.state == "ready" {
                break x;
            }
        }
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(900), "warming timed out");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut from_warm = Vec::new();
    let mut cold = Vec::new();
    for i in 0..3 {
        let (ms, id) = deploy_to_exec(&c, &format!("qd-warm-{i}"), 512).await?;
        from_warm.push(ms);
        c.delete_workspace(&id).await?;
        // 768 MiB has no warm snapshot: a cold boot.
        let (ms, id) = deploy_to_exec(&c, &format!("qd-cold-{i}"), 768).await?;
        cold.push(ms);
        c.delete_workspace(&id).await?;
    }
    // Raw: the same warm snapshot restored by hand (see the snapshots section's method).
    let snap = env.dir.path().join("node/snapshots").join(&warm.snapshot_id);
    let raw = raw_restore(env, &snap).await.ok();
    let rows = vec![
        Row::ms("quick deploy to first exec, warm template (median of 3)", median(from_warm.clone()), raw),
        Row::ms("quick deploy to first exec, cold boot (median of 3)", median(cold.clone()), raw),
        Row::new("  warm runs", from_warm.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", ") + " ms"),
        Row::new("  cold runs", cold.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", ") + " ms"),
        Row::new("warm template build (boot, settle, snapshot)", format!("{} ms", warm.build_ms.unwrap_or(0))),
    ];
    Ok(Section {
        title: "quick deploy".into(),
        rows,
        notes: vec![
            "from POST /quick-deploy until an exec returns 0 (API, placement, disk, restore or boot, identity, setup plan)".into(),
            "baseline: the warm snapshot restored by hand with the VMM into a fresh namespace until the agent port answers".into(),
        ],
    })
}

async fn raw_restore(env: &BenchEnv, snap: &std::path::Path) -> anyhow::Result<f64> {
    let images = rigbox_server::pipeline(&env.settings, rigbox_image::Progress::quiet())?;
    let kernel = images.resolve_kernel()?;
    let (probe, choice) = rigbox_server::probe(&env.settings);
    let vmm = probe.build(&choice?)?;
    let slot = rigbox_netns::Slot::for_workspace(&format!("benchqdraw{}", std::process::id()))?;
    slot.create()?;
    let dir = env.dir.path().join("raw-qd");
    std::fs::create_dir_all(dir.join("run"))?;
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(snap.join("disk.raw"))
        .arg(dir.join("disk.qcow2"))
        .status()?;
    anyhow::ensure!(st.success(), "qemu-img failed");
    let cfg = rigbox_vmm::VmConfig {
        id: format!("benchqd-{}", std::process::id()),
        kernel,
        disk: dir.join("disk.qcow2"),
        disk_format: rigbox_vmm::DiskFormat::Qcow2,
        vcpus: 1,
        mem_mb: 512,
        netns: slot.name().into(),
        tap: rigbox_netns::TAP_NAME.into(),
        mac: rigbox_netns::GUEST_MAC.into(),
        run_dir: dir.join("run"),
        console_log: dir.join("console.log"),
        extra_args: vec![],
    };
    let files = rigbox_vmm::SnapshotFiles { backend: vmm.kind(), state: snap.join("vmstate"), memory: None };
    let t = Instant::now();
    let r = async {
        let vm = vmm.restore(&cfg, &files).await?;
        super::agent_answers(&slot, Duration::from_secs(60)).await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        let _ = vmm.kill(&cfg, &vm).await;
        Ok::<_, anyhow::Error>(ms)
    }
    .await;
    let _ = slot.delete();
    r
}
