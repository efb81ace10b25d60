//! What the benchmarks share: the real release binary in a process of its own, a fresh database
//! for it, and latency summaries.
#![allow(dead_code)] // each benchmark uses its own share

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};

#[path = "../../tests/common/flood.rs"]
pub mod flood;
#[path = "../../tests/common/limits.rs"]
pub mod limits;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const TOKEN: &str = "bench-token-0123456789";

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
            let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let binary = env!("CARGO_BIN_EXE_prediction-inbox");
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

pub fn summary(latencies: &[Duration]) -> String {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let at = |q: f64| {
        sorted[((sorted.len() as f64 * q).ceil() as usize)
            .saturating_sub(1)
            .min(sorted.len() - 1)]
    };
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(0.999).as_secs_f64() * 1e3,
        sorted[sorted.len() - 1].as_secs_f64() * 1e3
    )
}
