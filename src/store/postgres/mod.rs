//! Postgres: the production store, shared by any number of replicas. Changes are announced with
//! `NOTIFY` inside the transaction that makes them, so every process hears each commit.

mod listen;
mod plan;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::store::{
    self, ChangeFeed, ListQuery, NewDelivery, Outcome, Page, Storage, StoreError, StoredPrediction,
    keyset::{self, StatusIndex},
};
use plan::Plan;

/// How long a request waits for a pooled connection, or a batch for its connection to be opened,
/// before the database counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// A statement running longer than this is cancelled by the server.
const STATEMENT_TIMEOUT: &str = "10s";

/// The channel on which a committed change of a prediction is announced; the payload is its id.
const CHANGES_CHANNEL: &str = "prediction_inbox_changes";

/// A prediction's columns as it is read: its body is that of the delivery it points at, which
/// holds its latest state (see the migration `predictions_point_at_their_delivery`).
macro_rules! columns {
    () => {
        "id, status, created_at, \
         (SELECT d.body FROM deliveries AS d WHERE d.webhook_id = predictions.latest_delivery) \
         AS body"
    };
}

pub struct Postgres {
    pool: PgPool,
    /// The connection batches are written on, kept from one batch to the next and opened again
    /// when lost. Through the pool, each batch cost one more round trip, as sqlx pings every
    /// connection it takes back; and as the pool hands out its idle connections in turn, batches
    /// went round all of its backends. Nor do writes ever wait behind reads for a connection.
    writes: Mutex<Option<PgConnection>>,
}

impl Postgres {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?
            .application_name("prediction-inbox")
            .options([("statement_timeout", STATEMENT_TIMEOUT)]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // sqlx pings a connection when it is returned, and by default again before handing it
            // out: a round trip on every request's path, which doubled a read's time and most of
            // its tail. A connection that died idle (a restarted server) fails its first statement
            // instead, and the operation starts again on another: see `Postgres::live`.
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            writes: Mutex::new(None),
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
        // On a connection of its own, without the pool's statement timeout. A migration may
        // rewrite a whole table (30 s for a million predictions), or wait for the locks of
        // requests still running on other replicas; stopped at the timeout, it would be undone,
        // and fail again at every start.
        let dedicated = PgPoolOptions::new()
            .max_connections(1)
            .after_connect(|connection, _| {
                Box::pin(async move {
                    connection.execute("SET statement_timeout = 0").await?;
                    Ok(())
                })
            })
            .connect_with(self.pool.connect_options().as_ref().clone())
            .await?;
        // sqlx takes an advisory lock, so replicas starting together migrate once.
        let migrated = sqlx::migrate!("./migrations/postgres")
            .run(&dedicated)
            .await;
        dedicated.close().await;
        Ok(migrated?)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.live(|| sqlx::query("SELECT 1").execute(&self.pool))
            .await?;
        Ok(())
    }

    fn pool_status(&self) -> (u32, usize) {
        store::pool_status(&self.pool)
    }

    async fn count_by_status(&self) -> Result<Vec<(Option<String>, i64)>, StoreError> {
        Ok(self
            .live(|| sqlx::query_as(store::COUNT_BY_STATUS).fetch_all(&self.pool))
            .await?)
    }

    /// Records the batch on the assumption that none of it was seen before, which is nearly
    /// always true. A delivery seen before breaks the deliveries' primary key, which undoes the
    /// attempt; the next one reads which of the batch's ids are recorded and leaves them out.
    /// Only a copy committed by another batch in between can break it again.
    async fn record(
        &self,
        batch: &[NewDelivery],
        deadline: Instant,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut seen = Vec::new();
        let mut attempt = 1;
        loop {
            match self.record_new(Plan::new(batch, &seen), deadline).await {
                Err(sqlx::Error::Database(e))
                    if e.constraint() == Some(DELIVERIES_KEY) && attempt < MAX_ATTEMPTS =>
                {
                    attempt += 1;
                    let ids: Vec<&str> = batch.iter().map(|d| d.webhook_id.as_str()).collect();
                    seen = self
                        .live(|| sqlx::query_scalar(SEEN).bind(&ids).fetch_all(&self.pool))
                        .await?;
                }
                recorded => return Ok(recorded?),
            }
        }
    }

    async fn prediction(&self, id: &str) -> Result<Option<StoredPrediction>, StoreError> {
        let found = self
            .live(|| {
                sqlx::query_as(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM predictions WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(&self.pool)
            })
            .await?;
        Ok(found)
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let rows = self
            .live(|| async {
                keyset::select(query, columns!(), StatusIndex::Settled, |t| t)
                    .build_query_as()
                    .fetch_all(&self.pool)
                    .await
            })
            .await?;
        Ok(keyset::page(query, rows))
    }

    async fn changes(&self) -> Result<Box<dyn ChangeFeed>, StoreError> {
        Ok(Box::new(listen::ChangeListener::connect(&self.pool).await?))
    }

    async fn close(&self) {
        // The pool first: once it is closed, no batch opens a connection for writes again.
        self.pool.close().await;
        if let Some(connection) = self.writes.lock().await.take() {
            let _ = connection.close().await;
        }
    }
}

impl Postgres {
    /// The plan's one statement: upsert each prediction's offered delivery, insert every new
    /// delivery with `applied` as the upsert said, and announce the changes. It runs alone, in
    /// autocommit, on the connection kept for writes: a batch costs one round trip. The statement
    /// refuses to commit past `deadline` (see `RECORD`), as a batch abandoned then must leave
    /// nothing behind.
    ///
    /// A connection found dead is replaced and the statement sent again. Should the first attempt
    /// have committed after all (the connection died between its commit and the answer), the
    /// second finds every delivery recorded and answers them as duplicates — which is what a
    /// sender's own retry would be told.
    async fn record_new(
        &self,
        mut plan: Plan<'_>,
        deadline: Instant,
    ) -> Result<Vec<Outcome>, sqlx::Error> {
        let rows = plan.new_deliveries();
        if rows.is_empty() {
            return Ok(plan.outcomes());
        }
        let webhook_ids = column(&rows, |d| d.webhook_id.as_str());
        let prediction_ids = column(&rows, |d| d.prediction.id.as_str());
        let timestamps = column(&rows, |d| d.webhook_timestamp);
        let received_at = column(&rows, |d| d.received_at);
        let bodies = column(&rows, |d| d.body.as_str());
        let offered = plan.offered();
        let statuses = column(&rows, NewDelivery::status);
        let models = column(&rows, |d| d.prediction.model.as_deref());
        let versions = column(&rows, |d| d.prediction.version.as_deref());
        let created_at = column(&rows, NewDelivery::created_at);
        let ranks = column(&rows, |d| d.progress.rank);
        let logs = column(&rows, |d| d.progress.logs_len);
        let progress_timestamps = column(&rows, |d| d.progress.timestamp);
        let applied: Vec<String> = self
            .live(|| async {
                let mut kept = self.writes.lock().await;
                // Taken out while the statement runs: if the batch is abandoned at its deadline,
                // this future is dropped and the connection with it, closed. The server finishes
                // the statement alone and fails it (see `RECORD`); kept, the connection would
                // have to wait for that before the next batch could use it.
                let mut connection = match kept.take() {
                    Some(connection) => connection,
                    // Closed with the pool: a store that is shut down opens nothing more.
                    None if self.pool.is_closed() => return Err(sqlx::Error::PoolClosed),
                    None => {
                        tokio::time::timeout(ACQUIRE_TIMEOUT, self.pool.connect_options().connect())
                            .await
                            .map_err(|_| {
                                std::io::Error::new(
                                    std::io::ErrorKind::TimedOut,
                                    "opening the connection for writes timed out",
                                )
                            })??
                    }
                };
                let applied = sqlx::query_scalar(RECORD)
                    .bind(&webhook_ids)
                    .bind(&prediction_ids)
                    .bind(&timestamps)
                    .bind(&received_at)
                    .bind(&bodies)
                    .bind(&offered)
                    .bind(&statuses)
                    .bind(&models)
                    .bind(&versions)
                    .bind(&created_at)
                    .bind(&ranks)
                    .bind(&logs)
                    .bind(&progress_timestamps)
                    .bind(CHANGES_CHANNEL)
                    .bind(time_left(deadline))
                    .fetch_one(&mut connection)
                    .await;
                if still_usable(&applied) {
                    *kept = Some(connection);
                }
                applied
            })
            .await?;
        plan.applied(&applied);
        Ok(plan.outcomes())
    }

    /// Runs `operation` — something safe to send again — and, while it fails because its pooled
    /// connection had died (terminated, or the server restarted), again on another. Each dead
    /// connection is dropped as it fails, so this ends once the pool has been through its dead
    /// ones.
    async fn live<T, F, Run>(&self, operation: Run) -> Result<T, sqlx::Error>
    where
        Run: Fn() -> F,
        F: Future<Output = Result<T, sqlx::Error>>,
    {
        let mut tries = self.pool.options().get_max_connections() + 1;
        loop {
            match operation().await {
                Err(e) if tries > 1 && connection_lost(&e) => tries -= 1,
                done => return done,
            }
        }
    }
}

/// Whether an error says an established connection is gone. (A refused connection attempt is not
/// this: trying again at once would only knock again on a server that is down.)
fn connection_lost(error: &sqlx::Error) -> bool {
    use std::io::ErrorKind;
    match error {
        sqlx::Error::Io(e) => matches!(
            e.kind(),
            ErrorKind::BrokenPipe
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::UnexpectedEof
        ),
        // admin_shutdown, crash_shutdown, and class 08: connection exceptions.
        sqlx::Error::Database(e) => e
            .code()
            .is_some_and(|code| code == "57P01" || code == "57P02" || code.starts_with("08")),
        _ => false,
    }
}

/// Whether a connection may run the next statement after `outcome`: after an answer, or an error
/// the server sent in answer (it is then ready for the next); not once the connection itself has
/// failed, which a pooled connection's ping on its return used to catch.
fn still_usable<T>(outcome: &Result<T, sqlx::Error>) -> bool {
    match outcome {
        Ok(_) => true,
        Err(error @ sqlx::Error::Database(_)) => !connection_lost(error),
        Err(_) => false,
    }
}

/// The time until `deadline`, in whole microseconds: the precision of an `interval`.
fn time_left(deadline: Instant) -> Duration {
    let left = deadline.saturating_duration_since(Instant::now());
    Duration::from_micros(u64::try_from(left.as_micros()).unwrap_or(u64::MAX))
}

/// One array per column: `UNNEST` turns them back into rows.
fn column<'a, T>(deliveries: &[&'a NewDelivery], field: impl Fn(&'a NewDelivery) -> T) -> Vec<T> {
    deliveries.iter().map(|d| field(d)).collect()
}

/// The deliveries' primary key, whose violation means a batch holds a delivery seen before.
const DELIVERIES_KEY: &str = "deliveries_pkey";

/// Attempts at a batch: one on the assumption that it is all new, one without the ids then
/// recorded, and one more should another batch commit a copy of one in between.
const MAX_ATTEMPTS: usize = 3;

/// Which of the batch's `webhook-id`s are recorded.
const SEEN: &str = "SELECT webhook_id FROM deliveries WHERE webhook_id = ANY($1)";

/// A batch's new deliveries, in one statement.
///
/// It runs in this order, which every batch follows, so that overlapping batches take their locks
/// in one order and cannot deadlock:
/// 1. the upsert (`latest`), locking prediction rows in id order, and its notifications: the
///    final query's `FROM` reads all of them before anything else;
/// 2. the deliveries' insert (`recorded`), locking delivery keys in id order, with `applied` from
///    the upsert's answer: the final projection counts its rows;
/// 3. the deadline check (migrations/postgres), which takes both results as arguments. It fails
///    the statement if the batch ran past its deadline, so nothing of it commits.
///
/// At most one row per prediction is offered (Postgres refuses to update one row twice in a
/// statement). Concurrent batches serialise on each prediction's row; the guard is re-checked
/// against the newest version, so none is lost and none regresses it. `created_at` is never
/// changed once set: it is the sort key. The notifications are delivered only if the statement
/// commits, so a woken waiter always finds the new state.
const RECORD: &str = r#"
WITH d AS (
    SELECT webhook_id, prediction_id, webhook_timestamp, received_at, body,
           offered, status, model, version, created_at, rank, logs, ts
    FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::timestamptz[], $5::text[],
                $6::bool[], $7::text[], $8::text[], $9::text[], $10::timestamptz[],
                $11::int2[], $12::int8[], $13::int8[])
        AS d (webhook_id, prediction_id, webhook_timestamp, received_at, body,
              offered, status, model, version, created_at, rank, logs, ts)
), latest AS (
    INSERT INTO predictions AS p
        (id, status, model, version, created_at,
         progress_rank, progress_logs, progress_timestamp, updated_at, latest_delivery)
    SELECT prediction_id, status, model, version, created_at, rank, logs, ts, received_at, webhook_id
    FROM d WHERE offered ORDER BY prediction_id
    ON CONFLICT (id) DO UPDATE SET
        status = excluded.status,
        model = excluded.model,
        version = excluded.version,
        progress_rank = excluded.progress_rank,
        progress_logs = excluded.progress_logs,
        progress_timestamp = excluded.progress_timestamp,
        updated_at = excluded.updated_at,
        latest_delivery = excluded.latest_delivery
    WHERE (p.progress_rank, p.progress_logs, p.progress_timestamp)
        < (excluded.progress_rank, excluded.progress_logs, excluded.progress_timestamp)
    RETURNING id
), recorded AS (
    INSERT INTO deliveries
        (webhook_id, prediction_id, webhook_timestamp, received_at, applied, body)
    SELECT webhook_id, prediction_id, webhook_timestamp, received_at,
           offered AND prediction_id IN (SELECT id FROM latest), body
    FROM d ORDER BY webhook_id
    RETURNING 1
), announced AS MATERIALIZED (
    SELECT id, pg_notify($14, id) FROM latest
)
SELECT prediction_inbox_before_deadline($15, changed, (SELECT count(*) FROM recorded))
FROM (SELECT coalesce(array_agg(id), '{}') FROM announced) AS upserted (changed)
"#;
