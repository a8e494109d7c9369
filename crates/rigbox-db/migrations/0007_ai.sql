-- AI: credit wallets with an append-only ledger, metered requests (usage
-- metadata only, never prompts or responses), per-workspace AI config,
-- account defaults, operator provider keys (sealed).
CREATE TABLE ai_wallets (
    user_id        TEXT PRIMARY KEY,
    balance_micro  INTEGER NOT NULL DEFAULT 0,  -- grants minus charges
    held_micro     INTEGER NOT NULL DEFAULT 0,  -- open holds
    granted_micro  INTEGER NOT NULL DEFAULT 0,  -- everything ever granted
    updated_at     TEXT NOT NULL
);

CREATE TABLE ai_ledger (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       TEXT NOT NULL,
    kind          TEXT NOT NULL,      -- grant | hold | release | charge
    amount_micro  INTEGER NOT NULL,   -- signed effect on what the user can spend
    request_id    TEXT,
    note          TEXT,
    created_ms    INTEGER NOT NULL
);
CREATE INDEX ai_ledger_user ON ai_ledger(user_id, id);
CREATE TRIGGER ai_ledger_no_update BEFORE UPDATE ON ai_ledger BEGIN SELECT RAISE(ABORT, 'ai_ledger is append-only'); END;
CREATE TRIGGER ai_ledger_no_delete BEFORE DELETE ON ai_ledger BEGIN SELECT RAISE(ABORT, 'ai_ledger is append-only'); END;

CREATE TABLE ai_requests (
    id              TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL,
    workspace_id    TEXT NOT NULL,
    workspace_name  TEXT NOT NULL,
    subject         TEXT,
    mode            TEXT NOT NULL,     -- managed | byok
    provider        TEXT NOT NULL,
    model           TEXT NOT NULL,
    endpoint        TEXT NOT NULL,
    stream          INTEGER NOT NULL,
    status          TEXT NOT NULL,     -- held | settled | released | broken
    hold_micro      INTEGER NOT NULL DEFAULT 0,
    cost_micro      INTEGER NOT NULL DEFAULT 0,  -- charged to the wallet
    list_micro      INTEGER NOT NULL DEFAULT 0,  -- price of the call (also for BYOK)
    input_tokens    INTEGER NOT NULL DEFAULT 0,
    output_tokens   INTEGER NOT NULL DEFAULT 0,
    upstream_status INTEGER,
    error           TEXT,
    created_ms      INTEGER NOT NULL,
    settled_ms      INTEGER
);
CREATE INDEX ai_requests_user_time ON ai_requests(user_id, created_ms);
CREATE INDEX ai_requests_subject ON ai_requests(user_id, subject, created_ms);
CREATE INDEX ai_requests_status ON ai_requests(status);

CREATE TABLE ai_workspace_config (
    workspace_id    TEXT PRIMARY KEY,
    provider        TEXT,
    model           TEXT,
    api_key_sealed  TEXT,
    updated_at      TEXT NOT NULL
);

CREATE TABLE ai_user_defaults (
    user_id           TEXT PRIMARY KEY,
    default_provider  TEXT,
    default_model     TEXT,
    updated_at        TEXT NOT NULL
);

CREATE TABLE ai_provider_keys (
    provider        TEXT PRIMARY KEY,
    api_key_sealed  TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
