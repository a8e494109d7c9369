//! Warm templates: the fast path of quick deploy.
//!
//! For a (template, memory, vCPUs) the node boots a workspace once, waits
//! until systemd reports the system up, keeps a live snapshot of it named
//! `tpl-<template>-<image key>-<ram>-<vcpus>`, and deletes the workspace. A
//! workspace created later with exactly that template and those sizes (and
//! the template's disk size) gets a copy-on-write disk over the snapshot's,
//! and its first start restores the snapshot, with a fresh identity (hostname,
//! SSH host keys, clock, RNG), instead of booting. When the restore fails the
//! start falls back to a cold boot from the same disk. A new image (recipe or
//! guest agent change) gives a new key, so stale warm snapshots are never
//! used; they are removed when no workspace's disk depends on them.

use crate::error::NodeError;
use crate::node::Node;
use crate::server::AppState;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use rigbox_node_api::{CreateSnapshot, CreateWorkspace, SnapshotMeta, WarmRequest, WarmTemplate};
use rigbox_types::WorkspaceState;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};

/// In-memory registry of builds.
#[derive(Debug, Default)]
pub(crate) struct Warm {
    builds: StdMutex<HashMap<String, WarmTemplate>>,
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/v1/templates/warm", get(list)).route("/v1/templates/{template}/warm", post(warm))
}

async fn warm(State(st): State<AppState>, Path(template): Path<String>, Json(req): Json<WarmRequest>) -> Result<Json<WarmTemplate>, NodeError> {
    Ok(Json(st.node.warm_template(&template, req).await?))
}

async fn list(State(st): State<AppState>) -> Json<Vec<WarmTemplate>> {
    Json(st.node.warm_templates().await)
}

impl Node {
    fn warm_id(&self, template: &str, ram_mb: u32, vcpus: u32) -> Result<String, NodeError> {
        let img = self.inner.images.resolve(template)?;
        let key: String = img.key.chars().take(10).collect();
        Ok(format!("tpl-{template}-{key}-{ram_mb}-{vcpus}"))
    }

    /// The ready warm snapshot matching a new workspace, if any.
    pub(crate) async fn find_warm(&self, spec: &CreateWorkspace) -> Option<(SnapshotMeta, PathBuf)> {
        let id = self.warm_id(&spec.template, spec.ram_mb, spec.vcpus).ok()?;
        let dir = self.snapshot_dir(&id).ok()?;
        let meta: SnapshotMeta = serde_json::from_slice(&tokio::fs::read(dir.join("meta.json")).await.ok()?).ok()?;
        // A larger disk is grown after the restore (the guest grows its
        // filesystem online); memory and vCPUs must match the snapshot.
        (meta.disk_mb <= spec.disk_mb && meta.backend == self.inner.vmm.kind().to_string()).then_some((meta, dir))
    }

    /// Starts building a warm snapshot (or reports the existing one).
    pub async fn warm_template(&self, template: &str, req: WarmRequest) -> Result<WarmTemplate, NodeError> {
        let sid = self.warm_id(template, req.ram_mb, req.vcpus)?;
        let mut entry = WarmTemplate {
            template: template.into(),
            ram_mb: req.ram_mb,
            vcpus: req.vcpus,
            disk_mb: req.disk_mb,
            snapshot_id: sid.clone(),
            state: "building".into(),
            error: None,
            build_ms: None,
        };
        if self.snapshot_dir(&sid)?.join("meta.json").exists() {
            entry.state = "ready".into();
            return Ok(entry);
        }
        {
            let mut b = self.inner.warm.builds.lock().map_err(|_| NodeError::Invalid("poisoned".into()))?;
            if let Some(e) = b.get(&sid) {
                if e.state == "building" {
                    return Ok(e.clone());
                }
            }
            b.insert(sid.clone(), entry.clone());
        }
        let node = self.clone();
        let t = template.to_string();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let r = node.build_warm(&t, &sid, &req).await;
            if let Ok(mut b) = node.inner.warm.builds.lock() {
                if let Some(e) = b.get_mut(&sid) {
                    e.build_ms = Some(t0.elapsed().as_millis() as u64);
                    match r {
                        Ok(()) => e.state = "ready".into(),
                        Err(err) => {
                            tracing::warn!(template = %t, "warming failed: {err}");
                            e.state = "failed".into();
                            e.error = Some(err.to_string());
                        }
                    }
                }
            }
        });
        Ok(entry)
    }

    async fn build_warm(&self, template: &str, sid: &str, req: &WarmRequest) -> Result<(), NodeError> {
        let ws_id = format!("warm-{}", &sid[4..].chars().take(30).collect::<String>().trim_end_matches('-'));
        let spec = CreateWorkspace {
            template: template.into(),
            vcpus: req.vcpus,
            ram_mb: req.ram_mb,
            disk_mb: req.disk_mb,
            hostname: "rigbox".into(),
            env: Default::default(),
            authorized_keys: vec![],
            metadata: serde_json::json!({}),
            setup: Default::default(),
            cold_boot: false,
        };
        let _ = self.delete(&ws_id).await;
        self.create_cold(&ws_id, spec).await?;
        let result = async {
            self.start(&ws_id).await?;
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                let s = self.status(&ws_id).await?;
                match s.state {
                    WorkspaceState::Running => break,
                    WorkspaceState::Failed => return Err(NodeError::Invalid(format!("boot failed: {:?}", s.failure))),
                    _ if Instant::now() > deadline => return Err(NodeError::Invalid("boot timed out".into())),
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            // Ready means the whole system is up, not just the agent.
            let guest = self.running_guest(&ws_id).await?;
            let r: rigbox_guest_proto::ExecResponse = guest
                .call(
                    hyper::Method::POST,
                    "/v1/exec",
                    Some(&rigbox_guest_proto::ExecRequest {
                        shell: Some("systemctl is-system-running --wait; sync".into()),
                        user: Some("root".into()),
                        timeout_ms: Some(300_000),
                        ..Default::default()
                    }),
                    Duration::from_secs(330),
                )
                .await?;
            tracing::info!(template, state = r.stdout.trim(), "template booted; taking its warm snapshot");
            self.snapshot(&ws_id, &CreateSnapshot { snapshot_id: sid.into(), live: true }).await?;
            Ok(())
        }
        .await;
        let _ = self.delete(&ws_id).await;
        result?;
        // Warm snapshots of older images of this template and size are no
        // longer used by new workspaces; remove those no disk depends on.
        let prefix = format!("tpl-{template}-");
        let suffix = format!("-{}-{}", req.ram_mb, req.vcpus);
        for m in self.list_snapshots().await {
            if m.id.starts_with(&prefix) && m.id.ends_with(&suffix) && m.id != sid {
                let _ = self.delete_snapshot(&m.id).await;
            }
        }
        Ok(())
    }

    /// All warm templates (ready on disk, or being built).
    pub async fn warm_templates(&self) -> Vec<WarmTemplate> {
        let mut out: HashMap<String, WarmTemplate> = self.inner.warm.builds.lock().map(|b| b.clone()).unwrap_or_default();
        for m in self.list_snapshots().await {
            if m.id.starts_with("tpl-") {
                out.entry(m.id.clone()).or_insert(WarmTemplate {
                    template: m.template.clone(),
                    ram_mb: m.ram_mb,
                    vcpus: m.vcpus,
                    disk_mb: m.disk_mb,
                    snapshot_id: m.id.clone(),
                    state: "ready".into(),
                    error: None,
                    build_ms: Some(m.took_ms),
                });
            }
        }
        let mut v: Vec<WarmTemplate> = out.into_values().collect();
        v.sort_by(|a, b| a.snapshot_id.cmp(&b.snapshot_id));
        v
    }
}
