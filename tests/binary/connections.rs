//! Hostile connections against the real binary. Thousands that each open, send half a request's
//! headers and stall: memory stays bounded, other clients are still served, and the header
//! deadline closes every one of them. A flood of large bodies: the service holds no more than its
//! budget. What is tested is the transport, which no store touches, so it runs over SQLite alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::service::Service;
use support::{Backend, TestStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNECTIONS: usize = 3000;

#[tokio::test]
async fn thousands_of_stalled_connections_cost_little_and_are_all_cut_off() {
    let limit = support::limits::raise_open_files(2 * CONNECTIONS as u64 + 1000);
    assert!(
        limit > CONNECTIONS as u64 + 500,
        "this test opens {CONNECTIONS} connections and the open-files limit is {limit} (its hard \
         limit too): raise it first, e.g. `ulimit -Hn 20000` as root"
    );
    let store = TestStore::create(Backend::Sqlite).await;
    let service = Service::start_with(
        &[
            ("DATABASE_URL", &store.url()),
            ("INBOX_REQUEST_TIMEOUT_SECS", "3"),
        ],
        &std::env::temp_dir(),
    );
    let addr = service.address.trim_start_matches("http://").to_owned();
    let idle = service.rss_kib();

    let mut stalled = Vec::with_capacity(CONNECTIONS);
    let opened = Instant::now();
    for _ in 0..CONNECTIONS {
        let mut stream = TcpStream::connect(&addr).await.expect("connect");
        stream
            .write_all(b"POST /webhooks/replicate HTTP/1.1\r\nHost: inbox\r\nwebhook-id: msg_")
            .await
            .expect("half the headers");
        stalled.push(stream);
    }

    // Everyone else is still served, promptly.
    let started = Instant::now();
    let health = reqwest::get(format!("{}/healthz", service.address))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(1));

    // Each stalled connection is closed by the server once the header deadline passes.
    let mut closed = 0;
    for mut stream in stalled {
        let mut byte = [0u8; 512];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte)).await;
        if matches!(read, Ok(Ok(_)) | Ok(Err(_))) {
            closed += 1;
        }
    }
    let cut_off_after = opened.elapsed();
    // The most the service held, whenever that was.
    let loaded = service.peak_rss_kib();
    println!(
        "{CONNECTIONS} stalled connections: RSS {} MiB idle, {} MiB with them open; \
         all {closed} cut off within {:.1} s of opening",
        idle / 1024,
        loaded / 1024,
        cut_off_after.as_secs_f64()
    );
    assert_eq!(closed, CONNECTIONS);
    assert!(
        loaded < 100 * 1024,
        "{} MiB with the connections open",
        loaded / 1024
    );
    service.signal("-TERM");
    assert_eq!(service.exit_code().0, Some(0));
}

/// The bodies of a flood are let go as they are cut off, and leave the process with it: its peak
/// memory stays within the body budget and a margin, however many come and go.
#[tokio::test]
async fn a_flood_of_large_bodies_holds_no_more_than_the_body_budget() {
    const BUDGET: usize = 64 << 20;
    const ATTACKERS: usize = 64;
    const ATTACKS: usize = 1500;
    const BODY: usize = 16 << 20;
    support::limits::raise_open_files(4 * ATTACKERS as u64 + 1000);
    let store = TestStore::create(Backend::Sqlite).await;
    let service = Service::start_with(
        &[
            ("DATABASE_URL", &store.url()),
            ("INBOX_MAX_INFLIGHT_BODY_BYTES", &BUDGET.to_string()),
        ],
        &std::env::temp_dir(),
    );
    let addr = service.address.trim_start_matches("http://").to_owned();
    let idle = service.rss_kib();
    let attacks = Arc::new(AtomicUsize::new(0));
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|_| {
            let (addr, attacks) = (addr.clone(), attacks.clone());
            tokio::spawn(async move {
                let mut ended = Vec::new();
                while attacks.fetch_add(1, Ordering::Relaxed) < ATTACKS {
                    ended.push(support::flood::large_unsigned_body(&addr, BODY).await);
                }
                ended
            })
        })
        .collect();
    let mut ended = std::collections::BTreeMap::<String, usize>::new();
    for attacker in attackers {
        for outcome in attacker.await.expect("an attacker") {
            *ended.entry(outcome).or_default() += 1;
        }
    }
    let peak = service.peak_rss_kib();
    println!(
        "{ATTACKS} unsigned 16 MiB bodies from {ATTACKERS} connections at a time, ended by \
         {ended:?}: RSS {} MiB idle, {} MiB at most",
        idle / 1024,
        peak / 1024
    );
    assert_eq!(ended.values().sum::<usize>(), ATTACKS);
    assert!(
        peak < idle + (BUDGET as u64 >> 10) + 32 * 1024,
        "{} MiB at most, with a budget of {} MiB",
        peak / 1024,
        BUDGET >> 20
    );
}
