-- Snapshots (disk snapshots of stopped workspaces, live snapshots with memory).
CREATE TABLE snapshots (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    workspace_id  TEXT NOT NULL,
    node_id       TEXT NOT NULL,
    name          TEXT NOT NULL,
    kind          TEXT NOT NULL,
    size_bytes    INTEGER NOT NULL,
    created_at    TEXT NOT NULL
);
CREATE INDEX snapshots_user ON snapshots(user_id);
CREATE INDEX snapshots_workspace ON snapshots(workspace_id);
