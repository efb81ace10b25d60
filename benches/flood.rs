//! A flood from anyone who knows the URL, against the release binary with its default settings:
//! `ATTACKERS` connections each send the headers of a delivery (well formed, timestamped now, a
//! signature that matches nothing) announcing a 16 MiB body, send all of it but the last byte as
//! fast as the service takes it, and stall (`tests/support/src/flood.rs`); whenever the service ends
//! one, it connects again.
//! Meanwhile a sender delivers signed 10 KiB deliveries at 50 a second, as the platform would.
//!
//!     cargo bench --bench flood                    # Postgres, 500 attackers, 30 s
//!     cargo bench --bench flood -- sqlite 500 60
//!
//! Reports the service's peak RSS against its body budget (256 MiB by default) plus 64 MiB, and
//! how every signed delivery was answered.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prediction_inbox::verify::Secret;
use support::bench::{BenchDatabase, SECRET, Service, summary};
use support::limits::raise_open_files;

const BODY: usize = 16 << 20;
const DELIVERY: usize = 10 << 10;
const PER_SECOND: u64 = 50;
const BUDGET: u64 = 256 << 20;

#[tokio::main]
async fn main() {
    let args = support::bench::args();
    let backend = args.first().map_or("postgres", String::as_str).to_owned();
    let attackers: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(500);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(30);
    let raised = raise_open_files(4 * attackers as u64 + 1000);
    assert!(
        raised > 2 * attackers as u64,
        "open-files limit {raised} is too low"
    );

    let database = BenchDatabase::create(&backend).await;
    let service = Service::start(&database.url, &[]);
    let addr = service.address.trim_start_matches("http://").to_owned();
    let idle = service.memory().0;
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();

    let flood: Vec<_> = (0..attackers)
        .map(|_| tokio::spawn(attack(addr.clone(), stop.clone(), outcomes.clone())))
        .collect();
    // Let the flood fill the budget before the first genuine delivery.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let (mut peak, mut answers, mut latencies) = (0, BTreeMap::<u16, usize>::new(), Vec::new());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let secret: Secret = SECRET.parse().unwrap();
    let url = format!("{}/webhooks/replicate", service.address);
    let mut sending = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(1000 / PER_SECOND));
    let mut sent = 0;
    while Instant::now() < deadline {
        ticks.tick().await;
        peak = peak.max(service.memory().0);
        let body = format!(
            r#"{{"id":"genuine{sent}","status":"processing","logs":"{}","output":null}}"#,
            "x".repeat(DELIVERY - 64)
        );
        sent += 1;
        let (client, url, secret) = (client.clone(), url.clone(), secret.clone());
        sending.push(tokio::spawn(async move {
            let at = Instant::now();
            let answer = prediction_inbox::sample::send(&client, &url, &secret, body).await;
            (answer.map(|a| a.status).unwrap_or(0), at.elapsed())
        }));
    }
    for task in sending {
        let (status, latency) = task.await.unwrap();
        *answers.entry(status).or_default() += 1;
        latencies.push(latency);
    }
    stop.store(true, Ordering::Relaxed);
    let (_, high_water) = service.memory();
    for attacker in flood {
        attacker.abort();
    }

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!("flood: {attackers} attackers, 16 MiB bodies, {seconds} s, {backend}");
    println!(
        "  attackers' connections ended by: {:?}",
        outcomes.lock().unwrap()
    );
    println!(
        "  signed 10 KiB deliveries: {sent} sent, answers {answers:?}; latency {}",
        summary(&latencies)
    );
    println!(
        "  service RSS: idle {:.1} MiB, highest sampled {:.1} MiB, peak (VmHWM) {:.1} MiB; target < {} MiB",
        mib(idle),
        mib(peak),
        mib(high_water),
        (BUDGET >> 20) + 64
    );
    drop(service);
    database.drop_it().await;
}

/// One attacker, connecting again whenever the service ends its attack; counts how each ended.
async fn attack(
    addr: String,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<BTreeMap<String, usize>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let ended = support::flood::large_unsigned_body(&addr, BODY).await;
        if ended == "refused" {
            // Pacing: the listener is full; try again shortly.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        *outcomes.lock().unwrap().entry(ended).or_default() += 1;
    }
}
