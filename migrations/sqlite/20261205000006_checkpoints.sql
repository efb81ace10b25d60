-- As in migrations/postgres (`checkpoints`); the time in Unix microseconds.
CREATE TABLE checkpoints (
    name       TEXT PRIMARY KEY NOT NULL,
    through_at INTEGER NOT NULL
) STRICT;
