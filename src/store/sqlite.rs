//! SQLite: an embedded file for one process — the zero-setup default. Write-ahead logging lets
//! reads run beside the one writer; every commit is synced (`synchronous = FULL`), so an
//! acknowledged delivery survives a crash of the process or of the machine. Changes are announced
//! in process, which is why it suits a single replica only.

use std::str::FromStr;
use std::time::Duration;

use sqlx::SqliteConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};
use tokio::sync::{Mutex, broadcast};
use tokio::time::Instant;

use crate::domain::{Prediction, Status, from_unix_micros, unix_micros};
use crate::store::{
    self, ACQUIRE_TIMEOUT, Change, ChangeFeed, ListQuery, NewDelivery, Outcome, Page, Storage,
    StoreError, StoredPrediction,
    keyset::{self, StatusIndex},
};

/// How long a statement waits for a lock another process holds on the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Changes a slow listener may fall behind by before it is told it missed some.
const CHANGES_BACKLOG: usize = 4096;

pub struct Sqlite {
    path: String,
    /// One connection: SQLite has one writer at a time, and queueing for the pool is fairer and
    /// quicker than spinning on the file lock.
    writer: SqlitePool,
    readers: SqlitePool,
    changes: broadcast::Sender<Change>,
    /// The last rowid of `predictions` the backfill has been through; `None` once it is done.
    backfilled: Mutex<Option<i64>>,
}

impl Sqlite {
    /// Opens (creating the file and its folder if need be) the database `url` names.
    pub async fn open(url: &str, readers: u32) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT);
        let file = options.get_filename();
        if let Some(folder) = file.parent().filter(|f| !f.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder).map_err(|source| StoreError::Folder {
                path: folder.display().to_string(),
                source,
            })?;
        }
        let path = file.display().to_string();
        // A file does not hang up: no ping (a hop to the connection's thread and back) before
        // each use.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(readers)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        Ok(Self {
            path,
            writer,
            readers,
            changes: broadcast::channel(CHANGES_BACKLOG).0,
            backfilled: Mutex::new(Some(0)),
        })
    }
}

#[async_trait::async_trait]
impl Storage for Sqlite {
    fn describe(&self) -> String {
        format!("sqlite at {}", self.path)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.writer)
            .await?;
        self.measure_predictions_in_flight().await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }

    fn pool_status(&self) -> (u32, usize) {
        let (writer, readers) = (
            store::pool_status(&self.writer),
            store::pool_status(&self.readers),
        );
        (writer.0 + readers.0, writer.1 + readers.1)
    }

    async fn count_by_status(&self) -> Result<Vec<(Option<String>, i64)>, StoreError> {
        Ok(sqlx::query_as(store::COUNT_BY_STATUS)
            .fetch_all(&self.readers)
            .await?)
    }

    /// One transaction; inside it, each delivery in turn, exactly as if alone. Statements on an
    /// embedded database cost no round trip, so batching here only shares the commit's sync. The
    /// transaction is explicit, so `deadline` needs no check here: one dropped uncommitted rolls
    /// back.
    async fn record(
        &self,
        batch: &[NewDelivery],
        _deadline: Instant,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for delivery in batch {
            let outcome = record_one(&mut tx, delivery).await.map_err(|error| {
                if refused_for_the_data(&error) {
                    StoreError::Refused(error)
                } else {
                    error.into()
                }
            })?;
            outcomes.push(outcome);
        }
        tx.commit().await?;
        for (delivery, outcome) in batch.iter().zip(&outcomes) {
            if *outcome == Outcome::Applied {
                // Nobody listening is not an error.
                let _ = self.changes.send(Change {
                    id: delivery.prediction.id.as_str().to_owned(),
                    terminal: delivery.progress.is_terminal(),
                });
            }
        }
        Ok(outcomes)
    }

    /// A thousand rows at a time, by rowid, through the one writer. The predictions in flight had
    /// theirs measured at start; a terminal state's output counts as 0.
    async fn backfill(&self) -> Result<bool, StoreError> {
        let mut cursor = self.backfilled.lock().await;
        let Some(after) = *cursor else {
            return Ok(false);
        };
        let mut tx = self.writer.begin().await?;
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT max(rowid) FROM \
             (SELECT rowid FROM predictions WHERE rowid > $1 ORDER BY rowid LIMIT 1000)",
        )
        .bind(after)
        .fetch_one(&mut *tx)
        .await?;
        if let Some(last) = last {
            sqlx::query(&format!(
                "UPDATE predictions SET progress_output = coalesce(progress_output, 0), \
                 latest_delivery = coalesce(latest_delivery, {LATEST_APPLIED}) \
                 WHERE rowid > $1 AND rowid <= $2 \
                 AND (progress_output IS NULL OR latest_delivery IS NULL)"
            ))
            .bind(after)
            .bind(last)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        *cursor = last;
        Ok(last.is_some())
    }

    async fn prediction(&self, id: &str) -> Result<Option<StoredPrediction>, StoreError> {
        let row: Option<Row> =
            sqlx::query_as("SELECT id, status, created_at, body FROM predictions WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.readers)
                .await?;
        Ok(row.map(Row::into_stored).transpose()?)
    }

    async fn finished(&self, id: &str) -> Result<Option<bool>, StoreError> {
        Ok(sqlx::query_scalar(store::FINISHED)
            .bind(id)
            .bind(Status::TERMINAL_RANK)
            .fetch_optional(&self.readers)
            .await?)
    }

    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let rows: Vec<Row> = keyset::select(
            query,
            "id, status, created_at, body",
            StatusIndex::Status,
            unix_micros,
        )
        .build_query_as()
        .fetch_all(&self.readers)
        .await?;
        let rows = rows
            .into_iter()
            .map(Row::into_stored)
            .collect::<Result<_, _>>()?;
        Ok(keyset::page(query, rows))
    }

    async fn change_feed(&self) -> Result<Box<dyn ChangeFeed>, StoreError> {
        Ok(Box::new(InProcess(self.changes.subscribe())))
    }

    async fn close(&self) {
        self.writer.close().await;
        self.readers.close().await;
    }
}

/// Records the delivery unless its `webhook-id` was recorded before, then advances its
/// prediction's state if its progress is greater.
async fn record_one(
    tx: &mut SqliteConnection,
    delivery: &NewDelivery,
) -> Result<Outcome, sqlx::Error> {
    let received_at = unix_micros(delivery.received_at);
    let changed = |done: SqliteQueryResult| done.rows_affected() == 1;
    let new = sqlx::query(
        "INSERT INTO deliveries \
            (webhook_id, prediction_id, webhook_timestamp, received_at, applied, body) \
         VALUES ($1, $2, $3, $4, 0, $5) ON CONFLICT (webhook_id) DO NOTHING",
    )
    .bind(delivery.webhook_id().as_str())
    .bind(delivery.prediction.id.as_str())
    .bind(delivery.webhook_timestamp())
    .bind(received_at)
    .bind(&delivery.body)
    .execute(&mut *tx)
    .await
    .map(changed)?;
    if !new {
        return Ok(Outcome::Duplicate);
    }
    let applied = sqlx::query(UPSERT)
        .bind(delivery.prediction.id.as_str())
        .bind(delivery.status())
        .bind(delivery.model())
        .bind(delivery.version())
        .bind(unix_micros(delivery.created_at()))
        .bind(delivery.progress.rank)
        .bind(delivery.progress.logs_len)
        .bind(delivery.progress.output_len)
        .bind(delivery.progress.timestamp)
        .bind(delivery.webhook_id().as_str())
        .bind(received_at)
        .bind(&delivery.body)
        .execute(&mut *tx)
        .await
        .map(changed)?;
    if !applied {
        return Ok(Outcome::Ignored);
    }
    sqlx::query("UPDATE deliveries SET applied = 1 WHERE webhook_id = $1")
        .bind(delivery.webhook_id().as_str())
        .execute(&mut *tx)
        .await?;
    Ok(Outcome::Applied)
}

/// Replaces the stored state only when the delivery's progress key is greater; changes nothing
/// (and counts no change) otherwise. `created_at` is never changed once set: it is the sort key.
/// A key column still NULL (stored before it existed, see `backfill`) belongs to a terminal state,
/// whose output counts as 0; its webhook id as the least.
const UPSERT: &str = r#"
INSERT INTO predictions
    (id, status, model, version, created_at, progress_rank, progress_logs, progress_output,
     progress_timestamp, latest_delivery, updated_at, body)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (id) DO UPDATE SET
    status = excluded.status,
    model = excluded.model,
    version = excluded.version,
    progress_rank = excluded.progress_rank,
    progress_logs = excluded.progress_logs,
    progress_output = excluded.progress_output,
    progress_timestamp = excluded.progress_timestamp,
    latest_delivery = excluded.latest_delivery,
    updated_at = excluded.updated_at,
    body = excluded.body
WHERE (predictions.progress_rank, predictions.progress_logs,
       coalesce(predictions.progress_output, 0), predictions.progress_timestamp,
       coalesce(predictions.latest_delivery, ''))
    < (excluded.progress_rank, excluded.progress_logs, excluded.progress_output,
       excluded.progress_timestamp, excluded.latest_delivery)
"#;

/// The delivery a prediction's stored state stands on: its last applied one.
const LATEST_APPLIED: &str = "(SELECT d.webhook_id FROM deliveries AS d \
     WHERE d.prediction_id = predictions.id AND d.applied = 1 \
     ORDER BY d.received_at DESC, d.webhook_id DESC LIMIT 1)";

impl Sqlite {
    /// Fills in the order's newer columns for the predictions still in flight, measuring each
    /// stored body's output: they are few, and their next delivery compares with them. (A
    /// terminal state's output counts as 0, so the rest can wait for `backfill`.)
    async fn measure_predictions_in_flight(&self) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, body FROM predictions \
             WHERE progress_output IS NULL AND progress_rank < 2",
        )
        .fetch_all(&mut *tx)
        .await?;
        for (id, body) in rows {
            let output_len = Prediction::parse(&body).map_or(0, |p| p.output_len);
            sqlx::query(&format!(
                "UPDATE predictions SET progress_output = $1, latest_delivery = {LATEST_APPLIED} \
                 WHERE id = $2"
            ))
            .bind(i64::try_from(output_len).unwrap_or(i64::MAX))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Whether SQLite refused a statement for the values it was given (the primary result codes
/// `SQLITE_TOOBIG`, `SQLITE_CONSTRAINT`, `SQLITE_MISMATCH`, `SQLITE_RANGE`) rather than for the
/// state of the file or its locks.
fn refused_for_the_data(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(e) = error else {
        return false;
    };
    e.code()
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 18 | 19 | 20 | 25))
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    status: Option<String>,
    created_at: i64,
    body: String,
}

impl Row {
    fn into_stored(self) -> Result<StoredPrediction, sqlx::Error> {
        let created_at = from_unix_micros(self.created_at).ok_or_else(|| {
            sqlx::Error::Decode(format!("created_at {} is out of range", self.created_at).into())
        })?;
        Ok(StoredPrediction {
            id: self.id,
            status: self.status,
            created_at,
            body: self.body,
        })
    }
}

/// Changes committed by this process, as it commits them.
struct InProcess(broadcast::Receiver<Change>);

#[async_trait::async_trait]
impl ChangeFeed for InProcess {
    async fn next(&mut self) -> Result<Option<Change>, StoreError> {
        match self.0.recv().await {
            Ok(id) => Ok(Some(id)),
            Err(broadcast::error::RecvError::Lagged(_)) => Ok(None),
            // The sender lives in the store, and the store outlives every listener of it.
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}
