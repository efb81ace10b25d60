//! SQLite: an embedded file for one process — the zero-setup default. Write-ahead logging lets
//! reads run beside the one writer; every commit is synced (`synchronous = FULL`), so an
//! acknowledged delivery survives a crash of the process or of the machine. Changes are announced
//! in process, which is why it suits a single replica only.

pub(super) mod archive;

use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use sqlx::SqliteConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};
use time::OffsetDateTime;
use tokio::sync::{Mutex, broadcast};
use tokio::time::Instant;

use crate::domain::{Prediction, Status, from_unix_micros, unix_micros};
use crate::store::{
    self, ACQUIRE_TIMEOUT, Change, ChangeFeed, Cutoffs, Due, HistoryQuery, ListQuery, NewDelivery,
    NextRead, Outcome, Page, Pruned, Slice, Store, StoreError, StoredDelivery, StoredPrediction,
    Walk,
    keyset::{self, StatusIndex},
};

/// How long a statement waits for a lock another process holds on the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the write-ahead log is copied into the file, off the writer's path (see
/// `copy_the_log`).
const COPY_THE_LOG_EVERY: Duration = Duration::from_millis(250);
/// The log's size, in pages, past which the writer's own commit copies it, should the copier fall
/// behind: ten times SQLite's default, which made the commit that crossed it, and every delivery
/// behind it, wait for the copy and its sync.
const WRITER_AUTOCHECKPOINT: &str = "10000";
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
    /// The task that copies the write-ahead log into the file (`copy_the_log`), and its
    /// connection.
    log_copier: tokio::task::AbortHandle,
    copier: SqlitePool,
}

impl Drop for Sqlite {
    fn drop(&mut self) {
        self.log_copier.abort();
    }
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
        let pool = |connections: u32| {
            SqlitePoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .test_before_acquire(false)
        };
        let writer = pool(1)
            .connect_with(
                options
                    .clone()
                    .pragma("wal_autocheckpoint", WRITER_AUTOCHECKPOINT),
            )
            .await?;
        let copier = pool(1).connect_with(options.clone()).await?;
        let readers = pool(readers).connect_with(options).await?;
        Ok(Self {
            path,
            writer,
            readers,
            changes: broadcast::channel(CHANGES_BACKLOG).0,
            backfilled: Mutex::new(Some(0)),
            log_copier: tokio::spawn(copy_the_log(copier.clone())).abort_handle(),
            copier,
        })
    }
}

/// Copies what the write-ahead log holds into the file every `COPY_THE_LOG_EVERY`, as far as no
/// reader still needs the file as it was (a passive checkpoint: it waits for nobody, and nobody
/// waits for it). Left to the writer, the commit that takes the log past SQLite's threshold
/// does the copy and syncs the file, with every delivery queued behind it waiting.
///
/// The writer starts the log again from its beginning only once a copy has caught up with it.
/// Commits go on during a copy, so the copier goes again at once over what they added, a much
/// shorter copy, a few times at most. Under a steady stream of commits it still seldom catches
/// up in time, and the log grows to `WRITER_AUTOCHECKPOINT` pages, where the writer's own copy
/// finds little left to do (docs/benchmarks.md, "Space and retention").
async fn copy_the_log(connection: SqlitePool) {
    const ROUNDS: usize = 4;
    let mut every = tokio::time::interval(COPY_THE_LOG_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        for _ in 0..ROUNDS {
            // Whether a checkpoint was already running, the log's pages, and those copied.
            let copied = sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&connection)
                .await;
            match copied {
                Ok((0, log, copied)) if copied < log => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(
                        %error,
                        "could not copy the write-ahead log into the database file; the writer \
                         copies it once it is large"
                    );
                    break;
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for Sqlite {
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

    async fn deliveries(&self, query: &HistoryQuery) -> Result<Vec<StoredDelivery>, StoreError> {
        let (after_at, after_id) = query.after.clone().unzip();
        // The status of a delivery recorded before the column existed is read from its body
        // here; SQLite's JSON functions take the first of duplicate keys, where the service
        // takes the last, a difference only such a body shows.
        let rows: Vec<HistoryRow> = sqlx::query_as(
            "SELECT webhook_id, webhook_timestamp, received_at, source, \
                    coalesce(status, CASE WHEN body_size IS NULL AND json_valid(body) \
                                          THEN body ->> '$.status' END) AS status, \
                    applied, coalesce(body_size, octet_length(body)) AS body_size, \
                    body_size IS NULL AS body_kept \
             FROM deliveries \
             WHERE prediction_id = $1 AND ($2 IS NULL OR (received_at, webhook_id) > ($2, $3)) \
             ORDER BY received_at, webhook_id LIMIT $4",
        )
        .bind(&query.prediction_id)
        .bind(after_at.map(unix_micros))
        .bind(after_id)
        .bind(i64::from(query.limit))
        .fetch_all(&self.readers)
        .await?;
        rows.into_iter()
            .map(HistoryRow::into_stored)
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)
    }

    async fn bodies(
        &self,
        prediction_id: &str,
        webhook_ids: &[String],
    ) -> Result<Vec<(String, String)>, StoreError> {
        let ids = json_array(webhook_ids);
        Ok(sqlx::query_as(
            "SELECT webhook_id, body FROM deliveries \
             WHERE prediction_id = $1 AND webhook_id IN (SELECT value FROM json_each($2)) \
             AND body_size IS NULL",
        )
        .bind(prediction_id)
        .bind(ids)
        .fetch_all(&self.readers)
        .await?)
    }

    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = OffsetDateTime::now_utc();
        let held: Option<Option<String>> = sqlx::query_scalar(&LEASES.take)
            .bind(name)
            .bind(holder)
            .bind(unix_micros(now + ttl))
            .bind(unix_micros(now))
            .fetch_optional(&self.writer)
            .await?;
        Ok(held.flatten().as_deref() == Some(holder))
    }

    async fn ask_for_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = OffsetDateTime::now_utc();
        sqlx::query(&LEASES.ask)
            .bind(name)
            .bind(holder)
            .bind(unix_micros(now + ttl))
            .bind(unix_micros(now))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query(&LEASES.release)
            .bind(name)
            .bind(holder)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn prune_walk(
        &self,
        walk: Walk,
        until: OffsetDateTime,
        floor: Option<OffsetDateTime>,
    ) -> Result<Slice, StoreError> {
        Ok(self.walk(walk, until, floor, None).await?.0)
    }

    async fn prunable(&self, cutoffs: &Cutoffs) -> Result<Pruned, StoreError> {
        let mut total = Pruned::default();
        for (walk, until, floor) in [
            (Walk::Deliveries, cutoffs.deliveries, None),
            (Walk::Bodies, cutoffs.bodies, cutoffs.deliveries),
        ] {
            let Some(until) = until else { continue };
            // The same walk, writing nothing, from the first delivery.
            let mut from = 0;
            loop {
                let (slice, next) = self.walk(walk, until, floor, Some(from)).await?;
                total += slice.pruned;
                if !slice.more {
                    break;
                }
                from = next;
            }
        }
        Ok(total)
    }

    async fn rewind(&self) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE background_work SET through_rowid = 0 \
             WHERE name IN ('prune_deliveries', 'prune_bodies')",
        )
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn has_pruned(&self) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(store::HAS_PRUNED)
            .fetch_one(&self.readers)
            .await?)
    }

    async fn oldest_unfinished(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        let micros: Option<i64> =
            sqlx::query_scalar("SELECT min(updated_at) FROM predictions WHERE progress_rank < 2")
                .fetch_one(&self.readers)
                .await?;
        Ok(micros
            .map(|at| micros_to_time(at, "updated_at"))
            .transpose()?)
    }

    async fn due_for_reconcile(
        &self,
        quiet_before: OffsetDateTime,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Due>, StoreError> {
        let sql = store::DUE_FOR_RECONCILE.replace("BODY", "p.body");
        let rows: Vec<DueRow> = sqlx::query_as(&sql)
            .bind(unix_micros(quiet_before))
            .bind(unix_micros(now))
            .bind(i64::from(limit))
            .bind(Status::TERMINAL_RANK)
            .fetch_all(&self.readers)
            .await?;
        Ok(rows
            .into_iter()
            .map(DueRow::into_due)
            .collect::<Result<_, _>>()?)
    }

    async fn schedule_reconcile(&self, id: &str, next: &NextRead) -> Result<(), StoreError> {
        let interval_ms = i64::try_from(next.interval.as_millis()).unwrap_or(i64::MAX);
        sqlx::query(store::SCHEDULE_RECONCILE)
            .bind(id)
            .bind(unix_micros(next.at))
            .bind(interval_ms)
            .bind(next.missing_since.map(unix_micros))
            .bind(next.missing)
            .bind(next.marked.as_deref())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        let micros: Option<i64> = sqlx::query_scalar(store::CHECKPOINT)
            .bind(name)
            .fetch_optional(&self.readers)
            .await?;
        Ok(micros
            .map(|at| micros_to_time(at, "through_at"))
            .transpose()?)
    }

    async fn set_checkpoint(&self, name: &str, at: OffsetDateTime) -> Result<(), StoreError> {
        sqlx::query(store::SET_CHECKPOINT)
            .bind(name)
            .bind(unix_micros(at))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn change_feed(&self) -> Result<Box<dyn ChangeFeed>, StoreError> {
        Ok(Box::new(InProcess(self.changes.subscribe())))
    }

    async fn close(&self) {
        self.log_copier.abort();
        self.copier.close().await;
        self.writer.close().await;
        self.readers.close().await;
    }
}

/// The leases' statements (`store::lease_statements`): in `leases`, `$3` the end of the lease
/// or ask and `$4` the time now, in Unix microseconds.
static LEASES: LazyLock<store::LeaseStatements> =
    LazyLock::new(|| store::lease_statements("leases", "$4", "$3"));

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
            (webhook_id, prediction_id, webhook_timestamp, received_at, applied, body, status, \
             source) \
         VALUES ($1, $2, $3, $4, 0, $5, $6, $7) ON CONFLICT (webhook_id) DO NOTHING",
    )
    .bind(delivery.webhook_id().as_str())
    .bind(delivery.prediction.id.as_str())
    .bind(delivery.webhook_timestamp())
    .bind(received_at)
    .bind(&delivery.body)
    .bind(delivery.status())
    .bind(delivery.source.as_str())
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

/// Whether a delivery is the one its prediction's latest state stands on (or may be: a state not
/// yet pointed at its delivery keeps all of them).
const IS_LATEST: &str = "EXISTS (SELECT 1 FROM predictions AS p \
     WHERE p.id = deliveries.prediction_id \
     AND (p.latest_delivery = deliveries.webhook_id OR p.latest_delivery IS NULL))";

/// The columns of `deliveries` that `drop_body` writes back as they were: every one but `status`,
/// `body_size` and `body`, which it sets. (A test holds this list to the table's.)
const KEPT_COLUMNS: &str =
    "webhook_id, prediction_id, webhook_timestamp, received_at, applied, source";

/// A delivery's record as `drop_body` writes it back.
#[derive(sqlx::FromRow)]
struct Record {
    webhook_id: String,
    prediction_id: String,
    webhook_timestamp: i64,
    received_at: i64,
    applied: bool,
    source: String,
    body_size: i64,
}

/// Drops the body of delivery `rowid`, whose status is `status`, unless it is gone, has no body
/// or is a latest state: the row is removed and written again without it, at the same rowid.
/// Answers whether it did. An `UPDATE` that shrinks a row leaves its page as empty
/// as the body made it — SQLite merges pages only when a row leaves one — so bodies dropped in
/// place left nine-tenths of every page they had filled unused, and the file grew by that much
/// each day (docs/benchmarks.md, "Space and retention").
async fn drop_body(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    rowid: i64,
    status: &str,
) -> Result<bool, sqlx::Error> {
    static REMOVE: LazyLock<String> = LazyLock::new(|| {
        format!(
            "DELETE FROM deliveries WHERE rowid = $1 AND body_size IS NULL AND NOT {IS_LATEST} \
             RETURNING {KEPT_COLUMNS}, octet_length(body) AS body_size"
        )
    });
    static WRITE: LazyLock<String> = LazyLock::new(|| {
        format!(
            "INSERT INTO deliveries (rowid, {KEPT_COLUMNS}, status, body_size, body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, '')"
        )
    });
    let Some(record): Option<Record> = sqlx::query_as(&REMOVE)
        .bind(rowid)
        .fetch_optional(&mut **tx)
        .await?
    else {
        return Ok(false);
    };
    sqlx::query(&WRITE)
        .bind(rowid)
        .bind(record.webhook_id)
        .bind(record.prediction_id)
        .bind(record.webhook_timestamp)
        .bind(record.received_at)
        .bind(record.applied)
        .bind(record.source)
        .bind(status)
        .bind(record.body_size)
        .execute(&mut **tx)
        .await?;
    Ok(true)
}

#[derive(sqlx::FromRow)]
struct WalkRow {
    rowid: i64,
    received_at: i64,
    status: Option<String>,
    kept: bool,
    latest: bool,
    /// Read only when the status must come from it.
    body: Option<String>,
}

impl Sqlite {
    /// One slice of `walk`: the next `PRUNE_SLICE` deliveries after its place (`from`: a dry run
    /// from there, which writes nothing), up to the first that arrived at `until` or later (or,
    /// for the records, the newest); in the bodies' walk, skipping those that arrived before
    /// `floor` (the records' walk removes them). Answers the slice and the rowid it got to.
    ///
    /// The slice is read and chosen beside the writer, and only what it chose is written through
    /// it, in one short transaction: deliveries wait behind the writing alone (docs/benchmarks.md,
    /// "Space and retention"). The writing checks each row again, so a row that became a latest
    /// state, or lost its body, in between is left alone.
    async fn walk(
        &self,
        walk: Walk,
        until: OffsetDateTime,
        floor: Option<OffsetDateTime>,
        from: Option<i64>,
    ) -> Result<(Slice, i64), StoreError> {
        let (until, floor) = (unix_micros(until), floor.map(unix_micros));
        // One snapshot for the place, the rows and the newest.
        let mut read = self.readers.begin().await?;
        let after = match from {
            Some(from) => from,
            None => sqlx::query_scalar("SELECT through_rowid FROM background_work WHERE name = $1")
                .bind(walk.name())
                .fetch_optional(&mut *read)
                .await?
                .unwrap_or(0),
        };
        let rows: Vec<WalkRow> = sqlx::query_as(&format!(
            "SELECT rowid, received_at, status, body_size IS NULL AS kept, {IS_LATEST} AS latest, \
                    CASE WHEN $2 AND status IS NULL AND body_size IS NULL THEN body END AS body \
             FROM deliveries WHERE rowid > $1 ORDER BY rowid LIMIT $3"
        ))
        .bind(after)
        .bind(matches!(walk, Walk::Bodies))
        .bind(store::PRUNE_SLICE)
        .fetch_all(&mut *read)
        .await?;
        // The newest delivery is never removed, nor passed by the records' walk: SQLite gives a new
        // row the rowid after the greatest, so with the greatest gone, the next delivery would
        // get a rowid the walk has passed already, and never be visited. (A newer one may come
        // before the writing; the rows chosen stay below it all the same.)
        let newest: i64 = sqlx::query_scalar("SELECT coalesce(max(rowid), 0) FROM deliveries")
            .fetch_one(&mut *read)
            .await?;
        drop(read);
        // What the slice chose: records to remove, or bodies to drop with their deliveries' status.
        let (mut removals, mut drops) = (Vec::new(), Vec::new());
        let mut place = after;
        let mut more = rows.len() as i64 == store::PRUNE_SLICE;
        for row in rows {
            let last = matches!(walk, Walk::Deliveries) && row.rowid >= newest;
            if row.received_at >= until || last {
                more = false;
                break;
            }
            place = row.rowid;
            if row.latest || floor.is_some_and(|floor| row.received_at < floor) {
                continue;
            }
            match walk {
                Walk::Deliveries => removals.push(row.rowid),
                Walk::Bodies => {
                    let status = row.status.or_else(|| {
                        let body = row.body.as_deref()?;
                        Some(Prediction::parse(body).ok()?.status?.as_str().to_owned())
                    });
                    if let Some(status) = status.filter(|s| !Status::parse(s).is_terminal())
                        && row.kept
                    {
                        drops.push((row.rowid, status));
                    }
                }
            }
        }
        if from.is_some() {
            let pruned = Pruned {
                deliveries: removals.len() as u64,
                bodies: drops.len() as u64,
            };
            return Ok((Slice { pruned, more }, place));
        }
        // Takes the write lock at once, waiting its turn behind another writer (the service, when
        // `prune` runs beside it).
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let mut pruned = Pruned::default();
        if !removals.is_empty() {
            // One statement for the slice: a statement is a hop to the connection's thread and
            // back, and the writer is held for every one.
            pruned.deliveries = sqlx::query(&format!(
                "DELETE FROM deliveries \
                 WHERE rowid IN (SELECT value FROM json_each($1)) AND NOT {IS_LATEST}"
            ))
            .bind(json_array(&removals))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        for (rowid, status) in drops {
            if drop_body(&mut tx, rowid, &status).await? {
                pruned.bodies += 1;
            }
        }
        sqlx::query(
            "INSERT INTO background_work (name, through_rowid) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET through_rowid = $2",
        )
        .bind(walk.name())
        .bind(place)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((Slice { pruned, more }, place))
    }

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
struct HistoryRow {
    webhook_id: String,
    webhook_timestamp: i64,
    received_at: i64,
    source: String,
    status: Option<String>,
    applied: bool,
    body_size: Option<i64>,
    body_kept: bool,
}

impl HistoryRow {
    fn into_stored(self) -> Result<StoredDelivery, sqlx::Error> {
        Ok(StoredDelivery {
            webhook_id: self.webhook_id,
            webhook_timestamp: self.webhook_timestamp,
            received_at: micros_to_time(self.received_at, "received_at")?,
            source: self.source,
            status: self.status,
            applied: self.applied,
            body_size: self.body_size.unwrap_or(0),
            body_kept: self.body_kept,
        })
    }
}

/// A list as one JSON array, which a statement takes apart with `json_each`: SQLite has no arrays.
fn json_array(items: &[impl serde::Serialize]) -> String {
    // A slice of strings always serialises.
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

/// A stored Unix-microseconds column as a time.
fn micros_to_time(micros: i64, column: &str) -> Result<OffsetDateTime, sqlx::Error> {
    from_unix_micros(micros)
        .ok_or_else(|| sqlx::Error::Decode(format!("{column} {micros} is out of range").into()))
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
        let created_at = micros_to_time(self.created_at, "created_at")?;
        Ok(StoredPrediction {
            id: self.id,
            status: self.status,
            created_at,
            body: self.body,
        })
    }
}

/// A row of `DUE_FOR_RECONCILE`, times in Unix microseconds.
#[derive(sqlx::FromRow)]
struct DueRow {
    id: String,
    status: Option<String>,
    created_at: i64,
    body: String,
    next_at: Option<i64>,
    interval_ms: Option<i64>,
    missing_since: Option<i64>,
    missing: Option<i32>,
}

impl DueRow {
    fn into_due(self) -> Result<Due, sqlx::Error> {
        let last = match (self.next_at, self.interval_ms) {
            (Some(at), Some(interval_ms)) => Some(NextRead {
                at: micros_to_time(at, "next_at")?,
                interval: Duration::from_millis(interval_ms.unsigned_abs()),
                missing_since: self
                    .missing_since
                    .map(|at| micros_to_time(at, "missing_since"))
                    .transpose()?,
                missing: self.missing.unwrap_or(0),
                marked: None,
            }),
            _ => None,
        };
        let prediction = Row {
            id: self.id,
            status: self.status,
            created_at: self.created_at,
            body: self.body,
        }
        .into_stored()?;
        Ok(Due { prediction, last })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `drop_body` writes back every column but the three it sets: a column added to
    /// `deliveries` must join `KEPT_COLUMNS`, or each dropped body would lose it.
    #[tokio::test]
    async fn dropping_a_body_writes_back_every_other_column() {
        let folder = std::env::temp_dir().join(format!("inbox-kept-{}", std::process::id()));
        let store = Sqlite::open(&format!("sqlite://{}/inbox.db", folder.display()), 1)
            .await
            .expect("open");
        store.migrate().await.expect("migrate");
        let mut columns: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info('deliveries')")
                .fetch_all(&store.readers)
                .await
                .expect("columns");
        columns.sort();
        let mut written: Vec<String> = KEPT_COLUMNS
            .split(", ")
            .chain(["status", "body_size", "body"])
            .map(str::to_owned)
            .collect();
        written.sort();
        store.close().await;
        let _ = std::fs::remove_dir_all(&folder);
        assert_eq!(columns, written);
    }
}
