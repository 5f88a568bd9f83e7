-- Change-stream events of committed writes, waiting for their sequence numbers (ADR 2): the
-- sequencer moves them into secret_events in id order under the stream_head row lock, so
-- writes no longer hold that lock until their own commit.
CREATE TABLE unsequenced_events (
    id       BIGSERIAL PRIMARY KEY,
    kind     BIGINT NOT NULL,
    path     TEXT NOT NULL,
    versions TEXT NOT NULL,
    label    TEXT NOT NULL,
    time     BIGINT NOT NULL
);
