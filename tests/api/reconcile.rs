//! The reconciler against the fake platform: predictions whose webhooks were lost are read from
//! the platform and finished, within the rate, without ever replacing what is stored by less.
//! Short settings stand in for time: `INBOX_RECONCILE_AFTER=1s`.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::fake_replicate::{FakeReplicate, VERSION};
use support::{
    Backend, CREATE_TOKEN, Delivery, TOKEN, TestApp, eventually, on_each_backend, spawn_gateway_app,
};

on_each_backend!(
    lost_terminal_webhooks_are_repaired_within_the_rate,
    a_removed_output_finishes_a_prediction_but_never_replaces_its_output,
    a_prediction_the_platform_keeps_not_knowing_is_marked_and_left_alone,
    trainings_are_read_at_their_own_route_and_other_hosts_never,
    after_an_outage_the_catch_up_imports_what_every_webhook_missed,
    a_moment_of_404_is_not_a_verdict,
    the_command_beside_serving_replicas_reads_each_prediction_once,
);

const QUICK: [(&str, &str); 2] = [
    ("INBOX_RECONCILE_AFTER", "1s"),
    ("INBOX_RECONCILE_RPS", "50"),
];

async fn create(app: &TestApp, input: Value) -> String {
    let answer = app
        .client
        .post(format!("{}/v1/predictions", app.address))
        .bearer_auth(CREATE_TOKEN)
        .json(&json!({"version": VERSION, "input": input}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::CREATED);
    let created: Value = answer.json().await.unwrap();
    created["id"].as_str().unwrap().to_owned()
}

async fn status(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/v1/predictions/{id}"))
        .await
        .json::<Value>()
        .await
        .unwrap()
}

/// Waits until every prediction of `ids` is terminal in the inbox.
async fn all_finish(app: &TestApp, ids: &[String]) {
    for id in ids {
        eventually(&format!("{id} is terminal in the inbox"), || async {
            status(app, id).await["status"] == "succeeded"
        })
        .await;
    }
}

/// Whether the fake never sends prediction `id`'s terminal webhook: about one in ten (ids end in
/// one of 32 characters).
fn lost(id: &str) -> bool {
    id.ends_with(['a', 'b', 'c'])
}

async fn lost_terminal_webhooks_are_repaired_within_the_rate(backend: Backend) {
    let fake = FakeReplicate::start().await;
    // Well below what one sweep reads unpaced (50 to 60 a second here).
    let rate = [
        ("INBOX_RECONCILE_AFTER", "1s"),
        ("INBOX_RECONCILE_RPS", "20"),
    ];
    let app = spawn_gateway_app(backend, &fake, &rate).await;
    fake.drop_webhooks_where(|id, event| event == "completed" && lost(id));
    let ids: Vec<String> = futures_util::stream::iter(0..1000)
        .map(|_| create(&app, json!({"steps": 1, "step_ms": 10})))
        .buffer_unordered(16)
        .collect()
        .await;
    let dropped: Vec<&String> = ids.iter().filter(|id| lost(id)).collect();
    assert!(dropped.len() > 50, "{} lost", dropped.len());
    // A waiter on a lost one is woken by the reconciled change, as by a webhook.
    let waited = app
        .client
        .get(format!("{}/v1/predictions/{}", app.address, dropped[0]))
        .bearer_auth(TOKEN)
        .header("prefer", "wait=30")
        .send();
    let (waited, ()) = tokio::join!(waited, all_finish(&app, &ids));
    assert_eq!(
        waited.unwrap().json::<Value>().await.unwrap()["status"],
        "succeeded"
    );
    // Reads leave 50 ms apart at the least; they arrive with the scheduling jitter of a loaded
    // machine, so one second at the fake may hold one or two more.
    let most = fake.most_in_a_second("GET", "/v1/predictions/");
    assert!(
        most <= 22,
        "the platform was read faster than INBOX_RECONCILE_RPS: {most} in a second"
    );
    assert!(
        fake.webhooks_sent()
            .iter()
            .all(|s| !(s.event == "completed" && lost(&s.prediction_id)))
    );
    // A repaired one says how it came.
    let history: Value = app
        .get(&format!("/v1/predictions/{}/deliveries", dropped[0]))
        .await
        .json()
        .await
        .unwrap();
    let sources: Vec<&str> = history["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["source"].as_str().unwrap())
        .collect();
    assert!(sources.contains(&"reconcile"), "{sources:?}");
}

async fn a_removed_output_finishes_a_prediction_but_never_replaces_its_output(backend: Backend) {
    let fake = FakeReplicate::start().await;
    // Read only once the platform has removed the data.
    let app = spawn_gateway_app(backend, &fake, &[("INBOX_RECONCILE_AFTER", "0")]).await;
    fake.drop_webhooks_where(|_, event| event == "completed");
    let id = create(&app, json!({"steps": 2})).await;
    fake.finished(&id).await;
    eventually("the last output is recorded", || async {
        status(&app, &id).await["output"] == json!(["step 1", "step 2"])
    })
    .await;
    fake.change(&id, |p| {
        p["output"] = Value::Null;
        p["logs"] = Value::Null;
        p["data_removed"] = json!(true);
    });
    // A replica that reconciles, over the same database.
    let _reconciling = support::start_gateway(&app.store.url(), &fake, &QUICK).await;
    eventually("the reconciled state is terminal", || async {
        status(&app, &id).await["status"] == "succeeded"
    })
    .await;
    let done = status(&app, &id).await;
    assert_eq!(done["data_removed"], true);
    assert_eq!(done["output"], json!(["step 1", "step 2"]));
}

async fn a_prediction_the_platform_keeps_not_knowing_is_marked_and_left_alone(backend: Backend) {
    let fake = FakeReplicate::start().await;
    fake.drop_webhooks_where(|_, event| event == "completed");
    let app = spawn_gateway_app(backend, &fake, &QUICK).await;
    let id = create(&app, json!({"steps": 1, "step_ms": 60000})).await;
    eventually("the start is recorded", || async {
        status(&app, &id).await["status"] == "processing"
    })
    .await;
    fake.forget(&id);
    let path = format!("/v1/predictions/{id}");
    // Three 404s in a row over 2.5 × INBOX_RECONCILE_AFTER, and then no more reads.
    eventually("the prediction is marked", || async {
        fake.count("GET", &path) >= 3 && marked(&app, &id).await.as_deref() == Some("not_found")
    })
    .await;
    let reads = fake.count("GET", &path);
    // Another prediction read twice after the marking shows the sweeps went on without it.
    let other = create(&app, json!({"steps": 1, "step_ms": 60000})).await;
    let other_path = format!("/v1/predictions/{other}");
    eventually("another prediction is read twice", || async {
        fake.count("GET", &other_path) >= 2
    })
    .await;
    assert_eq!(
        fake.count("GET", &path),
        reads,
        "a marked prediction was read again"
    );
    assert_eq!(status(&app, &id).await["status"], "processing");
}

/// A fresh prediction can be `404` for a moment: one or two such answers mark nothing, and the
/// prediction is finished once the platform knows it again.
async fn a_moment_of_404_is_not_a_verdict(backend: Backend) {
    let fake = FakeReplicate::start().await;
    fake.drop_webhooks_where(|_, event| event == "completed");
    // No catch-up: only the sweep's reads, after the platform forgot it.
    let quick = [QUICK[0], QUICK[1], ("INBOX_RECONCILE_CATCHUP_EVERY", "0")];
    let app = spawn_gateway_app(backend, &fake, &quick).await;
    let id = create(&app, json!({"steps": 1})).await;
    let finished = fake.finished(&id).await;
    let path = format!("/v1/predictions/{id}");
    let before = fake.count("GET", &path);
    fake.forget(&id);
    eventually("the platform answered 404 once", || async {
        fake.count("GET", &path) > before
    })
    .await;
    assert_ne!(status(&app, &id).await["status"], "succeeded");
    fake.restore(finished);
    eventually("the prediction is finished", || async {
        status(&app, &id).await["status"] == "succeeded"
    })
    .await;
    assert_eq!(marked(&app, &id).await, None);
}

/// An API that cannot be reached pauses the reconciler, and nothing else: deliveries and reads go
/// on as before.
#[tokio::test]
async fn an_unreachable_platform_never_holds_up_deliveries_or_reads() {
    let fake = FakeReplicate::start().await;
    // An "API" that hangs up on every connection, counting them.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let tries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = tries.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    let app = spawn_gateway_app(
        Backend::Sqlite,
        &fake,
        &[
            ("INBOX_REPLICATE_API_URL", &api),
            ("INBOX_RECONCILE_AFTER", "1s"),
        ],
    )
    .await;
    let stuck = json!({
        "id": "p-stuck", "status": "processing",
        "urls": {"get": format!("{api}/v1/predictions/p-stuck")},
    });
    app.deliver(&Delivery::new(stuck.to_string())).await;
    // The reconciler has tried (its catch-up's list first), and failed to reach it.
    eventually("the reconciler tried the platform", || async {
        tries.load(std::sync::atomic::Ordering::SeqCst) >= 1
    })
    .await;
    for i in 0..20 {
        let id = format!("p-going-on-{i}");
        let body = json!({"id": id, "status": "succeeded"}).to_string();
        assert_eq!(app.deliver(&Delivery::new(body)).await, "applied");
        assert_eq!(status(&app, &id).await["status"], "succeeded");
    }
    assert_eq!(status(&app, "p-stuck").await["status"], "processing");
}

async fn trainings_are_read_at_their_own_route_and_other_hosts_never(backend: Backend) {
    let fake = FakeReplicate::start().await;
    let app = spawn_gateway_app(backend, &fake, &QUICK).await;
    // A training, finished at the platform; the inbox heard only that it was processing.
    let mut training = fake.add_training("succeeded");
    let id = training["id"].as_str().unwrap().to_owned();
    training["status"] = json!("processing");
    training["output"] = Value::Null;
    app.deliver(&Delivery::new(training.to_string())).await;
    // A prediction whose `urls.get` is not the platform's API.
    let elsewhere = json!({
        "id": "p-elsewhere", "status": "processing",
        "urls": {"get": "https://api.elsewhere.example/v1/predictions/p-elsewhere"},
    });
    app.deliver(&Delivery::new(elsewhere.to_string())).await;
    eventually("the training is reconciled", || async {
        status(&app, &id).await["status"] == "succeeded"
    })
    .await;
    assert_eq!(fake.count("GET", &format!("/v1/trainings/{id}")), 1);
    eventually("the other is skipped for good", || async {
        marked(&app, "p-elsewhere").await.as_deref() == Some("not_the_platform")
    })
    .await;
    assert!(fake.seen().iter().all(|s| !s.path.contains("p-elsewhere")));
}

#[tokio::test]
async fn the_platform_asking_to_slow_down_pauses_the_reconciler() {
    let fake = FakeReplicate::start().await;
    fake.drop_webhooks_where(|_, event| event == "completed");
    let app = spawn_gateway_app(Backend::Sqlite, &fake, &QUICK).await;
    let ids = [
        create(&app, json!({"steps": 1})).await,
        create(&app, json!({"steps": 1})).await,
    ];
    for id in &ids {
        fake.finished(id).await;
    }
    let refusing = std::time::Instant::now();
    fake.answer_next(&[
        (StatusCode::TOO_MANY_REQUESTS, Some("2")),
        (StatusCode::SERVICE_UNAVAILABLE, None),
    ]);
    all_finish(&app, &ids).await;
    // The reads after each refusal came no sooner than it asked (2 s), or than the first pause
    // (1 s) without a `Retry-After`.
    let reads: Vec<_> = fake
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET" && s.path.starts_with("/v1/predictions/"))
        .filter(|s| s.at >= refusing)
        .collect();
    assert!(reads.len() >= 3, "{reads:?}");
    let gaps: Vec<_> = reads.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(
        reads[1].at - reads[0].at >= Duration::from_secs(2),
        "{gaps:?}"
    );
    assert!(
        reads[2].at - reads[1].at >= Duration::from_secs(1),
        "{gaps:?}"
    );
}

/// The catch-up's list refused with a `Retry-After` is read again no sooner than asked.
#[tokio::test]
async fn the_catch_up_waits_as_long_as_the_platform_asks() {
    let fake = FakeReplicate::start().await;
    fake.answer_next(&[(StatusCode::TOO_MANY_REQUESTS, Some("2"))]);
    let _app = spawn_gateway_app(Backend::Sqlite, &fake, &QUICK).await;
    let lists = || {
        fake.seen()
            .into_iter()
            .filter(|s| s.method == "GET" && s.path == "/v1/predictions")
            .collect::<Vec<_>>()
    };
    eventually("the list is read again", || async { lists().len() >= 2 }).await;
    let lists = lists();
    assert!(lists[1].at - lists[0].at >= Duration::from_secs(2));
}

/// `prediction-inbox reconcile` run while serving replicas reconcile (two on Postgres, one beside
/// the embedded file): the replica holding the lease hands it over for the command's run and
/// takes it back after, so each prediction is read by one of them only, at the rate in all.
async fn the_command_beside_serving_replicas_reads_each_prediction_once(backend: Backend) {
    let fake = FakeReplicate::start().await;
    fake.drop_webhooks_where(|_, event| event == "completed");
    // No catch-up: its reads at start would not wait for the predictions to be due.
    let rate = [
        ("INBOX_RECONCILE_AFTER", "1s"),
        ("INBOX_RECONCILE_RPS", "10"),
        ("INBOX_RECONCILE_CATCHUP_EVERY", "0"),
    ];
    let app = spawn_gateway_app(backend, &fake, &rate).await;
    let _other = match backend {
        Backend::Postgres => Some(support::start_gateway(&app.store.url(), &fake, &rate).await),
        Backend::Sqlite => None,
    };
    let ids: Vec<String> = futures_util::stream::iter(0..80)
        .map(|_| create(&app, json!({"steps": 1})))
        .buffer_unordered(8)
        .collect()
        .await;
    // Due together, eighty take the replicas eight seconds at this rate: the command, which
    // takes a second or two to start and be handed the lease, asks for it while they read.
    let reading = || {
        fake.seen()
            .iter()
            .any(|s| s.method == "GET" && s.path.starts_with("/v1/predictions/"))
    };
    eventually("the replicas read the platform", || async { reading() }).await;
    let url = app.store.url();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("INBOX_WEBHOOK_SECRETS", support::SECRET),
        ("INBOX_API_TOKENS", TOKEN),
        (
            "REPLICATE_API_TOKEN",
            support::fake_replicate::ACCOUNT_TOKEN,
        ),
        ("INBOX_REPLICATE_API_URL", fake.url()),
        ("INBOX_WEBHOOK_URL", "http://127.0.0.1:1/webhooks/replicate"),
        rate[0],
        rate[1],
        rate[2],
    ];
    let mut command = support::service::command(&env);
    command.arg("reconcile");
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let advanced: u64 = stdout
        .rsplit_once("advanced ")
        .and_then(|(_, rest)| rest.split(';').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(advanced > 0, "the command read nothing: {stdout}");
    all_finish(&app, &ids).await;
    let mut reads: HashMap<String, usize> = HashMap::new();
    for seen in fake.seen() {
        if seen.method == "GET" {
            *reads.entry(seen.path).or_default() += 1;
        }
    }
    for id in &ids {
        assert_eq!(
            reads.get(&format!("/v1/predictions/{id}")),
            Some(&1),
            "{id}"
        );
    }
    // As in `lost_terminal_webhooks_are_repaired_within_the_rate`: scheduling jitter aside.
    let most = fake.most_in_a_second("GET", "/v1/predictions/");
    assert!(
        most <= 12,
        "the platform was read faster than INBOX_RECONCILE_RPS: {most} in a second"
    );
}

/// Predictions created and finished while the inbox was down, their retries run out: the
/// catch-up at start lists them, page after page, and imports those whose webhook is the inbox's,
/// and no other.
async fn after_an_outage_the_catch_up_imports_what_every_webhook_missed(backend: Backend) {
    let fake = FakeReplicate::start().await;
    // The inbox's port, held while it is down: a port only found free could be taken by another
    // test's server meanwhile, and that one would answer the webhooks meant to go nowhere.
    let down = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = down.local_addr().unwrap().port();
    let refusing = tokio::spawn(async move {
        // Each connection is closed unanswered: no status, as from a service that is down.
        while let Ok((connection, _)) = down.accept().await {
            drop(connection);
        }
    });
    let ours = format!("http://127.0.0.1:{port}/webhooks/replicate");
    let client = reqwest::Client::new();
    let create_at_the_platform = |webhook: String| {
        let fake = fake.clone();
        async move {
            let body = json!({"version": VERSION, "input": {"steps": 1}, "webhook": webhook});
            let created = fake.create_directly(body).await;
            created["id"].as_str().unwrap().to_owned()
        }
    };
    let mut missed = Vec::new();
    // More than the platform's page of 100: the catch-up follows `next`.
    for _ in 0..120 {
        missed.push(create_at_the_platform(ours.clone()).await);
    }
    let theirs = create_at_the_platform("https://elsewhere.example/hook".into()).await;
    // Every webhook, the terminal one's retries included, went nowhere.
    for id in &missed {
        fake.finished(id).await;
        eventually("the platform gives up on the terminal webhook", || async {
            let attempts = fake
                .webhooks_sent()
                .iter()
                .filter(|s| s.prediction_id == *id && s.event == "completed")
                .count();
            attempts == 6
        })
        .await;
    }
    assert!(fake.webhooks_sent().iter().all(|s| s.status == 0));
    // Awaited once aborted, the task has dropped the listener and the port is free again.
    refusing.abort();
    let _ = refusing.await;
    let store = support::TestStore::create(backend).await;
    let quick = [
        ("INBOX_RECONCILE_AFTER", "1s"),
        ("INBOX_RECONCILE_RPS", "50"),
    ];
    let app = support::start_gateway_on(port, &store.url(), &fake, &quick).await;
    for id in &missed {
        eventually(&format!("{id} is imported, finished"), || async {
            let answer = client
                .get(format!("{}/v1/predictions/{id}", app.address))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            answer.status() == 200 && answer.json::<Value>().await.unwrap()["status"] == "succeeded"
        })
        .await;
    }
    let other = client
        .get(format!("{}/v1/predictions/{theirs}", app.address))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    assert_eq!(fake.count("GET", &format!("/v1/predictions/{theirs}")), 0);
}

/// Why the reconciler no longer reads prediction `id`, if it does not.
async fn marked(app: &TestApp, id: &str) -> Option<String> {
    let sql = format!("SELECT marked FROM reconcile WHERE prediction_id = '{id}'");
    app.store.text(&sql).await
}
