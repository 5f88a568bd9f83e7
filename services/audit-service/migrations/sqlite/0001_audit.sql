-- The head of the hash chain: one row, locked by every append so sequences have no gaps.
CREATE TABLE chain_head (
    id       BIGINT PRIMARY KEY,
    sequence BIGINT NOT NULL,
    hash     BLOB NOT NULL
);
INSERT INTO chain_head (id, sequence, hash) VALUES (1, 0, zeroblob(32));

-- Append-only records. `event` is the protobuf AuditEvent as received; the filter columns are
-- copies for queries. (emitter_id, emitter_sequence) makes replays idempotent.
CREATE TABLE audit_records (
    sequence         BIGINT PRIMARY KEY,
    emitter_id       TEXT NOT NULL,
    emitter_sequence BIGINT NOT NULL,
    time             BIGINT NOT NULL,
    event_type       TEXT NOT NULL,
    principal        TEXT NOT NULL,
    secret_name      TEXT NOT NULL,
    success          BIGINT NOT NULL,
    event            BLOB NOT NULL,
    prev_hash        BLOB NOT NULL,
    hash             BLOB NOT NULL,
    receive_time     BIGINT NOT NULL,
    UNIQUE (emitter_id, emitter_sequence)
);
CREATE INDEX audit_records_time ON audit_records (time);
CREATE INDEX audit_records_principal ON audit_records (principal, time);
CREATE INDEX audit_records_secret ON audit_records (secret_name, time);

CREATE TABLE checkpoints (
    sequence  BIGINT PRIMARY KEY,
    head_hash BLOB NOT NULL,
    signature BLOB NOT NULL,
    kid       TEXT NOT NULL,
    time      BIGINT NOT NULL
);
