-- The latest-state rule becomes one total order (contract, amended): rank; below terminal rank the
-- length of `logs`, then the byte length of `output`'s JSON text as received; `webhook-timestamp`;
-- then `webhook-id`. The id of the delivery a prediction's state stands on is `latest_delivery`
-- already; the output's length is new.
--
-- Adding a nullable column without a default changes the catalogue only: no row is rewritten, and
-- ingest is held up for a moment, not for the size of the table. NULL means "not measured yet":
-- the batch statement measures such a row's stored body when it compares with it (a terminal
-- state's output counts as 0 anyway), and the service fills the column in the background, a
-- thousand rows at a time (src/store/postgres/mod.rs, `backfill`).
ALTER TABLE predictions ADD COLUMN progress_output bigint;

-- The batch statement's last step (it replaces `prediction_inbox_before_deadline`, which a replica
-- of the previous version may still call during a rolling upgrade). It takes the statement's
-- results as arguments, so it runs after every write, and fails the statement, and with it
-- everything the statement wrote:
-- - when a prediction the batch meant to create was created by another batch meanwhile: the
--   answers were decided against a stored state that did not exist when the statement looked,
--   so the batch is tried again (serialization_failure);
-- - when the batch ran past its deadline, counted on the server's clock from the start of the
--   statement's transaction (see `prediction_inbox_before_deadline` for why that start).
CREATE FUNCTION prediction_inbox_batch_done(time_left interval, applied text[], raced bigint)
RETURNS text[]
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF raced > 0 THEN
        RAISE EXCEPTION 'a prediction of the batch was created by another batch meanwhile'
            USING ERRCODE = 'serialization_failure';
    END IF;
    IF clock_timestamp() > transaction_timestamp() + time_left THEN
        RAISE EXCEPTION 'the batch ran past its deadline; nothing of it was recorded'
            USING ERRCODE = 'query_canceled';
    END IF;
    RETURN applied;
END
$$;
