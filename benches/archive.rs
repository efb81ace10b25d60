//! The output archive: how fast it copies files, what it holds meanwhile, and what it costs
//! ingest. Runs the real release binary; files come from the fake platform's file origin, made on
//! the fly, into a local folder.
//!
//!     cargo bench --bench archive -- 1000 1048576          # 1,000 files of 1 MiB
//!     cargo bench --bench archive -- 10 209715200          # 10 files of 200 MiB
//!     cargo bench --bench archive -- 1000 1048576 5000     # and ingest p99 at 5,000/s beside it
//!
//! First `curl` fetches the same files to disk, four at a time (the archiver's concurrency), then
//! `sync`: the baseline. Then the service is given predictions carrying them (ten files each) and
//! timed from the first delivery until its metrics say every file is archived, then `sync`. Its
//! peak RSS is read from /proc over that span. With a rate, the fixed-rate ingest load of
//! `benches/prune.rs` runs 30 s on Postgres with the archive off, then 30 s on a fresh database
//! while the same number of files is archived (and every succeeded prediction of the load is
//! looked at for files): p50, p99 and the largest latency of each.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use prediction_inbox::sample;
use prediction_inbox::verify::Secret;
use serde_json::json;
use support::bench::{BenchDatabase, SECRET, Service, args, fixed_rate_load, summary};
use support::fake_replicate::FakeReplicate;

#[tokio::main]
async fn main() {
    let args = args();
    let files: usize = args.first().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let size: u64 = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1 << 20);
    let rate: u64 = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
    let fake = FakeReplicate::start().await;
    let folder = support::target_tmp()
        .with_file_name("bench")
        .join(format!("archive-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::create_dir_all(&folder).unwrap();
    let urls: Vec<String> = (0..files)
        .map(|i| fake.serve_file(&format!("a{i}.bin"), size))
        .collect();
    let mib = (files as u64 * size) as f64 / f64::from(1 << 20);

    // No files: the cost of looking at the load's predictions alone.
    if files > 0 {
        let curl = curl(&urls, &folder.join("curl"));
        println!(
            "curl, 4 at a time, then sync: {files} files of {size} bytes in {curl:.2} s ({:.0} MiB/s)",
            mib / curl
        );

        let database = BenchDatabase::create("sqlite").await;
        let (took, peak) = archive(&database.url, &fake, &urls, &folder.join("service")).await;
        println!(
            "the service, then sync: {took:.2} s ({:.0} MiB/s), {:.2}× curl's time; peak RSS {} MiB",
            mib / took,
            took / curl,
            peak / 1024
        );
        database.drop_it().await;
    }
    if rate > 0 {
        // The load's own outputs name replicate.delivery, which only the fake's origin is
        // allowed beside: they are recorded as not allowed, never fetched. Each phase on a fresh
        // database.
        let database = BenchDatabase::create("postgres").await;
        let service = Service::start(&database.url, &[("INBOX_ARCHIVE_URL", "off")]);
        let (latencies, failed) =
            fixed_rate_load(&service.address, rate, Duration::from_secs(30), || false).await;
        println!(
            "ingest at {rate}/s, the archive off: {}; {failed} not 200",
            summary(&latencies)
        );
        drop(service);
        database.drop_it().await;

        let database = BenchDatabase::create("postgres").await;
        let service = start_archiving(&database.url, &fake, &folder.join("ingest"));
        let more: Vec<String> = (0..files)
            .map(|i| fake.serve_file(&format!("b{i}.bin"), size))
            .collect();
        let (sent, (latencies, failed)) = tokio::join!(
            deliver(&service.address, &more, "b"),
            fixed_rate_load(&service.address, rate, Duration::from_secs(30), || false)
        );
        let archived = service
            .metric("inbox_archive_files_total{outcome=\"archived\"}")
            .await;
        let refused = service
            .metric("inbox_archive_failures_total{reason=\"host_not_allowed\"}")
            .await;
        println!(
            "ingest at {rate}/s, archiving ({sent} predictions; {archived} files archived, and the load's {refused} URLs recorded as not allowed, by the end): {}; {failed} not 200",
            summary(&latencies)
        );
        drop(service);
        database.drop_it().await;
    }
    let _ = std::fs::remove_dir_all(&folder);
}

/// `curl` fetching every URL into `folder`, four at a time, then `sync`: seconds.
fn curl(urls: &[String], folder: &Path) -> f64 {
    std::fs::create_dir_all(folder).unwrap();
    let config: String = urls
        .iter()
        .enumerate()
        .map(|(i, url)| {
            format!(
                "url = \"{url}\"\noutput = \"{}/{i}.bin\"\n",
                folder.display()
            )
        })
        .collect();
    let listed = folder.join("curl.config");
    std::fs::write(&listed, config).unwrap();
    let started = Instant::now();
    let fetched = Command::new("curl")
        .args([
            "--silent",
            "--fail",
            "--parallel",
            "--parallel-max",
            "4",
            "--config",
        ])
        .arg(&listed)
        .status()
        .expect("curl");
    assert!(fetched.success(), "curl failed");
    assert!(Command::new("sync").status().unwrap().success());
    let took = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(folder);
    took
}

/// The service over `database_url`, archiving the fake's files into `folder`.
fn start_archiving(database_url: &str, fake: &FakeReplicate, folder: &Path) -> Service {
    let url = format!("file://{}", folder.display());
    let max = (4u64 << 30).to_string();
    Service::start(
        database_url,
        &[
            ("INBOX_ARCHIVE_URL", &url),
            ("INBOX_ARCHIVE_HOSTS", fake.files_url()),
            ("INBOX_ARCHIVE_MAX_FILE_BYTES", &max),
        ],
    )
}

/// The service archiving `urls`: seconds from the first delivery until every file is archived and
/// synced, and its peak RSS meanwhile, KiB.
async fn archive(
    database_url: &str,
    fake: &FakeReplicate,
    urls: &[String],
    folder: &Path,
) -> (f64, u64) {
    let service = start_archiving(database_url, fake, folder);
    service.reset_peak();
    let started = Instant::now();
    deliver(&service.address, urls, "a").await;
    loop {
        let archived = service
            .metric("inbox_archive_files_total{outcome=\"archived\"}")
            .await;
        let failed = service
            .metric("inbox_archive_files_total{outcome=\"failed\"}")
            .await;
        assert!(failed == 0.0, "{failed} files failed");
        if archived as usize >= urls.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(Command::new("sync").status().unwrap().success());
    let took = started.elapsed().as_secs_f64();
    (took, service.memory().1)
}

/// Succeeded predictions carrying `urls`, ten each: how many.
async fn deliver(address: &str, urls: &[String], prefix: &str) -> usize {
    let secret: Secret = SECRET.parse().unwrap();
    let client = reqwest::Client::new();
    let url = format!("{address}/webhooks/replicate");
    let mut sent = 0;
    for (i, chunk) in urls.chunks(10).enumerate() {
        let mut body: serde_json::Value = serde_json::from_str(&sample::prediction(
            &format!("{prefix}-archive-{i}"),
            "succeeded",
        ))
        .unwrap();
        body["output"] = json!(chunk);
        let answer = sample::send(&client, &url, &secret, body.to_string())
            .await
            .expect("deliver");
        assert_eq!(answer.status, 200);
        sent += 1;
    }
    sent
}
