-- no-transaction
-- The B-tree by time (`deliveries_by_time_in_a_btree`) does the BRIN index's work; deliveries no
-- longer pay for keeping both. CONCURRENTLY, so deliveries go on being written meanwhile.
DROP INDEX CONCURRENTLY IF EXISTS deliveries_received_brin;
