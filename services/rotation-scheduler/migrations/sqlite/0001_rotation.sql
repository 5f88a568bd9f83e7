-- Rotation policies by exact path or glob.
CREATE TABLE rotation_policies (
    pattern          TEXT PRIMARY KEY,
    frequency_ms     BIGINT NOT NULL,
    method           INTEGER NOT NULL,
    notify_before_ms BIGINT NOT NULL,
    grace_ms         BIGINT NOT NULL,
    rotator          TEXT NOT NULL,
    params           TEXT NOT NULL,
    max_attempts     INTEGER NOT NULL,
    updated_by       TEXT NOT NULL,
    update_ms        BIGINT NOT NULL
);

-- One row per run of the state machine. `step` is persisted before the step runs.
CREATE TABLE rotations (
    id               TEXT PRIMARY KEY,
    path             TEXT NOT NULL,
    step             INTEGER NOT NULL,
    attempts         INTEGER NOT NULL,
    not_before_ms    BIGINT NOT NULL,
    grace_until_ms   BIGINT,
    last_error       TEXT,
    pending_version  BIGINT NOT NULL DEFAULT 0,
    previous_version BIGINT NOT NULL DEFAULT 0,
    policy           TEXT NOT NULL,
    reason           TEXT NOT NULL,
    emergency        INTEGER NOT NULL,
    started_by       TEXT NOT NULL,
    start_ms         BIGINT NOT NULL,
    update_ms        BIGINT NOT NULL,
    finish_ms        BIGINT
);
-- At most one unfinished rotation per secret: the database, not the scheduler, guarantees it.
CREATE UNIQUE INDEX rotations_one_active ON rotations (path) WHERE step NOT IN (6, 8);
CREATE INDEX rotations_by_path ON rotations (path, start_ms);

-- Reminders sent, one per secret, due date and kind, so each goes out once.
CREATE TABLE rotation_reminders (
    path     TEXT NOT NULL,
    due_ms   BIGINT NOT NULL,
    kind     TEXT NOT NULL,
    sent_ms  BIGINT NOT NULL,
    PRIMARY KEY (path, due_ms, kind)
);

-- The leader lease: the holder runs rotations; `fence` grows with every change of holder and
-- every step write is conditional on it, so a deposed leader cannot persist anything.
CREATE TABLE scheduler_lease (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    fence      BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
