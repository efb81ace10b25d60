-- Two indexes cost ingest more than they gave: every delivery pays for them, and the one read that
-- needs the first can be served by an index that changes less often.
--
-- 1. The status filter's index. A prediction's status changes at almost every step of its life
--    (starting, processing, then terminal), and an update that changes an indexed column cannot
--    be heap-only (HOT): it adds an entry to every index of `predictions`, five of them. The list
--    filter is now served by `settled`: the status once the prediction is terminal, '' while it is
--    in flight. It changes once in a prediction's life, so `starting` → `processing` is a HOT update.
--    A filter on a terminal status is the range `settled = status`; any other status is the range
--    `settled = ''`, filtered by `status` (src/store/keyset.rs). The range is in (created_at, id)
--    order either way, as the list's keyset walks it.
--
--    It is computed from `progress_rank`, which the service writes with the status: 2 is the rank
--    of every terminal status (`Status::TERMINAL_RANK` in src/domain/prediction.rs). So the one
--    list of terminal statuses stays in the code.
--
-- 2. The deliveries' index by prediction, `(prediction_id, received_at)`. Nothing in the service
--    reads deliveries by prediction: reads find a prediction's body by its delivery's primary key.
--    It served only the occasional question "what did the platform send for this prediction",
--    which now scans `deliveries`. An operator who asks it often can create the index again,
--    `CONCURRENTLY` (README, "Database"), at the cost measured in docs/benchmarks.md.
--
-- Together they took ingest from 11,115 to 12,581 deliveries a second in the means of three
-- alternating runs (docs/benchmarks.md, "Tried on 2026-11-26 from 11:48 UTC").
--
-- Adding a stored generated column rewrites `predictions`, under a lock that holds up ingest and
-- reads: a few seconds for a million predictions (docs/benchmarks.md).

ALTER TABLE predictions ADD COLUMN settled text
    GENERATED ALWAYS AS (CASE WHEN progress_rank = 2 THEN status ELSE '' END) STORED;

CREATE INDEX predictions_settled_created_idx ON predictions (settled, created_at, id);
DROP INDEX predictions_status_created_idx;

DROP INDEX deliveries_prediction_idx;
