//! Control-plane API latency (create and get at concurrency 1 and 16), and
//! create-to-running through the API next to the node agent's own boot time.

use crate::report::{median, percentile, Row};
use crate::{BenchEnv, Section};
use rigbox_client::views::CreateWorkspaceRequest;
use rigbox_client::Client;
use std::time::{Duration, Instant};

async fn timed<F, Fut, T>(f: F) -> anyhow::Result<(f64, T)>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, rigbox_client::ClientError>>,
{
    let t = Instant::now();
    let v = f().await?;
    Ok((t.elapsed().as_secs_f64() * 1000.0, v))
}

async fn creates(c: &Client, prefix: &str, n: usize, concurrency: usize) -> anyhow::Result<(Vec<f64>, Vec<String>)> {
    let mut lat = Vec::new();
    let mut ids = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(concurrency) {
        let futs = chunk.iter().map(|i| {
            let c = c.clone();
            let name = format!("{prefix}{i}");
            async move { timed(|| async { c.create_workspace(&CreateWorkspaceRequest { name, ..Default::default() }).await }).await }
        });
        for r in futures::future::join_all(futs).await {
            let (ms, w) = r?;
            lat.push(ms);
            ids.push(w.vm.id);
        }
    }
    Ok((lat, ids))
}

async fn gets(c: &Client, id: &str, total: usize, concurrency: usize) -> anyhow::Result<Vec<f64>> {
    let per = total / concurrency;
    let workers = (0..concurrency).map(|_| {
        let c = c.clone();
        let id = id.to_string();
        Box::pin(async move {
            let mut v = Vec::new();
            for _ in 0..per {
                let (ms, _) = timed(|| async { c.workspace(&id).await }).await?;
                v.push(ms);
            }
            Ok::<_, anyhow::Error>(v)
        })
    });
    let mut all = Vec::new();
    for r in futures::future::join_all(workers).await {
        all.extend(r?);
    }
    Ok(all)
}

/// Runs the section.
pub async fn run(env: &BenchEnv) -> anyhow::Result<Section> {
    let c = env.admin().await?;
    let mut rows = Vec::new();
    let (lat1, mut ids) = creates(&c, "bench-c1-", 8, 1).await?;
    rows.push(Row::new("POST /workspaces, concurrency 1 (p50 / p99)", format!("{:.1} / {:.1} ms", median(lat1.clone()), percentile(lat1, 99.0))));
    let (lat16, ids16) = creates(&c, "bench-c16-", 16, 16).await?;
    ids.extend(ids16);
    rows.push(Row::new("POST /workspaces, concurrency 16 (p50 / p99)", format!("{:.1} / {:.1} ms", median(lat16.clone()), percentile(lat16, 99.0))));
    let g1 = gets(&c, &ids[0], 200, 1).await?;
    rows.push(Row::new("GET /workspaces/{id}, concurrency 1 (p50 / p99)", format!("{:.2} / {:.2} ms", median(g1.clone()), percentile(g1, 99.0))));
    let g16 = gets(&c, &ids[0], 800, 16).await?;
    rows.push(Row::new("GET /workspaces/{id}, concurrency 16 (p50 / p99)", format!("{:.2} / {:.2} ms", median(g16.clone()), percentile(g16, 99.0))));
    for id in &ids {
        c.delete_workspace(id).await?;
    }

    // Create-to-running through the API, next to the node's own boot time.
    let mut api = Vec::new();
    let mut node = Vec::new();
    for i in 0..2 {
        let t0 = Instant::now();
        let w = c.create_workspace(&CreateWorkspaceRequest { name: format!("bench-boot-{i}"), ..Default::default() }).await?;
        c.action(&w.vm.id, "start").await?;
        loop {
            let s = c.workspace(&w.vm.id).await?;
            if s.vm.status == "running" {
                break;
            }
            anyhow::ensure!(s.vm.status != "failed" && t0.elapsed() < Duration::from_secs(300), "boot failed: {:?}", s.failure);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        api.push(t0.elapsed().as_secs_f64() * 1000.0);
        let p = env.platform().await?;
        let n = rigbox_node_api::NodeClient::new(p.node.url(), p.node.token.clone());
        node.push(n.get(&w.vm.id).await?.boot_ms.unwrap_or(0) as f64);
        c.delete_workspace(&w.vm.id).await?;
    }
    rows.push(Row::ms("create + start to running via the API (median of 2)", median(api), Some(median(node))));
    Ok(Section {
        title: "control plane API".into(),
        rows,
        notes: vec![
            "create includes placement and the node making the disk (on QEMU a qcow2 overlay over the template's base of that size; the first create of a size makes the base: a sparse copy of the image, resize2fs)".into(),
            "baseline of the last row: the node agent's own start-to-running time for the same boot; the difference is API, placement, disk allocation and the reconciler's 1 s polling".into(),
            "workspaces with the default template and sizes start from its warm snapshot once that is ready, as users' do (cold boots: substrate section)".into(),
        ],
    })
}
