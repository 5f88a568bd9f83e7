-- Secret metadata: one row per path. `revision` increases on every change (cache guard).
CREATE TABLE secrets (
    path            TEXT PRIMARY KEY,
    tier            BIGINT NOT NULL,
    owner           TEXT NOT NULL,
    description     TEXT NOT NULL,
    content_type    TEXT NOT NULL,
    tags            TEXT NOT NULL,
    max_versions    BIGINT NOT NULL,
    expire_time     BIGINT,
    rotate_by_time  BIGINT,
    current_version BIGINT NOT NULL,
    revision        BIGINT NOT NULL,
    create_time     BIGINT NOT NULL,
    update_time     BIGINT NOT NULL
);

-- One row per version. ciphertext and wrapped_key are NULL once destroyed (crypto-shred).
CREATE TABLE secret_versions (
    path        TEXT NOT NULL REFERENCES secrets(path),
    version     BIGINT NOT NULL,
    state       BIGINT NOT NULL,
    ciphertext  BYTEA,
    wrapped_key BYTEA,
    key_version BIGINT NOT NULL,
    created_by  TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    PRIMARY KEY (path, version)
);

CREATE TABLE secret_labels (
    path    TEXT NOT NULL REFERENCES secrets(path),
    label   TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (path, label)
);

-- Idempotent Put: a retried request id returns the first result.
CREATE TABLE put_requests (
    principal   TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    path        TEXT NOT NULL,
    version     BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    PRIMARY KEY (principal, request_id)
);

-- The change stream. Sequence numbers come from stream_head under its row lock, so events
-- commit in sequence order and a reader never skips one that commits late.
CREATE TABLE stream_head (
    id       BIGINT PRIMARY KEY,
    sequence BIGINT NOT NULL
);
INSERT INTO stream_head (id, sequence) VALUES (1, 0);

CREATE TABLE secret_events (
    sequence BIGINT PRIMARY KEY,
    kind     BIGINT NOT NULL,
    path     TEXT NOT NULL,
    versions TEXT NOT NULL,
    label    TEXT NOT NULL,
    time     BIGINT NOT NULL
);

CREATE TABLE app_credentials (
    role_id     TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    policies    TEXT NOT NULL,
    token_ttl   BIGINT NOT NULL,
    created_by  TEXT NOT NULL,
    create_time BIGINT NOT NULL
);

CREATE TABLE revoked_tokens (
    token_id    TEXT PRIMARY KEY,
    expire_time BIGINT NOT NULL,
    revoke_time BIGINT NOT NULL
);

-- Bootstrap root tokens, stored as SHA-256 hex.
CREATE TABLE root_tokens (
    token_id    TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL,
    create_time BIGINT NOT NULL
);
