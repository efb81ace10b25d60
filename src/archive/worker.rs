//! The archiver: finds the predictions that succeeded, queues their output files, and fetches
//! them into the object store, a few at a time, the most recently completed first.
//!
//! Finding them needs nothing of ingest: every delivery records its status, so the predictions
//! that succeeded since the last pass are those with a `succeeded` delivery received since then
//! (less a margin for batches that committed late). A pass runs at once when a prediction becomes
//! terminal, and every few seconds besides; the time it has got through is kept in the database,
//! so a restart looks back from there. Each file is leased while it is fetched, so replicas share
//! the queue, and a replica that dies mid-download leaves a lease that runs out and a file that
//! another fetches again from the start.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::fetch::{self, FetchError};
use super::{Archive, file_key, output_urls};
use crate::metrics;
use crate::store::{FileJob, Finish, NewFile, Store, StoreError, StoredPrediction};

/// Files fetched at once by one replica: what bounds its memory (`fetch::PART_BYTES` each, about
/// twice) and its share of the network.
pub const CONCURRENT_FETCHES: usize = 4;
/// A file's lease, renewed every third of it while the file streams in.
const LEASE_TTL: Duration = Duration::from_secs(30);
/// Attempts at a file whose host fails or cannot be reached, the first included; the waits
/// between them double from `RETRY_FIRST` (5 s, 10 s, … about 2.5 min in all).
const ATTEMPTS: i32 = 6;
const RETRY_FIRST: Duration = Duration::from_secs(5);
/// How far back the first pass on a database looks: the platform's files live about an hour.
const FIRST_LOOK_BACK: Duration = Duration::from_secs(2 * 3600);
/// Predictions looked at per query of a pass.
const PAGE: u32 = 200;
/// A pass when nothing wakes the archiver sooner.
const TICK: Duration = Duration::from_secs(5);
const USAGE_EVERY: Duration = Duration::from_secs(15);
/// How often copies past `INBOX_ARCHIVE_RETENTION` are deleted, at most.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);
/// Where the passes keep the time they have got through.
const CHECKPOINT: &str = "archive";

pub struct Archiver {
    store: Arc<dyn Store>,
    archive: Arc<Archive>,
    client: reqwest::Client,
    holder: String,
    /// How late a batch can commit after its deliveries were received: a pass looks this far
    /// back before the last one started.
    margin: Duration,
    /// Bytes archived in all, as last counted plus what this replica added since.
    used_bytes: AtomicI64,
}

impl Archiver {
    /// `request_timeout` bounds how late a delivery's batch may commit.
    pub fn new(
        store: Arc<dyn Store>,
        archive: Arc<Archive>,
        holder: String,
        request_timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: fetch::client(&archive.settings.hosts)?,
            store,
            archive,
            holder,
            margin: request_timeout + Duration::from_secs(30),
            used_bytes: AtomicI64::new(0),
        })
    }

    /// Runs the passes and the fetches for as long as it is polled; the fetches in flight stop
    /// with it, and their leases run out.
    pub async fn run(self: Arc<Self>) {
        let wake = Arc::new(Notify::new());
        let mut background = JoinSet::new();
        background.spawn(wake_on_terminal(self.store.clone(), wake.clone()));
        let mut fetches = JoinSet::new();
        let (mut counted, mut expired) = (None::<Instant>, None::<Instant>);
        // Due at start, when a prediction becomes terminal, and every tick.
        let (mut passed, mut woken) = (None::<Instant>, true);
        loop {
            if counted.is_none_or(|at| at.elapsed() >= USAGE_EVERY) {
                self.count_usage().await;
                counted = Some(Instant::now());
            }
            if woken || passed.is_none_or(|at| at.elapsed() >= TICK) {
                if let Err(error) = self.pass().await {
                    tracing::warn!(%error, "the archiver could not look for new output files; it tries again shortly");
                }
                (passed, woken) = (Some(Instant::now()), false);
            }
            let free = CONCURRENT_FETCHES - fetches.len();
            if free > 0 {
                match self.take(free).await {
                    Ok(jobs) => {
                        for job in jobs {
                            fetches.spawn(self.clone().archive(job));
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "the archiver could not take files from its queue")
                    }
                }
            }
            let expire_every = self
                .archive
                .settings
                .retention
                .map(|kept| kept.min(EXPIRE_EVERY));
            if expire_every.is_some_and(|every| expired.is_none_or(|at| at.elapsed() >= every)) {
                self.expire().await;
                expired = Some(Instant::now());
            }
            tokio::select! {
                () = wake.notified() => woken = true,
                Some(_) = fetches.join_next(), if !fetches.is_empty() => {}
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Looks at every prediction that succeeded since the last pass and queues its files:
    /// how many it looked at.
    pub async fn pass(&self) -> Result<u64, StoreError> {
        let started = OffsetDateTime::now_utc();
        let since = match self.store.checkpoint(CHECKPOINT).await? {
            Some(through) => through - self.margin,
            None => started - FIRST_LOOK_BACK,
        };
        let mut looked_at = 0;
        loop {
            let found = self.store.archive_candidates(since, PAGE).await?;
            let full = found.len() == PAGE as usize;
            for prediction in found {
                self.queue(&prediction).await?;
                looked_at += 1;
            }
            if !full {
                break;
            }
        }
        self.store.set_checkpoint(CHECKPOINT, started).await?;
        Ok(looked_at)
    }

    /// Queues the files of one succeeded prediction; a URL no list entry allows is recorded as
    /// failed at once, and never fetched.
    async fn queue(&self, prediction: &StoredPrediction) -> Result<(), StoreError> {
        let body: Value = serde_json::from_str(&prediction.body).unwrap_or(Value::Null);
        let completed_at = body
            .get("completed_at")
            .and_then(Value::as_str)
            .and_then(|text| OffsetDateTime::parse(text, &Rfc3339).ok())
            .unwrap_or_else(OffsetDateTime::now_utc);
        let files: Vec<NewFile> = body
            .get("output")
            .map(output_urls)
            .unwrap_or_default()
            .into_iter()
            .map(|url| {
                let allowed = reqwest::Url::parse(&url)
                    .ok()
                    .and_then(|parsed| self.archive.settings.hosts.allows(&parsed))
                    .is_some();
                if !allowed {
                    metrics::archive_file("failed", Some("host_not_allowed"), 0);
                }
                NewFile {
                    key: file_key(&prediction.id, &url),
                    refused: (!allowed).then_some("host_not_allowed"),
                    url,
                }
            })
            .collect();
        self.store
            .archive_enqueue(&prediction.id, completed_at, &files)
            .await
    }

    async fn take(&self, limit: usize) -> Result<Vec<FileJob>, StoreError> {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        self.store
            .archive_take(&self.holder, OffsetDateTime::now_utc(), LEASE_TTL, limit)
            .await
    }

    /// Fetches one leased file into the store, renewing its lease meanwhile, and records how it
    /// went.
    async fn archive(self: Arc<Self>, job: FileJob) {
        let settings = &self.archive.settings;
        let outcome = match settings.quota_bytes {
            Some(quota)
                if self.used_bytes.load(Ordering::Relaxed)
                    >= i64::try_from(quota).unwrap_or(i64::MAX) =>
            {
                Err(FetchError::Refused("quota"))
            }
            _ => {
                let path = ObjectPath::from(job.key.as_str());
                let fetching = fetch::fetch(
                    &self.client,
                    &settings.hosts,
                    &job.url,
                    self.archive.store.as_ref(),
                    &path,
                    settings.max_file_bytes,
                );
                tokio::select! {
                    outcome = fetching => outcome,
                    () = self.keep_lease(&job.key) => {
                        tracing::warn!(key = job.key, "lost the lease on a file while fetching it; another replica has it");
                        return;
                    }
                }
            }
        };
        let (finish, label) = match outcome {
            Ok(fetched) => {
                let size = i64::try_from(fetched.size).unwrap_or(i64::MAX);
                self.used_bytes.fetch_add(size, Ordering::Relaxed);
                metrics::archive_file("archived", None, fetched.size);
                tracing::info!(
                    prediction_id = job.prediction_id,
                    key = job.key,
                    size,
                    "archived an output file"
                );
                (
                    Finish::Archived {
                        size,
                        content_type: fetched.content_type,
                    },
                    "archived",
                )
            }
            Err(FetchError::Failed { reason, detail }) if job.attempts < ATTEMPTS => {
                let wait =
                    RETRY_FIRST * 2u32.pow(u32::try_from(job.attempts - 1).unwrap_or(0).min(10));
                metrics::archive_file("retried", Some(reason), 0);
                tracing::warn!(
                    prediction_id = job.prediction_id,
                    key = job.key,
                    reason,
                    detail,
                    attempt = job.attempts,
                    ?wait,
                    "fetching an output file failed; it is tried again"
                );
                (
                    Finish::Retry {
                        at: OffsetDateTime::now_utc() + wait,
                        reason: reason.to_owned(),
                    },
                    "retried",
                )
            }
            Err(error) => {
                let reason = error.reason();
                metrics::archive_file("failed", Some(reason), 0);
                tracing::warn!(prediction_id = job.prediction_id, key = job.key, reason, %error, "an output file was not archived; reads keep the platform's URL");
                (
                    Finish::Failed {
                        reason: reason.to_owned(),
                    },
                    "failed",
                )
            }
        };
        match self
            .store
            .archive_finish(&job.key, &self.holder, &finish)
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                key = job.key,
                outcome = label,
                "a file's lease ran out before its outcome was recorded; it is fetched again"
            ),
            Err(error) => {
                tracing::warn!(key = job.key, %error, "could not record a file's outcome; it is fetched again when its lease runs out")
            }
        }
    }

    /// Renews the lease on `key` every third of its life; returns only once it is lost.
    async fn keep_lease(&self, key: &str) {
        loop {
            tokio::time::sleep(LEASE_TTL / 3).await;
            let until = OffsetDateTime::now_utc() + LEASE_TTL;
            match self.store.archive_renew(key, &self.holder, until).await {
                Ok(true) => {}
                Ok(false) => return,
                // Tried again at the next third: the lease has two left.
                Err(error) => tracing::warn!(key, %error, "could not renew a file's lease"),
            }
        }
    }

    /// Deletes the copies archived longer ago than `INBOX_ARCHIVE_RETENTION`.
    async fn expire(&self) {
        let Some(retention) = self.archive.settings.retention else {
            return;
        };
        loop {
            let before = OffsetDateTime::now_utc() - retention;
            let keys = match self.store.archive_expire(before, PAGE).await {
                Ok(keys) => keys,
                Err(error) => {
                    tracing::warn!(%error, "could not expire archived files");
                    return;
                }
            };
            for key in &keys {
                match self
                    .archive
                    .store
                    .delete(&ObjectPath::from(key.as_str()))
                    .await
                {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                        metrics::archive_file("expired", None, 0);
                    }
                    Err(error) => {
                        tracing::warn!(key, %error, "could not delete an expired file's copy")
                    }
                }
            }
            if keys.len() < PAGE as usize {
                return;
            }
        }
    }

    async fn count_usage(&self) {
        match self.store.archive_usage().await {
            Ok(usage) => {
                self.used_bytes
                    .store(usage.archived_bytes, Ordering::Relaxed);
                metrics::archive_usage(
                    usage.queued,
                    usage.archived_bytes,
                    self.archive.settings.quota_bytes,
                );
            }
            Err(error) => tracing::warn!(%error, "could not count the archive's files"),
        }
    }
}

/// Wakes the archiver whenever a prediction becomes terminal (or changes may have been missed),
/// so a succeeded prediction's files are queued at once rather than at the next tick.
async fn wake_on_terminal(store: Arc<dyn Store>, wake: Arc<Notify>) {
    loop {
        let mut feed = match store.change_feed().await {
            Ok(feed) => feed,
            Err(_) => {
                tokio::time::sleep(TICK).await;
                continue;
            }
        };
        loop {
            match feed.next().await {
                Ok(Some(change)) if !change.terminal => {}
                Ok(_) => wake.notify_one(),
                Err(_) => break,
            }
        }
        tokio::time::sleep(TICK).await;
    }
}
