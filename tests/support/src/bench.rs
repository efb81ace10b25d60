//! What the benchmarks share: the real release binary in a process of its own, a fresh database
//! for it, and latency summaries.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prediction_inbox::sample;
use prediction_inbox::verify::Secret;

use sqlx::{Connection, Executor, PgConnection};

pub use crate::{SECRET, TOKEN};

/// A database made for one run and removed after it: a Postgres database on the test server
/// (`TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432`), or a SQLite file under
/// `target/`.
pub struct BenchDatabase {
    pub url: String,
    postgres: Option<(String, String)>,
}

impl BenchDatabase {
    pub async fn create(backend: &str) -> Self {
        let name = format!("inbox_bench_{}", std::process::id());
        if backend == "sqlite" {
            let folder = crate::target_tmp().with_file_name("bench");
            std::fs::create_dir_all(&folder).unwrap();
            let path = folder.join(format!("{name}.db"));
            remove_sqlite(&path.display().to_string());
            return Self {
                url: format!("sqlite://{}", path.display()),
                postgres: None,
            };
        }
        let server = std::env::var("TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        let mut admin = PgConnection::connect(&format!("{server}/postgres"))
            .await
            .expect("PostgreSQL for the benchmark");
        admin
            .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .unwrap();
        Self {
            url: format!("{server}/{name}"),
            postgres: Some((server, name)),
        }
    }

    pub async fn drop_it(self) {
        match &self.postgres {
            Some((server, name)) => {
                let mut admin = PgConnection::connect(&format!("{server}/postgres"))
                    .await
                    .unwrap();
                admin
                    .execute(format!(r#"DROP DATABASE "{name}" WITH (FORCE)"#).as_str())
                    .await
                    .unwrap();
            }
            None => remove_sqlite(self.url.trim_start_matches("sqlite://")),
        }
    }
}

fn remove_sqlite(path: &str) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// The positional arguments after `cargo bench --bench NAME --`; cargo's own `--bench` flag,
/// which it passes on, is not one.
pub fn args() -> Vec<String> {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect()
}

pub struct Service {
    pub child: Child,
    pub address: String,
}

impl Service {
    /// The release binary over `database_url`, with `env` added to the settings.
    pub fn start(database_url: &str, env: &[(&str, &str)]) -> Self {
        Self::start_on(free_port(), database_url, env)
    }

    /// As `start`, listening on `port`: for settings that name the service's own address.
    pub fn start_on(port: u16, database_url: &str, env: &[(&str, &str)]) -> Self {
        let binary = crate::service::binary();
        let binary = binary.to_str().expect("a UTF-8 path");
        // A profiler to run the service under, e.g. `valgrind --tool=massif`.
        let wrap = std::env::var("INBOX_BENCH_WRAP").unwrap_or_default();
        let mut words = wrap.split_whitespace().chain([binary]);
        // The bench's own `INBOX_*` settings reach the service, to try one out.
        let settings = std::env::vars()
            .filter(|(key, _)| key.starts_with("INBOX_") && !key.starts_with("INBOX_BENCH_"));
        let child = Command::new(words.next().unwrap_or(binary))
            .args(words)
            .env_clear()
            .env("DATABASE_URL", database_url)
            .env("INBOX_WEBHOOK_SECRETS", SECRET)
            .env("INBOX_API_TOKENS", TOKEN)
            .env("INBOX_LISTEN", format!("127.0.0.1:{port}"))
            .envs(settings)
            .envs(env.iter().copied())
            // Logging as shipped (`RUST_LOG` unset: `info`, a line for every delivery), into
            // nothing: formatting and writing each line is part of what is measured.
            .stdout(Stdio::null())
            .spawn()
            .expect("start the service");
        // Built before it answers, so that a failed start is still stopped and reaped by `Drop`.
        let service = Self {
            child,
            address: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..600 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return service;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the service did not start");
    }

    /// Resident set and its peak, KiB, from /proc.
    pub fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    pub fn rss_kib(&self) -> u64 {
        self.memory().0
    }

    /// CPU time the service has spent, user and system, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(&self.child.id().to_string())
    }

    /// Starts the peak over: from now on it is the most the resident set reaches from here.
    pub fn reset_peak(&self) {
        // `5`: reset the high-water mark to the current resident set (proc(5), clear_refs).
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5")
            .expect("reset the service's peak RSS");
    }

    /// The value of the metric `name` (a line without labels) in the service's `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.address))
            .await
            .expect("/metrics")
            .text()
            .await
            .expect("/metrics text");
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Service {
    /// SIGTERM first, so a profiler wrapping the service gets to write its report.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..300 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time spent by the whole machine (not idle, not waiting on I/O), from `/proc/stat`: what
/// each delivery costs, service, database and this tool together. Steadier than the rate on a
/// machine whose neighbours come and go.
pub fn busy_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    // user, nice, system, idle, iowait, irq, softirq, steal: the first seven but idle and iowait
    // (steal is the host's, not ours), in USER_HZ ticks, 100 a second on Linux.
    let busy: f64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| ticks.get(i)).sum();
    busy / 100.0
}

/// CPU time, user and system, that the Postgres server's processes now running have spent, in
/// seconds (a backend that exits takes its share with it).
pub fn postgres_cpu_seconds() -> f64 {
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    processes
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|name| name.trim() == "postgres")
        })
        .map(|pid| process_cpu_seconds(&pid))
        .sum()
}

/// CPU time, user and system, that the process `pid` (`self` for this one) has spent, seconds.
pub fn process_cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name in parentheses: utime and stime are fields 14 and 15 of the line,
    // in USER_HZ ticks, 100 a second on Linux.
    let fields: Vec<f64> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .map(|field| field.parse().unwrap_or(0.0))
        .collect();
    (fields.get(11).unwrap_or(&0.0) + fields.get(12).unwrap_or(&0.0)) / 100.0
}

pub fn summary(latencies: &[Duration]) -> String {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let at = |q: f64| quantile_of_sorted(&sorted, q);
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(0.999).as_secs_f64() * 1e3,
        sorted[sorted.len() - 1].as_secs_f64() * 1e3
    )
}

/// The latency at quantile `q` (0.99: p99) of `latencies`, in any order.
pub fn quantile(latencies: &[Duration], q: f64) -> Duration {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    quantile_of_sorted(&sorted, q)
}

fn quantile_of_sorted(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q).ceil() as usize)
        .saturating_sub(1)
        .min(sorted.len() - 1)]
}

/// Sends `rate` deliveries a second, each at its scheduled time (an open load: a stall shows in
/// full), a new prediction's life (starting, processing, succeeded) every three, for `length` or
/// until `done`: each one's latency from its scheduled time, and how many were not answered 200.
pub async fn fixed_rate_load(
    address: &str,
    rate: u64,
    length: Duration,
    done: impl Fn() -> bool,
) -> (Vec<Duration>, usize) {
    let secret: Secret = SECRET.parse().unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let url = format!("{address}/webhooks/replicate");
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let started = Instant::now();
    let mut sent = Vec::new();
    let mut life: Vec<String> = Vec::new();
    let mut next = 0u64;
    // A tick every millisecond sends whatever is due by then.
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while started.elapsed() < length && !done() {
        ticks.tick().await;
        while started + interval * next as u32 <= Instant::now() {
            let scheduled = started + interval * next as u32;
            next += 1;
            if life.is_empty() {
                let id = sample::prediction_id();
                life = ["succeeded", "processing", "starting"]
                    .iter()
                    .map(|status| sample::prediction(&id, status))
                    .collect();
            }
            let body = life.pop().unwrap_or_default();
            let (client, secret, url) = (client.clone(), secret.clone(), url.clone());
            sent.push(tokio::spawn(async move {
                let answer = sample::send(&client, &url, &secret, body).await;
                let ok = matches!(answer, Ok(answer) if answer.status == 200);
                (scheduled.elapsed(), ok)
            }));
        }
    }
    let mut latencies = Vec::with_capacity(sent.len());
    let mut failed = 0;
    for send in sent {
        let (latency, ok) = send.await.unwrap();
        latencies.push(latency);
        failed += usize::from(!ok);
    }
    (latencies, failed)
}
