-- A batch of deliveries is written by one statement in autocommit: one round trip instead of three
-- (BEGIN, the statement, COMMIT). But a statement keeps running after its client has given up —
-- at the batch's deadline, when every delivery in it is answered 503 — and would then commit them
-- behind the senders' backs. So the statement ends with this check, which fails it, and with it
-- everything it wrote, once the time the batch had left when it was sent is up.
--
-- It takes the results of the statement's writes and returns them unchanged: a function's
-- arguments are evaluated before it runs, so the check comes after every write. Time is counted on
-- the server's clock from the start of the statement's transaction, so the clocks of the service
-- and the database need not agree. In autocommit that start is when the server received the
-- statement: before it waited for any lock, which `statement_timestamp()` is not (the extended
-- protocol resets it between binding the statement, which takes the table locks, and running it).
CREATE FUNCTION prediction_inbox_before_deadline(time_left interval, changed text[], recorded bigint)
RETURNS text[]
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF clock_timestamp() > transaction_timestamp() + time_left THEN
        RAISE EXCEPTION 'the batch ran past its deadline; nothing of it was recorded'
            USING ERRCODE = 'query_canceled';
    END IF;
    RETURN changed;
END
$$;
