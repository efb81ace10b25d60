-- A lease can be asked for: `prediction-inbox reconcile` asks the replica that holds the
-- reconciler's lease to hand it over. While `wanted_until` runs, the holder gives the lease up at
-- its next renewal and nobody but `wanted_by` takes it (src/store/postgres: LEASE, ASK_FOR_LEASE).
ALTER TABLE background_work
    ADD COLUMN wanted_by    text,
    ADD COLUMN wanted_until timestamptz;
