//! The public edge: what anyone who knows only the URL can make the service hold, and that the
//! platform's deliveries keep getting in meanwhile; and that nothing verified is lost to what one
//! delivery holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use support::{
    Backend, Delivery, Faulty, TestApp, eventually, plausible_headers, prediction,
    send_as_one_batch, spawn_app_with, spawn_app_with_faults,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What every request reading a body is charged beyond its bytes (src/http/body.rs).
const REQUEST_COST: usize = 16 * 1024;

/// A connection to `app` that has sent `head`.
async fn sent(app: &TestApp, head: &str) -> TcpStream {
    let mut stream = TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .expect("connect");
    stream.write_all(head.as_bytes()).await.expect("the head");
    stream
}

/// A connection to `app` that has sent the head of a delivery: `Content-Length: length` and
/// `headers` (each line ended).
async fn delivery_head(app: &TestApp, length: usize, headers: &str) -> TcpStream {
    let head = format!(
        "POST /webhooks/replicate HTTP/1.1\r\nHost: inbox\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n{headers}\r\n"
    );
    sent(app, &head).await
}

/// Everything the service sends until it closes the connection, and when that was; fails after
/// `within`.
async fn answer(stream: &mut TcpStream, within: Duration) -> (String, Instant) {
    let mut answer = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut answer))
        .await
        .expect("the service answered and closed in time")
        .expect("read the answer");
    (
        String::from_utf8_lossy(&answer).into_owned(),
        Instant::now(),
    )
}

async fn headers_that_cannot_verify_get_401_before_the_body_is_read(backend: Backend) {
    let app = spawn_app_with(backend, &[]).await;
    let id = support::new_webhook_id();
    let now = support::now();
    let bad = [
        String::new(),
        format!("webhook-id: {id}\r\nwebhook-timestamp: {now}\r\n"),
        format!(
            "webhook-id: {id}\r\nwebhook-timestamp: {}\r\nwebhook-signature: v1,{}=\r\n",
            now - 3600,
            "A".repeat(43)
        ),
        format!(
            "webhook-id: {id}\r\nwebhook-timestamp: soon\r\nwebhook-signature: v1,{}=\r\n",
            "A".repeat(43)
        ),
        format!(
            "webhook-id: {id}\r\nwebhook-timestamp: {now}\r\nwebhook-signature: v2,{}=\r\n",
            "A".repeat(43)
        ),
        format!("webhook-id: {id}\r\nwebhook-timestamp: {now}\r\nwebhook-signature: v1,AAAA\r\n"),
    ];
    for headers in bad {
        // Ten megabytes announced and none sent: an answer can only come from the headers.
        let mut stream = delivery_head(&app, 10_000_000, &headers).await;
        let (answer, _) = answer(&mut stream, Duration::from_secs(2)).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{headers:?}: {answer}");
    }
    assert_eq!(app.count("deliveries").await, 0);
}

async fn a_stalled_body_is_cut_off_long_before_the_request_timeout(backend: Backend) {
    let app = spawn_app_with(backend, &[("INBOX_REQUEST_TIMEOUT_SECS", "30")]).await;
    let mut stream = delivery_head(&app, 2 << 20, &plausible_headers()).await;
    let started = Instant::now();
    // Half of it at once, well above the least rate for half a minute to come; then nothing.
    let mut half = vec![b' '; 1 << 20];
    half[0] = b'{';
    stream.write_all(&half).await.unwrap();
    let (answer, at) = answer(&mut stream, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        at - started < Duration::from_secs(5),
        "held {:?}",
        at - started
    );
    eventually("what it held is let go", || async {
        let (shared, reserve) = app.bodies.available();
        shared + reserve == 256 << 20
    })
    .await;
}

async fn a_trickled_body_is_cut_off_by_the_least_rate(backend: Backend) {
    let app = spawn_app_with(backend, &[("INBOX_REQUEST_TIMEOUT_SECS", "30")]).await;
    let mut stream = delivery_head(&app, 100_000, &plausible_headers()).await;
    let started = Instant::now();
    // A byte every 200 ms: never silent for long, and far below the least rate.
    let trickle = async {
        for _ in 0..100 {
            if stream.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), trickle).await;
    let (answer, at) = answer(&mut stream, Duration::from_secs(1)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        at - started < Duration::from_secs(6),
        "held {:?}",
        at - started
    );
}

async fn with_large_bodies_holding_the_budget_small_signed_ones_still_get_in(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[
            ("INBOX_MAX_INFLIGHT_BODY_BYTES", "16777216"),
            ("INBOX_MAX_BODY_BYTES", "16777216"),
        ],
    )
    .await;
    // One large body announced to take all the shared part, sent but for its last byte.
    let (shared, reserve) = app.bodies.available();
    let length = shared - REQUEST_COST;
    let mut large = delivery_head(&app, length, &plausible_headers()).await;
    let mut body = vec![b' '; length - 1];
    body[0] = b'{';
    large.write_all(&body).await.unwrap();
    eventually("the large body is all but read", || async {
        app.bodies.available() == (1, reserve)
    })
    .await;

    // Another large one finds no room: 503, at once.
    let mut refused = delivery_head(&app, 2 << 20, &plausible_headers()).await;
    refused.write_all(&[b' '; 4096]).await.unwrap();
    let (answer, _) = answer(&mut refused, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.to_lowercase().contains("retry-after"), "{answer}");

    // The platform's deliveries of ordinary size go on getting in, from the reserve.
    for i in 0..5 {
        let logs = "x".repeat(10_000);
        let delivery = Delivery::new(prediction(&format!("small{i}"), "processing", &logs));
        assert_eq!(app.deliver(&delivery).await, "applied");
    }
    assert_eq!(app.bodies.available(), (1, reserve));
    drop(large);
    eventually("the budget is whole again", || async {
        app.bodies.available() == (shared, reserve)
    })
    .await;
}

async fn past_the_connection_cap_a_connection_is_answered_503_and_closed(backend: Backend) {
    let app = spawn_app_with(backend, &[("INBOX_MAX_CONNECTIONS", "4")]).await;
    let addr = app.address.trim_start_matches("http://").to_owned();
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        // Half a request: the connection stays open, waiting for the rest.
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .unwrap();
        open.push(stream);
    }
    let mut one_more = TcpStream::connect(&addr).await.unwrap();
    let (answer, _) = answer(&mut one_more, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too many connections"), "{answer}");

    // Once one closes, the next is served.
    drop(open.pop());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    eventually("a connection is served again", || async {
        client
            .get(format!("{}/healthz", app.address))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
}

/// A prediction body of about `bytes`, its logs random enough that no store compresses them away.
fn large_prediction(id: &str, bytes: usize, logs: &str) -> String {
    let body = prediction(id, "processing", "");
    body.replace(
        "\"logs\":\"\"",
        &format!("\"logs\":\"{}\"", &logs[..bytes - body.len() - 64]),
    )
}

/// Large deliveries, as many at once as the budget was sized for, all read whole and held
/// together before the writer takes any: each gets its own 200.
async fn many_large_deliveries_at_once_each_get_their_own_200(backend: Backend) {
    const DELIVERIES: usize = 16;
    const BYTES: usize = 16 << 20;
    let (gate, _) = tokio::sync::watch::channel(false);
    let faults = Arc::new(Faulty {
        gate: Some(gate),
        ..Faulty::default()
    });
    // Large bodies draw only on what is not kept for small ones, seven eighths of the budget.
    let budget = (DELIVERIES * (BYTES + REQUEST_COST)).div_ceil(7) * 8;
    let app = spawn_app_with_faults(
        backend,
        &[
            ("INBOX_MAX_INFLIGHT_BODY_BYTES", &budget.to_string()),
            ("INBOX_REQUEST_TIMEOUT_SECS", "300"),
        ],
        Some(faults.clone()),
    )
    .await;
    let logs: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(BYTES)
        .collect();
    let deliveries: Vec<Delivery> = (0..DELIVERIES)
        .map(|i| Delivery::new(large_prediction(&format!("large{i}"), BYTES, &logs)))
        .collect();
    let charged: usize = deliveries.iter().map(|d| d.body.len() + REQUEST_COST).sum();
    let (shared, _) = app.bodies.available();
    let app = Arc::new(app);
    let sending: Vec<_> = deliveries
        .into_iter()
        .map(|delivery| {
            let app = app.clone();
            tokio::spawn(async move {
                let body = bytes::Bytes::from(delivery.body.into_bytes());
                let response = app
                    .signed_request(&delivery.webhook_id, delivery.timestamp, &body)
                    .body(body)
                    .send()
                    .await
                    .expect("send the delivery");
                (response.status(), response.text().await.unwrap_or_default())
            })
        })
        .collect();
    // Until every body is held, or one is answered (refused: the writer takes nothing yet).
    eventually("every body held, or one refused", || async {
        app.bodies.available().0 + charged == shared
            || sending.iter().any(tokio::task::JoinHandle::is_finished)
    })
    .await;
    faults.gate.as_ref().unwrap().send_replace(true);
    for task in sending {
        let (status, text) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{text}");
        assert_eq!(text, r#"{"status":"applied"}"#);
    }
    assert_eq!(app.count("deliveries").await, DELIVERIES as i64);
    // No batch took more than its byte bound allows: 64 MiB holds four of them.
    let taken = faults.taken.lock().unwrap();
    assert!(taken.iter().all(|batch| batch.len() <= 4), "{taken:?}");
}

async fn one_poison_delivery_fails_alone_and_the_rest_of_its_batch_commits(backend: Backend) {
    for panics in [false, true] {
        let faults = Arc::new(Faulty {
            poison: Some(("poison", panics)),
            ..Faulty::default()
        });
        let app = spawn_app_with_faults(backend, &[], Some(faults.clone())).await;
        let ids: Vec<String> = (0..9)
            .map(|i| match i {
                5 => "poison".to_owned(),
                i => format!("fine{i}"),
            })
            .collect();
        let deliveries: Vec<Delivery> = ids
            .iter()
            .map(|id| Delivery::new(prediction(id, "starting", "")))
            .collect();
        let answers = send_as_one_batch(&app, &faults, &deliveries).await;
        // They were taken as one batch: the writer split it to find the poison.
        assert!(faults.taken.lock().unwrap().contains(&ids));
        for (id, (status, text)) in ids.iter().zip(&answers) {
            if id == "poison" {
                assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
                assert_eq!(app.prediction(id).await, None);
            } else {
                assert_eq!(*status, StatusCode::OK, "{id} (panics: {panics}): {text}");
                assert!(app.prediction(id).await.is_some());
            }
        }
    }
}

async fn a_dead_writer_is_restarted_and_the_service_is_not_ready_meanwhile(backend: Backend) {
    let faults = Arc::new(Faulty {
        killer: Some("killer"),
        ..Faulty::default()
    });
    let app = spawn_app_with_faults(backend, &[], Some(faults)).await;
    let ready = || async { app.get("/readyz").await.status() };
    assert_eq!(ready().await, StatusCode::OK);
    let killer = app
        .send(&Delivery::new(prediction("killer", "starting", "")))
        .await;
    assert_eq!(killer.status(), StatusCode::SERVICE_UNAVAILABLE);
    eventually("not ready while the writer is down", || async {
        ready().await == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    eventually("ready once it runs again", || async {
        ready().await == StatusCode::OK
    })
    .await;
    let again = Delivery::new(prediction("killer", "starting", ""));
    assert_eq!(app.deliver(&again).await, "applied");
}

/// An HTTP/1 connection holds one read buffer of at most 16 KiB, idle or not: a request head that
/// does not fit in it is refused unread (431), and one that fits is served.
#[tokio::test]
async fn a_request_head_longer_than_the_read_buffer_is_refused() {
    let app = spawn_app_with(Backend::Sqlite, &[]).await;
    let head = |padding: usize| {
        format!(
            "GET /healthz HTTP/1.1\r\nHost: inbox\r\nConnection: close\r\nx-padding: {}\r\n\r\n",
            "p".repeat(padding)
        )
    };
    for (padding, status) in [(12 * 1024, "200"), (17 * 1024, "431")] {
        let mut stream = sent(&app, &head(padding)).await;
        let (answer, _) = answer(&mut stream, Duration::from_secs(10)).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "a {padding}-byte header: {}",
            answer.lines().next().unwrap_or_default()
        );
    }
}

/// A batch of large bodies on a busy server may take longer than the statement timeout that stops
/// runaway reads (10 s); its deadline, the request's, is what bounds it. Here a lock holds the
/// batch past those 10 s.
#[tokio::test]
async fn a_batch_runs_until_its_deadline_past_the_reads_statement_timeout() {
    let app = spawn_app_with(Backend::Postgres, &[("INBOX_REQUEST_TIMEOUT_SECS", "60")]).await;
    app.deliver(&Delivery::new(prediction("p1", "starting", "")))
        .await;
    let blocker = app.block_reads().await;
    let held = async {
        support::eventually_counts(
            "the batch waits on the lock",
            app.postgres().1,
            support::WAITING_ON_A_LOCK,
            1,
        )
        .await;
        // Pacing, not a wait for a state: the lock is held past the reads' statement timeout.
        tokio::time::sleep(Duration::from_secs(11)).await;
        blocker.rollback().await.expect("release the lock");
    };
    let processing = Delivery::new(prediction("p1", "processing", ""));
    let (outcome, ()) = tokio::join!(app.deliver(&processing), held);
    assert_eq!(outcome, "applied");
}

mod many_large_deliveries_at_once {
    // Clients and service on threads of their own: a quarter of a gigabyte goes through both.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::many_large_deliveries_at_once_each_get_their_own_200(super::Backend::Postgres).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::many_large_deliveries_at_once_each_get_their_own_200(super::Backend::Sqlite).await;
    }
}

support::on_each_backend!(
    headers_that_cannot_verify_get_401_before_the_body_is_read,
    a_stalled_body_is_cut_off_long_before_the_request_timeout,
    a_trickled_body_is_cut_off_by_the_least_rate,
    with_large_bodies_holding_the_budget_small_signed_ones_still_get_in,
    past_the_connection_cap_a_connection_is_answered_503_and_closed,
    one_poison_delivery_fails_alone_and_the_rest_of_its_batch_commits,
    a_dead_writer_is_restarted_and_the_service_is_not_ready_meanwhile,
);
