-- How far a background job that goes through time has got: the reconciler's catch-up keeps here
-- the time through which it has listed the platform's predictions (src/reconcile.rs).
CREATE TABLE checkpoints (
    name       text PRIMARY KEY,
    through_at timestamptz NOT NULL
);
