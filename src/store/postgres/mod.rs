//! Postgres: the production store, shared by any number of replicas. Changes are announced with
//! `NOTIFY` inside the transaction that makes them, so every process hears each commit.

mod listen;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::store::{
    self, ChangeFeed, ListQuery, NewDelivery, Outcome, Page, Storage, StoreError, StoredPrediction,
    keyset,
};

/// How long a request waits for a pooled connection before the database counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// A statement running longer than this is cancelled by the server.
const STATEMENT_TIMEOUT: &str = "10s";

/// The channel on which a committed change of a prediction is announced; the payload is its id.
const CHANGES_CHANNEL: &str = "prediction_inbox_changes";

pub struct Postgres {
    pool: PgPool,
}

impl Postgres {
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
}

#[async_trait::async_trait]
impl Storage for Postgres {
    fn describe(&self) -> String {
        let options = self.pool.connect_options();
        format!(
            "postgres at {}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        )
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // sqlx takes an advisory lock, so replicas starting together migrate once.
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn pool_status(&self) -> (u32, usize) {
        store::pool_status(&self.pool)
    }

    async fn count_by_status(&self) -> Result<Vec<(Option<String>, i64)>, StoreError> {
        Ok(sqlx::query_as(store::COUNT_BY_STATUS)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn record(&self, delivery: &NewDelivery<'_>) -> Result<Outcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        let applied: Option<bool> = sqlx::query_scalar(RECORD)
            .bind(delivery.prediction.id.as_str())
            .bind(delivery.status())
            .bind(delivery.prediction.model.as_deref())
            .bind(delivery.prediction.version.as_deref())
            .bind(delivery.created_at())
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

    async fn prediction(&self, id: &str) -> Result<Option<StoredPrediction>, StoreError> {
        let found = sqlx::query_as(
            "SELECT id, status, created_at, body::text AS body FROM predictions WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found)
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let rows = keyset::select(query, "id, status, created_at, body::text AS body", |t| t)
            .build_query_as()
            .fetch_all(&self.pool)
            .await?;
        Ok(keyset::page(query, rows))
    }

    async fn changes(&self) -> Result<Box<dyn ChangeFeed>, StoreError> {
        Ok(Box::new(listen::ChangeListener::connect(&self.pool).await?))
    }

    async fn close(&self) {
        self.pool.close().await;
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
