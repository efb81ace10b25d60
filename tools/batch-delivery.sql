-- pgbench script: group commit on the database side alone. Each transaction is the service's own
-- batch statement (`RECORD` in src/store/postgres/mod.rs, which tools/compare-naive.sh wraps in the
-- function `bench_record`) for :batch deliveries, with no HTTP, no signatures and no service in
-- the way. What this writes per second is what Postgres takes from one writer (or from as many as
-- there are clients) on this machine, without the service's HTTP work beside it.
--
-- Each client walks predictions through their life as the load tool does: a transaction holds
-- :batch predictions, and the same ones come back in the next two as `processing`, then
-- `succeeded`. Bodies are ~870 bytes, like the load tool's and tools/naive-delivery.sql's. Start
-- with `-D k=-1 -D batch=32 -D run=N`; `run` keeps the ids of one run apart from another's.
\set k :k + 1
SELECT bench_record(
    array_agg(webhook_id), array_agg(prediction_id), array_agg(ts), array_agg(at),
    array_agg(body), array_agg(true), array_agg(true), array_agg(status),
    array_agg('replicate/hello-world'::text), array_agg('5c7d5dc6'::text), array_agg(at),
    array_agg((:k % 3)::int2), array_agg(0::int8), array_agg(0::int8),
    'prediction_inbox_state', interval '10 seconds', array_agg('webhook'::text))
FROM (
    SELECT format('b%s_%s_%s_%s', :run, :client_id, :k, i) AS webhook_id,
           p.id AS prediction_id,
           status,
           clock_timestamp() AS at,
           extract(epoch FROM clock_timestamp())::bigint AS ts,
           format('{"id":"%s","model":"replicate/hello-world","version":"5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa","input":{"text":"Alice"},"logs":"","output":null,"error":null,"status":"%s","created_at":"2026-11-25T00:00:00Z","urls":{"get":"https://api.replicate.com/v1/predictions/%s","cancel":"https://api.replicate.com/v1/predictions/%s/cancel"},"padding":"%s"}',
                  p.id, status, p.id, p.id, repeat('x', 450)) AS body
    FROM generate_series(1, :batch) AS i,
         LATERAL (SELECT format('b%s_%s_%s_%s', :run, :client_id, :k / 3, i) AS id,
                         (ARRAY['starting', 'processing', 'succeeded'])[:k % 3 + 1] AS status) AS p
) AS batch;
