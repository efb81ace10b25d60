//! Retention under load: the pruner removes a million old delivery records while deliveries keep
//! arriving at a fixed rate. Runs the real release binary over a fresh database.
//!
//!     cargo bench --bench prune                        # Postgres, 1,000,000 rows, 5,000/s
//!     cargo bench --bench prune -- sqlite 200000 1000  # the embedded store, fewer, slower
//!
//! The old rows are written straight into the database, 40 days old, ten deliveries for each of
//! 100,000 predictions (one of them the prediction's latest state, which stays). Then the same
//! fixed-rate load twice, each time a new prediction's life (starting, processing, succeeded) per
//! three deliveries: first with retention off for 120 s, for the baseline; then with the shipped retention,
//! whose first pass starts as the service does and runs until the old rows are gone. The load is
//! open: each delivery is sent at its scheduled time whatever became of the ones before, and its
//! latency counts from then, so a stall shows in full. Reported: p50, p99 and the largest latency
//! of each, the answers that were not 200, and how long the pruner took; and the baseline's p99
//! read as the pass's is, over as many deliveries from the service's start, and over each run of
//! as many after.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prediction_inbox::sample;
use sqlx::{Connection, Executor};
use support::bench::{BenchDatabase, Service, fixed_rate_load as load, quantile, summary};
use time::OffsetDateTime;

#[tokio::main]
async fn main() {
    let args = support::bench::args();
    let backend = args.first().map_or("postgres", String::as_str).to_owned();
    let rows: i64 = args
        .get(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let rate: u64 = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(5_000);
    let database = BenchDatabase::create(&backend).await;
    let off = [
        ("INBOX_DELIVERY_RETENTION", "0"),
        ("INBOX_INTERMEDIATE_BODY_RETENTION", "0"),
    ];
    // Started once to migrate.
    drop(Service::start(&database.url, &off));
    let seeding = Instant::now();
    seed(&database.url, rows).await;
    println!(
        "{backend}: {rows} delivery records seeded, 40 days old, in {:.0} s",
        seeding.elapsed().as_secs_f64()
    );

    let service = Service::start(&database.url, &off);
    // As long as the pruner's pass takes, about: a checkpoint or an autovacuum falls in either.
    let (baseline, failed) = load(&service.address, rate, Duration::from_secs(120), || false).await;
    println!(
        "{backend}: {rate}/s, retention off: {}; {failed} not 200",
        summary(&baseline)
    );
    drop(service);

    let service = Service::start(&database.url, &[]);
    let started = Instant::now();
    let removable = (rows - rows / 10) as f64;
    let pruned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = tokio::spawn({
        let (pruned, metrics) = (pruned.clone(), format!("{}/metrics", service.address));
        async move {
            // The pruner's own count, from the service: nothing more for the database to do.
            while removed(&metrics).await < removable {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            pruned.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let (latencies, failed) = load(&service.address, rate, Duration::from_secs(900), || {
        pruned.load(std::sync::atomic::Ordering::Relaxed)
    })
    .await;
    let pruned_in = started.elapsed();
    assert!(
        watcher.is_finished(),
        "the pruner did not finish within the run"
    );
    println!(
        "{backend}: {rate}/s, while the pruner removed {} records in {:.1} s: {}; {failed} not 200",
        rows - rows / 10,
        pruned_in.as_secs_f64(),
        summary(&latencies)
    );
    // The pass's p99 is read from fewer deliveries, from the service's start: the baseline's
    // read the same way, from its first as many deliveries, and from each run of as many after.
    let n = latencies.len().min(baseline.len());
    let mut windows: Vec<Duration> = baseline
        .chunks_exact(n)
        .map(|window| quantile(window, 0.99))
        .collect();
    let first = windows[0];
    windows.sort();
    println!(
        "{backend}: {rate}/s, retention off, its first {n} deliveries: p99 {:.2} ms; \
         p99 of each {n} in turn: least {:.2}, median {:.2}, most {:.2} ms",
        ms(first),
        ms(windows[0]),
        ms(windows[windows.len() / 2]),
        ms(windows[windows.len() - 1]),
    );
    drop(service);
    database.drop_it().await;
}

fn ms(latency: Duration) -> f64 {
    latency.as_secs_f64() * 1e3
}

/// Old deliveries: ten for each prediction, the last its latest state.
async fn seed(url: &str, rows: i64) {
    let predictions = rows / 10;
    let body = sample::prediction("seeded", "processing").replace('\'', "''");
    if url.starts_with("sqlite://") {
        let mut connection = sqlx::SqliteConnection::connect(url).await.unwrap();
        let old = (OffsetDateTime::now_utc().unix_timestamp() - 40 * 86_400) * 1_000_000;
        connection
            .execute(
                format!(
                    "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {}) \
                     INSERT INTO deliveries (webhook_id, prediction_id, webhook_timestamp, \
                         received_at, applied, body, status) \
                     SELECT printf('msg_old_%09d', i), printf('old%08d', i / 10), 0, {old} + i, \
                            i % 10 = 9, '{body}', 'processing' FROM n",
                    rows - 1
                )
                .as_str(),
            )
            .await
            .unwrap();
        connection
            .execute(
                format!(
                    "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {}) \
                     INSERT INTO predictions (id, status, created_at, progress_rank, \
                         progress_logs, progress_output, progress_timestamp, updated_at, body, \
                         latest_delivery) \
                     SELECT printf('old%08d', i), 'processing', {old}, 1, 0, 0, 0, {old}, \
                            '{body}', printf('msg_old_%09d', i * 10 + 9) FROM n",
                    predictions - 1
                )
                .as_str(),
            )
            .await
            .unwrap();
        return;
    }
    let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
    connection
        .execute(
            format!(
                "INSERT INTO deliveries (webhook_id, prediction_id, webhook_timestamp, received_at, \
                     applied, body, status) \
                 SELECT format('msg_old_%s', lpad(i::text, 9, '0')), \
                        format('old%s', lpad((i / 10)::text, 8, '0')), 0, \
                        now() - interval '40 days' + i * interval '1 microsecond', \
                        i % 10 = 9, '{body}', 'processing' \
                 FROM generate_series(0, {}) AS i",
                rows - 1
            )
            .as_str(),
        )
        .await
        .unwrap();
    connection
        .execute(
            format!(
                "INSERT INTO predictions (id, status, created_at, progress_rank, progress_logs, \
                     progress_output, progress_timestamp, updated_at, latest_delivery) \
                 SELECT format('old%s', lpad(i::text, 8, '0')), 'processing', \
                        now() - interval '40 days', 1, 0, 0, 0, now() - interval '40 days', \
                        format('msg_old_%s', lpad((i * 10 + 9)::text, 9, '0')) \
                 FROM generate_series(0, {}) AS i",
                predictions - 1
            )
            .as_str(),
        )
        .await
        .unwrap();
    connection.execute("VACUUM ANALYZE").await.unwrap();
}

/// The delivery records the pruner has removed, as its metric says.
async fn removed(metrics: &str) -> f64 {
    let Ok(response) = reqwest::get(metrics).await else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find_map(|line| {
            line.strip_prefix("inbox_pruned_total{what=\"deliveries\"}")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}
