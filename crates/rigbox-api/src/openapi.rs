//! The OpenAPI document, generated from the types and handlers.

use axum::Json;
use utoipa::OpenApi;

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Rigbox API", description = "Self-hosted Rigbox: workspaces in micro-VMs", version = "1.0.0"),
    components(schemas(
        crate::views::Vm,
        crate::views::WorkspaceFailure,
        crate::views::GetWorkspaceResponse,
        crate::views::ListWorkspacesResponse,
        crate::views::CreateWorkspaceRequest,
        crate::views::ResizeWorkspaceRequest,
        crate::views::ResizeWorkspaceResponse,
        crate::views::UpdateWorkspaceEnvRequest,
        crate::views::MessageResponse,
        crate::views::ApiKeyView,
        crate::views::ListApiKeysResponse,
        crate::views::CreateApiKeyRequest,
        crate::views::CreateApiKeyResponse,
        crate::views::UserView,
        crate::views::CreateUserRequest,
        crate::views::CreateUserResponse,
        crate::views::ExecRequest,
        crate::views::ExecResponse,
        crate::views::WorkspaceTemplate,
        crate::views::TemplatesResponse,
        crate::views::GetUserLimitsResponse,
        crate::views::EffectiveLimits,
        crate::views::LimitsUsage,
        crate::error::ApiErrorBody,
        crate::error::ApiErrorDetail,
    ))
)]
pub struct ApiDoc;

/// `GET /api-docs/openapi.json`.
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
