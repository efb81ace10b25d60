//! How fast a parked `Prefer: wait` is answered once its prediction finishes, and what parked
//! waiters cost in memory. Runs the real release binary in its own process against a fresh
//! database on the test server (`TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432`).
//!
//!     cargo bench --bench waiters                 # 1000 waits one by one, 10000 parked
//!     cargo bench --bench waiters -- 200 2000     # smaller
//!     cargo bench --bench waiters -- 200 2000 h2  # parked over HTTP/2 alone
//!     INBOX_BENCH_WRAP="valgrind --tool=massif" cargo bench --bench waiters -- 50 1000   # heap profile
//!
//! Latency is from the moment the terminal delivery's 2xx reaches the sender to the moment the
//! waiting client has its answer, both seen from this process.
//!
//! First, waits one batch at a time on a quiet service. Then many at once, as a busy account
//! makes them: every prediction exists and is `processing` with a 64 KiB body (which a waiter
//! must not hold), a wait is parked on each — each on its own HTTP/1.1 connection, then
//! multiplexed over HTTP/2 (h2c, 200 streams a connection, hyper's default) — and their terminal
//! deliveries arrive at 1,000 a second. Reported: the RSS while they are parked, and the wake
//! latency and peak RSS while they are woken.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prediction_inbox::verify::Secret;
use support::bench::{BenchDatabase, SECRET, Service, TOKEN, summary};
use tokio::sync::Semaphore;

const BATCH: usize = 50;
/// Streams hyper's server allows on one HTTP/2 connection by default.
const H2_STREAMS: usize = 200;
/// The size of every delivery to a parked prediction.
const BODY: usize = 64 << 10;
/// Terminal deliveries a second while the parked waits are woken.
const WAKE_RATE: u32 = 1000;

#[tokio::main]
async fn main() {
    let words = support::bench::args();
    let args: Vec<usize> = words.iter().filter_map(|a| a.parse().ok()).collect();
    let waits = args.first().copied().unwrap_or(1000);
    let parked = args.get(1).copied().unwrap_or(10_000);
    // `h1` or `h2` parks over that protocol alone; both by default.
    let only = words
        .iter()
        .find(|w| w.starts_with('h'))
        .map(String::as_str);
    support::limits::raise_open_files(2 * parked as u64 + 1000);

    let database = BenchDatabase::create("postgres").await;
    // Room for a connection for each parked HTTP/1.1 wait.
    let connections = (parked + 1000).to_string();
    let env = [
        ("INBOX_MAX_WAITERS", "100000"),
        ("INBOX_MAX_CONNECTIONS", connections.as_str()),
    ];
    let service = Service::start(&database.url, &env);
    let bench = Bench::new(&service);

    let latencies = bench.wake_latencies(&service, waits).await;
    println!(
        "wake latency, {waits} waits {BATCH} at a time: {}",
        summary(&latencies)
    );
    println!("RSS idle {} MiB", service.rss_kib() / 1024);
    drop(service);
    for protocol in ["h1", "h2"] {
        if only.is_none_or(|only| only == protocol) {
            // A fresh process each time, so that one run's peak does not count in the next.
            let service = Service::start(&database.url, &env);
            Bench::new(&service).park(&service, parked, protocol).await;
        }
    }
    database.drop_it().await;
}

#[derive(Clone)]
struct Bench {
    client: reqwest::Client,
    address: String,
    secret: Arc<Secret>,
}

impl Bench {
    fn new(service: &Service) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(90))
                .build()
                .unwrap(),
            address: service.address.clone(),
            secret: Arc::new(SECRET.parse().unwrap()),
        }
    }

    /// A delivery of `status` for prediction `id`, its logs making it about `bytes` long, signed
    /// and sent as `send-test` sends.
    async fn deliver(&self, id: &str, status: &str, bytes: usize) {
        let logs = "x".repeat(bytes.saturating_sub(128));
        let body = format!(
            r#"{{"id":"{id}","status":"{status}","created_at":"2024-01-01T00:00:00Z","logs":"{logs}","output":null}}"#
        );
        let url = format!("{}/webhooks/replicate", self.address);
        let answer = prediction_inbox::sample::send(&self.client, &url, &self.secret, body)
            .await
            .unwrap();
        assert!(
            (200..300).contains(&answer.status),
            "{} {}",
            answer.status,
            answer.body
        );
    }

    /// Starts a 60 s wait over `client`; resolves to when its answer arrived and whether it was
    /// a 200.
    fn wait(
        &self,
        client: reqwest::Client,
        id: String,
    ) -> tokio::task::JoinHandle<(Instant, bool)> {
        let url = format!("{}/v1/predictions/{id}", self.address);
        tokio::spawn(async move {
            let response = client
                .get(url)
                .bearer_auth(TOKEN)
                .header("prefer", "wait=60")
                .send()
                .await;
            let ok = match response {
                // The whole answer, as a client would read it.
                Ok(response) => response.status() == 200 && response.bytes().await.is_ok(),
                Err(_) => false,
            };
            (Instant::now(), ok)
        })
    }

    /// Until `service` has `n` waits parked: registered, and done with the read each makes before
    /// it sleeps (no pooled connection in use). Each then measures a wake-up, not a queue of
    /// first reads.
    async fn parked(service: &Service, n: usize) {
        let started = Instant::now();
        loop {
            let waiting = service.metric("inbox_waiters").await;
            let reading = service
                .metric(r#"inbox_db_pool_connections{state="in_use"}"#)
                .await;
            if waiting >= n as f64 && reading == 0.0 {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the waits were not all parked"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wake_latencies(&self, service: &Service, waits: usize) -> Vec<Duration> {
        let mut latencies = Vec::with_capacity(waits);
        for batch in 0..waits.div_ceil(BATCH) {
            let ids: Vec<String> = (0..BATCH).map(|i| format!("lat{batch}_{i}")).collect();
            for id in &ids {
                self.deliver(id, "processing", 0).await;
            }
            let waiting: Vec<_> = ids
                .iter()
                .map(|id| self.wait(self.client.clone(), id.clone()))
                .collect();
            Self::parked(service, BATCH).await;
            let mut acknowledged = Vec::new();
            for id in &ids {
                self.deliver(id, "succeeded", 0).await;
                acknowledged.push(Instant::now());
            }
            for (waiter, acked) in waiting.into_iter().zip(acknowledged) {
                let (answered, ok) = waiter.await.unwrap();
                assert!(ok);
                latencies.push(answered.saturating_duration_since(acked));
            }
        }
        latencies.truncate(waits);
        latencies
    }

    /// Makes `n` predictions `processing`, parks a wait on each, then delivers their terminal
    /// states at `WAKE_RATE`; reports memory and wake latency, and checks every wait got its 200.
    async fn park(&self, service: &Service, n: usize, protocol: &str) {
        let ids: Vec<String> = (0..n).map(|i| format!("parked{i}_{protocol}")).collect();
        let limit = Arc::new(Semaphore::new(32));
        let creating: Vec<_> = ids
            .iter()
            .map(|id| {
                let (this, limit, id) = (self.clone(), limit.clone(), id.clone());
                tokio::spawn(async move {
                    let _permit = limit.acquire().await.unwrap();
                    this.deliver(&id, "processing", BODY).await;
                })
            })
            .collect();
        for task in creating {
            task.await.unwrap();
        }

        // One HTTP/2 client per connection's worth of streams; HTTP/1.1 opens a connection a request.
        let h2_clients: Vec<reqwest::Client> = (0..n.div_ceil(H2_STREAMS))
            .map(|_| {
                reqwest::Client::builder()
                    .http2_prior_knowledge()
                    .timeout(Duration::from_secs(90))
                    .build()
                    .unwrap()
            })
            .collect();
        let waiting: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let client = match protocol {
                    "h2" => h2_clients[i / H2_STREAMS].clone(),
                    _ => self.client.clone(),
                };
                self.wait(client, id.clone())
            })
            .collect();
        let created_rss = service.rss_kib();
        Self::parked(service, n).await;
        let (parked_rss, _) = service.memory();
        service.reset_peak();

        let mut ticks = tokio::time::interval(Duration::from_secs(1) / WAKE_RATE);
        let cpu = (
            service.cpu_seconds(),
            support::bench::process_cpu_seconds("self"),
            support::bench::busy_cpu_seconds(),
            support::bench::postgres_cpu_seconds(),
        );
        let started = Instant::now();
        let mut finishing = Vec::with_capacity(n);
        for id in &ids {
            ticks.tick().await;
            let (this, id) = (self.clone(), id.clone());
            finishing.push(tokio::spawn(async move {
                this.deliver(&id, "succeeded", BODY).await;
                Instant::now()
            }));
        }
        let mut acknowledged = Vec::with_capacity(n);
        for task in finishing {
            acknowledged.push(task.await.unwrap());
        }
        let sent_in = started.elapsed();
        let (mut latencies, mut woken) = (Vec::with_capacity(n), 0);
        for (waiter, acked) in waiting.into_iter().zip(acknowledged) {
            let (answered, ok) = waiter.await.unwrap();
            woken += usize::from(ok);
            latencies.push(answered.saturating_duration_since(acked));
        }
        let (_, waking_peak) = service.memory();
        let cpu = (
            service.cpu_seconds() - cpu.0,
            support::bench::process_cpu_seconds("self") - cpu.1,
            support::bench::busy_cpu_seconds() - cpu.2,
            support::bench::postgres_cpu_seconds() - cpu.3,
        );
        let connections = match protocol {
            "h2" => format!("{} HTTP/2 connections", n.div_ceil(H2_STREAMS)),
            _ => format!("{n} HTTP/1.1 connections"),
        };
        println!(
            "{n} waits parked on processing predictions of {} KiB, over {connections}: RSS {} MiB ({} MiB before they were parked)",
            BODY >> 10,
            parked_rss / 1024,
            created_rss / 1024
        );
        println!(
            "  terminal deliveries sent in {:.1} s ({:.0}/s): {woken}/{n} woken with 200; wake latency {}; peak RSS while waking {} MiB",
            sent_in.as_secs_f64(),
            n as f64 / sent_in.as_secs_f64(),
            summary(&latencies),
            waking_peak / 1024
        );
        println!(
            "  CPU while waking: service {:.2} s, Postgres {:.2} s, this benchmark {:.2} s, the whole machine {:.2} s, of {:.2} s on {} cores",
            cpu.0,
            cpu.3,
            cpu.1,
            cpu.2,
            started.elapsed().as_secs_f64(),
            std::thread::available_parallelism().map_or(1, usize::from)
        );
    }
}
