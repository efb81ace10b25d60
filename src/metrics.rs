//! Prometheus metrics: the names, their help, and the one process-wide recorder. Every label value
//! comes from a fixed set (outcomes, reasons, route templates, methods, known statuses), never from
//! input, so no series can multiply without bound.

use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use metrics::{
    Counter, Histogram, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const DELIVERIES: &str = "inbox_deliveries_total";
pub const INGEST_DURATION: &str = "inbox_ingest_duration_seconds";
pub const HTTP_REQUESTS: &str = "inbox_http_requests_total";
pub const HTTP_DURATION: &str = "inbox_http_request_duration_seconds";
pub const WAITERS: &str = "inbox_waiters";
pub const POOL_CONNECTIONS: &str = "inbox_db_pool_connections";
pub const PREDICTIONS: &str = "inbox_predictions";
pub const BATCH_SIZE: &str = "inbox_ingest_batch_size";
pub const WORKER_UP: &str = "inbox_worker_up";
pub const WORKER_RESTARTS: &str = "inbox_worker_restarts_total";
pub const CONNECTIONS_REFUSED: &str = "inbox_connections_refused_total";
pub const BODY_BUDGET: &str = "inbox_body_budget_available_bytes";
pub const PRUNED: &str = "inbox_pruned_total";
pub const UPSTREAM_REQUESTS: &str = "inbox_upstream_requests_total";
pub const UPSTREAM_DURATION: &str = "inbox_upstream_duration_seconds";
pub const CREATES: &str = "inbox_creates_total";
pub const RECONCILED: &str = "inbox_reconciled_total";
pub const OLDEST_UNFINISHED: &str = "inbox_oldest_unfinished_seconds";
pub const ARCHIVE_FILES: &str = "inbox_archive_files_total";
pub const ARCHIVE_BYTES: &str = "inbox_archive_bytes_total";
pub const ARCHIVE_FAILURES: &str = "inbox_archive_failures_total";
pub const ARCHIVE_QUEUED: &str = "inbox_archive_queued_files";
pub const ARCHIVE_USED: &str = "inbox_archive_used_bytes";
pub const ARCHIVE_QUOTA: &str = "inbox_archive_quota_bytes";

/// Seconds; from well under a millisecond (an ingest) to a full `Prefer: wait`.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Deliveries per transaction, up to the writer's largest batch (256).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Why a delivery was refused, as the `reason` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Missing or malformed webhook headers.
    Headers,
    /// `webhook-timestamp` outside the tolerance.
    Timestamp,
    /// No signature matches.
    Signature,
    /// Verified, but not a prediction object.
    Body,
    /// Over `INBOX_MAX_BODY_BYTES`.
    TooLarge,
}

impl RejectReason {
    fn label(self) -> &'static str {
        match self {
            Self::Headers => "headers",
            Self::Timestamp => "timestamp",
            Self::Signature => "signature",
            Self::Body => "body",
            Self::TooLarge => "too_large",
        }
    }
}

/// How often recorded histogram samples are folded into their buckets when nobody scrapes.
pub const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// Folds the histogram samples recorded since the last time into their buckets, every
/// `UPKEEP_PERIOD`, for as long as it runs. The recorder keeps every sample until then, or until a
/// scrape. The exporter spawns a task for this only with its own listener or push gateway; with
/// `build_recorder`, as here, it is the caller's job (its docs, "Upkeep and maintenance"). Without
/// it, a process nobody scraped grew by about 40 bytes a delivery.
pub async fn keep_up() {
    let handle = handle();
    let mut ticks = tokio::time::interval(UPKEEP_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        handle.run_upkeep();
    }
}

/// The recorder, installed on first use; later calls (more app instances in one test process)
/// share it.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .and_then(|builder| {
                builder.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS)
            })
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        // Only fails if another recorder is installed, in which case ours just stays empty.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    describe_counter!(
        DELIVERIES,
        "Deliveries received, by outcome (applied, ignored, duplicate, rejected with a reason, error)"
    );
    describe_histogram!(
        INGEST_DURATION,
        metrics::Unit::Seconds,
        "Time to parse and durably record a verified delivery"
    );
    describe_counter!(
        PRUNED,
        "What retention removed: delivery records (deliveries) and bodies dropped from records kept (bodies)"
    );
    describe_counter!(
        UPSTREAM_REQUESTS,
        "Calls to the platform's API, by operation (create, cancel, get, version, file) and outcome (ok, client_error, rate_limited, server_error, token_refused, timeout, unreachable, too_large)"
    );
    describe_histogram!(
        UPSTREAM_DURATION,
        metrics::Unit::Seconds,
        "Time the platform's API took to answer, by operation"
    );
    describe_counter!(
        CREATES,
        "Creates through the gateway, by outcome (created, refused: by the inbox before any call, upstream_error: the platform answered an error or none, unrecorded: created but its first state not yet recorded)"
    );
    describe_counter!(
        RECONCILED,
        "Predictions the reconciler read from the platform, by what came of it (advanced: recorded, imported: recorded, never heard of before, unchanged, missing: 404, marked: no longer read, skipped: urls.get is not the platform's)"
    );
    describe_histogram!(
        BATCH_SIZE,
        "Deliveries written per transaction by group commit"
    );
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route, method and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "Time to answer an HTTP request, by route (waits included)"
    );
    describe_gauge!(
        WAITERS,
        "Requests parked waiting on a prediction (Prefer: wait and event streams) in this process"
    );
    describe_gauge!(
        POOL_CONNECTIONS,
        "Database connections of this process's pool, by state (in_use, idle)"
    );
    describe_gauge!(
        WORKER_UP,
        "Whether each background worker runs (1) or is down, waiting to be restarted (0)"
    );
    describe_counter!(
        WORKER_RESTARTS,
        "Background workers started again after a panic, by worker"
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed at once because INBOX_MAX_CONNECTIONS were open"
    );
    describe_gauge!(
        BODY_BUDGET,
        "Bytes of INBOX_MAX_INFLIGHT_BODY_BYTES not held by a request body now, by part: shared (any body) or reserve (bodies under 1 MiB)"
    );
    describe_gauge!(
        OLDEST_UNFINISHED,
        "How long the unfinished prediction that has heard nothing for longest has heard nothing (0: none unfinished); refreshed with the counts. A value that keeps growing means webhooks are not arriving and nothing reconciles"
    );
    describe_counter!(
        ARCHIVE_FILES,
        "Output files the archiver dealt with, by outcome: archived, failed (for good), retried, expired (deleted after INBOX_ARCHIVE_RETENTION)"
    );
    describe_counter!(ARCHIVE_BYTES, "Bytes of output files archived");
    describe_counter!(
        ARCHIVE_FAILURES,
        "Output files not archived, or not this time, by reason (quota among them: over INBOX_ARCHIVE_QUOTA_BYTES)"
    );
    describe_gauge!(
        ARCHIVE_QUEUED,
        "Output files waiting to be archived; refreshed every few seconds"
    );
    describe_gauge!(ARCHIVE_USED, "Bytes of archived output files kept");
    describe_gauge!(
        ARCHIVE_QUOTA,
        "INBOX_ARCHIVE_QUOTA_BYTES (0: no quota); with inbox_archive_used_bytes, how full it is"
    );
    describe_gauge!(
        PREDICTIONS,
        "Predictions stored, by status (unknown statuses count as other); refreshed at most every 15 s"
    );
}

/// A delivery's outcome: `applied`, `ignored`, `duplicate`, or `error` when it could not be stored.
pub fn delivery(outcome: &'static str) {
    static BY_OUTCOME: Handles<&'static str, Counter> = Handles::new();
    BY_OUTCOME.with(
        outcome,
        || counter!(DELIVERIES, "outcome" => outcome),
        |counter| counter.increment(1),
    );
}

pub fn rejected(reason: RejectReason) {
    let reason = reason.label();
    static BY_REASON: Handles<&'static str, Counter> = Handles::new();
    BY_REASON.with(
        reason,
        || counter!(DELIVERIES, "outcome" => "rejected", "reason" => reason),
        |counter| counter.increment(1),
    );
}

pub fn ingest_duration(elapsed: Duration) {
    static HANDLE: LazyLock<Histogram> =
        LazyLock::new(|| registered(|| histogram!(INGEST_DURATION)));
    HANDLE.record(elapsed.as_secs_f64());
}

pub fn batch_size(deliveries: usize) {
    static HANDLE: LazyLock<Histogram> = LazyLock::new(|| registered(|| histogram!(BATCH_SIZE)));
    HANDLE.record(deliveries as f64);
}

pub fn http_request(route: &str, method: &str, status: u16, elapsed: Duration) {
    /// A route's duration, and its counts by method and status.
    struct RouteHandles {
        duration: Histogram,
        answered: Vec<(&'static str, u16, Counter)>,
    }

    impl RouteHandles {
        fn answered(&self, method: &str, status: u16) -> Option<&Counter> {
            self.answered
                .iter()
                .find(|(m, s, _)| *m == method && *s == status)
                .map(|(_, _, counter)| counter)
        }
    }
    static BY_ROUTE: LazyLock<RwLock<HashMap<String, RouteHandles>>> =
        LazyLock::new(Default::default);

    let method = match method {
        "GET" => "GET",
        "POST" => "POST",
        "HEAD" => "HEAD",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let record = |handles: &RouteHandles| {
        handles.answered(method, status)?.increment(1);
        handles.duration.record(elapsed.as_secs_f64());
        Some(())
    };
    let routes = BY_ROUTE.read().unwrap_or_else(PoisonError::into_inner);
    if routes.get(route).and_then(record).is_some() {
        return;
    }
    drop(routes);
    // The first answer of its kind: registered once, under the write lock.
    let mut routes = BY_ROUTE.write().unwrap_or_else(PoisonError::into_inner);
    let handles = routes
        .entry(route.to_owned())
        .or_insert_with(|| RouteHandles {
            duration: registered(|| histogram!(HTTP_DURATION, "route" => route.to_owned())),
            answered: Vec::new(),
        });
    if handles.answered(method, status).is_none() {
        let counter = registered(
            || counter!(HTTP_REQUESTS, "route" => route.to_owned(), "method" => method, "status" => status.to_string()),
        );
        handles.answered.push((method, status, counter));
    }
    record(handles);
}

pub fn waiters(count: usize) {
    gauge!(WAITERS).set(count as f64);
}

pub fn pool(in_use: u32, idle: usize) {
    gauge!(POOL_CONNECTIONS, "state" => "in_use").set(f64::from(in_use));
    gauge!(POOL_CONNECTIONS, "state" => "idle").set(idle as f64);
}

pub fn worker_up(worker: &'static str, up: bool) {
    gauge!(WORKER_UP, "worker" => worker).set(if up { 1.0 } else { 0.0 });
}

pub fn worker_restarted(worker: &'static str) {
    counter!(WORKER_RESTARTS, "worker" => worker).increment(1);
}

pub fn connection_refused() {
    counter!(CONNECTIONS_REFUSED).increment(1);
}

pub fn body_budget((shared, reserve): (usize, usize)) {
    gauge!(BODY_BUDGET, "part" => "shared").set(shared as f64);
    gauge!(BODY_BUDGET, "part" => "reserve").set(reserve as f64);
}

/// One call to the platform's API.
pub fn upstream(operation: &'static str, outcome: &'static str, elapsed: Duration) {
    counter!(UPSTREAM_REQUESTS, "operation" => operation, "outcome" => outcome).increment(1);
    histogram!(UPSTREAM_DURATION, "operation" => operation).record(elapsed.as_secs_f64());
}

/// One prediction the reconciler dealt with.
pub fn reconciled(outcome: &'static str) {
    counter!(RECONCILED, "outcome" => outcome).increment(1);
}

/// One create through the gateway.
pub fn create(outcome: &'static str) {
    counter!(CREATES, "outcome" => outcome).increment(1);
}

/// One output file the archiver dealt with: `archived`, `failed`, `retried` or `expired`, and the
/// reason of a failure (a fixed set: `archive::fetch`).
pub fn archive_file(outcome: &'static str, reason: Option<&'static str>, bytes: u64) {
    counter!(ARCHIVE_FILES, "outcome" => outcome).increment(1);
    if let Some(reason) = reason {
        counter!(ARCHIVE_FAILURES, "reason" => reason).increment(1);
    }
    if bytes > 0 {
        counter!(ARCHIVE_BYTES).increment(bytes);
    }
}

/// The archive's queue and how much it keeps.
pub fn archive_usage(queued: i64, used_bytes: i64, quota_bytes: Option<u64>) {
    gauge!(ARCHIVE_QUEUED).set(queued as f64);
    gauge!(ARCHIVE_USED).set(used_bytes as f64);
    gauge!(ARCHIVE_QUOTA).set(quota_bytes.unwrap_or(0) as f64);
}

pub fn oldest_unfinished(age: Duration) {
    gauge!(OLDEST_UNFINISHED).set(age.as_secs_f64());
}

pub fn predictions(status: &'static str, count: i64) {
    gauge!(PREDICTIONS, "status" => status).set(count as f64);
}

/// Metric handles, registered on first use and kept. Registering a metric clones its key, labels
/// and all, and looks it up under a lock: under load that was a fifth of the allocations of a
/// delivery. Every label value comes from a fixed set, so the handles are few.
struct Handles<K, H>(OnceLock<RwLock<HashMap<K, H>>>);

impl<K: Eq + std::hash::Hash, H> Handles<K, H> {
    const fn new() -> Self {
        Self(OnceLock::new())
    }

    /// Runs `update` on the handle of `key`, registering it first if it is new.
    fn with(&self, key: K, register: impl FnOnce() -> H, update: impl Fn(&H)) {
        let map = self.0.get_or_init(Default::default);
        if let Some(handle) = map.read().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return update(handle);
        }
        let mut map = map.write().unwrap_or_else(PoisonError::into_inner);
        update(map.entry(key).or_insert_with(|| registered(register)));
    }
}

/// `register`'s handle, once the recorder is installed: a handle taken before it would count into
/// nothing for good.
fn registered<H>(register: impl FnOnce() -> H) -> H {
    handle();
    register()
}
