-- The latest-state rule becomes one total order (contract, amended): rank; below terminal rank the
-- length of `logs`, then the byte length of `output`'s JSON text as received; `webhook-timestamp`;
-- then `webhook-id`. Adding columns rewrites nothing. NULL means "not known yet": the service fills
-- in the predictions still in flight as it starts, in Rust (SQLite's JSON functions do not keep
-- the text as received), and the others in the background, a thousand at a time
-- (src/store/sqlite.rs).
ALTER TABLE predictions ADD COLUMN progress_output INTEGER;
-- The `webhook-id` of the delivery the state stands on.
ALTER TABLE predictions ADD COLUMN latest_delivery TEXT;
