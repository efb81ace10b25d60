-- The reconciler (src/reconcile.rs): when each unfinished prediction is to be read from the
-- platform again, and how its last reads went. A prediction without a row has never been read.
-- - `interval_ms`: the wait before the next read, doubled while it stays unfinished;
-- - `missing_since`, `missing`: the platform answered 404 since then, this many times in a row;
-- - `marked`: why it is never read again (`not_found`, `not_the_platform`), or NULL.
CREATE TABLE reconcile (
    prediction_id text PRIMARY KEY REFERENCES predictions (id) ON DELETE CASCADE,
    next_at       timestamptz NOT NULL,
    interval_ms   bigint NOT NULL,
    missing_since timestamptz,
    missing       integer NOT NULL DEFAULT 0,
    marked        text
);
