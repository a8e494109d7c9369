-- Setup scripts and service specs (a user's library, attached to workspaces).
CREATE TABLE setup_scripts (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    content       TEXT NOT NULL,
    run_on        TEXT NOT NULL,
    script_order  INTEGER NOT NULL DEFAULT 0,
    source        TEXT NOT NULL DEFAULT 'user',
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE INDEX setup_scripts_user ON setup_scripts(user_id);

CREATE TABLE service_specs (
    id              TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    exec_start      TEXT NOT NULL,
    env_vars        TEXT NOT NULL DEFAULT '{}',
    restart_policy  TEXT NOT NULL DEFAULT 'on-failure',
    auto_enable     INTEGER NOT NULL DEFAULT 0,
    source          TEXT NOT NULL DEFAULT 'user',
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    UNIQUE (user_id, name)
);
CREATE INDEX service_specs_user ON service_specs(user_id);
