//! Ingest under load: the real release binary, a realistic stream of signed deliveries over many
//! connections, and what came back.
//!
//!     cargo bench --bench ingest                          # Postgres, 64 connections, 20 s
//!     cargo bench --bench ingest -- sqlite 64 20          # the embedded store
//!     cargo bench --bench ingest -- postgres 64 20 5      # five `processing` deliveries a life
//!     INBOX_BENCH_DATABASE_URL=postgres://… cargo bench --bench ingest   # an existing database
//!
//! Every delivery is signed under an id like the platform's (a KSUID: time-ordered, see
//! `sample::message_id_at`) and written out as its HTTP/1.1 request before the clock starts: each
//! prediction's life — starting, processing, succeeded — as the platform sends it, about 870 bytes
//! each, in order on one keep-alive connection. Each connection sends its next delivery as soon as
//! the previous is answered. Reported: deliveries acknowledged per second, latency percentiles,
//! answers that were not 2xx, the machine's CPU a delivery and whose it was, and the service's
//! resident memory idle and at its peak.
//!
//! The service runs as shipped, with its background workers idle beside ingest: the pruner (its
//! default retention), the reconciler (a token, and a fake platform that has nothing to list) and
//! the archiver (a folder, and no allowed host among the sample outputs' files, so it only
//! looks).

use std::time::{Duration, Instant};

use prediction_inbox::sample;
use prediction_inbox::verify::Secret;
use support::bench::{BenchDatabase, SECRET, Service, free_port, summary};
use support::fake_replicate::{ACCOUNT_TOKEN, FakeReplicate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The bodies the platform sends over one prediction's life: `starting`; then `processing`, as many
/// times as asked, the logs growing each time (so each one advances the stored state); then
/// `succeeded`.
fn lifetime(id: &str, processing: usize) -> Vec<String> {
    let mut bodies = vec![sample::prediction(id, "starting")];
    let mut running: serde_json::Value =
        serde_json::from_str(&sample::prediction(id, "processing")).unwrap();
    for step in 1..=processing {
        let logs = format!(
            "{}step {step}\n",
            running["logs"].as_str().unwrap_or_default()
        );
        running["logs"] = logs.into();
        bodies.push(running.to_string());
    }
    bodies.push(sample::prediction(id, "succeeded"));
    bodies
}

/// A signed delivery as the bytes of its HTTP/1.1 request, ready to write.
type Request = Vec<u8>;

// One thread drives every connection, as wrk does: the tool shares the machine with the service
// and its database, and every cycle it spends is taken from them.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = support::bench::args();
    // For tools/compare-naive.sh: the batch statement it runs alone.
    if args.first().map(String::as_str) == Some("statement") {
        println!("{}", prediction_inbox::store::POSTGRES_BATCH_STATEMENT);
        return;
    }
    // And the settings of the connection it runs on, as `PGOPTIONS`.
    if args.first().map(String::as_str) == Some("statement-settings") {
        let settings = prediction_inbox::store::POSTGRES_WRITER_SETTINGS
            .map(|(name, value)| format!("-c {name}={value}"));
        println!("{}", settings.join(" "));
        return;
    }
    let backend = args.first().map_or("postgres", String::as_str).to_owned();
    let connections: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20);
    // `processing` deliveries in each prediction's life, each with more logs than the last.
    let processing: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1);
    let life = processing + 2;

    let database = match std::env::var("INBOX_BENCH_DATABASE_URL") {
        Ok(_) => None,
        Err(_) => Some(BenchDatabase::create(&backend).await),
    };
    let url = std::env::var("INBOX_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| database.as_ref().map(|d| d.url.clone()).unwrap_or_default());

    // Enough for each connection to run the whole time at 40,000 deliveries a second overall.
    let per_connection = (40_000 * seconds as usize)
        .div_ceil(connections)
        .div_ceil(life)
        * life;
    let secret: Secret = SECRET.parse().unwrap();
    let mut bodies = 0;
    // Signed in the order they will be sent, a life for each connection in turn: the platform
    // stamps `webhook-id`s and `created_at` as time goes on, so the receiver's indexes of them
    // grow at one end. Signing one connection's whole stream before the next would spread the
    // run's writes over as many places in those indexes as there are connections.
    let mut streams: Vec<Vec<Request>> = (0..connections)
        .map(|_| Vec::with_capacity(per_connection))
        .collect();
    for _ in 0..per_connection / life {
        for stream in &mut streams {
            for body in lifetime(&sample::prediction_id(), processing) {
                bodies += body.len();
                stream.push(request(&secret, &body));
            }
        }
    }
    let size = bodies / (connections * per_connection);
    println!(
        "{backend}: {connections} connections for {seconds} s, {life} deliveries a prediction; {} deliveries signed, {size} bytes each on average",
        connections * per_connection
    );

    // The background workers, idle: see the module's docs.
    let fake = FakeReplicate::start().await;
    let port = free_port();
    let webhook = format!("http://127.0.0.1:{port}/webhooks/replicate");
    let archive = support::target_tmp().join(format!("ingest-archive-{}", std::process::id()));
    std::fs::create_dir_all(&archive).unwrap();
    let archive_url = format!("file://{}", archive.display());
    let service = Service::start_on(
        port,
        &url,
        &[
            ("REPLICATE_API_TOKEN", ACCOUNT_TOKEN),
            ("INBOX_REPLICATE_API_URL", fake.url()),
            ("INBOX_WEBHOOK_URL", &webhook),
            ("INBOX_ARCHIVE_URL", &archive_url),
            // The sample outputs' files are on replicate.delivery, which this machine cannot
            // reach: allowed, each would be fetched and fail. The archiver still reads every
            // finished prediction's output and finds nothing it may fetch.
            ("INBOX_ARCHIVE_HOSTS", "files.invalid"),
        ],
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = service.rss_kib();
    let target = service.address.trim_start_matches("http://").to_owned();
    let busy_before = support::bench::busy_cpu_seconds();
    let shares_before = cpu_shares(&service);
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
    let busy = support::bench::busy_cpu_seconds() - busy_before;
    let shares = cpu_shares(&service).map2(shares_before, |after, before| after - before);
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
        "machine CPU: {:.0} µs a delivery, all processes ({:.0} % of {} cores busy)",
        busy * 1e6 / acknowledged.max(1) as f64,
        busy * 100.0 / elapsed.as_secs_f64() / cores() as f64,
        cores()
    );
    let per_delivery = |seconds: f64| seconds * 1e6 / acknowledged.max(1) as f64;
    println!(
        "  of which: service {:.0} µs, Postgres {:.0} µs, this load tool {:.0} µs, the rest {:.0} µs",
        per_delivery(shares.0),
        per_delivery(shares.1),
        per_delivery(shares.2),
        per_delivery(busy - shares.0 - shares.1 - shares.2),
    );
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
    let _ = std::fs::remove_dir_all(&archive);
    if let Some(database) = database {
        database.drop_it().await;
    }
}

/// A delivery's request, signed now.
fn request(secret: &Secret, body: &str) -> Request {
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let id = sample::message_id_at(timestamp);
    let signature = secret.sign(&id, timestamp, body.as_bytes());
    format!(
        "POST /webhooks/replicate HTTP/1.1\r\nhost: inbox\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nwebhook-id: {id}\r\nwebhook-timestamp: {timestamp}\r\n\
         webhook-signature: {signature}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends one connection's stream in order until `until`, on one keep-alive connection; the
/// latency of each answer, how many were not 2xx, and whether the stream ran out first.
async fn send_all(
    address: String,
    stream: Vec<Request>,
    until: Instant,
) -> (Vec<Duration>, usize, bool) {
    let mut connection = TcpStream::connect(&address).await.unwrap();
    connection.set_nodelay(true).unwrap();
    let mut buffer = Vec::with_capacity(4096);
    let (mut latencies, mut failed) = (Vec::with_capacity(stream.len()), 0);
    for request in stream {
        if Instant::now() >= until {
            return (latencies, failed, false);
        }
        let sent = Instant::now();
        connection.write_all(&request).await.unwrap();
        let status = read_answer(&mut connection, &mut buffer).await;
        latencies.push(sent.elapsed());
        failed += usize::from(!(200..300).contains(&status));
    }
    (latencies, failed, true)
}

/// Reads one whole answer off the connection, and returns its status code.
async fn read_answer(connection: &mut TcpStream, buffer: &mut Vec<u8>) -> u16 {
    buffer.clear();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut answer = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = answer.parse(buffer).expect("an HTTP answer") {
            let length: usize = answer
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .expect("answers have a content-length");
            let status = answer.code.unwrap_or(0);
            if buffer.len() >= head + length {
                assert_eq!(buffer.len(), head + length, "one answer at a time");
                return status;
            }
        }
        let mut chunk = [0; 4096];
        let read = connection.read(&mut chunk).await.unwrap();
        assert!(read > 0, "the service closed the connection");
        buffer.extend_from_slice(&chunk[..read]);
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// CPU seconds spent so far by the service, by Postgres' processes and by this tool.
#[derive(Clone, Copy)]
struct Shares(f64, f64, f64);

impl Shares {
    fn map2(self, other: Self, f: impl Fn(f64, f64) -> f64) -> Self {
        Self(f(self.0, other.0), f(self.1, other.1), f(self.2, other.2))
    }
}

fn cpu_shares(service: &Service) -> Shares {
    Shares(
        service.cpu_seconds(),
        support::bench::postgres_cpu_seconds(),
        support::bench::process_cpu_seconds("self"),
    )
}
