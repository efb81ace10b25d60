//! `POST /webhooks/replicate`: every row of the contract's delivery table.

use reqwest::StatusCode;
use support::{
    Backend, Delivery, assert_problem, fixture, now, prediction, spawn_app, spawn_app_with,
};

async fn a_verified_new_delivery_is_applied_and_stored_exactly(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = fixture("04-succeeded.json");
    assert_eq!(app.deliver(&Delivery::new(body.clone())).await, "applied");
    assert_eq!(
        app.prediction("gm3qorzdhgbfurvjtvhg6dckhu")
            .await
            .as_deref(),
        Some(body.as_str())
    );
    assert_eq!(app.deliveries().await, [(true, body)]);
}

async fn every_fixture_is_accepted_and_returned_byte_for_byte(backend: Backend) {
    let app = spawn_app(backend).await;
    for name in [
        "05-failed.json",
        "06-canceled.json",
        "07-text-stream-succeeded.json",
    ] {
        let body = fixture(name);
        assert_eq!(
            app.deliver(&Delivery::new(body.clone())).await,
            "applied",
            "{name}"
        );
        let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            app.prediction(&id).await.as_deref(),
            Some(body.as_str()),
            "{name}"
        );
    }
}

async fn an_older_delivery_is_recorded_but_ignored(backend: Backend) {
    let app = spawn_app(backend).await;
    let t = now();
    let succeeded = Delivery::at(t, prediction("p1", "succeeded", "done"));
    assert_eq!(app.deliver(&succeeded).await, "applied");
    assert_eq!(
        app.deliver(&Delivery::at(
            t + 1,
            prediction("p1", "processing", "more logs")
        ))
        .await,
        "ignored"
    );
    assert_eq!(
        app.prediction("p1").await.as_deref(),
        Some(succeeded.body.as_str())
    );
    let applied: Vec<bool> = app.deliveries().await.into_iter().map(|d| d.0).collect();
    assert_eq!(applied, [true, false]);
}

async fn a_repeated_webhook_id_is_a_duplicate_and_writes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let starting = Delivery::new(prediction("p1", "starting", ""));
    assert_eq!(app.deliver(&starting).await, "applied");
    assert_eq!(app.deliver(&starting).await, "duplicate");
    // Even a retry whose body would advance the state writes nothing under a seen id.
    let mut replay = Delivery::new(prediction("p1", "succeeded", ""));
    replay.webhook_id = starting.webhook_id.clone();
    assert_eq!(app.deliver(&replay).await, "duplicate");
    assert_eq!(app.count("deliveries").await, 1);
    assert_eq!(
        app.prediction("p1").await.as_deref(),
        Some(starting.body.as_str())
    );
}

async fn unknown_statuses_and_fields_are_kept(backend: Backend) {
    let app = spawn_app(backend).await;
    let body =
        r#"{"id":"p1","status":"successful","new_field":{"nested":[1,2.50,"x"]},"output":null}"#;
    assert_eq!(app.deliver(&Delivery::new(body)).await, "applied");
    assert_eq!(app.prediction("p1").await.as_deref(), Some(body));
}

async fn unverifiable_deliveries_get_401_and_store_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let good = Delivery::new(prediction("p1", "starting", ""));
    let url = format!("{}/webhooks/replicate", app.address);
    let signature = app.signature(&good);
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("no headers", vec![]),
        (
            "no signature",
            vec![
                ("webhook-id", good.webhook_id.clone()),
                ("webhook-timestamp", good.timestamp.to_string()),
            ],
        ),
        (
            "no id",
            vec![
                ("webhook-timestamp", good.timestamp.to_string()),
                ("webhook-signature", signature.clone()),
            ],
        ),
        (
            "no timestamp",
            vec![
                ("webhook-id", good.webhook_id.clone()),
                ("webhook-signature", signature.clone()),
            ],
        ),
        (
            "bad timestamp",
            vec![
                ("webhook-id", good.webhook_id.clone()),
                ("webhook-timestamp", "soon".into()),
                ("webhook-signature", signature.clone()),
            ],
        ),
        (
            "wrong signature",
            vec![
                ("webhook-id", good.webhook_id.clone()),
                ("webhook-timestamp", good.timestamp.to_string()),
                (
                    "webhook-signature",
                    "v1,I5q0/nYcgL3z2qwOLaM8Z6E3ENKXYZT5s9XoJs3j3vU=".into(),
                ),
            ],
        ),
        (
            "other id",
            vec![
                ("webhook-id", "msg_other".into()),
                ("webhook-timestamp", good.timestamp.to_string()),
                ("webhook-signature", signature.clone()),
            ],
        ),
    ];
    for (case, headers) in cases {
        let mut request = app.client.post(&url).body(good.body.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let problem = assert_problem(request.send().await.unwrap(), StatusCode::UNAUTHORIZED).await;
        assert!(!problem["detail"].as_str().unwrap().is_empty(), "{case}");
    }
    assert_eq!(app.count("deliveries").await, 0);
    assert_eq!(app.count("predictions").await, 0);
}

async fn timestamps_outside_the_tolerance_get_401(backend: Backend) {
    let app = spawn_app_with(backend, &[("INBOX_WEBHOOK_TOLERANCE_SECS", "60")]).await;
    // Well outside: the service's clock may read a second or two later than the sender's.
    for timestamp in [now() - 65, now() + 65] {
        let response = app
            .send(&Delivery::at(timestamp, prediction("p1", "starting", "")))
            .await;
        assert_problem(response, StatusCode::UNAUTHORIZED).await;
    }
    assert_eq!(
        app.deliver(&Delivery::at(now() - 55, prediction("p1", "starting", "")))
            .await,
        "applied"
    );
    assert_eq!(app.count("deliveries").await, 1);
}

async fn verified_bodies_that_are_not_predictions_get_400_and_store_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let deep = format!(
        "{{\"id\":\"p\",\"o\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    for body in [
        "[1,2]",
        "\"text\"",
        "null",
        "not json",
        "{\"status\":\"starting\"}",
        "{\"id\":42}",
        "{\"id\":\"\"}",
        "{\"id\":\"a\\u0000b\"}",
        // A key given twice counts as its last value, which must be a usable `id`.
        "{\"id\":\"p\",\"id\":7}",
        // Numbers no double can hold, and the ones JSON does not have.
        "{\"id\":\"p\",\"x\":1e999999}",
        "{\"id\":\"p\",\"x\":-1e999999}",
        "{\"id\":\"p\",\"x\":[1,{\"y\":1e400}]}",
        "{\"id\":\"p\",\"x\":NaN}",
        "{\"id\":\"p\",\"x\":Infinity}",
        &deep,
    ] {
        let response = app.send(&Delivery::new(body)).await;
        assert_problem(response, StatusCode::BAD_REQUEST).await;
    }
    // Signed bytes that are not UTF-8 verify, and are still no prediction.
    let bytes = b"{\"id\":\"\xff\"}".to_vec();
    let response = app
        .signed_request(&support::new_webhook_id(), now(), &bytes)
        .body(bytes)
        .send()
        .await
        .unwrap();
    let problem = assert_problem(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(problem["detail"], "the body is not UTF-8");
    assert_eq!(app.count("deliveries").await, 0);

    // An integer past 64 bits but within a double's range is valid JSON: kept, digit for digit.
    let long = format!("{{\"id\":\"p\",\"x\":{}}}", "9".repeat(30));
    assert_eq!(app.deliver(&Delivery::new(long.clone())).await, "applied");
    assert_eq!(app.prediction("p").await.as_deref(), Some(long.as_str()));
}

/// Replicate retries the same bytes, so a verified delivery refused for what is inside it would be
/// lost for good: only the contract's `400` row refuses one.
async fn a_verified_delivery_is_stored_as_sent_whatever_its_fields_hold(backend: Backend) {
    let app = spawn_app(backend).await;
    let long = "x".repeat(5000);
    let nul = "a\\u0000b";
    let cases: Vec<(String, String)> = vec![
        ("empty status".into(), r#"{"id":"e1","status":""}"#.into()),
        (
            "empty model".into(),
            r#"{"id":"e2","model":"","version":""}"#.into(),
        ),
        (
            "long status".into(),
            format!(r#"{{"id":"l1","status":"{long}"}}"#),
        ),
        (
            "long model".into(),
            format!(r#"{{"id":"l2","model":"{long}","version":"{long}"}}"#),
        ),
        (
            "NUL status".into(),
            format!(r#"{{"id":"n1","status":"{nul}"}}"#),
        ),
        (
            "NUL model".into(),
            format!(r#"{{"id":"n2","model":"{nul}","version":"{nul}"}}"#),
        ),
        (
            "duplicate keys".into(),
            r#"{"id":"d0","status":"starting","id":"d1","status":"succeeded","model":"a/b"}"#
                .into(),
        ),
    ];
    for (case, body) in &cases {
        assert_eq!(
            app.deliver(&Delivery::new(body.clone())).await,
            "applied",
            "{case}"
        );
    }
    for (case, body) in &cases {
        let id = match case.as_str() {
            "duplicate keys" => "d1".to_owned(),
            _ => serde_json::from_str::<serde_json::Value>(body).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        };
        assert_eq!(
            app.prediction(&id).await.as_deref(),
            Some(body.as_str()),
            "{case}"
        );
    }
    // The last status counted: the duplicate-keyed prediction is finished.
    let finished = app.get("/v1/predictions?status=succeeded").await;
    let finished: serde_json::Value = finished.json().await.unwrap();
    assert_eq!(finished["results"].as_array().unwrap().len(), 1);
    // An empty value is held, and an exact filter finds it; one a column cannot hold is NULL
    // there (never a prefix), so no filter finds it.
    let filtered = |query: &str| {
        let app = &app;
        let query = query.to_owned();
        async move {
            let page: serde_json::Value = app
                .get(&format!("/v1/predictions?{query}"))
                .await
                .json()
                .await
                .unwrap();
            let mut ids: Vec<String> = page["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(filtered("model=").await, ["e2"]);
    assert_eq!(filtered("status=").await, ["e1"]);
    assert_eq!(
        filtered(&format!("model={}", &long[..1024])).await,
        Vec::<String>::new()
    );
    let held: Vec<(String, Option<String>)> = match &app.store {
        support::TestStore::Postgres { pool, .. } => {
            sqlx::query_as("SELECT id, model FROM predictions ORDER BY id")
                .fetch_all(pool)
                .await
        }
        support::TestStore::Sqlite { pool, .. } => {
            sqlx::query_as("SELECT id, model FROM predictions ORDER BY id")
                .fetch_all(pool)
                .await
        }
    }
    .unwrap();
    let model = |id: &str| held.iter().find(|(i, _)| i == id).unwrap().1.clone();
    assert_eq!((model("l2"), model("n2")), (None, None));
    assert_eq!(model("e2").as_deref(), Some(""));
}

async fn a_body_over_the_limit_gets_413_and_stores_nothing(backend: Backend) {
    let app = spawn_app_with(backend, &[("INBOX_MAX_BODY_BYTES", "1000")]).await;
    let big = prediction("p1", "starting", &"x".repeat(1000));
    let delivery = Delivery::new(big.clone());
    assert_problem(app.send(&delivery).await, StatusCode::PAYLOAD_TOO_LARGE).await;

    // Without a Content-Length (chunked), the limit still cuts the body off.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.as_bytes().chunks(100).map(|c| Ok(c.to_vec())).collect();
    let stream = futures_util::stream::iter(chunks);
    let response = app
        .signed_request(
            &delivery.webhook_id,
            delivery.timestamp,
            delivery.body.as_bytes(),
        )
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert_eq!(app.count("deliveries").await, 0);

    let small = Delivery::new(prediction("p1", "starting", ""));
    assert_eq!(app.deliver(&small).await, "applied");
}

#[tokio::test]
async fn an_unreachable_database_gets_503_with_retry_after_and_the_retry_lands() {
    let app = spawn_app(Backend::Postgres).await;
    let delivery = Delivery::new(prediction("p1", "succeeded", ""));
    let (db, pool) = app.postgres();
    pool.close().await;
    db.admin("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false")
        .await;
    db.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'")
        .await;

    let response = app.send(&delivery).await;
    assert!(response.headers().contains_key("retry-after"));
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    let ready = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_problem(ready, StatusCode::SERVICE_UNAVAILABLE).await;

    db.admin("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true")
        .await;
    // The sender's retry carries the same webhook-id and is the first to be recorded.
    assert_eq!(app.deliver(&delivery).await, "applied");
    assert_eq!(
        app.prediction("p1").await.as_deref(),
        Some(delivery.body.as_str())
    );
}

async fn a_failing_statement_gets_503_and_loses_nothing_stored(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = Delivery::new(prediction("p1", "starting", ""));
    assert_eq!(app.deliver(&first).await, "applied");
    // A write the database refuses, after the prediction's upsert, stands in for any statement
    // that fails mid-transaction.
    app.execute(match backend {
        Backend::Postgres => {
            "ALTER TABLE deliveries ADD CONSTRAINT refuse CHECK (webhook_timestamp < 0) NOT VALID"
        }
        // The SQLite backend records the delivery first and marks it applied after the upsert.
        Backend::Sqlite => {
            "CREATE TRIGGER refuse BEFORE UPDATE ON deliveries BEGIN SELECT RAISE(ABORT, 'refused'); END"
        }
    })
    .await;
    let second = Delivery::new(prediction("p1", "succeeded", ""));
    assert_problem(app.send(&second).await, StatusCode::SERVICE_UNAVAILABLE).await;
    // The whole transaction rolled back: the upsert that ran before the refused insert is undone.
    assert_eq!(
        app.prediction("p1").await.as_deref(),
        Some(first.body.as_str())
    );
    assert_eq!(app.count("deliveries").await, 1);
}

support::on_each_backend!(
    a_verified_new_delivery_is_applied_and_stored_exactly,
    every_fixture_is_accepted_and_returned_byte_for_byte,
    an_older_delivery_is_recorded_but_ignored,
    a_repeated_webhook_id_is_a_duplicate_and_writes_nothing,
    unknown_statuses_and_fields_are_kept,
    unverifiable_deliveries_get_401_and_store_nothing,
    timestamps_outside_the_tolerance_get_401,
    verified_bodies_that_are_not_predictions_get_400_and_store_nothing,
    a_verified_delivery_is_stored_as_sent_whatever_its_fields_hold,
    a_body_over_the_limit_gets_413_and_stores_nothing,
    a_failing_statement_gets_503_and_loses_nothing_stored,
);
