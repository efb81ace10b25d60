//! Where deliveries and latest states live: one small interface, [`Storage`], and two backends
//! behind it, each with its own SQL and migrations.
//!
//! - [`postgres`]: production, and any number of replicas over one database; committed changes are
//!   announced to every process with `NOTIFY`.
//! - [`sqlite`]: an embedded file for one process and zero setup; changes are announced in process.
//!
//! The only decision a backend makes is the one the database must make atomically: whether a
//! delivery's progress key is greater than the stored one (see `domain::Progress`).

mod keyset;
mod postgres;
mod sqlite;

use std::sync::Arc;

use serde::Serialize;
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::config::DatabaseUrl;
use crate::domain::{Prediction, Progress, Status, WebhookId};

/// The store the service runs on, shared by every request.
pub type Store = Arc<dyn Storage>;

/// What the service needs of a database. Every method that touches data is one transaction or
/// one consistent read. Its futures are boxed, which parked waiters rely on: a future is as large
/// as its largest await point, and a waiter should not carry a query's state while it waits.
#[async_trait::async_trait]
pub trait Storage: Send + Sync + 'static {
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

    /// Records a batch of deliveries, and advances each prediction's latest state to the greatest
    /// progress among them if that is greater than the stored one, in one transaction. The answer
    /// has one outcome per delivery, in order, as if they had been recorded one after another: a
    /// second copy of a `webhook-id` is a `Duplicate`, and of several deliveries of one prediction
    /// at most the greatest is `Applied`. Once it returns, each delivery may be acknowledged;
    /// each `Applied` change is announced to [`Storage::changes`] once committed. On error, nothing
    /// of the batch was written. At `deadline` the caller gives up on the batch and answers each
    /// delivery 503, so nothing of it may commit later than that.
    async fn record(
        &self,
        batch: &[NewDelivery],
        deadline: Instant,
    ) -> Result<Vec<Outcome>, StoreError>;

    /// A prediction's latest state.
    async fn prediction(&self, id: &str) -> Result<Option<StoredPrediction>, StoreError>;

    /// A page of latest states, walked by keyset over `(created_at, id)`.
    async fn list(&self, query: &ListQuery) -> Result<Page, StoreError>;

    /// A feed of the ids of predictions whose change has been committed, by any process that
    /// shares this database.
    async fn changes(&self) -> Result<Box<dyn ChangeFeed>, StoreError>;

    /// Waits for connections in use to be returned, then closes them.
    async fn close(&self);
}

/// Ids of predictions whose change was committed, in commit order.
#[async_trait::async_trait]
pub trait ChangeFeed: Send {
    /// The next id; `None` when changes may have been missed (a lost connection, a slow reader),
    /// after which the feed goes on and the caller should re-read whatever it cares about.
    async fn next(&mut self) -> Result<Option<String>, StoreError>;
}

/// Opens the store a URL names, without migrating: one connection up front, so a wrong URL fails
/// at start-up.
pub async fn open(url: &DatabaseUrl, pool_size: u32) -> Result<Store, StoreError> {
    Ok(match url {
        DatabaseUrl::Postgres(url) => Arc::new(postgres::Postgres::connect(url, pool_size).await?),
        DatabaseUrl::Sqlite(url) => Arc::new(sqlite::Sqlite::open(url, pool_size).await?),
    })
}

/// Predictions per stored status; the same SQL on either backend.
const COUNT_BY_STATUS: &str = "SELECT status, count(*) FROM predictions GROUP BY status";

/// A pool's connections in use and idle.
fn pool_status<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> (u32, usize) {
    let idle = pool.num_idle();
    (pool.size().saturating_sub(idle as u32), idle)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unavailable: {0}")]
    Unavailable(#[from] sqlx::Error),
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
#[derive(Debug)]
pub struct NewDelivery {
    pub webhook_id: WebhookId,
    pub webhook_timestamp: i64,
    pub prediction: Prediction,
    pub progress: Progress,
    /// The exact body received.
    pub body: String,
    pub received_at: OffsetDateTime,
}

impl NewDelivery {
    /// The list's sort key: the object's `created_at`, or when it was first received if it has none.
    fn created_at(&self) -> OffsetDateTime {
        self.prediction.created_at.unwrap_or(self.received_at)
    }

    fn status(&self) -> Option<&str> {
        self.prediction.status.as_ref().map(|s| s.as_str())
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
