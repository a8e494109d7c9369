//! AI configuration, credits, usage, and the metering proxy behind every
//! workspace's slot-local AI endpoint (see `rigbox_ai` for the whole flow).
//!
//! Public routes (`/api/v1`):
//!
//! | Route | Meaning |
//! |---|---|
//! | `GET /users/me/credits` | `AiCredits` (`remaining` = balance − open holds) |
//! | `GET /users/me/ai-ledger?limit=N` | the latest wallet movements |
//! | `PUT /users/me/ai-mode` | account mode (`managed`/`byok`) → `AiCredits` |
//! | `GET/PUT /users/me/ai-defaults` | provider/model defaults (`default_mode` is the account mode) |
//! | `GET /users/me/ai-usage?days=N` | daily and per-workspace totals |
//! | `GET /users/me/ai-usage/metrics[/summary]?range=1h\|6h\|24h\|7d` | series / totals |
//! | `GET /workspaces/{id}/ai-usage/metrics[/summary]` | the same for one workspace |
//! | `GET/PUT /workspaces/{id}/ai-config` | typed config; strict patch; the key is write-only |
//! | `GET/PUT /workspaces/{id}/mode` | the workspace's mode override (`null` clears) |
//! | `POST/GET /admin/users/{id}/credits` | grant credits / read a wallet and ledger |
//! | `GET /admin/ai/providers`, `PUT /admin/ai/providers/{p}` | operator keys (sealed; never shown) |
//! | `GET/PUT /admin/ai/prices` | the price table (written to its file) |
//! | `GET /admin/ai/holds`, `POST /admin/ai/holds/{id}/settle\|release` | reconciliation |
//!
//! Internal routes (`/internal/v1`, node token): `ANY /ai/proxy` (the
//! metering proxy; the node sets `X-Rigbox-Node`, `X-Rigbox-Workspace`,
//! `X-Rigbox-Ai-Path`) and `GET /ai/workspaces/{id}/env`.
//!
//! Mode precedence: the workspace's override (`/mode` or `ai-config.mode`),
//! else the account mode (`/users/me/ai-mode`, also `ai-defaults.default_mode`).

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use rigbox_ai::limits::{self, Amount, Limit};
use rigbox_ai::pricing::{MicroPrice, PriceTable};
use rigbox_ai::route::{self, AuthStyle, Endpoint, Format, Provider, Upstreams};
use rigbox_ai::secrets::SecretBox;
use rigbox_ai::wire::{self, StreamMeter, Usage};
use rigbox_db::ai::{AiTotals, NewAiRequest, Settlement, Wallet, WorkspaceAiConfig};
use rigbox_db::{DbError, User, WorkspaceRow};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// Settings of the AI service.
#[derive(Debug, Clone)]
pub struct AiConfig {
    /// Provider base URLs.
    pub upstreams: Upstreams,
    /// The price table file (TOML or JSON); written with the defaults when missing.
    pub price_file: PathBuf,
    /// The sealing key file (0600).
    pub key_file: PathBuf,
    /// Largest request body accepted from a guest.
    pub max_body_bytes: usize,
}

/// The AI service: registered on the [`AppState`] as an extension.
pub struct AiService {
    cfg: AiConfig,
    secrets: SecretBox,
    prices: RwLock<(Arc<PriceTable>, Option<SystemTime>)>,
    http: reqwest::Client,
    node_tokens: RwLock<HashMap<String, (String, Instant)>>,
}

impl std::fmt::Debug for AiService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AiService").field("upstreams", &self.cfg.upstreams).finish_non_exhaustive()
    }
}

fn mtime(p: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl AiService {
    /// Opens the key file and the price table (writing the default table when missing).
    pub fn new(cfg: AiConfig) -> anyhow::Result<Self> {
        let secrets = SecretBox::load_or_create(&cfg.key_file)?;
        if !cfg.price_file.exists() {
            if let Some(d) = cfg.price_file.parent() {
                std::fs::create_dir_all(d)?;
            }
            std::fs::write(&cfg.price_file, PriceTable::default().to_toml())?;
        }
        let table = PriceTable::parse(&std::fs::read_to_string(&cfg.price_file)?)?;
        let m = mtime(&cfg.price_file);
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).pool_idle_timeout(Duration::from_secs(60)).build()?;
        Ok(AiService { prices: RwLock::new((Arc::new(table), m)), cfg, secrets, http, node_tokens: RwLock::new(HashMap::new()) })
    }

    /// The price table (re-read when its file changed).
    pub fn prices(&self) -> Arc<PriceTable> {
        let now = mtime(&self.cfg.price_file);
        if let Ok(g) = self.prices.read() {
            if g.1 == now {
                return g.0.clone();
            }
        }
        match std::fs::read_to_string(&self.cfg.price_file).map_err(|e| e.to_string()).and_then(|t| PriceTable::parse(&t).map_err(|e| e.to_string())) {
            Ok(t) => {
                let t = Arc::new(t);
                if let Ok(mut g) = self.prices.write() {
                    *g = (t.clone(), now);
                }
                t
            }
            Err(e) => {
                tracing::error!(file = %self.cfg.price_file.display(), "keeping the previous price table: {e}");
                let mut g = self.prices.write().unwrap_or_else(|p| p.into_inner());
                g.1 = now;
                g.0.clone()
            }
        }
    }

    /// Replaces the price table and writes its file.
    pub fn set_prices(&self, t: PriceTable) -> anyhow::Result<()> {
        t.validate()?;
        let tmp = self.cfg.price_file.with_extension("tmp");
        let text = if self.cfg.price_file.extension().is_some_and(|e| e == "json") { serde_json::to_string_pretty(&t)? } else { t.to_toml() };
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.cfg.price_file)?;
        if let Ok(mut g) = self.prices.write() {
            *g = (Arc::new(t), mtime(&self.cfg.price_file));
        }
        Ok(())
    }

    /// The upstream settings.
    pub fn upstreams(&self) -> &Upstreams {
        &self.cfg.upstreams
    }
}

fn svc(st: &AppState) -> ApiResult<Arc<AiService>> {
    st.ext::<AiService>().ok_or_else(|| ApiError::unavailable("ai_unavailable", "the AI service is not configured on this control plane"))
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

// ---------------------------------------------------------------------------
// Views.

/// `AiCredits`.
#[derive(Debug, Serialize, Deserialize)]
pub struct AiCredits {
    /// Credits that can be spent (balance minus open holds; may be negative).
    pub remaining: f64,
    /// The same in micro-credits.
    pub remaining_micro: i64,
    /// Credits ever granted.
    pub total: f64,
    /// The same in micro-credits.
    pub total_micro: i64,
    /// Account mode.
    pub mode: String,
}

fn credits_view(w: &Wallet, mode: &str) -> AiCredits {
    AiCredits {
        remaining: rigbox_ai::credits(w.available_micro()),
        remaining_micro: w.available_micro(),
        total: rigbox_ai::credits(w.granted_micro),
        total_micro: w.granted_micro,
        mode: mode.to_string(),
    }
}

fn valid_mode(m: &str) -> ApiResult<()> {
    match m {
        "managed" | "byok" => Ok(()),
        _ => Err(ApiError::bad_request(format!("mode must be \"managed\" or \"byok\", not {m:?}"))),
    }
}

fn valid_provider(p: &str) -> ApiResult<Provider> {
    match Provider::parse(p) {
        Some(x @ (Provider::Openai | Provider::Anthropic | Provider::Google)) if p != "gemini" => Ok(x),
        _ => Err(ApiError::bad_request(format!("provider must be google, openai or anthropic, not {p:?}"))),
    }
}

/// Absent → `None`, `null` → `Some(None)`, value → `Some(Some(v))`.
fn patch<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `PUT /workspaces/{id}/ai-config`: unknown fields are refused, omitted
/// fields are kept, `null` clears.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateAiConfig {
    /// Mode override.
    #[serde(default, deserialize_with = "patch")]
    pub mode: Option<Option<String>>,
    /// Provider.
    #[serde(default, deserialize_with = "patch")]
    pub provider: Option<Option<String>>,
    /// Model.
    #[serde(default, deserialize_with = "patch")]
    pub model: Option<Option<String>>,
    /// BYOK key (write-only).
    #[serde(default, deserialize_with = "patch")]
    pub api_key: Option<Option<String>>,
}

/// `WorkspaceAiConfigResponse`.
#[derive(Debug, Serialize, Deserialize)]
pub struct AiConfigView {
    /// Effective mode.
    pub mode: String,
    /// Provider.
    pub provider: String,
    /// Model.
    pub model: String,
    /// `managed_active`, `byok_active`, `invalid_missing_key`.
    pub status: String,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// `WorkspaceAiModeResponse`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ModeView {
    /// Effective mode.
    pub mode: String,
    /// `workspace` or `user_default`.
    pub source: String,
}

/// `GetAiDefaultsResponse`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DefaultsView {
    /// Account mode.
    pub default_mode: String,
    /// Provider.
    pub default_provider: String,
    /// Model.
    pub default_model: String,
}

/// `UpdateAiDefaultsRequest` (strict).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateDefaults {
    /// Account mode.
    #[serde(default, deserialize_with = "patch")]
    pub default_mode: Option<Option<String>>,
    /// Provider.
    #[serde(default, deserialize_with = "patch")]
    pub default_provider: Option<Option<String>>,
    /// Model.
    #[serde(default, deserialize_with = "patch")]
    pub default_model: Option<Option<String>>,
}

const DEFAULT_PROVIDER: &str = "anthropic";
const DEFAULT_MODEL: &str = "rigbox/default";

/// A workspace's effective AI settings.
#[derive(Debug, Clone)]
pub struct Effective {
    /// Mode.
    pub mode: String,
    /// Whether the mode comes from the workspace.
    pub from_workspace: bool,
    /// Provider.
    pub provider: String,
    /// Model.
    pub model: String,
    /// Sealed BYOK key.
    pub key_sealed: Option<String>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// Resolves a workspace's AI settings.
pub async fn effective(st: &AppState, w: &WorkspaceRow, user: &User) -> ApiResult<Effective> {
    let cfg = st.store().workspace_ai_config(&w.id).await?;
    let defs = st.store().ai_defaults(&user.id).await?;
    let (mode, from_workspace) = match &w.ai_mode {
        Some(m) => (m.clone(), true),
        None => (user.ai_mode.clone(), false),
    };
    Ok(Effective {
        mode,
        from_workspace,
        provider: cfg.as_ref().and_then(|c| c.provider.clone()).or(defs.default_provider).unwrap_or_else(|| DEFAULT_PROVIDER.into()),
        model: cfg.as_ref().and_then(|c| c.model.clone()).or(defs.default_model).unwrap_or_else(|| DEFAULT_MODEL.into()),
        key_sealed: cfg.as_ref().and_then(|c| c.api_key_sealed.clone()),
        updated_at: cfg.map(|c| c.updated_at).unwrap_or(w.updated_at),
    })
}

fn key_context(workspace_id: &str) -> String {
    format!("workspace:{workspace_id}:api_key")
}

fn config_view(e: &Effective) -> AiConfigView {
    let status = match (e.mode.as_str(), &e.key_sealed) {
        ("byok", Some(_)) => "byok_active",
        ("byok", None) => "invalid_missing_key",
        _ => "managed_active",
    };
    AiConfigView { mode: e.mode.clone(), provider: e.provider.clone(), model: e.model.clone(), status: status.into(), updated_at: e.updated_at }
}

/// The AI variables of a workspace (see `rigbox_ai::env`).
pub async fn ai_env_of(st: &AppState, w: &WorkspaceRow) -> ApiResult<BTreeMap<String, String>> {
    let s = svc(st)?;
    let user = st.store().user(&w.user_id).await?;
    let e = effective(st, w, &user).await?;
    if e.mode != "byok" {
        return Ok(rigbox_ai::env::ai_env(None));
    }
    let provider = Provider::parse(&e.provider).unwrap_or(Provider::Anthropic);
    match e.key_sealed.as_deref().map(|k| s.secrets.open(&key_context(&w.id), k)) {
        Some(Ok(key)) => Ok(rigbox_ai::env::ai_env(Some((provider, &key)))),
        _ => {
            let mut env = rigbox_ai::env::ai_env(None);
            env.retain(|k, _| !k.ends_with("_API_KEY"));
            env.insert("RIGBOX_AI_MODE".into(), "byok".into());
            Ok(env)
        }
    }
}

/// Pushes a workspace's AI variables to its node (applied live when it runs).
/// A failure is logged; the node asks again at the next start.
pub async fn push_env(st: &AppState, w: &WorkspaceRow) {
    let env = match ai_env_of(st, w).await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(workspace = %w.id, "AI environment: {}", e.message);
            return;
        }
    };
    let Ok(client) = st.nodes().client(&w.node_id) else { return };
    if let Err(e) = client.set_ai_env(&w.id, &env).await {
        tracing::warn!(workspace = %w.id, "pushing the AI environment failed (applies at the next start): {e}");
    }
}

// ---------------------------------------------------------------------------
// Public routes.

/// Routes under `/api/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users/me/credits", get(my_credits))
        .route("/users/me/ai-ledger", get(my_ledger))
        .route("/users/me/ai-mode", put(set_my_mode))
        .route("/users/me/ai-defaults", get(get_defaults).put(put_defaults))
        .route("/users/me/ai-usage", get(my_usage))
        .route("/users/me/ai-usage/metrics", get(my_metrics))
        .route("/users/me/ai-usage/metrics/summary", get(my_summary))
        .route("/workspaces/{id}/ai-usage/metrics", get(ws_metrics))
        .route("/workspaces/{id}/ai-usage/metrics/summary", get(ws_summary))
        .route("/workspaces/{id}/ai-config", get(get_config).put(put_config))
        .route("/workspaces/{id}/mode", get(get_mode).put(put_mode))
        .route("/admin/users/{id}/credits", post(admin_grant).get(admin_wallet))
        .route("/admin/ai/providers", get(admin_providers))
        .route("/admin/ai/providers/{provider}", put(admin_set_provider))
        .route("/admin/ai/prices", get(admin_prices).put(admin_set_prices))
        .route("/admin/ai/holds", get(admin_holds))
        .route("/admin/ai/holds/{id}/settle", post(admin_settle))
        .route("/admin/ai/holds/{id}/release", post(admin_release))
}

async fn my_credits(State(st): State<AppState>, auth: Auth) -> ApiResult<Json<AiCredits>> {
    let w = st.store().wallet(&auth.user.id).await?;
    Ok(Json(credits_view(&w, &auth.user.ai_mode)))
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<i64>,
}

async fn my_ledger(State(st): State<AppState>, auth: Auth, q: Result<Query<LimitQuery>, axum::extract::rejection::QueryRejection>) -> ApiResult<Json<Value>> {
    let Query(q) = q?;
    let entries = st.store().ledger(&auth.user.id, q.limit.unwrap_or(50).clamp(1, 1000)).await?;
    Ok(Json(json!({ "entries": entries })))
}

#[derive(Deserialize)]
struct ModeBody {
    mode: String,
}

async fn set_my_mode(State(st): State<AppState>, auth: Auth, body: Result<Json<ModeBody>, JsonRejection>) -> ApiResult<Json<AiCredits>> {
    let Json(b) = body?;
    valid_mode(&b.mode)?;
    st.store().set_user_ai_mode(&auth.user.id, &b.mode).await?;
    refresh_user_workspaces(&st, &auth.user.id).await;
    let w = st.store().wallet(&auth.user.id).await?;
    Ok(Json(credits_view(&w, &b.mode)))
}

/// Pushes the AI env of every running workspace of a user that inherits the account mode.
async fn refresh_user_workspaces(st: &AppState, user_id: &str) {
    for w in st.store().workspaces_of_user(user_id).await.unwrap_or_default() {
        if w.ai_mode.is_none() && w.status == "running" {
            push_env(st, &w).await;
        }
    }
}

async fn defaults_view(st: &AppState, user: &User) -> ApiResult<DefaultsView> {
    let d = st.store().ai_defaults(&user.id).await?;
    Ok(DefaultsView {
        default_mode: user.ai_mode.clone(),
        default_provider: d.default_provider.unwrap_or_else(|| DEFAULT_PROVIDER.into()),
        default_model: d.default_model.unwrap_or_else(|| DEFAULT_MODEL.into()),
    })
}

async fn get_defaults(State(st): State<AppState>, auth: Auth) -> ApiResult<Json<DefaultsView>> {
    Ok(Json(defaults_view(&st, &auth.user).await?))
}

fn check_model(m: &str) -> ApiResult<()> {
    if m.trim().is_empty() || m.len() > 200 || m.chars().any(char::is_control) {
        return Err(ApiError::bad_request("model must be 1 to 200 printable characters"));
    }
    Ok(())
}

async fn put_defaults(State(st): State<AppState>, auth: Auth, body: Result<Json<UpdateDefaults>, JsonRejection>) -> ApiResult<Json<DefaultsView>> {
    let Json(b) = body?;
    let mut d = st.store().ai_defaults(&auth.user.id).await?;
    if let Some(p) = b.default_provider {
        if let Some(p) = &p {
            valid_provider(p)?;
        }
        d.default_provider = p;
    }
    if let Some(m) = b.default_model {
        if let Some(m) = &m {
            check_model(m)?;
        }
        d.default_model = m;
    }
    let mut user = auth.user.clone();
    if let Some(m) = b.default_mode {
        let m = m.unwrap_or_else(|| "managed".into());
        valid_mode(&m)?;
        st.store().set_user_ai_mode(&user.id, &m).await?;
        user.ai_mode = m;
    }
    st.store().put_ai_defaults(&user.id, &d).await?;
    if user.ai_mode != auth.user.ai_mode {
        refresh_user_workspaces(&st, &user.id).await;
    }
    Ok(Json(defaults_view(&st, &user).await?))
}

async fn get_config(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<AiConfigView>> {
    let w = crate::workspaces::load(&st, &auth, &id).await?;
    Ok(Json(config_view(&effective(&st, &w, &auth.user).await?)))
}

async fn put_config(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<UpdateAiConfig>, JsonRejection>,
) -> ApiResult<Json<AiConfigView>> {
    let Json(b) = body?;
    let s = svc(&st)?;
    let w = crate::workspaces::load(&st, &auth, &id).await?;
    let mut cfg = st.store().workspace_ai_config(&w.id).await?.unwrap_or(WorkspaceAiConfig {
        workspace_id: w.id.clone(),
        provider: None,
        model: None,
        api_key_sealed: None,
        updated_at: Utc::now(),
    });
    if let Some(Some(m)) = &b.mode {
        valid_mode(m)?;
    }
    if let Some(p) = b.provider {
        if let Some(p) = &p {
            valid_provider(p)?;
        }
        cfg.provider = p;
    }
    if let Some(m) = b.model {
        if let Some(m) = &m {
            check_model(m)?;
        }
        cfg.model = m;
    }
    if let Some(k) = b.api_key {
        cfg.api_key_sealed = match k {
            None => None,
            Some(k) => {
                let k = k.trim();
                if k.is_empty() || k.len() > 1024 || k.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(ApiError::bad_request("api_key must be 1 to 1024 characters without spaces"));
                }
                Some(s.secrets.seal(&key_context(&w.id), k))
            }
        };
    }
    cfg.updated_at = Utc::now();
    st.store().put_workspace_ai_config(&cfg).await?;
    if let Some(m) = b.mode {
        st.store().set_workspace_ai_mode(&w.id, m.as_deref()).await?;
    }
    let w = st.store().workspace(&w.id).await?;
    if w.status == "running" {
        push_env(&st, &w).await;
    }
    Ok(Json(config_view(&effective(&st, &w, &auth.user).await?)))
}

async fn get_mode(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<ModeView>> {
    let w = crate::workspaces::load(&st, &auth, &id).await?;
    Ok(Json(mode_view(&w, &auth.user)))
}

fn mode_view(w: &WorkspaceRow, user: &User) -> ModeView {
    match &w.ai_mode {
        Some(m) => ModeView { mode: m.clone(), source: "workspace".into() },
        None => ModeView { mode: user.ai_mode.clone(), source: "user_default".into() },
    }
}

#[derive(Deserialize)]
struct WsModeBody {
    #[serde(default)]
    mode: Option<String>,
}

async fn put_mode(State(st): State<AppState>, auth: Auth, Path(id): Path<String>, body: Result<Json<WsModeBody>, JsonRejection>) -> ApiResult<Json<ModeView>> {
    let Json(b) = body?;
    if let Some(m) = &b.mode {
        valid_mode(m)?;
    }
    let w = crate::workspaces::load(&st, &auth, &id).await?;
    st.store().set_workspace_ai_mode(&w.id, b.mode.as_deref()).await?;
    let w = st.store().workspace(&w.id).await?;
    if w.status == "running" {
        push_env(&st, &w).await;
    }
    Ok(Json(mode_view(&w, &auth.user)))
}

// Usage analytics.

fn totals_json(t: &AiTotals) -> Value {
    json!({
        "requests": t.requests,
        "input_tokens": t.input_tokens,
        "output_tokens": t.output_tokens,
        "credits": rigbox_ai::credits(t.cost_micro),
        "credits_micro": t.cost_micro,
    })
}

#[derive(Deserialize)]
struct DaysQuery {
    days: Option<i64>,
}

async fn my_usage(State(st): State<AppState>, auth: Auth, q: Result<Query<DaysQuery>, axum::extract::rejection::QueryRejection>) -> ApiResult<Json<Value>> {
    let Query(q) = q?;
    let days = q.days.unwrap_or(30).clamp(1, 366);
    let since = now_ms() - days * 86_400_000;
    let daily: Vec<Value> = st
        .store()
        .ai_daily(&auth.user.id, since)
        .await?
        .iter()
        .map(|d| {
            let mut v = totals_json(&d.totals);
            v["day"] = json!(d.day);
            v
        })
        .collect();
    let by_ws: Vec<Value> = st
        .store()
        .ai_by_workspace(&auth.user.id, since)
        .await?
        .iter()
        .map(|w| {
            let mut v = totals_json(&w.totals);
            v["workspace_id"] = json!(w.workspace_id);
            v["workspace_name"] = json!(w.workspace_name);
            v
        })
        .collect();
    Ok(Json(json!({ "window_days": days, "daily": daily, "by_workspace": by_ws })))
}

#[derive(Deserialize)]
struct RangeQuery {
    range: Option<String>,
}

/// `(range, window seconds, step seconds)`.
fn range_of(q: &RangeQuery) -> ApiResult<(&'static str, i64, i64)> {
    Ok(match q.range.as_deref().unwrap_or("24h") {
        "1h" => ("1h", 3600, 60),
        "6h" => ("6h", 6 * 3600, 300),
        "24h" => ("24h", 86_400, 900),
        "7d" => ("7d", 7 * 86_400, 3600),
        other => return Err(ApiError::bad_request(format!("range must be 1h, 6h, 24h or 7d, not {other:?}"))),
    })
}

async fn metrics(st: &AppState, user_id: &str, ws: Option<&str>, q: &RangeQuery) -> ApiResult<Value> {
    let (name, window, step) = range_of(q)?;
    let now = now_ms();
    let step_ms = step * 1000;
    // Buckets aligned to the step, the last one holding now.
    let last = now.div_euclid(step_ms) * step_ms;
    let n = window / step;
    let since = last - (n - 1) * step_ms;
    let mut buckets = vec![AiTotals::default(); n as usize];
    for (b, t) in st.store().ai_buckets(user_id, ws, since, step_ms).await? {
        if let Some(slot) = usize::try_from(b).ok().and_then(|i| buckets.get_mut(i)) {
            *slot = t;
        }
    }
    let series = |f: &dyn Fn(&AiTotals) -> f64| -> Vec<Value> {
        buckets.iter().enumerate().map(|(i, t)| json!({"t": (since + i as i64 * step_ms) / 1000, "v": f(t)})).collect()
    };
    Ok(json!({
        "range": name,
        "step_seconds": step,
        "workspace_id": ws,
        "series": {
            "requests": series(&|t| t.requests as f64),
            "input_tokens": series(&|t| t.input_tokens as f64),
            "output_tokens": series(&|t| t.output_tokens as f64),
            "credits": series(&|t| rigbox_ai::credits(t.cost_micro)),
        }
    }))
}

async fn summary(st: &AppState, user_id: &str, ws: Option<&str>, q: &RangeQuery) -> ApiResult<Value> {
    let (name, window, _) = range_of(q)?;
    let t = st.store().ai_totals(user_id, ws, now_ms() - window * 1000).await?;
    Ok(json!({
        "range": name,
        "total_requests": t.requests,
        "input_tokens": t.input_tokens,
        "output_tokens": t.output_tokens,
        "total_credits": rigbox_ai::credits(t.cost_micro),
        "total_credits_micro": t.cost_micro,
        "workspace_id": ws,
    }))
}

type RangeQ = Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>;

async fn my_metrics(State(st): State<AppState>, auth: Auth, q: RangeQ) -> ApiResult<Json<Value>> {
    let Query(q) = q?;
    Ok(Json(metrics(&st, &auth.user.id, None, &q).await?))
}

async fn my_summary(State(st): State<AppState>, auth: Auth, q: RangeQ) -> ApiResult<Json<Value>> {
    let Query(q) = q?;
    Ok(Json(summary(&st, &auth.user.id, None, &q).await?))
}

async fn ws_metrics(State(st): State<AppState>, auth: Auth, Path(id): Path<String>, q: RangeQ) -> ApiResult<Json<Value>> {
    let Query(q) = q?;
    let w = crate::workspaces::load(&st, &auth, &id).await?;
    Ok(Json(metrics(&st, &auth.user.id, Some(&w.id), &q).await?))
}

async fn ws_summary(State(st): State<AppState>, auth: Auth, Path(id): Path<String>, q: RangeQ) -> ApiResult<Json<Value>> {
    let Query(q) = q?;
    let w = crate::workspaces::load(&st, &auth, &id).await?;
    Ok(Json(summary(&st, &auth.user.id, Some(&w.id), &q).await?))
}

// Administration.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    #[serde(default)]
    credits: Option<f64>,
    #[serde(default)]
    credits_micro: Option<i64>,
    #[serde(default)]
    note: Option<String>,
}

async fn wallet_json(st: &AppState, user: &User) -> ApiResult<Value> {
    let w = st.store().wallet(&user.id).await?;
    Ok(json!({
        "user_id": user.id,
        "balance_micro": w.balance_micro,
        "held_micro": w.held_micro,
        "credits": credits_view(&w, &user.ai_mode),
        "ledger": st.store().ledger(&user.id, 50).await?,
    }))
}

async fn admin_grant(State(st): State<AppState>, auth: Auth, Path(id): Path<String>, body: Result<Json<GrantBody>, JsonRejection>) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let Json(b) = body?;
    let user = st.store().user(&id).await.map_err(|_| ApiError::not_found("user"))?;
    let micro = match (b.credits, b.credits_micro) {
        (Some(c), None) if c.is_finite() && c.abs() <= 1e12 => rigbox_ai::micro(c),
        (None, Some(m)) => m,
        _ => return Err(ApiError::bad_request("give exactly one of credits or credits_micro")),
    };
    let note = b.note.unwrap_or_else(|| format!("granted by {}", auth.user.email));
    st.store().grant_credits(&user.id, micro, Some(&note)).await?;
    tracing::info!(user = %user.id, micro, by = %auth.user.email, "AI credits granted");
    Ok(Json(wallet_json(&st, &user).await?))
}

async fn admin_wallet(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let user = st.store().user(&id).await.map_err(|_| ApiError::not_found("user"))?;
    Ok(Json(wallet_json(&st, &user).await?))
}

async fn admin_providers(State(st): State<AppState>, auth: Auth) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let s = svc(&st)?;
    let keys = st.store().provider_keys().await?;
    let up = s.upstreams();
    let base = |p: Provider| match p {
        Provider::Openai => up.openai.clone(),
        Provider::Anthropic => up.anthropic.clone(),
        Provider::Google => up.google.clone(),
        Provider::Openrouter => up.openrouter.clone(),
    };
    let list: Vec<Value> = Provider::ALL
        .iter()
        .map(|p| {
            let k = keys.iter().find(|k| k.provider == p.as_str());
            json!({"provider": p.as_str(), "configured": k.is_some(), "base_url": base(*p), "updated_at": k.map(|k| k.updated_at)})
        })
        .collect();
    Ok(Json(json!({ "providers": list, "via_openrouter": up.via_openrouter })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderKeyBody {
    api_key: Option<String>,
}

fn provider_context(p: Provider) -> String {
    format!("provider:{}", p.as_str())
}

async fn admin_set_provider(
    State(st): State<AppState>,
    auth: Auth,
    Path(provider): Path<String>,
    body: Result<Json<ProviderKeyBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let s = svc(&st)?;
    let Json(b) = body?;
    let p = Provider::parse(&provider).ok_or_else(|| ApiError::bad_request(format!("unknown provider {provider:?}")))?;
    let sealed = match b.api_key.as_deref().map(str::trim) {
        Some(k) if k.is_empty() || k.chars().any(char::is_whitespace) => return Err(ApiError::bad_request("api_key must not be empty or contain spaces")),
        Some(k) => Some(s.secrets.seal(&provider_context(p), k)),
        None => None,
    };
    st.store().set_provider_key(p.as_str(), sealed.as_deref()).await?;
    tracing::info!(provider = p.as_str(), configured = sealed.is_some(), by = %auth.user.email, "AI provider key changed");
    Ok(Json(json!({"provider": p.as_str(), "configured": sealed.is_some()})))
}

async fn admin_prices(State(st): State<AppState>, auth: Auth) -> ApiResult<Json<PriceTable>> {
    auth.require_admin()?;
    Ok(Json((*svc(&st)?.prices()).clone()))
}

async fn admin_set_prices(State(st): State<AppState>, auth: Auth, body: Result<Json<PriceTable>, JsonRejection>) -> ApiResult<Json<PriceTable>> {
    auth.require_admin()?;
    let Json(t) = body?;
    let s = svc(&st)?;
    s.set_prices(t).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json((*s.prices()).clone()))
}

async fn admin_holds(State(st): State<AppState>, auth: Auth) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    Ok(Json(json!({ "holds": st.store().open_holds().await? })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettleBody {
    cost_micro: i64,
}

async fn admin_settle(State(st): State<AppState>, auth: Auth, Path(id): Path<String>, body: Result<Json<SettleBody>, JsonRejection>) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let Json(b) = body?;
    if b.cost_micro < 0 {
        return Err(ApiError::bad_request("cost_micro must not be negative"));
    }
    let r = st.store().ai_request(&id).await.map_err(|_| ApiError::not_found("AI request"))?;
    let s = Settlement { input_tokens: r.input_tokens, output_tokens: r.output_tokens, cost_micro: b.cost_micro, list_micro: b.cost_micro, upstream_status: None };
    if !st.store().settle(&id, &s).await? {
        return Err(ApiError::conflict("the request is already settled or released"));
    }
    Ok(Json(json!(st.store().ai_request(&id).await?)))
}

async fn admin_release(State(st): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    st.store().ai_request(&id).await.map_err(|_| ApiError::not_found("AI request"))?;
    if !st.store().release(&id, None, Some("released by an administrator")).await? {
        return Err(ApiError::conflict("the request is already settled or released"));
    }
    Ok(Json(json!(st.store().ai_request(&id).await?)))
}

// ---------------------------------------------------------------------------
// Internal routes (called by nodes).

/// Routes under `/internal/v1`.
pub fn internal() -> Router<AppState> {
    Router::new().route("/ai/proxy", any(proxy)).route("/ai/workspaces/{id}/env", get(internal_env))
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks the node token of a call from a node; returns the node id.
async fn node_auth(st: &AppState, s: &AiService, headers: &HeaderMap) -> Result<String, ProxyError> {
    let deny = || ProxyError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong node credentials");
    let node = headers.get(rigbox_ai::hop::NODE).and_then(|v| v.to_str().ok()).ok_or_else(deny)?.to_string();
    let token = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).ok_or_else(deny)?;
    let cached = s.node_tokens.read().ok().and_then(|m| m.get(&node).filter(|(_, at)| at.elapsed() < Duration::from_secs(30)).map(|(t, _)| t.clone()));
    let known = match cached {
        Some(t) if ct_eq(t.as_bytes(), token.as_bytes()) => Some(t),
        _ => {
            let rows = st.store().nodes().await.map_err(|e| ProxyError::internal(e.to_string()))?;
            let t = rows.into_iter().find(|r| r.id == node).map(|r| r.token);
            if let (Some(t), Ok(mut m)) = (&t, s.node_tokens.write()) {
                m.insert(node.clone(), (t.clone(), Instant::now()));
            }
            t
        }
    };
    match known {
        Some(t) if !t.is_empty() && ct_eq(t.as_bytes(), token.as_bytes()) => Ok(node),
        _ => Err(deny()),
    }
}

async fn internal_env(State(st): State<AppState>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let s = match svc(&st) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let node = match node_auth(&st, &s, &headers).await {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    let w = match st.store().workspace(&id).await {
        Ok(w) if w.node_id == node => w,
        Ok(_) | Err(DbError::NotFound) => return ApiError::not_found("workspace").into_response(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    match ai_env_of(&st, &w).await {
        Ok(env) => Json(rigbox_node_api::AiEnv { env }).into_response(),
        Err(e) => e.into_response(),
    }
}

/// An error of the proxy, in the OpenAI-shaped envelope guests' SDKs read:
/// `{"error":{"code","message","type":"rigbox_gateway_error","param":null,"details":null}}`.
#[derive(Debug)]
pub struct ProxyError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ProxyError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ProxyError { status, code, message: message.into(), retry_after: None }
    }
    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }
}

impl From<DbError> for ProxyError {
    fn from(e: DbError) -> Self {
        ProxyError::internal(e.to_string())
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message, "type": "rigbox_gateway_error", "param": null, "details": null}});
        let mut r = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert("retry-after", HeaderValue::from(s));
        }
        r
    }
}

async fn proxy(State(st): State<AppState>, req: Request) -> Response {
    // The call runs in its own task: when the guest hangs up, hyper drops
    // this handler, but a reservation already made must still be settled
    // or released, never left held.
    match tokio::spawn(proxy_inner(st, req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => e.into_response(),
        Err(e) => {
            tracing::error!("AI proxy task failed: {e}");
            ProxyError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the AI proxy failed").into_response()
        }
    }
}

fn header_str<'a>(h: &'a HeaderMap, k: &str) -> Option<&'a str> {
    h.get(k).and_then(|v| v.to_str().ok())
}

fn new_request_id() -> String {
    format!("ai-{}", uuid::Uuid::new_v4().simple())
}

/// Per-request context of a metered call.
struct Call {
    st: AppState,
    req: NewAiRequest,
    managed: bool,
    price: Option<MicroPrice>,
    hold: i64,
}

impl Call {
    /// Settles with the final usage; returns what was charged.
    async fn settle(&self, usage: &Usage, status: u16) -> i64 {
        let list = self.price.map(|p| p.cost(usage)).unwrap_or(0);
        let s = Settlement {
            input_tokens: usage.input_tokens as i64,
            output_tokens: usage.output_tokens as i64,
            cost_micro: if self.managed { list } else { 0 },
            list_micro: list,
            upstream_status: Some(i64::from(status)),
        };
        let r = if self.managed { self.st.store().settle(&self.req.id, &s).await.map(|_| ()) } else { self.st.store().record_unmetered(&self.req, &s).await };
        if let Err(e) = r {
            tracing::error!(request = %self.req.id, "settling an AI call failed: {e}");
        }
        s.cost_micro
    }

    /// No usage: a managed hold stays (broken) for reconciliation.
    async fn broken(&self, partial: Option<Usage>, why: &str) {
        let u = partial.unwrap_or_default();
        if self.managed {
            let _ = self.st.store().mark_broken(&self.req.id, u.input_tokens as i64, u.output_tokens as i64, why).await;
            tracing::warn!(request = %self.req.id, hold = self.hold, "AI stream ended without usage ({why}); its hold stays for reconciliation");
        } else {
            let s = Settlement { input_tokens: u.input_tokens as i64, output_tokens: u.output_tokens as i64, ..Default::default() };
            let _ = self.st.store().record_unmetered(&self.req, &s).await;
        }
    }

    /// The upstream refused or failed: release without charge.
    async fn release(&self, status: Option<u16>, why: &str) {
        if self.managed {
            let _ = self.st.store().release(&self.req.id, status.map(i64::from), Some(why)).await;
        }
    }
}

fn spend_check(spent: &rigbox_db::ai::SubjectSpend, l: &Limit, estimate: i64) -> bool {
    match l.amount {
        Amount::Requests(n) => spent.requests as u64 + 1 > n,
        Amount::Micro(m) => spent.spend_micro + estimate > m,
    }
}

async fn proxy_inner(st: AppState, req: Request) -> Result<Response, ProxyError> {
    let s = svc(&st).map_err(|e| ProxyError::new(e.status, e.code, e.message))?;
    let (parts, body) = req.into_parts();
    let h = &parts.headers;
    let node = node_auth(&st, &s, h).await?;
    let ws_id = header_str(h, rigbox_ai::hop::WORKSPACE).ok_or_else(|| ProxyError::bad("invalid_request", "no workspace"))?.to_string();
    let w = match st.store().workspace(&ws_id).await {
        Ok(w) if w.node_id == node => w,
        Ok(_) | Err(DbError::NotFound) => return Err(ProxyError::new(StatusCode::FORBIDDEN, "forbidden", "this workspace does not run on the calling node")),
        Err(e) => return Err(e.into()),
    };
    let full = header_str(h, rigbox_ai::hop::PATH).unwrap_or("/").to_string();
    let (path, query) = match full.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (full.clone(), None),
    };
    let ep = Endpoint::parse(parts.method.as_str(), &path).map_err(|e| ProxyError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()))?;
    let user = st.store().user(&w.user_id).await?;
    let prices = s.prices();

    let header_subject = header_str(h, "x-rigbox-subject").map(limits::parse_subject).transpose().map_err(|e| ProxyError::bad("invalid_subject", e.0))?;
    match &ep {
        Endpoint::SubjectUsage => return subject_usage(&st, &user, header_subject, query.as_deref()).await,
        Endpoint::RequestUsage(id) => {
            let r = st.store().ai_request(id).await.map_err(|_| ProxyError::new(StatusCode::NOT_FOUND, "not_found", "no such request"))?;
            if r.workspace_id != w.id {
                return Err(ProxyError::new(StatusCode::NOT_FOUND, "not_found", "no such request"));
            }
            return Ok(Json(json!({
                "request_id": r.id, "status": r.status, "model": r.model, "mode": r.mode,
                "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
                "hold_micro": r.hold_micro, "cost_micro": r.cost_micro, "cost_credits": rigbox_ai::credits(r.cost_micro),
            }))
            .into_response());
        }
        Endpoint::Models => {
            let data: Vec<Value> = prices
                .listed_models()
                .iter()
                .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": m.split('/').next().unwrap_or("rigbox")}))
                .collect();
            return Ok(Json(json!({"object": "list", "data": data})).into_response());
        }
        _ => {}
    }
    let format = ep.format().ok_or_else(|| ProxyError::bad("invalid_request", "not a model endpoint"))?;

    // The body: JSON, bounded.
    let bytes = axum::body::to_bytes(body, s.cfg.max_body_bytes)
        .await
        .map_err(|_| ProxyError::new(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", format!("request bodies are limited to {} bytes", s.cfg.max_body_bytes)))?;
    let mut body: Value = serde_json::from_slice(&bytes).map_err(|e| ProxyError::bad("invalid_request", format!("the body is not JSON: {e}")))?;
    let info = wire::inspect(format, &body);
    let (raw_model, stream) = match &ep {
        Endpoint::Gemini { model, stream } => (model.clone(), *stream),
        _ => (info.model.clone().ok_or_else(|| ProxyError::bad("invalid_request", "the request names no model"))?, info.stream),
    };
    let m = route::resolve(&raw_model, &prices.aliases).map_err(|e| ProxyError::bad("unknown_model", e.to_string()))?;

    // Mode and key.
    let eff = effective(&st, &w, &user).await.map_err(|e| ProxyError::internal(e.message))?;
    let managed = eff.mode != "byok";
    let (target, key) = if managed {
        let keys = st.store().provider_keys().await?;
        let open = |p: Provider| keys.iter().find(|k| k.provider == p.as_str()).and_then(|k| s.secrets.open(&provider_context(p), &k.api_key_sealed).ok());
        let openrouter = open(Provider::Openrouter).is_some();
        let target = route::target(s.upstreams(), &ep, &m, query.as_deref(), openrouter).map_err(|e| ProxyError::bad("unsupported_model", e.to_string()))?;
        let key = open(target.key_of).ok_or_else(|| {
            ProxyError::new(StatusCode::SERVICE_UNAVAILABLE, "provider_not_configured", format!("the operator has not configured a {} key", target.key_of))
        })?;
        (target, key)
    } else {
        let p = valid_provider(&eff.provider).map_err(|e| ProxyError::bad("byok_invalid", e.message))?;
        let sealed = eff.key_sealed.as_deref().ok_or_else(|| ProxyError::bad("byok_missing_key", "BYOK mode needs an api_key in the workspace's ai-config"))?;
        let key = s.secrets.open(&key_context(&w.id), sealed).map_err(|e| ProxyError::internal(e.to_string()))?;
        if m.provider != p {
            return Err(ProxyError::bad("byok_provider_mismatch", format!("this workspace brings its own {p} key; {} is a {} model", m.slug, m.provider)));
        }
        let target = route::target(s.upstreams(), &ep, &m, query.as_deref(), false).map_err(|e| ProxyError::bad("unsupported_model", e.to_string()))?;
        (target, key)
    };

    // Price and estimate.
    let price = prices.price(&m.slug);
    if managed && price.is_none() {
        return Err(ProxyError::bad("model_not_priced", format!("{} has no price on this platform, so it cannot be used with credits", m.slug)));
    }
    let estimate = price.map(|p| rigbox_ai::pricing::estimate(&p, bytes.len(), info.max_output, prices.default_max_tokens, format != Format::OpenaiEmbeddings)).unwrap_or(0);

    // Subject controls.
    let subject = header_subject.or_else(|| info.user.clone().and_then(|u| limits::parse_subject(&u).ok()));
    let malformed = |e: limits::LimitError| ProxyError::bad("subject_limit_malformed", e.0);
    let budgets: Vec<&str> = h.get_all("x-rigbox-subject-budget").iter().filter_map(|v| v.to_str().ok()).collect();
    if budgets.len() > 1 {
        return Err(ProxyError::bad("subject_limit_malformed", "at most one X-Rigbox-Subject-Budget"));
    }
    let budget = budgets.first().map(|b| limits::parse_limit(b, "period")).transpose().map_err(malformed)?;
    let rates = limits::parse_rates(h.get_all("x-rigbox-subject-rate").iter().filter_map(|v| v.to_str().ok())).map_err(malformed)?;
    if (budget.is_some() || !rates.is_empty()) && subject.is_none() {
        return Err(ProxyError::bad("subject_limit_malformed", "subject limits need X-Rigbox-Subject (or a user in the body)"));
    }
    if let Some(sub) = &subject {
        let now = now_ms();
        if let Some(b) = &budget {
            let spent = st.store().subject_spend(&user.id, sub, now - b.window_secs as i64 * 1000).await?;
            if spend_check(&spent, b, estimate) {
                return Err(ProxyError::new(StatusCode::PAYMENT_REQUIRED, "subject_over_budget", format!("subject {sub:?} is over its budget for this period")));
            }
        }
        for r in &rates {
            let spent = st.store().subject_spend(&user.id, sub, now - r.window_secs as i64 * 1000).await?;
            let over = match r.amount {
                Amount::Requests(n) => spent.requests as u64 >= n,
                Amount::Micro(m) => spent.spend_micro + estimate > m,
            };
            if over {
                let wait_ms = spent.oldest_ms.map(|o| o + r.window_secs as i64 * 1000 - now).unwrap_or(1000).max(1);
                let mut e = ProxyError::new(StatusCode::TOO_MANY_REQUESTS, "subject_rate_limited", format!("subject {sub:?} is over its rate"));
                e.retry_after = Some((wait_ms as u64).div_ceil(1000).max(1));
                return Err(e);
            }
        }
    }

    // Reserve.
    let call = Call {
        st: st.clone(),
        req: NewAiRequest {
            id: new_request_id(),
            user_id: user.id.clone(),
            workspace_id: w.id.clone(),
            workspace_name: w.name.clone(),
            subject,
            mode: if managed { "managed".into() } else { "byok".into() },
            provider: target.key_of.as_str().into(),
            model: m.slug.clone(),
            endpoint: ep.name().into(),
            stream,
            created_ms: now_ms(),
        },
        managed,
        price,
        hold: if managed { estimate } else { 0 },
    };
    if managed && !st.store().reserve(&call.req, estimate).await? {
        let w = st.store().wallet(&user.id).await?;
        return Err(ProxyError::new(
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_credits",
            format!(
                "out of AI credits: this call needs up to {:.6} credits, {:.6} are available",
                rigbox_ai::credits(estimate),
                rigbox_ai::credits(w.available_micro())
            ),
        ));
    }

    // Upstream request.
    wire::rewrite(format, &mut body, target.model.as_deref(), stream);
    let mut up = s.http.post(&target.url).header("content-type", "application/json").body(serde_json::to_vec(&body).unwrap_or_default());
    for (k, v) in h.iter() {
        if rigbox_ai::hop::upstream_header_allowed(k.as_str()) && k.as_str() != "content-type" {
            up = up.header(k.as_str(), v.clone());
        }
    }
    if format == Format::Anthropic && !h.contains_key("anthropic-version") {
        up = up.header("anthropic-version", "2023-06-01");
    }
    up = match target.auth {
        AuthStyle::Bearer => up.bearer_auth(&key),
        AuthStyle::XApiKey => up.header("x-api-key", &key),
        AuthStyle::GoogApiKey => up.header("x-goog-api-key", &key),
    };
    if !stream {
        up = up.timeout(Duration::from_secs(600));
    }
    let resp = match up.send().await {
        Ok(r) => r,
        Err(e) => {
            let msg = scrub(&e.to_string(), &key);
            call.release(None, "upstream unreachable").await;
            return Err(ProxyError::new(StatusCode::BAD_GATEWAY, "upstream_unreachable", format!("the provider could not be reached: {msg}")));
        }
    };
    let status = resp.status();
    let mut out_headers = HeaderMap::new();
    for (k, v) in resp.headers() {
        if rigbox_ai::hop::response_header_allowed(k.as_str()) {
            out_headers.insert(k.clone(), v.clone());
        }
    }
    let set = |hm: &mut HeaderMap, k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            hm.insert(k, v);
        }
    };
    set(&mut out_headers, "x-rigbox-request-id", call.req.id.clone());
    set(&mut out_headers, "x-rigbox-mode", call.req.mode.clone());

    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        call.release(Some(status.as_u16()), &format!("upstream answered {status}")).await;
        if managed && matches!(status.as_u16(), 401 | 403) {
            tracing::error!(provider = %target.key_of, %status, "the provider refused the platform's key");
            return Err(ProxyError::new(StatusCode::BAD_GATEWAY, "provider_auth_failed", "the provider refused the platform's credentials; the operator has been told"));
        }
        let mut r = Response::new(Body::from(scrub(&text, &key)));
        *r.status_mut() = status;
        *r.headers_mut() = out_headers;
        return Ok(r);
    }

    let is_sse = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|c| c.starts_with("text/event-stream"));
    if !stream && !is_sse {
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                call.broken(None, &format!("reading the answer failed: {}", scrub(&e.to_string(), &key))).await;
                return Err(ProxyError::new(StatusCode::BAD_GATEWAY, "upstream_broken", "the provider's answer broke off"));
            }
        };
        let mut v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let (cost, body_bytes) = match wire::usage_of(format, &v) {
            Some(u) => {
                let cost = call.settle(&u, status.as_u16()).await;
                wire::add_cost(format, &mut v, cost);
                (Some(cost), serde_json::to_vec(&v).unwrap_or_else(|_| bytes.to_vec()))
            }
            None => {
                call.broken(None, "the answer reported no usage").await;
                (None, bytes.to_vec())
            }
        };
        if let Some(c) = cost {
            set(&mut out_headers, "x-rigbox-cost-micro", c.to_string());
            set(&mut out_headers, "x-rigbox-cost-credits", format!("{}", rigbox_ai::credits(c)));
        } else {
            set(&mut out_headers, "x-rigbox-hold-micro", call.hold.to_string());
        }
        out_headers.remove("content-length");
        let mut r = Response::new(Body::from(body_bytes));
        *r.status_mut() = status;
        *r.headers_mut() = out_headers;
        return Ok(r);
    }

    // A stream: passed on event by event, metered as it goes.
    set(&mut out_headers, "x-rigbox-hold-micro", call.hold.to_string());
    set(&mut out_headers, "x-rigbox-hold-credits", format!("{}", rigbox_ai::credits(call.hold)));
    out_headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    out_headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    let meter = StreamMeter::new(format, is_sse, if managed { price } else { None });
    let tracker = Tracker { meter, call: Some(call), key, status: status.as_u16() };
    let upstream = resp.bytes_stream().boxed();
    let body = futures::stream::unfold((tracker, upstream, false), |(mut t, mut up, done)| async move {
        if done {
            return None;
        }
        loop {
            match up.next().await {
                Some(Ok(chunk)) => {
                    let out = t.meter.feed(&chunk);
                    if !out.is_empty() {
                        return Some((Ok(Bytes::from(out)), (t, up, false)));
                    }
                }
                Some(Err(e)) => {
                    let why = format!("the provider's stream broke: {}", scrub(&e.to_string(), &t.key));
                    t.finish_broken(&why).await;
                    return Some((Err(std::io::Error::other(why)), (t, up, true)));
                }
                None => {
                    let mut tail = t.meter.end();
                    if let Some(c) = t.finish_clean().await {
                        tail.extend_from_slice(&c);
                    }
                    return Some((Ok(Bytes::from(tail)), (t, up, true)));
                }
            }
        }
    });
    let mut r = Response::new(Body::from_stream(body));
    *r.status_mut() = status;
    *r.headers_mut() = out_headers;
    Ok(r)
}

/// Follows a stream to its end; settles exactly once (also when the guest
/// goes away mid-stream: then from the usage seen, or a broken hold).
struct Tracker {
    meter: StreamMeter,
    call: Option<Call>,
    key: String,
    status: u16,
}

impl Tracker {
    /// The stream ended: settle, and return the SSE cost comment.
    async fn finish_clean(&mut self) -> Option<Vec<u8>> {
        let sse = self.sse();
        let comment = self.finish("the stream ended without a usage report".into()).await?;
        comment.filter(|_| sse)
    }

    async fn finish_broken(&mut self, why: &str) {
        self.finish(why.into()).await;
    }

    /// Settles from the final usage, or marks the hold broken, exactly once.
    /// The work runs in its own task: the guest may hang up meanwhile (which
    /// drops the body and this future), and the ledger must not be left
    /// half-done. Returns the SSE cost comment when there was a settlement.
    async fn finish(&mut self, why: String) -> Option<Option<Vec<u8>>> {
        let call = self.call.take()?;
        let (usage, partial, status) = (self.meter.final_usage(), self.meter.usage_so_far(), self.status);
        let task = tokio::spawn(async move {
            match usage {
                Some(u) => {
                    let cost = call.settle(&u, status).await;
                    Some(wire::cost_comment(&call.req.id, cost, &u))
                }
                None => {
                    call.broken(partial, &why).await;
                    None
                }
            }
        });
        task.await.ok()
    }

    fn sse(&self) -> bool {
        self.meter.is_sse()
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            // The guest went away before the end.
            let final_usage = self.meter.final_usage();
            let partial = self.meter.usage_so_far();
            let status = self.status;
            tokio::spawn(async move {
                match final_usage {
                    Some(u) => {
                        call.settle(&u, status).await;
                    }
                    None => call.broken(partial, "the client disconnected before the usage report").await,
                }
            });
        }
    }
}

fn scrub(text: &str, key: &str) -> String {
    if key.len() >= 4 {
        text.replace(key, "[redacted]")
    } else {
        text.to_string()
    }
}

#[derive(Deserialize)]
struct SubjectQuery {
    subject: Option<String>,
    window: Option<String>,
}

async fn subject_usage(st: &AppState, user: &User, header_subject: Option<String>, query: Option<&str>) -> Result<Response, ProxyError> {
    let q: SubjectQuery = serde_urlencoded_query(query.unwrap_or(""));
    let subject = q
        .subject
        .map(|s| limits::parse_subject(&s))
        .transpose()
        .map_err(|e| ProxyError::bad("invalid_request", e.0))?
        .or(header_subject)
        .ok_or_else(|| ProxyError::bad("invalid_request", "subject is required"))?;
    let window = match q.window.as_deref() {
        None => 86_400,
        Some(w) => limits::parse_window(w).ok_or_else(|| ProxyError::bad("invalid_request", format!("invalid window {w:?}")))?,
    };
    let spent = st.store().subject_spend(&user.id, &subject, now_ms() - window as i64 * 1000).await?;
    Ok(Json(json!({
        "subject": subject,
        "window_seconds": window,
        "requests": spent.requests,
        "input_tokens": spent.input_tokens,
        "output_tokens": spent.output_tokens,
        "spend_micro": spent.spend_micro,
        "spend_credits": rigbox_ai::credits(spent.spend_micro),
    }))
    .into_response())
}

fn serde_urlencoded_query(q: &str) -> SubjectQuery {
    let mut out = SubjectQuery { subject: None, window: None };
    for kv in q.split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = percent_decode(v);
        match k {
            "subject" => out.subject = Some(v),
            "window" => out.window = Some(v),
            _ => {}
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(x) => {
                        out.push(x);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_patch_semantics() {
        let p: UpdateAiConfig = serde_json::from_str(r#"{"mode": null, "model": "x"}"#).unwrap();
        assert_eq!(p.mode, Some(None));
        assert_eq!(p.model, Some(Some("x".into())));
        assert_eq!(p.provider, None);
        assert!(serde_json::from_str::<UpdateAiConfig>(r#"{"other": 1}"#).is_err());
    }

    #[test]
    fn query_decoding_and_scrubbing() {
        let q = serde_urlencoded_query("subject=team%20a&window=15m");
        assert_eq!((q.subject.as_deref(), q.window.as_deref()), (Some("team a"), Some("15m")));
        assert_eq!(scrub("bad key sk-12345 given", "sk-12345"), "bad key [redacted] given");
        assert!(ct_eq(b"abc", b"abc") && !ct_eq(b"abc", b"abd") && !ct_eq(b"abc", b"ab"));
    }
}
