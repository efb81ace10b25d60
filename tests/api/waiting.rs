//! `Prefer: wait` and the event stream: answers come when a commit advances the prediction, on
//! whichever replica the delivery landed, without the waiter polling.

use std::time::{Duration, Instant};

use reqwest::{Response, StatusCode};
use support::{
    Backend, Delivery, EventStream, Instance, TOKEN, TestApp, assert_problem, eventually,
    prediction, spawn_app, spawn_app_with,
};

async fn wait(app: &TestApp, address: &str, id: &str, prefer: &str) -> Response {
    app.client
        .get(format!("{address}/v1/predictions/{id}"))
        .bearer_auth(TOKEN)
        .header("prefer", prefer)
        .send()
        .await
        .unwrap()
}

/// Waits until `count` waiters are parked (or none are, for 0).
async fn parked(waiters: &prediction_inbox::waiters::Waiters, count: usize) {
    eventually(&format!("{count} parked waiters"), || async {
        waiters.count() == count
    })
    .await;
}

async fn status_of(response: Response) -> String {
    let body: serde_json::Value = response.json().await.unwrap();
    body["status"].as_str().unwrap().to_owned()
}

/// Parks a `wait=30` on `id` at `instance`, runs `meanwhile` once it is parked, and returns the
/// status the wait answered with; fails if the wait ran its full time instead of being woken.
async fn woken_wait(
    app: &TestApp,
    instance: &Instance,
    id: &str,
    meanwhile: impl Future<Output = ()>,
) -> String {
    let waiting = wait(app, &instance.address, id, "wait=30");
    let meanwhile = async {
        parked(&instance.waiters, 1).await;
        meanwhile.await;
    };
    let started = Instant::now();
    let (response, ()) = tokio::join!(waiting, meanwhile);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the wait was never woken"
    );
    assert_eq!(response.headers()["preference-applied"], "wait=30");
    status_of(response).await
}

async fn a_wait_returns_as_soon_as_a_delivery_completes_the_prediction(backend: Backend) {
    let app = spawn_app(backend).await;
    app.deliver(&Delivery::new(prediction("p1", "processing", "a")))
        .await;
    let status = woken_wait(&app, &app.instance(), "p1", async {
        app.deliver(&Delivery::new(prediction("p1", "processing", "ab")))
            .await;
        app.deliver(&Delivery::new(prediction("p1", "succeeded", "ab")))
            .await;
    })
    .await;
    assert_eq!(status, "succeeded");
    parked(&app.waiters, 0).await;
}

async fn a_wait_times_out_with_the_current_state(backend: Backend) {
    let app = spawn_app(backend).await;
    app.deliver(&Delivery::new(prediction("p1", "processing", "")))
        .await;
    let started = Instant::now();
    let response = wait(&app, &app.address, "p1", "wait=1").await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(response.headers()["preference-applied"], "wait=1");
    assert_eq!(status_of(response).await, "processing");
}

async fn a_wait_on_a_finished_prediction_answers_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    app.deliver(&Delivery::new(prediction("p1", "canceled", "")))
        .await;
    let started = Instant::now();
    let response = wait(&app, &app.address, "p1", "wait").await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(response.headers()["preference-applied"], "wait=60");
    assert_eq!(status_of(response).await, "canceled");
    // Without the preference nothing says a wait applied.
    assert!(
        app.get("/v1/predictions/p1")
            .await
            .headers()
            .get("preference-applied")
            .is_none()
    );
}

async fn a_wait_on_an_unknown_id_follows_it_from_start_to_completion(backend: Backend) {
    let app = spawn_app(backend).await;
    let waiting = wait(&app, &app.address, "new", "respond-async, wait=30");
    let deliver = async {
        parked(&app.waiters, 1).await;
        // Not finished: the wait goes on (had it answered now, it would say `starting`).
        app.deliver(&Delivery::new(prediction("new", "starting", "")))
            .await;
        app.deliver(&Delivery::new(prediction("new", "failed", "")))
            .await;
    };
    let (response, ()) = tokio::join!(waiting, deliver);
    assert_eq!(status_of(response).await, "failed");
}

async fn a_wait_on_an_id_that_never_arrives_is_404_after_the_wait(backend: Backend) {
    let app = spawn_app(backend).await;
    let started = Instant::now();
    let response = wait(&app, &app.address, "ghost", "wait=1").await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(response.headers()["preference-applied"], "wait=1");
    assert_problem(response, StatusCode::NOT_FOUND).await;
}

async fn malformed_or_out_of_range_waits_are_400(backend: Backend) {
    let app = spawn_app(backend).await;
    app.deliver(&Delivery::new(prediction("p1", "processing", "")))
        .await;
    for prefer in [
        "wait=0", "wait=61", "wait=abc", "wait=-1", "wait=+5", "wait=", "wait=1.5",
    ] {
        assert_problem(
            wait(&app, &app.address, "p1", prefer).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
}

#[tokio::test]
async fn a_delivery_to_one_replica_wakes_a_waiter_on_another() {
    let app = spawn_app(Backend::Postgres).await;
    let other = app.another_instance().await;
    app.deliver(&Delivery::new(prediction("p1", "processing", "")))
        .await;
    let status = woken_wait(&app, &other, "p1", async {
        app.deliver(&Delivery::new(prediction("p1", "succeeded", "")))
            .await;
    })
    .await;
    assert_eq!(status, "succeeded");
}

async fn the_event_stream_yields_every_advance_in_order_then_done(backend: Backend) {
    let app = spawn_app(backend).await;
    let life = [
        prediction("p1", "starting", ""),
        prediction("p1", "processing", "a\r\nb"),
        prediction("p1", "processing", "a\r\nb\r\nc"),
        prediction("p1", "succeeded", "a\r\nb\r\nc"),
    ];
    app.deliver(&Delivery::new(life[0].clone())).await;
    let response = app.get("/v1/predictions/p1/events").await;
    let mut events = EventStream::new(response);
    for (i, body) in life.iter().enumerate() {
        if i > 0 {
            app.deliver(&Delivery::new(body.clone())).await;
        }
        let (event, data) = events.next().await.expect("an event per advance");
        assert_eq!(event, "prediction");
        assert_eq!(&data, body, "event {i}");
    }
    // A late, older delivery changes nothing and sends nothing.
    let (event, data) = events.next().await.expect("done");
    assert_eq!((event.as_str(), data.as_str()), ("done", r#"{"id":"p1"}"#));
    assert_eq!(events.next().await, None, "the stream closes after done");
    parked(&app.waiters, 0).await;
}

async fn an_event_stream_on_a_finished_prediction_sends_it_and_done(backend: Backend) {
    let app = spawn_app(backend).await;
    // Pretty-printed with CRLF: carriage returns cannot travel in SSE and must not break it.
    let body = prediction("p1", "succeeded", "").replace(',', ",\r\n  ");
    app.deliver(&Delivery::new(body.clone())).await;
    let mut events = EventStream::new(app.get("/v1/predictions/p1/events").await);
    let (event, data) = events.next().await.unwrap();
    assert_eq!(event, "prediction");
    assert_eq!(data, body.replace("\r\n", "\n"));
    assert_eq!(events.next().await.unwrap().0, "done");
    assert_eq!(events.next().await, None);
}

async fn clients_that_go_away_leave_no_waiter_behind(backend: Backend) {
    let app = spawn_app(backend).await;
    app.deliver(&Delivery::new(prediction("p1", "processing", "")))
        .await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let request = impatient
        .get(format!("{}/v1/predictions/p1", app.address))
        .bearer_auth(TOKEN)
        .header("prefer", "wait=60");
    assert!(request.send().await.unwrap_err().is_timeout());

    let stream = app.get("/v1/predictions/p1/events").await;
    parked(&app.waiters, 1).await;
    drop(stream);
    parked(&app.waiters, 0).await;
}

#[tokio::test]
async fn a_waiter_is_woken_after_the_listener_loses_its_connection() {
    let app = spawn_app(Backend::Postgres).await;
    app.deliver(&Delivery::new(prediction("p1", "processing", "")))
        .await;
    let status = woken_wait(&app, &app.instance(), "p1", async {
        // Every connection of the service goes, the listener's included.
        app.postgres().0
            .admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND application_name = 'prediction-inbox'")
            .await;
        app.deliver(&Delivery::new(prediction("p1", "succeeded", ""))).await;
    })
    .await;
    assert_eq!(status, "succeeded");

    // And the new listening connection hears later commits too.
    app.deliver(&Delivery::new(prediction("p2", "processing", "")))
        .await;
    let status = woken_wait(&app, &app.instance(), "p2", async {
        app.deliver(&Delivery::new(prediction("p2", "succeeded", "")))
            .await;
    })
    .await;
    assert_eq!(status, "succeeded");
}

async fn past_the_waiter_cap_the_state_comes_at_once_without_a_wait(backend: Backend) {
    let app = spawn_app_with(backend, &[("INBOX_MAX_WAITERS", "1")]).await;
    app.deliver(&Delivery::new(prediction("p1", "processing", "")))
        .await;
    let first = wait(&app, &app.address, "p1", "wait=30");
    let second = async {
        parked(&app.waiters, 1).await;
        let started = Instant::now();
        let response = wait(&app, &app.address, "p1", "wait=30").await;
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(response.headers()["preference-applied"], "wait=0");
        assert_eq!(status_of(response).await, "processing");
        assert_problem(
            app.get("/v1/predictions/p1/events").await,
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .await;
        app.deliver(&Delivery::new(prediction("p1", "succeeded", "")))
            .await;
    };
    let (response, ()) = tokio::join!(first, second);
    assert_eq!(status_of(response).await, "succeeded");
}

#[tokio::test]
async fn a_change_committed_while_nobody_listens_still_wakes_its_waiter() {
    let app = spawn_app(Backend::Postgres).await;
    app.deliver(&Delivery::new(prediction("p1", "processing", "")))
        .await;
    let status = woken_wait(&app, &app.instance(), "p1", async {
        // The listener goes and cannot come back; the request pool's open connections stay.
        app.postgres().0.admin("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false").await;
        app.postgres().0
            .admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND query ILIKE 'LISTEN%'")
            .await;
        let listening = "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%' \
                         AND datname = current_database()";
        support::eventually_counts("nobody listens", app.postgres().1, listening, 0).await;
        // Committed in the gap: its notification reaches no one.
        app.deliver(&Delivery::new(prediction("p1", "succeeded", ""))).await;
        app.postgres().0.admin("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true").await;
    })
    .await;
    assert_eq!(status, "succeeded", "the change in the gap was lost");
}

/// A parked wait sleeps through changes that do not finish its prediction, and holds no state
/// meanwhile: at its deadline it reads the state as it is then.
async fn a_wait_that_times_out_answers_the_state_at_its_deadline(backend: Backend) {
    let app = spawn_app(backend).await;
    app.deliver(&Delivery::new(prediction("p1", "processing", "a")))
        .await;
    let later = prediction("p1", "processing", "abc");
    let waiting = wait(&app, &app.address, "p1", "wait=2");
    let meanwhile = async {
        parked(&app.waiters, 1).await;
        app.deliver(&Delivery::new(prediction("p1", "processing", "ab")))
            .await;
        app.deliver(&Delivery::new(later.clone())).await;
    };
    let (response, ()) = tokio::join!(waiting, meanwhile);
    assert_eq!(response.headers()["preference-applied"], "wait=2");
    assert_eq!(response.text().await.unwrap(), later);
}

async fn an_event_stream_ends_at_its_longest_duration_saying_why(backend: Backend) {
    let app = spawn_app_with(backend, &[("INBOX_STREAM_MAX_SECS", "1")]).await;
    let body = prediction("p1", "processing", "");
    app.deliver(&Delivery::new(body.clone())).await;
    let started = Instant::now();
    let mut events = EventStream::new(app.get("/v1/predictions/p1/events").await);
    assert_eq!(events.next().await, Some(("prediction".into(), body)));
    let (event, data) = events.next().await.expect("a last event");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(event, "end");
    let data: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert_eq!(
        (&data["id"], &data["reason"]),
        (&"p1".into(), &"max_duration".into())
    );
    assert!(
        data["detail"]
            .as_str()
            .unwrap()
            .contains("INBOX_STREAM_MAX_SECS")
    );
    assert_eq!(events.next().await, None);
    parked(&app.waiters, 0).await;
}

async fn one_token_cannot_take_every_waiting_slot(backend: Backend) {
    const OTHER: &str = "another-token-0123456789";
    let tokens = format!("{TOKEN},{OTHER}");
    let app = spawn_app_with(
        backend,
        &[
            ("INBOX_API_TOKENS", &tokens),
            ("INBOX_MAX_WAITERS_PER_TOKEN", "1"),
        ],
    )
    .await;
    app.deliver(&Delivery::new(prediction("p1", "processing", "")))
        .await;
    let first = wait(&app, &app.address, "p1", "wait=30");
    let others = async {
        parked(&app.waiters, 1).await;
        // The same token again: the state at once, no wait applied; and no stream.
        let response = wait(&app, &app.address, "p1", "wait=30").await;
        assert_eq!(response.headers()["preference-applied"], "wait=0");
        assert_problem(
            app.get("/v1/predictions/p1/events").await,
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .await;
        // Another token still parks.
        let other = app
            .client
            .get(format!("{}/v1/predictions/p1", app.address))
            .bearer_auth(OTHER)
            .header("prefer", "wait=30")
            .send();
        let finish = async {
            parked(&app.waiters, 2).await;
            app.deliver(&Delivery::new(prediction("p1", "succeeded", "")))
                .await;
        };
        let (other, ()) = tokio::join!(other, finish);
        assert_eq!(status_of(other.unwrap()).await, "succeeded");
    };
    let (response, ()) = tokio::join!(first, others);
    assert_eq!(status_of(response).await, "succeeded");
}

support::on_each_backend!(
    a_wait_that_times_out_answers_the_state_at_its_deadline,
    an_event_stream_ends_at_its_longest_duration_saying_why,
    one_token_cannot_take_every_waiting_slot,
    a_wait_returns_as_soon_as_a_delivery_completes_the_prediction,
    a_wait_times_out_with_the_current_state,
    a_wait_on_a_finished_prediction_answers_at_once,
    a_wait_on_an_unknown_id_follows_it_from_start_to_completion,
    a_wait_on_an_id_that_never_arrives_is_404_after_the_wait,
    malformed_or_out_of_range_waits_are_400,
    the_event_stream_yields_every_advance_in_order_then_done,
    an_event_stream_on_a_finished_prediction_sends_it_and_done,
    clients_that_go_away_leave_no_waiter_behind,
    past_the_waiter_cap_the_state_comes_at_once_without_a_wait,
);
