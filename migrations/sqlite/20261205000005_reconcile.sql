-- The reconciler, as in migrations/postgres (`reconcile`); times are
-- Unix microseconds.
CREATE TABLE reconcile (
    prediction_id TEXT PRIMARY KEY NOT NULL REFERENCES predictions (id) ON DELETE CASCADE,
    next_at       INTEGER NOT NULL,
    interval_ms   INTEGER NOT NULL,
    missing_since INTEGER,
    missing       INTEGER NOT NULL DEFAULT 0,
    marked        TEXT
) STRICT;

-- The predictions in flight, which the reconciler reads (Postgres finds them in its index on
-- `settled` instead).
CREATE INDEX predictions_unfinished_idx ON predictions (id) WHERE progress_rank < 2;
