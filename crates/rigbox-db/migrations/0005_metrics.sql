-- Workspace usage (metrics and logs concern). Raw samples as the nodes took
-- them (about every 5 s; kept 70 minutes) and rollups in 1-minute and
-- 15-minute buckets (kept 7 hours and 8 days), updated as samples arrive so
-- the current bucket is always there. Logs are not stored here: the serial
-- console stays on the node and the journal in the guest.
-- No foreign keys: rows of deleted workspaces age out with the rest.
CREATE TABLE workspace_usage_samples (
    workspace_id   TEXT NOT NULL,
    t_ms           INTEGER NOT NULL,
    dt_ms          INTEGER NOT NULL,
    cpu            REAL NOT NULL,
    mem_used_mb    REAL NOT NULL,
    mem_total_mb   REAL NOT NULL,
    disk_used_mb   REAL NOT NULL,
    disk_total_mb  REAL NOT NULL,
    rx_bytes       INTEGER NOT NULL,
    tx_bytes       INTEGER NOT NULL,
    guest_fresh    INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, t_ms)
) WITHOUT ROWID;
CREATE INDEX workspace_usage_samples_t ON workspace_usage_samples(t_ms);

-- One bucket of `step` seconds starting at `t` (unix seconds): sums for
-- averages, the latest levels, network byte totals, and a CPU histogram in
-- 5% bins (h0 = [0,5), ..., h19 = [95,100]) for percentiles over any range.
CREATE TABLE workspace_usage_rollups (
    workspace_id    TEXT NOT NULL,
    step            INTEGER NOT NULL,
    t               INTEGER NOT NULL,
    n               INTEGER NOT NULL,
    dt_ms           INTEGER NOT NULL,
    cpu_sum         REAL NOT NULL,
    cpu_max         REAL NOT NULL,
    mem_used_sum    REAL NOT NULL,
    mem_total_sum   REAL NOT NULL,
    disk_used_sum   REAL NOT NULL,
    disk_total_sum  REAL NOT NULL,
    last_t_ms       INTEGER NOT NULL,
    mem_used_last   REAL NOT NULL,
    mem_total_last  REAL NOT NULL,
    disk_used_last  REAL NOT NULL,
    disk_total_last REAL NOT NULL,
    rx_bytes        INTEGER NOT NULL,
    tx_bytes        INTEGER NOT NULL,
    guest_fresh_n   INTEGER NOT NULL,
    h0 INTEGER NOT NULL DEFAULT 0, h1 INTEGER NOT NULL DEFAULT 0, h2 INTEGER NOT NULL DEFAULT 0, h3 INTEGER NOT NULL DEFAULT 0,
    h4 INTEGER NOT NULL DEFAULT 0, h5 INTEGER NOT NULL DEFAULT 0, h6 INTEGER NOT NULL DEFAULT 0, h7 INTEGER NOT NULL DEFAULT 0,
    h8 INTEGER NOT NULL DEFAULT 0, h9 INTEGER NOT NULL DEFAULT 0, h10 INTEGER NOT NULL DEFAULT 0, h11 INTEGER NOT NULL DEFAULT 0,
    h12 INTEGER NOT NULL DEFAULT 0, h13 INTEGER NOT NULL DEFAULT 0, h14 INTEGER NOT NULL DEFAULT 0, h15 INTEGER NOT NULL DEFAULT 0,
    h16 INTEGER NOT NULL DEFAULT 0, h17 INTEGER NOT NULL DEFAULT 0, h18 INTEGER NOT NULL DEFAULT 0, h19 INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace_id, step, t)
) WITHOUT ROWID;
CREATE INDEX workspace_usage_rollups_step_t ON workspace_usage_rollups(step, t);
