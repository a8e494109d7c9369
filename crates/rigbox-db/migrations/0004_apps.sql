-- Apps (routes from {subdomain}.{base_domain} to a workspace port), their
-- health checks, and edge metric samples.
CREATE TABLE apps (
    id                      TEXT PRIMARY KEY,
    workspace_id            TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    user_id                 TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    node_id                 TEXT NOT NULL,
    name                    TEXT NOT NULL,
    subdomain               TEXT NOT NULL UNIQUE,
    port                    INTEGER NOT NULL,
    protocol                TEXT NOT NULL DEFAULT 'http',
    app_kind                TEXT NOT NULL DEFAULT 'service',
    status                  TEXT NOT NULL,
    visibility              TEXT NOT NULL DEFAULT 'private',
    allowed_emails          TEXT NOT NULL DEFAULT '[]',
    custom_domain           TEXT,
    custom_domain_verified  INTEGER NOT NULL DEFAULT 0,
    managed                 INTEGER NOT NULL DEFAULT 0,
    depends_on              TEXT NOT NULL DEFAULT '[]',
    system_tags             TEXT NOT NULL DEFAULT '[]',
    description             TEXT,
    metadata                TEXT NOT NULL DEFAULT '{}',
    service_name            TEXT,
    health_path             TEXT NOT NULL DEFAULT '/',
    created_at              TEXT NOT NULL,
    updated_at              TEXT NOT NULL,
    UNIQUE (workspace_id, name)
);
CREATE INDEX apps_workspace ON apps(workspace_id);
CREATE INDEX apps_user ON apps(user_id);
CREATE INDEX apps_status ON apps(status);

-- The last health check of each app.
CREATE TABLE app_health (
    app_id          TEXT PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
    live            INTEGER NOT NULL,
    port_open       INTEGER NOT NULL,
    service_status  TEXT NOT NULL,
    port_drift      INTEGER NOT NULL,
    http_status     INTEGER,
    detail          TEXT,
    checked_at      TEXT NOT NULL,
    changed_at      TEXT NOT NULL
);

-- Every change of an app's health (live, port_open, service_status, port_drift).
CREATE TABLE app_health_events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id          TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    live            INTEGER NOT NULL,
    port_open       INTEGER NOT NULL,
    service_status  TEXT NOT NULL,
    port_drift      INTEGER NOT NULL,
    http_status     INTEGER,
    detail          TEXT,
    at              TEXT NOT NULL
);
CREATE INDEX app_health_events_app ON app_health_events(app_id, id);

-- Edge metrics in 10-second buckets (several rows of one bucket add up).
-- No foreign key: samples of deleted apps are pruned with the old ones.
CREATE TABLE app_metric_samples (
    app_id        TEXT NOT NULL,
    host          TEXT NOT NULL,
    t             INTEGER NOT NULL,
    step_secs     INTEGER NOT NULL,
    requests      INTEGER NOT NULL,
    errors_5xx    INTEGER NOT NULL,
    s1xx          INTEGER NOT NULL DEFAULT 0,
    s2xx          INTEGER NOT NULL DEFAULT 0,
    s3xx          INTEGER NOT NULL DEFAULT 0,
    s4xx          INTEGER NOT NULL DEFAULT 0,
    s5xx          INTEGER NOT NULL DEFAULT 0,
    bytes_out     INTEGER NOT NULL,
    latency_hist  TEXT NOT NULL
);
CREATE INDEX app_metric_samples_app_t ON app_metric_samples(app_id, t);
