-- no-transaction
-- One prediction's deliveries, oldest first: its history (`GET /v1/predictions/{id}/deliveries`).
-- Built CONCURRENTLY for the reasons given in `deliveries_by_time`; the same remedy applies.
CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_prediction_idx
    ON deliveries (prediction_id, received_at);
