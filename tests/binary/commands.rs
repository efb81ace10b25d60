//! The real binary: commands, exit codes, durability across `kill -9`, draining on SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::fake_replicate::{self, FakeReplicate};
use support::service::{Service, command};
use support::{Backend, SECRET, TOKEN, TestDatabase, TestFile, TestStore, now, prediction};

#[test]
fn missing_or_malformed_settings_stop_start_up_with_exit_2_naming_the_setting() {
    let complete = [
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none"),
        ("INBOX_WEBHOOK_SECRETS", SECRET),
        ("INBOX_API_TOKENS", TOKEN),
    ];
    for (key, value) in [
        ("DATABASE_URL", "mysql://127.0.0.1/inbox"),
        ("INBOX_WEBHOOK_SECRETS", ""),
        ("INBOX_WEBHOOK_SECRETS", "whsec_sup3r-secret!"),
        // Keys under 24 bytes, and tokens under 16 characters, that once started the service.
        ("INBOX_WEBHOOK_SECRETS", "whsec_c3VwM3Itc2VjcmV0IQ=="),
        ("INBOX_API_TOKENS", ""),
        ("INBOX_API_TOKENS", "sup3r-secret"),
        ("INBOX_LISTEN", "everywhere"),
        ("INBOX_WEBHOOK_TOLERANCE_SECS", "five"),
        ("INBOX_MAX_BODY_BYTES", "-1"),
    ] {
        let env: Vec<_> = complete
            .iter()
            .filter(|(k, _)| *k != key)
            .copied()
            .chain([(key, value)])
            .collect();
        let output = command(&env).arg("serve").output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{key}={value}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(key), "{stderr}");
        assert!(!stderr.contains("sup3r"), "the secret leaked: {stderr}");
    }
}

#[test]
fn a_malformed_config_file_line_is_named_by_file_line_and_key_never_by_its_value() {
    let file = std::env::temp_dir().join(format!("inbox-config-{}.env", fastrand::u64(..)));
    std::fs::write(
        &file,
        format!("INBOX_WEBHOOK_SECRETS={SECRET}\n# tokens\nINBOX_API_TOKENS=sup3r-secret-one, sup3r-secret-two\n"),
    )
    .unwrap();
    let output = command(&[])
        .arg("--config")
        .arg(&file)
        .arg("serve")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for named in [file.to_str().unwrap(), "line 3", "INBOX_API_TOKENS"] {
        assert!(stderr.contains(named), "{named} is not named: {stderr}");
    }
    assert!(!stderr.contains("sup3r"), "the secret leaked: {stderr}");
    std::fs::remove_file(&file).unwrap();
}

#[tokio::test]
async fn on_the_embedded_store_inside_a_container_it_warns_at_start() {
    let store = TestStore::create(Backend::Sqlite).await;
    let mut service = Service::start_with(
        &[
            ("DATABASE_URL", &store.url()),
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
        ],
        &std::env::temp_dir(),
    );
    let line: Value = serde_json::from_str(&service.wait_for("inside a container")).unwrap();
    assert_eq!(line["level"], "WARN");
}

#[test]
fn an_explicit_config_file_that_is_missing_is_an_error() {
    let output = command(&[])
        .args(["--config", "/nonexistent/inbox.env", "serve"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("INBOX_CONFIG"));
}

#[test]
fn sign_prints_the_reference_vectors() {
    let vectors: Value = serde_json::from_str(&support::fixture("signature-vectors.json")).unwrap();
    for v in vectors["vectors"].as_array().unwrap() {
        let file = std::env::temp_dir().join(format!("inbox-sign-{}", fastrand::u64(..)));
        std::fs::write(&file, v["body"].as_str().unwrap()).unwrap();
        let output = command(&[])
            .args(["sign", "--secret", v["secret"].as_str().unwrap()])
            .args(["--id", v["webhook_id"].as_str().unwrap()])
            .args(["--timestamp", v["webhook_timestamp"].as_str().unwrap()])
            .arg(&file)
            .output()
            .unwrap();
        std::fs::remove_file(&file).unwrap();
        assert!(output.status.success());
        let expected = format!(
            "webhook-id: {}\nwebhook-timestamp: {}\nwebhook-signature: {}\n",
            v["webhook_id"].as_str().unwrap(),
            v["webhook_timestamp"].as_str().unwrap(),
            v["webhook_signature"].as_str().unwrap()
        );
        assert_eq!(String::from_utf8_lossy(&output.stdout), expected);
    }
}

/// A signed delivery of `body` to the service at `address` (the binary's other tests use it too).
pub(crate) async fn deliver(address: &str, body: &str) -> reqwest::Response {
    deliver_as(address, body, &support::new_webhook_id()).await
}

async fn deliver_as(address: &str, body: &str, id: &str) -> reqwest::Response {
    let secret: prediction_inbox::verify::Secret = SECRET.parse().unwrap();
    let timestamp = now();
    reqwest::Client::new()
        .post(format!("{address}/webhooks/replicate"))
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            secret.sign(id, timestamp, body.as_bytes()),
        )
        .header("x-request-id", format!("req-{id}"))
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

/// The prediction `id` as the service at `address` answers it; it must be there.
pub(crate) async fn read(address: &str, id: &str) -> String {
    let response = reqwest::Client::new()
        .get(format!("{address}/v1/predictions/{id}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test]
async fn a_service_the_test_leaves_running_is_stopped_with_it() {
    let store = TestStore::create(Backend::Sqlite).await;
    let service = Service::start(&store.url());
    let process = PathBuf::from(format!("/proc/{}", service.child.id()));
    assert!(process.exists());
    drop(service);
    // Killed and reaped: its process id is gone.
    assert!(!process.exists(), "the service outlived its test");
}

#[tokio::test]
async fn with_no_database_url_state_lives_in_a_sqlite_file_under_data() {
    let folder = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("inbox-default-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&folder).unwrap();
    let body = prediction("p1", "succeeded", "");
    for round in 0..2 {
        let mut service = Service::start_with(&[], &folder);
        let line: Value = serde_json::from_str(&service.wait_for("store ready")).unwrap();
        assert_eq!(line["store"], "sqlite at ./data/prediction-inbox.db");
        if round == 0 {
            assert_eq!(deliver(&service.address, &body).await.status(), 200);
        }
        // Kept across a restart.
        assert_eq!(read(&service.address, "p1").await, body);
        service.signal("-TERM");
        let (code, log) = service.exit_code();
        assert_eq!(code, Some(0), "{log:#?}");
    }
    assert!(folder.join("data/prediction-inbox.db").is_file());
    std::fs::remove_dir_all(&folder).unwrap();
}

/// A life recorded by the service with retention off: three deliveries, the last one terminal.
async fn a_life_kept_whole(store: &TestStore) {
    let off = [
        ("DATABASE_URL", store.url()),
        ("INBOX_DELIVERY_RETENTION", "0".into()),
        ("INBOX_INTERMEDIATE_BODY_RETENTION", "0".into()),
    ];
    let env: Vec<_> = off.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let service = Service::start_with(&env, &std::env::temp_dir());
    for status in ["starting", "processing", "succeeded"] {
        let response = deliver(&service.address, &prediction("p1", status, status)).await;
        assert_eq!(response.status(), 200);
    }
    service.signal("-TERM");
    assert_eq!(service.exit_code().0, Some(0));
    assert_eq!(store.count("deliveries").await, 3);
}

/// `prune --dry-run` counts and removes nothing; `prune` removes and says what.
async fn prune_says_what_it_would_remove_then_removes_it(backend: Backend) {
    let store = TestStore::create(backend).await;
    a_life_kept_whole(&store).await;
    let later = (time::OffsetDateTime::now_utc() + time::Duration::days(31))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let prune = |dry_run: bool| {
        let mut command = command(&[("DATABASE_URL", &store.url())]);
        command.args(["prune", "--now", &later]);
        if dry_run {
            command.arg("--dry-run");
        }
        let output = command.output().unwrap();
        assert!(output.status.success(), "{output:?}");
        // Its last line; log lines come before it.
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        stdout.lines().last().unwrap_or_default().to_owned()
    };
    assert_eq!(
        prune(true),
        "would remove 2 delivery records; would drop 0 bodies of superseded deliveries"
    );
    assert_eq!(store.count("deliveries").await, 3);
    assert_eq!(
        prune(false),
        "removed 2 delivery records; dropped 0 bodies of superseded deliveries"
    );
    assert_eq!(store.count("deliveries").await, 1);
}

/// `reconcile --id` reads one prediction from the platform and records what advanced; without
/// the platform's token it refuses, exit 2.
async fn reconcile_reads_a_prediction_from_the_platform_once(backend: Backend) {
    let fake = FakeReplicate::start().await;
    let store = TestStore::create(backend).await;
    // A prediction finished at the platform, which the inbox heard only start.
    let created = fake
        .create_directly(
            serde_json::json!({"version": fake_replicate::VERSION, "input": {"steps": 1}}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let finished = fake.finished(&id).await;
    let service = Service::start_with(&[("DATABASE_URL", &store.url())], &std::env::temp_dir());
    let mut started = created.clone();
    started["status"] = "processing".into();
    assert_eq!(
        deliver(&service.address, &started.to_string())
            .await
            .status(),
        200
    );
    service.signal("-TERM");
    assert_eq!(service.exit_code().0, Some(0));

    let url = store.url();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("INBOX_WEBHOOK_SECRETS", SECRET),
        ("INBOX_API_TOKENS", TOKEN),
        ("REPLICATE_API_TOKEN", fake_replicate::ACCOUNT_TOKEN),
        ("INBOX_REPLICATE_API_URL", fake.url()),
        ("INBOX_WEBHOOK_URL", "http://127.0.0.1:1/webhooks/replicate"),
    ];
    // Beside the fake, which answers from this test's runtime meanwhile.
    let run = |env: &[(&str, &str)]| {
        let mut command = command(env);
        command.args(["reconcile", "--id", &id]);
        tokio::task::spawn_blocking(move || command.output().unwrap())
    };
    let without_token = run(&env[..3]).await.unwrap();
    assert_eq!(without_token.status.code(), Some(2), "{without_token:?}");
    let output = run(&env).await.unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(
        stdout.lines().last().unwrap_or_default(),
        "advanced 1; unchanged 0; missing at the platform 0; marked 0; skipped 0"
    );
    let status: Option<String> = store
        .text(&format!("SELECT status FROM predictions WHERE id = '{id}'"))
        .await;
    assert_eq!(status.as_deref(), finished["status"].as_str());
}

/// The first run of retention on a database filled before it says what it will remove, then
/// removes it.
async fn retentions_first_run_logs_what_it_will_remove_before_removing_it(backend: Backend) {
    let store = TestStore::create(backend).await;
    a_life_kept_whole(&store).await;
    // Recorded 40 days ago, as far as retention can tell.
    store
        .execute(match backend {
            Backend::Postgres => {
                "UPDATE deliveries SET received_at = received_at - interval '40 days'"
            }
            Backend::Sqlite => "UPDATE deliveries SET received_at = received_at - 40 * 86400000000",
        })
        .await;
    let mut service = Service::start(&store.url());
    let announced: Value =
        serde_json::from_str(&service.wait_for("retention's first run")).unwrap();
    assert_eq!(announced["deliveries"], 2, "{announced}");
    let removed: Value = serde_json::from_str(&service.wait_for("retention removed")).unwrap();
    assert_eq!(removed["deliveries"], 2, "{removed}");
    service.signal("-TERM");
    let (code, log) = service.exit_code();
    assert_eq!(code, Some(0));
    let at = |text: &str| log.iter().position(|line| line.contains(text));
    assert!(
        at("retention's first run") < at("retention removed"),
        "{log:#?}"
    );
    assert_eq!(store.count("deliveries").await, 1);
}

async fn nothing_acknowledged_is_lost_across_kill_9_and_sigterm_exits_0(backend: Backend) {
    let store = TestStore::create(backend).await;
    let url = store.url();
    let mut acknowledged: Vec<(String, String)> = Vec::new();
    for round in 0..3 {
        let mut service = Service::start(&url);
        for (id, body) in &acknowledged {
            assert_eq!(
                &read(&service.address, id).await,
                body,
                "after restart {round}"
            );
        }
        let id = format!("p{round}");
        let body = prediction(&id, "succeeded", "");
        assert_eq!(deliver(&service.address, &body).await.status(), 200);
        acknowledged.push((id, body));
        service.child.kill().unwrap(); // SIGKILL: no chance to flush anything
        service.child.wait().unwrap();
    }

    let service = Service::start(&url);
    for (id, body) in &acknowledged {
        assert_eq!(&read(&service.address, id).await, body);
    }
    service.signal("-TERM");
    let (code, log) = service.exit_code();
    assert_eq!(code, Some(0), "{log:#?}");
    let log = log.join("\n");
    for secret in [SECRET, TOKEN, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}

/// A SIGTERM that comes while the service is still starting (its store ready, its workers about
/// to start) shuts it down in order, exit 0: the handler is registered before anything starts.
#[test]
fn sigterm_during_start_up_still_exits_0() {
    use std::io::{BufRead, BufReader};
    for _ in 0..5 {
        let db = TestFile::create();
        let url = db.url();
        let mut child = command(&[
            ("DATABASE_URL", &url),
            ("INBOX_WEBHOOK_SECRETS", SECRET),
            ("INBOX_API_TOKENS", TOKEN),
            ("INBOX_LISTEN", "127.0.0.1:0"),
            ("INBOX_LOG_FORMAT", "json"),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // The first line: the store is ready; workers and the server come next.
        let first = lines.next().unwrap().unwrap();
        assert!(first.contains("store ready"), "{first}");
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{status:?}: {first}\n{rest:#?}");
    }
}

#[tokio::test]
async fn sigterm_drains_a_request_in_flight() {
    let db = TestDatabase::create().await;
    let mut service = Service::start(&db.url);
    let first = prediction("p1", "starting", "");
    assert_eq!(deliver(&service.address, &first).await.status(), 200);

    // Hold the prediction's row so the next delivery is in flight when the signal comes.
    let pool = db.pool().await;
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM predictions WHERE id = 'p1' FOR UPDATE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let address = service.address.clone();
    let in_flight = tokio::spawn(async move {
        deliver(&address, &prediction("p1", "succeeded", ""))
            .await
            .status()
    });
    support::eventually_counts(
        "the delivery waits on the row",
        &pool,
        support::WAITING_ON_A_LOCK,
        1,
    )
    .await;
    service.signal("-TERM");
    service.wait_for("draining");
    blocker.rollback().await.unwrap();

    assert_eq!(in_flight.await.unwrap(), 200);
    let (code, log) = service.exit_code();
    assert_eq!(code, Some(0), "{log:#?}");
    let state: String = sqlx::query_scalar("SELECT status FROM predictions WHERE id = 'p1'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "succeeded");
}

#[tokio::test]
async fn migrate_applies_the_schema_and_exits() {
    let db = TestDatabase::create().await;
    let output = command(&[("DATABASE_URL", &db.url)])
        .arg("migrate")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pool = db.pool().await;
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('predictions', 'deliveries')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 2);
}

#[tokio::test]
async fn sigterm_ends_waits_and_event_streams_at_once() {
    let db = TestDatabase::create().await;
    let mut service = Service::start(&db.url);
    assert_eq!(
        deliver(&service.address, &prediction("p1", "processing", ""))
            .await
            .status(),
        200
    );
    let client = reqwest::Client::new();
    let get = |path: &str| {
        client
            .get(format!("{}{path}", service.address))
            .bearer_auth(TOKEN)
    };
    let waiting = tokio::spawn(get("/v1/predictions/p1").header("prefer", "wait=60").send());
    let stream = get("/v1/predictions/p1/events").send().await.unwrap();
    support::eventually("both are parked", || async {
        let metrics = client
            .get(format!("{}/metrics", service.address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics.lines().any(|line| line == "inbox_waiters 2")
    })
    .await;

    let started = std::time::Instant::now();
    service.signal("-TERM");
    service.wait_for("draining");
    let answer = waiting.await.unwrap().unwrap();
    assert_eq!(answer.status(), 200);
    assert!(answer.text().await.unwrap().contains("processing"));
    // The stream ends rather than holding the shutdown open.
    assert!(stream.text().await.unwrap().contains("event: prediction"));
    let (code, log) = service.exit_code();
    assert_eq!(code, Some(0), "{log:#?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown waited on the waiters"
    );
}

#[tokio::test]
async fn each_delivery_logs_one_json_line_with_its_outcome_ids_and_request_id() {
    let db = TestDatabase::create().await;
    let mut service = Service::start(&db.url);
    let body = prediction("p1", "succeeded", "");
    assert_eq!(
        deliver_as(&service.address, &body, "msg_logged")
            .await
            .status(),
        200
    );
    let line: Value = serde_json::from_str(&service.wait_for("msg_logged")).unwrap();
    assert_eq!(line["message"], "delivery");
    assert_eq!(line["outcome"], "applied");
    assert_eq!(line["prediction_id"], "p1");
    assert_eq!(line["webhook_id"], "msg_logged");
    assert_eq!(line["span"]["request_id"], "req-msg_logged");
    assert!(
        !line.to_string().contains("Alice"),
        "the body reached the log"
    );
    service.signal("-TERM");
    assert_eq!(service.exit_code().0, Some(0));
}

/// Runs the binary without blocking the runtime that serves the app it talks to.
async fn run(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || command(&[]).args(args).output().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn send_test_delivers_a_whole_signed_life_and_reports_each_answer() {
    let app = support::spawn_app(Backend::Postgres).await;
    let url = format!("{}/webhooks/replicate", app.address);
    let output = run(vec![
        "send-test".into(),
        url.clone(),
        "--secret".into(),
        SECRET.into(),
        "--sequence".into(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let id = lines[0].strip_prefix("prediction ").unwrap();
    for (line, status) in lines[1..]
        .iter()
        .zip(["starting", "processing", "succeeded"])
    {
        assert!(
            line.starts_with(status) && line.contains(r#"200 {"status":"applied"}"#),
            "{line}"
        );
    }
    let stored: Value = serde_json::from_str(&app.prediction(id).await.unwrap()).unwrap();
    assert_eq!(stored["status"], "succeeded");

    // Signed with another secret, the receiver's 401 is reported and the exit code says so.
    let other = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let output = run(vec![
        "send-test".into(),
        url,
        "--secret".into(),
        other.into(),
        "--status".into(),
        "failed".into(),
    ])
    .await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("-> 401"));
}

/// A replica told to stop gives the reconciler's lease back, so the one that replaces it in a
/// rolling deploy reads at once rather than a minute later.
async fn a_stopping_replica_gives_the_reconcilers_lease_back(backend: Backend) {
    let fake = FakeReplicate::start().await;
    let store = TestStore::create(backend).await;
    let url = store.url();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("REPLICATE_API_TOKEN", fake_replicate::ACCOUNT_TOKEN),
        ("INBOX_REPLICATE_API_URL", fake.url()),
        ("INBOX_WEBHOOK_URL", "http://127.0.0.1:1/webhooks/replicate"),
    ];
    let mut service = Service::start_with(&env, &std::env::temp_dir());
    service.wait_for("serving");
    let holder = match backend {
        Backend::Postgres => "SELECT holder FROM background_work WHERE name = 'reconciler'",
        Backend::Sqlite => "SELECT holder FROM leases WHERE name = 'reconciler'",
    };
    support::eventually("the replica holds the lease", || async {
        store.text(holder).await.is_some()
    })
    .await;
    service.signal("-TERM");
    assert_eq!(service.exit_code().0, Some(0));
    assert_eq!(store.text(holder).await, None, "the lease was kept");
}

support::on_each_backend!(
    nothing_acknowledged_is_lost_across_kill_9_and_sigterm_exits_0,
    prune_says_what_it_would_remove_then_removes_it,
    retentions_first_run_logs_what_it_will_remove_before_removing_it,
    reconcile_reads_a_prediction_from_the_platform_once,
    a_stopping_replica_gives_the_reconcilers_lease_back,
);

/// Every setting the service reads is in the README's table and in the example config file.
#[test]
fn every_setting_is_documented_in_the_readme_and_the_example() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |path: &str| std::fs::read_to_string(root.join(path)).expect(path);
    let config = read("src/config/mod.rs");
    let (readme, example) = (
        read("README.md"),
        read("config/prediction-inbox.env.example"),
    );
    // Every string literal naming a setting; `INBOX_CONFIG`, where the file itself is, is told
    // above the table and at the top of the example.
    let keys: std::collections::BTreeSet<&str> = config
        .match_indices("\"INBOX_")
        .filter_map(|(at, _)| config[at + 1..].split('"').next())
        .filter(|key| key.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
        .filter(|key| *key != "INBOX_CONFIG")
        .collect();
    assert!(keys.len() > 10, "{keys:?}");
    for key in keys {
        assert!(readme.contains(&format!("| `{key}` |")), "README: {key}");
        assert!(example.contains(&format!("{key}=")), "example: {key}");
    }
}
