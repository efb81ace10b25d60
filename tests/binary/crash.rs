//! Crash under load: the real binary is killed with SIGKILL at random moments while senders deliver
//! continuously, then restarted; every delivery that was answered 2xx must be readable with its
//! state (or a later one of its life) afterwards.
//!
//! CI runs 4 crashes per store. For a longer run:
//!
//!     INBOX_CRASHES=50 cargo test --test binary crash -- --nocapture

use std::time::Duration;

use support::load::{Load, verify_acknowledged};
use support::service::Service;
use support::{Backend, TestStore};

async fn nothing_acknowledged_is_lost_across_kill_9_under_load(backend: Backend) {
    let crashes: usize = std::env::var("INBOX_CRASHES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4);
    let store = TestStore::create(backend).await;
    let mut sent = Vec::new();
    for crash in 0..crashes {
        let mut service = Service::start(&store.url());
        let load = Load::start(&service.address, 16, &format!("c{crash}"));
        // A random moment, after the load has built up.
        tokio::time::sleep(Duration::from_millis(fastrand::u64(300..1500))).await;
        service.child.kill().expect("SIGKILL");
        service.child.wait().expect("reap");
        sent.extend(load.stop().await);
    }
    let service = Service::start(&store.url());
    let acknowledged = verify_acknowledged(&service.address, &sent).await;
    let unanswered = sent.iter().filter(|d| d.status.is_none()).count();
    println!(
        "{backend:?}: {crashes} crashes; {} deliveries sent, {acknowledged} acknowledged and all \
         present, {unanswered} cut off by a crash",
        sent.len()
    );
    assert!(
        acknowledged > 20 * crashes,
        "too little load to mean anything"
    );
}

support::on_each_backend!(nothing_acknowledged_is_lost_across_kill_9_under_load);
