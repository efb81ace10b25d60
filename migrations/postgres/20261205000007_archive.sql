-- The output archive (src/archive/): output files copied into object storage before the platform
-- removes them.
--
-- `archive_files`: one row a file to archive, keyed by its copy's key in the store (a digest of
-- the prediction and the URL, then the file name):
-- - `state`: `queued`, `archived`, `failed` (for good; `reason` says why) or `expired` (its copy
--   was deleted after INBOX_ARCHIVE_RETENTION);
-- - `completed_at`: when the prediction completed: the most recent are fetched first, as the
--   platform's hour runs out for them first;
-- - `next_at`, `attempts`, `reason`: the retries of a file whose host failed;
-- - `leased_by`, `leased_until`: the replica fetching it, until when.
-- Nothing here is written by ingest: the archiver hears which predictions became terminal, and
-- sweeps the deliveries' `status` by `received_at` (the BRIN index by time) for what it missed.
CREATE TABLE archive_files (
    key           text COLLATE "C" PRIMARY KEY,
    prediction_id text NOT NULL REFERENCES predictions (id) ON DELETE CASCADE,
    url           text NOT NULL,
    completed_at  timestamptz NOT NULL,
    state         text NOT NULL,
    reason        text,
    attempts      integer NOT NULL DEFAULT 0,
    next_at       timestamptz NOT NULL,
    leased_by     text,
    leased_until  timestamptz,
    size          bigint,
    content_type  text,
    archived_at   timestamptz
);

CREATE INDEX archive_files_prediction_idx ON archive_files (prediction_id);
CREATE INDEX archive_files_queue_idx ON archive_files (completed_at DESC) WHERE state = 'queued';
CREATE INDEX archive_files_archived_idx ON archive_files (archived_at) WHERE state = 'archived';
