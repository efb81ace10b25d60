//! Thousands of hostile connections against the real binary: each opens, sends half a request's
//! headers and stalls. Memory stays bounded, other clients are still served, and the header
//! deadline closes every one of them. What is tested is the transport, which no store touches, so
//! it runs over SQLite alone.

mod common;

use std::time::{Duration, Instant};

use common::service::Service;
use common::{Backend, TestStore, raise_open_files};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNECTIONS: usize = 3000;

#[tokio::test]
async fn thousands_of_stalled_connections_cost_little_and_are_all_cut_off() {
    let limit = raise_open_files(2 * CONNECTIONS as u64 + 1000);
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
