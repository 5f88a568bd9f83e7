-- The authenticated identity that appended each record; covered by the record's hash when set.
ALTER TABLE audit_records ADD COLUMN appender TEXT NOT NULL DEFAULT '';

-- Each emitter id belongs to the identity that first appended with it: no other identity may
-- claim its sequence numbers (which would make its real events look like replays).
CREATE TABLE emitters (
    emitter_id TEXT PRIMARY KEY,
    identity   TEXT NOT NULL,
    first_seen BIGINT NOT NULL
);
