-- The same two tables as migrations/postgres, in SQLite's types. Timestamps are Unix microseconds
-- (Postgres' precision), so that they sort as numbers; text compares bytewise, as COLLATE "C".

-- Every verified delivery, as received: the record of what the platform said, and the dedupe key.
CREATE TABLE deliveries (
    webhook_id        TEXT PRIMARY KEY NOT NULL,
    prediction_id     TEXT NOT NULL,
    -- the `webhook-timestamp` header, Unix seconds
    webhook_timestamp INTEGER NOT NULL,
    received_at       INTEGER NOT NULL,
    -- whether this delivery became the prediction's latest state when it arrived
    applied           INTEGER NOT NULL,
    -- the exact text received
    body              TEXT NOT NULL
) STRICT;

CREATE INDEX deliveries_prediction_idx ON deliveries (prediction_id, received_at);

-- The latest state of each prediction, by the latest-state rule.
CREATE TABLE predictions (
    id                 TEXT PRIMARY KEY NOT NULL,
    status             TEXT,
    model              TEXT,
    version            TEXT,
    -- the object's `created_at`, or when the prediction was first received if it has none
    created_at         INTEGER NOT NULL,
    -- The rule's order key (src/domain/progress.rs): a delivery replaces this row only when its
    -- (rank, logs, timestamp) is greater than the stored one.
    progress_rank      INTEGER NOT NULL,
    progress_logs      INTEGER NOT NULL,
    progress_timestamp INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    body               TEXT NOT NULL
) STRICT;

-- The list is newest first by (created_at, id), optionally filtered by one of these columns.
CREATE INDEX predictions_created_idx ON predictions (created_at, id);
CREATE INDEX predictions_status_created_idx ON predictions (status, created_at, id);
CREATE INDEX predictions_model_created_idx ON predictions (model, created_at, id);
CREATE INDEX predictions_version_created_idx ON predictions (version, created_at, id);
