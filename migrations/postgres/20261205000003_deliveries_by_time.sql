-- no-transaction
-- The pruner walks deliveries by the time they arrived. Rows are appended in that order, so a
-- BRIN index (one entry per 128 pages) finds a window of time for next to nothing at insert: a
-- B-tree on the same column cost ingest an entry per row. A range of pages not yet summarised
-- matches every search, so each full range is summarised as soon as it fills (autosummarize), and
-- the pruner summarises what is new before each slice. Built CONCURRENTLY, outside a
-- transaction, so a large table is indexed while deliveries keep being written; one statement
-- per file, as PostgreSQL refuses CONCURRENTLY among others. Should the build be interrupted, the
-- index is left invalid; `DROP INDEX deliveries_received_brin` and a restart build it again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_received_brin
    ON deliveries USING brin (received_at) WITH (autosummarize = on);
