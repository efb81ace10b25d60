-- Retention (src/retention.rs), as in migrations/postgres: `status`, `source` and `body_size`
-- outlive a dropped body. A column cannot lose NOT NULL here without rebuilding the table, so a
-- dropped body is the empty string; `body_size` NULL means the body is kept.
ALTER TABLE deliveries ADD COLUMN status TEXT;
ALTER TABLE deliveries ADD COLUMN source TEXT NOT NULL DEFAULT 'webhook';
ALTER TABLE deliveries ADD COLUMN body_size INTEGER;

-- What the background workers keep between runs. One process writes, so nobody needs a lease;
-- the pruner walks deliveries in rowid order (the order they were written), as far as
-- `through_rowid`.
CREATE TABLE background_work (
    name          TEXT PRIMARY KEY NOT NULL,
    through_rowid INTEGER NOT NULL
) STRICT;
