//! The archiver: finds the predictions that succeeded, queues their output files, and fetches
//! them into the object store, a few at a time, the most recently completed first.
//!
//! Finding them needs nothing of ingest. Every second the archiver looks at the predictions this
//! process heard become terminal (the change feed the waiters hear, from every replica, through
//! `Waiters::finished`): a few index lookups. What that misses — a notification lost, a restart,
//! a full channel — a sweep finds every `SWEEP_EVERY`: every delivery records its status, so it
//! walks the `succeeded` deliveries received since the last sweep began, less the margin in
//! which a late batch may still commit, up to that margin before now (the next sweep's start);
//! the time it got through is kept in the database, so a restart looks back from there. A
//! prediction whose files are recorded is not looked at again. Each file is leased while it is
//! fetched, so replicas share the queue, and a replica that dies mid-download leaves a lease that
//! runs out and a file that another fetches again from the start.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ArchiveError;
use super::background::Background;
use super::fetch::{self, FetchError};
use super::{Archive, file_key, output_urls};
use crate::metrics;
use crate::store::{FileJob, Finish, Found, NewFile, Store, StoreError, StoredPrediction};

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
/// Deliveries looked at per query of a walk, and per transaction that records what they carry.
const PAGE: u32 = 500;
/// The predictions heard to finish are looked at this often: a file is queued within about a
/// second of its prediction's success, a batch of ids at a time.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// Ids of finished predictions held for the next look; past it they are left to the sweep.
pub const FINISHED_BOUND: usize = 20_000;
/// The queue is asked for files at least this often, besides whenever a walk queued some or a
/// fetch ended: retries come due, and other replicas queue files.
const TICK: Duration = Duration::from_secs(5);
/// The sweep, which looks back over the margin, runs this often.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
const USAGE_EVERY: Duration = Duration::from_secs(15);
/// How often copies past `INBOX_ARCHIVE_RETENTION` are deleted, at most.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);
/// How long downloads in flight have to remove what they uploaded once the archiver stops, or
/// once another replica has their file: within the supervisor's 5 s for a worker to end.
const STOP_GRACE: Duration = Duration::from_secs(4);
/// Where the sweeps keep the time they have got through.
const CHECKPOINT: &str = "archive";

/// A place in the walk through the deliveries: arrival time, then `webhook-id`.
#[derive(Debug, Clone)]
struct Place(OffsetDateTime, String);

pub struct Archiver {
    store: Arc<dyn Store>,
    archive: Arc<Archive>,
    client: reqwest::Client,
    holder: String,
    /// How late a batch can commit after its deliveries were received: a sweep looks this far
    /// back before the last one started.
    margin: Duration,
    /// Bytes archived in all, as last counted plus what this replica added since.
    used_bytes: AtomicI64,
    /// The ids of predictions this process hears become terminal (`Waiters::finished`).
    finished: tokio::sync::Mutex<Option<tokio::sync::mpsc::Receiver<String>>>,
    /// Where the downloads run, below the service's priority.
    background: Background,
    /// Cancelled when the archiver stops: its downloads end.
    stopping: CancellationToken,
}

impl Archiver {
    /// `request_timeout` bounds how late a delivery's batch may commit.
    pub fn new(
        store: Arc<dyn Store>,
        archive: Arc<Archive>,
        holder: String,
        request_timeout: Duration,
        finished: Option<tokio::sync::mpsc::Receiver<String>>,
    ) -> Result<Self, ArchiveError> {
        Ok(Self {
            background: Background::start().map_err(ArchiveError::Threads)?,
            stopping: CancellationToken::new(),
            client: fetch::client(&archive.settings.hosts).map_err(ArchiveError::Client)?,
            store,
            archive,
            holder,
            margin: request_timeout + Duration::from_secs(30),
            used_bytes: AtomicI64::new(0),
            finished: tokio::sync::Mutex::new(finished),
        })
    }

    /// Looks for files, sweeps, fetches and expires until `stop`; then the fetches in flight
    /// stop, removing what they had uploaded (a store would keep a multipart upload's parts,
    /// unseen and paid for), and their files' leases run out.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut fetches = JoinSet::new();
        tokio::select! {
            () = self.clone().work(&mut fetches) => {}
            () = stop.cancelled() => {}
        }
        self.stopping.cancel();
        let drained = async { while fetches.join_next().await.is_some() {} };
        if tokio::time::timeout(STOP_GRACE, drained).await.is_err() {
            tracing::warn!("downloads did not stop in time; a store may keep parts of their files");
        }
    }

    async fn work(self: Arc<Self>, fetches: &mut JoinSet<()>) {
        let (mut counted, mut expired, mut swept) =
            (None::<Instant>, None::<Instant>, None::<Instant>);
        // Whether the queue may hold files this replica could take: not asked again until
        // something may have changed that.
        let (mut may_take, mut taken) = (true, None::<Instant>);
        loop {
            if counted.is_none_or(|at| at.elapsed() >= USAGE_EVERY) {
                self.count_usage().await;
                counted = Some(Instant::now());
            }
            let looked = if swept.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) {
                swept = Some(Instant::now());
                self.sweep().await
            } else {
                self.look_at_the_finished().await
            };
            match looked {
                Ok(queued) => may_take |= queued > 0,
                Err(error) => {
                    tracing::warn!(%error, "the archiver could not look for new output files; it tries again shortly")
                }
            }
            let free = CONCURRENT_FETCHES - fetches.len();
            if free > 0 && may_take {
                taken = Some(Instant::now());
                match self.take(free).await {
                    Ok(jobs) => {
                        may_take = jobs.len() == free;
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
                Some(_) = fetches.join_next(), if !fetches.is_empty() => may_take = true,
                () = tokio::time::sleep(LOOK_EVERY) => {}
            }
            // Retries come due, and other replicas queue files: asked again now and then.
            if taken.is_none_or(|at| at.elapsed() >= TICK) {
                may_take = true;
            }
        }
    }

    /// Queues the files of the predictions this process heard become terminal since the last
    /// look, those that succeeded: how many files.
    async fn look_at_the_finished(&self) -> Result<u64, StoreError> {
        let mut ids = Vec::new();
        if let Some(finished) = self.finished.lock().await.as_mut() {
            while ids.len() < FINISHED_BOUND {
                match finished.try_recv() {
                    Ok(id) => ids.push(id),
                    Err(_) => break,
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let mut queued = 0;
        for ids in ids.chunks(PAGE as usize) {
            let found: Vec<Found> = self
                .store
                .archive_candidates_among(ids)
                .await?
                .iter()
                .map(|prediction| self.files_of(prediction))
                .collect();
            self.store.archive_enqueue(&found).await?;
            queued += found.iter().map(|f| f.files.len() as u64).sum::<u64>();
        }
        Ok(queued)
    }

    /// Looks again at every succeeded delivery since the last sweep began, less the margin for
    /// batches that committed late, up to that margin before now, and records the sweep in the
    /// database: what a restart, or a prediction the feed of finished ids missed, needs. How many
    /// files it queued.
    pub async fn sweep(&self) -> Result<u64, StoreError> {
        let started = OffsetDateTime::now_utc();
        let since = match self.store.checkpoint(CHECKPOINT).await? {
            Some(through) => through - self.margin,
            None => started - FIRST_LOOK_BACK,
        };
        // Up to where the next sweep begins: each delivery is looked at again once.
        let queued = self
            .walk(Place(since, String::new()), started - self.margin)
            .await?;
        self.store.set_checkpoint(CHECKPOINT, started).await?;
        Ok(queued)
    }

    /// Queues the files of the predictions that succeeded after `from` and before `until`, a
    /// page at a time, each page one transaction: how many files it queued.
    async fn walk(&self, from: Place, until: OffsetDateTime) -> Result<u64, StoreError> {
        let (mut place, mut queued) = (from, 0);
        loop {
            let page = self
                .store
                .archive_candidates((place.0, &place.1), until, PAGE)
                .await?;
            let Some(last) = page.last() else {
                return Ok(queued);
            };
            let full = page.len() == PAGE as usize;
            place = Place(last.received_at, last.webhook_id.clone());
            let mut found: Vec<Found> = Vec::with_capacity(page.len());
            for candidate in &page {
                // A prediction succeeded by two deliveries (a webhook and an answer) comes twice.
                if !found.iter().any(|f| f.id == candidate.prediction.id) {
                    found.push(self.files_of(&candidate.prediction));
                }
            }
            self.store.archive_enqueue(&found).await?;
            queued += found.iter().map(|f| f.files.len() as u64).sum::<u64>();
            if !full {
                return Ok(queued);
            }
        }
    }

    /// The files of one succeeded prediction to archive.
    fn files_of(&self, prediction: &StoredPrediction) -> Found {
        let body: Value = serde_json::from_str(&prediction.body).unwrap_or(Value::Null);
        let completed_at = body
            .get("completed_at")
            .and_then(Value::as_str)
            .and_then(|text| OffsetDateTime::parse(text, &Rfc3339).ok())
            .unwrap_or_else(OffsetDateTime::now_utc);
        // A URL on a host the list does not name is a link to elsewhere, left as it is.
        let files = body
            .get("output")
            .map(output_urls)
            .unwrap_or_default()
            .into_iter()
            .filter(|url| {
                reqwest::Url::parse(url)
                    .ok()
                    .and_then(|parsed| self.archive.settings.hosts.allows(&parsed))
                    .is_some()
            })
            .map(|url| NewFile {
                key: file_key(&prediction.id, &url),
                url,
            })
            .collect();
        Found {
            id: prediction.id.clone(),
            completed_at,
            files,
        }
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
                let (client, hosts, url, store, max_bytes) = (
                    self.client.clone(),
                    settings.hosts.clone(),
                    job.url.clone(),
                    self.archive.store.clone(),
                    settings.max_file_bytes,
                );
                let path = ObjectPath::from(job.key.as_str());
                let cancel = self.stopping.child_token();
                let stop = cancel.clone();
                let fetching = self.background.run(async move {
                    let place = (store.as_ref(), &path);
                    fetch::fetch(&client, &hosts, &url, place, max_bytes, &stop).await
                });
                let mut fetching = std::pin::pin!(async {
                    fetching.await.unwrap_or_else(|| {
                        Err(FetchError::Failed {
                            reason: "store_failed",
                            detail: "the download's task ended before it did".into(),
                        })
                    })
                });
                tokio::select! {
                    outcome = &mut fetching => outcome,
                    () = self.keep_lease(&job.key) => {
                        tracing::warn!(key = job.key, "lost the lease on a file while fetching it; another replica has it");
                        cancel.cancel();
                        let _ = tokio::time::timeout(STOP_GRACE, fetching).await;
                        return;
                    }
                }
            }
        };
        let (finish, label) = match outcome {
            // The service stops: the file's lease runs out, and it is fetched again.
            Err(FetchError::Stopped) => return,
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
