//! Probes, and errors the framework makes still leaving as problems.

use reqwest::StatusCode;
use support::{Backend, Delivery, assert_problem, prediction, spawn_app, spawn_app_with};

async fn probes_answer(backend: Backend) {
    let app = spawn_app(backend).await;
    for path in ["/healthz", "/readyz"] {
        let response = app
            .client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

async fn unknown_routes_and_methods_are_problems(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_problem(app.get("/v2/anything").await, StatusCode::NOT_FOUND).await;
    let response = app
        .client
        .get(format!("{}/webhooks/replicate", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "POST");
    assert_problem(response, StatusCode::METHOD_NOT_ALLOWED).await;
    let response = app
        .client
        .delete(format!("{}/v1/predictions/x", app.address))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::METHOD_NOT_ALLOWED).await;
}

async fn a_request_stuck_on_the_database_gets_503_within_the_timeout(backend: Backend) {
    let app = spawn_app_with(backend, &[("INBOX_REQUEST_TIMEOUT_SECS", "1")]).await;
    let first = Delivery::new(prediction("p1", "starting", ""));
    app.deliver(&first).await;
    // Another session holds the lock the write needs, so the write waits.
    let blocker = app.block_writes().await;

    let started = std::time::Instant::now();
    let response = app
        .send(&Delivery::new(prediction("p1", "succeeded", "")))
        .await;
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(response.headers().contains_key("retry-after"));
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;

    blocker.release().await;
    assert_eq!(
        app.prediction("p1").await.as_deref(),
        Some(first.body.as_str())
    );
    assert_eq!(app.count("deliveries").await, 1);
}

#[tokio::test]
async fn an_exhausted_pool_gets_503_within_the_timeout_not_a_hung_request() {
    let app = spawn_app_with(
        Backend::Postgres,
        &[
            ("INBOX_REQUEST_TIMEOUT_SECS", "1"),
            ("INBOX_DATABASE_POOL_SIZE", "1"),
        ],
    )
    .await;
    app.deliver(&Delivery::new(prediction("p1", "starting", "")))
        .await;
    // The one pooled connection goes to a read that waits on a lock; nothing is left for anyone
    // else. (Deliveries have a connection of their own.) The readiness probe needs no lock, only
    // a connection.
    let blocker = app.block_reads().await;
    let stuck = app.get("/v1/predictions/p1");
    let starved = async {
        support::eventually_counts(
            "the read holds the one connection",
            app.postgres().1,
            support::WAITING_ON_A_LOCK,
            1,
        )
        .await;
        let started = std::time::Instant::now();
        let response = app.get("/readyz").await;
        (started.elapsed(), response)
    };
    let (stuck, (waited, starved)) = tokio::join!(stuck, starved);
    assert!(stuck.headers().contains_key("retry-after"));
    assert_problem(stuck, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_problem(starved, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(waited < std::time::Duration::from_secs(3), "{waited:?}");
    blocker.rollback().await.unwrap();
    assert_eq!(app.get("/v1/predictions/p1").await.status(), StatusCode::OK);
}

async fn the_service_speaks_cleartext_http2_too(backend: Backend) {
    // Many parked waits are far cheaper multiplexed on a few HTTP/2 connections (docs/benchmarks.md).
    let app = spawn_app(backend).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    app.deliver(&Delivery::new(prediction("p1", "succeeded", "")))
        .await;
    let response = client
        .get(format!("{}/v1/predictions/p1", app.address))
        .bearer_auth(support::TOKEN)
        .header("prefer", "wait=5")
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["preference-applied"], "wait=5");
}

async fn every_answer_carries_a_request_id_and_keeps_the_callers(backend: Backend) {
    let app = spawn_app(backend).await;
    let kept = app
        .client
        .get(format!("{}/healthz", app.address))
        .header("x-request-id", "caller-chose-this")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "caller-chose-this");
    // Made when absent, on errors the framework answers too.
    for response in [
        app.client
            .get(format!("{}/healthz", app.address))
            .send()
            .await
            .unwrap(),
        app.get("/nowhere").await,
    ] {
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(id.len(), 36, "{id}");
    }
}

/// Connects, sends `first`, then dribbles `then` a byte at a time; returns how long until the
/// service closed the connection, and what it said.
async fn dribble(address: &str, first: &str, then: &str) -> (std::time::Duration, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address.trim_start_matches("http://"))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    stream.write_all(first.as_bytes()).await.unwrap();
    for byte in then.bytes() {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if stream.write_all(&[byte]).await.is_err() {
            break;
        }
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "the connection was never closed");
    (
        started.elapsed(),
        String::from_utf8_lossy(&answer).into_owned(),
    )
}

async fn a_client_dribbling_its_headers_is_cut_off(backend: Backend) {
    let app = spawn_app_with(backend, &[("INBOX_REQUEST_TIMEOUT_SECS", "1")]).await;
    let (elapsed, _) = dribble(
        &app.address,
        "GET /healthz HTTP/1.1\r\n",
        &"X-Slow: ".repeat(10),
    )
    .await;
    assert!(
        elapsed < std::time::Duration::from_secs(5),
        "held for {elapsed:?}"
    );
}

async fn a_client_that_connects_and_says_nothing_is_cut_off(backend: Backend) {
    let app = spawn_app_with(backend, &[("INBOX_REQUEST_TIMEOUT_SECS", "1")]).await;
    for first in ["", "P", "PRI * HTTP/2.0\r\n"] {
        let (elapsed, _) = dribble(&app.address, first, "").await;
        assert!(
            elapsed < std::time::Duration::from_secs(5),
            "{first:?} held for {elapsed:?}"
        );
    }
}

async fn a_client_stalling_its_body_gets_503_within_the_timeout(backend: Backend) {
    let app = spawn_app_with(backend, &[("INBOX_REQUEST_TIMEOUT_SECS", "1")]).await;
    let head = format!(
        "POST /webhooks/replicate HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n{}\
         Connection: close\r\n\r\n{{\"id\":",
        support::plausible_headers()
    );
    let (elapsed, answer) = dribble(&app.address, &head, "").await;
    assert!(
        elapsed < std::time::Duration::from_secs(5),
        "held for {elapsed:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert_eq!(app.count("deliveries").await, 0);
}

#[tokio::test]
async fn a_read_stuck_on_the_database_gets_503_within_the_timeout() {
    let app = spawn_app_with(Backend::Postgres, &[("INBOX_REQUEST_TIMEOUT_SECS", "1")]).await;
    app.deliver(&Delivery::new(prediction("p1", "processing", "")))
        .await;
    let blocker = app.block_reads().await;
    for prefer in [None, Some("wait=2")] {
        let mut request = app
            .client
            .get(format!("{}/v1/predictions/p1", app.address))
            .bearer_auth(support::TOKEN);
        if let Some(prefer) = prefer {
            request = request.header("prefer", prefer);
        }
        let started = std::time::Instant::now();
        let response = request.send().await.unwrap();
        // The bound is the request timeout, plus the wait when one was asked for.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(6),
            "{prefer:?}: {:?}",
            started.elapsed()
        );
        assert!(response.headers().contains_key("retry-after"));
        assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    }
    blocker.rollback().await.unwrap();
    assert_eq!(app.get("/v1/predictions/p1").await.status(), StatusCode::OK);
}

support::on_each_backend!(
    probes_answer,
    unknown_routes_and_methods_are_problems,
    a_request_stuck_on_the_database_gets_503_within_the_timeout,
    the_service_speaks_cleartext_http2_too,
    every_answer_carries_a_request_id_and_keeps_the_callers,
    a_client_dribbling_its_headers_is_cut_off,
    a_client_that_connects_and_says_nothing_is_cut_off,
    a_client_stalling_its_body_gets_503_within_the_timeout,
);
