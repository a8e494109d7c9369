-- Accounts, API keys, nodes, workspaces. Migrations are append-only.
CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    email       TEXT NOT NULL UNIQUE,
    is_admin    INTEGER NOT NULL DEFAULT 0,
    ai_mode     TEXT NOT NULL DEFAULT 'managed',
    created_at  TEXT NOT NULL
);

CREATE TABLE api_keys (
    id                TEXT PRIMARY KEY,
    user_id           TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name              TEXT,
    key_hash          TEXT NOT NULL UNIQUE,
    key_preview       TEXT NOT NULL,
    is_workspace_key  INTEGER NOT NULL DEFAULT 0,
    created_at        TEXT NOT NULL,
    last_used_at      TEXT
);
CREATE INDEX api_keys_user ON api_keys(user_id);

CREATE TABLE nodes (
    id          TEXT PRIMARY KEY,
    url         TEXT NOT NULL,
    token       TEXT NOT NULL,
    backend     TEXT NOT NULL DEFAULT '',
    info        TEXT NOT NULL DEFAULT '{}',
    last_seen_at TEXT,
    created_at  TEXT NOT NULL
);

CREATE TABLE workspaces (
    id                   TEXT PRIMARY KEY,
    user_id              TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    node_id              TEXT NOT NULL,
    name                 TEXT NOT NULL,
    status               TEXT NOT NULL,
    image                TEXT NOT NULL,
    template_id          TEXT,
    ram_mb               INTEGER NOT NULL,
    vcpu_count           INTEGER NOT NULL,
    disk_size_mb         INTEGER NOT NULL,
    env_vars             TEXT NOT NULL DEFAULT '{}',
    setup_script_ids     TEXT NOT NULL DEFAULT '[]',
    service_spec_ids     TEXT NOT NULL DEFAULT '[]',
    ai_mode              TEXT,
    failure_code         TEXT,
    failure_reason       TEXT,
    failure_at           TEXT,
    creation_attempts    INTEGER NOT NULL DEFAULT 0,
    creation_started_at  TEXT,
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL,
    UNIQUE (user_id, name)
);
CREATE INDEX workspaces_user ON workspaces(user_id);
CREATE INDEX workspaces_status ON workspaces(status);
