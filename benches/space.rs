//! Space: what a prediction's life costs on disk, before and after retention. Runs the real
//! release binary over a fresh database, and `prediction-inbox prune --now` as if time had passed.
//!
//!     cargo bench --bench space                  # Postgres, then SQLite, 100 lives
//!     cargo bench --bench space -- sqlite 20     # one store, fewer lives
//!
//! A life, as the platform sends it: `starting`; 300 `logs` events whose logs grow to 64 KiB
//! (progress lines, as models print them), with 20 `output` events among them, the output growing
//! by one file URL each; `succeeded`. 322 deliveries, each the whole prediction object.
//!
//! Reported per prediction, each after a full vacuum (`VACUUM FULL` on Postgres, `VACUUM` on
//! SQLite), so that it is the live size: everything kept; after retention as if 25 hours had
//! passed (superseded bodies dropped); after 31 days (old records removed). Then the steady state:
//! lives replayed round after round, each round pruned as if 25 hours had passed, with plain
//! `VACUUM` on Postgres (what autovacuum does) and nothing on SQLite, so that the size shows whether
//! freed space is reused.

use std::time::{Duration, Instant};

use prediction_inbox::sample;
use prediction_inbox::verify::Secret;
use sqlx::{Connection, Executor};
use support::bench::{BenchDatabase, SECRET, Service};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const LOG_EVENTS: usize = 300;
const OUTPUT_EVENTS: usize = 20;
const FINAL_LOGS: usize = 64 * 1024;
/// Rounds of the steady state.
const ROUNDS: usize = 4;

#[tokio::main]
async fn main() {
    let args = support::bench::args();
    let backends: Vec<String> = match args.first() {
        Some(backend) => vec![backend.clone()],
        None => vec!["postgres".into(), "sqlite".into()],
    };
    let lives: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(100);
    let final_body = life("p", 0).last().map_or(0, String::len);
    println!(
        "a life: {} deliveries, {} bytes in all; its final body {final_body} bytes",
        life("p", 0).len(),
        life("p", 0).iter().map(String::len).sum::<usize>()
    );
    for backend in backends {
        measure(&backend, lives, final_body as f64).await;
    }
}

async fn measure(backend: &str, lives: usize, final_body: f64) {
    let database = BenchDatabase::create(backend).await;
    let keep = [
        ("INBOX_DELIVERY_RETENTION", "0"),
        ("INBOX_INTERMEDIATE_BODY_RETENTION", "0"),
    ];
    let service = Service::start(&database.url, &keep);
    let started = Instant::now();
    replay(&service.address, "a", lives).await;
    println!(
        "{backend}: {lives} lives recorded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(service);
    let report = |stage: &str, bytes: u64| {
        let each = bytes as f64 / lives as f64;
        println!(
            "{backend}: {stage:<28} {:>9.1} KiB a prediction, {:>5.2}× its final body",
            each / 1024.0,
            each / final_body
        );
    };
    report("everything kept", live_size(&database.url, true).await);
    let now = OffsetDateTime::now_utc();
    prune(&database.url, now + Duration::from_secs(25 * 3600));
    report("after 25 h", live_size(&database.url, true).await);
    prune(&database.url, now + Duration::from_secs(31 * 86_400));
    report("after 31 days", live_size(&database.url, true).await);
    database.drop_it().await;

    // The steady state: freed space reused round after round.
    let database = BenchDatabase::create(backend).await;
    for round in 0..ROUNDS {
        let service = Service::start(&database.url, &keep);
        replay(&service.address, &format!("s{round}"), lives).await;
        drop(service);
        prune(
            &database.url,
            OffsetDateTime::now_utc() + Duration::from_secs(25 * 3600),
        );
        let bytes = live_size(&database.url, false).await;
        let each = bytes as f64 / ((round + 1) * lives) as f64;
        println!(
            "{backend}: steady state, round {}: {:>7.1} MiB on disk for {} predictions, {:>7.1} KiB each",
            round + 1,
            bytes as f64 / (1024.0 * 1024.0),
            (round + 1) * lives,
            each / 1024.0,
        );
    }
    database.drop_it().await;
}

/// The bodies of one life, in the order the platform sends them.
fn life(id: &str, seed: u64) -> Vec<String> {
    let mut prediction: serde_json::Value =
        serde_json::from_str(&sample::prediction(id, "starting")).unwrap();
    prediction["logs"] = "".into();
    prediction["output"] = serde_json::Value::Null;
    let mut bodies = vec![prediction.to_string()];
    prediction["status"] = "processing".into();
    let mut logs = String::new();
    let mut outputs: Vec<String> = Vec::new();
    let every = LOG_EVENTS / OUTPUT_EVENTS;
    let mut rng = fastrand::Rng::with_seed(seed);
    for event in 1..=LOG_EVENTS {
        let target = FINAL_LOGS * event / LOG_EVENTS;
        while logs.len() < target {
            let step = logs.len() / 97;
            logs.push_str(&format!(
                "{:3}%|{:<10}| {step}/{} [00:{:02}<00:{:02}, {:.2}it/s] loss={:.4}\n",
                step % 100,
                "#".repeat(step % 11),
                FINAL_LOGS / 97,
                step % 60,
                rng.u8(..60),
                rng.f32() * 20.0,
                rng.f32()
            ));
        }
        logs.truncate(target);
        prediction["logs"] = logs.clone().into();
        bodies.push(prediction.to_string());
        if event % every == 0 {
            outputs.push(format!(
                "https://replicate.delivery/xezq/{:016x}/out-{}.png",
                rng.u64(..),
                outputs.len()
            ));
            prediction["output"] = outputs.clone().into();
            bodies.push(prediction.to_string());
        }
    }
    prediction["status"] = "succeeded".into();
    bodies.push(prediction.to_string());
    bodies
}

/// Sends `lives` lives at once, each in order on a connection of its own.
async fn replay(address: &str, prefix: &str, lives: usize) {
    let secret: Secret = SECRET.parse().unwrap();
    let client = reqwest::Client::new();
    let url = format!("{address}/webhooks/replicate");
    let sends = (0..lives).map(|n| {
        let (client, secret, url) = (client.clone(), secret.clone(), url.clone());
        let id = format!("{prefix}{n:05}");
        async move {
            for body in life(&id, n as u64) {
                let answer = sample::send(&client, &url, &secret, body).await.unwrap();
                assert_eq!(answer.status, 200, "{}", answer.body);
            }
        }
    });
    futures_util::future::join_all(sends).await;
}

/// `prediction-inbox prune` with the shipped retention, as if it were `now`.
fn prune(url: &str, now: OffsetDateTime) {
    let output = support::service::command(&[("DATABASE_URL", url)])
        .args(["prune", "--now", &now.format(&Rfc3339).unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
}

/// The bytes on disk: the two tables with their indexes and TOAST on Postgres, the file on SQLite;
/// after a full vacuum if `full` (the live size), else after a plain one on Postgres (what
/// autovacuum does) and none on SQLite (its free pages are reused by new rows).
async fn live_size(url: &str, full: bool) -> u64 {
    if url.starts_with("sqlite://") {
        let mut connection = sqlx::SqliteConnection::connect(url).await.unwrap();
        if full {
            connection.execute("VACUUM").await.unwrap();
        }
        connection
            .execute("PRAGMA wal_checkpoint(TRUNCATE)")
            .await
            .unwrap();
        let (pages, size): (i64, i64) =
            sqlx::query_as("SELECT * FROM pragma_page_count(), pragma_page_size()")
                .fetch_one(&mut connection)
                .await
                .unwrap();
        return (pages * size) as u64;
    }
    let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
    let vacuum = if full { "VACUUM FULL" } else { "VACUUM" };
    for table in ["deliveries", "predictions"] {
        connection
            .execute(format!("{vacuum} {table}").as_str())
            .await
            .unwrap();
    }
    let bytes: i64 = sqlx::query_scalar(
        "SELECT pg_total_relation_size('deliveries') + pg_total_relation_size('predictions')",
    )
    .fetch_one(&mut connection)
    .await
    .unwrap();
    bytes as u64
}
