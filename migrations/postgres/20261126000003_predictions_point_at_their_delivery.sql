-- A prediction's latest state is the body of the delivery that made it so, and `deliveries` keeps
-- that body already. So `predictions` points at that delivery instead of holding a second copy.
--
-- Every delivery was written twice, once into each table: about 870 bytes more heap, and WAL, at
-- each update of a prediction. In the load test `predictions` took about 400 bytes of disk a
-- prediction instead of 2.5 KB, and ingest about 14 % less of Postgres' CPU a delivery
-- (docs/benchmarks.md). Reads join the delivery by its primary key: one more index probe for each
-- prediction read.
--
-- The batch statement writes the pointer and the delivery it points at in one transaction, and
-- nothing deletes deliveries. There is no foreign key: checking it would look up and lock each
-- delivery row again as its prediction is written, in the statement every delivery goes through.

ALTER TABLE predictions ADD COLUMN latest_delivery text COLLATE "C";

-- The delivery whose body is the stored state: an applied one, by construction. Should two applied
-- deliveries of a prediction carry the same body, either is right.
UPDATE predictions AS p SET latest_delivery = (
    SELECT d.webhook_id FROM deliveries AS d
    WHERE d.prediction_id = p.id AND d.applied AND d.body::text = p.body::text
    ORDER BY d.received_at DESC
    LIMIT 1
);

-- Fails, and with it this whole migration, should any prediction's body not be found among its
-- deliveries: then nothing is dropped.
ALTER TABLE predictions ALTER COLUMN latest_delivery SET NOT NULL;
ALTER TABLE predictions DROP COLUMN body;
