-- Every verified delivery, as received: the record of what the platform said, and the dedupe key.
CREATE TABLE deliveries (
    webhook_id        text COLLATE "C" PRIMARY KEY,
    prediction_id     text COLLATE "C" NOT NULL,
    -- the `webhook-timestamp` header, Unix seconds
    webhook_timestamp bigint NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now(),
    -- whether this delivery became the prediction's latest state when it arrived
    applied           boolean NOT NULL,
    -- json (not jsonb) keeps the exact text: key order, spacing, number spelling
    body              json NOT NULL
);

CREATE INDEX deliveries_prediction_idx ON deliveries (prediction_id, received_at);

-- The latest state of each prediction, by the latest-state rule.
CREATE TABLE predictions (
    id                 text COLLATE "C" PRIMARY KEY,
    status             text,
    model              text,
    version            text,
    -- the object's `created_at`, or when the prediction was first received if it has none
    created_at         timestamptz NOT NULL,
    -- The rule's order key (src/domain/progress.rs): a delivery replaces this row only when its
    -- (rank, logs, timestamp) is greater than the stored one.
    progress_rank      smallint NOT NULL,
    progress_logs      bigint NOT NULL,
    progress_timestamp bigint NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    body               json NOT NULL
);

-- The list is newest first by (created_at, id), optionally filtered by one of these columns;
-- keyset pagination walks these indexes in either direction.
CREATE INDEX predictions_created_idx ON predictions (created_at, id);
CREATE INDEX predictions_status_created_idx ON predictions (status, created_at, id);
CREATE INDEX predictions_model_created_idx ON predictions (model, created_at, id);
CREATE INDEX predictions_version_created_idx ON predictions (version, created_at, id);
