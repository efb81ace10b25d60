//! Postgres: where deliveries and latest states live. Plain SQL; the only decision made here is
//! the one the database must make atomically — whether a delivery's progress key is greater than
//! the stored one (see `domain::Progress`).

mod listen;
mod predictions;

use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use time::OffsetDateTime;

use crate::domain::{Prediction, Progress, Status, WebhookId};

pub use listen::ChangeListener;
pub use predictions::{Direction, ListQuery, Page, Position, StoredPrediction};

/// How long a request waits for a pooled connection before the database counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// A statement running longer than this is cancelled by the server.
const STATEMENT_TIMEOUT: &str = "10s";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unavailable: {0}")]
    Unavailable(#[from] sqlx::Error),
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// What recording one delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The delivery is now the prediction's latest state.
    Applied,
    /// Recorded, but older than the stored state, which is unchanged.
    Ignored,
    /// This `webhook-id` was recorded before; nothing was written.
    Duplicate,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Ignored => "ignored",
            Self::Duplicate => "duplicate",
        }
    }
}

/// A verified, parsed delivery ready to be written.
pub struct NewDelivery<'a> {
    pub webhook_id: &'a WebhookId,
    pub webhook_timestamp: i64,
    pub prediction: &'a Prediction,
    pub progress: Progress,
    /// The exact body received.
    pub body: &'a str,
    pub received_at: OffsetDateTime,
}

/// The channel on which a committed change of a prediction is announced; the payload is its id.
const CHANGES_CHANNEL: &str = "prediction_inbox_changes";

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects (one connection up front, so a wrong URL fails at start-up) without migrating.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?
            .application_name("prediction-inbox")
            .options([("statement_timeout", STATEMENT_TIMEOUT)]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    /// Applies pending migrations; safe to run from several replicas at once (sqlx takes a lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Connections of the pool in use and idle.
    pub fn pool_status(&self) -> (u32, usize) {
        let idle = self.pool.num_idle();
        (self.pool.size().saturating_sub(idle as u32), idle)
    }

    /// How many predictions have each documented status, and how many some other (or none).
    pub async fn count_by_status(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let counts = sqlx::query_as(
            "SELECT CASE WHEN status = ANY($1) THEN status ELSE 'other' END, count(*) \
             FROM predictions GROUP BY 1",
        )
        .bind(&Status::KNOWN[..])
        .fetch_all(&self.pool)
        .await?;
        Ok(counts)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Records a delivery and advances its prediction's latest state if its progress is greater,
    /// in one transaction: a caller told `Applied` or `Ignored` may acknowledge the delivery.
    pub async fn record(&self, delivery: &NewDelivery<'_>) -> Result<Outcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        let applied: Option<bool> = sqlx::query_scalar(RECORD)
            .bind(delivery.prediction.id.as_str())
            .bind(delivery.prediction.status.as_ref().map(|s| s.as_str()))
            .bind(delivery.prediction.model.as_deref())
            .bind(delivery.prediction.version.as_deref())
            .bind(
                delivery
                    .prediction
                    .created_at
                    .unwrap_or(delivery.received_at),
            )
            .bind(delivery.progress.rank)
            .bind(delivery.progress.logs_len)
            .bind(delivery.progress.timestamp)
            .bind(delivery.body)
            .bind(delivery.webhook_id.as_str())
            .bind(delivery.webhook_timestamp)
            .bind(delivery.received_at)
            .fetch_optional(&mut *tx)
            .await?;
        match applied {
            // The webhook-id was there already: undo the upsert the statement may have made.
            None => {
                tx.rollback().await?;
                Ok(Outcome::Duplicate)
            }
            Some(applied) => {
                if applied {
                    // Delivered to listeners only when the transaction commits, so a woken waiter
                    // always finds the new state.
                    sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(CHANGES_CHANNEL)
                        .bind(delivery.prediction.id.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(if applied {
                    Outcome::Applied
                } else {
                    Outcome::Ignored
                })
            }
        }
    }
}

/// One statement, so a delivery costs one round trip besides BEGIN/COMMIT. Concurrent deliveries
/// of one prediction serialise on its row; the guard is re-checked against the newest version, so
/// none is lost and none regresses it. `created_at` is never changed once set: it is the sort key.
const RECORD: &str = r#"
WITH latest AS (
    INSERT INTO predictions AS p
        (id, status, model, version, created_at,
         progress_rank, progress_logs, progress_timestamp, updated_at, body)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $12, $9::json)
    ON CONFLICT (id) DO UPDATE SET
        status = excluded.status,
        model = excluded.model,
        version = excluded.version,
        progress_rank = excluded.progress_rank,
        progress_logs = excluded.progress_logs,
        progress_timestamp = excluded.progress_timestamp,
        updated_at = excluded.updated_at,
        body = excluded.body
    WHERE (p.progress_rank, p.progress_logs, p.progress_timestamp)
        < (excluded.progress_rank, excluded.progress_logs, excluded.progress_timestamp)
    RETURNING 1
)
INSERT INTO deliveries (webhook_id, prediction_id, webhook_timestamp, received_at, applied, body)
VALUES ($10, $1, $11, $12, EXISTS (SELECT 1 FROM latest), $9::json)
ON CONFLICT (webhook_id) DO NOTHING
RETURNING applied
"#;
