//! The reconciler: predictions whose webhooks never came are read from the platform's API and
//! brought up to date through the latest-state rule, so that no prediction stays `processing`
//! in the inbox for ever because a delivery was lost (the platform retries only the terminal one,
//! and only for about a minute).
//!
//! A sweep takes the unfinished predictions that have heard nothing for `Settings::after` and
//! whose next read is due, reads each at its `urls.get` when that names the platform's API (a
//! prediction or a training; anything else is skipped and never guessed at), and records an
//! answer that advances the state as a delivery of source `reconcile`; an answer that changes
//! nothing is not recorded. Each prediction then waits twice as long as before (up to
//! `MAX_INTERVAL`) while it stays unfinished. One replica sweeps at a time, under a lease, at
//! most `Settings::rps` reads a second; a `429`, a `5xx` or an unreachable API pauses the sweep
//! (for its `Retry-After` if it gives one), and never touches deliveries or reads.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode};
use reqwest::Url;
use time::OffsetDateTime;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::domain::{Members, Prediction, Progress, WebhookId};
use crate::ingest::{self, Writer};
use crate::metrics;
use crate::replicate::{Answer, Operation, PREDICTIONS, Platform, Segment, TRAININGS, V1};
use crate::store::{Due, NextRead, Source, Store, StoreError};

/// What the reconciler is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How long an unfinished prediction must have heard nothing before it is read
    /// (`INBOX_RECONCILE_AFTER`); also its first wait between reads.
    pub after: Duration,
    /// Reads a second, at most, across the replicas (`INBOX_RECONCILE_RPS`).
    pub rps: u32,
    /// How often the platform's list is read for predictions the inbox may have missed
    /// (`INBOX_RECONCILE_CATCHUP_EVERY`); besides, at start and after an outage. `None`: never.
    pub catchup_every: Option<Duration>,
    /// Whose predictions a catch-up imports (`INBOX_RECONCILE_IMPORT`).
    pub import: Import,
}

/// Whose predictions a catch-up imports when the inbox never heard of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Import {
    /// Those whose `webhook` is this inbox's `INBOX_WEBHOOK_URL`.
    Ours,
    /// Every prediction of the account.
    All,
}

/// The longest wait between two reads of one unfinished prediction.
pub const MAX_INTERVAL: Duration = Duration::from_secs(600);
/// The platform's `404`s in a row, spanning at least `after` × `MISSING_SPAN_AFTERS / 2`, after
/// which a prediction is marked and never read again: a fresh prediction can be `404` for a
/// moment.
const MISSING_ANSWERS: i32 = 3;
const MISSING_SPAN_HALF_AFTERS: u32 = 5;
/// Predictions read in one page of a sweep.
const PAGE: u32 = 100;
const LEASE: &str = "reconciler";
const LEASE_TTL: Duration = Duration::from_secs(60);
/// How often the holder renews the lease while it reads, at most: a process that asked for it
/// waits about this long, plus one read, for the holder to give it up.
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// How long an ask for the lease lasts unless renewed: a command that dies while it waits stops
/// holding up the replicas after this.
const ASK_TTL: Duration = Duration::from_secs(10);
/// How often a process that asked for the lease tries to take it.
const ASK_EVERY: Duration = Duration::from_millis(200);
/// The pause after a `429` or `5xx` without `Retry-After`, or an unreachable API: doubled while
/// it lasts.
const PAUSE_MIN: Duration = Duration::from_secs(1);
const PAUSE_MAX: Duration = Duration::from_secs(300);
/// Where the catch-up keeps the time it has listed through.
const CATCHUP: &str = "catchup";
/// Listed again before the checkpoint: predictions created just before it may not have been
/// listed yet when it was set.
const CATCHUP_MARGIN: Duration = Duration::from_secs(300);
/// How far back the first catch-up on a database looks: the platform removes an API prediction's
/// data after an hour.
const FIRST_CATCHUP: Duration = Duration::from_secs(3600);
/// The platform retries a terminal delivery for about this long: an outage longer than this has
/// lost deliveries, and a catch-up follows it.
const RETRY_WINDOW: Duration = Duration::from_secs(60);

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Read, and recorded: the answer advanced the state (or, in a catch-up, was imported).
    pub advanced: u64,
    /// Read; the answer changed nothing.
    pub unchanged: u64,
    /// The platform answered 404.
    pub missing: u64,
    /// Marked: never read again.
    pub marked: u64,
    /// Not the platform's: skipped, and marked.
    pub skipped: u64,
}

/// Why a sweep stopped before it was done.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the platform asked to slow down or failed; pausing for {0:?}")]
    Paused(Duration),
    #[error("another replica holds the reconciler's lease")]
    NotHolder,
    #[error("another process holds the reconciler's lease and did not hand it over within {0:?}")]
    NotHandedOver(Duration),
}

pub struct Reconciler {
    store: Arc<dyn Store>,
    platform: Platform,
    writer: Writer,
    settings: Settings,
    holder: String,
    /// When this process last took or renewed the lease; `None` while it does not hold it.
    renewed: Mutex<Option<Instant>>,
    /// When the next read may start, for the rate.
    next_slot: Mutex<Instant>,
    /// The pause the next failure waits, doubled while failures go on.
    pause: Mutex<Duration>,
}

impl Reconciler {
    pub fn new(
        store: Arc<dyn Store>,
        platform: Platform,
        writer: Writer,
        settings: Settings,
        holder: String,
    ) -> Self {
        Self {
            store,
            platform,
            writer,
            settings,
            holder,
            renewed: Mutex::new(None),
            next_slot: Mutex::new(Instant::now()),
            pause: Mutex::new(PAUSE_MIN),
        }
    }

    /// Sweeps whenever something may be due, while this replica holds the lease; catches up at
    /// start, every `catchup_every`, and once the database answers again after an outage longer
    /// than the platform's retries.
    pub async fn run(self: Arc<Self>) {
        let tick = (self.settings.after / 2).min(Duration::from_secs(5));
        let mut caught_up: Option<Instant> = None;
        let mut outage_since: Option<Instant> = None;
        loop {
            let catch_up = match (self.settings.catchup_every, caught_up) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(every), Some(at)) => at.elapsed() >= every,
            };
            if catch_up {
                match self.catch_up().await {
                    Ok(swept) => {
                        caught_up = Some(Instant::now());
                        if swept != Swept::default() {
                            tracing::info!(?swept, "caught up with the platform's list");
                        }
                    }
                    Err(Stopped::NotHolder) => caught_up = Some(Instant::now()),
                    // Tried again after the pause the platform asked for, before any sweep.
                    Err(Stopped::Paused(pause)) => {
                        tracing::warn!(
                            ?pause,
                            "the catch-up pauses: the platform asked to slow down, failed or could not be reached"
                        );
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "the catch-up stopped; it runs again later")
                    }
                }
            }
            let swept = self.sweep().await;
            match (&swept, outage_since) {
                (Err(Stopped::Store(_)), None) => outage_since = Some(Instant::now()),
                (Err(Stopped::Store(_)), Some(_)) => {}
                (_, Some(since)) => {
                    if since.elapsed() > RETRY_WINDOW && self.settings.catchup_every.is_some() {
                        tracing::info!(
                            "the database is back after longer than the platform retries: catching up"
                        );
                        caught_up = None;
                    }
                    outage_since = None;
                }
                (_, None) => {}
            }
            let wait = match swept {
                Ok(swept) => {
                    if swept != Swept::default() {
                        tracing::info!(?swept, "reconciled predictions from the platform");
                    }
                    tick
                }
                Err(Stopped::Paused(pause)) => {
                    tracing::warn!(
                        ?pause,
                        "the reconciler pauses: the platform asked to slow down, failed or could not be reached"
                    );
                    pause
                }
                Err(Stopped::NotHolder | Stopped::NotHandedOver(_)) => tick,
                Err(Stopped::Store(error)) => {
                    tracing::warn!(%error, "the reconciler's sweep failed; it runs again later");
                    tick
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Reads every prediction due now, page by page, under the lease.
    pub async fn sweep(&self) -> Result<Swept, Stopped> {
        let mut swept = Swept::default();
        loop {
            self.hold().await?;
            let now = OffsetDateTime::now_utc();
            let due = self
                .store
                .due_for_reconcile(now - self.settings.after, now, PAGE)
                .await?;
            let full = due.len() == PAGE as usize;
            for due in due {
                self.reconcile(due, &mut swept).await?;
            }
            if !full {
                return Ok(swept);
            }
        }
    }

    /// Lists the platform's predictions created since the checkpoint (less a margin), and reads
    /// and records those this inbox should know and has not seen finish: imported if it never
    /// heard of them. The most recently completed first, so that files and logs are fetched
    /// before the platform removes them.
    pub async fn catch_up(&self) -> Result<Swept, Stopped> {
        self.catch_up_since(None).await
    }

    /// `catch_up`, from `since` rather than the checkpoint (`prediction-inbox reconcile --since`).
    pub async fn catch_up_since(&self, since: Option<OffsetDateTime>) -> Result<Swept, Stopped> {
        self.hold().await?;
        let started = OffsetDateTime::now_utc();
        let since = match since {
            Some(since) => since,
            None => match self.store.checkpoint(CATCHUP).await? {
                Some(through) => through - CATCHUP_MARGIN,
                None => started - FIRST_CATCHUP,
            },
        };
        let mut url = self.platform.url(&[V1, PREDICTIONS]);
        let since_text = since
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        url.query_pairs_mut()
            .append_pair("created_after", &since_text);
        let mut candidates: Vec<(String, Option<String>)> = Vec::new();
        let mut next = Some(url);
        while let Some(page) = next.take() {
            self.turn().await?;
            let answer = match self.platform.get_url(Operation::List, page).await {
                Ok(answer) => answer,
                Err(_) => return Err(Stopped::Paused(self.pause_after(None).await)),
            };
            if answer.status == StatusCode::TOO_MANY_REQUESTS || answer.status.is_server_error() {
                return Err(Stopped::Paused(self.pause_after(Some(&answer)).await));
            }
            let Ok(list) = serde_json::from_slice::<serde_json::Value>(&answer.body) else {
                tracing::warn!(
                    status = answer.status.as_u16(),
                    "the platform's list could not be read"
                );
                return Ok(Swept::default());
            };
            for item in list["results"].as_array().into_iter().flatten() {
                let Some(id) = item["id"].as_str() else {
                    continue;
                };
                let ours = item["webhook"].as_str() == Some(self.platform.webhook_url());
                if ours || self.settings.import == Import::All {
                    let completed = item["completed_at"].as_str().map(str::to_owned);
                    candidates.push((id.to_owned(), completed));
                }
            }
            next = list["next"].as_str().and_then(|next| Url::parse(next).ok());
        }
        // Completed ones first, the latest first; unfinished ones after.
        candidates.sort_by(|a, b| b.1.cmp(&a.1));
        let mut swept = Swept::default();
        for (id, _) in candidates {
            if self.store.finished(&id).await? == Some(true) {
                continue;
            }
            let Some(read_id) = Segment::parse(&id) else {
                continue;
            };
            let stored = self.store.prediction(&id).await?;
            let answer = self.read(PREDICTIONS, read_id).await?;
            if !answer.status.is_success() {
                continue;
            }
            let stored = stored.map(|stored| stored.body);
            match self.record(stored.as_deref(), &answer).await? {
                Recorded::Advanced { .. } => {
                    swept.advanced += 1;
                    metrics::reconciled(if stored.is_some() {
                        "advanced"
                    } else {
                        "imported"
                    });
                }
                Recorded::Unchanged => swept.unchanged += 1,
            }
        }
        self.store.set_checkpoint(CATCHUP, started).await?;
        Ok(swept)
    }

    /// Reads one prediction `id` now, whatever its schedule: `prediction-inbox reconcile --id`.
    pub async fn one(&self, id: &str) -> Result<Swept, Stopped> {
        let mut swept = Swept::default();
        let Some(prediction) = self.store.prediction(id).await? else {
            return Ok(swept);
        };
        self.reconcile(
            Due {
                prediction,
                last: None,
            },
            &mut swept,
        )
        .await?;
        Ok(swept)
    }

    async fn reconcile(&self, due: Due, swept: &mut Swept) -> Result<(), Stopped> {
        let id = due.prediction.id.clone();
        let now = OffsetDateTime::now_utc();
        let target = self.target(&due.prediction.body);
        let Some((kind, read_id)) = target
            .as_ref()
            .and_then(|(kind, id)| Some((kind.clone(), Segment::parse(id)?)))
        else {
            swept.skipped += 1;
            metrics::reconciled("skipped");
            let next = NextRead {
                at: now,
                interval: self.settings.after,
                missing_since: None,
                missing: 0,
                marked: Some("not_the_platform".into()),
            };
            return Ok(self.store.schedule_reconcile(&id, &next).await?);
        };
        let answer = self.read(kind, read_id).await?;
        let interval = due.last.as_ref().map_or(self.settings.after, |last| {
            (last.interval * 2).clamp(self.settings.after, MAX_INTERVAL)
        });
        let mut next = NextRead {
            at: now + interval,
            interval,
            missing_since: None,
            missing: 0,
            marked: None,
        };
        if answer.status == StatusCode::NOT_FOUND {
            swept.missing += 1;
            metrics::reconciled("missing");
            let last = due.last.as_ref();
            next.missing = last.map_or(0, |last| last.missing) + 1;
            next.missing_since = Some(last.and_then(|last| last.missing_since).unwrap_or(now));
            let span = self.settings.after * MISSING_SPAN_HALF_AFTERS / 2;
            let missing_for = next.missing_since.map_or(Duration::ZERO, |since| {
                Duration::try_from(now - since).unwrap_or(Duration::ZERO)
            });
            if next.missing >= MISSING_ANSWERS && missing_for >= span {
                swept.marked += 1;
                metrics::reconciled("marked");
                next.marked = Some("not_found".into());
                // Never due again for being marked; its time says when it was.
                next.at = now;
                tracing::warn!(prediction_id = %id, "the platform has not known this prediction for minutes; it is no longer read");
            }
            return Ok(self.store.schedule_reconcile(&id, &next).await?);
        }
        if !answer.status.is_success() {
            tracing::warn!(prediction_id = %id, status = answer.status.as_u16(), "the platform refused to read a prediction; trying again later");
            return Ok(self.store.schedule_reconcile(&id, &next).await?);
        }
        match self.record(Some(&due.prediction.body), &answer).await? {
            Recorded::Advanced { terminal } => {
                swept.advanced += 1;
                metrics::reconciled("advanced");
                if terminal {
                    return Ok(());
                }
            }
            Recorded::Unchanged => {
                swept.unchanged += 1;
                metrics::reconciled("unchanged");
            }
        }
        Ok(self.store.schedule_reconcile(&id, &next).await?)
    }

    /// Where a stored prediction's `urls.get` reads it on the platform's API: a prediction's or
    /// a training's route, and its id. `None` for anything else.
    fn target(&self, body: &str) -> Option<(Segment<'static>, String)> {
        let members = Members::parse(body)?;
        let urls = Members::parse(members.get("urls")?.get())?;
        let get: String = serde_json::from_str(urls.get("get")?.get()).ok()?;
        let path = self.platform.api_path(&Url::parse(&get).ok()?)?;
        match path.as_slice() {
            [v1, kind, id] if v1 == V1.as_str() => {
                let kind = [PREDICTIONS, TRAININGS]
                    .into_iter()
                    .find(|k| k.as_str() == kind)?;
                Some((kind, id.clone()))
            }
            _ => None,
        }
    }

    /// Records `answer` if it advances the stored state. A terminal answer whose data was
    /// removed (`output` null) keeps the stored output: it is all there is of it.
    async fn record(&self, stored: Option<&str>, answer: &Answer) -> Result<Recorded, StoreError> {
        let Ok(text) = std::str::from_utf8(&answer.body) else {
            return Ok(Recorded::Unchanged);
        };
        let Ok(after) = Prediction::parse(text) else {
            return Ok(Recorded::Unchanged);
        };
        // The order's first keys: what the platform's state holds, whoever sent it and when.
        let key = |p: &Prediction| {
            let progress = Progress::of(p, WebhookId::made("reconcile".into()), 0);
            (progress.rank, progress.logs_len, progress.output_len)
        };
        // Unknown to the inbox: anything the platform says is more than nothing.
        if let Some(stored) = stored {
            match Prediction::parse(stored) {
                Ok(before) if key(&after) > key(&before) => {}
                _ => return Ok(Recorded::Unchanged),
            }
        }
        let terminal = after.status.as_ref().is_some_and(|s| s.is_terminal());
        let text = stored
            .and_then(|stored| keep_the_stored_output(stored, text))
            .unwrap_or_else(|| text.to_owned());
        let deadline = Instant::now() + Duration::from_secs(30);
        match ingest::record_answer(&self.writer, Source::Reconcile, text, deadline).await {
            Ok(_) => Ok(Recorded::Advanced { terminal }),
            Err(ingest::IngestError::Store(error)) => Err(unwrap_store(error)),
            Err(error) => {
                tracing::warn!(%error, "a reconciled answer could not be recorded");
                Ok(Recorded::Unchanged)
            }
        }
    }

    /// Reads one prediction (or training) from the platform in the next slot of the rate: its
    /// answer, unless the platform asked to slow down, failed or could not be reached, which
    /// pauses the reconciler.
    async fn read(&self, kind: Segment<'static>, id: Segment<'_>) -> Result<Answer, Stopped> {
        self.turn().await?;
        let answer = self
            .platform
            .call(
                Operation::Get,
                Method::GET,
                &[V1, kind, id],
                HeaderMap::new(),
                None,
            )
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(_) => return Err(Stopped::Paused(self.pause_after(None).await)),
        };
        if answer.status == StatusCode::TOO_MANY_REQUESTS || answer.status.is_server_error() {
            return Err(Stopped::Paused(self.pause_after(Some(&answer)).await));
        }
        *self.pause.lock().await = PAUSE_MIN;
        Ok(answer)
    }

    /// For a command run beside serving replicas: takes the lease, asking its holder to hand
    /// it over, and waits until it has — or, for a holder that no longer renews, until its lease
    /// has run out.
    pub async fn take_over(&self) -> Result<(), Stopped> {
        let waited = Instant::now();
        let patience = LEASE_TTL + ASK_TTL;
        loop {
            match self.hold().await {
                Err(Stopped::NotHolder) => {}
                held => return held,
            }
            if waited.elapsed() >= patience {
                self.give_back().await?;
                return Err(Stopped::NotHandedOver(patience));
            }
            self.store
                .ask_for_lease(LEASE, &self.holder, ASK_TTL)
                .await?;
            tokio::time::sleep(ASK_EVERY).await;
        }
    }

    /// Gives up the lease, or the ask for it: the replicas' reconcilers take it at their next
    /// turn.
    pub async fn give_back(&self) -> Result<(), StoreError> {
        *self.renewed.lock().await = None;
        self.store.release_lease(LEASE, &self.holder).await
    }

    /// Makes sure this process holds the lease, renewing it at most every `RENEW_EVERY`; a
    /// holder another process has asked gives it up here. Taking it afresh, it waits a gap of
    /// the rate before its first read, so the rate holds across the hand-over.
    async fn hold(&self) -> Result<(), Stopped> {
        let mut renewed = self.renewed.lock().await;
        if renewed.is_some_and(|at| at.elapsed() < RENEW_EVERY) {
            return Ok(());
        }
        if !self.store.lease(LEASE, &self.holder, LEASE_TTL).await? {
            *renewed = None;
            return Err(Stopped::NotHolder);
        }
        if renewed.is_none() {
            let mut next = self.next_slot.lock().await;
            *next = (*next).max(Instant::now() + self.gap());
        }
        *renewed = Some(Instant::now());
        Ok(())
    }

    /// Waits for this process's next read: while it holds the lease, in the next slot of the
    /// rate.
    async fn turn(&self) -> Result<(), Stopped> {
        self.hold().await?;
        let slot = {
            let mut next = self.next_slot.lock().await;
            let slot = (*next).max(Instant::now());
            *next = slot + self.gap();
            slot
        };
        tokio::time::sleep_until(slot).await;
        Ok(())
    }

    /// The least time between two reads.
    fn gap(&self) -> Duration {
        Duration::from_secs(1) / self.settings.rps.max(1)
    }

    /// How long to pause after a failure: the platform's `Retry-After` in seconds, or the current
    /// pause, doubled for the next one.
    async fn pause_after(&self, answer: Option<&Answer>) -> Duration {
        let mut pause = self.pause.lock().await;
        let asked = answer
            .and_then(|a| a.retry_after.as_ref())
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let now = asked.unwrap_or(*pause);
        *pause = (*pause * 2).min(PAUSE_MAX);
        now.min(PAUSE_MAX)
    }
}

enum Recorded {
    Advanced { terminal: bool },
    Unchanged,
}

fn unwrap_store(error: Arc<StoreError>) -> StoreError {
    Arc::try_unwrap(error)
        .unwrap_or_else(|shared| StoreError::Unavailable(sqlx::Error::Protocol(shared.to_string())))
}

/// `answer` with the stored `output` in place of its `null`, when it is a terminal answer whose
/// data was removed and the stored state has an output; `None` otherwise.
fn keep_the_stored_output(stored: &str, answer: &str) -> Option<String> {
    let answered = Members::parse(answer)?;
    let removed = answered
        .get("data_removed")
        .is_some_and(|v| v.get() == "true");
    let null = answered.get("output").is_none_or(|v| v.get() == "null");
    if !(removed && null) {
        return None;
    }
    let kept = Members::parse(stored)?.get("output")?;
    if kept.get() == "null" {
        return None;
    }
    Some(answered.write(|key, _| (key == "output").then(|| kept.get().to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_output_never_replaces_a_stored_one() {
        let stored = r#"{"id":"p","status":"processing","output":["a","b"]}"#;
        let removed = r#"{"id":"p","status":"succeeded","output":null,"data_removed":true}"#;
        assert_eq!(
            keep_the_stored_output(stored, removed).unwrap(),
            r#"{"id":"p","status":"succeeded","output":["a","b"],"data_removed":true}"#
        );
        let kept = r#"{"id":"p","status":"succeeded","output":["c"],"data_removed":false}"#;
        assert_eq!(keep_the_stored_output(stored, kept), None);
        let nothing = r#"{"id":"p","status":"processing","output":null}"#;
        assert_eq!(keep_the_stored_output(nothing, removed), None);
    }
}
