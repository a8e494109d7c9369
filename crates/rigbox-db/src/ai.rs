//! Storage of AI configuration, wallet and usage (migration `0007_ai.sql`).
//!
//! The wallet is integer micro-credits: `balance` (grants minus charges) and
//! `held` (open reservations); what a user can spend is `balance - held`.
//! A reservation is one transaction whose first statement is the
//! conditional `UPDATE … WHERE balance_micro - held_micro >= hold`, so
//! concurrent calls serialize on SQLite's write lock and can never reserve
//! more than the balance. Settling and releasing flip the request's status
//! with a compare-and-set (`WHERE status IN ('held','broken')`), so each
//! happens at most once. Every movement appends to `ai_ledger`, which
//! triggers keep append-only.

use crate::{DbError, DbResult, SqliteStore};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

/// A user's wallet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wallet {
    /// Grants minus charges.
    pub balance_micro: i64,
    /// Open holds.
    pub held_micro: i64,
    /// Everything ever granted.
    pub granted_micro: i64,
}

impl Wallet {
    /// What can be spent now (may be negative after an overrun).
    pub fn available_micro(&self) -> i64 {
        self.balance_micro - self.held_micro
    }
}

/// A request about to go upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAiRequest {
    /// `ai-…`.
    pub id: String,
    /// Owner of the workspace.
    pub user_id: String,
    /// Workspace.
    pub workspace_id: String,
    /// Its name (kept for usage reports after a delete).
    pub workspace_name: String,
    /// Subject (`X-Rigbox-Subject` or the body's `user`).
    pub subject: Option<String>,
    /// `managed` or `byok`.
    pub mode: String,
    /// Provider.
    pub provider: String,
    /// Model slug.
    pub model: String,
    /// Endpoint name.
    pub endpoint: String,
    /// Streamed.
    pub stream: bool,
    /// When (ms since the epoch).
    pub created_ms: i64,
}

/// The outcome of a call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Charged to the wallet.
    pub cost_micro: i64,
    /// The call's price (also for BYOK, where nothing is charged).
    pub list_micro: i64,
    /// Upstream HTTP status.
    pub upstream_status: Option<i64>,
}

/// A stored request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AiRequestRow {
    /// Id.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Workspace.
    pub workspace_id: String,
    /// Workspace name.
    pub workspace_name: String,
    /// Subject.
    pub subject: Option<String>,
    /// Mode.
    pub mode: String,
    /// Provider.
    pub provider: String,
    /// Model.
    pub model: String,
    /// Endpoint.
    pub endpoint: String,
    /// Streamed.
    pub stream: bool,
    /// `held`, `settled`, `released`, `broken`.
    pub status: String,
    /// Reserved.
    pub hold_micro: i64,
    /// Charged.
    pub cost_micro: i64,
    /// Price.
    pub list_micro: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Upstream status.
    pub upstream_status: Option<i64>,
    /// Error.
    pub error: Option<String>,
    /// Created (ms).
    pub created_ms: i64,
    /// Settled or released (ms).
    pub settled_ms: Option<i64>,
}

/// A ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Sequence number.
    pub id: i64,
    /// User.
    pub user_id: String,
    /// `grant`, `hold`, `release`, `charge`.
    pub kind: String,
    /// Signed effect on what the user can spend.
    pub amount_micro: i64,
    /// Request, for hold/release/charge.
    pub request_id: Option<String>,
    /// Note.
    pub note: Option<String>,
    /// When (ms).
    pub created_ms: i64,
}

/// Usage totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AiTotals {
    /// Requests.
    pub requests: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Credits charged (micro).
    pub cost_micro: i64,
}

/// Totals of one day (UTC, `YYYY-MM-DD`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AiDay {
    /// Day.
    pub day: String,
    /// Totals.
    pub totals: AiTotals,
}

/// Totals of one workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AiWorkspaceTotals {
    /// Workspace.
    pub workspace_id: String,
    /// Its name.
    pub workspace_name: String,
    /// Totals.
    pub totals: AiTotals,
}

/// Spend of a subject in a window (for budgets and rates).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectSpend {
    /// Requests (released ones included).
    pub requests: i64,
    /// Price of settled calls plus open holds (micro).
    pub spend_micro: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Oldest request in the window (ms).
    pub oldest_ms: Option<i64>,
}

/// A workspace's AI configuration (the mode is `workspaces.ai_mode`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceAiConfig {
    /// Workspace.
    pub workspace_id: String,
    /// Provider.
    pub provider: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// BYOK key, sealed.
    pub api_key_sealed: Option<String>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// Account defaults for new workspaces (the mode is `users.ai_mode`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AiDefaults {
    /// Provider.
    pub default_provider: Option<String>,
    /// Model.
    pub default_model: Option<String>,
}

/// An operator's provider key, sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderKeyRow {
    /// Provider.
    pub provider: String,
    /// Sealed key.
    pub api_key_sealed: String,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// Storage of AI configuration, wallet and usage.
#[async_trait::async_trait]
pub trait AiStore: Send + Sync {
    /// A user's wallet (zero when none exists).
    async fn wallet(&self, user_id: &str) -> DbResult<Wallet>;
    /// Adds credits (negative takes them away); returns the wallet.
    async fn grant_credits(&self, user_id: &str, micro: i64, note: Option<&str>) -> DbResult<Wallet>;
    /// Reserves `hold_micro` and records the request as `held`, atomically.
    /// False (and nothing written) when the user cannot fund it.
    async fn reserve(&self, req: &NewAiRequest, hold_micro: i64) -> DbResult<bool>;
    /// Records a call that moves no credits (BYOK), already settled.
    async fn record_unmetered(&self, req: &NewAiRequest, s: &Settlement) -> DbResult<()>;
    /// Settles a held (or broken) request: charge, release the hold. False when already done.
    async fn settle(&self, id: &str, s: &Settlement) -> DbResult<bool>;
    /// Releases a held (or broken) request without charge. False when already done.
    async fn release(&self, id: &str, upstream_status: Option<i64>, error: Option<&str>) -> DbResult<bool>;
    /// Marks a held request broken (its hold stays for reconciliation).
    async fn mark_broken(&self, id: &str, input_tokens: i64, output_tokens: i64, error: &str) -> DbResult<bool>;
    /// One request.
    async fn ai_request(&self, id: &str) -> DbResult<AiRequestRow>;
    /// Requests still holding credits (`held`, `broken`), oldest first.
    async fn open_holds(&self) -> DbResult<Vec<AiRequestRow>>;
    /// A user's latest ledger entries, newest first.
    async fn ledger(&self, user_id: &str, limit: i64) -> DbResult<Vec<LedgerEntry>>;
    /// Spend of a subject since `since_ms`.
    async fn subject_spend(&self, user_id: &str, subject: &str, since_ms: i64) -> DbResult<SubjectSpend>;
    /// Totals of a user (or one workspace) since `since_ms`.
    async fn ai_totals(&self, user_id: &str, workspace_id: Option<&str>, since_ms: i64) -> DbResult<AiTotals>;
    /// Totals per UTC day since `since_ms`.
    async fn ai_daily(&self, user_id: &str, since_ms: i64) -> DbResult<Vec<AiDay>>;
    /// Totals per workspace since `since_ms`.
    async fn ai_by_workspace(&self, user_id: &str, since_ms: i64) -> DbResult<Vec<AiWorkspaceTotals>>;
    /// Totals in buckets of `step_ms` from `since_ms` (only non-empty buckets, by index).
    async fn ai_buckets(&self, user_id: &str, workspace_id: Option<&str>, since_ms: i64, step_ms: i64) -> DbResult<Vec<(i64, AiTotals)>>;
    /// A workspace's AI configuration.
    async fn workspace_ai_config(&self, workspace_id: &str) -> DbResult<Option<WorkspaceAiConfig>>;
    /// Stores a workspace's AI configuration.
    async fn put_workspace_ai_config(&self, c: &WorkspaceAiConfig) -> DbResult<()>;
    /// Sets or clears a workspace's AI mode override.
    async fn set_workspace_ai_mode(&self, workspace_id: &str, mode: Option<&str>) -> DbResult<()>;
    /// A user's AI defaults.
    async fn ai_defaults(&self, user_id: &str) -> DbResult<AiDefaults>;
    /// Stores a user's AI defaults.
    async fn put_ai_defaults(&self, user_id: &str, d: &AiDefaults) -> DbResult<()>;
    /// Operator provider keys (sealed).
    async fn provider_keys(&self) -> DbResult<Vec<ProviderKeyRow>>;
    /// Sets (or with `None` removes) a provider key.
    async fn set_provider_key(&self, provider: &str, sealed: Option<&str>) -> DbResult<()>;
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn request_row(r: &SqliteRow) -> DbResult<AiRequestRow> {
    Ok(AiRequestRow {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        workspace_id: r.try_get("workspace_id")?,
        workspace_name: r.try_get("workspace_name")?,
        subject: r.try_get("subject")?,
        mode: r.try_get("mode")?,
        provider: r.try_get("provider")?,
        model: r.try_get("model")?,
        endpoint: r.try_get("endpoint")?,
        stream: r.try_get::<i64, _>("stream")? != 0,
        status: r.try_get("status")?,
        hold_micro: r.try_get("hold_micro")?,
        cost_micro: r.try_get("cost_micro")?,
        list_micro: r.try_get("list_micro")?,
        input_tokens: r.try_get("input_tokens")?,
        output_tokens: r.try_get("output_tokens")?,
        upstream_status: r.try_get("upstream_status")?,
        error: r.try_get("error")?,
        created_ms: r.try_get("created_ms")?,
        settled_ms: r.try_get("settled_ms")?,
    })
}

fn totals(r: &SqliteRow) -> DbResult<AiTotals> {
    Ok(AiTotals {
        requests: r.try_get("n")?,
        input_tokens: r.try_get("inp")?,
        output_tokens: r.try_get("outp")?,
        cost_micro: r.try_get("cost")?,
    })
}

const TOTALS: &str = "COUNT(*) AS n, COALESCE(SUM(input_tokens), 0) AS inp, COALESCE(SUM(output_tokens), 0) AS outp, COALESCE(SUM(cost_micro), 0) AS cost";

async fn ledger_entry(
    tx: &mut sqlx::SqliteConnection,
    user_id: &str,
    kind: &str,
    amount: i64,
    request_id: Option<&str>,
    note: Option<&str>,
) -> DbResult<()> {
    sqlx::query("INSERT INTO ai_ledger (user_id, kind, amount_micro, request_id, note, created_ms) VALUES (?, ?, ?, ?, ?, ?)")
        .bind(user_id)
        .bind(kind)
        .bind(amount)
        .bind(request_id)
        .bind(note)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn insert_request(tx: &mut sqlx::SqliteConnection, req: &NewAiRequest, status: &str, hold: i64, s: &Settlement, settled: Option<i64>) -> DbResult<()> {
    sqlx::query(
        "INSERT INTO ai_requests (id, user_id, workspace_id, workspace_name, subject, mode, provider, model, endpoint, stream, status,
         hold_micro, cost_micro, list_micro, input_tokens, output_tokens, upstream_status, created_ms, settled_ms)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&req.id)
    .bind(&req.user_id)
    .bind(&req.workspace_id)
    .bind(&req.workspace_name)
    .bind(&req.subject)
    .bind(&req.mode)
    .bind(&req.provider)
    .bind(&req.model)
    .bind(&req.endpoint)
    .bind(i64::from(req.stream))
    .bind(status)
    .bind(hold)
    .bind(s.cost_micro)
    .bind(s.list_micro)
    .bind(s.input_tokens)
    .bind(s.output_tokens)
    .bind(s.upstream_status)
    .bind(req.created_ms)
    .bind(settled)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn ensure_wallet(tx: &mut sqlx::SqliteConnection, user_id: &str) -> DbResult<()> {
    sqlx::query("INSERT OR IGNORE INTO ai_wallets (user_id, updated_at) VALUES (?, ?)").bind(user_id).bind(Utc::now()).execute(&mut *tx).await?;
    Ok(())
}

#[async_trait::async_trait]
impl AiStore for SqliteStore {
    async fn wallet(&self, user_id: &str) -> DbResult<Wallet> {
        let r = sqlx::query("SELECT balance_micro, held_micro, granted_micro FROM ai_wallets WHERE user_id = ?").bind(user_id).fetch_optional(self.pool()).await?;
        Ok(match r {
            Some(r) => Wallet { balance_micro: r.try_get(0)?, held_micro: r.try_get(1)?, granted_micro: r.try_get(2)? },
            None => Wallet::default(),
        })
    }

    async fn grant_credits(&self, user_id: &str, micro: i64, note: Option<&str>) -> DbResult<Wallet> {
        let mut tx = self.pool().begin().await?;
        ensure_wallet(&mut tx, user_id).await?;
        sqlx::query("UPDATE ai_wallets SET balance_micro = balance_micro + ?1, granted_micro = granted_micro + MAX(?1, 0), updated_at = ?2 WHERE user_id = ?3")
            .bind(micro)
            .bind(Utc::now())
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        ledger_entry(&mut tx, user_id, "grant", micro, None, note).await?;
        tx.commit().await?;
        self.wallet(user_id).await
    }

    async fn reserve(&self, req: &NewAiRequest, hold_micro: i64) -> DbResult<bool> {
        if hold_micro < 0 {
            return Err(DbError::Other("negative hold".into()));
        }
        let mut tx = self.pool().begin().await?;
        // The first statement writes, so this transaction holds SQLite's
        // write lock from here on: reservations serialize.
        ensure_wallet(&mut tx, &req.user_id).await?;
        let r = sqlx::query("UPDATE ai_wallets SET held_micro = held_micro + ?1, updated_at = ?2 WHERE user_id = ?3 AND balance_micro - held_micro >= ?1")
            .bind(hold_micro)
            .bind(Utc::now())
            .bind(&req.user_id)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_request(&mut tx, req, "held", hold_micro, &Settlement::default(), None).await?;
        ledger_entry(&mut tx, &req.user_id, "hold", -hold_micro, Some(&req.id), None).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn record_unmetered(&self, req: &NewAiRequest, s: &Settlement) -> DbResult<()> {
        let mut tx = self.pool().begin().await?;
        insert_request(&mut tx, req, "settled", 0, &Settlement { cost_micro: 0, ..*s }, Some(now_ms())).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn settle(&self, id: &str, s: &Settlement) -> DbResult<bool> {
        let mut tx = self.pool().begin().await?;
        let r = sqlx::query(
            "UPDATE ai_requests SET status = 'settled', cost_micro = ?, list_micro = ?, input_tokens = ?, output_tokens = ?,
             upstream_status = COALESCE(?, upstream_status), settled_ms = ? WHERE id = ? AND status IN ('held', 'broken')",
        )
        .bind(s.cost_micro)
        .bind(s.list_micro)
        .bind(s.input_tokens)
        .bind(s.output_tokens)
        .bind(s.upstream_status)
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        let row = sqlx::query("SELECT user_id, hold_micro FROM ai_requests WHERE id = ?").bind(id).fetch_one(&mut *tx).await?;
        let (user, hold): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
        sqlx::query("UPDATE ai_wallets SET held_micro = held_micro - ?, balance_micro = balance_micro - ?, updated_at = ? WHERE user_id = ?")
            .bind(hold)
            .bind(s.cost_micro)
            .bind(Utc::now())
            .bind(&user)
            .execute(&mut *tx)
            .await?;
        ledger_entry(&mut tx, &user, "release", hold, Some(id), None).await?;
        ledger_entry(&mut tx, &user, "charge", -s.cost_micro, Some(id), None).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn release(&self, id: &str, upstream_status: Option<i64>, error: Option<&str>) -> DbResult<bool> {
        let mut tx = self.pool().begin().await?;
        let r = sqlx::query("UPDATE ai_requests SET status = 'released', upstream_status = COALESCE(?, upstream_status), error = COALESCE(?, error), settled_ms = ? WHERE id = ? AND status IN ('held', 'broken')")
            .bind(upstream_status)
            .bind(error)
            .bind(now_ms())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        let row = sqlx::query("SELECT user_id, hold_micro FROM ai_requests WHERE id = ?").bind(id).fetch_one(&mut *tx).await?;
        let (user, hold): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
        sqlx::query("UPDATE ai_wallets SET held_micro = held_micro - ?, updated_at = ? WHERE user_id = ?").bind(hold).bind(Utc::now()).bind(&user).execute(&mut *tx).await?;
        ledger_entry(&mut tx, &user, "release", hold, Some(id), error).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn mark_broken(&self, id: &str, input_tokens: i64, output_tokens: i64, error: &str) -> DbResult<bool> {
        let r = sqlx::query("UPDATE ai_requests SET status = 'broken', input_tokens = ?, output_tokens = ?, error = ? WHERE id = ? AND status = 'held'")
            .bind(input_tokens)
            .bind(output_tokens)
            .bind(error)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn ai_request(&self, id: &str) -> DbResult<AiRequestRow> {
        request_row(&sqlx::query("SELECT * FROM ai_requests WHERE id = ?").bind(id).fetch_one(self.pool()).await?)
    }

    async fn open_holds(&self) -> DbResult<Vec<AiRequestRow>> {
        sqlx::query("SELECT * FROM ai_requests WHERE status IN ('held', 'broken') ORDER BY created_ms")
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(request_row)
            .collect()
    }

    async fn ledger(&self, user_id: &str, limit: i64) -> DbResult<Vec<LedgerEntry>> {
        let rows = sqlx::query("SELECT * FROM ai_ledger WHERE user_id = ? ORDER BY id DESC LIMIT ?").bind(user_id).bind(limit).fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                Ok(LedgerEntry {
                    id: r.try_get("id")?,
                    user_id: r.try_get("user_id")?,
                    kind: r.try_get("kind")?,
                    amount_micro: r.try_get("amount_micro")?,
                    request_id: r.try_get("request_id")?,
                    note: r.try_get("note")?,
                    created_ms: r.try_get("created_ms")?,
                })
            })
            .collect()
    }

    async fn subject_spend(&self, user_id: &str, subject: &str, since_ms: i64) -> DbResult<SubjectSpend> {
        let r = sqlx::query(
            "SELECT COUNT(*) AS n,
             COALESCE(SUM(CASE WHEN status IN ('held', 'broken') THEN hold_micro WHEN status = 'settled' THEN list_micro ELSE 0 END), 0) AS spend,
             COALESCE(SUM(input_tokens), 0) AS inp, COALESCE(SUM(output_tokens), 0) AS outp, MIN(created_ms) AS oldest
             FROM ai_requests WHERE user_id = ? AND subject = ? AND created_ms >= ?",
        )
        .bind(user_id)
        .bind(subject)
        .bind(since_ms)
        .fetch_one(self.pool())
        .await?;
        Ok(SubjectSpend {
            requests: r.try_get("n")?,
            spend_micro: r.try_get("spend")?,
            input_tokens: r.try_get("inp")?,
            output_tokens: r.try_get("outp")?,
            oldest_ms: r.try_get("oldest")?,
        })
    }

    async fn ai_totals(&self, user_id: &str, workspace_id: Option<&str>, since_ms: i64) -> DbResult<AiTotals> {
        let r = sqlx::query(&format!(
            "SELECT {TOTALS} FROM ai_requests WHERE user_id = ? AND (? IS NULL OR workspace_id = ?) AND created_ms >= ? AND status != 'released'"
        ))
        .bind(user_id)
        .bind(workspace_id)
        .bind(workspace_id)
        .bind(since_ms)
        .fetch_one(self.pool())
        .await?;
        totals(&r)
    }

    async fn ai_daily(&self, user_id: &str, since_ms: i64) -> DbResult<Vec<AiDay>> {
        let rows = sqlx::query(&format!(
            "SELECT strftime('%Y-%m-%d', created_ms / 1000, 'unixepoch') AS day, {TOTALS} FROM ai_requests
             WHERE user_id = ? AND created_ms >= ? AND status != 'released' GROUP BY day ORDER BY day"
        ))
        .bind(user_id)
        .bind(since_ms)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| Ok(AiDay { day: r.try_get("day")?, totals: totals(r)? })).collect()
    }

    async fn ai_by_workspace(&self, user_id: &str, since_ms: i64) -> DbResult<Vec<AiWorkspaceTotals>> {
        let rows = sqlx::query(&format!(
            "SELECT workspace_id, MAX(workspace_name) AS workspace_name, {TOTALS} FROM ai_requests
             WHERE user_id = ? AND created_ms >= ? AND status != 'released' GROUP BY workspace_id ORDER BY cost DESC, workspace_id"
        ))
        .bind(user_id)
        .bind(since_ms)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok(AiWorkspaceTotals { workspace_id: r.try_get("workspace_id")?, workspace_name: r.try_get("workspace_name")?, totals: totals(r)? }))
            .collect()
    }

    async fn ai_buckets(&self, user_id: &str, workspace_id: Option<&str>, since_ms: i64, step_ms: i64) -> DbResult<Vec<(i64, AiTotals)>> {
        let rows = sqlx::query(&format!(
            "SELECT (created_ms - ?) / ? AS b, {TOTALS} FROM ai_requests
             WHERE user_id = ? AND (? IS NULL OR workspace_id = ?) AND created_ms >= ? AND status != 'released' GROUP BY b ORDER BY b"
        ))
        .bind(since_ms)
        .bind(step_ms.max(1))
        .bind(user_id)
        .bind(workspace_id)
        .bind(workspace_id)
        .bind(since_ms)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| Ok((r.try_get::<i64, _>("b")?, totals(r)?))).collect()
    }

    async fn workspace_ai_config(&self, workspace_id: &str) -> DbResult<Option<WorkspaceAiConfig>> {
        let r = sqlx::query("SELECT * FROM ai_workspace_config WHERE workspace_id = ?").bind(workspace_id).fetch_optional(self.pool()).await?;
        r.map(|r| {
            Ok(WorkspaceAiConfig {
                workspace_id: r.try_get("workspace_id")?,
                provider: r.try_get("provider")?,
                model: r.try_get("model")?,
                api_key_sealed: r.try_get("api_key_sealed")?,
                updated_at: r.try_get("updated_at")?,
            })
        })
        .transpose()
    }

    async fn put_workspace_ai_config(&self, c: &WorkspaceAiConfig) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO ai_workspace_config (workspace_id, provider, model, api_key_sealed, updated_at) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT(workspace_id) DO UPDATE SET provider = excluded.provider, model = excluded.model,
             api_key_sealed = excluded.api_key_sealed, updated_at = excluded.updated_at",
        )
        .bind(&c.workspace_id)
        .bind(&c.provider)
        .bind(&c.model)
        .bind(&c.api_key_sealed)
        .bind(c.updated_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn set_workspace_ai_mode(&self, workspace_id: &str, mode: Option<&str>) -> DbResult<()> {
        let r = sqlx::query("UPDATE workspaces SET ai_mode = ?, updated_at = ? WHERE id = ?").bind(mode).bind(Utc::now()).bind(workspace_id).execute(self.pool()).await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound);
        }
        Ok(())
    }

    async fn ai_defaults(&self, user_id: &str) -> DbResult<AiDefaults> {
        let r = sqlx::query("SELECT default_provider, default_model FROM ai_user_defaults WHERE user_id = ?").bind(user_id).fetch_optional(self.pool()).await?;
        Ok(match r {
            Some(r) => AiDefaults { default_provider: r.try_get(0)?, default_model: r.try_get(1)? },
            None => AiDefaults::default(),
        })
    }

    async fn put_ai_defaults(&self, user_id: &str, d: &AiDefaults) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO ai_user_defaults (user_id, default_provider, default_model, updated_at) VALUES (?, ?, ?, ?)
             ON CONFLICT(user_id) DO UPDATE SET default_provider = excluded.default_provider, default_model = excluded.default_model, updated_at = excluded.updated_at",
        )
        .bind(user_id)
        .bind(&d.default_provider)
        .bind(&d.default_model)
        .bind(Utc::now())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn provider_keys(&self) -> DbResult<Vec<ProviderKeyRow>> {
        let rows = sqlx::query("SELECT provider, api_key_sealed, updated_at FROM ai_provider_keys ORDER BY provider").fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| Ok(ProviderKeyRow { provider: r.try_get(0)?, api_key_sealed: r.try_get(1)?, updated_at: r.try_get(2)? }))
            .collect()
    }

    async fn set_provider_key(&self, provider: &str, sealed: Option<&str>) -> DbResult<()> {
        match sealed {
            Some(s) => {
                sqlx::query(
                    "INSERT INTO ai_provider_keys (provider, api_key_sealed, updated_at) VALUES (?, ?, ?)
                     ON CONFLICT(provider) DO UPDATE SET api_key_sealed = excluded.api_key_sealed, updated_at = excluded.updated_at",
                )
                .bind(provider)
                .bind(s)
                .bind(Utc::now())
                .execute(self.pool())
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM ai_provider_keys WHERE provider = ?").bind(provider).execute(self.pool()).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn req(id: &str, user: &str) -> NewAiRequest {
        NewAiRequest {
            id: id.into(),
            user_id: user.into(),
            workspace_id: "ws-1".into(),
            workspace_name: "box".into(),
            subject: Some("s1".into()),
            mode: "managed".into(),
            provider: "openai".into(),
            model: "openai/gpt-4o-mini".into(),
            endpoint: "chat.completions".into(),
            stream: false,
            created_ms: now_ms(),
        }
    }

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&d.path().join("t.db")).await.unwrap();
        (d, s)
    }

    #[tokio::test]
    async fn reserve_settle_release_exactly_once() {
        let (_d, s) = store().await;
        assert!(!s.reserve(&req("a", "u"), 10).await.unwrap(), "an empty wallet funds nothing");
        s.grant_credits("u", 100, Some("test")).await.unwrap();
        assert!(s.reserve(&req("a", "u"), 60).await.unwrap());
        assert_eq!(s.wallet("u").await.unwrap(), Wallet { balance_micro: 100, held_micro: 60, granted_micro: 100 });
        assert!(!s.reserve(&req("b", "u"), 41).await.unwrap(), "only 40 left");
        let st = Settlement { input_tokens: 3, output_tokens: 4, cost_micro: 50, list_micro: 50, upstream_status: Some(200) };
        assert!(s.settle("a", &st).await.unwrap());
        assert!(!s.settle("a", &st).await.unwrap(), "settled once");
        assert!(!s.release("a", None, None).await.unwrap());
        assert_eq!(s.wallet("u").await.unwrap(), Wallet { balance_micro: 50, held_micro: 0, granted_micro: 100 });
        assert!(s.reserve(&req("c", "u"), 50).await.unwrap());
        assert!(s.release("c", Some(500), Some("upstream failed")).await.unwrap());
        assert_eq!(s.wallet("u").await.unwrap().available_micro(), 50);
        assert!(s.reserve(&req("d", "u"), 20).await.unwrap());
        assert!(s.mark_broken("d", 1, 0, "stream broke").await.unwrap());
        assert_eq!(s.wallet("u").await.unwrap().held_micro, 20, "a broken stream keeps its hold");
        assert_eq!(s.open_holds().await.unwrap().len(), 1);
        let l = s.ledger("u", 100).await.unwrap();
        let sum: i64 = l.iter().map(|e| e.amount_micro).sum();
        assert_eq!(sum, s.wallet("u").await.unwrap().available_micro(), "the ledger adds up to what can be spent");
        assert!(sqlx::query("DELETE FROM ai_ledger").execute(s.pool()).await.is_err(), "append-only");
        assert!(sqlx::query("UPDATE ai_ledger SET amount_micro = 0").execute(s.pool()).await.is_err(), "append-only");
        let t = s.ai_totals("u", None, 0).await.unwrap();
        assert_eq!((t.requests, t.cost_micro), (2, 50));
        let sp = s.subject_spend("u", "s1", 0).await.unwrap();
        assert_eq!((sp.requests, sp.spend_micro), (3, 70));
        assert_eq!(s.ai_daily("u", 0).await.unwrap().len(), 1);
        assert_eq!(s.ai_by_workspace("u", 0).await.unwrap()[0].workspace_name, "box");
    }

    #[tokio::test]
    async fn concurrent_reservations_never_exceed_the_balance() {
        let (_d, s) = store().await;
        let s = Arc::new(s);
        s.grant_credits("u", 1000, None).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..50 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move { s.reserve(&req(&format!("r{i}"), "u"), 100).await.unwrap() }));
        }
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.unwrap());
        }
        assert_eq!(ok, 10);
        assert_eq!(s.wallet("u").await.unwrap().held_micro, 1000);
    }
}
