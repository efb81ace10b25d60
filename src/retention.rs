//! Retention: the pruner, a background worker that keeps the store from growing for ever.
//!
//! Two ages bound what is kept (`Policy`): delivery records older than `deliveries` are removed,
//! and the bodies of superseded non-terminal deliveries older than `bodies` are dropped, their
//! records kept (webhook-id, times, status, outcome, source, size). Never touched: the delivery a
//! prediction's latest state stands on, and the bodies of terminal deliveries while their record
//! lives. Deduplication sees every record kept, and a platform retry comes within minutes, far
//! inside the shortest retention allowed (`Policy::SHORTEST`).
//!
//! One replica at a time prunes, under a lease in the database that runs out if its holder hangs
//! (`Store::lease`). Each slice is one short transaction of a few hundred rows
//! (`Store::prune`), with a pause between slices for the deliveries and reads waiting on the
//! database. The first run on a database logs what it will remove before removing anything.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::metrics;
use crate::store::{Cutoffs, Pruned, Store, StoreError};

/// The lease that lets one replica at a time prune.
const LEASE: &str = "pruner";
/// How long a lease lasts unless renewed; renewed well before, while a pass runs.
const LEASE_TTL: Duration = Duration::from_secs(120);
/// The pause between two passes of the pruner.
const EVERY: Duration = Duration::from_secs(600);
/// How often a pass starts from the oldest delivery rather than where the last one ended.
const REWIND_EVERY: Duration = Duration::from_secs(86_400);
/// The shortest pause between two slices of a pass.
const BETWEEN_SLICES: Duration = Duration::from_millis(10);
/// Time idle for each unit of time a slice took: the pruner works at most a fifth of the time, as
/// a pass may well take minutes (docs/benchmarks.md, "Space and retention").
const IDLE_PER_BUSY: u32 = 4;

/// How long things are kept (`None`: for ever, or as long as their record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `INBOX_DELIVERY_RETENTION`: delivery records.
    pub deliveries: Option<Duration>,
    /// `INBOX_INTERMEDIATE_BODY_RETENTION`: the bodies of superseded, non-terminal deliveries.
    pub bodies: Option<Duration>,
}

impl Policy {
    /// The shortest retention accepted for either: far longer than the platform retries a
    /// delivery, so a redelivery always finds its record.
    pub const SHORTEST: Duration = Duration::from_secs(3600);

    /// What is due at `now`. An age reaching back before the calendar begins keeps everything.
    pub fn cutoffs(&self, now: OffsetDateTime) -> Cutoffs {
        let before = |age: Option<Duration>| {
            let age = time::Duration::try_from(age?).ok()?;
            now.checked_sub(age)
        };
        Cutoffs {
            deliveries: before(self.deliveries),
            bodies: before(self.bodies),
        }
    }

    pub fn keeps_everything(&self) -> bool {
        self.deliveries.is_none() && self.bodies.is_none()
    }
}

/// Parses a retention: `0` (keep), or a whole number and a unit, `s`, `m`, `h` or `d`
/// (`30d`, `24h`).
pub fn parse_age(text: &str) -> Option<Option<Duration>> {
    let text = text.trim();
    if text == "0" {
        return Some(None);
    }
    let unit = match text.chars().last()? {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    let count: u64 = text[..text.len() - 1].parse().ok()?;
    let secs = count.checked_mul(unit).filter(|secs| *secs > 0)?;
    Some(Some(Duration::from_secs(secs)))
}

/// Everything due at `now`, slice after slice, until nothing is left: what `prune` runs once.
/// With `dry_run`, counts instead and removes nothing.
pub async fn prune_all(
    store: &dyn Store,
    policy: &Policy,
    now: OffsetDateTime,
    dry_run: bool,
) -> Result<Pruned, StoreError> {
    let cutoffs = policy.cutoffs(now);
    if dry_run {
        return store.prunable(&cutoffs).await;
    }
    store.rewind().await?;
    let mut total = Pruned::default();
    loop {
        let slice = store.prune(&cutoffs).await?;
        record(slice.pruned);
        total += slice.pruned;
        if !slice.more {
            return Ok(total);
        }
        tokio::time::sleep(BETWEEN_SLICES).await;
    }
}

/// The pruner: a pass every `EVERY` while this replica holds the lease, each from where the last
/// one ended; the first after start and one a day from the oldest delivery (see
/// `Store::rewind`). Ends at once if the policy keeps everything.
pub async fn run(store: Arc<dyn Store>, policy: Policy, holder: String) {
    if policy.keeps_everything() {
        return;
    }
    let mut rewound: Option<tokio::time::Instant> = None;
    loop {
        let rewind = rewound.is_none_or(|at| at.elapsed() >= REWIND_EVERY);
        match pass(&*store, &policy, &holder, rewind).await {
            Ok(Some(pruned)) => {
                if rewind {
                    rewound = Some(tokio::time::Instant::now());
                }
                if pruned != Pruned::default() {
                    tracing::info!(
                        deliveries = pruned.deliveries,
                        bodies = pruned.bodies,
                        "retention removed delivery records and dropped bodies"
                    );
                }
            }
            // Another replica holds the lease.
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "retention's pass failed; it runs again later"),
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// One pass, if this replica holds the lease (`None` if another does); from the oldest delivery
/// if `rewind`.
async fn pass(
    store: &dyn Store,
    policy: &Policy,
    holder: &str,
    rewind: bool,
) -> Result<Option<Pruned>, StoreError> {
    if !store.lease(LEASE, holder, LEASE_TTL).await? {
        return Ok(None);
    }
    if rewind {
        store.rewind().await?;
    }
    if !store.has_pruned().await? {
        // The first run on this database, perhaps one filled before retention existed: say what
        // goes before it goes.
        let due = store
            .prunable(&policy.cutoffs(OffsetDateTime::now_utc()))
            .await?;
        tracing::info!(
            deliveries = due.deliveries,
            bodies = due.bodies,
            kept_for = ?policy.deliveries,
            bodies_kept_for = ?policy.bodies,
            "retention's first run: removing delivery records and dropping bodies older than \
             the policy keeps"
        );
    }
    let mut total = Pruned::default();
    let mut renewed = tokio::time::Instant::now();
    loop {
        // The clock read at each slice: a long pass keeps up with time.
        let started = tokio::time::Instant::now();
        let slice = store
            .prune(&policy.cutoffs(OffsetDateTime::now_utc()))
            .await?;
        let took = started.elapsed();
        record(slice.pruned);
        total += slice.pruned;
        if !slice.more {
            return Ok(Some(total));
        }
        if renewed.elapsed() > LEASE_TTL / 4 {
            if !store.lease(LEASE, holder, LEASE_TTL).await? {
                return Ok(Some(total));
            }
            renewed = tokio::time::Instant::now();
        }
        tokio::time::sleep(pause_after(took)).await;
    }
}

/// The pause after a slice that took `took`: the pruner works at most a fifth of the time, leaving
/// the rest to the deliveries and reads that share the database.
fn pause_after(took: Duration) -> Duration {
    (took * IDLE_PER_BUSY).max(BETWEEN_SLICES)
}

fn record(pruned: Pruned) {
    if pruned.deliveries > 0 {
        ::metrics::counter!(metrics::PRUNED, "what" => "deliveries").increment(pruned.deliveries);
    }
    if pruned.bodies > 0 {
        ::metrics::counter!(metrics::PRUNED, "what" => "bodies").increment(pruned.bodies);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_age_beyond_the_calendar_keeps_everything() {
        let ages = parse_age("9999999999d").unwrap();
        let policy = Policy {
            deliveries: ages,
            bodies: ages,
        };
        let cutoffs = policy.cutoffs(OffsetDateTime::now_utc());
        assert_eq!((cutoffs.deliveries, cutoffs.bodies), (None, None));
    }

    #[test]
    fn ages_read_as_documented() {
        let hours = |h: u64| Some(Some(Duration::from_secs(h * 3600)));
        assert_eq!(parse_age("30d"), hours(720));
        assert_eq!(parse_age("24h"), hours(24));
        assert_eq!(parse_age("90m"), Some(Some(Duration::from_secs(5400))));
        assert_eq!(parse_age("3600s"), hours(1));
        assert_eq!(parse_age("0"), Some(None));
        for bad in [
            "",
            "d",
            "30",
            "-1d",
            "1.5h",
            "0h",
            "30 d",
            "1w",
            "99999999999999999999d",
        ] {
            assert_eq!(parse_age(bad), None, "{bad}");
        }
    }
}
