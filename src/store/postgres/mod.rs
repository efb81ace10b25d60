//! Postgres: the production store, shared by any number of replicas. Changes are announced with
//! `NOTIFY` inside the transaction that makes them, so every process hears each commit.

mod listen;
mod plan;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::store::{
    self, ChangeFeed, ListQuery, NewDelivery, Outcome, Page, Storage, StoreError, StoredPrediction,
    keyset,
};
use plan::Plan;

/// How long a request waits for a pooled connection before the database counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// A statement running longer than this is cancelled by the server.
const STATEMENT_TIMEOUT: &str = "10s";

/// More batches in flight than this only adds lock waits on a 2-core database.
const MAX_CONCURRENT_WRITES: usize = 4;

/// The channel on which a committed change of a prediction is announced; the payload is its id.
const CHANGES_CHANNEL: &str = "prediction_inbox_changes";

pub struct Postgres {
    pool: PgPool,
    concurrent_writes: usize,
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
        Ok(Self {
            pool,
            // Batches overlap in the database (one waits on another only for a row both touch),
            // but each holds a connection: leave at least half the pool to reads.
            concurrent_writes: (max_connections as usize / 2).clamp(1, MAX_CONCURRENT_WRITES),
        })
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

    /// Three bulk statements, whatever the batch's size: insert the deliveries not seen before;
    /// upsert each prediction's greatest new state under the guard; mark the winners applied and
    /// announce them. Rows are written in key order, so overlapping batches cannot deadlock.
    async fn record(&self, batch: &[NewDelivery]) -> Result<Vec<Outcome>, StoreError> {
        let mut plan = Plan::new(batch);
        let mut tx = self.pool.begin().await?;

        let candidates = plan.candidates();
        let inserted: Vec<String> = sqlx::query_scalar(INSERT_DELIVERIES)
            .bind(column(&candidates, |d| d.webhook_id.as_str()))
            .bind(column(&candidates, |d| d.prediction.id.as_str()))
            .bind(column(&candidates, |d| d.webhook_timestamp))
            .bind(column(&candidates, |d| d.received_at))
            .bind(column(&candidates, |d| d.body.as_str()))
            .fetch_all(&mut *tx)
            .await?;
        plan.inserted(&inserted);

        let winners = plan.winners();
        if !winners.is_empty() {
            let applied: Vec<String> = sqlx::query_scalar(UPSERT_PREDICTIONS)
                .bind(column(&winners, |d| d.prediction.id.as_str()))
                .bind(column(&winners, NewDelivery::status))
                .bind(column(&winners, |d| d.prediction.model.as_deref()))
                .bind(column(&winners, |d| d.prediction.version.as_deref()))
                .bind(column(&winners, NewDelivery::created_at))
                .bind(column(&winners, |d| d.progress.rank))
                .bind(column(&winners, |d| d.progress.logs_len))
                .bind(column(&winners, |d| d.progress.timestamp))
                .bind(column(&winners, |d| d.received_at))
                .bind(column(&winners, |d| d.body.as_str()))
                .fetch_all(&mut *tx)
                .await?;
            let applied = plan.applied(&applied);
            if !applied.is_empty() {
                // Delivered to listeners only when the transaction commits, so a woken waiter
                // always finds the new state.
                sqlx::query(MARK_APPLIED_AND_NOTIFY)
                    .bind(column(&applied, |d| d.webhook_id.as_str()))
                    .bind(CHANGES_CHANNEL)
                    .bind(column(&applied, |d| d.prediction.id.as_str()))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(plan.outcomes())
    }

    fn concurrent_writes(&self) -> usize {
        self.concurrent_writes
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

/// One array per column: `UNNEST` turns them back into rows.
fn column<'a, T>(deliveries: &[&'a NewDelivery], field: impl Fn(&'a NewDelivery) -> T) -> Vec<T> {
    deliveries.iter().map(|d| field(d)).collect()
}

/// New deliveries, with `applied` false until the upsert says otherwise.
const INSERT_DELIVERIES: &str = r#"
INSERT INTO deliveries (webhook_id, prediction_id, webhook_timestamp, received_at, applied, body)
SELECT webhook_id, prediction_id, webhook_timestamp, received_at, false, body::json
FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::timestamptz[], $5::text[])
    AS d (webhook_id, prediction_id, webhook_timestamp, received_at, body)
ON CONFLICT (webhook_id) DO NOTHING
RETURNING webhook_id
"#;

/// At most one row per prediction (Postgres refuses to update one row twice in a statement).
/// Concurrent batches serialise on each prediction's row; the guard is re-checked against the
/// newest version, so none is lost and none regresses it. `created_at` is never changed once set:
/// it is the sort key.
const UPSERT_PREDICTIONS: &str = r#"
INSERT INTO predictions AS p
    (id, status, model, version, created_at,
     progress_rank, progress_logs, progress_timestamp, updated_at, body)
SELECT id, status, model, version, created_at, rank, logs, ts, updated_at, body::json
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
            $6::int2[], $7::int8[], $8::int8[], $9::timestamptz[], $10::text[])
    AS n (id, status, model, version, created_at, rank, logs, ts, updated_at, body)
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
RETURNING id
"#;

const MARK_APPLIED_AND_NOTIFY: &str = r#"
WITH marked AS (UPDATE deliveries SET applied = true WHERE webhook_id = ANY($1))
SELECT pg_notify($2, id) FROM UNNEST($3::text[]) AS id
"#;
