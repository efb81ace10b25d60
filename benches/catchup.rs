//! A catch-up after an outage: N predictions created and finished at the fake platform while
//! the inbox was down, every webhook lost; then the release binary starts and its catch-up lists
//! and imports them. Reported: the time until every one is stored terminal, against the bound
//! the rate sets (N reads and N/100 list pages at `INBOX_RECONCILE_RPS`), and the service's
//! peak RSS meanwhile.
//!
//!     cargo bench --bench catchup                      # Postgres, 10,000 predictions, 200/s
//!     cargo bench --bench catchup -- postgres 1000 10  # the default rate

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::Connection;
use support::bench::{BenchDatabase, Service, free_port};
use support::fake_replicate::{ACCOUNT_TOKEN, FakeReplicate, VERSION};

#[tokio::main]
async fn main() {
    let args = support::bench::args();
    let backend = args.first().map_or("postgres", String::as_str).to_owned();
    let count: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let rps: u32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(200);

    let fake = FakeReplicate::start().await;
    // The inbox is down: nothing it would have been sent arrives.
    fake.drop_webhooks_where(|_, _| true);
    let port = free_port();
    let webhook = format!("http://127.0.0.1:{port}/webhooks/replicate");
    let creating = Instant::now();
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let body =
            json!({"version": VERSION, "input": {"steps": 0, "start_ms": 0}, "webhook": webhook});
        let created = fake.create_directly(body).await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        fake.finished(id).await;
    }
    println!(
        "{backend}: {count} predictions finished at the fake in {:.1} s; the inbox starts, {rps} reads/s",
        creating.elapsed().as_secs_f64()
    );

    let database = BenchDatabase::create(&backend).await;
    let rate = rps.to_string();
    let started = Instant::now();
    let service = Service::start_on(
        port,
        &database.url,
        &[
            ("REPLICATE_API_TOKEN", ACCOUNT_TOKEN),
            ("INBOX_REPLICATE_API_URL", fake.url()),
            ("INBOX_WEBHOOK_URL", &webhook),
            ("INBOX_RECONCILE_RPS", &rate),
        ],
    );
    let mut peak_kib = 0;
    let done = loop {
        peak_kib = peak_kib.max(service.memory().1);
        let finished = finished(&database.url).await;
        if finished as usize >= count {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(3 * count as u64 / u64::from(rps) + 120),
            "only {finished} of {count} imported"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let bound = (count + count.div_ceil(100)) as f64 / f64::from(rps);
    println!(
        "  all {count} stored terminal {:.1} s after the start (the rate's bound: {bound:.1} s); peak RSS {:.1} MiB",
        done.as_secs_f64(),
        peak_kib as f64 / 1024.0
    );
    println!(
        "  reads of the platform: {} lists, {} predictions",
        fake.count("GET", "/v1/predictions"),
        ids.iter()
            .map(|id| fake.count("GET", &format!("/v1/predictions/{id}")))
            .sum::<usize>()
    );
    drop(service);
    database.drop_it().await;
}

/// Predictions stored terminal.
async fn finished(url: &str) -> i64 {
    let sql = "SELECT count(*) FROM predictions WHERE status = 'succeeded'";
    if url.starts_with("sqlite") {
        let mut connection = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query_scalar(sql)
            .fetch_one(&mut connection)
            .await
            .unwrap_or(0)
    } else {
        let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_scalar(sql)
            .fetch_one(&mut connection)
            .await
            .unwrap_or(0)
    }
}
