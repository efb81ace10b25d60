-- A delivery's body is kept as `text`, no longer as `json`.
--
-- The service parses every body whole (serde_json) before it writes it, and refuses those that are
-- not a JSON object. The `json` type parsed each one again, in the one process that writes every
-- batch: `json_in` was about 4 % of that process' time under load, and ingest went from 12,003 to
-- 12,769 deliveries a second in the means of three alternating runs (docs/benchmarks.md). Like
-- `json`, `text` keeps the exact bytes received: key order, spacing, number spelling.
--
-- To query a body's fields, cast it: `body::json ->> 'status'`.
--
-- `json` has no cast to `text` but through its text form, so this rewrites `deliveries`, under a
-- lock that holds up ingest: about 2.6 s for a million deliveries on a 2-core machine.

ALTER TABLE deliveries ALTER COLUMN body TYPE text;
