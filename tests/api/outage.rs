//! Database outages under load (Postgres: the server is the part that can go away while the
//! service runs). Senders deliver continuously while the database first drops every connection of
//! the service, then refuses connections for a while. Throughout: no 2xx while nothing can commit,
//! every refusal a 503 with `Retry-After`, `/readyz` 503 while the database is gone, recovery with
//! no restart, and every acknowledged delivery stored afterwards.

use std::time::{Duration, Instant};

use support::load::{Load, Sent, verify_acknowledged};
use support::{Backend, Delivery, eventually, prediction, spawn_app};

const TERMINATE: &str = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE datname = '{db}' AND application_name = 'prediction-inbox'";

#[tokio::test]
async fn outages_under_load_refuse_with_503_recover_by_themselves_and_lose_nothing() {
    let outage = Duration::from_millis(
        std::env::var("INBOX_OUTAGE_MS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(2000),
    );
    let app = spawn_app(Backend::Postgres).await;
    let (db, pool) = app.postgres();
    pool.close().await;
    let load = Load::start(&app.address, 16, "o");
    let ready = || async {
        let response = app
            .client
            .get(format!("{}/readyz", app.address))
            .send()
            .await
            .expect("readyz");
        response.status().as_u16()
    };
    let started = Instant::now();
    eventually("the load gets in", || async {
        load.acknowledged_since(started) >= 50
    })
    .await;

    // Every connection of the service goes at once; the database itself stays up.
    db.admin(TERMINATE).await;
    let terminated = Instant::now();
    eventually("deliveries get in again on new connections", || async {
        load.acknowledged_since(terminated) >= 20
    })
    .await;

    // The database becomes unreachable: new connections are refused, and the open ones go.
    db.admin("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false")
        .await;
    db.admin(TERMINATE).await;
    let down = Instant::now();
    eventually(
        "/readyz says 503 while the database is unreachable",
        || async { ready().await == 503 },
    )
    .await;
    // What is left of the outage: its length is the scenario, not a wait for a state.
    tokio::time::sleep(outage.saturating_sub(down.elapsed())).await;
    let up = Instant::now();
    db.admin("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true")
        .await;

    // Recovery, without a restart: deliveries get in again.
    eventually("ready again", || async { ready().await == 200 }).await;
    let recovered = up.elapsed();
    eventually("deliveries get in after the recovery", || async {
        load.acknowledged_since(up + recovered) >= 20
    })
    .await;
    let sent = load.stop().await;

    // Nothing could commit from shortly after the connections went until the database was back.
    let settle = Duration::from_millis(200);
    let during = |d: &&Sent| d.at > down + settle && d.at < up;
    let acknowledged_during = sent
        .iter()
        .filter(during)
        .filter(|d| d.acknowledged())
        .count();
    assert_eq!(acknowledged_during, 0, "2xx while nothing could commit");
    let refused: Vec<&Sent> = sent.iter().filter(|d| !d.acknowledged()).collect();
    for delivery in &refused {
        assert_eq!(delivery.status, Some(503), "{delivery:?}");
        assert!(delivery.retry_after, "503 without Retry-After");
    }
    let after = sent
        .iter()
        .filter(|d| d.at > up + recovered)
        .filter(|d| d.acknowledged());
    assert!(after.count() > 0, "no delivery got in after the recovery");

    let acknowledged = verify_acknowledged(&app.address, &sent).await;
    println!(
        "outage of {} ms: {} deliveries sent, {} answered 503 (Retry-After on each), {acknowledged} \
         acknowledged and all present; ready again {} ms after the database was",
        outage.as_millis(),
        sent.len(),
        refused.len(),
        recovered.as_millis()
    );
}

/// A restarted server, or a failover, leaves every idle pooled connection dead. The service learns
/// it from each one's first statement and starts over on another, so callers never see it: no
/// 503 for a read, a write or the readiness probe.
#[tokio::test]
async fn connections_that_died_idle_are_replaced_without_an_error() {
    let app = spawn_app(Backend::Postgres).await;
    let first = Delivery::new(prediction("p1", "starting", ""));
    app.deliver(&first).await;
    // Several reads at once, so that the pool holds several idle connections, not one.
    let reads: Vec<_> = (0..8).map(|_| app.prediction("p1")).collect();
    for read in futures_util::future::join_all(reads).await {
        assert_eq!(read.as_deref(), Some(first.body.as_str()));
    }

    app.postgres().0.admin(TERMINATE).await;

    let later = Delivery::new(prediction("p1", "succeeded", ""));
    assert_eq!(app.deliver(&later).await, "applied");
    assert_eq!(
        app.prediction("p1").await.as_deref(),
        Some(later.body.as_str())
    );
    let list = app.get("/v1/predictions").await;
    assert_eq!(list.status(), 200);
    let ready = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await;
    assert_eq!(ready.expect("readyz").status(), 200);
}
