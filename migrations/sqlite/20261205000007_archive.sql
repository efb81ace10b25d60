-- The output archive, as in migrations/postgres (`archive`); times are Unix microseconds.
CREATE TABLE archive_files (
    key           TEXT PRIMARY KEY NOT NULL,
    prediction_id TEXT NOT NULL REFERENCES predictions (id) ON DELETE CASCADE,
    url           TEXT NOT NULL,
    completed_at  INTEGER NOT NULL,
    state         TEXT NOT NULL,
    reason        TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_at       INTEGER NOT NULL,
    leased_by     TEXT,
    leased_until  INTEGER,
    size          INTEGER,
    content_type  TEXT,
    archived_at   INTEGER
) STRICT;

CREATE INDEX archive_files_prediction_idx ON archive_files (prediction_id);
CREATE INDEX archive_files_queue_idx ON archive_files (completed_at DESC) WHERE state = 'queued';
CREATE INDEX archive_files_archived_idx ON archive_files (archived_at) WHERE state = 'archived';

-- The archiver finds the predictions that succeeded through their deliveries, by time (Postgres
-- has its BRIN index on `received_at` for it). Only succeeded deliveries are in it.
CREATE INDEX deliveries_succeeded_idx ON deliveries (received_at) WHERE status = 'succeeded';
