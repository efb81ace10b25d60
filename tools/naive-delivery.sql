-- pgbench script: one delivery per transaction, as a receiver without group commit writes it —
-- the delivery row and the guarded upsert of its prediction in one statement (the statement this
-- service ran per delivery before group commit, on today's schema). Bodies are ~870 bytes, like the
-- load tool's; predictions are drawn from 100,000, so most deliveries update a row.
--
-- `-D notify=1` adds the NOTIFY for waiters that the service sends with its writes. Postgres
-- serialises the commits of notifying transactions, which halves this script's rate, so the naive
-- ceiling is measured without it (`-D notify=0`), and with it only for comparison.
\set p random(1, 100000)
\set w random(1, 1000000000000)
\set rank random(0, 2)
BEGIN;
WITH d AS (
    SELECT 'p' || :p AS id,
           'msg_' || :w AS webhook_id,
           (ARRAY['starting', 'processing', 'succeeded'])[:rank + 1] AS status,
           extract(epoch FROM clock_timestamp())::bigint AS ts
), body AS (
    SELECT format('{"id":"%s","model":"replicate/hello-world","version":"5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa","input":{"text":"Alice"},"logs":"","output":null,"error":null,"status":"%s","created_at":"2026-11-25T00:00:00Z","urls":{"get":"https://api.replicate.com/v1/predictions/%s","cancel":"https://api.replicate.com/v1/predictions/%s/cancel"},"padding":"%s"}',
                  d.id, d.status, d.id, d.id, repeat('x', 450)) AS text
    FROM d
), latest AS (
    INSERT INTO predictions AS p
        (id, status, model, version, created_at,
         progress_rank, progress_logs, progress_timestamp, updated_at, latest_delivery)
    SELECT d.id, d.status, 'replicate/hello-world', '5c7d5dc6', now(), :rank, 0, d.ts, now(), d.webhook_id
    FROM d
    ON CONFLICT (id) DO UPDATE SET
        status = excluded.status,
        model = excluded.model,
        version = excluded.version,
        progress_rank = excluded.progress_rank,
        progress_logs = excluded.progress_logs,
        progress_timestamp = excluded.progress_timestamp,
        updated_at = excluded.updated_at,
        latest_delivery = excluded.latest_delivery
    WHERE (p.progress_rank, p.progress_logs, p.progress_timestamp)
        < (excluded.progress_rank, excluded.progress_logs, excluded.progress_timestamp)
    RETURNING 1
)
INSERT INTO deliveries (webhook_id, prediction_id, webhook_timestamp, received_at, applied, body)
SELECT d.webhook_id, d.id, d.ts, now(), EXISTS (SELECT 1 FROM latest), body.text
FROM d, body
ON CONFLICT (webhook_id) DO NOTHING;
\if :notify
SELECT pg_notify('prediction_inbox_changes', 'p' || :p);
\endif
COMMIT;
