//! API keys, the caller's identity, and administration (users, nodes).

use crate::auth::{mint_key, Auth};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::views::*;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::Utc;
use rigbox_db::{DbError, NodeRow, User};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Routes under `/api/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api-keys", get(list_keys).post(create_key))
        .route("/api-keys/{id}", delete(delete_key))
        .route("/users/me", get(me))
        .route("/admin/users", get(list_users).post(create_user))
        .route("/admin/users/{id}/api-keys", post(admin_mint_key))
        .route("/admin/nodes", get(list_nodes).post(register_node))
}

fn user_view(u: &User) -> UserView {
    UserView { id: u.id.clone(), email: u.email.clone(), is_admin: u.is_admin, created_at: u.created_at }
}

async fn list_keys(State(st): State<AppState>, auth: Auth) -> ApiResult<Json<ListApiKeysResponse>> {
    let keys = st
        .store()
        .api_keys(&auth.user.id)
        .await?
        .into_iter()
        .map(|k| ApiKeyView {
            id: k.id,
            name: k.name,
            key_preview: k.key_preview,
            is_workspace_key: k.is_workspace_key,
            created_at: k.created_at,
            last_used_at: k.last_used_at,
        })
        .collect();
    Ok(Json(ListApiKeysResponse { api_keys: keys }))
}

async fn create_key(
    State(st): State<AppState>,
    auth: Auth,
    body: Option<Json<CreateApiKeyRequest>>,
) -> ApiResult<(StatusCode, Json<CreateApiKeyResponse>)> {
    let name = body.and_then(|Json(b)| b.name).filter(|n| !n.trim().is_empty());
    if name.as_ref().is_some_and(|n| n.len() > 100) {
        return Err(ApiError::bad_request("name must be at most 100 characters"));
    }
    let (row, key) = mint_key(&st, &auth.user.id, name, None).await?;
    Ok((StatusCode::CREATED, Json(CreateApiKeyResponse { id: row.id, key })))
}

async fn delete_key(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<MessageResponse>> {
    match st.store().delete_api_key(&auth.user.id, &id).await {
        Ok(()) => Ok(Json(MessageResponse::new("API key deleted"))),
        Err(DbError::NotFound) => Err(ApiError::not_found("API key")),
        Err(e) => Err(e.into()),
    }
}

async fn me(auth: Auth) -> Json<UserView> {
    Json(user_view(&auth.user))
}

fn valid_email(e: &str) -> bool {
    let Some((local, domain)) = e.split_once('@') else { return false };
    !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.') && e.len() <= 254 && !e.contains(char::is_whitespace)
}

/// Creates a user with a fresh id.
pub async fn create_user_row(st: &AppState, email: &str, is_admin: bool) -> ApiResult<User> {
    if !valid_email(email) {
        return Err(ApiError::bad_request(format!("invalid email {email:?}")));
    }
    let mut b = [0u8; 5];
    rand::Rng::fill(&mut rand::thread_rng(), &mut b[..]);
    let u = User {
        id: format!("u-{}", hex::encode(b)),
        email: email.to_lowercase(),
        is_admin,
        ai_mode: "managed".into(),
        created_at: Utc::now(),
    };
    match st.store().create_user(&u).await {
        Ok(()) => Ok(u),
        Err(DbError::Conflict(_)) => Err(ApiError::new(StatusCode::CONFLICT, "email_taken", format!("a user with email {email} exists"))),
        Err(e) => Err(e.into()),
    }
}

async fn create_user(
    State(st): State<AppState>,
    auth: Auth,
    body: Result<Json<CreateUserRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<CreateUserResponse>)> {
    auth.require_admin()?;
    let Json(req) = body?;
    let u = create_user_row(&st, &req.email, req.is_admin).await?;
    let (row, key) = mint_key(&st, &u.id, Some("first key".into()), None).await?;
    Ok((StatusCode::CREATED, Json(CreateUserResponse { user: user_view(&u), api_key: CreateApiKeyResponse { id: row.id, key } })))
}

async fn list_users(State(st): State<AppState>, auth: Auth) -> ApiResult<Json<ListUsersResponse>> {
    auth.require_admin()?;
    Ok(Json(ListUsersResponse { users: st.store().users().await?.iter().map(user_view).collect() }))
}

async fn admin_mint_key(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<(StatusCode, Json<CreateApiKeyResponse>)> {
    auth.require_admin()?;
    let u = st.store().user(&id).await.map_err(|_| ApiError::not_found("user"))?;
    let (row, key) = mint_key(&st, &u.id, Some("minted by admin".into()), None).await?;
    Ok((StatusCode::CREATED, Json(CreateApiKeyResponse { id: row.id, key })))
}

/// `POST /admin/nodes`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct RegisterNodeRequest {
    /// The node's API URL.
    pub url: String,
    /// The node's token.
    pub token: String,
}

/// A node as listed (never its token).
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct NodeView {
    /// Id.
    pub id: String,
    /// URL.
    pub url: String,
    /// Backend.
    pub backend: String,
    /// Last report.
    #[schema(value_type = Object)]
    pub info: serde_json::Value,
    /// Last contact.
    pub last_seen_at: Option<chrono::DateTime<Utc>>,
}

/// Registers a node after checking that it answers with this token.
pub async fn register(st: &AppState, url: &str, token: &str) -> ApiResult<NodeRow> {
    let client = rigbox_node_api::NodeClient::new(url, token);
    let info = client
        .info()
        .await
        .map_err(|e| ApiError::bad_request(format!("the node at {url} did not answer with this token: {e}")))?;
    let row = NodeRow {
        id: info.node_id.clone(),
        url: url.into(),
        token: token.into(),
        backend: format!("{}-{}", info.backend, info.accel),
        info: serde_json::to_value(&info).unwrap_or_default(),
        last_seen_at: Some(Utc::now()),
        created_at: Utc::now(),
    };
    st.store().upsert_node(&row).await?;
    st.nodes().insert(&row);
    Ok(row)
}

async fn register_node(
    State(st): State<AppState>,
    auth: Auth,
    body: Result<Json<RegisterNodeRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<NodeView>)> {
    auth.require_admin()?;
    let Json(req) = body?;
    let row = register(&st, &req.url, &req.token).await?;
    Ok((StatusCode::CREATED, Json(NodeView { id: row.id, url: row.url, backend: row.backend, info: row.info, last_seen_at: row.last_seen_at })))
}

async fn list_nodes(State(st): State<AppState>, auth: Auth) -> ApiResult<Json<serde_json::Value>> {
    auth.require_admin()?;
    let nodes: Vec<NodeView> = st
        .store()
        .nodes()
        .await?
        .into_iter()
        .map(|n| NodeView { id: n.id, url: n.url, backend: n.backend, info: n.info, last_seen_at: n.last_seen_at })
        .collect();
    Ok(Json(serde_json::json!({ "nodes": nodes })))
}

#[cfg(test)]
mod tests {
    #[test]
    fn emails_are_checked() {
        assert!(super::valid_email("a@b.test"));
        assert!(!super::valid_email("a@b"));
        assert!(!super::valid_email("@b.test"));
        assert!(!super::valid_email("a b@c.test"));
    }
}
