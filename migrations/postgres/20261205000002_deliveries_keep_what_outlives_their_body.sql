-- Retention (src/retention.rs): a superseded, non-terminal delivery may lose its body after
-- `INBOX_INTERMEDIATE_BODY_RETENTION`; its record stays, for deduplication and the history
-- (`GET /v1/predictions/{id}/deliveries`), with what the history shows of it:
-- - `status`: the delivery's own status (NULL for a row recorded before this migration, whose
--   status is read from its body while it has one, and written here before the body goes);
-- - `source`: how it came; `webhook` for every row before this migration;
-- - `body_size`: the body's length in bytes, written when the body is dropped. NULL means the body
--   is kept, and its length is its own.
--
-- Each change touches the catalogue only (a constant default is not written into old rows since
-- PostgreSQL 11): a large table is not rewritten, and ingest waits a moment, not for its size.
ALTER TABLE deliveries
    ADD COLUMN status text,
    ADD COLUMN source text NOT NULL DEFAULT 'webhook',
    ADD COLUMN body_size bigint,
    ALTER COLUMN body DROP NOT NULL;

-- What the background workers keep between runs, one row each: the lease that lets one replica at
-- a time do a worker's job (a holder that stops renewing it loses it at `held_until`), and how far
-- the work has gone through the deliveries, in (received_at, webhook_id) order.
CREATE TABLE background_work (
    name        text COLLATE "C" PRIMARY KEY,
    holder      text,
    held_until  timestamptz,
    through_at  timestamptz,
    through_id  text COLLATE "C"
);
