-- Raised alerts. Ids are UUIDv7, so ordering by id is ordering by time raised.
CREATE TABLE alerts (
    id              TEXT PRIMARY KEY,
    rule            TEXT NOT NULL,
    severity        BIGINT NOT NULL,
    summary         TEXT NOT NULL,
    principal       TEXT NOT NULL,
    secret_name     TEXT NOT NULL,
    time            BIGINT NOT NULL,
    sequences       TEXT NOT NULL,
    acknowledged    BIGINT NOT NULL,
    acknowledged_by TEXT NOT NULL
);
CREATE INDEX alerts_open ON alerts (acknowledged, id);
