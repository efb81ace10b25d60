//! How fast a parked `Prefer: wait` is answered once its prediction finishes, and what parked
//! waiters cost in memory. Runs the real release binary in its own process against a fresh
//! database on the test server (`TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432`).
//!
//!     cargo bench --bench waiters                 # 1000 waits, 10000 parked
//!     cargo bench --bench waiters -- 200 2000     # smaller
//!     INBOX_BENCH_WRAP="valgrind --tool=massif" cargo bench --bench waiters -- 50 1000   # heap profile
//!
//! Latency is from the moment the terminal delivery's 2xx reaches the sender to the moment the
//! waiting client has its answer, both seen from this process. Parked waiters are measured twice:
//! each on its own HTTP/1.1 connection, and multiplexed over HTTP/2 (h2c, 200 streams a
//! connection, hyper's default).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use prediction_inbox::verify::Secret;
use support::{BenchDatabase, SECRET, Service, TOKEN, summary};
use tokio::sync::Semaphore;

const BATCH: usize = 50;
/// Streams hyper's server allows on one HTTP/2 connection by default.
const H2_STREAMS: usize = 200;

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let waits = args.first().copied().unwrap_or(1000);
    let parked = args.get(1).copied().unwrap_or(10_000);

    let database = BenchDatabase::create("postgres").await;
    let env = [("INBOX_MAX_WAITERS", "100000")];
    let service = Service::start(&database.url, &env);
    let bench = Bench::new(&service.address);

    let latencies = bench.wake_latencies(waits).await;
    println!("wake latency over {waits} waits: {}", summary(&latencies));

    println!("RSS idle {} MiB", service.rss_kib() / 1024);
    let (woken, rss, peak) = bench.park(parked, &service, "h1").await;
    println!(
        "HTTP/1.1, {parked} parked waiters on as many connections: RSS {} MiB (peak {} MiB); woken afterwards: {woken}/{parked}",
        rss / 1024,
        peak / 1024
    );
    drop(service);

    // A fresh process, so the first run's peak does not count here.
    let service = Service::start(&database.url, &env);
    let bench = Bench::new(&service.address);
    let (woken, rss, peak) = bench.park(parked, &service, "h2").await;
    println!(
        "HTTP/2, {parked} parked waiters on {} connections: RSS {} MiB (peak {} MiB); woken afterwards: {woken}/{parked}",
        parked.div_ceil(H2_STREAMS),
        rss / 1024,
        peak / 1024
    );

    drop(service);
    database.drop_it().await;
}

#[derive(Clone)]
struct Bench {
    client: reqwest::Client,
    address: String,
    secret: Arc<Secret>,
}

impl Bench {
    fn new(address: &str) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(90))
                .build()
                .unwrap(),
            address: address.to_owned(),
            secret: Arc::new(SECRET.parse().unwrap()),
        }
    }

    /// A small delivery of `status` for prediction `id`, signed and sent as `send-test` sends.
    async fn deliver(&self, id: &str, status: &str) {
        let body = format!(
            r#"{{"id":"{id}","status":"{status}","created_at":"2024-01-01T00:00:00Z","logs":"","output":null}}"#
        );
        let url = format!("{}/webhooks/replicate", self.address);
        let answer = prediction_inbox::sample::send(&self.client, &url, &self.secret, body)
            .await
            .unwrap();
        assert!((200..300).contains(&answer.status), "{}", answer.status);
    }

    /// Starts a 60 s wait; resolves to when its answer arrived and whether it was a 200.
    fn wait(&self, id: String) -> tokio::task::JoinHandle<(Instant, bool)> {
        self.wait_with(self.client.clone(), id)
    }

    fn wait_with(
        &self,
        client: reqwest::Client,
        id: String,
    ) -> tokio::task::JoinHandle<(Instant, bool)> {
        let this = self.clone();
        tokio::spawn(async move {
            let response = client
                .get(format!("{}/v1/predictions/{id}", this.address))
                .bearer_auth(TOKEN)
                .header("prefer", "wait=60")
                .send()
                .await;
            let ok = response.map(|r| r.status() == 200).unwrap_or(false);
            (Instant::now(), ok)
        })
    }

    async fn wake_latencies(&self, waits: usize) -> Vec<Duration> {
        let mut latencies = Vec::with_capacity(waits);
        for batch in 0..waits.div_ceil(BATCH) {
            let ids: Vec<String> = (0..BATCH).map(|i| format!("lat{batch}_{i}")).collect();
            for id in &ids {
                self.deliver(id, "processing").await;
            }
            let waiting: Vec<_> = ids.iter().map(|id| self.wait(id.clone())).collect();
            // Long enough for every wait to be parked, so each one measures a wake-up.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut acknowledged = Vec::new();
            for id in &ids {
                self.deliver(id, "succeeded").await;
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

    /// Parks `n` waits on unknown ids, measures the service, then finishes each prediction and
    /// counts the waits answered 200 — proof that every one was parked and woken.
    async fn park(&self, n: usize, service: &Service, protocol: &str) -> (usize, u64, u64) {
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
        let mut waiting = Vec::with_capacity(n);
        for i in 0..n {
            let client = match protocol {
                "h2" => h2_clients[i / H2_STREAMS].clone(),
                _ => self.client.clone(),
            };
            waiting.push(self.wait_with(client, format!("parked{i}_{protocol}")));
            if i % 500 == 499 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (rss, peak) = service.memory();

        let limit = Arc::new(Semaphore::new(32));
        let finishing: Vec<_> = (0..n)
            .map(|i| {
                let (this, limit, protocol) = (self.clone(), limit.clone(), protocol.to_owned());
                tokio::spawn(async move {
                    let _permit = limit.acquire().await.unwrap();
                    this.deliver(&format!("parked{i}_{protocol}"), "succeeded")
                        .await;
                })
            })
            .collect();
        for task in finishing {
            task.await.unwrap();
        }
        let mut woken = 0;
        for waiter in waiting {
            woken += usize::from(waiter.await.unwrap().1);
        }
        (woken, rss, peak)
    }
}
