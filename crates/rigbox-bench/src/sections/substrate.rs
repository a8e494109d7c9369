//! Boot: start request to guest agent answering, through the node agent,
//! next to the same boot by hand with the raw VMM command line.

use crate::report::{median, Row};
use crate::{BenchEnv, Section};
use rigbox_node_api::{CreateWorkspace, NodeClient};
use rigbox_types::WorkspaceState;
use std::time::{Duration, Instant};

const RUNS: usize = 3;

async fn platform_boot(node: &NodeClient, i: usize) -> anyhow::Result<f64> {
    let id = format!("ws-benchboot{i}");
    let spec = CreateWorkspace {
        template: "base".into(),
        vcpus: 1,
        ram_mb: 512,
        disk_mb: 3072,
        hostname: id.clone(),
        env: Default::default(),
        authorized_keys: vec![],
        metadata: serde_json::json!({}),
        setup: Default::default(),
        cold_boot: true,
    };
    node.create(&id, &spec).await?;
    let t0 = Instant::now();
    node.start(&id).await?;
    loop {
        let s = node.get(&id).await?;
        if s.state == WorkspaceState::Running {
            break;
        }
        if s.state == WorkspaceState::Failed || t0.elapsed() > Duration::from_secs(300) {
            anyhow::bail!("boot failed: {:?}", s.failure);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    node.delete(&id).await?;
    Ok(ms)
}

/// Boots by hand: our own netns and tap, a sparse copy of the image, the
/// QEMU command line from the substrate notes, and a poll of the agent port
/// from inside the namespace.
async fn raw_boot(env: &BenchEnv, i: usize) -> anyhow::Result<f64> {
    let p = rigbox_server::pipeline(&env.settings, rigbox_image::Progress::quiet())?;
    let img = p.resolve("base")?;
    let slot = rigbox_netns::Slot::for_workspace(&format!("benchraw{}-{i}", std::process::id()))?;
    slot.create()?;
    let dir = env.dir.path().join(format!("raw{i}"));
    std::fs::create_dir_all(&dir)?;
    let disk = dir.join("disk.raw");
    std::process::Command::new("cp").arg("--sparse=always").arg(&img.rootfs).arg(&disk).status()?;
    let result = async {
        let t0 = Instant::now();
        let st = tokio::process::Command::new("ip")
            .args(["netns", "exec", slot.name(), "qemu-system-x86_64"])
            .args(["-M", "microvm,x-option-roms=off,rtc=on,pit=on,pic=on,isa-serial=on", "-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "null"])
            .arg("-kernel")
            .arg(&img.kernel)
            .arg("-append")
            .arg("console=ttyS0 root=/dev/vda rw panic=1 reboot=t ip=169.254.0.2::169.254.0.1:255.255.255.252::eth0:off tsc_early_khz=2000000 lpj=8000000")
            .arg("-drive")
            .arg(format!("id=root,file={},format=raw,if=none", disk.display()))
            .args(["-device", "virtio-blk-device,drive=root", "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no", "-device", "virtio-net-device,netdev=n0,mac=06:00:a9:fe:00:02"])
            .arg("-daemonize")
            .arg("-pidfile")
            .arg(dir.join("pid"))
            .status()
            .await?;
        anyhow::ensure!(st.success(), "qemu failed to start");
        super::agent_answers(&slot, Duration::from_secs(300)).await?;
        Ok(t0.elapsed().as_secs_f64() * 1000.0)
    }
    .await;
    if let Ok(pid) = std::fs::read_to_string(dir.join("pid")) {
        if let Ok(pid) = pid.trim().parse::<u32>() {
            if let Some(v) = rigbox_vmm::VmProcess::from_pid(pid, rigbox_vmm::BackendKind::Qemu) {
                let _ = rigbox_vmm::process::kill_and_wait(&v, Duration::from_secs(5)).await;
            }
        }
    }
    let _ = slot.delete();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Runs the section.
pub async fn run(env: &BenchEnv) -> anyhow::Result<Section> {
    let p = env.platform().await?;
    let node = NodeClient::new(p.node.url(), p.node.token.clone());
    let info = node.info().await?;
    let mut plat = Vec::new();
    let mut raw = Vec::new();
    for i in 0..RUNS {
        raw.push(raw_boot(env, i).await?);
        plat.push(platform_boot(&node, i).await?);
    }
    let (pm, rm) = (median(plat.clone()), median(raw.clone()));
    let mut rows = vec![Row::ms(format!("boot to guest agent, {}-{} (median of {RUNS})", info.backend, info.accel), pm, Some(rm))];
    rows.push(Row::new("  all platform runs", plat.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", ") + " ms"));
    rows.push(Row::new("  all raw runs", raw.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", ") + " ms"));
    let (probe, _) = rigbox_server::probe(&env.settings);
    let mut notes = vec![
        "platform: node API start request until the node reports running (guest agent answered and identity pushed); a cold boot from the image (`cold_boot`, warm templates bypassed)".into(),
        "baseline: the same kernel, disk image and QEMU command line run by hand in a fresh namespace, until the agent port answers".into(),
    ];
    if probe.firecracker.is_some() && !probe.hardware_kvm(env.settings.pvm_guest_kernel) {
        notes.push("firecracker: installed, but /dev/kvm here is PVM, where stock guest kernels cannot run; no Firecracker boot time can be measured on this host (API-level timings are in the rigbox-vmm Firecracker tests)".into());
    }
    Ok(Section { title: "substrate: boot".into(), rows, notes })
}
