-- SSH public keys registered per user (the gateway maps a key to its user).
CREATE TABLE ssh_keys (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    UNIQUE (user_id, name)
);
-- A key belongs to one user only: it is how the SSH gateway knows who connects.
CREATE UNIQUE INDEX ssh_keys_fingerprint ON ssh_keys(fingerprint);
CREATE INDEX ssh_keys_user ON ssh_keys(user_id);
