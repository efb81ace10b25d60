//! Ingest under load: the real release binary, a realistic stream of signed deliveries over many
//! connections, and what came back.
//!
//!     cargo bench --bench ingest                          # Postgres, 64 connections, 20 s
//!     cargo bench --bench ingest -- sqlite 64 20          # the embedded store
//!     INBOX_BENCH_DATABASE_URL=postgres://… cargo bench --bench ingest   # an existing database
//!
//! Every delivery is signed before the clock starts: each prediction's life — starting, processing,
//! succeeded — as the platform sends it, about 1 KB each, in order on one connection. Each
//! connection sends its next delivery as soon as the previous is answered. Reported: deliveries
//! acknowledged per second, latency percentiles, answers that were not 2xx, and the service's
//! resident memory idle and at its peak.

mod support;

use std::time::{Duration, Instant};

use prediction_inbox::sample;
use prediction_inbox::verify::Secret;
use support::{BenchDatabase, SECRET, Service, summary};

/// A signed delivery, ready to send.
struct Signed {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

#[tokio::main]
async fn main() {
    let args = support::args();
    let backend = args.first().map_or("postgres", String::as_str).to_owned();
    let connections: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20);

    let database = match std::env::var("INBOX_BENCH_DATABASE_URL") {
        Ok(_) => None,
        Err(_) => Some(BenchDatabase::create(&backend).await),
    };
    let url = std::env::var("INBOX_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| database.as_ref().map(|d| d.url.clone()).unwrap_or_default());

    // Enough for each connection to run the whole time at 40,000 deliveries a second overall.
    let per_connection = (40_000 * seconds as usize)
        .div_ceil(connections)
        .div_ceil(3)
        * 3;
    let secret: Secret = SECRET.parse().unwrap();
    let streams: Vec<Vec<Signed>> = (0..connections)
        .map(|_| {
            (0..per_connection / 3)
                .flat_map(|_| {
                    let id = sample::prediction_id();
                    ["starting", "processing", "succeeded"]
                        .map(|status| sign(&secret, sample::prediction(&id, status)))
                })
                .collect()
        })
        .collect();
    let size = streams[0].iter().map(|d| d.body.len()).sum::<usize>() / streams[0].len();
    println!(
        "{backend}: {connections} connections for {seconds} s; {} deliveries signed, {size} bytes each on average",
        connections * per_connection
    );

    let service = Service::start(&url, &[]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = service.rss_kib();
    let target = format!("{}/webhooks/replicate", service.address);
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let senders: Vec<_> = streams
        .into_iter()
        .map(|stream| tokio::spawn(send_all(target.clone(), stream, until)))
        .collect();
    let (mut latencies, mut failed, mut ran_out) = (Vec::new(), 0, false);
    for sender in senders {
        let (times, not_2xx, exhausted) = sender.await.unwrap();
        latencies.extend(times);
        failed += not_2xx;
        ran_out |= exhausted;
    }
    let elapsed = started.elapsed();
    let (rss, peak) = service.memory();
    let metrics = reqwest::get(format!("{}/metrics", service.address))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let read = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let (batches, batched) = (
        read("inbox_ingest_batch_size_count"),
        read("inbox_ingest_batch_size_sum"),
    );
    let acknowledged = latencies.len() - failed;
    println!(
        "acknowledged {acknowledged} in {:.1} s: {:.0} deliveries/s; not 2xx: {failed}{}",
        elapsed.as_secs_f64(),
        acknowledged as f64 / elapsed.as_secs_f64(),
        if ran_out {
            " (a connection ran out of signed deliveries)"
        } else {
            ""
        }
    );
    println!("latency: {}", summary(&latencies));
    println!(
        "{batches} transactions, {:.1} deliveries each on average",
        batched / batches.max(1.0)
    );
    println!(
        "service RSS: idle {:.1} MiB, after {:.1} MiB, peak {:.1} MiB",
        idle as f64 / 1024.0,
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    drop(service);
    if let Some(database) = database {
        database.drop_it().await;
    }
}

fn sign(secret: &Secret, body: String) -> Signed {
    let id = sample::message_id();
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
    Signed {
        signature: secret.sign(&id, timestamp, body.as_bytes()),
        timestamp: timestamp.to_string(),
        id,
        body,
    }
}

/// Sends one connection's stream in order until `until`; the latency of each answer, how many
/// were not 2xx, and whether the stream ran out first.
async fn send_all(
    url: String,
    stream: Vec<Signed>,
    until: Instant,
) -> (Vec<Duration>, usize, bool) {
    // One client per connection: each holds exactly one keep-alive connection.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let (mut latencies, mut failed) = (Vec::with_capacity(stream.len()), 0);
    for delivery in stream {
        if Instant::now() >= until {
            return (latencies, failed, false);
        }
        let sent = Instant::now();
        let answer = client
            .post(&url)
            .header("content-type", "application/json")
            .header("webhook-id", delivery.id)
            .header("webhook-timestamp", delivery.timestamp)
            .header("webhook-signature", delivery.signature)
            .body(delivery.body)
            .send()
            .await;
        let ok = match answer {
            Ok(response) => {
                let ok = response.status().is_success();
                // Read the answer, so the connection is free for the next request.
                let _ = response.bytes().await;
                ok
            }
            Err(_) => false,
        };
        latencies.push(sent.elapsed());
        failed += usize::from(!ok);
    }
    (latencies, failed, true)
}
