-- no-transaction
-- The predictions the reconciler looks at: unfinished ones, the longest unheard first. Small (what
-- is in flight), and built CONCURRENTLY for the reasons given in `deliveries_by_time`.
CREATE INDEX CONCURRENTLY IF NOT EXISTS predictions_unfinished_idx
    ON predictions (updated_at) WHERE progress_rank < 2;
