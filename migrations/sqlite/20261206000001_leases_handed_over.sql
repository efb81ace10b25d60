-- The leases of background work, as in migrations/postgres (`background_work`'s holder columns
-- and `leases_handed_over`): more than one process may open the embedded database — `serve` and
-- `prediction-inbox reconcile` — and one at a time does each job. Times in Unix microseconds.
CREATE TABLE leases (
    name         TEXT PRIMARY KEY NOT NULL,
    holder       TEXT,
    held_until   INTEGER,
    wanted_by    TEXT,
    wanted_until INTEGER
) STRICT;
