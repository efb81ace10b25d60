//! Creating through the inbox, against the fake platform in this process (on threads of its own)
//! and the real release binary:
//!
//!     cargo bench --bench gateway                 # Postgres: 32 concurrent creates, 10 s a phase
//!     cargo bench --bench gateway -- sqlite 32 10 # the embedded store; creates at once; seconds
//!
//! 1. **What the inbox adds to a create.** 32 tasks create as fast as they can, first straight at
//!    the fake, then through the inbox, then again each way (alternating, so that a change in the
//!    machine's speed shows as a difference between rounds). Each create through the inbox says
//!    in `Server-Timing` how long its call to the platform and its local commit took; the rest is
//!    the client-observed time minus both. Target: the rest's p99 < 3 ms.
//! 2. **From the terminal webhook's commit to `replicate.run()` returning**, with the official
//!    Python client (tests/setup.sh installs it) on a model that finishes after the create's
//!    one-second wait: the client then polls every 0.5 s. The commit is taken as the moment the
//!    fake got the inbox's `200` for the terminal webhook (the inbox answers only after it
//!    commits); the client's wait before its last poll is the poll interval's share, and what
//!    follows it, to `run()` returning, is the inbox's. Target: < 50 ms beyond the poll interval.

use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::{Value, json};
use support::bench::{BenchDatabase, Service, free_port, summary};
use support::fake_replicate::{ACCOUNT_TOKEN, FakeReplicate, VERSION};

const CREATE_TOKEN: &str = "bench-create-token-0123456789";

#[tokio::main]
async fn main() {
    let args = support::bench::args();
    let backend = args.first().map_or("postgres", String::as_str).to_owned();
    let concurrency: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(32);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);

    let fake = FakeReplicate::start_apart();
    let database = BenchDatabase::create(&backend).await;
    let port = free_port();
    let webhook = format!("http://127.0.0.1:{port}/webhooks/replicate");
    let service = Service::start_on(
        port,
        &database.url,
        &[
            ("REPLICATE_API_TOKEN", ACCOUNT_TOKEN),
            ("INBOX_REPLICATE_API_URL", fake.url()),
            ("INBOX_WEBHOOK_URL", &webhook),
            ("INBOX_CREATE_TOKENS", CREATE_TOKEN),
        ],
    );
    println!("{backend}: {concurrency} concurrent creates, {seconds} s a phase");
    for round in 1..=2 {
        let direct = creates(
            &format!("{}/v1/predictions", fake.url()),
            ACCOUNT_TOKEN,
            concurrency,
            seconds,
        )
        .await;
        let inbox = creates(
            &format!("{}/v1/predictions", service.address),
            CREATE_TOKEN,
            concurrency,
            seconds,
        )
        .await;
        let total: Vec<Duration> = inbox.iter().map(|c| c.total).collect();
        let upstream: Vec<Duration> = inbox.iter().map(|c| c.upstream).collect();
        let commit: Vec<Duration> = inbox.iter().map(|c| c.commit).collect();
        let rest: Vec<Duration> = inbox
            .iter()
            .map(|c| c.total.saturating_sub(c.upstream + c.commit))
            .collect();
        let direct: Vec<Duration> = direct.iter().map(|c| c.total).collect();
        println!("round {round}:");
        println!(
            "  straight to the fake: {} creates/s; {}",
            rate(&direct, seconds),
            summary(&direct)
        );
        println!(
            "  through the inbox:    {} creates/s; {}",
            rate(&total, seconds),
            summary(&total)
        );
        println!("    its call upstream:  {}", summary(&upstream));
        println!("    its local commit:   {}", summary(&commit));
        println!("    the rest:           {}", summary(&rest));
    }

    let runs = 10;
    let python = support::venv_program("python");
    let mut command = std::process::Command::new(&python);
    command
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/python/timed.py"
        ))
        .env("INBOX_URL", &service.address)
        .env("INBOX_TOKEN", CREATE_TOKEN)
        .env("FAKE_VERSION", VERSION)
        .env("RUNS", runs.to_string())
        .env("STEP_MS", "1700");
    // Beside the fake, which serves from this process meanwhile.
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{}: {e} (run tests/setup.sh)", python.display()));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let sent = fake.webhooks_sent();
    let (mut polled, mut beyond, mut whole) = (Vec::new(), Vec::new(), Vec::new());
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let run: Value = serde_json::from_str(line).unwrap();
        let id = run["id"].as_str().expect("the client polled");
        let committed = sent
            .iter()
            .find(|s| s.prediction_id == id && s.event == "completed" && s.status == 200)
            .expect("the terminal webhook was acknowledged")
            .answered_at
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let returned = run["returned"].as_f64().unwrap();
        // The client's first read after the commit is the one that saw it finished.
        let asked = run["gets"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_f64)
            .find(|at| *at >= committed)
            .expect("a read after the commit");
        assert_eq!(run["output"], json!(["step 1"]));
        polled.push(Duration::from_secs_f64(asked - committed));
        beyond.push(Duration::from_secs_f64(returned - asked));
        whole.push(Duration::from_secs_f64(returned - committed));
    }
    println!("replicate.run() (Python 1.0.7) after the terminal webhook's commit, {runs} runs:");
    println!("  in all:                       {}", summary(&whole));
    println!("  waiting for the next poll:    {}", summary(&polled));
    println!("  from that poll to returning:  {}", summary(&beyond));

    drop(service);
    database.drop_it().await;
}

struct Create {
    total: Duration,
    upstream: Duration,
    commit: Duration,
}

/// `concurrency` tasks creating at `url` for `seconds`, each on a keep-alive connection of its own.
///
/// The load shares the two cores with the service, and its wait to be scheduled counts in the
/// rest: so each task sends one request built once, over hyper's bare HTTP/1 connection, with
/// nothing of a client's pool, redirect policy or per-request URL parsing.
async fn creates(url: &str, token: &str, concurrency: usize, seconds: u64) -> Vec<Create> {
    let url: hyper::Uri = url.parse().unwrap();
    let authority = url.authority().unwrap().to_string();
    // A model that stays `starting` for the whole run: the creates alone are measured.
    let body =
        bytes::Bytes::from(json!({"version": VERSION, "input": {"start_ms": 600_000}}).to_string());
    let request = hyper::Request::post(url.path())
        .header("host", &authority)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let until = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (authority, body) = (authority.clone(), body.clone());
            let (parts, ()) = request.clone().into_parts();
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(&authority).await.unwrap();
                stream.set_nodelay(true).unwrap();
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(connection);
                let mut done = Vec::new();
                while Instant::now() < until {
                    let request = hyper::Request::from_parts(
                        parts.clone(),
                        axum::body::Body::from(body.clone()),
                    );
                    let started = Instant::now();
                    let answer = sender.send_request(request).await.unwrap();
                    let (answer, incoming) = answer.into_parts();
                    let read = axum::body::to_bytes(axum::body::Body::new(incoming), 1 << 20)
                        .await
                        .unwrap();
                    let total = started.elapsed();
                    assert_eq!(answer.status, 201, "{}", String::from_utf8_lossy(&read));
                    let timing = answer
                        .headers
                        .get("server-timing")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    done.push(Create {
                        total,
                        upstream: server_timing(timing, "upstream"),
                        commit: server_timing(timing, "commit"),
                    });
                }
                done
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// The `dur` of `name` in a `Server-Timing` value, in milliseconds; zero if absent.
fn server_timing(value: &str, name: &str) -> Duration {
    value
        .split(',')
        .filter_map(|metric| metric.trim().split_once(";dur="))
        .find(|(metric, _)| *metric == name)
        .and_then(|(_, ms)| ms.parse::<f64>().ok())
        .map_or(Duration::ZERO, |ms| Duration::from_secs_f64(ms / 1e3))
}

fn rate(latencies: &[Duration], seconds: u64) -> String {
    format!("{:.0}", latencies.len() as f64 / seconds as f64)
}
