//! The archive's queue (src/archive/): which predictions have been looked at for output files,
//! and each file's record — queued, leased by one replica while it is fetched, archived, failed
//! or expired. The same SQL on either backend but where noted; times as each backend keeps them.

use std::time::Duration;

use time::OffsetDateTime;

use super::{StoreError, StoredPrediction};

/// What the archiver needs of the database.
#[async_trait::async_trait]
pub trait ArchiveQueue: Send + Sync {
    /// The next `succeeded` deliveries after `after` (arrival time, `webhook-id`) and received
    /// before `until`, in that order, whose prediction is `succeeded` and has no file
    /// recorded yet, at most `limit`.
    async fn archive_candidates(
        &self,
        after: (OffsetDateTime, &str),
        until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Candidate>, StoreError>;

    /// Those of the predictions named that are `succeeded` and have no file recorded yet.
    async fn archive_candidates_among(
        &self,
        ids: &[String],
    ) -> Result<Vec<StoredPrediction>, StoreError>;

    /// Records the files of these predictions, in one transaction; a file recorded before is left
    /// as it is.
    async fn archive_enqueue(&self, found: &[Found]) -> Result<(), StoreError>;

    /// Leases to `holder` until `now + ttl` at most `limit` queued files that are due and not
    /// leased by another holder whose lease is running, the most recently completed first, and
    /// counts the attempt.
    async fn archive_take(
        &self,
        holder: &str,
        now: OffsetDateTime,
        ttl: Duration,
        limit: u32,
    ) -> Result<Vec<FileJob>, StoreError>;

    /// Renews `holder`'s lease on file `key` until `until`: whether it still held it.
    async fn archive_renew(
        &self,
        key: &str,
        holder: &str,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Records how fetching file `key` went, if `holder` still holds it: whether it did.
    async fn archive_finish(
        &self,
        key: &str,
        holder: &str,
        finish: &Finish,
    ) -> Result<bool, StoreError>;

    /// The records of the files of these predictions.
    async fn archive_files(&self, ids: &[&str]) -> Result<Vec<ArchiveFile>, StoreError>;

    /// The record of file `key`.
    async fn archive_file(&self, key: &str) -> Result<Option<ArchiveFile>, StoreError>;

    /// Files queued, and bytes archived.
    async fn archive_usage(&self) -> Result<ArchiveUsage, StoreError>;

    /// Marks at most `limit` files archived before `before` as expired, and answers their keys:
    /// their copies are to be deleted.
    async fn archive_expire(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;
}

/// A succeeded prediction to look at for files, and the delivery it was found by: the walk's
/// place.
#[derive(Debug)]
pub struct Candidate {
    pub received_at: OffsetDateTime,
    pub webhook_id: String,
    pub prediction: StoredPrediction,
}

/// A succeeded prediction, and the files of its output to archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub id: String,
    pub completed_at: OffsetDateTime,
    pub files: Vec<NewFile>,
}

/// A file found in an output, to be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFile {
    pub key: String,
    pub url: String,
}

/// A file leased to be fetched.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FileJob {
    pub key: String,
    pub prediction_id: String,
    pub url: String,
    /// Counting this one.
    pub attempts: i32,
}

/// How fetching a file went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    Archived {
        size: i64,
        content_type: String,
    },
    /// For good.
    Failed {
        reason: String,
    },
    /// Queued again, due at `at`.
    Retry {
        at: OffsetDateTime,
        reason: String,
    },
}

/// A file's record, as reads and the file route need it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ArchiveFile {
    pub key: String,
    pub prediction_id: String,
    pub url: String,
    /// `queued`, `archived`, `failed` or `expired`.
    pub state: String,
    /// Why it failed or expired, or why its last attempt failed.
    pub reason: Option<String>,
    pub size: Option<i64>,
    pub content_type: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveUsage {
    pub queued: i64,
    pub archived_bytes: i64,
}

/// `BODY` is each backend's way to the latest state's body. Postgres finds the deliveries by
/// time in its B-tree on `received_at`, SQLite in a partial index of the succeeded ones: both
/// need the plain `received_at >= $1`, which they can use, beside the row comparison, which they
/// cannot. The `CROSS JOIN` makes SQLite's planner, which has no statistics, start from the
/// deliveries, as Postgres' does anyway; left to itself, it walked every succeeded prediction
/// through the status index.
pub(super) const CANDIDATES: &str = "\
    SELECT d.received_at, d.webhook_id, p.id, p.status, p.created_at, BODY AS body \
    FROM deliveries AS d CROSS JOIN predictions AS p \
    WHERE p.id = d.prediction_id AND d.status = 'succeeded' AND d.received_at >= $1 \
      AND (d.received_at, d.webhook_id) > ($1, $2) AND d.received_at < $4 \
      AND p.status = 'succeeded' \
      AND NOT EXISTS (SELECT 1 FROM archive_files AS f WHERE f.prediction_id = p.id) \
    ORDER BY d.received_at, d.webhook_id LIMIT $3";

/// One at a time, as SQLite records them (Postgres records a page in one statement).
pub(super) const ENQUEUE: &str = "\
    INSERT INTO archive_files (key, prediction_id, url, completed_at, state, next_at) \
    VALUES ($1, $2, $3, $4, 'queued', $4) ON CONFLICT (key) DO NOTHING";

/// `LOCK` is `FOR UPDATE SKIP LOCKED` on Postgres, where replicas take at once.
pub(super) const TAKE: &str = "\
    UPDATE archive_files SET leased_by = $1, leased_until = $2, attempts = attempts + 1 \
    WHERE key IN (SELECT key FROM archive_files \
                  WHERE state = 'queued' AND next_at <= $3 \
                    AND (leased_until IS NULL OR leased_until < $3) \
                  ORDER BY completed_at DESC LIMIT $4 LOCK) \
    RETURNING key, prediction_id, url, attempts";

pub(super) const RENEW: &str = "UPDATE archive_files SET leased_until = $3 \
     WHERE key = $1 AND leased_by = $2 AND state = 'queued'";

pub(super) const ARCHIVED: &str = "\
    UPDATE archive_files SET state = 'archived', size = $3, content_type = $4, archived_at = $5, \
        reason = NULL, leased_by = NULL, leased_until = NULL \
    WHERE key = $1 AND leased_by = $2 AND state = 'queued'";

pub(super) const FAILED: &str = "\
    UPDATE archive_files SET state = 'failed', reason = $3, leased_by = NULL, leased_until = NULL \
    WHERE key = $1 AND leased_by = $2 AND state = 'queued'";

pub(super) const RETRY: &str = "\
    UPDATE archive_files SET next_at = $3, reason = $4, leased_by = NULL, leased_until = NULL \
    WHERE key = $1 AND leased_by = $2 AND state = 'queued'";

/// Postgres' (SQLite's, led by the list, is its own): `AMONG` is its way to take a list of ids,
/// `BODY` its way to the latest state's body. The files already queued are looked up once for the
/// whole list, not once for each prediction (as `NOT EXISTS` was planned on a table still empty
/// when Postgres kept its plan: a scan of every file for every prediction that succeeded, a
/// thousand times a second under load).
pub(super) const CANDIDATES_AMONG: &str = "\
    SELECT p.id, p.status, p.created_at, BODY AS body FROM predictions AS p \
    WHERE p.id AMONG AND p.status = 'succeeded' \
      AND p.id NOT IN (SELECT f.prediction_id FROM archive_files AS f WHERE f.prediction_id AMONG)";

pub(super) const FILE_COLUMNS: &str = "key, prediction_id, url, state, reason, size, content_type";

pub(super) const USAGE: &str = "SELECT \
    (SELECT count(*) FROM archive_files WHERE state = 'queued'), \
    (SELECT CAST(coalesce(sum(size), 0) AS BIGINT) FROM archive_files WHERE state = 'archived')";

pub(super) const EXPIRE: &str = "\
    UPDATE archive_files SET state = 'expired', reason = 'archive_retention' \
    WHERE key IN (SELECT key FROM archive_files WHERE state = 'archived' AND archived_at < $1 \
                  LIMIT $2) \
    RETURNING key";
