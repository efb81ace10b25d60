//! `GET /metrics`. The recorder is process-wide: the test runs once per backend, one at a time, and
//! checks what each run added to the counters.

use std::collections::HashMap;

use support::fake_replicate::{FakeReplicate, VERSION};
use support::{
    Backend, CREATE_TOKEN, Delivery, TOKEN, now, prediction, spawn_app_with, spawn_gateway_app,
};

/// `(name, labels) -> value` for every sample line of a Prometheus text answer.
fn samples(text: &str) -> Vec<(String, HashMap<String, String>, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap();
                    (key.to_owned(), value.trim_matches('"').to_owned())
                })
                .collect();
            (name.to_owned(), labels, value.parse().unwrap())
        })
        .collect()
}

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    find(text, name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?} in\n{text}"))
}

/// What a counter grew by between two scrapes; absent counts as 0.
fn added(before: &str, after: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(after, name, labels) - find(before, name, labels).unwrap_or(0.0)
}

fn find(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text)
        .into_iter()
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, value)| value)
}

/// The tests here read what they added to process-wide counters: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn creates_are_counted_by_outcome_and_the_platform_s_calls_timed() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let fake = FakeReplicate::start().await;
    let app = spawn_gateway_app(Backend::Sqlite, &fake, &[]).await;
    let before = prediction_inbox::metrics::handle().render();
    let create = |body: serde_json::Value| {
        app.client
            .post(format!("{}/v1/predictions", app.address))
            .bearer_auth(CREATE_TOKEN)
            .json(&body)
            .send()
    };
    let input = serde_json::json!({"version": VERSION, "input": {"steps": 0}});
    assert_eq!(create(input.clone()).await.unwrap().status(), 201);
    let mut wired = input.clone();
    wired["webhook"] = "https://elsewhere.example".into();
    assert_eq!(create(wired).await.unwrap().status(), 400);
    fake.answer_next(&[(reqwest::StatusCode::SERVICE_UNAVAILABLE, Some("1"))]);
    assert_eq!(create(input).await.unwrap().status(), 503);
    let after = prediction_inbox::metrics::handle().render();
    for outcome in ["created", "refused", "upstream_error"] {
        assert_eq!(
            added(
                &before,
                &after,
                "inbox_creates_total",
                &[("outcome", outcome)]
            ),
            1.0,
            "{outcome}"
        );
    }
    let calls = "inbox_upstream_requests_total";
    for outcome in ["ok", "server_error"] {
        assert_eq!(
            added(
                &before,
                &after,
                calls,
                &[("operation", "create"), ("outcome", outcome)]
            ),
            1.0,
            "{outcome}"
        );
    }
    assert_eq!(
        added(
            &before,
            &after,
            "inbox_upstream_duration_seconds_count",
            &[("operation", "create")]
        ),
        2.0
    );
}

async fn metrics_count_what_the_service_does(backend: Backend) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let app = spawn_app_with(backend, &[("INBOX_MAX_BODY_BYTES", "2000")]).await;
    let url = format!("{}/webhooks/replicate", app.address);
    let scrape = || async {
        app.client
            .get(format!("{}/metrics", app.address))
            .send()
            .await
            .unwrap()
    };
    // Read from the recorder itself: a scrape would also start the 15 s between recounts of
    // predictions by status.
    let before = prediction_inbox::metrics::handle().render();
    let t = now();

    let succeeded = Delivery::at(t, prediction("p1", "succeeded", ""));
    assert_eq!(app.deliver(&succeeded).await, "applied");
    assert_eq!(app.deliver(&succeeded).await, "duplicate");
    assert_eq!(
        app.deliver(&Delivery::at(t, prediction("p1", "processing", "x")))
            .await,
        "ignored"
    );
    assert_eq!(
        app.deliver(&Delivery::at(t, r#"{"id":"p2","status":"brand-new"}"#))
            .await,
        "applied"
    );
    // One rejection of each kind.
    let signed = Delivery::new(prediction("p3", "starting", ""));
    let forged = app
        .signed_request(&signed.webhook_id, signed.timestamp, signed.body.as_bytes())
        .body(format!("{} ", signed.body));
    assert_eq!(forged.send().await.unwrap().status(), 401);
    assert_eq!(
        app.client
            .post(&url)
            .body("{}")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        app.send(&Delivery::at(t - 3600, prediction("p3", "starting", "")))
            .await
            .status(),
        401
    );
    assert_eq!(app.send(&Delivery::new("[]")).await.status(), 400);
    assert_eq!(
        app.send(&Delivery::new(prediction(
            "p3",
            "starting",
            &"x".repeat(3000)
        )))
        .await
        .status(),
        413
    );

    assert_eq!(
        app.client
            .get(format!("{}/no/such/route", app.address))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    // A route with a parameter is counted by its template, never by the path asked for.
    assert_eq!(app.get("/v1/predictions/p1").await.status(), 200);

    // A parked waiter shows in the gauge.
    let waiting = app
        .client
        .get(format!("{}/v1/predictions/p9", app.address))
        .bearer_auth(TOKEN)
        .header("prefer", "wait=3")
        .send();
    let scrape_while_waiting = async {
        support::eventually("the wait is parked", || async { app.waiters.count() == 1 }).await;
        scrape().await
    };
    let (_, response) = tokio::join!(waiting, scrape_while_waiting);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();

    let deliveries = "inbox_deliveries_total";
    assert_eq!(
        added(&before, &text, deliveries, &[("outcome", "applied")]),
        2.0
    );
    assert_eq!(
        added(&before, &text, deliveries, &[("outcome", "duplicate")]),
        1.0
    );
    assert_eq!(
        added(&before, &text, deliveries, &[("outcome", "ignored")]),
        1.0
    );
    for reason in ["signature", "headers", "timestamp", "body", "too_large"] {
        assert_eq!(
            added(
                &before,
                &text,
                deliveries,
                &[("outcome", "rejected"), ("reason", reason)]
            ),
            1.0,
            "{reason}"
        );
    }
    assert_eq!(
        added(&before, &text, "inbox_ingest_duration_seconds_count", &[]),
        4.0
    );
    assert_eq!(value(&text, "inbox_waiters", &[]), 1.0);
    assert!(value(&text, "inbox_db_pool_connections", &[("state", "idle")]) >= 0.0);
    assert_eq!(
        value(&text, "inbox_predictions", &[("status", "succeeded")]),
        1.0
    );
    assert_eq!(
        value(&text, "inbox_predictions", &[("status", "other")]),
        1.0
    );
    // p2, of an unknown status, is unfinished: it heard its delivery seconds ago.
    let oldest = value(&text, "inbox_oldest_unfinished_seconds", &[]);
    assert!((0.0..60.0).contains(&oldest), "{oldest}");
    assert_eq!(
        value(&text, "inbox_predictions", &[("status", "starting")]),
        0.0
    );
    let requests = "inbox_http_requests_total";
    assert_eq!(
        added(
            &before,
            &text,
            requests,
            &[
                ("route", "/webhooks/replicate"),
                ("method", "POST"),
                ("status", "200")
            ]
        ),
        4.0
    );
    assert_eq!(
        added(
            &before,
            &text,
            requests,
            &[
                ("route", "/webhooks/replicate"),
                ("method", "POST"),
                ("status", "401")
            ]
        ),
        3.0
    );
    assert_eq!(
        added(
            &before,
            &text,
            requests,
            &[("route", "unmatched"), ("method", "GET"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        added(
            &before,
            &text,
            requests,
            &[
                ("route", "/v1/predictions/{id}"),
                ("method", "GET"),
                ("status", "200")
            ]
        ),
        1.0
    );
    assert!(text.contains("# TYPE inbox_http_request_duration_seconds histogram"));
    assert!(text.contains("# HELP inbox_deliveries_total"));

    // No label ever carries a value from input: not an id, a model, or an unknown status.
    let from_input = ["p1", "p2", "p3", "p9", "replicate/hello-world", "brand-new"];
    for (name, labels, _) in samples(&text) {
        for value in labels.values() {
            assert!(
                !from_input.contains(&value.as_str()),
                "{name} has label value {value}"
            );
        }
    }
}

support::on_each_backend!(metrics_count_what_the_service_does,);
