//! Where deliveries and latest states live: one small interface, [`Store`], and two backends
//! behind it, each with its own SQL and migrations.
//!
//! - [`postgres`]: production, and any number of replicas over one database; committed changes are
//!   announced to every process with `NOTIFY`.
//! - [`sqlite`]: an embedded file for one process and zero setup; changes are announced in process.
//!
//! The only decision a backend makes is the one the database must make atomically: whether a
//! delivery's progress key is greater than the stored one (see `domain::Progress`).

mod archive;
mod keyset;
mod postgres;
mod sqlite;

/// The in-memory half of a Postgres batch: which deliveries are new, lead their prediction, are
/// offered to the upsert. Public for the deterministic replay (`benches/replay.rs`).
pub use postgres::plan::Plan as BatchPlan;

/// The statement that records a batch on Postgres, as the service sends it: for
/// `tools/compare-naive.sh`, which runs it alone under pgbench.
pub const POSTGRES_BATCH_STATEMENT: &str = postgres::RECORD;
/// The settings of the Postgres connection that runs it.
pub const POSTGRES_WRITER_SETTINGS: [(&str, &str); 3] = postgres::WRITER_SETTINGS;

/// A slice of retention's walk through the records on Postgres: for a test of its plan.
pub const POSTGRES_PRUNE_STATEMENT: &str = postgres::PRUNE_DELIVERIES;

/// The statement by which the archiver, each second, finds which of the predictions it heard
/// finish have files to queue, on Postgres: for a test of its plan.
pub fn postgres_archive_lookup() -> &'static str {
    &postgres::archive::CANDIDATES_AMONG
}

/// The same statement on SQLite, and the sweep's, for tests of their plans.
pub fn sqlite_archive_lookup() -> &'static str {
    sqlite::archive::CANDIDATES_AMONG
}

pub fn sqlite_archive_sweep() -> &'static str {
    &sqlite::archive::CANDIDATES
}

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;

use crate::domain::{Prediction, Progress, Status, WebhookId, holdable};

pub use archive::{
    ArchiveFile, ArchiveQueue, ArchiveUsage, Candidate, FileJob, Finish, Found, NewFile,
};

/// What the service needs of a database. Every method that touches data is one transaction or
/// one consistent read. Its futures are boxed, which parked waiters rely on: a future is as large
/// as its largest await point, and a waiter should not carry a query's state while it waits.
#[async_trait::async_trait]
pub trait Store: ArchiveQueue + Send + Sync + 'static {
    /// Which backend, and where its data is, for the start-up log: never a password.
    fn describe(&self) -> String;

    /// Applies pending migrations; safe to run from several processes at once.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Whether the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Connections in use and idle.
    fn pool_status(&self) -> (u32, usize);

    /// How many predictions have each status, as stored (`None`: no status).
    async fn count_by_status(&self) -> Result<Vec<(Option<String>, i64)>, StoreError>;

    /// When the unfinished prediction that has heard nothing for longest last heard something;
    /// `None` if none is unfinished.
    async fn oldest_unfinished(&self) -> Result<Option<OffsetDateTime>, StoreError>;

    /// Records a batch of deliveries, and advances each prediction's latest state to the greatest
    /// progress among them if that is greater than the stored one, in one transaction.
    ///
    /// Every backend answers the same: one outcome per delivery, in order, exactly as if the batch
    /// had been recorded one delivery after another in that order. A `webhook-id` recorded before,
    /// or earlier in the batch, is a `Duplicate`; a delivery that advanced its prediction at its
    /// turn is `Applied`, even when a later one of the batch advanced it further; any other is
    /// `Ignored`. The stored state ends the same whatever the order.
    ///
    /// Once it returns, each delivery may be acknowledged; each change is announced to
    /// [`Store::change_feed`] once committed. On error, nothing of the batch was written. At
    /// `deadline` the caller gives up on the batch and answers each delivery 503, so nothing of it
    /// may commit later than that.
    async fn record(
        &self,
        batch: &[NewDelivery],
        deadline: Instant,
    ) -> Result<Vec<Outcome>, StoreError>;

    /// Fills in, for the next slice of predictions stored before a column of the latest-state
    /// order existed, what that column holds; `false` once every prediction has it. Each slice is
    /// one short transaction, so ingest never waits on it for long.
    async fn backfill(&self) -> Result<bool, StoreError>;

    /// A prediction's latest state.
    async fn prediction(&self, id: &str) -> Result<Option<StoredPrediction>, StoreError>;

    /// Whether a prediction's latest state is terminal (`None`: never received), without reading
    /// its body: what a wait needs to know before it sleeps.
    async fn finished(&self, id: &str) -> Result<Option<bool>, StoreError>;

    /// A page of latest states, walked by keyset over `(created_at, id)`.
    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError>;

    /// A page of one prediction's deliveries, oldest first (by arrival, then `webhook-id`),
    /// without their bodies.
    async fn deliveries(&self, query: &HistoryQuery) -> Result<Vec<StoredDelivery>, StoreError>;

    /// The bodies still kept of the named deliveries of one prediction, by `webhook-id`.
    async fn bodies(
        &self,
        prediction_id: &str,
        webhook_ids: &[String],
    ) -> Result<Vec<(String, String)>, StoreError>;

    /// Takes or renews the lease named `name` for `holder` until `ttl` from now, unless another
    /// holder's lease on it is still running or another has asked for it: whether `holder` holds
    /// it. One process at a time does a background worker's job this way; a holder that stops
    /// renewing loses the lease when it runs out, and one that another has asked gives it up
    /// here, at its renewal.
    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Asks for the lease `name` on behalf of `holder` for `ttl` from now (unless another's ask
    /// is still running): its holder gives it up at its next renewal, and nobody but `holder`
    /// takes it while the ask runs. `prediction-inbox reconcile` asks the serving replicas so.
    async fn ask_for_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<(), StoreError>;

    /// Gives up the lease `name` and the ask for it, whichever `holder` has.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;

    /// One slice of retention's work, one short transaction: removes deliveries recorded before
    /// `cutoffs.deliveries`, or else drops the bodies of those recorded before `cutoffs.bodies`
    /// that are neither terminal nor a latest state, never touching the delivery a prediction's
    /// latest state stands on. It goes through deliveries in the order they arrived, keeping its
    /// place in the database, so each slice starts where the last one ended. `more` is false
    /// once it has reached both cutoffs.
    async fn prune(&self, cutoffs: &Cutoffs) -> Result<Slice, StoreError> {
        // Records first: a body is not worth dropping from a record about to go.
        let mut slice = Slice::default();
        if let Some(until) = cutoffs.deliveries {
            slice = self.prune_walk(Walk::Deliveries, until, None).await?;
        }
        if let (false, Some(until)) = (slice.more, cutoffs.bodies) {
            let bodies = self
                .prune_walk(Walk::Bodies, until, cutoffs.deliveries)
                .await?;
            slice.pruned += bodies.pruned;
            slice.more = bodies.more;
        }
        Ok(slice)
    }

    /// One slice of one of retention's walks, from where it has got to up to `until`, one short
    /// transaction; the bodies' walk leaves what arrived before `floor` to the records' walk.
    async fn prune_walk(
        &self,
        walk: Walk,
        until: OffsetDateTime,
        floor: Option<OffsetDateTime>,
    ) -> Result<Slice, StoreError>;

    /// What `prune` would remove, counted without removing anything: from the first delivery,
    /// not from where the pruner has got to.
    async fn prunable(&self, cutoffs: &Cutoffs) -> Result<Pruned, StoreError>;

    /// Sends retention's walks back to the oldest delivery, for their next slices to go through
    /// every delivery again: one that was a latest state when a walk passed it, and has been
    /// superseded since, is visited then.
    async fn rewind(&self) -> Result<(), StoreError>;

    /// Whether retention has ever run on this database.
    async fn has_pruned(&self) -> Result<bool, StoreError>;

    /// Unfinished predictions unheard of since before `quiet_before` whose next read from the
    /// platform is due at `now` (or that were never read), the longest-waiting first, at most
    /// `limit`: their latest state and how their last reads went. Marked ones never come back.
    async fn due_for_reconcile(
        &self,
        quiet_before: OffsetDateTime,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Due>, StoreError>;

    /// When prediction `id` is to be read from the platform again, and how this read went.
    async fn schedule_reconcile(&self, id: &str, next: &NextRead) -> Result<(), StoreError>;

    /// The time job `name` has got through (table `checkpoints`), if it ever ran.
    async fn checkpoint(&self, name: &str) -> Result<Option<OffsetDateTime>, StoreError>;

    /// Records that job `name` has got through `at`.
    async fn set_checkpoint(&self, name: &str, at: OffsetDateTime) -> Result<(), StoreError>;

    /// A feed of the ids of predictions whose change has been committed, by any process that
    /// shares this database.
    async fn change_feed(&self) -> Result<Box<dyn ChangeFeed>, StoreError>;

    /// Waits for connections in use to be returned, then closes them.
    async fn close(&self);
}

/// Committed changes of predictions, in commit order.
#[async_trait::async_trait]
pub trait ChangeFeed: Send {
    /// The next change; `None` when changes may have been missed (a lost connection, a slow
    /// reader), after which the feed goes on and the caller should re-read whatever it cares about.
    async fn next(&mut self) -> Result<Option<Change>, StoreError>;
}

/// One prediction's state advanced, and whether it is now terminal: what a waiter needs to know
/// whether to read it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub id: String,
    pub terminal: bool,
}

impl Change {
    /// From a notification's payload: `t` (terminal) or `p`, then the id.
    pub fn decode(payload: &str) -> Option<Self> {
        let terminal = match payload.as_bytes().first()? {
            b't' => true,
            b'p' => false,
            _ => return None,
        };
        Some(Self {
            id: payload[1..].to_owned(),
            terminal,
        })
    }
}

/// Opens the store a URL names, without migrating: one connection up front, so a wrong URL fails
/// at start-up.
pub async fn open(url: &DatabaseUrl, pool_size: u32) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match url {
        DatabaseUrl::Postgres(url) => Arc::new(postgres::Postgres::connect(url, pool_size).await?),
        DatabaseUrl::Sqlite(url) => Arc::new(sqlite::Sqlite::open(url, pool_size).await?),
    })
}

/// The database, by backend. A Postgres URL may carry a password: never printed.
#[derive(Clone)]
pub enum DatabaseUrl {
    Postgres(String),
    Sqlite(String),
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Postgres(_) => f.write_str("Postgres(<redacted>)"),
            Self::Sqlite(url) => f.debug_tuple("Sqlite").field(url).finish(),
        }
    }
}

/// How long a request waits for a pooled connection, or a writer for its connection to be
/// opened, before the database counts as unavailable: on either store.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Predictions per stored status; the same SQL on either backend.
const COUNT_BY_STATUS: &str = "SELECT status, count(*) FROM predictions GROUP BY status";

/// Whether a prediction's latest state is terminal (`$2` is `Status::TERMINAL_RANK`); the same SQL
/// on either backend.
const FINISHED: &str = "SELECT progress_rank = $2 FROM predictions WHERE id = $1";

/// A pool's connections in use and idle.
fn pool_status<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> (u32, usize) {
    let idle = pool.num_idle();
    (pool.size().saturating_sub(idle as u32), idle)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unavailable: {0}")]
    Unavailable(#[from] sqlx::Error),
    /// The database refused the statement for what it was given: a value it cannot hold, a
    /// constraint, a size limit.
    #[error("the database refused the write: {0}")]
    Refused(sqlx::Error),
    #[error("recording the batch panicked; nothing of it was recorded")]
    Panicked,
    #[error("the write did not commit before the request's deadline; it was rolled back")]
    Deadline,
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create the database's folder {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether what one delivery of a batch holds may have caused this, rather than the database
    /// being out of reach: then recording the batch in parts finds the one at fault.
    pub fn may_be_the_data(&self) -> bool {
        matches!(self, Self::Refused(_) | Self::Panicked)
    }
}

/// What recording one delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The delivery is now the prediction's latest state.
    Applied,
    /// Recorded, but older than the stored state, which is unchanged.
    Ignored,
    /// This `webhook-id` was recorded before; nothing was written.
    Duplicate,
}

impl Outcome {
    pub const ALL: [Self; 3] = [Self::Applied, Self::Ignored, Self::Duplicate];

    /// Its name, as the API answers it and metrics and logs label it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Ignored => "ignored",
            Self::Duplicate => "duplicate",
        }
    }
}

/// A verified, parsed delivery ready to be written.
#[derive(Debug)]
pub struct NewDelivery {
    pub prediction: Prediction,
    /// Its place in the latest-state order, which holds its `webhook-id` and `webhook-timestamp`.
    pub progress: Progress,
    /// The exact body received.
    pub body: String,
    pub received_at: OffsetDateTime,
    pub source: Source,
}

/// How a delivery came: signed by the platform, or made by the service from one of the
/// platform's answers to it. Recorded in the deliveries' column `source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Webhook,
    /// The answer to a create.
    Create,
    /// The answer to a cancel.
    Cancel,
    /// An answer to a read of the prediction, made to repair a missed webhook.
    Reconcile,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Create => "create",
            Self::Cancel => "cancel",
            Self::Reconcile => "reconcile",
        }
    }
}

impl NewDelivery {
    pub fn new(
        prediction: Prediction,
        webhook_id: WebhookId,
        timestamp: i64,
        body: String,
    ) -> Self {
        Self {
            progress: Progress::of(&prediction, webhook_id, timestamp),
            prediction,
            body,
            received_at: OffsetDateTime::now_utc(),
            source: Source::Webhook,
        }
    }

    /// A delivery the service makes itself from one of the platform's answers (`source` is not
    /// `Webhook`). Its id holds a `·`, which no `webhook-id` can: a header value that is not
    /// visible ASCII is refused (`verify`), so the two never collide. It goes through the same
    /// order, with a timestamp that keeps it from replacing a terminal state: a terminal one
    /// counts as sent at 0, so that every terminal delivery the platform signs is greater; any
    /// other has now, and is below every terminal state by rank.
    pub fn own(source: Source, prediction: Prediction, body: String) -> Self {
        let mut random = [0u8; 16];
        // The operating system's generator failing leaves zeros and the time below to tell the
        // ids apart.
        let _ = getrandom::getrandom(&mut random);
        let now = OffsetDateTime::now_utc();
        let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let id = format!("{}·{}{suffix}", source.as_str(), now.unix_timestamp_nanos());
        let terminal = prediction
            .status
            .as_ref()
            .is_some_and(|status| status.is_terminal());
        let timestamp = if terminal { 0 } else { now.unix_timestamp() };
        let webhook_id = WebhookId::made(id);
        Self {
            source,
            ..Self::new(prediction, webhook_id, timestamp, body)
        }
    }

    pub fn webhook_id(&self) -> &WebhookId {
        &self.progress.webhook_id
    }

    /// `webhook-timestamp`, Unix seconds.
    pub fn webhook_timestamp(&self) -> i64 {
        self.progress.timestamp
    }

    /// The list's sort key: the object's `created_at`, or when it was first received if it has none.
    fn created_at(&self) -> OffsetDateTime {
        self.prediction.created_at.unwrap_or(self.received_at)
    }

    /// The indexed columns, each as sent if the column can hold it, else NULL.
    fn status(&self) -> Option<&str> {
        self.prediction
            .status
            .as_ref()
            .map(|s| s.as_str())
            .filter(|s| holdable(s))
    }

    fn model(&self) -> Option<&str> {
        self.prediction.model.as_deref().filter(|s| holdable(s))
    }

    fn version(&self) -> Option<&str> {
        self.prediction.version.as_deref().filter(|s| holdable(s))
    }
}

/// A prediction's latest state: the body exactly as received, and its place in the list.
#[derive(Debug, sqlx::FromRow)]
pub struct StoredPrediction {
    pub id: String,
    pub status: Option<String>,
    pub created_at: OffsetDateTime,
    pub body: String,
}

impl StoredPrediction {
    pub fn is_terminal(&self) -> bool {
        self.status
            .as_deref()
            .is_some_and(|status| Status::parse(status).is_terminal())
    }
}

/// How far back retention keeps things: records of deliveries, and the bodies of superseded
/// non-terminal ones (`None`: kept as long as their record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoffs {
    pub deliveries: Option<OffsetDateTime>,
    pub bodies: Option<OffsetDateTime>,
}

/// What retention removed, or would remove.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Delivery records removed.
    pub deliveries: u64,
    /// Bodies dropped from the records that stay.
    pub bodies: u64,
}

impl std::ops::AddAssign for Pruned {
    fn add_assign(&mut self, other: Self) {
        self.deliveries += other.deliveries;
        self.bodies += other.bodies;
    }
}

/// One slice of retention's work: what it removed, and whether there is more before the cutoffs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    pub pruned: Pruned,
    pub more: bool,
}

/// Retention's slices are this many deliveries: each one transaction of a few milliseconds.
const PRUNE_SLICE: i64 = 500;

/// Retention's two walks through the deliveries, in the order they arrived, each keeping its
/// place in the table `background_work` under its name.
#[derive(Debug, Clone, Copy)]
pub enum Walk {
    /// Removes records.
    Deliveries,
    /// Drops bodies.
    Bodies,
}

impl Walk {
    fn name(self) -> &'static str {
        match self {
            Self::Deliveries => "prune_deliveries",
            Self::Bodies => "prune_bodies",
        }
    }
}

/// Whether either walk has a place yet; the same SQL on either backend.
const HAS_PRUNED: &str = "SELECT EXISTS (SELECT 1 FROM background_work \
     WHERE name IN ('prune_deliveries', 'prune_bodies'))";

/// A page of one prediction's deliveries, after `after` (arrival time, `webhook-id`).
#[derive(Debug)]
pub struct HistoryQuery {
    pub prediction_id: String,
    pub after: Option<(OffsetDateTime, String)>,
    pub limit: u32,
}

/// One delivery of a prediction, as recorded.
#[derive(Debug)]
pub struct StoredDelivery {
    pub webhook_id: String,
    /// `webhook-timestamp`, Unix seconds.
    pub webhook_timestamp: i64,
    pub received_at: OffsetDateTime,
    /// How it came: `webhook`, `create`, `cancel` or `reconcile` (see [`Source`]).
    pub source: String,
    /// Its own status, as sent.
    pub status: Option<String>,
    /// Whether it became the prediction's latest state when it arrived.
    pub applied: bool,
    /// The body's length in bytes, kept or not.
    pub body_size: i64,
    pub body_kept: bool,
}

/// An unfinished prediction due to be read from the platform.
#[derive(Debug)]
pub struct Due {
    pub prediction: StoredPrediction,
    /// How its last reads went; `None` if it was never read.
    pub last: Option<NextRead>,
}

/// A prediction's place in the reconciler's schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextRead {
    pub at: OffsetDateTime,
    /// The wait before it, doubled while the prediction stays unfinished.
    pub interval: Duration,
    /// Since when, and how many times in a row, the platform answered 404.
    pub missing_since: Option<OffsetDateTime>,
    pub missing: i32,
    /// Why it is never read again, if it is not.
    pub marked: Option<String>,
}

/// The reconciler's query on either backend: `$1` quiet before, `$2` now, `$3` limit, `$4` the
/// terminal rank; times as each backend keeps them.
const DUE_FOR_RECONCILE: &str = "\
    SELECT p.id, p.status, p.created_at, BODY AS body, \
           r.next_at, r.interval_ms, r.missing_since, r.missing \
    FROM predictions AS p LEFT JOIN reconcile AS r ON r.prediction_id = p.id \
    WHERE p.progress_rank < $4 AND p.updated_at < $1 \
      AND (r.prediction_id IS NULL OR (r.marked IS NULL AND r.next_at <= $2)) \
    ORDER BY coalesce(r.next_at, p.updated_at) LIMIT $3";

/// The leases' statements on either backend, from one text: `LEASES` names the table, `NOW` the
/// time now and `UNTIL` the end of the lease or ask being taken (Postgres reads its own clock,
/// the embedded store is told). `$1` is the lease's name, `$2` who takes, asks or gives it up.
///
/// Takes or renews the lease for `$2`, unless another's is still running or another has asked
/// for it; a holder another has asked gives it up instead. Answers the holder after the change,
/// if anything changed.
const LEASE: &str = "
INSERT INTO LEASES AS w (name, holder, held_until) VALUES ($1, $2, UNTIL)
ON CONFLICT (name) DO UPDATE SET
    holder = CASE WHEN w.wanted_by <> $2 AND w.wanted_until > NOW THEN NULL ELSE $2 END,
    held_until = CASE WHEN w.wanted_by <> $2 AND w.wanted_until > NOW THEN NULL
                      ELSE excluded.held_until END,
    wanted_by = CASE WHEN w.wanted_by = $2 THEN NULL ELSE w.wanted_by END,
    wanted_until = CASE WHEN w.wanted_by = $2 THEN NULL ELSE w.wanted_until END
WHERE w.holder = $2
   OR ((w.holder IS NULL OR w.held_until < NOW)
       AND NOT coalesce(w.wanted_by <> $2 AND w.wanted_until > NOW, false))
RETURNING holder";

/// `$2` asks for the lease, unless another's ask is still running.
const ASK_FOR_LEASE: &str = "
INSERT INTO LEASES AS w (name, wanted_by, wanted_until) VALUES ($1, $2, UNTIL)
ON CONFLICT (name) DO UPDATE
SET wanted_by = excluded.wanted_by, wanted_until = excluded.wanted_until
WHERE w.wanted_by IS NULL OR w.wanted_by = $2 OR w.wanted_until < NOW";

/// `$2` gives up the lease and its ask for it, whichever it has.
const RELEASE_LEASE: &str = "
UPDATE LEASES SET
    holder = CASE WHEN holder = $2 THEN NULL ELSE holder END,
    held_until = CASE WHEN holder = $2 THEN NULL ELSE held_until END,
    wanted_by = CASE WHEN wanted_by = $2 THEN NULL ELSE wanted_by END,
    wanted_until = CASE WHEN wanted_by = $2 THEN NULL ELSE wanted_until END
WHERE name = $1";

/// The lease statements of one backend.
struct LeaseStatements {
    take: String,
    ask: String,
    release: String,
}

/// The lease statements for a backend's table and clock.
fn lease_statements(table: &str, now: &str, until: &str) -> LeaseStatements {
    let make = |sql: &str| {
        sql.replace("LEASES", table)
            .replace("UNTIL", until)
            .replace("NOW", now)
    };
    LeaseStatements {
        take: make(LEASE),
        ask: make(ASK_FOR_LEASE),
        release: make(RELEASE_LEASE),
    }
}

/// A checkpoint, and setting one, on either backend.
const CHECKPOINT: &str = "SELECT through_at FROM checkpoints WHERE name = $1";
const SET_CHECKPOINT: &str = "INSERT INTO checkpoints (name, through_at) VALUES ($1, $2) \
     ON CONFLICT (name) DO UPDATE SET through_at = excluded.through_at";

/// Records a prediction's next read, on either backend.
const SCHEDULE_RECONCILE: &str = "\
    INSERT INTO reconcile (prediction_id, next_at, interval_ms, missing_since, missing, marked) \
    VALUES ($1, $2, $3, $4, $5, $6) \
    ON CONFLICT (prediction_id) DO UPDATE SET next_at = excluded.next_at, \
        interval_ms = excluded.interval_ms, missing_since = excluded.missing_since, \
        missing = excluded.missing, marked = excluded.marked";

/// A place in the list (newest first by `created_at`, then `id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub created_at: OffsetDateTime,
    pub id: String,
}

/// Which way a page goes from a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Entries after the position in list order (older).
    Older,
    /// Entries before it (newer): the way back.
    Newer,
}

#[derive(Debug, Default)]
pub struct ListQuery {
    pub status: Option<String>,
    pub model: Option<String>,
    pub version: Option<String>,
    pub created_after: Option<OffsetDateTime>,
    pub created_before: Option<OffsetDateTime>,
    /// `None`: the first page.
    pub from: Option<(Direction, Position)>,
    pub limit: u32,
}

/// A page, newest first, and whether there is more on either side of it.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<StoredPrediction>,
    pub has_older: bool,
    pub has_newer: bool,
}
