//! `GET /v1/predictions/{id}` and `GET /v1/predictions`: auth, exact bodies, order, filters, cursors.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::Value;
use support::{Backend, Delivery, TOKEN, TestApp, assert_problem, now, prediction, spawn_app};

async fn reading_needs_an_accepted_bearer_token(backend: Backend) {
    let app = spawn_app(backend).await;
    app.deliver(&Delivery::new(prediction("p1", "starting", "")))
        .await;
    for path in ["/v1/predictions/p1", "/v1/predictions"] {
        let url = format!("{}{path}", app.address);
        for authorization in [
            None,
            Some("Bearer wrong"),
            Some("Basic dGVzdC10b2tlbg=="),
            Some(TOKEN),
            Some("Bearer"),
        ] {
            let mut request = app.client.get(&url);
            if let Some(value) = authorization {
                request = request.header("authorization", value);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.headers()["www-authenticate"],
                "Bearer",
                "{path} {authorization:?}"
            );
            assert_problem(response, StatusCode::UNAUTHORIZED).await;
        }
        let ok = app
            .client
            .get(&url)
            .header("authorization", format!("bearer {TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK, "{path}");
    }
}

async fn an_unknown_prediction_is_a_404_problem(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_problem(app.get("/v1/predictions/nope").await, StatusCode::NOT_FOUND).await;
    // An id that could never have been stored is just as unknown.
    let long = "x".repeat(5000);
    assert_problem(
        app.get(&format!("/v1/predictions/{long}")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_problem(
        app.get("/v1/predictions/%27%3B%20DROP%20TABLE%20predictions%3B--")
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

async fn a_prediction_is_served_as_json_exactly_as_received(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = "{ \"id\" : \"p1\", \"status\":\"processing\", \"z\":1.0e3, \"a\":\"é中😀\" }";
    app.deliver(&Delivery::new(body)).await;
    let response = app.get("/v1/predictions/p1").await;
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.text().await.unwrap(), body);
}

/// Stores `n` predictions created one second apart: `p000` oldest.
async fn seed(app: &TestApp, n: usize, shape: impl Fn(usize, &mut Value)) {
    for i in 0..n {
        let mut body: Value =
            serde_json::from_str(&prediction(&format!("p{i:03}"), "starting", "")).unwrap();
        body["created_at"] = format!("2024-01-01T00:{:02}:{:02}.123456789Z", i / 60, i % 60).into();
        shape(i, &mut body);
        app.deliver(&Delivery::new(body.to_string())).await;
    }
}

async fn page(app: &TestApp, url: &str) -> Value {
    let response = app.client.get(url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{url}");
    response.json().await.unwrap()
}

/// Follows `next` from `url` to the end; every page on the way.
async fn walk(app: &TestApp, url: String) -> Vec<Value> {
    let mut pages = vec![page(app, &url).await];
    while let Some(next) = pages.last().unwrap()["next"].as_str().map(str::to_owned) {
        assert!(next.starts_with(&app.address), "{next}");
        pages.push(page(app, &next).await);
    }
    pages
}

fn ids(page: &Value) -> Vec<String> {
    page["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn the_list_is_newest_first_with_replicates_shape(backend: Backend) {
    let app = spawn_app(backend).await;
    seed(&app, 3, |_, _| {}).await;
    let first = page(&app, &format!("{}/v1/predictions", app.address)).await;
    assert_eq!(ids(&first), ["p002", "p001", "p000"]);
    assert_eq!(first["previous"], Value::Null);
    assert_eq!(first["next"], Value::Null);
    // The objects inside are the stored ones, whole.
    assert_eq!(
        first["results"][0]["urls"]["get"],
        "https://api.replicate.com/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu"
    );
}

async fn pagination_returns_every_prediction_exactly_once_both_ways(backend: Backend) {
    let app = spawn_app(backend).await;
    // Two share a created_at, so the id must break the tie.
    seed(&app, 250, |i, body| {
        if i == 101 {
            body["created_at"] = "2024-01-01T00:01:40.123456789Z".into();
        }
    })
    .await;
    let pages = walk(&app, format!("{}/v1/predictions?limit=7", app.address)).await;
    assert!(pages.iter().all(|p| ids(p).len() <= 7));
    let forward: Vec<String> = pages.iter().flat_map(ids).collect();
    let unique: HashSet<_> = forward.iter().collect();
    assert_eq!((forward.len(), unique.len()), (250, 250));
    let mut sorted = forward.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(forward, sorted, "newest first, ties by id");

    // Walking `previous` from the last page gives the same pages back.
    let mut back = pages.last().unwrap().clone();
    for expected in pages.iter().rev().skip(1) {
        back = page(&app, back["previous"].as_str().expect("a previous page")).await;
        assert_eq!(ids(&back), ids(expected));
    }
    assert_eq!(back["previous"], Value::Null);
}

async fn filters_narrow_the_list_and_survive_in_the_cursor(backend: Backend) {
    let app = spawn_app(backend).await;
    seed(&app, 30, |i, body| {
        body["status"] = if i % 3 == 0 {
            "succeeded"
        } else {
            "processing"
        }
        .into();
        body["model"] = if i % 2 == 0 { "acme/even" } else { "acme/odd" }.into();
        body["version"] = format!("v{}", i % 5).into();
    })
    .await;
    let all = async |query: &str| -> Vec<String> {
        let pages = walk(&app, format!("{}/v1/predictions?{query}", app.address)).await;
        pages.iter().flat_map(ids).collect()
    };
    let expect = |keep: &dyn Fn(usize) -> bool| -> Vec<String> {
        (0..30)
            .rev()
            .filter(|&i| keep(i))
            .map(|i| format!("p{i:03}"))
            .collect()
    };
    assert_eq!(
        all("status=succeeded&limit=2").await,
        expect(&|i| i % 3 == 0)
    );
    assert_eq!(
        all("model=acme%2Fodd&limit=3").await,
        expect(&|i| i % 2 == 1)
    );
    assert_eq!(
        all("version=v4&model=acme%2Feven&limit=1").await,
        expect(&|i| i % 5 == 4 && i % 2 == 0)
    );
    assert_eq!(
        all("created_after=2024-01-01T00:00:10Z&created_before=2024-01-01T00:00:15Z&limit=2").await,
        expect(&|i| (10..15).contains(&i))
    );
    assert!(all("status=starting").await.is_empty());
}

/// The status filter finds each prediction by the status it has now, however it got there: an
/// update that takes it from one status to another, in flight or terminal, moves it from one
/// filter to the other.
async fn the_status_filter_follows_each_prediction_through_its_life(backend: Backend) {
    let app = spawn_app(backend).await;
    let t = now();
    // Each prediction's deliveries, in order; p6 goes terminal and then, by a later terminal
    // delivery, terminal with another status.
    let lives: [(&str, &[&str]); 7] = [
        ("p1", &["starting"]),
        ("p2", &["starting", "processing"]),
        ("p3", &["starting", "processing", "succeeded"]),
        ("p4", &["starting", "queued"]),
        ("p5", &["processing", "failed"]),
        ("p6", &["starting", "failed", "canceled"]),
        ("p7", &["aborted"]),
    ];
    for (id, statuses) in lives {
        for (step, status) in (0..).zip(statuses) {
            let body = prediction(id, status, &"log\n".repeat(step as usize));
            app.deliver(&Delivery::at(t + step, body)).await;
        }
    }
    let with_status = async |status: &str| -> Vec<String> {
        let pages = walk(
            &app,
            format!("{}/v1/predictions?status={status}&limit=1", app.address),
        )
        .await;
        let mut found: Vec<String> = pages.iter().flat_map(ids).collect();
        found.sort();
        found
    };
    for (status, expected) in [
        ("starting", &["p1"][..]),
        ("processing", &["p2"]),
        ("queued", &["p4"]),
        ("succeeded", &["p3"]),
        ("failed", &["p5"]),
        ("canceled", &["p6"]),
        ("aborted", &["p7"]),
        ("nope", &[]),
    ] {
        assert_eq!(with_status(status).await, expected, "status={status}");
    }
}

async fn bad_list_parameters_are_400_problems(backend: Backend) {
    let app = spawn_app(backend).await;
    for query in [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "created_after=yesterday",
        "created_before=2024-13-01T00:00:00Z",
        "cursor=not-a-cursor",
        "cursor=%FF%FE",
        "status=a&status=b",
    ] {
        let response = app.get(&format!("/v1/predictions?{query}")).await;
        assert_problem(response, StatusCode::BAD_REQUEST).await;
    }
    assert_eq!(
        app.get("/v1/predictions?limit=1000").await.status(),
        StatusCode::OK
    );
}

/// Ids and filters are data, never SQL, and no value a client can send makes a 5xx: SQL-shaped,
/// huge, NUL-carrying or non-UTF-8 values are answered 4xx (or an honest empty 200 for a filter).
async fn hostile_ids_and_filters_get_4xx_never_5xx(backend: Backend) {
    let app = spawn_app(backend).await;
    app.deliver(&Delivery::new(prediction("p1", "succeeded", "")))
        .await;
    let huge = "x".repeat(20_000);
    for id in [
        "'%20OR%20'1'='1",
        "p1'--",
        "p1%3B%20DROP%20TABLE%20predictions",
        "%00",
        "p1%00",
        "%FF%FE",
        "%C0%AF",
        huge.as_str(),
    ] {
        let status = app.get(&format!("/v1/predictions/{id}")).await.status();
        assert!(status.is_client_error(), "{id}: {status}");
        // An event stream on an id not seen yet waits for it: a 200 that stays open is fine.
        let status = app
            .get(&format!("/v1/predictions/{id}/events"))
            .await
            .status();
        assert!(!status.is_server_error(), "{id}/events: {status}");
    }
    for query in [
        "status=succeeded'%20OR%20'1'='1",
        "model=%27%3B%20DROP%20TABLE%20predictions%3B%20--",
        "version=%00",
        "status=%FF",
        "model=%C0%AF",
        &format!("version={huge}"),
        "created_after=9999999-01-01T00:00:00Z",
        "created_before=%00",
        "cursor=%00",
        // A well-formed cursor whose id carries a NUL.
        "cursor=by4xNzY3MjI1NjAwMDAwMDAwLnAxAA",
        &format!("cursor={huge}"),
        "limit=99999999999999999999",
        "limit=-1",
    ] {
        let response = app.get(&format!("/v1/predictions?{query}")).await;
        let status = response.status();
        assert!(!status.is_server_error(), "{query}: {status}");
        if status == StatusCode::OK {
            let page: Value = response.json().await.unwrap();
            assert_eq!(page["results"], serde_json::json!([]), "{query}");
        }
    }
    // Nothing was harmed.
    assert!(app.prediction("p1").await.is_some());
}

/// The `next` link of a page of one from the instance at `address`, asked with a forged
/// `X-Forwarded-*` origin.
async fn next_link(app: &TestApp, address: &str) -> String {
    let response = app
        .client
        .get(format!("{address}/v1/predictions?limit=1"))
        .bearer_auth(TOKEN)
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "inbox.example.com")
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    body["next"].as_str().unwrap().to_owned()
}

async fn links_name_the_public_url_else_the_host_and_forwarded_headers_only_when_trusted(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    seed(&app, 2, |_, _| {}).await;
    let own = format!("{}/v1/predictions?limit=1&cursor=", app.address);
    let next = next_link(&app, &app.address).await;
    assert!(next.starts_with(&own), "{next}");

    let trusting = app
        .another_instance_with(&[("INBOX_TRUST_FORWARDED", "true")])
        .await;
    let next = next_link(&app, &trusting.address).await;
    assert!(
        next.starts_with("https://inbox.example.com/v1/predictions?limit=1&cursor="),
        "{next}"
    );

    let public = app
        .another_instance_with(&[
            ("INBOX_TRUST_FORWARDED", "true"),
            ("INBOX_PUBLIC_URL", "https://inbox.internal/"),
        ])
        .await;
    let next = next_link(&app, &public.address).await;
    assert!(
        next.starts_with("https://inbox.internal/v1/predictions?limit=1&cursor="),
        "{next}"
    );
}

support::on_each_backend!(
    hostile_ids_and_filters_get_4xx_never_5xx,
    reading_needs_an_accepted_bearer_token,
    an_unknown_prediction_is_a_404_problem,
    a_prediction_is_served_as_json_exactly_as_received,
    the_list_is_newest_first_with_replicates_shape,
    pagination_returns_every_prediction_exactly_once_both_ways,
    filters_narrow_the_list_and_survive_in_the_cursor,
    the_status_filter_follows_each_prediction_through_its_life,
    bad_list_parameters_are_400_problems,
    links_name_the_public_url_else_the_host_and_forwarded_headers_only_when_trusted,
);
