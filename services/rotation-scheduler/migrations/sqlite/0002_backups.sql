-- One row per scheduled backup attempt (`kind` backup) or check of the stored copies (`kind`
-- check), written when it starts and completed when it ends (a row left unfinished is an
-- attempt a crash or a lost lease cut short). `archive` is the file
-- name; `detail` says what failed, never a secret (archive errors carry none).
CREATE TABLE backup_runs (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL DEFAULT 'backup',
    replica      TEXT NOT NULL,
    started_ms   BIGINT NOT NULL,
    finished_ms  BIGINT,
    outcome      TEXT,
    archive      TEXT,
    copies       INTEGER NOT NULL DEFAULT 0,
    detail       TEXT
);
CREATE INDEX backup_runs_started ON backup_runs (started_ms);
