//! Creating through the inbox, against the fake platform over real HTTP: the webhook wired in,
//! the first state recorded at once, `Prefer: wait` answered from the inbox's own deliveries,
//! who may create, what reaches the platform and what comes back from it.

use std::time::{Duration, Instant};

use prediction_inbox::ingest;
use prediction_inbox::store::Source;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::fake_replicate::{self, FakeReplicate, MODEL, VERSION};
use support::{
    Backend, CREATE_TOKEN, Delivery, TOKEN, TestApp, assert_problem, eventually, on_each_backend,
    spawn_app, spawn_gateway_app,
};

on_each_backend!(
    a_create_is_wired_to_the_inbox_and_recorded_at_once,
    prefer_wait_on_create_answers_from_the_inbox_own_deliveries,
    an_unfinished_create_is_answered_as_starting_with_its_location,
    a_callers_own_webhook_is_refused,
    only_create_tokens_create,
    cancel_reaches_only_predictions_the_inbox_knows,
    an_answer_the_inbox_makes_never_replaces_a_terminal_state,
);

async fn create(app: &TestApp, path: &str, body: Value, prefer: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .post(format!("{}{path}", app.address))
        .bearer_auth(CREATE_TOKEN)
        .json(&body);
    if let Some(prefer) = prefer {
        request = request.header("prefer", prefer);
    }
    request.send().await.unwrap()
}

/// Creates `input` of the fake's version through `app`, without waiting: the prediction created.
async fn created(app: &TestApp, input: Value) -> Value {
    let answer = create(
        app,
        "/v1/predictions",
        json!({"version": VERSION, "input": input}),
        None,
    )
    .await;
    assert_eq!(answer.status(), StatusCode::CREATED);
    answer.json().await.unwrap()
}

async fn read(app: &TestApp, id: &str, prefer: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .get(format!("{}/v1/predictions/{id}", app.address))
        .bearer_auth(TOKEN);
    if let Some(prefer) = prefer {
        request = request.header("prefer", prefer);
    }
    request.send().await.unwrap()
}

async fn a_create_is_wired_to_the_inbox_and_recorded_at_once(backend: Backend) {
    let fake = FakeReplicate::start().await;
    let app = spawn_gateway_app(backend, &fake, &[]).await;
    let answer = create(
        &app,
        "/v1/predictions",
        json!({"version": VERSION, "input": {"prompt": "hi", "steps": 2}}),
        None,
    )
    .await;
    assert_eq!(answer.status(), StatusCode::CREATED);
    let created: Value = answer.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["status"], "starting");
    // The links name the inbox, so a client that follows them keeps its token here.
    assert_eq!(
        created["urls"]["get"],
        format!("{}/v1/predictions/{id}", app.address)
    );
    assert_eq!(
        created["urls"]["cancel"],
        format!("{}/v1/predictions/{id}/cancel", app.address)
    );
    // What reached the platform: the account's token, the inbox's webhook with every event, and
    // no `Prefer: wait` (the inbox holds the caller, not a connection upstream).
    let sent = fake.seen();
    let sent = sent
        .iter()
        .find(|s| s.path == "/v1/predictions")
        .expect("the create reached the platform");
    assert_eq!(
        sent.authorization.as_deref(),
        Some(format!("Bearer {}", fake_replicate::ACCOUNT_TOKEN).as_str())
    );
    assert_eq!(sent.prefer, None);
    let forwarded: Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(
        forwarded["webhook"],
        format!("{}/webhooks/replicate", app.address)
    );
    assert_eq!(
        forwarded["webhook_events_filter"],
        json!(["start", "output", "logs", "completed"])
    );
    assert_eq!(forwarded["input"]["prompt"], "hi");
    // Recorded before the create returned: readable at once, as a delivery of its own source.
    let stored = read(&app, &id, None).await;
    assert_eq!(stored.status(), StatusCode::OK);
    let history: Value = app
        .get(&format!("/v1/predictions/{id}/deliveries"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(history["results"][0]["source"], "create");
    // The model's webhooks then finish it.
    let done: Value = read(&app, &id, Some("wait=20")).await.json().await.unwrap();
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["output"], json!(["step 1", "step 2", "hi"]));
    // What readers get names the inbox too, while the stored body is the platform's.
    let inbox_get = format!("{}/v1/predictions/{id}", app.address);
    assert_eq!(done["urls"]["get"], inbox_get);
    let list: Value = app.get("/v1/predictions").await.json().await.unwrap();
    assert_eq!(
        list["results"][0]["urls"]["cancel"],
        format!("{inbox_get}/cancel")
    );
    assert_eq!(
        list["results"][0]["urls"]["stream"],
        created["urls"]["stream"]
    );
}

async fn prefer_wait_on_create_answers_from_the_inbox_own_deliveries(backend: Backend) {
    let fake = FakeReplicate::start().await;
    let app = spawn_gateway_app(backend, &fake, &[]).await;
    let answer = create(
        &app,
        &format!("/v1/models/{MODEL}/predictions"),
        json!({"input": {"steps": 3}}),
        Some("wait=20"),
    )
    .await;
    assert_eq!(answer.status(), StatusCode::CREATED);
    let location = answer.headers()["location"].to_str().unwrap().to_owned();
    let done: Value = answer.json().await.unwrap();
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"], json!(["step 1", "step 2", "step 3"]));
    assert_eq!(
        location,
        format!(
            "{}/v1/predictions/{}",
            app.address,
            done["id"].as_str().unwrap()
        )
    );
    // Nothing polled the platform: one create, no read.
    assert_eq!(
        fake.count(
            "GET",
            &format!("/v1/predictions/{}", done["id"].as_str().unwrap())
        ),
        0
    );
}

async fn an_unfinished_create_is_answered_as_starting_with_its_location(backend: Backend) {
    let fake = FakeReplicate::start().await;
    let app = spawn_gateway_app(backend, &fake, &[]).await;
    let answer = create(
        &app,
        "/v1/predictions",
        json!({"version": VERSION, "input": {"steps": 1, "start_ms": 0, "step_ms": 3000}}),
        Some("wait=1"),
    )
    .await;
    assert_eq!(answer.status(), StatusCode::CREATED);
    assert_eq!(answer.headers()["preference-applied"], "wait=1");
    let waited: Value = answer.json().await.unwrap();
    let id = waited["id"].as_str().unwrap();
    // The official clients poll only a create that says `starting`.
    assert_eq!(waited["status"], "starting");
    // The stored state, and every other read, keep the real status.
    eventually("the start webhook is recorded", || async {
        let stored: Value = read(&app, id, None).await.json().await.unwrap();
        stored["status"] == "processing"
    })
    .await;
}

async fn a_callers_own_webhook_is_refused(backend: Backend) {
    let fake = FakeReplicate::start().await;
    let app = spawn_gateway_app(backend, &fake, &[]).await;
    for key in ["webhook", "webhook_completed", "webhook_events_filter"] {
        let mut body = json!({"version": VERSION, "input": {}});
        body[key] = json!("https://elsewhere.example/hook");
        let problem = assert_problem(
            create(&app, "/v1/predictions", body, None).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(
            problem["detail"].as_str().unwrap().contains("wires"),
            "{problem}"
        );
    }
    assert_problem(
        create(&app, "/v1/predictions", json!([1]), None).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(fake.seen().is_empty(), "nothing may reach the platform");
}

async fn only_create_tokens_create(backend: Backend) {
    let fake = FakeReplicate::start().await;
    let app = spawn_gateway_app(backend, &fake, &[]).await;
    let url = format!("{}/v1/predictions", app.address);
    let body = json!({"version": VERSION, "input": {}});
    let read_only = app
        .client
        .post(&url)
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(read_only, StatusCode::FORBIDDEN).await;
    let anonymous = app.client.post(&url).json(&body).send().await.unwrap();
    assert_problem(anonymous, StatusCode::UNAUTHORIZED).await;
    for path in [
        "/v1/predictions/x/cancel".to_owned(),
        format!("/v1/models/{MODEL}/predictions"),
        "/v1/deployments/acme/prod/predictions".to_owned(),
        "/v1/files".to_owned(),
    ] {
        let answer = app
            .client
            .post(format!("{}{path}", app.address))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::FORBIDDEN, "{path}");
    }
    let version = app
        .client
        .get(format!(
            "{}/v1/models/{MODEL}/versions/{VERSION}",
            app.address
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(version.status(), StatusCode::FORBIDDEN);
    assert!(fake.seen().is_empty(), "nothing may reach the platform");
    // A create token also reads.
    let list = app
        .client
        .get(&url)
        .bearer_auth(CREATE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::OK);
}

async fn cancel_reaches_only_predictions_the_inbox_knows(backend: Backend) {
    let fake = FakeReplicate::start().await;
    let app = spawn_gateway_app(backend, &fake, &[]).await;
    let unknown = app
        .client
        .post(format!(
            "{}/v1/predictions/neverheardof/cancel",
            app.address
        ))
        .bearer_auth(CREATE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_problem(unknown, StatusCode::NOT_FOUND).await;
    assert!(fake.seen().is_empty());

    let created = created(&app, json!({"steps": 1, "step_ms": 20000})).await;
    let id = created["id"].as_str().unwrap();
    let canceled = app
        .client
        .post(format!("{}/v1/predictions/{id}/cancel", app.address))
        .bearer_auth(CREATE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(canceled.status(), StatusCode::OK);
    let canceled: Value = canceled.json().await.unwrap();
    assert_eq!(canceled["status"], "canceled");
    assert_eq!(
        canceled["urls"]["get"],
        format!("{}/v1/predictions/{id}", app.address)
    );
    // Recorded like a delivery: the read says so at once.
    let stored: Value = read(&app, id, None).await.json().await.unwrap();
    assert_eq!(stored["status"], "canceled");
}

/// The contract: an answer the service makes itself goes through the same order, but never
/// replaces a terminal state.
async fn an_answer_the_inbox_makes_never_replaces_a_terminal_state(backend: Backend) {
    let app = spawn_app(backend).await;
    let succeeded = r#"{"id":"p-own","status":"succeeded","output":"done"}"#;
    app.deliver(&Delivery::new(succeeded)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for source in [Source::Cancel, Source::Reconcile] {
        let own = r#"{"id":"p-own","status":"canceled","output":null}"#;
        let outcome = ingest::record_answer(&app.writer, source, own.into(), deadline)
            .await
            .unwrap();
        assert_eq!(outcome.as_str(), "ignored");
    }
    assert_eq!(app.prediction("p-own").await.unwrap(), succeeded);
    // And a terminal state the inbox made gives way to the platform's own.
    let canceled = r#"{"id":"p-own-2","status":"canceled"}"#;
    ingest::record_answer(&app.writer, Source::Cancel, canceled.into(), deadline)
        .await
        .unwrap();
    let failed = r#"{"id":"p-own-2","status":"failed"}"#;
    assert_eq!(app.deliver(&Delivery::new(failed)).await, "applied");
}

/// The caller's body reaches the platform as it was sent: its members in their order, numbers no
/// double holds, spacing; the inbox only adds its two.
#[tokio::test]
async fn a_create_body_is_forwarded_as_sent() {
    let fake = FakeReplicate::start().await;
    let app = spawn_gateway_app(Backend::Sqlite, &fake, &[]).await;
    let sent = format!(
        r#"{{"version":"{VERSION}","input":{{"seed":123456789012345678901234567890,"z":1,"a":[1, 2]}}}}"#
    );
    let answer = app
        .client
        .post(format!("{}/v1/predictions", app.address))
        .bearer_auth(CREATE_TOKEN)
        .header("content-type", "application/json")
        .body(sent.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::CREATED);
    let forwarded = fake
        .seen()
        .into_iter()
        .find(|s| s.path == "/v1/predictions")
        .unwrap();
    let forwarded = String::from_utf8(forwarded.body.to_vec()).unwrap();
    let expected = format!(
        r#"{},"webhook":"{}/webhooks/replicate","webhook_events_filter":["start","output","logs","completed"]}}"#,
        &sent[..sent.len() - 1],
        app.address
    );
    assert_eq!(forwarded, expected);
}

#[tokio::test]
async fn without_the_account_token_the_routes_answer_501() {
    let app = spawn_app(Backend::Sqlite).await;
    let answer = app
        .client
        .post(format!("{}/v1/predictions", app.address))
        .bearer_auth(TOKEN)
        .json(&json!({"version": VERSION}))
        .send()
        .await
        .unwrap();
    // Without create tokens, no token may create; with the gateway off, the route says why.
    assert!(matches!(
        answer.status(),
        StatusCode::FORBIDDEN | StatusCode::NOT_IMPLEMENTED
    ));
    let fake = FakeReplicate::start().await;
    let off =
        support::spawn_app_with(Backend::Sqlite, &[("INBOX_CREATE_TOKENS", CREATE_TOKEN)]).await;
    let answer = off
        .client
        .post(format!("{}/v1/predictions", off.address))
        .bearer_auth(CREATE_TOKEN)
        .json(&json!({"version": VERSION}))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(answer, StatusCode::NOT_IMPLEMENTED).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("REPLICATE_API_TOKEN")
    );
    assert!(fake.seen().is_empty());
}

/// Axum decodes `%2F` in a path parameter: unchecked, this path would reach
/// `GET /v1/webhooks/default/secret` with the account's token and hand out the signing secret.
#[tokio::test]
async fn a_forwarded_path_cannot_name_another_route_of_the_platform() {
    let fake = FakeReplicate::start().await;
    let app = spawn_gateway_app(Backend::Sqlite, &fake, &[]).await;
    for path in [
        "/v1/models/acme/echo/versions/..%2F..%2F..%2F..%2Fwebhooks%2Fdefault%2Fsecret",
        "/v1/models/%2E%2E/%2E%2E/versions/..%2Fwebhooks%2Fdefault%2Fsecret",
        "/v1/models/..%2F..%2Fwebhooks/default/versions/secret",
    ] {
        let answer = app
            .client
            .get(format!("{}{path}", app.address))
            .bearer_auth(CREATE_TOKEN)
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let text = answer.text().await.unwrap();
        assert!(
            !text.contains(fake_replicate::SIGNING_SECRET),
            "{path}: {text}"
        );
        // Refused as a malformed segment, or (where the client resolved the dots) no route.
        assert!(
            matches!(status, StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND),
            "{path}: {status} {text}"
        );
    }
    let cancel = app
        .client
        .post(format!(
            "{}/v1/predictions/..%2Fwebhooks%2Fdefault%2Fsecret/cancel",
            app.address
        ))
        .bearer_auth(CREATE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), StatusCode::NOT_FOUND);
    for seen in fake.seen() {
        assert!(!seen.path.contains("webhooks"), "reached {}", seen.path);
    }
    // A well-formed lookup passes through.
    let version = app
        .client
        .get(format!(
            "{}/v1/models/{MODEL}/versions/{VERSION}",
            app.address
        ))
        .bearer_auth(CREATE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(version.status(), StatusCode::OK);
    assert_eq!(version.json::<Value>().await.unwrap()["id"], VERSION);
}

#[tokio::test]
async fn the_platforms_errors_come_back_as_they_are_and_its_refusal_of_the_token_as_502() {
    let fake = FakeReplicate::start().await;
    let app = spawn_gateway_app(Backend::Sqlite, &fake, &[]).await;
    let body = json!({"version": VERSION, "input": {}});
    fake.answer_next(&[
        (StatusCode::TOO_MANY_REQUESTS, Some("7")),
        (StatusCode::INTERNAL_SERVER_ERROR, None),
    ]);
    let limited = create(&app, "/v1/predictions", body.clone(), None).await;
    assert_eq!(limited.headers()["retry-after"], "7");
    let problem = assert_problem(limited, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(problem["detail"], "As the test asked.");
    assert_problem(
        create(&app, "/v1/predictions", body.clone(), None).await,
        StatusCode::INTERNAL_SERVER_ERROR,
    )
    .await;
    // A version the platform refuses: its 422 and its words.
    let refused = create(
        &app,
        "/v1/predictions",
        json!({"version": "nope", "input": {}}),
        None,
    )
    .await;
    let problem = assert_problem(refused, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("Invalid version")
    );

    // The account's token refused: the inbox's fault, not the caller's.
    let wrong = spawn_gateway_app(
        Backend::Sqlite,
        &fake,
        &[("REPLICATE_API_TOKEN", "r8_revoked-token-0123456789")],
    )
    .await;
    let answer = create(&wrong, "/v1/predictions", body.clone(), None).await;
    let problem = assert_problem(answer, StatusCode::BAD_GATEWAY).await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("upstream token"), "{detail}");
    assert!(!detail.contains("r8_revoked"));

    // Unreachable, and too slow.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let unreachable = spawn_gateway_app(
        Backend::Sqlite,
        &fake,
        &[("INBOX_REPLICATE_API_URL", &closed_url)],
    )
    .await;
    assert_problem(
        create(&unreachable, "/v1/predictions", body.clone(), None).await,
        StatusCode::BAD_GATEWAY,
    )
    .await;
    let hurried = spawn_gateway_app(
        Backend::Sqlite,
        &fake,
        &[("INBOX_REQUEST_TIMEOUT_SECS", "1")],
    )
    .await;
    fake.answer_slowly(Some(Duration::from_secs(3)));
    assert_problem(
        create(&hurried, "/v1/predictions", body, None).await,
        StatusCode::GATEWAY_TIMEOUT,
    )
    .await;
    fake.answer_slowly(None);
}

#[tokio::test]
async fn allowed_models_limit_what_may_be_created() {
    let fake = FakeReplicate::start().await;
    let app = spawn_gateway_app(
        Backend::Sqlite,
        &fake,
        &[("INBOX_ALLOWED_MODELS", "acme/echo,tools/*")],
    )
    .await;
    let input = json!({"steps": 0});
    for (path, body, expected) in [
        (
            "/v1/models/acme/echo/predictions",
            json!({"input": input}),
            StatusCode::CREATED,
        ),
        (
            "/v1/models/tools/any/predictions",
            json!({"input": input}),
            StatusCode::CREATED,
        ),
        (
            "/v1/models/acme/other/predictions",
            json!({"input": input}),
            StatusCode::FORBIDDEN,
        ),
        (
            "/v1/deployments/evil/prod/predictions",
            json!({"input": input}),
            StatusCode::FORBIDDEN,
        ),
        (
            "/v1/predictions",
            json!({"version": format!("{MODEL}:{VERSION}"), "input": input}),
            StatusCode::CREATED,
        ),
        (
            "/v1/predictions",
            json!({"version": "acme/other:abc", "input": input}),
            StatusCode::FORBIDDEN,
        ),
        // A bare id, looked up under the models named exactly.
        (
            "/v1/predictions",
            json!({"version": VERSION, "input": input}),
            StatusCode::CREATED,
        ),
        (
            "/v1/predictions",
            json!({"version": VERSION, "input": input}),
            StatusCode::CREATED,
        ),
        (
            "/v1/predictions",
            json!({"version": "0000", "input": input}),
            StatusCode::FORBIDDEN,
        ),
    ] {
        let answer = create(&app, path, body.clone(), None).await;
        assert_eq!(answer.status(), expected, "{path} {body}");
    }
    // Looked up once, then known.
    assert_eq!(
        fake.count("GET", &format!("/v1/models/{MODEL}/versions/{VERSION}")),
        1
    );
    let creates = fake.seen().iter().filter(|s| s.method == "POST").count();
    assert_eq!(creates, 5);
}

#[tokio::test]
async fn two_replicas_create_on_one_and_wait_on_the_other() {
    let fake = FakeReplicate::start().await;
    let app = spawn_gateway_app(Backend::Postgres, &fake, &[]).await;
    let other = app.another_gateway_instance(&fake).await;
    let created = created(&app, json!({"steps": 2, "step_ms": 200})).await;
    let id = created["id"].as_str().unwrap();
    // Each wait is woken by the other replica's commit, long before its deadline: a wait that
    // ran to its deadline would also find the prediction finished, and prove nothing.
    let started = Instant::now();
    let done: Value = app
        .client
        .get(format!("{}/v1/predictions/{id}", other.address))
        .bearer_auth(TOKEN)
        .header("prefer", "wait=60")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["status"], "succeeded");
    assert!(started.elapsed() < Duration::from_secs(30), "not woken");
    // And a create with `Prefer: wait` on the second, finished by webhooks the first receives.
    let started = Instant::now();
    let created: Value = app
        .client
        .post(format!("{}/v1/predictions", other.address))
        .bearer_auth(CREATE_TOKEN)
        .header("prefer", "wait=60")
        .json(&json!({"version": VERSION, "input": {"steps": 1}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["status"], "succeeded");
    assert!(started.elapsed() < Duration::from_secs(30), "not woken");
}

#[tokio::test]
async fn file_uploads_pass_through_within_the_size_limit() {
    let fake = FakeReplicate::start().await;
    let app = spawn_gateway_app(Backend::Sqlite, &fake, &[("INBOX_MAX_BODY_BYTES", "65536")]).await;
    let upload = |size: usize| {
        let part = reqwest::multipart::Part::bytes(vec![7u8; size]).file_name("input.bin");
        app.client
            .post(format!("{}/v1/files", app.address))
            .bearer_auth(CREATE_TOKEN)
            .multipart(reqwest::multipart::Form::new().part("content", part))
            .send()
    };
    let small = upload(1000).await.unwrap();
    assert_eq!(small.status(), StatusCode::CREATED);
    let file: Value = small.json().await.unwrap();
    assert!(file["urls"]["get"].as_str().unwrap().contains("/v1/files/"));
    let large = upload(100_000).await.unwrap();
    assert_problem(large, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert_eq!(fake.count("POST", "/v1/files"), 1);
}

/// An upload that does not say its length is counted as it streams: past the limit it is cut,
/// the caller is told it was too large, and the platform keeps no file.
#[tokio::test]
async fn a_streamed_upload_past_the_size_limit_is_cut() {
    let fake = FakeReplicate::start().await;
    let app = spawn_gateway_app(Backend::Sqlite, &fake, &[("INBOX_MAX_BODY_BYTES", "65536")]).await;
    let boundary = "inbox-test-boundary";
    let mut body = format!(
        "--{boundary}\r\ncontent-disposition: form-data; name=\"content\"; filename=\"input.bin\"\r\n\
         content-type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend(vec![7u8; 100_000]);
    body.extend(format!("\r\n--{boundary}--\r\n").into_bytes());
    // In chunks, with no Content-Length: the service learns the size only as it arrives.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(8192).map(|chunk| Ok(chunk.to_vec())).collect();
    let answer = app
        .client
        .post(format!("{}/v1/files", app.address))
        .bearer_auth(CREATE_TOKEN)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_problem(answer, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert_eq!(fake.count("POST", "/v1/files"), 0);
}
