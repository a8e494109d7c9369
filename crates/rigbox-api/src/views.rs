//! Request and response bodies, named and shaped as in the Rigbox reference.

use chrono::{DateTime, Utc};
use rigbox_db::WorkspaceRow;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// A workspace (the reference's `Vm`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Vm {
    /// `ws-…`.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Node it is placed on.
    pub node_id: String,
    /// Name (unique per user).
    pub name: String,
    /// Lifecycle state: provisioned, provisioning, starting, running, paused, stopping, stopped, deleting, failed.
    pub status: String,
    /// Image.
    pub image: String,
    /// Template.
    pub template_id: Option<String>,
    /// Memory (MiB).
    pub ram_mb: i32,
    /// vCPUs.
    pub vcpu_count: i32,
    /// Root disk (MiB).
    pub disk_size_mb: i32,
    /// Environment variables.
    pub env_vars: Option<BTreeMap<String, String>>,
    /// Setup scripts.
    pub setup_script_ids: Option<Vec<String>>,
    /// Service specs.
    pub service_spec_ids: Option<Vec<String>>,
    /// AI mode override (`managed`, `byok`), null to inherit.
    pub ai_mode: Option<String>,
    /// Guest address inside its private network slot.
    pub ip_address: Option<String>,
    /// Failure code when failed.
    pub failure_code: Option<String>,
    /// Failure reason when failed.
    pub failure_reason: Option<String>,
    /// Boot attempts.
    pub creation_attempts: i32,
    /// Start of the current boot attempt.
    pub creation_started_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// Failure details (the reference's `WorkspaceFailure`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct WorkspaceFailure {
    /// Stable code.
    pub code: String,
    /// Reason.
    pub message: String,
    /// Whether `retry` may help.
    pub retryable: bool,
    /// When.
    pub occurred_at: DateTime<Utc>,
    /// Boot attempts so far.
    pub attempts: i32,
}

/// `{vm, failure}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct GetWorkspaceResponse {
    /// The workspace.
    pub vm: Vm,
    /// Set when the workspace failed.
    pub failure: Option<WorkspaceFailure>,
}

/// `{vms}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ListWorkspacesResponse {
    /// The caller's workspaces.
    pub vms: Vec<Vm>,
}

/// `POST /workspaces`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CreateWorkspaceRequest {
    /// Name: lowercase letters, digits and dashes (a DNS label).
    pub name: String,
    /// Template (default `base`).
    pub template_id: Option<String>,
    /// Deprecated alias of `template_id`.
    pub image: Option<String>,
    /// Memory (raised to the template's floor).
    pub ram_mb: Option<i64>,
    /// vCPUs (raised to the template's floor).
    pub vcpu_count: Option<i64>,
    /// Disk (raised to the template's floor).
    pub disk_size_mb: Option<i64>,
    /// Catalog items to install.
    pub catalog_ids: Option<Vec<String>>,
    /// Setup scripts to run.
    pub setup_script_ids: Option<Vec<String>>,
    /// Service specs to install.
    pub service_spec_ids: Option<Vec<String>>,
    /// Initial environment (extension).
    pub env_vars: Option<BTreeMap<String, String>>,
}

/// `PUT /workspaces/{id}/resources`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ResizeWorkspaceRequest {
    /// New memory.
    pub ram_mb: Option<i64>,
    /// New vCPUs.
    pub vcpu_count: Option<i64>,
    /// New disk (only grows).
    pub disk_size_mb: Option<i64>,
}

/// `{message, vm}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResizeWorkspaceResponse {
    /// What happened.
    pub message: String,
    /// The workspace.
    pub vm: Vm,
}

/// `POST /workspaces/{id}/env`: sets these variables (a `null` value removes one).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UpdateWorkspaceEnvRequest {
    /// Variables.
    pub env_vars: BTreeMap<String, Option<String>>,
}

/// `{message}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MessageResponse {
    /// What happened.
    pub message: String,
}

impl MessageResponse {
    /// A message.
    pub fn new(m: impl Into<String>) -> Self {
        MessageResponse { message: m.into() }
    }
}

/// An API key as listed (never the secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyView {
    /// UUID.
    pub id: String,
    /// Label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `rb_...abcd1234`.
    pub key_preview: String,
    /// Workspace-scoped key.
    pub is_workspace_key: bool,
    /// Creation.
    pub created_at: DateTime<Utc>,
    /// Last use (absent if never used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
}

/// `{api_keys}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ListApiKeysResponse {
    /// Keys.
    pub api_keys: Vec<ApiKeyView>,
}

/// `POST /api-keys`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CreateApiKeyRequest {
    /// Label.
    pub name: Option<String>,
}

/// `{id, key}`: the key is shown only here.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateApiKeyResponse {
    /// UUID.
    pub id: String,
    /// The plaintext key.
    pub key: String,
}

/// A user.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    /// `u-…`.
    pub id: String,
    /// Email.
    pub email: String,
    /// Administrator.
    pub is_admin: bool,
    /// Creation.
    pub created_at: DateTime<Utc>,
}

/// `POST /admin/users`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateUserRequest {
    /// Email (unique).
    pub email: String,
    /// Administrator.
    #[serde(default)]
    pub is_admin: bool,
}

/// `{user, api_key}`: the user's first key, shown once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateUserResponse {
    /// The user.
    pub user: UserView,
    /// Their first API key.
    pub api_key: CreateApiKeyResponse,
}

/// `{users}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ListUsersResponse {
    /// Users.
    pub users: Vec<UserView>,
}

/// `POST /workspaces/{id}/exec`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ExecRequest {
    /// A shell command line (run by `bash -lc`), or an argv array.
    #[schema(value_type = Object)]
    pub command: serde_json::Value,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the user's home).
    pub cwd: Option<String>,
    /// User (default `developer`).
    pub user: Option<String>,
    /// Timeout in seconds (default 600).
    pub timeout: Option<u64>,
    /// Text written to stdin.
    pub stdin: Option<String>,
}

/// Result of `exec`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecResponse {
    /// Exit code (null when killed by a signal).
    pub exit_code: Option<i32>,
    /// Signal that ended it.
    pub signal: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Killed by the timeout.
    pub timed_out: bool,
    /// Output was cut.
    pub truncated: bool,
    /// Wall time.
    pub duration_ms: u64,
}

/// A template's expected app.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TemplateExpectedApp {
    /// Name.
    pub name: String,
    /// Port.
    pub port: i32,
    /// Tags.
    pub system_tags: Vec<String>,
    /// Protocol.
    pub protocol: String,
    /// Template-owned.
    pub managed: bool,
}

/// Log source preset.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TemplateLogSourcePreset {
    /// Type.
    pub source_type: String,
    /// Reference.
    pub source_ref: String,
}

/// A backing service of a template.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceServiceSpec {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// Health command.
    pub health_cmd: String,
    /// Port.
    pub port: Option<i32>,
    /// Unit.
    pub unit_name: Option<String>,
}

/// A template (the reference's `WorkspaceTemplate`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceTemplate {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Icon.
    pub icon: String,
    /// Image.
    pub image: String,
    /// RAM floor.
    pub ram_mb: i32,
    /// vCPU floor.
    pub vcpu_count: i32,
    /// Disk floor.
    pub disk_size_mb: i32,
    /// Category.
    pub category: String,
    /// Log sources.
    pub default_log_sources: Vec<TemplateLogSourcePreset>,
    /// Expected apps.
    pub expected_apps: Vec<TemplateExpectedApp>,
    /// Backing services.
    pub workspace_services: Vec<WorkspaceServiceSpec>,
    /// Binaries verified in the image.
    pub verify_binaries: Vec<String>,
    /// Tools shipped.
    pub has_tools: bool,
    /// Supports managed AI.
    pub managed_ai_config: bool,
    /// Apps live in the image.
    pub image_bound: bool,
    /// Not deployable yet.
    pub coming_soon: bool,
}

/// `{templates}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TemplatesResponse {
    /// Templates.
    pub templates: Vec<WorkspaceTemplate>,
}

/// Effective limits.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EffectiveLimits {
    /// Workspaces.
    pub max_vms: i32,
    /// RAM per workspace.
    pub max_ram_per_vm_mb: i32,
    /// Total RAM.
    pub max_ram_total_mb: i32,
    /// Total disk.
    pub max_disk_total_mb: i32,
    /// vCPU per workspace.
    pub max_vcpu_per_vm: i32,
    /// Running vCPUs.
    pub max_running_vcpus: i32,
}

/// Usage.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LimitsUsage {
    /// Workspaces.
    pub workspace_count: i32,
    /// Running vCPUs.
    pub running_vcpus: i32,
    /// Total disk.
    pub total_disk_mb: i32,
    /// Total RAM.
    pub total_ram_mb: i32,
}

/// `GET /users/me/limits`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GetUserLimitsResponse {
    /// Plan.
    pub plan: String,
    /// Custom limits.
    pub custom: bool,
    /// Limits.
    pub limits: EffectiveLimits,
    /// Usage.
    pub usage: LimitsUsage,
}

fn clamp_i32(v: i64) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// Whether a failure code is worth retrying.
pub fn retryable(code: &str) -> bool {
    !matches!(code, "invalid" | "image_missing")
}

impl Vm {
    /// The view of a row.
    pub fn from_row(w: &WorkspaceRow) -> Self {
        Vm {
            id: w.id.clone(),
            user_id: w.user_id.clone(),
            node_id: w.node_id.clone(),
            name: w.name.clone(),
            status: w.status.clone(),
            image: w.image.clone(),
            template_id: w.template_id.clone(),
            ram_mb: clamp_i32(w.ram_mb),
            vcpu_count: clamp_i32(w.vcpu_count),
            disk_size_mb: clamp_i32(w.disk_size_mb),
            env_vars: Some(w.env_vars.clone()),
            setup_script_ids: Some(w.setup_script_ids.clone()),
            service_spec_ids: Some(w.service_spec_ids.clone()),
            ai_mode: w.ai_mode.clone(),
            ip_address: matches!(w.status.as_str(), "running" | "starting").then(|| "169.254.0.2".to_string()),
            failure_code: w.failure_code.clone(),
            failure_reason: w.failure_reason.clone(),
            creation_attempts: clamp_i32(w.creation_attempts),
            creation_started_at: w.creation_started_at,
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

impl GetWorkspaceResponse {
    /// The view of a row, with the failure object when it failed.
    pub fn from_row(w: &WorkspaceRow) -> Self {
        let failure = (w.status == "failed").then(|| {
            let code = w.failure_code.clone().unwrap_or_else(|| "unknown".into());
            WorkspaceFailure {
                retryable: retryable(&code),
                code,
                message: w.failure_reason.clone().unwrap_or_default(),
                occurred_at: w.failure_at.unwrap_or(w.updated_at),
                attempts: clamp_i32(w.creation_attempts),
            }
        });
        GetWorkspaceResponse { vm: Vm::from_row(w), failure }
    }
}
