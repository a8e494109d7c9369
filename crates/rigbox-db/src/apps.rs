//! Storage of apps and routes, their health, and edge metric samples.
//!
//! An app routes `{subdomain}.{base_domain}` to a port of a workspace.
//! Subdomains are unique across the platform; names are unique per
//! workspace. Apps go when their workspace (or owner) goes (foreign keys
//! cascade). Health keeps the last check per app plus one event per change.
//! Metric samples are 10-second buckets written by the edge; several rows
//! of one bucket add up, and [`AppStore::prune_app_metrics`] removes old
//! rows and rows of deleted apps.

use crate::{DbError, DbResult, SqliteStore};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

/// An app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppRow {
    /// `app-…`.
    pub id: String,
    /// Workspace it routes to.
    pub workspace_id: String,
    /// Owner.
    pub user_id: String,
    /// The workspace's node.
    pub node_id: String,
    /// Name (unique per workspace).
    pub name: String,
    /// Host label (unique across the platform).
    pub subdomain: String,
    /// Port inside the workspace (0 for `cli` apps).
    pub port: i64,
    /// `http` (what the edge speaks to the app).
    pub protocol: String,
    /// `service` or `cli`.
    pub app_kind: String,
    /// `active`, `inactive`, `installing`, `error`.
    pub status: String,
    /// `private`, `public`, `privileged`.
    pub visibility: String,
    /// Users let in when privileged.
    pub allowed_emails: Vec<String>,
    /// Custom domain.
    pub custom_domain: Option<String>,
    /// Custom domain verified.
    pub custom_domain_verified: bool,
    /// Owned by a template or catalog item.
    pub managed: bool,
    /// Backing services it needs.
    pub depends_on: Vec<String>,
    /// Tags.
    pub system_tags: Vec<String>,
    /// Description.
    pub description: Option<String>,
    /// Free-form metadata.
    pub metadata: serde_json::Value,
    /// The systemd unit behind the app, when known.
    pub service_name: Option<String>,
    /// Path of the HTTP health probe.
    pub health_path: String,
    /// Creation.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// One health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppHealthRow {
    /// App.
    pub app_id: String,
    /// The HTTP probe got an answer below 500.
    pub live: bool,
    /// The port is listening inside the workspace.
    pub port_open: bool,
    /// The unit's state (`active`, `inactive`, `failed`, `unknown`, `unmanaged`).
    pub service_status: String,
    /// Unit active but port closed.
    pub port_drift: bool,
    /// Status of the probe's answer.
    pub http_status: Option<i64>,
    /// Why not live.
    pub detail: Option<String>,
    /// When checked.
    pub checked_at: DateTime<Utc>,
}

impl AppHealthRow {
    fn same_state(&self, o: &AppHealthRow) -> bool {
        (self.live, self.port_open, &self.service_status, self.port_drift) == (o.live, o.port_open, &o.service_status, o.port_drift)
    }
}

/// A metric sample (see `rigbox_edge::metrics`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppMetricRow {
    /// App.
    pub app_id: String,
    /// Host.
    pub host: String,
    /// Bucket start (s since the epoch).
    pub t: i64,
    /// Bucket width (s).
    pub step_secs: i64,
    /// Requests.
    pub requests: i64,
    /// 5xx answers.
    pub errors_5xx: i64,
    /// Answers per class 1xx..5xx.
    pub status_classes: [i64; 5],
    /// Body bytes out.
    pub bytes_out: i64,
    /// Latency histogram counts.
    pub latency_hist: Vec<u64>,
}

/// Storage of apps and routes.
#[async_trait::async_trait]
pub trait AppStore: Send + Sync {
    /// Inserts an app (subdomain taken, or name taken in the workspace → `Conflict`).
    async fn create_app(&self, a: &AppRow) -> DbResult<()>;
    /// An app by id.
    async fn app(&self, id: &str) -> DbResult<AppRow>;
    /// An app by subdomain.
    async fn app_by_subdomain(&self, subdomain: &str) -> DbResult<AppRow>;
    /// A user's apps, optionally of one workspace, oldest first.
    async fn apps_of_user(&self, user_id: &str, workspace_id: Option<&str>) -> DbResult<Vec<AppRow>>;
    /// A workspace's apps.
    async fn apps_of_workspace(&self, workspace_id: &str) -> DbResult<Vec<AppRow>>;
    /// Apps of a kind and status (e.g. active services, for health checks).
    async fn apps_by_status(&self, app_kind: &str, status: &str) -> DbResult<Vec<AppRow>>;
    /// Replaces an app (by id; uniqueness as in `create_app`).
    async fn update_app(&self, a: &AppRow) -> DbResult<()>;
    /// Deletes an app and its metric samples.
    async fn delete_app(&self, id: &str) -> DbResult<()>;
    /// Deletes a workspace's apps; returns how many.
    async fn delete_apps_of_workspace(&self, workspace_id: &str) -> DbResult<u64>;
    /// Records a check; true when the state changed (then an event is kept).
    async fn record_app_health(&self, h: &AppHealthRow) -> DbResult<bool>;
    /// The last check.
    async fn app_health(&self, app_id: &str) -> DbResult<AppHealthRow>;
    /// The last `limit` state changes, newest first.
    async fn app_health_events(&self, app_id: &str, limit: i64) -> DbResult<Vec<AppHealthRow>>;
    /// Stores metric samples.
    async fn insert_app_metrics(&self, rows: &[AppMetricRow]) -> DbResult<()>;
    /// An app's samples with `t >= since`, oldest first.
    async fn app_metrics(&self, app_id: &str, since: i64) -> DbResult<Vec<AppMetricRow>>;
    /// Removes samples older than `before` and those of deleted apps.
    async fn prune_app_metrics(&self, before: i64) -> DbResult<u64>;
}

fn json<T: serde::de::DeserializeOwned>(s: &str) -> DbResult<T> {
    serde_json::from_str(s).map_err(|e| DbError::Corrupt(e.to_string()))
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn app(r: &SqliteRow) -> DbResult<AppRow> {
    Ok(AppRow {
        id: r.try_get("id")?,
        workspace_id: r.try_get("workspace_id")?,
        user_id: r.try_get("user_id")?,
        node_id: r.try_get("node_id")?,
        name: r.try_get("name")?,
        subdomain: r.try_get("subdomain")?,
        port: r.try_get("port")?,
        protocol: r.try_get("protocol")?,
        app_kind: r.try_get("app_kind")?,
        status: r.try_get("status")?,
        visibility: r.try_get("visibility")?,
        allowed_emails: json(&r.try_get::<String, _>("allowed_emails")?)?,
        custom_domain: r.try_get("custom_domain")?,
        custom_domain_verified: r.try_get::<i64, _>("custom_domain_verified")? != 0,
        managed: r.try_get::<i64, _>("managed")? != 0,
        depends_on: json(&r.try_get::<String, _>("depends_on")?)?,
        system_tags: json(&r.try_get::<String, _>("system_tags")?)?,
        description: r.try_get("description")?,
        metadata: json(&r.try_get::<String, _>("metadata")?)?,
        service_name: r.try_get("service_name")?,
        health_path: r.try_get("health_path")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn health(r: &SqliteRow, at: &str) -> DbResult<AppHealthRow> {
    Ok(AppHealthRow {
        app_id: r.try_get("app_id")?,
        live: r.try_get::<i64, _>("live")? != 0,
        port_open: r.try_get::<i64, _>("port_open")? != 0,
        service_status: r.try_get("service_status")?,
        port_drift: r.try_get::<i64, _>("port_drift")? != 0,
        http_status: r.try_get("http_status")?,
        detail: r.try_get("detail")?,
        checked_at: r.try_get(at)?,
    })
}

fn metric(r: &SqliteRow) -> DbResult<AppMetricRow> {
    Ok(AppMetricRow {
        app_id: r.try_get("app_id")?,
        host: r.try_get("host")?,
        t: r.try_get("t")?,
        step_secs: r.try_get("step_secs")?,
        requests: r.try_get("requests")?,
        errors_5xx: r.try_get("errors_5xx")?,
        status_classes: [r.try_get("s1xx")?, r.try_get("s2xx")?, r.try_get("s3xx")?, r.try_get("s4xx")?, r.try_get("s5xx")?],
        bytes_out: r.try_get("bytes_out")?,
        latency_hist: json(&r.try_get::<String, _>("latency_hist")?)?,
    })
}

const APP_COLUMNS: &str = "id, workspace_id, user_id, node_id, name, subdomain, port, protocol, app_kind, status, visibility, allowed_emails, custom_domain, custom_domain_verified, managed, depends_on, system_tags, description, metadata, service_name, health_path, created_at, updated_at";

#[async_trait::async_trait]
impl AppStore for SqliteStore {
    async fn create_app(&self, a: &AppRow) -> DbResult<()> {
        sqlx::query(&format!("INSERT INTO apps ({APP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"))
            .bind(&a.id)
            .bind(&a.workspace_id)
            .bind(&a.user_id)
            .bind(&a.node_id)
            .bind(&a.name)
            .bind(&a.subdomain)
            .bind(a.port)
            .bind(&a.protocol)
            .bind(&a.app_kind)
            .bind(&a.status)
            .bind(&a.visibility)
            .bind(to_json(&a.allowed_emails))
            .bind(&a.custom_domain)
            .bind(i64::from(a.custom_domain_verified))
            .bind(i64::from(a.managed))
            .bind(to_json(&a.depends_on))
            .bind(to_json(&a.system_tags))
            .bind(&a.description)
            .bind(to_json(&a.metadata))
            .bind(&a.service_name)
            .bind(&a.health_path)
            .bind(a.created_at)
            .bind(a.updated_at)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn app(&self, id: &str) -> DbResult<AppRow> {
        app(&sqlx::query(&format!("SELECT {APP_COLUMNS} FROM apps WHERE id = ?")).bind(id).fetch_one(self.pool()).await?)
    }

    async fn app_by_subdomain(&self, subdomain: &str) -> DbResult<AppRow> {
        app(&sqlx::query(&format!("SELECT {APP_COLUMNS} FROM apps WHERE subdomain = ?")).bind(subdomain).fetch_one(self.pool()).await?)
    }

    async fn apps_of_user(&self, user_id: &str, workspace_id: Option<&str>) -> DbResult<Vec<AppRow>> {
        let rows = match workspace_id {
            Some(w) => {
                sqlx::query(&format!("SELECT {APP_COLUMNS} FROM apps WHERE user_id = ? AND workspace_id = ? ORDER BY created_at"))
                    .bind(user_id)
                    .bind(w)
                    .fetch_all(self.pool())
                    .await?
            }
            None => sqlx::query(&format!("SELECT {APP_COLUMNS} FROM apps WHERE user_id = ? ORDER BY created_at")).bind(user_id).fetch_all(self.pool()).await?,
        };
        rows.iter().map(app).collect()
    }

    async fn apps_of_workspace(&self, workspace_id: &str) -> DbResult<Vec<AppRow>> {
        sqlx::query(&format!("SELECT {APP_COLUMNS} FROM apps WHERE workspace_id = ? ORDER BY created_at"))
            .bind(workspace_id)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(app)
            .collect()
    }

    async fn apps_by_status(&self, app_kind: &str, status: &str) -> DbResult<Vec<AppRow>> {
        sqlx::query(&format!("SELECT {APP_COLUMNS} FROM apps WHERE app_kind = ? AND status = ? ORDER BY created_at"))
            .bind(app_kind)
            .bind(status)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(app)
            .collect()
    }

    async fn update_app(&self, a: &AppRow) -> DbResult<()> {
        let r = sqlx::query(
            "UPDATE apps SET node_id = ?, name = ?, subdomain = ?, port = ?, protocol = ?, app_kind = ?, status = ?, visibility = ?,
             allowed_emails = ?, custom_domain = ?, custom_domain_verified = ?, managed = ?, depends_on = ?, system_tags = ?,
             description = ?, metadata = ?, service_name = ?, health_path = ?, updated_at = ? WHERE id = ?",
        )
        .bind(&a.node_id)
        .bind(&a.name)
        .bind(&a.subdomain)
        .bind(a.port)
        .bind(&a.protocol)
        .bind(&a.app_kind)
        .bind(&a.status)
        .bind(&a.visibility)
        .bind(to_json(&a.allowed_emails))
        .bind(&a.custom_domain)
        .bind(i64::from(a.custom_domain_verified))
        .bind(i64::from(a.managed))
        .bind(to_json(&a.depends_on))
        .bind(to_json(&a.system_tags))
        .bind(&a.description)
        .bind(to_json(&a.metadata))
        .bind(&a.service_name)
        .bind(&a.health_path)
        .bind(a.updated_at)
        .bind(&a.id)
        .execute(self.pool())
        .await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound);
        }
        Ok(())
    }

    async fn delete_app(&self, id: &str) -> DbResult<()> {
        let r = sqlx::query("DELETE FROM apps WHERE id = ?").bind(id).execute(self.pool()).await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound);
        }
        sqlx::query("DELETE FROM app_metric_samples WHERE app_id = ?").bind(id).execute(self.pool()).await?;
        Ok(())
    }

    async fn delete_apps_of_workspace(&self, workspace_id: &str) -> DbResult<u64> {
        sqlx::query("DELETE FROM app_metric_samples WHERE app_id IN (SELECT id FROM apps WHERE workspace_id = ?)")
            .bind(workspace_id)
            .execute(self.pool())
            .await?;
        Ok(sqlx::query("DELETE FROM apps WHERE workspace_id = ?").bind(workspace_id).execute(self.pool()).await?.rows_affected())
    }

    async fn record_app_health(&self, h: &AppHealthRow) -> DbResult<bool> {
        let mut tx = self.pool().begin().await?;
        let prev = match sqlx::query("SELECT * FROM app_health WHERE app_id = ?").bind(&h.app_id).fetch_optional(&mut *tx).await? {
            Some(r) => Some((health(&r, "checked_at")?, r.try_get::<DateTime<Utc>, _>("changed_at")?)),
            None => None,
        };
        let changed = prev.as_ref().is_none_or(|(p, _)| !p.same_state(h));
        let changed_at = match (&prev, changed) {
            (Some((_, at)), false) => *at,
            _ => h.checked_at,
        };
        sqlx::query(
            "INSERT INTO app_health (app_id, live, port_open, service_status, port_drift, http_status, detail, checked_at, changed_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT(app_id) DO UPDATE SET live = excluded.live, port_open = excluded.port_open, service_status = excluded.service_status,
             port_drift = excluded.port_drift, http_status = excluded.http_status, detail = excluded.detail,
             checked_at = excluded.checked_at, changed_at = excluded.changed_at",
        )
        .bind(&h.app_id)
        .bind(i64::from(h.live))
        .bind(i64::from(h.port_open))
        .bind(&h.service_status)
        .bind(i64::from(h.port_drift))
        .bind(h.http_status)
        .bind(&h.detail)
        .bind(h.checked_at)
        .bind(changed_at)
        .execute(&mut *tx)
        .await?;
        if changed {
            sqlx::query(
                "INSERT INTO app_health_events (app_id, live, port_open, service_status, port_drift, http_status, detail, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&h.app_id)
            .bind(i64::from(h.live))
            .bind(i64::from(h.port_open))
            .bind(&h.service_status)
            .bind(i64::from(h.port_drift))
            .bind(h.http_status)
            .bind(&h.detail)
            .bind(h.checked_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn app_health(&self, app_id: &str) -> DbResult<AppHealthRow> {
        health(&sqlx::query("SELECT * FROM app_health WHERE app_id = ?").bind(app_id).fetch_one(self.pool()).await?, "checked_at")
    }

    async fn app_health_events(&self, app_id: &str, limit: i64) -> DbResult<Vec<AppHealthRow>> {
        sqlx::query("SELECT * FROM app_health_events WHERE app_id = ? ORDER BY id DESC LIMIT ?")
            .bind(app_id)
            .bind(limit)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|r| health(r, "at"))
            .collect()
    }

    async fn insert_app_metrics(&self, rows: &[AppMetricRow]) -> DbResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool().begin().await?;
        for m in rows {
            sqlx::query(
                "INSERT INTO app_metric_samples (app_id, host, t, step_secs, requests, errors_5xx, s1xx, s2xx, s3xx, s4xx, s5xx, bytes_out, latency_hist)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&m.app_id)
            .bind(&m.host)
            .bind(m.t)
            .bind(m.step_secs)
            .bind(m.requests)
            .bind(m.errors_5xx)
            .bind(m.status_classes[0])
            .bind(m.status_classes[1])
            .bind(m.status_classes[2])
            .bind(m.status_classes[3])
            .bind(m.status_classes[4])
            .bind(m.bytes_out)
            .bind(to_json(&m.latency_hist))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn app_metrics(&self, app_id: &str, since: i64) -> DbResult<Vec<AppMetricRow>> {
        sqlx::query("SELECT * FROM app_metric_samples WHERE app_id = ? AND t >= ? ORDER BY t")
            .bind(app_id)
            .bind(since)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(metric)
            .collect()
    }

    async fn prune_app_metrics(&self, before: i64) -> DbResult<u64> {
        let a = sqlx::query("DELETE FROM app_metric_samples WHERE t < ?").bind(before).execute(self.pool()).await?.rows_affected();
        let b = sqlx::query("DELETE FROM app_metric_samples WHERE app_id NOT IN (SELECT id FROM apps)").execute(self.pool()).await?.rows_affected();
        Ok(a + b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Store, User, WorkspaceRow};
    use std::collections::BTreeMap;

    async fn setup() -> (tempfile::TempDir, SqliteStore) {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&d.path().join("t.db")).await.unwrap();
        let now = Utc::now();
        s.create_user(&User { id: "u-1".into(), email: "a@x.test".into(), is_admin: false, ai_mode: "managed".into(), created_at: now }).await.unwrap();
        for id in ["ws-1", "ws-2"] {
            s.create_workspace(&WorkspaceRow {
                id: id.into(),
                user_id: "u-1".into(),
                node_id: "n1".into(),
                name: id.into(),
                status: "running".into(),
                image: "base".into(),
                template_id: None,
                ram_mb: 512,
                vcpu_count: 1,
                disk_size_mb: 1024,
                env_vars: BTreeMap::new(),
                setup_script_ids: vec![],
                service_spec_ids: vec![],
                ai_mode: None,
                failure_code: None,
                failure_reason: None,
                failure_at: None,
                creation_attempts: 0,
                creation_started_at: None,
                created_at: now,
                updated_at: now,
            })
            .await
            .unwrap();
        }
        (d, s)
    }

    fn row(id: &str, ws: &str, name: &str, sub: &str) -> AppRow {
        AppRow {
            id: id.into(),
            workspace_id: ws.into(),
            user_id: "u-1".into(),
            node_id: "n1".into(),
            name: name.into(),
            subdomain: sub.into(),
            port: 8000,
            protocol: "http".into(),
            app_kind: "service".into(),
            status: "active".into(),
            visibility: "private".into(),
            allowed_emails: vec!["b@x.test".into()],
            custom_domain: None,
            custom_domain_verified: false,
            managed: false,
            depends_on: vec![],
            system_tags: vec![],
            description: None,
            metadata: serde_json::json!({"k": 1}),
            service_name: None,
            health_path: "/".into(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn apps_round_trip_with_unique_subdomains() {
        let (_d, s) = setup().await;
        s.create_app(&row("app-1", "ws-1", "web", "web")).await.unwrap();
        assert!(matches!(s.create_app(&row("app-2", "ws-2", "other", "web")).await, Err(DbError::Conflict(_))), "subdomains are global");
        assert!(matches!(s.create_app(&row("app-2", "ws-1", "web", "web2")).await, Err(DbError::Conflict(_))), "names per workspace");
        s.create_app(&row("app-2", "ws-2", "web", "web2")).await.unwrap();
        let mut a = s.app_by_subdomain("web").await.unwrap();
        assert_eq!((a.id.as_str(), a.allowed_emails.len(), a.metadata["k"].as_i64()), ("app-1", 1, Some(1)));
        assert_eq!(s.apps_of_user("u-1", None).await.unwrap().len(), 2);
        assert_eq!(s.apps_of_user("u-1", Some("ws-2")).await.unwrap().len(), 1);
        a.visibility = "public".into();
        a.subdomain = "web2".into();
        assert!(matches!(s.update_app(&a).await, Err(DbError::Conflict(_))));
        a.subdomain = "site".into();
        s.update_app(&a).await.unwrap();
        assert_eq!(s.app("app-1").await.unwrap().visibility, "public");
        assert_eq!(s.apps_by_status("service", "active").await.unwrap().len(), 2);
        s.delete_app("app-1").await.unwrap();
        assert!(matches!(s.delete_app("app-1").await, Err(DbError::NotFound)));
        // Deleting the workspace takes its apps along.
        s.delete_workspace("ws-2").await.unwrap();
        assert!(matches!(s.app("app-2").await, Err(DbError::NotFound)));
    }

    #[tokio::test]
    async fn health_changes_are_recorded_once() {
        let (_d, s) = setup().await;
        s.create_app(&row("app-1", "ws-1", "web", "web")).await.unwrap();
        let mut h = AppHealthRow {
            app_id: "app-1".into(),
            live: true,
            port_open: true,
            service_status: "active".into(),
            port_drift: false,
            http_status: Some(200),
            detail: None,
            checked_at: Utc::now(),
        };
        assert!(s.record_app_health(&h).await.unwrap(), "first check is a change");
        assert!(!s.record_app_health(&h).await.unwrap(), "same state");
        h.live = false;
        h.http_status = None;
        assert!(s.record_app_health(&h).await.unwrap());
        let ev = s.app_health_events("app-1", 10).await.unwrap();
        assert_eq!(ev.len(), 2);
        assert!(!ev[0].live && ev[1].live, "newest first");
        assert!(!s.app_health("app-1").await.unwrap().live);
    }

    #[tokio::test]
    async fn metrics_insert_query_prune() {
        let (_d, s) = setup().await;
        s.create_app(&row("app-1", "ws-1", "web", "web")).await.unwrap();
        let m = |app: &str, t: i64| AppMetricRow {
            app_id: app.into(),
            host: "web.localhost".into(),
            t,
            step_secs: 10,
            requests: 5,
            errors_5xx: 1,
            status_classes: [0, 4, 0, 0, 1],
            bytes_out: 100,
            latency_hist: vec![1, 2, 2],
        };
        s.insert_app_metrics(&[m("app-1", 100), m("app-1", 200), m("app-gone", 200)]).await.unwrap();
        let got = s.app_metrics("app-1", 150).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0], m("app-1", 200));
        assert_eq!(s.prune_app_metrics(150).await.unwrap(), 2, "one old sample, one of a deleted app");
        assert_eq!(s.app_metrics("app-1", 0).await.unwrap().len(), 1);
    }
}
