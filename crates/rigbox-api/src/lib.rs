//! The Rigbox control plane's public API.
//!
//! JSON under `/api/v1` (also reachable as `/v1`), Bearer API keys, errors
//! as `{"error":{"code","message"}}`. Field names, states and shapes follow
//! the public Rigbox API reference; the OpenAPI document is generated from
//! this code and served at `/api-docs/openapi.json`.
//!
//! The control plane never runs guest code or VMM processes: every workspace
//! operation is a call to the node agent that hosts it (`rigbox-node-api`).
#![warn(missing_docs)]

pub mod ai;
pub mod apps;
pub mod auth;
pub mod automation;
pub mod error;
pub mod exec;
pub mod keys;
pub mod misc;
pub mod observe;
pub mod openapi;
pub mod reconcile;
pub mod sampler;
pub mod snapshots;
pub mod ssh;
pub mod state;
pub mod tools;
pub mod views;
pub mod workspaces;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Json, Router};
pub use error::{ApiError, ApiResult};
pub use state::{ApiConfig, AppState, Limits};

/// The `/api/v1` routes.
pub fn v1() -> Router<AppState> {
    Router::new()
        .merge(workspaces::router())
        .merge(exec::router())
        .merge(keys::router())
        .merge(misc::router())
        .merge(ssh::router())
        .merge(snapshots::router())
        .merge(apps::router())
        .merge(observe::router())
        .merge(automation::router())
        .merge(tools::router())
        .merge(ai::router())
}

/// Routes the node agents call (`/internal/v1`), authenticated by node token.
pub fn internal() -> Router<AppState> {
    Router::new().merge(ai::internal())
}

/// The whole API router.
pub fn router(st: AppState) -> Router {
    Router::new()
        .nest("/api/v1", v1())
        .nest("/v1", v1())
        .nest("/internal/v1", internal())
        .route("/api-docs/openapi.json", axum::routing::get(openapi::serve))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/metrics", axum::routing::get(observe::prometheus))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint").into_response() })
        .layer(axum::middleware::from_fn_with_state(st.clone(), observe::track))
        .with_state(st)
}

/// Ensures the first user (the admin) exists. With an empty user table it
/// creates `email` as admin with `key` (or a generated key) and returns the
/// plaintext key when it was generated here.
pub async fn bootstrap_admin(st: &AppState, email: &str, key: Option<&str>) -> anyhow::Result<Option<String>> {
    if st.store().user_count().await? > 0 {
        if let Some(k) = key {
            // A configured admin key must keep working (e.g. after a restart).
            if auth::lookup_key(st, k).await.is_err() {
                let admin = st.store().users().await?.into_iter().find(|u| u.is_admin);
                if let Some(a) = admin {
                    auth::mint_key(st, &a.id, Some("RIGBOX_ADMIN_KEY".into()), Some(k.to_string())).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            }
        }
        return Ok(None);
    }
    let u = keys::create_user_row(st, email, true).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let generated = key.is_none();
    let (_, plain) = auth::mint_key(st, &u.id, Some("admin".into()), key.map(str::to_string)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(generated.then_some(plain))
}

/// 404 body for unknown routes (also used by the edge).
pub fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, Json(serde_json::json!({"error": {"code": "not_found", "message": "no such endpoint"}})))
}
