//! Postgres: the production store, shared by any number of replicas. Changes are announced with
//! `NOTIFY` inside the transaction that makes them, so every process hears each commit.

pub(super) mod archive;
mod listen;
pub(super) mod plan;

use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor};
use time::OffsetDateTime;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::domain::Status;
use crate::store::{
    self, ACQUIRE_TIMEOUT, ChangeFeed, Cutoffs, Due, HistoryQuery, ListQuery, NewDelivery,
    NextRead, Outcome, Page, Pruned, Slice, Store, StoreError, StoredDelivery, StoredPrediction,
    Walk,
    keyset::{self, StatusIndex},
};
use plan::Plan;

/// A statement running longer than this is cancelled by the server.
const STATEMENT_TIMEOUT: &str = "10s";
/// The same for a batch. Its deadline is what bounds it (see `RECORD`), and a batch of large
/// bodies on a busy server may rightly take longer than a read; this only stops a statement that
/// the server would otherwise go on running long after its writer gave up on it.
const WRITE_STATEMENT_TIMEOUT: &str = "5min";
/// Memory the batch statement may use for each of its steps before it spills to temporary files.
/// Its bodies pass through three of them (the batch's rows, their comparison with the stored
/// states, the insert's sort by key): at the default 4 MB, batches of 64 KiB bodies wrote 4 GB of
/// temporary files in one run of the waiters benchmark. This covers the largest batch
/// (`ingest::MAX_BATCH_BYTES`, 64 MiB) in each; a batch of ordinary deliveries uses a few
/// hundred KiB.
const WRITE_WORK_MEM: &str = "256MB";
/// The settings of the connection kept for writes, which runs only `RECORD`.
///
/// `enable_seqscan` is off so that the statement's plan does not depend on how many predictions
/// there were when it was first prepared. After five runs the server keeps one generic plan for
/// the connection's life; made while `predictions` held a few pages, that plan found the batch's
/// predictions by reading the whole table (cheapest then), and kept doing so as it grew: a fresh
/// database under load wrote 6,197 deliveries a second instead of 12,095, every batch reading
/// all of `predictions`, until autovacuum's first `ANALYZE` made the server plan again. With it
/// off, each prediction is found through its key from the first batch on; nothing in the
/// statement is better read whole.
pub(crate) const WRITER_SETTINGS: [(&str, &str); 3] = [
    ("statement_timeout", WRITE_STATEMENT_TIMEOUT),
    ("work_mem", WRITE_WORK_MEM),
    ("enable_seqscan", "off"),
];
/// After a batch whose bodies came to more than this, the writer's connection lets go of the
/// buffer it grew to send them: kept, it stayed at the size of the largest batch ever sent (4 MiB
/// after deliveries of 64 KiB, up to the batch bound). An ordinary batch stays well below it.
const SHRINK_AFTER_BYTES: usize = 1024 * 1024;

/// The channel on which a committed change of a prediction is announced; the payload is `t`
/// (terminal) or `p`, then its id (see `store::Change`).
const CHANGES_CHANNEL: &str = "prediction_inbox_state";
/// Where replicas of versions before 2026-12 announce changes, the payload the id alone: heard
/// during a rolling upgrade, as changes that may be terminal.
const LEGACY_CHANGES_CHANNEL: &str = "prediction_inbox_changes";

/// A prediction's columns as it is read: its body is that of the delivery it points at, which
/// holds its latest state (see the migration `predictions_point_at_their_delivery`).
macro_rules! columns {
    () => {
        "id, status, created_at, \
         (SELECT d.body FROM deliveries AS d WHERE d.webhook_id = predictions.latest_delivery) \
         AS body"
    };
}

/// The byte length of `output` in a prediction's stored state, as the latest-state order counts
/// it: measured from its body for a row stored before the column existed (NULL; see the
/// migration `one_total_order`), 0 once terminal.
macro_rules! stored_output {
    ($row:literal) => {
        concat!(
            "coalesce(",
            $row,
            ".progress_output, CASE WHEN ",
            $row,
            ".progress_rank = 2 THEN 0 ELSE \
             (SELECT coalesce(octet_length((s.body::json -> 'output')::text), 0) \
              FROM deliveries AS s WHERE s.webhook_id = ",
            $row,
            ".latest_delivery) END)"
        )
    };
}

pub struct Postgres {
    pool: PgPool,
    /// The connection batches are written on, kept from one batch to the next and opened again
    /// when lost. Through the pool, each batch cost one more round trip, as sqlx pings every
    /// connection it takes back; and as the pool hands out its idle connections in turn, batches
    /// went round all of its backends. Nor do writes ever wait behind reads for a connection.
    writes: Mutex<Option<PgConnection>>,
    /// The last id of `predictions` the backfill has been through; `None` once it is done.
    backfilled: Mutex<Option<String>>,
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
            // Every id is greater than the empty string.
            backfilled: Mutex::new(Some(String::new())),
        })
    }
}

#[async_trait::async_trait]
impl Store for Postgres {
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

    async fn oldest_unfinished(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        // In flight is `settled = ''`, a range of its index (see `due_for_reconcile`).
        Ok(self
            .live(|| {
                sqlx::query_scalar("SELECT min(updated_at) FROM predictions WHERE settled = ''")
                    .fetch_one(&self.pool)
            })
            .await?)
    }

    /// Records the batch on the assumption that none of it was seen before, which is nearly
    /// always true. A delivery seen before breaks the deliveries' primary key, which undoes the
    /// attempt; the next one reads which of the batch's ids are recorded and leaves them out.
    /// Only a copy committed by another batch in between can break it again. A prediction the
    /// batch meant to create, created by another batch in between, undoes the attempt too (see
    /// `RECORD`); the next attempt finds it.
    async fn record(
        &self,
        batch: &[NewDelivery],
        deadline: Instant,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut seen = Vec::new();
        let mut attempt = 1;
        loop {
            match self.record_new(Plan::new(batch, &seen), deadline).await {
                Err(sqlx::Error::Database(e)) if attempt < MAX_ATTEMPTS => {
                    if e.constraint() == Some(DELIVERIES_KEY) {
                        let ids: Vec<&str> =
                            batch.iter().map(|d| d.webhook_id().as_str()).collect();
                        seen = self
                            .live(|| sqlx::query_scalar(SEEN).bind(&ids).fetch_all(&self.pool))
                            .await?;
                    } else if e.code().as_deref() != Some(SERIALIZATION_FAILURE) {
                        return Err(sqlx::Error::Database(e).into());
                    }
                    attempt += 1;
                }
                recorded => {
                    return recorded.map_err(|error| {
                        if refused_for_the_data(&error) {
                            StoreError::Refused(error)
                        } else {
                            error.into()
                        }
                    });
                }
            }
        }
    }

    async fn backfill(&self) -> Result<bool, StoreError> {
        let mut cursor = self.backfilled.lock().await;
        let Some(after) = cursor.clone() else {
            return Ok(false);
        };
        let last: Option<String> = self
            .live(|| {
                sqlx::query_scalar(BACKFILL)
                    .bind(&after)
                    .fetch_one(&self.pool)
            })
            .await?;
        let more = last.is_some();
        *cursor = last;
        Ok(more)
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

    async fn finished(&self, id: &str) -> Result<Option<bool>, StoreError> {
        let found = self
            .live(|| {
                sqlx::query_scalar(store::FINISHED)
                    .bind(id)
                    .bind(Status::TERMINAL_RANK)
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

    async fn deliveries(&self, query: &HistoryQuery) -> Result<Vec<StoredDelivery>, StoreError> {
        let (after_at, after_id) = query.after.clone().unzip();
        let rows: Vec<HistoryRow> = self
            .live(|| {
                sqlx::query_as(HISTORY)
                    .bind(&query.prediction_id)
                    .bind(after_at)
                    .bind(&after_id)
                    .bind(i64::from(query.limit))
                    .fetch_all(&self.pool)
            })
            .await?;
        Ok(rows.into_iter().map(HistoryRow::into_stored).collect())
    }

    async fn bodies(
        &self,
        prediction_id: &str,
        webhook_ids: &[String],
    ) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .live(|| {
                sqlx::query_as(
                    "SELECT webhook_id, body FROM deliveries \
                     WHERE prediction_id = $1 AND webhook_id = ANY($2) AND body_size IS NULL",
                )
                .bind(prediction_id)
                .bind(webhook_ids)
                .fetch_all(&self.pool)
            })
            .await?)
    }

    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let held: Option<Option<String>> = self
            .live(|| {
                sqlx::query_scalar(&LEASES.take)
                    .bind(name)
                    .bind(holder)
                    .bind(ttl)
                    .fetch_optional(&self.pool)
            })
            .await?;
        Ok(held.flatten().as_deref() == Some(holder))
    }

    async fn ask_for_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.live(|| {
            sqlx::query(&LEASES.ask)
                .bind(name)
                .bind(holder)
                .bind(ttl)
                .execute(&self.pool)
        })
        .await?;
        Ok(())
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.live(|| {
            sqlx::query(&LEASES.release)
                .bind(name)
                .bind(holder)
                .execute(&self.pool)
        })
        .await?;
        Ok(())
    }

    async fn prune_walk(
        &self,
        walk: Walk,
        until: OffsetDateTime,
        floor: Option<OffsetDateTime>,
    ) -> Result<Slice, StoreError> {
        self.walk(walk, until, floor).await
    }

    async fn prunable(&self, cutoffs: &Cutoffs) -> Result<Pruned, StoreError> {
        let (deliveries, bodies): (i64, i64) = self
            .live(|| {
                sqlx::query_as(PRUNABLE)
                    .bind(cutoffs.deliveries)
                    .bind(cutoffs.bodies)
                    .bind(Status::terminal_names())
                    .fetch_one(&self.pool)
            })
            .await?;
        Ok(Pruned {
            deliveries: deliveries.unsigned_abs(),
            bodies: bodies.unsigned_abs(),
        })
    }

    async fn rewind(&self) -> Result<(), StoreError> {
        self.live(|| {
            sqlx::query(
                "UPDATE background_work SET through_at = NULL, through_id = NULL \
                 WHERE name IN ('prune_deliveries', 'prune_bodies')",
            )
            .execute(&self.pool)
        })
        .await?;
        Ok(())
    }

    async fn has_pruned(&self) -> Result<bool, StoreError> {
        Ok(self
            .live(|| sqlx::query_scalar(store::HAS_PRUNED).fetch_one(&self.pool))
            .await?)
    }

    async fn due_for_reconcile(
        &self,
        quiet_before: OffsetDateTime,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Due>, StoreError> {
        static DUE: LazyLock<String> = LazyLock::new(|| {
            store::DUE_FOR_RECONCILE.replace(
                "BODY",
                "(SELECT d.body FROM deliveries AS d WHERE d.webhook_id = p.latest_delivery)",
            )
        });
        let rows: Vec<DueRow> = self
            .live(|| {
                sqlx::query_as(&DUE)
                    .bind(quiet_before)
                    .bind(now)
                    .bind(i64::from(limit))
                    .bind(Status::TERMINAL_RANK)
                    .fetch_all(&self.pool)
            })
            .await?;
        Ok(rows.into_iter().map(DueRow::into_due).collect())
    }

    async fn schedule_reconcile(&self, id: &str, next: &NextRead) -> Result<(), StoreError> {
        let interval_ms = i64::try_from(next.interval.as_millis()).unwrap_or(i64::MAX);
        self.live(|| {
            sqlx::query(store::SCHEDULE_RECONCILE)
                .bind(id)
                .bind(next.at)
                .bind(interval_ms)
                .bind(next.missing_since)
                .bind(next.missing)
                .bind(next.marked.as_deref())
                .execute(&self.pool)
        })
        .await?;
        Ok(())
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        Ok(self
            .live(|| {
                sqlx::query_scalar(store::CHECKPOINT)
                    .bind(name)
                    .fetch_optional(&self.pool)
            })
            .await?)
    }

    async fn set_checkpoint(&self, name: &str, at: OffsetDateTime) -> Result<(), StoreError> {
        self.live(|| {
            sqlx::query(store::SET_CHECKPOINT)
                .bind(name)
                .bind(at)
                .execute(&self.pool)
        })
        .await?;
        Ok(())
    }

    async fn change_feed(&self) -> Result<Box<dyn ChangeFeed>, StoreError> {
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

/// A row of `DUE_FOR_RECONCILE`.
#[derive(sqlx::FromRow)]
struct DueRow {
    id: String,
    status: Option<String>,
    created_at: OffsetDateTime,
    body: Option<String>,
    next_at: Option<OffsetDateTime>,
    interval_ms: Option<i64>,
    missing_since: Option<OffsetDateTime>,
    missing: Option<i32>,
}

impl DueRow {
    fn into_due(self) -> Due {
        let last = match (self.next_at, self.interval_ms) {
            (Some(at), Some(interval_ms)) => Some(NextRead {
                at,
                interval: Duration::from_millis(interval_ms.unsigned_abs()),
                missing_since: self.missing_since,
                missing: self.missing.unwrap_or(0),
                marked: None,
            }),
            _ => None,
        };
        Due {
            prediction: StoredPrediction {
                id: self.id,
                status: self.status,
                created_at: self.created_at,
                body: self.body.unwrap_or_default(),
            },
            last,
        }
    }
}

impl Postgres {
    /// One slice of `walk`: the deliveries from where it has got to (or `floor`, if later) up to
    /// `until`, at most `PRUNE_SLICE` of them, in one transaction with its new place.
    async fn walk(
        &self,
        walk: Walk,
        until: OffsetDateTime,
        floor: Option<OffsetDateTime>,
    ) -> Result<Slice, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Once the walk has a place, another runner's slice of it (`prune` beside `serve`)
        // waits here until this one has committed the next.
        let place: Option<(Option<OffsetDateTime>, Option<String>)> = sqlx::query_as(
            "SELECT through_at, through_id FROM background_work WHERE name = $1 FOR UPDATE",
        )
        .bind(walk.name())
        .fetch_optional(&mut *tx)
        .await?;
        let (mut at, mut id) = match place {
            Some((Some(at), id)) => (at, id.unwrap_or_default()),
            // The first walk starts at the oldest delivery: one pass over the table, once.
            _ => {
                let oldest: Option<OffsetDateTime> =
                    sqlx::query_scalar("SELECT min(received_at) FROM deliveries")
                        .fetch_one(&mut *tx)
                        .await?;
                (oldest.unwrap_or(until), String::new())
            }
        };
        if let Some(floor) = floor.filter(|floor| *floor > at) {
            (at, id) = (floor, String::new());
        }
        if at >= until {
            return Ok(Slice::default());
        }
        let statement = match walk {
            Walk::Deliveries => PRUNE_DELIVERIES,
            Walk::Bodies => PRUNE_BODIES,
        };
        let mut statement = sqlx::query_as(statement)
            .bind(at)
            .bind(&id)
            .bind(until)
            .bind(store::PRUNE_SLICE);
        if let Walk::Bodies = walk {
            statement = statement.bind(Status::terminal_names());
        }
        let (seen, removed, last_at, last_id): (i64, i64, Option<OffsetDateTime>, Option<String>) =
            statement.fetch_one(&mut *tx).await?;
        let (next_at, next_id, more) = match (last_at, last_id) {
            (Some(last_at), Some(last_id)) if seen >= store::PRUNE_SLICE => {
                (last_at, last_id, true)
            }
            // Everything before `until` is done. (A delivery still committing with a time the
            // walk has passed is found when the walk next starts from the oldest,
            // `Store::rewind`; only a clock ahead of time, `prune --now`, passes such times at
            // all: the shipped retention looks an hour back at least.)
            _ => (until, String::new(), false),
        };
        sqlx::query(
            "INSERT INTO background_work (name, through_at, through_id) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET through_at = $2, through_id = $3",
        )
        .bind(walk.name())
        .bind(next_at)
        .bind(&next_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let removed = removed.unsigned_abs();
        Ok(Slice {
            pruned: match walk {
                Walk::Deliveries => Pruned {
                    deliveries: removed,
                    bodies: 0,
                },
                Walk::Bodies => Pruned {
                    deliveries: 0,
                    bodies: removed,
                },
            },
            more,
        })
    }

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
        let webhook_ids = column(&rows, |d| d.webhook_id().as_str());
        let prediction_ids = column(&rows, |d| d.prediction.id.as_str());
        let timestamps = column(&rows, NewDelivery::webhook_timestamp);
        let received_at = column(&rows, |d| d.received_at);
        let bodies = column(&rows, |d| d.body.as_str());
        let large = bodies.iter().map(|body| body.len()).sum::<usize>() > SHRINK_AFTER_BYTES;
        let offered = plan.offered();
        let leads = plan.leads();
        let statuses = column(&rows, NewDelivery::status);
        let models = column(&rows, NewDelivery::model);
        let versions = column(&rows, NewDelivery::version);
        let created_at = column(&rows, NewDelivery::created_at);
        let ranks = column(&rows, |d| d.progress.rank);
        let logs = column(&rows, |d| d.progress.logs_len);
        let outputs = column(&rows, |d| d.progress.output_len);
        let sources = column(&rows, |d| d.source.as_str());
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
                        let options = (*self.pool.connect_options())
                            .clone()
                            .options(WRITER_SETTINGS);
                        tokio::time::timeout(ACQUIRE_TIMEOUT, options.connect())
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
                    .bind(&leads)
                    .bind(&statuses)
                    .bind(&models)
                    .bind(&versions)
                    .bind(&created_at)
                    .bind(&ranks)
                    .bind(&logs)
                    .bind(&outputs)
                    .bind(CHANGES_CHANNEL)
                    .bind(time_left(deadline))
                    .bind(&sources)
                    .fetch_one(&mut connection)
                    .await;
                if still_usable(&applied) {
                    if large {
                        connection.shrink_buffers();
                    }
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

/// Whether the server refused a statement for the values it was given (SQLSTATE classes 22, data
/// exception; 23, integrity constraint; 54, program limit exceeded) rather than for its own state.
fn refused_for_the_data(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(e) = error else {
        return false;
    };
    e.code().is_some_and(|code| {
        ["22", "23", "54"]
            .iter()
            .any(|class| code.starts_with(class))
    })
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
/// recorded, and one more should another batch commit a copy of one, or create one of its
/// predictions, in between.
const MAX_ATTEMPTS: usize = 3;

/// What `prediction_inbox_batch_done` raises when another batch created one of the batch's
/// predictions while it ran.
const SERIALIZATION_FAILURE: &str = "40001";

/// The next thousand predictions after `$1` by id: those stored before `progress_output` existed
/// get it, measured from their body (see `stored_output!`). Their rows are locked in id order, the
/// order batches lock them in. Answers the last id of the slice, or NULL past the last.
const BACKFILL: &str = concat!(
    r#"
WITH slice AS (
    SELECT id FROM predictions WHERE id > $1 ORDER BY id LIMIT 1000
), unmeasured AS (
    SELECT p.id FROM predictions AS p
    WHERE p.id IN (SELECT id FROM slice) AND p.progress_output IS NULL
    ORDER BY p.id
    FOR UPDATE
), measured AS (
    UPDATE predictions AS p SET progress_output = "#,
    stored_output!("p"),
    r#"
    FROM unmeasured AS u WHERE p.id = u.id
    RETURNING 1
)
SELECT max(id) FROM slice WHERE (SELECT count(*) FROM measured) >= 0
"#
);

/// Which of the batch's `webhook-id`s are recorded.
const SEEN: &str = "SELECT webhook_id FROM deliveries WHERE webhook_id = ANY($1)";

/// A batch's new deliveries, in one statement.
///
/// It runs in this order, which every batch follows, so that overlapping batches take their locks
/// in one order and cannot deadlock:
/// 1. `locked`: the stored states of the batch's predictions, locked in id order, so that nothing
///    changes them before this statement has written. `compared` sets each new delivery against
///    its prediction's state: whether it beats it;
/// 2. the upsert (`latest`) of each prediction's offered delivery, if it beats the stored state,
///    in id order, and its notifications: `decided` reads all of it before the next step;
/// 3. the deliveries' insert (`recorded`), locking delivery keys in id order, each `applied` if
///    it led its prediction in the batch at its turn and beat the stored state (src/store/postgres
///    /plan.rs): the answers of serial recording;
/// 4. the check (migrations/postgres, `prediction_inbox_batch_done`), which takes the results as
///    arguments. It fails the statement if the batch ran past its deadline, so nothing of it
///    commits; or if a prediction it meant to create was created by another batch after step 1,
///    whose state the answers were not decided against.
///
/// Concurrent batches serialise on each prediction's row; the upsert's guard is checked against
/// the newest version, so none is lost and none regresses it. `created_at` is never changed once
/// set: it is the sort key. The notifications, `t` or `p` (terminal or not) and the id, are
/// delivered only if the statement commits, so a woken waiter always finds the new state.
pub(super) const RECORD: &str = concat!(
    r#"
WITH d AS (
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::timestamptz[], $5::text[],
                         $6::bool[], $7::bool[], $8::text[], $9::text[], $10::text[],
                         $11::timestamptz[], $12::int2[], $13::int8[], $14::int8[], $17::text[])
        AS d (webhook_id, prediction_id, ts, received_at, body,
              offered, leads, status, model, version, created_at, rank, logs, output, source)
), locked AS (
    SELECT p.id, p.progress_rank AS rank, p.progress_logs AS logs, "#,
    stored_output!("p"),
    r#" AS output,
           p.progress_timestamp AS ts, p.latest_delivery AS webhook_id
    FROM predictions AS p
    WHERE p.id IN (SELECT prediction_id FROM d WHERE offered)
    ORDER BY p.id
    FOR UPDATE
), compared AS (
    SELECT d.*, l.id IS NULL AS new_prediction,
           l.id IS NULL OR (l.rank, l.logs, l.output, l.ts, l.webhook_id)
                         < (d.rank, d.logs, d.output, d.ts, d.webhook_id) AS beats_stored
    FROM d LEFT JOIN locked AS l ON l.id = d.prediction_id
), latest AS (
    INSERT INTO predictions AS p
        (id, status, model, version, created_at, progress_rank, progress_logs, progress_output,
         progress_timestamp, updated_at, latest_delivery)
    SELECT prediction_id, status, model, version, created_at, rank, logs, output,
           ts, received_at, webhook_id
    FROM compared WHERE offered AND beats_stored ORDER BY prediction_id
    ON CONFLICT (id) DO UPDATE SET
        status = excluded.status,
        model = excluded.model,
        version = excluded.version,
        progress_rank = excluded.progress_rank,
        progress_logs = excluded.progress_logs,
        progress_output = excluded.progress_output,
        progress_timestamp = excluded.progress_timestamp,
        updated_at = excluded.updated_at,
        latest_delivery = excluded.latest_delivery
    WHERE (p.progress_rank, p.progress_logs, "#,
    stored_output!("p"),
    r#", p.progress_timestamp, p.latest_delivery)
        < (excluded.progress_rank, excluded.progress_logs, excluded.progress_output,
           excluded.progress_timestamp, excluded.latest_delivery)
    RETURNING id, progress_rank, xmax = 0 AS inserted
), decided AS (
    SELECT c.webhook_id, c.leads AND c.beats_stored AS applied,
           c.offered AND c.new_prediction AND NOT coalesce(n.inserted, false) AS raced
    FROM compared AS c LEFT JOIN latest AS n ON n.id = c.prediction_id
), recorded AS (
    INSERT INTO deliveries
        (webhook_id, prediction_id, webhook_timestamp, received_at, applied, body, status, source)
    SELECT c.webhook_id, c.prediction_id, c.ts, c.received_at, x.applied, c.body, c.status,
           c.source
    FROM compared AS c JOIN decided AS x USING (webhook_id)
    ORDER BY c.webhook_id
    RETURNING webhook_id, applied
), announced AS MATERIALIZED (
    SELECT pg_notify($15, CASE WHEN progress_rank = 2 THEN 't' ELSE 'p' END || id) FROM latest
)
SELECT prediction_inbox_batch_done($16, applied, raced)
FROM (SELECT coalesce(array_agg(webhook_id) FILTER (WHERE applied), '{}') FROM recorded)
        AS r (applied),
     (SELECT count(*) FILTER (WHERE raced) FROM decided) AS x (raced),
     (SELECT count(*) FROM announced) AS a (notified)
"#
);

/// Whether delivery `$d` is the one its prediction's latest state stands on (or may be: a state
/// not yet pointed at its delivery keeps all of them).
macro_rules! is_latest {
    ($d:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM predictions AS p WHERE p.id = ",
            $d,
            ".prediction_id AND (p.latest_delivery = ",
            $d,
            ".webhook_id OR p.latest_delivery IS NULL))"
        )
    };
}

/// A delivery's status: as recorded, or, for one recorded before the column existed, read from
/// its body while it has one (unless the body holds a `\u0000` escape, which PostgreSQL refuses
/// to decode: then unknown).
macro_rules! delivery_status {
    ($d:literal) => {
        concat!(
            "coalesce(",
            $d,
            ".status, CASE WHEN strpos(",
            $d,
            r".body, '\u0000') = 0 THEN ",
            $d,
            ".body::json ->> 'status' END)"
        )
    };
}

/// The next deliveries of a walk: after ($1, $2), before $3, at most $4, in arrival order. The
/// B-tree on `received_at` hands them over in that order, ties sorted by key as they come.
macro_rules! prune_candidates {
    () => {
        "WITH candidates AS (
            SELECT ctid, webhook_id, prediction_id, received_at FROM deliveries
            WHERE received_at >= $1 AND received_at < $3 AND (received_at, webhook_id) > ($1, $2)
            ORDER BY received_at, webhook_id
            LIMIT $4
        ), last AS (
            SELECT received_at, webhook_id FROM candidates
            ORDER BY received_at DESC, webhook_id DESC LIMIT 1
        )"
    };
}

/// A slice of the records' walk: removes every candidate but the latest states'. Answers how
/// many it looked at and removed, and the last one it looked at.
///
/// The rows go by their address (`ctid`), as the candidates' scan found them, in the statement's
/// one snapshot: looked up again by `webhook_id`, each removal was a lookup in that key's index,
/// whose pages are scattered as the ids are random (on a cold cache, some 500 pages read a slice;
/// docs/benchmarks.md, "Space and retention").
pub(super) const PRUNE_DELIVERIES: &str = concat!(
    prune_candidates!(),
    ", removed AS (
        DELETE FROM deliveries AS d
        WHERE d.ctid = ANY(ARRAY(SELECT c.ctid FROM candidates AS c WHERE NOT ",
    is_latest!("c"),
    "))
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM candidates), (SELECT count(*) FROM removed),
           last.received_at, last.webhook_id
    FROM (SELECT 1) AS one LEFT JOIN last ON true"
);

/// A slice of the bodies' walk: drops the body of every candidate that still has one, whose
/// status is known and not terminal ($5), and that is no latest state, keeping its status and
/// size. Answers as `PRUNE_DELIVERIES`.
const PRUNE_BODIES: &str = concat!(
    prune_candidates!(),
    ", known AS (
        SELECT d.webhook_id, ",
    delivery_status!("d"),
    " AS status
        FROM deliveries AS d JOIN candidates AS c USING (webhook_id)
        WHERE d.body_size IS NULL AND NOT ",
    is_latest!("d"),
    "
    ), dropped AS (
        UPDATE deliveries AS d
        SET body = NULL, body_size = octet_length(d.body), status = k.status
        FROM known AS k
        WHERE d.webhook_id = k.webhook_id AND k.status <> ALL($5::text[])
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM candidates), (SELECT count(*) FROM dropped),
           last.received_at, last.webhook_id
    FROM (SELECT 1) AS one LEFT JOIN last ON true"
);

/// What retention would remove before the cutoffs $1 (records) and $2 (bodies), $3 the terminal
/// statuses: counted over the whole table.
const PRUNABLE: &str = concat!(
    "SELECT
        (SELECT count(*) FROM deliveries AS d
         WHERE d.received_at < $1 AND NOT ",
    is_latest!("d"),
    "),
        (SELECT count(*) FROM deliveries AS d
         WHERE d.received_at < $2 AND ($1::timestamptz IS NULL OR d.received_at >= $1)
           AND d.body_size IS NULL AND ",
    delivery_status!("d"),
    " <> ALL($3::text[]) AND NOT ",
    is_latest!("d"),
    ")"
);

/// The leases' statements (`store::lease_statements`): in `background_work`, by the database's
/// clock, `$3` the lease's or ask's length.
static LEASES: LazyLock<store::LeaseStatements> =
    LazyLock::new(|| store::lease_statements("background_work", "now()", "now() + $3"));

/// A page of prediction $1's deliveries after ($2, $3), at most $4.
const HISTORY: &str = concat!(
    "SELECT webhook_id, webhook_timestamp, received_at, source, ",
    delivery_status!("d"),
    " AS status, applied, coalesce(body_size, octet_length(body)) AS body_size,
       body_size IS NULL AS body_kept
FROM deliveries AS d
WHERE prediction_id = $1 AND ($2::timestamptz IS NULL OR (received_at, webhook_id) > ($2, $3))
ORDER BY received_at, webhook_id
LIMIT $4"
);

#[derive(sqlx::FromRow)]
struct HistoryRow {
    webhook_id: String,
    webhook_timestamp: i64,
    received_at: OffsetDateTime,
    source: String,
    status: Option<String>,
    applied: bool,
    body_size: Option<i64>,
    body_kept: bool,
}

impl HistoryRow {
    fn into_stored(self) -> StoredDelivery {
        StoredDelivery {
            webhook_id: self.webhook_id,
            webhook_timestamp: self.webhook_timestamp,
            received_at: self.received_at,
            source: self.source,
            status: self.status,
            applied: self.applied,
            body_size: self.body_size.unwrap_or(0),
            body_kept: self.body_kept,
        }
    }
}
